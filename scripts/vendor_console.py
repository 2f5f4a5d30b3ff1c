"""`make vendor`: the console's browser libraries from npm into the package.

`npm ci` in assets/console installs exactly what assets/console/package-lock.json pins; the files
named in assets/console/vendor.json are then copied into gateway/web/console/static/vendor/, which
the wheel ships and the gateway serves itself (no CDN). tests/web/console/test_assets.py checks
that the committed copies are those files byte for byte.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets" / "console"
VENDOR = ROOT / "gateway" / "web" / "console" / "static" / "vendor"


def main() -> int:
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ASSETS, check=True
    )
    files: dict[str, str] = json.loads((ASSETS / "vendor.json").read_text())["files"]
    for source, target in files.items():
        shutil.copyfile(ASSETS / "node_modules" / source, VENDOR / target)
        print(f"gateway/web/console/static/vendor/{target} <- node_modules/{source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
