"""The spool's files as a reader sees them (docs/decisions/001-spool-format.md): segment files
``NNNNNNNNNNNN.jsonl``, one record a line; a line without its newline is a torn write, skipped.

Used by the spool (its start: the chain's last head), the shipper, `audit tail`, `audit replay`
(both over every chain of a gateway's spool directory: ``gateway_chains``) and the tests. The
writer is ``gateway.audit.spool``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.audit import chain
from gateway.audit.chain import ChainHead

SUFFIX = ".jsonl"


def list_segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob(f"*{SUFFIX}") if p.stem.isdigit())


def gateway_chains(directory: Path) -> list[tuple[str, Path]]:
    """Every chain of a gateway's ``audit.spool_dir``, named: its supervisor's in the directory
    itself (``""``), then each worker's in ``w<i>`` (``"w<i>"``) in order (decisions 016, 030).
    A spool directory without workers' chains is the one chain it holds."""
    workers = [p for p in directory.glob("w*") if p.name[1:].isdigit() and p.is_dir()]
    return [("", directory), *((p.name, p) for p in sorted(workers, key=lambda p: int(p.name[1:])))]


@dataclass(frozen=True)
class BadLine:
    segment: Path
    line: int
    problem: str


def decode_line(line: bytes) -> dict[str, Any]:
    """One spool line → a record dict (chained records get their values named); ValueError if it
    is not a record (orjson's JSONDecodeError is a ValueError)."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return chain.parse(obj) if "rec" in obj else obj


def read_records(
    directory: Path, on_bad: Callable[[BadLine], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Every complete record in the spool, oldest first. Torn or corrupt lines go to ``on_bad``."""
    for segment in list_segments(directory):
        yield from read_segment(segment, on_bad)


def read_segment(
    segment: Path, on_bad: Callable[[BadLine], None] | None = None
) -> Iterator[dict[str, Any]]:
    with segment.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                if on_bad:
                    on_bad(BadLine(segment, n, "torn final line (never acknowledged)"))
                return
            try:
                rec = decode_line(line)
            except ValueError as e:
                if on_bad:
                    on_bad(BadLine(segment, n, f"not a valid record ({type(e).__name__})"))
                continue
            yield rec


def last_head(directory: Path) -> ChainHead:
    """The newest chained record's sequence number and hash (0 and GENESIS if none), from the
    newest non-empty segment, whose first record carries the head at the time it was begun."""
    for segment in reversed(list_segments(directory)):
        best: ChainHead | None = None
        for r in read_segment(segment):
            if "seq_hw" in r:  # start / segment header
                cand = ChainHead(int(r["seq_hw"]), str(r.get("head", "")), str(r["instance"]))
            elif "seq" in r and "hash" in r:
                cand = ChainHead(int(r["seq"]), str(r["hash"]), str(r.get("instance", "")))
            elif r.get("kind") == "access" and "seq" in r:  # a first-release, unchained spool
                cand = ChainHead(int(r["seq"]), chain.GENESIS, str(r.get("instance", "")))
            else:
                continue
            if best is None or cand.seq >= best.seq:
                best = cand
        if best is not None:
            return ChainHead(best.seq, best.hash or chain.GENESIS, best.instance)
    return ChainHead(0, chain.GENESIS, "")


def encode_record(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"
