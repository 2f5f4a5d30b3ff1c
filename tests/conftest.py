"""Shared fixtures: real RSA keys and signed tokens, a real upstream server, the real policies/.

Tokens are signed with a key generated for this test session (not the demo key). The upstream is
a real aiohttp server on a loopback port that records what it received.

``make_gateway`` and ``serve_gateway`` build a whole gateway inside the test process with
``gateway.runtime.app.build`` — the pipeline, spool, shipper and store, admin APIs and console
in one process, driven by aiohttp's test client or on real listeners. That is a test harness,
not the product's shape: `pd-gateway serve` always runs a supervisor (store, shipping, detectors,
admin port) and workers that serve requests and open no store (decision 030). Tests about that
shape start the real command (``tests/process.py``: ``run_gateway``).
"""

from __future__ import annotations

import base64
import copy
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt
from prometheus_client import CollectorRegistry

from gateway.audit.checkpoint import generate as generate_checkpoint_key
from gateway.config.load import load_config
from gateway.config.model import Config
from gateway.runtime.app import GATEWAY, build, console_app
from gateway.testing.chserver import free_port
from gateway.web import listeners
from tests.stores import ch_server, chdb_dir, own_ch_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
ISSUER = "https://idp.test.invalid/realms/staff"
AUDIENCE = "pd-gateway"
KID = "test-key-1"


def _b64(n: int) -> str:
    return (
        base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
    )


def rsa_keypair() -> tuple[str, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    pub = key.public_key().public_numbers()
    return pem, {"kty": "RSA", "use": "sig", "alg": "RS256", "n": _b64(pub.n), "e": _b64(pub.e)}


@dataclass
class Keys:
    pem: str
    jwk: dict[str, Any]
    public_pem: str

    def jwks(self, kid: str = KID) -> dict[str, Any]:
        return {"keys": [{**self.jwk, "kid": kid}]}

    def token(
        self,
        sub: str = "alice",
        roles: list[str] | None = None,
        *,
        kid: str = KID,
        ttl: int = 300,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "sub": sub,
            "roles": roles if roles is not None else [],
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + ttl,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return str(
            jwt.encode(body, self.pem, algorithm="RS256", headers={"kid": kid, **(headers or {})})
        )


@pytest.fixture(scope="session")
def keys() -> Keys:
    pem, jwk = rsa_keypair()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    public_pem = (
        load_pem_private_key(pem.encode(), None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return Keys(pem, jwk, public_pem)


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, list[str]]
    body_bytes: int


@dataclass
class Upstream:
    url: str
    seen: list[Seen] = field(default_factory=list)


def recording_app(upstream: Upstream) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        upstream.seen.append(Seen(request.method, request.raw_path, headers, n))
        return web.json_response({"ok": True, "path": request.raw_path, "bytes": n})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


HandlerUpstream = Callable[..., Awaitable[str]]


@pytest.fixture
def upstream_serving(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> HandlerUpstream:
    """A real upstream answering every path with one handler; returns its base URL."""

    async def serve(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]], **app: Any
    ) -> str:
        application = web.Application(**app)
        application.router.add_route("*", "/{tail:.*}", handler)
        server = await aiohttp_server(application)
        return str(server.make_url("")).rstrip("/")

    return serve


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Upstream:
    up = Upstream(url="")
    server = await aiohttp_server(recording_app(up))
    up.url = str(server.make_url("")).rstrip("/")
    return up


ROUTES: list[dict[str, Any]] = [
    # Site visitors' data offered for another purpose (contracts): 4.2 decides, not the category.
    {
        "name": "site-leads-for-sales",
        "prefix": "/site/leads-for-sales",
        "upstream": "site",
        "system": "site",
        "purpose": "contracts",
        "category": "site_visitor",
    },
    {
        "name": "hr-employees",
        "prefix": "/hr/employees",
        "upstream": "hr",
        "system": "hr",
        "purpose": "hr_records",
        "category": "employee",
        "subject": {"path": "/hr/employees/{id}"},
    },
    {
        "name": "hr-medical",
        "prefix": "/hr/medical",
        "upstream": "hr",
        "system": "hr",
        "purpose": "hr_records",
        "category": "employee_health",
        "subject": {"path": "/hr/medical/{id}"},
    },
    {
        "name": "hr-export",
        "prefix": "/hr/export",
        "methods": ["GET"],
        "actions": {"GET": "export"},
        "upstream": "hr",
        "system": "hr",
        "purpose": "hr_records",
        "category": "employee",
    },
    {
        "name": "crm-counterparties",
        "prefix": "/crm/counterparties",
        "upstream": "crm",
        "system": "crm",
        "purpose": "contracts",
        "category": "counterparty",
        "subject": {"path": "/crm/counterparties/{id}"},
    },
    {
        "name": "crm-export",
        "prefix": "/crm/export",
        "methods": ["GET"],
        "actions": {"GET": "export"},
        "upstream": "crm",
        "system": "crm",
        "purpose": "contracts",
        "category": "counterparty",
    },
    {
        "name": "crm-block",
        "prefix": "/crm/block",
        "methods": ["POST"],
        "actions": {"POST": "block"},
        "upstream": "crm",
        "system": "crm",
        "purpose": "contracts",
        "category": "counterparty",
        "subject": {"path": "/crm/block/{id}"},
    },
    {
        "name": "hr-block",
        "prefix": "/hr/block",
        "methods": ["POST"],
        "actions": {"POST": "block"},
        "upstream": "hr",
        "system": "hr",
        "purpose": "hr_records",
        "category": "employee",
    },
    {
        "name": "hr-medical-block",
        "prefix": "/hr/medical-block",
        "methods": ["POST"],
        "actions": {"POST": "block"},
        "upstream": "hr",
        "system": "hr",
        "purpose": "hr_records",
        "category": "employee_health",
    },
    {
        "name": "site-leads",
        "prefix": "/site/leads",
        "upstream": "site",
        "system": "site",
        "purpose": "site_visitors",
        "category": "site_visitor",
        "subject": {"query": "lead_id"},
    },
    {
        "name": "site-block",
        "prefix": "/site/block",
        "methods": ["POST"],
        "actions": {"POST": "block"},
        "upstream": "site",
        "system": "site",
        "purpose": "site_visitors",
        "category": "site_visitor",
    },
    {
        "name": "site-export",
        "prefix": "/site/export",
        "methods": ["GET"],
        "actions": {"GET": "export"},
        "upstream": "site",
        "system": "site",
        "purpose": "site_visitors",
        "category": "site_visitor",
    },
    {
        "name": "crm-catalog",
        "prefix": "/crm/catalog",
        "methods": ["GET"],
        "upstream": "crm",
        "system": "crm",
        "purpose": "contracts",
        "category": "none",
    },
]


# The HR web app's catch-all route, as deploy/local/gateway.yaml has it beside the more specific
# HR routes (pages and forms under /hr; a person's page names the subject). Not in ROUTES: with
# it, a path no HR route declares would reach the upstream instead of being a 404.
HR_APP: dict[str, Any] = {
    "name": "hr-app",
    "prefix": "/hr",
    "upstream": "hr",
    "system": "hr",
    "purpose": "hr_records",
    "category": "employee",
    "subject": {"path": "/hr/people/{id}"},
}


def config_dict(tmp_path: Path, upstream_url: str, **overrides: Any) -> dict[str, Any]:
    jwks = tmp_path / "jwks.json"
    data: dict[str, Any] = {
        "instance_id": "gw-test",
        "identity": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "algorithms": ["RS256"],
            "jwks_file": str(jwks),
            "clock_skew_seconds": 0,
        },
        "authz": {"model": str(POLICIES / "model.conf"), "policy": str(POLICIES / "policy.csv")},
        "audit": {
            "spool_dir": str(tmp_path / "spool"),
            "durability": "fsync",
            "checkpoint_key_file": str(tmp_path / CHECKPOINT_KEY),
        },
        "proxy": {"trusted_proxies": [], "connect_timeout_seconds": 2, "read_timeout_seconds": 5},
        "upstreams": {"hr": upstream_url, "crm": upstream_url, "site": upstream_url},
        "routes": copy.deepcopy(ROUTES),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


CHECKPOINT_KEY = "checkpoint-key.pem"  # made per test: signs the audit chain's checkpoints


def write_config(tmp_path: Path, data: dict[str, Any], keys: Keys) -> Path:
    (tmp_path / "jwks.json").write_text(json.dumps(keys.jwks()))
    if not (tmp_path / CHECKPOINT_KEY).exists():
        generate_checkpoint_key(tmp_path / CHECKPOINT_KEY, tmp_path / "checkpoint-key.pub")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class _Metered:
    registry: CollectorRegistry

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.registry.get_sample_value(name, labels or {}) or 0.0


def upstream_errors(gw: _Metered, route: str) -> float:
    """Every `pdgw_upstream_errors_total` sample of ``route``, whatever its kind."""
    return sum(
        s.value
        for family in gw.registry.collect()
        if family.name == "pdgw_upstream_errors"
        for s in family.samples
        if s.name == "pdgw_upstream_errors_total" and s.labels.get("route") == route
    )


@dataclass
class Gw(_Metered):
    client: TestClient[Any, Any]
    cfg: Config
    registry: CollectorRegistry
    spool_dir: Path


GatewayFactory = Callable[..., Awaitable[Gw]]


@pytest.fixture
def make_gateway(
    tmp_path: Path, keys: Keys, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> GatewayFactory:
    async def make(upstream_url: str, **overrides: Any) -> Gw:
        path = write_config(tmp_path, config_dict(tmp_path, upstream_url, **overrides), keys)
        cfg = load_config(path)
        registry = CollectorRegistry()
        proxy_app, _ = build(cfg, registry)
        client = await aiohttp_client(proxy_app)
        return Gw(client, cfg, registry, cfg.audit.spool_dir)

    return make


@dataclass
class Served(_Metered):
    """A gateway on its real listeners (TLS, connection gate, client limits), in this process."""

    proxy_url: str
    admin_url: str
    proxy_port: int
    admin_port: int
    cfg: Config
    registry: CollectorRegistry
    spool_dir: Path
    console_url: str = ""  # the console's own listener (decision 035), with a console section


ServeFactory = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve_gateway(tmp_path: Path, keys: Keys) -> AsyncIterator[ServeFactory]:
    started: list[listeners.Listeners] = []

    async def serve(upstream_url: str, **overrides: Any) -> Served:
        home = tmp_path / f"gateway-{len(started)}"  # each its own spool
        home.mkdir()
        data = config_dict(home, upstream_url, **overrides)
        for name in ("proxy", "admin"):
            data.setdefault("listen", {}).setdefault(name, {}).setdefault("port", 0)
        if "console" in data:  # its origin is known before it listens: a port chosen here
            data["console"].setdefault("listen", {}).setdefault("port", free_port())
        cfg = load_config(write_config(home, data, keys))
        registry = CollectorRegistry()
        proxy_app, admin_app = build(cfg, registry)
        gw = proxy_app[GATEWAY]
        sites = await listeners.start(
            cfg,
            proxy_app,
            admin_app,
            gw.metrics,
            console_app=console_app(gw, None) if cfg.console is not None else None,
        )
        started.append(sites)
        scheme = "https" if cfg.proxy_listen.tls else "http"
        assert sites.proxy is not None
        return Served(
            proxy_url=f"{scheme}://127.0.0.1:{sites.proxy.port}",
            admin_url=f"http://127.0.0.1:{sites.admin.port}",
            proxy_port=sites.proxy.port,
            admin_port=sites.admin.port,
            cfg=cfg,
            registry=registry,
            spool_dir=cfg.audit.spool_dir,
            console_url=cfg.console_origin,
        )

    yield serve
    for sites in reversed(started):
        await sites.close()


@pytest.fixture
async def gw(make_gateway: GatewayFactory, upstream: Upstream) -> Gw:
    return await make_gateway(upstream.url)


def run_cli(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """`pd-gateway ARGS` in a process of its own, as a user runs it (killed after ``timeout``)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def spool_events(spool_dir: Path) -> list[dict[str, Any]]:
    from gateway.audit.events import join
    from gateway.audit.segments import read_records

    return [e for e in join(read_records(spool_dir)) if e["kind"] in ("access", "outcome")]


async def anonymous_refusals(gw: Gw) -> list[dict[str, Any]]:
    """End the current window of refusals without a valid token and return every summary
    recorded so far (docs/decisions/013-anonymous-refusals.md)."""
    await gw.client.app[GATEWAY].anonymous.flush()
    return [r for r in spool_records(gw.spool_dir) if r["kind"] == "refusal_summary"]


def chained_seqs(spool_dir: Path) -> list[int]:
    """The sequence numbers of every chained record in the spool, in file order."""
    return [r["seq"] for r in spool_records(spool_dir) if "hash" in r and "seq" in r]


def spool_records(spool_dir: Path) -> list[dict[str, Any]]:
    from gateway.audit.segments import read_records

    return list(read_records(spool_dir))


def gateway_spools(spool_dir: Path) -> list[Path]:
    """Every chain a `pd-gateway serve` keeps under its ``audit.spool_dir``: the supervisor's
    (the directory itself) and each worker's (``w<i>``), decision 030."""
    workers = [p for p in spool_dir.glob("w*") if p.is_dir() and p.name[1:].isdigit()]
    return [spool_dir, *sorted(workers, key=lambda p: int(p.name[1:]))]


def gateway_events(spool_dir: Path) -> list[dict[str, Any]]:
    """The access events (each joined with its outcome) of every chain under ``spool_dir``."""
    return [e for spool in gateway_spools(spool_dir) for e in spool_events(spool)]


def gateway_records(spool_dir: Path) -> list[dict[str, Any]]:
    """The records of every chain under ``spool_dir``, chain by chain."""
    return [r for spool in gateway_spools(spool_dir) for r in spool_records(spool)]


async def raw_request(
    gw: Gw, method: str, raw: str, headers: dict[str, str] | None = None
) -> ClientResponse:
    """Send ``raw`` exactly as written (the test client would otherwise normalise it with yarl).

    The response is read in full and its connection released before it is returned: ``status``,
    ``headers``, ``read()``, ``text()`` and ``json()`` work on it. (An unread response held its
    connection until the garbage collector found it, and the ResourceWarning then failed
    whichever test was running under ``filterwarnings = error``.)"""
    from yarl import URL

    root = str(gw.client.make_url("")).rstrip("/")
    async with gw.client.session.request(
        method, URL(root + raw, encoded=True), headers=headers or {}
    ) as resp:
        await resp.read()
    return resp


def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to 127.0.0.1:port; everything the server sends until it closes (or 3 s of
    silence). For requests no HTTP client would write."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out


DEMO_CONFIG = ROOT / "deploy" / "local" / "gateway.yaml"
_DEMO_FILES = {
    "identity": ("jwks_file", "demo_signing_key_file"),
    "authz": ("model", "policy"),
    "audit": ("checkpoint_key_file", "subject_key_file"),
    "evidence": ("alert_rules_file",),
}


def demo_config_dict() -> dict[str, Any]:
    """The demo config (deploy/local/gateway.yaml) with every file it names made absolute, so a
    test can change it and write it anywhere."""
    data: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text())
    for section, keys in _DEMO_FILES.items():
        for key in keys:
            if key in data[section]:
                data[section][key] = str((DEMO_CONFIG.parent / data[section][key]).resolve())
    return data


def replay_config(tmp_path: Path, store: dict[str, Any]) -> Path:
    """The demo config with ``store`` as its store section, written for `audit replay`."""
    cfg = demo_config_dict()
    cfg["store"] = store
    cfg.pop("oidc", None)  # browser login: not what replay is about
    cfg.pop("console", None)  # it needs the browser login
    path = tmp_path / "replay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
