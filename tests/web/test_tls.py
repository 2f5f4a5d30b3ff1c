"""TLS on the proxy listener (optionally mutual) and to upstreams, with certificates made here."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.core import tls
from tests.certs import CA
from tests.conftest import Keys, ServeFactory, Upstream, recording_app, spool_events


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return CA(tmp_path, "org")


def bearer(keys: Keys) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.token('alice', ['hr_officer'])}"}


async def test_the_proxy_listener_serves_tls_and_tells_the_upstream_so(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys, ca: CA
) -> None:
    server = ca.issue("gateway", server=True)
    gw = await serve_gateway(
        upstream.url,
        listen={"proxy": {"tls": {"cert_file": str(server.cert), "key_file": str(server.key)}}},
    )
    assert gw.proxy_url.startswith("https://")
    trusting = tls.client_context(ca.cert_file)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.proxy_url}/hr/employees/1", headers=bearer(keys), ssl=trusting) as r:
            assert r.status == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not the org's CA
            await s.get(f"{gw.proxy_url}/hr/employees/1", headers=bearer(keys))
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not spoken on a TLS port
            await s.get(f"http://127.0.0.1:{gw.proxy_port}/hr/employees/1", headers=bearer(keys))
    (seen,) = upstream.seen
    assert seen.headers["x-forwarded-proto"] == ["https"]


async def test_a_listener_with_a_client_ca_admits_only_clients_with_its_certificates(
    serve_gateway: ServeFactory, upstream: Upstream, keys: Keys, ca: CA, tmp_path: Path
) -> None:
    server = ca.issue("gateway", server=True)
    staff = ca.issue("staff-app", server=False)
    stranger = CA(tmp_path, "elsewhere").issue("intruder", server=False)
    gw = await serve_gateway(
        upstream.url,
        listen={
            "proxy": {
                "tls": {
                    "cert_file": str(server.cert),
                    "key_file": str(server.key),
                    "client_ca_file": str(ca.cert_file),
                }
            }
        },
    )
    async with aiohttp.ClientSession() as s:
        for who in (None, stranger):
            ctx = tls.client_context(ca.cert_file, who and who.cert, who and who.key)
            with pytest.raises(aiohttp.ClientError):
                async with s.get(
                    f"{gw.proxy_url}/hr/employees/1", headers=bearer(keys), ssl=ctx
                ) as r:
                    await r.read()
        ctx = tls.client_context(ca.cert_file, staff.cert, staff.key)
        async with s.get(f"{gw.proxy_url}/hr/employees/1", headers=bearer(keys), ssl=ctx) as r:
            assert r.status == 200
    assert len(upstream.seen) == 1


async def https_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]], ca: CA, client_ca: Path | None = None
) -> Upstream:
    pair = ca.issue("hr-upstream", server=True)
    up = Upstream(url="")
    server = await aiohttp_server(
        recording_app(up), ssl=tls.server_context(pair.cert, pair.key, client_ca)
    )
    up.url = f"https://127.0.0.1:{server.port}"
    return up


async def test_an_https_upstream_is_verified_against_the_configured_ca(
    serve_gateway: ServeFactory,
    keys: Keys,
    ca: CA,
    tmp_path: Path,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    up = await https_upstream(aiohttp_server, ca)
    trusted = await serve_gateway(
        up.url, upstreams={"hr": {"url": up.url, "ca_file": str(ca.cert_file)}}
    )
    other_ca = CA(tmp_path, "other")
    wrong = await serve_gateway(
        up.url, upstreams={"hr": {"url": up.url, "ca_file": str(other_ca.cert_file)}}
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{trusted.proxy_url}/hr/employees/1", headers=bearer(keys)) as r:
            assert r.status == 200
        async with s.get(f"{wrong.proxy_url}/hr/employees/1", headers=bearer(keys)) as r:
            assert r.status == 502
            request_id = (await r.json())["request_id"]
    assert len(up.seen) == 1
    (event,) = spool_events(wrong.spool_dir)
    assert (event["request_id"], event["status"], event["outcome"]) == (
        request_id,
        502,
        "upstream_tls_error",
    )


async def test_an_upstream_that_requires_a_client_certificate_gets_the_gateways(
    serve_gateway: ServeFactory,
    keys: Keys,
    ca: CA,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    up = await https_upstream(aiohttp_server, ca, client_ca=ca.cert_file)
    client = ca.issue("pd-gateway", server=False)
    with_cert = await serve_gateway(
        up.url,
        upstreams={
            "hr": {
                "url": up.url,
                "ca_file": str(ca.cert_file),
                "client_cert_file": str(client.cert),
                "client_key_file": str(client.key),
            }
        },
    )
    without = await serve_gateway(
        up.url, upstreams={"hr": {"url": up.url, "ca_file": str(ca.cert_file)}}
    )
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{with_cert.proxy_url}/hr/employees/1", headers=bearer(keys)) as r:
            assert r.status == 200
        async with s.get(f"{without.proxy_url}/hr/employees/1", headers=bearer(keys)) as r:
            assert r.status == 502
    assert len(up.seen) == 1


def test_tls_files_that_cannot_be_used_are_config_problems_naming_the_key(
    tmp_path: Path, keys: Keys, ca: CA
) -> None:
    from gateway.config.load import load_config
    from gateway.core.errors import ConfigError
    from tests.conftest import config_dict, write_config

    server = ca.issue("gateway", server=True)
    data = config_dict(tmp_path, "http://127.0.0.1:1")
    data["listen"] = {
        "proxy": {"tls": {"cert_file": str(server.cert), "key_file": str(ca.cert_file)}}
    }
    data["upstreams"]["crm"] = {"url": "http://127.0.0.1:1", "ca_file": str(ca.cert_file)}
    data["upstreams"]["site"] = {"url": "https://x.invalid", "client_cert_file": str(server.cert)}
    data["identity"]["jwks_ca_file"] = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, data, keys))
    problems = "\n".join(info.value.problems)
    assert "listen.proxy.tls.cert_file: cannot use for TLS" in problems
    assert "upstreams.crm.url: must be https:// when TLS files are given" in problems
    assert "upstreams.site.client_cert_file: give client_cert_file and client_key_file" in problems
    # A missing file is named as such (with its path), not as a TLS failure.
    assert f"identity.jwks_ca_file: file not found: {tmp_path / 'missing.pem'}" in problems


def test_client_contexts_refuse_old_protocols_and_verify_names() -> None:
    ctx = tls.client_context()
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
