"""Fuzz target: the canonical path and routing (THREAT_MODEL.md, decisions 009 and 010). Run by tests/fuzz/run.py.

Any raw request target (query included) either is refused with BadRequest, or is routed to the very route that a
permissive upstream reading of it (servlet `;`, IIS trailing dots, case folding, NFKC, dot
segments) would serve. Nothing else may escape: another exception is a finding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from gateway.config.load import load_config
    from gateway.core.errors import BadRequest
    from gateway.forwarding.routing import RouteTable, canonical_path, subject_ids

from tests.conftest import ROOT
from tests.forwarding.test_paths import permissive_reading

ROUTES = load_config(ROOT / "deploy" / "local" / "gateway.yaml").routes
TABLE = RouteTable(ROUTES)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    method = fdp.PickValueInList(["GET", "POST", "PUT", "DELETE"])
    # What aiohttp's parser hands over: the request target's bytes, UTF-8 with surrogateescape.
    raw = fdp.ConsumeBytes(fdp.remaining_bytes()).decode("utf-8", "surrogateescape")
    try:
        path = canonical_path(raw)
        route = TABLE.match(path, method)
        if route is not None:
            subject_ids(route, path, raw.partition("?")[2])  # raw, as the gateway reads it
    except BadRequest:
        return
    segments = path.split("/")[1:]
    assert all(s not in (".", "..") and ";" not in s for s in segments), raw
    assert all(s for s in segments[:-1]), raw
    try:
        served = TABLE.match(permissive_reading(raw), method)
    except BadRequest:  # a reading that is itself ambiguous is no route of its own
        return
    assert served is route, (raw, route and route.name, served and served.name)


def seed(corpus: Path) -> None:
    """Start from the demo's routes and the known tricks (libFuzzer mutates from there)."""
    from tests.forwarding.test_paths import KNOWN_ATTACKS

    paths = [r.prefix + "/1001" for r in ROUTES] + KNOWN_ATTACKS
    for i, path in enumerate(paths):
        (corpus / f"seed-{i}").write_bytes(b"\0" + path.encode())  # first byte picks the method


if __name__ == "__main__":
    corpora = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if corpora:
        seed(corpora[0])
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
