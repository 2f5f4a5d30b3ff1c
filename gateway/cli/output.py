"""What the investigation commands print and write: tables, JSON arrays, NDJSON, CSV, and files
that are whole or absent.

Contract:
- ``table`` shows every value whole (a hash is 43 characters: cut, it is useless); columns are
  aligned up to 40 characters, a longer value pushes the rest of its row.
- ``Rows`` writes a stream of rows as it arrives, in one of ``table`` (buffered: widths),
  ``json`` (one JSON array, what ``json.load`` reads), ``ndjson`` (one object a line, for
  streams) or ``csv``.
- ``destination(path)`` gives a file to write that appears at ``path`` only if the command
  succeeds: a temporary file beside it, renamed over it at the end (an export refused half-way,
  or a gateway that is down, leaves an existing file as it was).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from gateway.audit.query import spreadsheet_cell
from gateway.cli.times import show

Columns = tuple[tuple[str, str], ...]
MAX_WIDTH = 40


def cell(key: str, value: Any, tz: dt.tzinfo) -> str:
    if key == "ts_us" and value not in ("", None):
        return show(int(value), tz)
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value) if value not in ("", None) else "-"


def table(rows: list[dict[str, Any]], columns: Columns, out: TextIO, tz: dt.tzinfo) -> None:
    cells = [[cell(k, r.get(k, ""), tz) for _, k in columns] for r in rows]
    widths = [
        min(MAX_WIDTH, max([len(h), *(len(c[i]) for c in cells)]))
        for i, (h, _) in enumerate(columns)
    ]
    head = "  ".join(h.upper().ljust(w) for (h, _), w in zip(columns, widths, strict=True))
    print(head.rstrip(), file=out)
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip(), file=out)


class Rows:
    """Rows written as they come, in one format."""

    def __init__(self, out: TextIO, fmt: str, columns: Columns, tz: dt.tzinfo) -> None:
        self.out, self.fmt, self.columns, self.tz = out, fmt, columns, tz
        self.count = 0
        self._buffered: list[dict[str, Any]] = []
        self._csv: csv.DictWriter[str] | None = None

    def add(self, row: dict[str, Any]) -> None:
        self.count += 1
        if self.fmt == "json":
            self.out.write(("[\n" if self.count == 1 else ",\n") + _json(row))
        elif self.fmt == "ndjson":
            self.out.write(_json(row) + "\n")
        elif self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.DictWriter(self.out, fieldnames=list(row), extrasaction="ignore")
                self._csv.writeheader()
            self._csv.writerow(
                {
                    k: spreadsheet_cell(cell(k, v, self.tz) if isinstance(v, list) else v)
                    for k, v in row.items()
                }
            )
        else:
            self._buffered.append(row)  # a table needs its widths: at most the API's MAX_ROWS

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("[]\n" if self.count == 0 else "\n]\n")
        elif self.fmt == "table":
            table(self._buffered, self.columns, self.out, self.tz)


def _json(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False)


@contextlib.contextmanager
def destination(path: str | None) -> Iterator[TextIO]:
    """Standard output, or a file that replaces ``path`` only when the block ends without an
    exception (a ``SystemExit`` with a non-zero code counts as failure too)."""
    if not path:
        yield sys.stdout
        return
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    done = False
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
