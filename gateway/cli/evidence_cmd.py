"""`pd-gateway evidence --from --to [-o DIR]` and `pd-gateway evidence verify PACK` (9.1.9;
decision 028): an evidence pack for an inspection, a client of the admin API
(gateway.web.evidence_api).

A pack is a directory, written whole or not at all (a temporary directory renamed at the end):
- ``evidence.json``: the pack, in canonical JSON — the signed document;
- ``evidence.sig.json``: the gateway's Ed25519 signature of it (key id, SHA-256, signature);
- ``evidence.html``: its printable rendering (gateway.cli.evidence_html);
- ``evidence.pdf``: the same page printed by Chromium (Playwright driving the system's Chromium,
  ``PDGW_CHROMIUM``, default /usr/bin/chromium); ``--no-pdf`` leaves it out.

`verify` checks the signature with the given public key, that the HTML is the rendering of the
JSON, then asks the gateway for the same period again and compares every figure: an edited pack
or a store changed since the pack was made fails (exit 1), with each difference named.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.audit import checkpoint
from gateway.cli import client, times
from gateway.cli.client import ApiError
from gateway.cli.evidence_html import render
from gateway.governance.evidence import DOMAIN, canonical, differences

PACK = "evidence.json"
SIGNATURE = "evidence.sig.json"
HTML = "evidence.html"
PDF = "evidence.pdf"
CHROMIUM = os.environ.get("PDGW_CHROMIUM", "/usr/bin/chromium")


def register(sub: Any) -> None:
    e = sub.add_parser(
        "evidence", help="an evidence pack for an inspection of a period (9.1.9), or verify one"
    )
    e.add_argument("--from", dest="start", help=f"the period's start: {times.FORMS}")
    e.add_argument(
        "--to", dest="end", help="the period's end; a date means through the end of that day"
    )
    e.add_argument(
        "--output", "-o", type=Path, help="the pack's directory (default evidence-FROM-TO)"
    )
    e.add_argument("--tz", help="the zone of dates given without one (default: this machine's)")
    e.add_argument("--no-pdf", action="store_true", help="leave out the PDF (no Chromium here)")
    client.connection(e)
    e.set_defaults(run=run_make)
    esub = e.add_subparsers(dest="evidence_command")
    v = esub.add_parser("verify", help="check a pack's signature and recompute it from the store")
    v.add_argument("pack", type=Path, help="the pack's directory (or its evidence.json)")
    v.add_argument(
        "--public-key",
        action="append",
        required=True,
        type=Path,
        help="the gateway's public key (PEM; the checkpoint key unless evidence.key_file is set)",
    )
    v.add_argument("--offline", action="store_true", help="check the files only, not the store")
    client.connection(v)
    v.set_defaults(run=run_verify)


def _period(args: argparse.Namespace) -> tuple[dt.datetime, dt.datetime]:
    if not args.start or not args.end:
        raise times.TimeError("--from and --to are required (or `evidence verify PACK`)")
    tz = times.zone(args.tz)
    now = dt.datetime.now(dt.UTC)
    start = times.parse_when(args.start, tz, now)
    end = times.parse_when(args.end, tz, now)
    if times.is_date(args.end):  # through the end of that day
        end = end + dt.timedelta(days=1)
    return start, end


@contextlib.contextmanager
def whole_directory(target: Path) -> Iterator[Path]:
    """A directory that appears at ``target`` only if the block ends without an exception."""
    if target.exists():
        raise ApiError(f"{target}: exists; not overwritten")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run_make(args: argparse.Namespace) -> int:
    try:
        start, end = _period(args)
        token = client.read_token(args)
    except (ApiError, times.TimeError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 2
    body = {"from": times.for_api(start), "to": times.for_api(end)}
    target = args.output or Path(
        f"evidence-{start.date().isoformat()}-{(end - dt.timedelta(microseconds=1)).date()}"
    )
    try:
        answer = client.request(str(args.gateway).rstrip("/") + "/admin/evidence", token, body)
        pack, signature = answer["pack"], answer["signature"]
        data = canonical(pack)
        if hashlib.sha256(data).hexdigest() != signature["sha256"]:
            raise ApiError("the pack received does not match its signature's digest")
        pack = json.loads(data)  # rendered as verify reads it: keys in canonical order
        html = render(pack, data)
        with whole_directory(target) as tmp:
            (tmp / PACK).write_bytes(data)
            (tmp / SIGNATURE).write_text(json.dumps(signature, indent=2) + "\n")
            (tmp / HTML).write_text(html, encoding="utf-8")
            if not args.no_pdf:
                pages = print_pdf(html, signature["sha256"], tmp / PDF)
    except (ApiError, OSError, PdfError) as e:
        print(f"pd-gateway: {e}", file=sys.stderr)
        return 1
    f = pack["figures"]
    ok = "intact" if f["registration"]["verify"]["ok"] else "NOT intact"
    print(f"evidence pack {target}/ for {body['from']} to {body['to']}")
    print(
        f"  {f['registration']['totals']['accesses']} accesses, "
        f"{f['access']['permission_changes_count']} permission changes, "
        f"{f['trail_reads']['count']} reads of the trail, "
        f"{len(f['subject_requests']['requests'])} subject requests; the trail is {ok}"
    )
    print(f"  signed by key {signature['key_id']}: SHA-256 {signature['sha256']}")
    files = [PACK, SIGNATURE, HTML] + ([] if args.no_pdf else [f"{PDF} ({pages} pages)"])
    print(f"  {', '.join(files)} (request {answer['request_id']})")
    return 0


class PdfError(Exception):
    """The PDF could not be printed; the message says why and what to do."""


def print_pdf(html: str, digest: str, path: Path) -> int:
    """Print ``html`` to ``path`` with Chromium (A4, the digest in every page's footer); the
    number of pages."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        raise PdfError(
            "the PDF needs Playwright (pip install playwright), or use --no-pdf"
        ) from None
    if not Path(CHROMIUM).exists():
        raise PdfError(f"the PDF needs Chromium at {CHROMIUM} (PDGW_CHROMIUM), or use --no-pdf")
    footer = (
        '<div style="font-size:7pt;width:100%;text-align:center;color:#444">'
        f"evidence.json SHA-256 {digest} — page <span class=pageNumber></span> of "
        "<span class=totalPages></span></div>"
    )

    async def run() -> int:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                page = await browser.new_page()
                await page.route("**/*", lambda route: route.abort())  # nothing from outside
                await page.set_content(html, wait_until="load")
                pdf = await page.pdf(
                    format="A4",
                    print_background=True,
                    display_header_footer=True,
                    header_template="<span></span>",
                    footer_template=footer,
                    margin={"top": "1.2cm", "bottom": "1.5cm", "left": "1.2cm", "right": "1.2cm"},
                )
            finally:
                await browser.close()
        path.write_bytes(pdf)
        return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf))

    try:
        return asyncio.run(run())
    except Exception as e:  # Playwright's errors have no common base worth naming here
        raise PdfError(f"Chromium could not print the PDF: {type(e).__name__}") from None


def run_verify(args: argparse.Namespace) -> int:
    given: Path = args.pack
    folder = given if given.is_dir() else given.parent
    try:
        keys = checkpoint.load_public_keys(args.public_key)
    except (OSError, ValueError) as e:
        print(f"pd-gateway: public key: {e}", file=sys.stderr)
        return 2
    problems: list[str] = []
    try:
        if given.is_file() and given.name != PACK:  # the console's download: pack + signature
            bundle = json.loads(given.read_text(encoding="utf-8"))
            pack, signature = bundle["pack"], bundle["signature"]
            data = canonical(pack)
        else:
            data = (folder / PACK).read_bytes()
            signature = json.loads((folder / SIGNATURE).read_text())
            pack = json.loads(data)
            if canonical(pack) != data:
                problems.append(f"{PACK}: not in canonical form (edited)")
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"pd-gateway: {given}: not a readable pack: {e}", file=sys.stderr)
        return 2
    if hashlib.sha256(data).hexdigest() != signature.get("sha256"):
        problems.append(f"{PACK}: its SHA-256 is not the one signed (edited)")
    bad = checkpoint.check_document(
        keys, str(signature.get("key_id")), DOMAIN, data, str(signature.get("signature"))
    )
    if bad:
        problems.append(f"{SIGNATURE}: {bad}")
    print(f"signature: {'valid' if not problems else 'INVALID'} (key {signature.get('key_id')})")
    html = folder / HTML
    if (
        given.name in (PACK, folder.name)
        and html.exists()
        and html.read_text(encoding="utf-8") != render(pack, data)
    ):
        problems.append(f"{HTML}: not the rendering of {PACK} (edited)")
    if not args.offline and not problems:
        problems += _recompute(args, pack)
    for p in problems:
        print(f"  {p}")
    if problems:
        print(f"evidence pack {folder}: NOT verified ({len(problems)} problem(s))")
        return 1
    scope = "the files" if args.offline else "the signature and every figure, recomputed"
    print(f"evidence pack {folder}: verified ({scope})")
    return 0


def _recompute(args: argparse.Namespace, pack: dict[str, Any]) -> list[str]:
    period = pack["period"]
    body = {
        "from": dt.datetime.fromtimestamp(period["from_us"] / 1e6, dt.UTC).isoformat(
            timespec="microseconds"
        ),
        "to": dt.datetime.fromtimestamp(period["to_us"] / 1e6, dt.UTC).isoformat(
            timespec="microseconds"
        ),
    }
    try:
        token = client.read_token(args)
        answer = client.request(str(args.gateway).rstrip("/") + "/admin/evidence", token, body)
    except ApiError as e:
        return [f"cannot recompute: {e}"]
    diff = differences(pack["figures"], answer["pack"]["figures"])
    if diff:
        return [
            f"the store no longer gives this pack ({len(diff)} difference(s); recomputed in "
            f"request {answer['request_id']}):",
            *(f"  {d}" for d in diff[:50]),
        ]
    print(f"figures: recomputed from the store, identical (request {answer['request_id']})")
    return []
