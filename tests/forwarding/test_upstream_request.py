"""The forwarder's client request class (decision 038) sends what aiohttp's own would, byte for
byte: the same request line, headers in the same order and case, the same body framing.

Both are driven through a ClientSession made as the forwarder makes its own (the same skipped
automatic headers) against a plain asyncio server that keeps the raw bytes it receives; nothing
here is the gateway's own server or upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, istr
from yarl import URL

from gateway.forwarding.forwarder import SKIPPED_AUTO_HEADERS, UpstreamRequest

Headers = list[tuple[str, str]]


class Recorder:
    """An HTTP/1.1 server that answers 204 and keeps each request's raw bytes."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        body = b""
        try:  # a generated Content-Length the body does not fill: keep what came
            async with asyncio.timeout(0.2):
                length = [x.split(b":", 1)[1] for x in lines if x.startswith(b"content-length:")]
                if length and length[0].strip().isdigit():
                    body = await reader.readexactly(int(length[0]))
                elif any(x.startswith(b"transfer-encoding:") for x in lines):
                    body = await reader.readuntil(b"0\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError):
            body = b"<incomplete>"
        self.received.append(head + body)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    yield rec
    server.close()
    await server.wait_closed()


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    """A streamed body, as the forwarder sends a client's (chunked: no length is known)."""
    for i in range(0, len(body), 3):
        yield body[i : i + 3]


async def _sent(
    rec: Recorder,
    request_class: type[aiohttp.ClientRequest],
    method: str,
    headers: Headers,
    body: bytes | None,
    streamed: bool = False,
) -> bytes:
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=SKIPPED_AUTO_HEADERS,
        request_class=request_class,
        timeout=aiohttp.ClientTimeout(total=5),
    ) as session:
        url = f"http://127.0.0.1:{rec.port}/hr/employees/1001?x=1"
        data = _chunks(body) if streamed and body is not None else body
        async with session.request(
            method, url, headers=CIMultiDict(headers), data=data, allow_redirects=False
        ) as resp:
            await resp.read()
    return rec.received.pop()


CASES: dict[str, tuple[str, Headers, bytes | None]] = {
    "a GET as the forwarder sends it": (
        "GET",
        [
            ("Accept", "text/html"),
            ("Cookie", "a=b"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-PD-User", "alice"),
            ("X-Request-Id", "0af3"),
        ],
        None,
    ),
    "a name twice, in two cases": ("GET", [("X-A", "1"), ("x-a", "2")], None),
    "no Accept: aiohttp's */* added": ("GET", [("X-B", "1")], None),
    "no headers at all": ("GET", [], None),
    "the client's Host (host: preserve)": ("GET", [("Host", "hr.example.org"), ("X-C", "1")], None),
    "the client's User-Agent and Accept-Encoding kept": (
        "PUT",
        [("User-Agent", "curl/8.5"), ("Accept-Encoding", "br")],
        None,
    ),
    "a POST body with its type": ("POST", [("Content-Type", "application/json")], b'{"id":7}'),
    "a POST body without a type": ("POST", [], b"raw"),
    "a DELETE with Content-Length 0": ("DELETE", [("Content-Length", "0")], None),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_forwarders_request_sends_the_bytes_aiohttps_own_sends(
    recorder: Recorder, case: str
) -> None:
    method, headers, body = CASES[case]
    theirs = await _sent(recorder, aiohttp.ClientRequest, method, headers, body)
    ours = await _sent(recorder, UpstreamRequest, method, headers, body)
    assert ours == theirs


_NAME = st.sampled_from(
    [
        "Accept",
        "accept",
        "Host",
        "User-Agent",
        "Content-Type",
        "Accept-Encoding",
        "Content-Length",
        "Transfer-Encoding",
        "X-A",
        "x-a",
        "Cookie",
    ]
)
_VALUE = st.text(alphabet="abc/*=;, 0123", min_size=0, max_size=8).map(str.strip)
_METHOD = st.sampled_from(["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"])


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    headers=st.lists(st.tuples(_NAME, _VALUE), max_size=6),
    method=_METHOD,
    body=st.one_of(st.none(), st.binary(max_size=12)),
    streamed=st.booleans(),
)
async def test_any_mix_of_the_names_aiohttp_treats_apart_is_sent_as_aiohttp_sends_it(
    recorder: Recorder, headers: Headers, method: str, body: bytes | None, streamed: bool
) -> None:
    """Whatever aiohttp does with such a request — sends it, or refuses it (a Content-Length
    that does not match the body) — both classes do the same."""
    outcomes = []
    for request_class in (aiohttp.ClientRequest, UpstreamRequest):
        try:
            sent = await _sent(recorder, request_class, method, headers, body, streamed)
        except Exception as e:  # the same refusal from both is the same behaviour
            outcomes.append(type(e).__name__)
            recorder.received.clear()
        else:
            outcomes.append(sent)
    assert outcomes[1] == outcomes[0]


async def test_the_fast_steps_are_taken_and_share_one_read_only_table() -> None:
    """The session passes what the fast steps expect (else they fall back to aiohttp's own, the
    same bytes but none of the saving), and the skip table they share cannot be written."""
    loop = asyncio.get_running_loop()
    skip = frozenset(istr(n) for n in SKIPPED_AUTO_HEADERS)  # as ClientSession holds them
    url = URL("http://127.0.0.1:9/hr/employees/1001")
    headers: CIMultiDict[str] = CIMultiDict([("X-A", "1")])
    first = UpstreamRequest("GET", url, headers=headers, skip_auto_headers=skip, loop=loop)
    second = UpstreamRequest("GET", url, headers=headers, skip_auto_headers=skip, loop=loop)
    assert first.skip_auto_headers is second.skip_auto_headers
    assert list(first.headers.items()) == [("Host", "127.0.0.1:9"), ("X-A", "1"), ("Accept", "*/*")]
    with pytest.raises(TypeError):
        first.skip_auto_headers["Accept"] = None  # type: ignore[index]
