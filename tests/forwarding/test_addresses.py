"""The upstream's internal address never reaches the browser (decision 022): redirects, content
locations, refreshes and cookie domains that name it are rewritten to the public origin; other
internal addresses are refused; spellings a browser reads as the same host count as that host."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.core.tasks import spawn
from gateway.forwarding.addresses import AddressGuard, InternalAddress, Origin, normalise_host
from tests.conftest import GatewayFactory, HandlerUpstream, Keys, spool_events

UPSTREAM = "http://10.0.0.5:8000"
OTHER = "http://hr-db.internal:5000"
PUBLIC = Origin("https", "gw.example.org", 443)
GUARD = AddressGuard([UPSTREAM, OTHER])
ME = Origin("http", "10.0.0.5", 8000)


def _url(value: str) -> str:
    return GUARD.url(value, ME, PUBLIC)


@pytest.mark.parametrize(
    "value",
    [
        "http://10.0.0.5:8000/admin/?next=/x#top",
        "HTTP://10.0.0.5:8000/admin/?next=/x#top",
        "http://user:pw@10.0.0.5:8000/admin/?next=/x#top",
        "//10.0.0.5:8000/admin/?next=/x#top",
        "/\\10.0.0.5:8000/admin/?next=/x#top",
        "\\\\10.0.0.5:8000/admin/?next=/x#top",
        "http:\\\\10.0.0.5:8000\\admin/?next=/x#top",
        "http:///10.0.0.5:8000/admin/?next=/x#top",
        " \t http://10.0.0.5:8000/ad\nmin/?next=/x#top",
        "http://0x0a.0.0.5:8000/admin/?next=/x#top",
        "http://167772165:8000/admin/?next=/x#top",
        "http://012.0.0.5:8000/admin/?next=/x#top",
        "http://%31%30.0.0.5:8000/admin/?next=/x#top",
    ],
)
def test_a_url_naming_the_upstream_in_any_spelling_is_rewritten_to_the_public_origin(
    value: str,
) -> None:
    assert _url(value) == "https://gw.example.org/admin/?next=/x#top"


def test_a_rewritten_url_without_a_path_gets_the_root_path() -> None:
    assert _url("http://10.0.0.5:8000") == "https://gw.example.org/"
    assert _url("http://10.0.0.5:8000?a=1") == "https://gw.example.org/?a=1"
    assert _url("//10.0.0.5:8000#x") == "https://gw.example.org/#x"


@pytest.mark.parametrize(
    "value",
    [
        "http://10.0.0.5:9000/",  # the upstream's host on another port
        "http://10.0.0.5/",
        "https://hr-db.internal:5000/",  # another upstream
        "http://HR-DB.internal./x",
        "//localhost:8080/x",
        "http://app.localhost/x",
        "http://127.0.0.1/x",
        "http://2130706433/x",
        "http://[::1]:8000/x",
        "http://[::ffff:10.0.0.9]/x",
        "http://[fd00::5]/x",
        "http://169.254.169.254/latest/meta-data",
        "http://192.168.1.1/",
        "http:/\\172.16.0.1/",
    ],
)
def test_a_url_naming_another_internal_address_is_refused(value: str) -> None:
    with pytest.raises(InternalAddress):
        _url(value)


@pytest.mark.parametrize(
    "value",
    [
        "/admin/login/?next=/admin/",
        "admin/",
        "?page=2",
        "https://gw.example.org/x",
        "//GW.example.org./x",
        "https://sso.example.com/logout",
        "mailto:hr@example.org",
        "http://[2a00:1450:4001::1]/x",
    ],
)
def test_paths_the_public_origin_and_outside_sites_are_kept(value: str) -> None:
    assert _url(value) == value


def test_refresh_urls_are_rewritten_or_refused_like_redirects() -> None:
    headers = CIMultiDict(
        [("Refresh", "5; URL='http://10.0.0.5:8000/next'"), ("Refresh", "0"), ("Refresh", "x")]
    )
    GUARD.rewrite(headers, UPSTREAM, PUBLIC)
    assert headers.getall("Refresh") == ["5; url=https://gw.example.org/next", "0"]
    with pytest.raises(InternalAddress):
        GUARD.rewrite(CIMultiDict(Refresh="1,url=http://127.0.0.1:22/"), UPSTREAM, PUBLIC)


def test_cookie_domains_naming_an_internal_address_are_removed_others_kept() -> None:
    headers = CIMultiDict(
        [
            ("Set-Cookie", "a=1; Domain=10.0.0.5; Path=/; HttpOnly"),
            ("Set-Cookie", "b=2; domain=.HR-DB.internal; Secure"),
            ("Set-Cookie", "c=3; Domain=localhost"),
            ("Set-Cookie", "d=4; Domain=example.org; Path=/"),
            ("Set-Cookie", "e=5; Domain=gw.example.org"),
        ]
    )
    GUARD.rewrite(headers, UPSTREAM, PUBLIC)
    assert headers.getall("Set-Cookie") == [
        "a=1; Path=/; HttpOnly",
        "b=2; Secure",
        "c=3",
        "d=4; Domain=example.org; Path=/",
        "e=5; Domain=gw.example.org",
    ]


@pytest.mark.parametrize("host", ["1_0.0.0.1", "09", "1..2", "1.2.3.4.5", "256.1", "0x1.08"])
def test_a_host_ending_in_a_number_that_is_no_ipv4_address_is_no_host(host: str) -> None:
    assert normalise_host(host) is None  # a browser refuses it (found by fuzz_addresses)


@pytest.mark.parametrize("host", ["-167772155", "1.-1", "+1"])
def test_a_name_is_not_read_as_a_number(host: str) -> None:
    assert normalise_host(host) == host  # int() would have taken the sign


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_numeric_spelling_of_an_ipv4_address_normalises_to_the_address(n: int) -> None:
    dotted = ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))
    a, b = n >> 24, n & 0xFFFFFF
    for spelling in (str(n), hex(n), f"{a}.{b}", f"0x{a:x}.{oct(b).replace('0o', '0')}"):
        assert normalise_host(spelling) == dotted, spelling


# -- through the gateway: a real upstream answering with headers that name itself ------------


async def test_the_gateway_rewrites_redirects_and_cookies_and_refuses_other_internal_addresses(
    make_gateway: GatewayFactory, upstream_serving: HandlerUpstream, keys: Keys
) -> None:
    own: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        kind = request.query.get("kind")
        if kind == "own":
            return web.Response(
                status=302,
                headers=CIMultiDict(
                    [
                        ("Location", own["url"] + "/hr/employees/2"),
                        ("Set-Cookie", f"sid=1; Domain={own['host']}; Path=/"),
                    ]
                ),
            )
        if kind == "other":
            return web.Response(status=302, headers={"Location": "http://169.254.169.254/"})
        return web.Response(text="ok", headers={"Cache-Control": "public, max-age=3600"})

    url = await upstream_serving(handler)
    own["url"], own["host"] = url, url.split("//")[1].split(":")[0]
    gw = await make_gateway(url)
    auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    public = f"http://{gw.client.host}:{gw.client.port}"

    r = await gw.client.get("/hr/employees/1?kind=own", headers=auth, allow_redirects=False)
    assert r.status == 302
    assert r.headers["Location"] == public + "/hr/employees/2"
    # 127.0.0.1 is the public host here too: a Domain naming the public host is kept.
    assert r.headers["Set-Cookie"] == f"sid=1; Domain={own['host']}; Path=/"
    r = await gw.client.get("/hr/employees/1?kind=other", headers=auth, allow_redirects=False)
    assert r.status == 502 and "169.254" not in await r.text()
    assert "Location" not in r.headers
    r = await gw.client.get("/hr/employees/1", headers=auth)
    assert r.headers["Cache-Control"] == "no-store"  # a personal-data route (decision 023)
    outcomes = [e["outcome"] for e in spool_events(gw.cfg.audit.spool_dir)]
    assert outcomes == ["complete", "upstream_internal_address", "complete"]


async def test_no_store_is_per_route_and_never_on_routes_without_personal_data(
    make_gateway: GatewayFactory, upstream_serving: HandlerUpstream, keys: Keys
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok", headers={"Cache-Control": "public, max-age=60"})

    url = await upstream_serving(handler)
    routes: list[dict[str, Any]] = [
        {"name": "static", "prefix": "/hr/static", "upstream": "hr", "system": "hr"}
        | {"purpose": "hr_records", "category": "employee", "no_store": False},
        {"name": "home", "prefix": "/hr", "upstream": "hr", "system": "hr"}
        | {"purpose": "hr_records", "category": "employee"},
    ]
    gw = await make_gateway(url, routes=routes)
    auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
    assert (await gw.client.get("/hr/static/a.css", headers=auth)).headers[
        "Cache-Control"
    ] == "public, max-age=60"
    assert (await gw.client.get("/hr/x", headers=auth)).headers["Cache-Control"] == "no-store"


async def test_a_101_to_a_request_that_asked_for_no_upgrade_is_refused_not_tunnelled(
    make_gateway: GatewayFactory, keys: Keys
) -> None:
    """An upstream answering `101 Switching Protocols` to a plain request would turn the
    connection into a tunnel nobody authorised: 502, recorded."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
                b"GET /hr/medical/1 HTTP/1.1\r\n\r\n"
            )

    task = spawn(asyncio.to_thread(answer), name="upstream-101")
    try:
        gw = await make_gateway(f"http://127.0.0.1:{port}")
        auth = {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}
        r = await gw.client.get("/hr/employees/1", headers={**auth, "Upgrade": "h2c"})
        assert r.status == 502
        await task
    finally:
        server.close()
    (event,) = spool_events(gw.cfg.audit.spool_dir)
    assert event["outcome"] == "upstream_unexpected_upgrade"
