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
from multidict import CIMultiDict

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
        length = [int(x.split(b":", 1)[1]) for x in lines if x.startswith(b"content-length:")]
        if length:
            body = await reader.readexactly(length[0])
        elif any(x.startswith(b"transfer-encoding:") for x in lines):
            body = await reader.readuntil(b"0\r\n\r\n")
        else:
            body = b""
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


async def _sent(
    rec: Recorder,
    request_class: type[aiohttp.ClientRequest],
    method: str,
    headers: Headers,
    body: bytes | None,
) -> bytes:
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=SKIPPED_AUTO_HEADERS,
        request_class=request_class,
    ) as session:
        url = f"http://127.0.0.1:{rec.port}/hr/employees/1001?x=1"
        async with session.request(
            method, url, headers=CIMultiDict(headers), data=body, allow_redirects=False
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
        "X-A",
        "x-a",
        "Cookie",
    ]
)
_VALUE = st.text(alphabet="abc/*=;, 0123", min_size=0, max_size=8).map(str.strip)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    headers=st.lists(st.tuples(_NAME, _VALUE), max_size=6), method=st.sampled_from(["GET", "POST"])
)
async def test_any_mix_of_the_names_aiohttp_treats_apart_is_sent_as_aiohttp_sends_it(
    recorder: Recorder, headers: Headers, method: str
) -> None:
    theirs = await _sent(recorder, aiohttp.ClientRequest, method, headers, None)
    ours = await _sent(recorder, UpstreamRequest, method, headers, None)
    assert ours == theirs
