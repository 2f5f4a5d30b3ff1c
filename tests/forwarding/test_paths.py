"""What the gateway routes and authorises is what the upstream serves, for any path (THREAT_MODEL.md, decisions 009 and 010).

A property test through the real gateway: paths built from the tricks upstreams are known to read
their own way (dot segments, encoded separators, `;` parameters, trailing dots, case, fullwidth
and overlong forms) are sent as raw bytes. Each one is refused (400), has no route (404), or is
forwarded byte for byte — and then a permissive upstream reading of the forwarded path lands on
the very route the gateway audited.
"""

from __future__ import annotations

import asyncio
import unicodedata
from urllib.parse import unquote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.forwarding.routing import RouteTable
from tests.conftest import Gw, Keys, Upstream, exchange, spool_events

TRICKS = ["..", "%2e%2e", "%2E.", "..;", "%2f", "%5c", "%00", "%c0%ae", "%EF%BC%8E%EF%BC%8E", ""]
SEGMENTS = ["hr", "medical", "employees", "export", "crm", "counterparties", "1001", "ﬁ", "%zz"]
MUTATIONS = [str, str.upper, str.capitalize, lambda s: s + ".", lambda s: s + ";x=1"]
MUTATIONS += [lambda s: s + "%20", lambda s: s]
segment = st.one_of(
    st.sampled_from(TRICKS),
    st.tuples(st.sampled_from(SEGMENTS), st.sampled_from(MUTATIONS)).map(lambda t: t[1](t[0])),
    st.text(alphabet="abcXYZ019-_.~;%", min_size=1, max_size=5),
)
raw_paths = st.lists(segment, min_size=1, max_size=6).map(lambda s: "/" + "/".join(s))
KNOWN_ATTACKS = [
    "/hr/employees/..;/medical/1001",
    "/hr/employees/%2e%2e/medical/1001",
    "/hr/employees%2fmedical/1001",
    "/hr/employees/%EF%BC%8E%EF%BC%8E/medical/1001",
    "/HR/medical/1001",
    "/hr/Medical/1001",
    "/hr/medical./1001",
    "/hr/medical%20/1001",
    "/hr/employees/%c0%ae%c0%ae/medical/1001",
]


def permissive_reading(raw: str) -> str:
    """How a lenient upstream (servlet container, IIS, a case-insensitive router) may read it."""
    decoded = unquote(raw.split("?", 1)[0], errors="replace").replace("\\", "/")
    out: list[str] = []
    for seg in decoded.split("/"):
        seg = unicodedata.normalize("NFKC", seg.split(";", 1)[0])
        if seg == "..":
            if out:
                out.pop()
        elif seg not in ("", "."):
            out.append(seg.rstrip(". ").lower())
    return "/" + "/".join(out)


def examples(paths: list[str]):  # type: ignore[no-untyped-def]
    """Always try the known attacks, whatever the generator finds."""

    def apply(f):  # type: ignore[no-untyped-def]
        for path in reversed(paths):
            f = example(path)(f)
        return f

    return apply


def send(port: int, raw: str, token: str) -> int:
    request = (
        f"GET {raw} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()  # raw non-ASCII bytes too, as some clients send
    return int(exchange(port, request).split(b" ", 2)[1])


async def test_every_forwarded_path_is_served_as_the_route_that_was_audited(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    token = keys.token("alice", ["hr_officer", "sales_manager"], ttl=600)
    table = RouteTable(gw.cfg.routes)
    port = gw.client.server.port
    assert port is not None

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw_paths)
    @examples(KNOWN_ATTACKS)
    def check(raw: str) -> None:
        seen_before = len(upstream.seen)
        events_before = len(spool_events(gw.spool_dir))
        status = send(port, raw, token)
        events = spool_events(gw.spool_dir)[events_before:]
        forwarded = upstream.seen[seen_before:]
        if status in (400, 404):
            # Refused and never forwarded. Attributed to the employee: one refusal event — except
            # where aiohttp's HTTP parser refused the request line before any token was read.
            assert forwarded == [], raw
            assert len(events) <= 1 and (events or status == 400), raw
            for refusal in events:
                assert (refusal["decision"], refusal["status"], refusal["user"]) == (
                    "deny",
                    status,
                    "alice",
                ), raw
            if status == 404:  # no route for the gateway: none for the upstream's reading either
                assert table.match(permissive_reading(raw), "GET") is None, raw
            return
        (event,) = events
        if forwarded:
            assert forwarded[0].raw_path == raw  # byte for byte
        served_as = table.match(permissive_reading(raw), "GET")
        assert served_as is not None and served_as.name == event["route"], (raw, event["route"])

    await asyncio.to_thread(check)


async def test_raw_bytes_that_are_not_ascii_in_the_target_are_refused_by_the_parser(
    gw: Gw, upstream: Upstream, keys: Keys
) -> None:
    """Some clients send raw bytes in the request line: the HTTP parser refuses them (400)
    before any handler, so no path or query the audit record would have to carry can hold
    them; percent-encoded ones are refused as invalid UTF-8 after identity, and recorded."""
    token = keys.token("alice", ["hr_officer"])
    port = gw.client.server.port
    assert port is not None
    request = (
        b"GET /hr/employees/\xff\xfe?lead=\xc0 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    answer = await asyncio.to_thread(exchange, port, request)
    assert answer.split(b" ", 2)[1] == b"400"
    assert upstream.seen == [] and spool_events(gw.spool_dir) == []
