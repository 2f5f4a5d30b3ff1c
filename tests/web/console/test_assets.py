"""What the console is made of (decision 025): the vendored browser libraries are exactly what
npm installs from assets/console/package-lock.json; every message of the UI has its Russian
translation; no template carries inline script or style (the Content-Security-Policy would block
it); templates, catalogs and static files are in the wheel."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jinja2
import pytest

from gateway.audit import report
from gateway.web.console.render import catalog
from tests.conftest import ROOT

CONSOLE = ROOT / "gateway" / "web" / "console"
ASSETS = ROOT / "assets" / "console"


def test_the_vendored_libraries_are_the_locked_npm_packages_byte_for_byte() -> None:
    modules = ASSETS / "node_modules"
    assert modules.is_dir(), "npm ci in assets/console: run ./scripts/system-deps.sh"
    lock = json.loads((ASSETS / "package-lock.json").read_text())["packages"]
    for name in ("htmx.org", "uplot"):
        installed = json.loads((modules / name / "package.json").read_text())["version"]
        assert installed == lock[f"node_modules/{name}"]["version"], name
    files = json.loads((ASSETS / "vendor.json").read_text())["files"]
    for source, target in files.items():
        assert (CONSOLE / "static" / "vendor" / target).read_bytes() == (
            modules / source
        ).read_bytes(), f"{target}: run `make vendor`"
    assert sorted(p.name for p in (CONSOLE / "static" / "vendor").iterdir()) == sorted(
        files.values()
    )


def _messages() -> set[str]:
    env = jinja2.Environment(extensions=["jinja2.ext.i18n"])
    found: set[str] = set()
    for path in (CONSOLE / "templates").glob("*.html"):
        for _, _, message in env.extract_translations(path.read_text()):
            if isinstance(message, str):
                found.add(message)
    return found


# Messages the code passes to the templates (titles, refusals, states, kinds).
PYTHON_MESSAGES = {
    # The register of subjects' requests: its states, types, outcomes, the act's fields.
    *("open", "overdue", "met", "missed"),
    *("access", "block", "correct", "destroy", "withdraw-consent"),
    *("answered", "verified", "corrected", "destroyed", "processing_stopped", "refused"),
    *("act:what", "act:where", "act:by", "act:when"),
    "no such request",
    "not a request id",
    "your job function may not open this kind of request",
    "your job function may not close this request",
    "your job function may not export the trail",
    "Refused",
    "Not found",
    "The request could not be used",
    "your job function may not use the audit console",
    "your job function may not block or unblock a data subject",
    "your job function may not review anomalies",
    "cross-site request refused",
    "this link has expired: enter the subject's id again",
    "no such event in the trail (or not shipped yet)",
    "comment: say what you found (at least 3 characters)",
    "reason: say why (the subject's request, a ticket)",
    "confirm: tick the box to confirm",
    "subject: the id is required",
    "subject: printable characters only (no control characters)",
    "label: must not contain the subject's id (5.3): name the case, e.g. a ticket",
    "this data subject is not blocked: nothing to unblock",
    *report.LOOKED_UP.values(),
    "Categories of personal data processed",
    "Purposes of processing",
    "intact",
    "problems",
    "running",
    "failed",
    "bulk_access",
    "off_hours",
    "probing",
    "special_category",
    "export",
    "break_glass",
    "permission_change",
}


def test_every_message_of_the_ui_has_a_russian_translation() -> None:
    messages = _messages()
    assert len(messages) > 150
    ru = catalog("ru")
    missing = sorted((messages | PYTHON_MESSAGES) - set(ru))
    assert not missing, missing
    assert all(ru[m].strip() for m in messages)


def test_no_template_carries_inline_script_style_or_event_handlers() -> None:
    for path in (CONSOLE / "templates").glob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path.name
        assert not re.search(r"<style\b|\sstyle=", text), path.name
        assert not re.search(r"\son[a-z]+=", text), path.name
        assert "hx-on" not in text and "javascript:" not in text, path.name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_templates_catalogs_and_static_files_are_in_the_wheel(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = tmp_path.glob("pd_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = "gateway/web/console/"
    for path in CONSOLE.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".json", ".css", ".js", ".txt"):
            assert packaged + str(path.relative_to(CONSOLE)) in names, path
    assert not any("node_modules" in n or n.startswith("assets/") for n in names)
