"""Request smuggling and header abuse, sent as raw bytes to the gateway (THREAT_MODEL.md, decisions 009 and 010).

The HTTP parser refuses ambiguous framing with 400 before any routing, so nothing reaches the
upstream; framing the gateway does accept is re-framed by the gateway itself, never forwarded as
the client wrote it. Refusals at the parser are not audited: no route, no user is known yet.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.conftest import ROUTES, GatewayFactory, Gw, Keys, Upstream, exchange, spool_events

CASES = {
    "content-length and transfer-encoding": b"POST /hr/employees HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate content-length": b"POST /hr/employees HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "signed content-length": b"POST /hr/employees HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
    "obsolete line folding": b"GET /hr/employees HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "space in a header name": b"GET /hr/employees HTTP/1.1\r\nHost: x\r\nX A: a\r\n\r\n",
    "space before the colon": b"GET /hr/employees HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
    "two host headers": b"GET /hr/employees HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "oversized header": b"GET /hr/employees HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 9000
    + b"\r\n\r\n",
}


def _port(gw: Gw) -> int:
    assert gw.client.server.port is not None
    return gw.client.server.port


@pytest.mark.parametrize("name", sorted(CASES))
async def test_ambiguous_framing_and_malformed_headers_are_refused(
    gw: Gw, upstream: Upstream, name: str
) -> None:
    reply = await asyncio.to_thread(exchange, _port(gw), CASES[name])
    assert reply.split(b"\r\n", 1)[0].endswith(b"400 Bad Request"), reply[:80]
    assert upstream.seen == []


async def test_accepted_chunked_framing_is_reframed_not_forwarded_as_written(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    token = keys.token("alice", ["hr_officer"])
    raw = (
        b"POST /hr/employees HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    reply = await asyncio.to_thread(exchange, _port(gw), raw)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:80]
    (seen,) = upstream.seen
    assert seen.body_bytes == len(b"hello world")
    # The gateway framed the body itself: one Transfer-Encoding it wrote, no Content-Length, and
    # the client's framing header was dropped as hop-by-hop rather than passed along.
    assert seen.headers["transfer-encoding"] == ["chunked"]
    assert "content-length" not in seen.headers


async def test_expect_100_continue_is_answered_only_after_the_request_is_allowed_and_audited(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    def expecting(token: str | None) -> bytes:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        return (
            "POST /hr/employees HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: 5\r\nExpect: 100-continue\r\n{auth}\r\n"
        ).encode()

    def converse(port: int, head: bytes) -> tuple[bytes, bytes]:
        """Send the head, read what comes before the body is sent, then send it."""
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(head)
            first = s.recv(65536)
            s.sendall(b"hello")
            rest = b""
            try:
                while chunk := s.recv(65536):
                    rest += chunk
            except (TimeoutError, ConnectionResetError):
                pass
            return first, rest

    refused, _ = await asyncio.to_thread(converse, _port(gw), expecting(None))
    assert refused.startswith(b"HTTP/1.1 401"), refused[:60]  # no 100 Continue before it

    allowed, rest = await asyncio.to_thread(
        converse, _port(gw), expecting(keys.token("alice", ["hr_officer"]))
    )
    assert allowed.startswith(b"HTTP/1.1 100 Continue"), allowed[:60]
    assert b"HTTP/1.1 200" in allowed + rest
    (seen,) = upstream.seen
    assert seen.body_bytes == 5 and "expect" not in seen.headers

    odd = b"POST /hr/employees HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: teapot\r\n\r\n"
    reply = await asyncio.to_thread(exchange, _port(gw), odd)
    assert reply.startswith(b"HTTP/1.1 417") and b"request_id" in reply


async def test_absolute_form_targets_are_refused_and_a_host_outside_public_hosts_never_reaches_the_upstream(
    make_gateway: GatewayFactory, upstream: Upstream, keys: Keys
) -> None:
    """Decision 022: the client's Host reaches `host: preserve` upstreams, so `public_hosts`
    bounds it; a route with `host: upstream` gets the upstream's own Host whatever the client
    wrote."""
    routes = [{**r, "host": "upstream"} if r["name"] == "hr-medical" else r for r in ROUTES]
    gw = await make_gateway(upstream.url, proxy={"public_hosts": ["gw.example.org"]}, routes=routes)
    auth = b"Authorization: Bearer " + keys.token("alice", ["hr_officer"]).encode() + b"\r\n"
    for target in (b"http://evil.example/hr/employees/1", b"//evil.example/hr/employees/1"):
        raw = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth + b"\r\n"
        reply = await asyncio.to_thread(exchange, _port(gw), raw)
        assert reply.startswith(b"HTTP/1.1 400"), (target, reply[:60])
    for host in (b"evil.example", b"gw.example.org.evil.example", b"gw.example.org@evil"):
        raw = b"GET /hr/employees/1 HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n"
        reply = await asyncio.to_thread(exchange, _port(gw), raw + auth + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 400"), (host, reply[:60])
    assert upstream.seen == []
    reasons = [e["reason"] for e in spool_events(gw.cfg.audit.spool_dir)]
    assert reasons[2:] == ["unknown_host", "unknown_host", "bad_host"]  # `@` is no Host

    for path in (b"/hr/employees/1", b"/hr/medical/1"):
        raw = b"GET " + path + b" HTTP/1.1\r\nHost: GW.example.org.\r\nConnection: close\r\n"
        reply = await asyncio.to_thread(exchange, _port(gw), raw + auth + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 200"), reply[:60]
    preserved, own = upstream.seen
    assert preserved.headers["host"] == ["gw.example.org"]  # the public name, normalised
    assert own.headers["host"] == [upstream.url.removeprefix("http://")]  # the upstream's own
    for seen in (preserved, own):
        assert seen.headers["x-forwarded-host"] == ["gw.example.org"]
        assert seen.headers["x-forwarded-proto"] == ["http"]
        assert seen.headers["x-forwarded-port"] == ["80"]


async def test_a_refused_request_line_or_header_is_not_quoted_in_operational_logs(
    gw: Gw, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """The parser's own error text quotes what it refused; logs carry only the kind of error."""
    from gateway.core import logs

    logs.redact_parser_errors()
    token = keys.token("alice", ["hr_officer"])
    for raw in (
        b"GET /hr/employees/\xa2-1001 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hr/employees HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + token.encode()
        + b"\x01\r\n\r\n",
    ):
        reply = await asyncio.to_thread(exchange, _port(gw), raw)
        assert reply.split(b"\r\n", 1)[0].endswith(b"400 Bad Request"), reply[:60]
    logged = "\n".join(
        r.getMessage() + str(r.exc_info) + str(r.__dict__.get("error")) for r in caplog.records
    )
    assert "malformed request refused by the HTTP parser" in logged
    assert "1001" not in logged and token[-20:] not in logged
