"""The architecture's import rules (docs/architecture.md, CONTRIBUTING.md) as import-linter
contracts in pyproject.toml: the sub-packages import down one exhaustive list of layers
(identity, policy and audit independent of each other), and each sub-package with an order keeps
it. `make lint` runs the same check."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import ROOT


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    n = len(contracts["contracts"])
    assert f"Contracts: {n} kept, 0 broken." in out.stdout  # every contract was checked
