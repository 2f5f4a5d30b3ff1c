"""Fuzz target: request header hygiene toward the upstream (THREAT_MODEL.md, decisions 009 and 010). Run by tests/fuzz/run.py.

Whatever headers a client sends, the upstream never receives a hop-by-hop header, a header the
client listed in `Connection`, a client's `X-PD-*`, `X-Request-Id`, `Expect` or `Authorization`,
a URL-rewrite or alternate-identity header or a method override, in any spelling (case, `_` for
`-`: decision 011), and `X-Forwarded-For` ends with the real peer (and is only the peer when it is not trusted).
"""

from __future__ import annotations

import ipaddress
import sys

import atheris
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

with atheris.instrument_imports():
    from gateway.core.errors import BadRequest
    from gateway.forwarding.headers import (
        HOP_BY_HOP,
        STRIPPED,
        client_address,
        connection_listed,
        header_key,
        upstream_headers,
        valid_host,
    )
    from gateway.forwarding.method_override import OVERRIDE_HEADERS

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)
NAMES = [
    "Connection",
    "Keep-Alive",
    "TE",
    "Transfer-Encoding",
    "Upgrade",
    "X-PD-User",
    "x-pd-roles",
    "X-Request-Id",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "Forwarded",
    "Authorization",
    "Expect",
    "Host",
    "X-Custom",
    "Accept",
    "Proxy-Authorization",
    "X_PD_User",
    "X-PD_Roles",
    "X_Request_Id",
    "Transfer_Encoding",
    "X_Original_URL",
    "Remote-User",
    "Proxy",
    "X-HTTP-Method-Override",
    "X_Custom",
]
INJECTED = {"X-PD-User": "gateway-user", "X-PD-Roles": "hr_officer", "X-Request-Id": "rid"}


class _Transport:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self._peer, 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    peer = fdp.PickValueInList(["10.1.2.3", "203.0.113.7", "::1"])
    headers: CIMultiDict[str] = CIMultiDict()
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        name = (
            fdp.PickValueInList(NAMES)
            if fdp.ConsumeBool()
            else fdp.ConsumeUnicodeNoSurrogates(12).strip() or "X-Empty"
        )
        headers.add(name, fdp.ConsumeUnicodeNoSurrogates(40))
    try:
        request = make_mocked_request("GET", "/hr/x", headers=headers, transport=_Transport(peer))
    except ValueError:
        return  # a header the HTTP layer itself refuses
    try:
        out = upstream_headers(
            request, trusted=TRUSTED, forward_authorization=False, injected=INJECTED
        )
    except BadRequest:
        # Only a Host check_request_headers refuses first (the pipeline never gets here).
        assert not valid_host(request.host), request.host
        return
    listed = {header_key(n) for n in connection_listed(headers)}
    for name in out:
        lower = header_key(name)
        assert lower not in HOP_BY_HOP and lower not in listed, name
        assert lower not in ("expect", "host", "authorization"), name
        assert lower not in STRIPPED and lower not in OVERRIDE_HEADERS, name
        if lower.startswith("x-pd-") or lower == "x-request-id":
            assert out.getall(name) == [INJECTED[name]] or out.getall(name) == [
                v for k, v in INJECTED.items() if k.lower() == lower
            ], name
    forwarded_for = out.getall("X-Forwarded-For")
    assert len(forwarded_for) == 1
    assert forwarded_for[0] == peer or (
        peer.startswith("10.") and forwarded_for[0].endswith(", " + peer)
    ), (peer, forwarded_for)
    assert isinstance(client_address(request, TRUSTED), str)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
