"""WebSockets through the gateway (decision 024): an upgrade authorised and recorded like any
request of its route, then two WebSocket connections — client↔gateway, gateway↔upstream — with
messages relayed between them.

Contract: ``upgrade_kind(headers)`` says whether a request asks for an upgrade and of which kind.
``WebSocketRelay.relay`` is called after the upgrade was authorised and its access recorded: it
connects to the upstream first (a refusal there is a 502 to the client, never a 101), then
answers the client's handshake and relays messages until one side closes, a limit is reached or
``still_allowed()`` turns false; it returns a ``Closed`` that says who closed, how long the socket
lived and how many payload bytes went each way.

SECURITY: the gateway terminates WebSocket framing on both sides, so no byte of the client's
connection reaches the upstream except as a message the gateway parsed; no raw tunnel exists. An
upstream that refuses the upgrade gets no client bytes after its refusal. Other upgrades (`h2c`,
`TLS/1.0`, …) are never forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDictProxy
from yarl import URL

from gateway.config.model import Route
from gateway.core.tasks import spawn
from gateway.forwarding.forwarder import Forwarder, UpstreamError
from gateway.forwarding.headers import connection_listed

# The client's own handshake fields: the gateway makes its own to the upstream.
HANDSHAKE = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions")
# Close codes (RFC 6455 §7.4.1) the gateway uses when it ends a socket itself.
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
TOO_BIG = 1009


def upgrade_kind(headers: CIMultiDictProxy[str]) -> str | None:
    """None: no upgrade asked; "websocket"; or "other" (refused: decision 024). An upgrade is
    asked only by `Connection: upgrade` together with `Upgrade` (RFC 9110 §7.8); either alone
    is dropped as hop-by-hop, as before."""
    if "upgrade" not in connection_listed(headers) or "Upgrade" not in headers:
        return None
    tokens = [t.strip().lower() for v in headers.getall("Upgrade") for t in v.split(",")]
    return "websocket" if tokens == ["websocket"] else "other"


@dataclass(slots=True)
class Closed:
    """How a relayed socket ended: the outcome recorded for it."""

    # client_closed | upstream_closed (a close frame), client_aborted | upstream_aborted (none),
    # client_error | upstream_error, idle_timeout | max_duration | session_revoked |
    # message_too_big (the gateway closed it), shutdown, relay_error
    by: str = ""
    bytes_in: int = 0  # message payload, client → upstream
    bytes_out: int = 0  # message payload, upstream → client
    seconds: float = 0.0
    code: int = 0  # the close code the ending side gave


class WebSocketRelay:
    def __init__(
        self,
        forwarder: Forwarder,
        *,
        idle_timeout: float,
        max_duration: float,
        max_message_bytes: int,
    ) -> None:
        self._forwarder = forwarder
        self._idle = idle_timeout
        self._max_duration = max_duration
        self._max_message = max_message_bytes

    def can_upgrade(self, request: web.Request) -> bool:
        """Whether the client's handshake is a valid WebSocket handshake (RFC 6455 §4.2.1)."""
        return web.WebSocketResponse().can_prepare(request).ok

    async def relay(
        self,
        request: web.Request,
        route: Route,
        *,
        injected: dict[str, str],
        strip: frozenset[str],
        still_allowed: Callable[[], bool],
        check_every: float,
        closed: Closed,
        deadline: float | None = None,
    ) -> web.StreamResponse:
        """``closed`` is filled as the socket lives (read it after a cancellation too);
        ``deadline`` (time.time()): the credential's end, closing the socket then at the latest;
        ``still_allowed`` is asked every ``check_every`` seconds (revocation)."""
        headers = self._forwarder.request_headers(request, route, injected, strip)
        protocols = [
            p.strip() for v in headers.getall("Sec-WebSocket-Protocol", ()) for p in v.split(",")
        ]
        for name in (*HANDSHAKE, "Sec-WebSocket-Protocol"):
            headers.popall(name, None)
        url = URL(route.upstream_url, encoded=True)
        url = url.with_scheme("wss" if url.scheme == "https" else "ws")
        url = URL(str(url) + request.raw_path, encoded=True)
        t0 = time.monotonic()
        try:
            upstream = await self._forwarder.session.ws_connect(
                url,
                headers=headers,
                protocols=[p for p in protocols if p],
                autoclose=False,
                autoping=True,
                max_msg_size=self._max_message,
                compress=0,
                ssl=self._forwarder.ssl_for(route),
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
            )
        except aiohttp.WSServerHandshakeError as e:
            raise UpstreamError(502, "upstream_refused_upgrade") from e
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamError(
                504 if isinstance(e, TimeoutError) else 502, "upstream_unreachable"
            ) from e
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoclose=False,
            autoping=True,
            max_msg_size=self._max_message,
            compress=False,
        )
        try:
            await client.prepare(request)
            await self._pump(client, upstream, closed, still_allowed, check_every, deadline)
        except asyncio.CancelledError:
            closed.by = closed.by or "shutdown"
            raise
        except Exception:
            closed.by = closed.by or "relay_error"
            raise
        finally:
            closed.seconds = time.monotonic() - t0
            passed_on = closed.code if closed.by in ("client_closed", "upstream_closed") else 0
            ours = {"session_revoked": POLICY_VIOLATION, "message_too_big": TOO_BIG}
            code = passed_on or ours.get(closed.by, GOING_AWAY)
            with contextlib.suppress(Exception):
                await upstream.close(code=code)
            with contextlib.suppress(Exception):
                await client.close(code=code)
        return client

    async def _pump(
        self,
        client: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        closed: Closed,
        still_allowed: Callable[[], bool],
        check_every: float,
        deadline: float | None,
    ) -> None:
        last = time.monotonic()

        async def one_way(
            source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            side: str,
        ) -> None:
            nonlocal last
            while True:
                msg = await source.receive()
                last = time.monotonic()
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    data = msg.data.encode() if msg.type == WSMsgType.TEXT else msg.data
                    if side == "client":
                        closed.bytes_in += len(data)
                    else:
                        closed.bytes_out += len(data)
                    if msg.type == WSMsgType.TEXT:
                        await sink.send_str(msg.data)
                    else:
                        await sink.send_bytes(msg.data)
                    continue
                if msg.type == WSMsgType.CLOSE:
                    closed.by, closed.code = f"{side}_closed", int(msg.data or 1000)
                elif msg.type == WSMsgType.ERROR:
                    code = getattr(msg.data, "code", 0)
                    closed.by = "message_too_big" if code == TOO_BIG else f"{side}_error"
                else:  # CLOSING/CLOSED: the connection went away without a close frame
                    closed.by = f"{side}_aborted"
                return

        async def watch() -> None:
            started = time.monotonic()
            end = started + self._max_duration
            if deadline is not None:
                end = min(end, started + max(0.0, deadline - time.time()))
            while True:
                now = time.monotonic()
                wait = min(check_every, end - now, last + self._idle - now)
                if wait > 0:
                    await asyncio.sleep(wait)
                now = time.monotonic()
                if not still_allowed():
                    closed.by = "session_revoked"
                    return
                if now >= end:
                    closed.by = "max_duration"
                    return
                if now >= last + self._idle:
                    closed.by = "idle_timeout"
                    return

        tasks = [
            spawn(one_way(client, upstream, "client"), name="ws-client"),
            spawn(one_way(upstream, client, "upstream"), name="ws-upstream"),
            spawn(watch(), name="ws-watch"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None and not closed.by:
                    closed.by = "relay_error"  # a send failed: the other side went away
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
