"""The module map's import rules (STYLE.md): identity, authz and audit do not import each other,
the pure core does not import aiohttp wiring, and only the composition root builds the apps."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "gateway"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("gateway")}


def test_identity_authz_and_audit_do_not_import_each_other() -> None:
    groups = {
        "identity": ["identity.py"],
        "authz": ["authz.py"],
        "audit": list(p.name for p in (PKG / "audit").glob("*.py")),
    }
    for name, files in groups.items():
        for f in files:
            path = PKG / ("audit/" + f if name == "audit" else f)
            others = {f"gateway.{o}" for o in groups if o != name}
            bad = {
                m for m in imports_of(path) if any(m == o or m.startswith(o + ".") for o in others)
            }
            assert not bad, (path.name, bad)


def test_lower_layers_never_import_the_wiring() -> None:
    wiring = {"gateway.app", "gateway.pipeline", "gateway.admin", "gateway.cli"}
    for path in [*PKG.glob("*.py"), *(PKG / "audit").glob("*.py")]:
        if path.stem in ("app", "pipeline", "admin", "__main__"):
            continue
        assert not {m for m in imports_of(path) if any(m.startswith(w) for w in wiring)}, path.name
