"""Fuzz target: response headers naming internal addresses (decision 022). Run by tests/fuzz/run.py.

Whatever an upstream writes in `Location`, `Content-Location`, `Refresh` or `Set-Cookie`, the guard
either keeps the value, rewrites it to the public origin, or raises InternalAddress — nothing
else; a rewritten URL starts with the public origin; a kept cookie `Domain` never names an
internal address.
"""

from __future__ import annotations

import sys

import atheris
from multidict import CIMultiDict

with atheris.instrument_imports():
    from gateway.forwarding.addresses import (
        AddressGuard,
        InternalAddress,
        Origin,
        normalise_host,
    )

UPSTREAM = "http://10.0.0.5:8000"
GUARD = AddressGuard([UPSTREAM, "https://hr-db.internal:5000"])
ME = Origin("http", "10.0.0.5", 8000)
PUBLIC = Origin("https", "gw.example.org", 443)
PIECES = [
    "http://",
    "https:",
    "//",
    "/\\",
    "\\",
    "10.0.0.5",
    ":8000",
    "0x0a.0.0.5",
    "167772165",
    "[::1]",
    "[::ffff:10.0.0.5]",
    "localhost",
    "HR-DB.internal.",
    "%31%30.0.0.5",
    "user@",
    "/path?q=1#f",
    "\t",
    " ",
    "gw.example.org",
    "; url=",
    "Domain=",
    ".",
]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    value = "".join(
        fdp.PickValueInList(PIECES) if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(6)
        for _ in range(fdp.ConsumeIntInRange(0, 8))
    )
    try:
        out = GUARD.url(value, ME, PUBLIC)
    except InternalAddress:
        pass
    else:
        assert out == value or out.startswith(str(PUBLIC) + "/"), (value, out)
    headers = CIMultiDict([("Refresh", value), ("Set-Cookie", "a=1; Domain=" + value)])
    try:
        GUARD.rewrite(headers, UPSTREAM, PUBLIC)
    except InternalAddress:
        return
    for attr in headers["Set-Cookie"].split(";")[1:]:
        key, _, raw = attr.partition("=")
        if key.strip().lower() == "domain":
            host = normalise_host(raw.strip().strip('"').lstrip("."))
            assert host is None or host == PUBLIC.host or not GUARD.internal(host), value


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
