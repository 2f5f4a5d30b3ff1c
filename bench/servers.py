"""Servers for the benchmark: a 1 KiB upstream, a bare aiohttp reverse proxy as the baseline, and
a protocol-level proxy on uvloop + httptools as the ceiling of a Python data path (h1proxy.py).

The bare proxies do what any proxy must (stream the body, copy headers) and nothing the gateway
adds (identity, authorisation, audit), so the difference is the gateway's cost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's gateway package

BODY = b"x" * 1024


def upstream_app() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def bare_request_headers(request: web.Request) -> dict[str, str]:
    """What the bare proxy sends upstream: the client's headers but Host and Connection (also
    the part table's `request-headers` floor stub, bench/parts.py)."""
    return {k: v for k, v in request.headers.items() if k.lower() not in ("host", "connection")}


def bare_response_headers(up: aiohttp.ClientResponse) -> dict[str, str]:
    """What the bare proxy answers with besides the length: the upstream's Content-Type."""
    return {"Content-Type": up.content_type}


def bare_proxy_app(upstream: str, allocs: Path | None = None) -> web.Application:
    session: aiohttp.ClientSession | None = None

    async def ctx(app: web.Application):  # type: ignore[no-untyped-def]
        nonlocal session
        session = aiohttp.ClientSession(auto_decompress=False)
        yield
        await session.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        assert session is not None
        headers = bare_request_headers(request)
        async with session.request(
            request.method,
            upstream + request.raw_path,
            headers=headers,
            data=request.content if request.body_exists else None,
        ) as up:
            resp = web.StreamResponse(status=up.status, headers=bare_response_headers(up))
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    middlewares = []
    if allocs is not None:  # `parts.py allocs --bare`: memray over a window of requests
        from parts import allocation_window  # bench/ is on sys.path when run as a script

        window = allocation_window(allocs)

        @web.middleware
        async def counted(request: web.Request, handler: Any) -> web.StreamResponse:
            response: web.StreamResponse = await window.around(handler, request)
            return response

        middlewares.append(counted)
    app = web.Application(middlewares=middlewares)
    app.cleanup_ctx.append(ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["upstream", "bare-proxy", "httptools-proxy"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", default="")
    p.add_argument("--allocs", type=Path, help="bare-proxy: count allocations (parts.py allocs)")
    args = p.parse_args()
    if args.kind == "httptools-proxy":
        import h1proxy  # bench/ is on sys.path when run as a script

        up = URL(args.upstream)
        assert up.host is not None and up.port is not None
        uvloop.run(h1proxy.serve(args.port, up.host, up.port))
        return
    app = upstream_app() if args.kind == "upstream" else bare_proxy_app(args.upstream, args.allocs)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
