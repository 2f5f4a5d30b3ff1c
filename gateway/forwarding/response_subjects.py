"""Subjects named in a JSON response (6.1.1): list and search endpoints record whom they returned.

Contract: ``ResponseCopy`` keeps a copy of a response body as it streams, up to the route's
``max_bytes`` (past it the copy is dropped and the record says the cap was hit: the client is
never held back to fill it). ``extract`` reads the ids the route's pointer names (``*`` = every
element of an array) from a complete copy: at most ``max_subjects`` distinct ids, in order of
appearance, with the count of all found. Numbers count as ids (their JSON text); anything else
at the pointer, a body that is not JSON, or a copy that was cut is no ids and no error: the
access itself is recorded either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.config.model import ResponseSubjects


@dataclass
class ResponseCopy:
    rule: ResponseSubjects
    body: bytearray = field(default_factory=bytearray)
    capped: bool = False
    found: Found | None = None  # extract()'s answer, kept: the outcome and the block check

    def add(self, chunk: bytes) -> None:
        if self.capped:
            return
        if len(self.body) + len(chunk) > self.rule.max_bytes:
            self.capped = True
            self.body = bytearray()  # bounded: never more than the cap held
            return
        self.body += chunk


@dataclass(frozen=True)
class Found:
    subjects: list[str]
    count: int
    capped: bool


def _walk(node: Any, pointer: tuple[str, ...]) -> Iterator[Any]:
    if not pointer:
        yield node
        return
    head, rest = pointer[0], pointer[1:]
    if head == "*":
        if isinstance(node, list):
            for item in node:
                yield from _walk(item, rest)
    elif isinstance(node, dict):
        if head in node:
            yield from _walk(node[head], rest)
    elif isinstance(node, list) and head.isdigit() and int(head) < len(node):
        yield from _walk(node[int(head)], rest)


def extract(copy: ResponseCopy) -> Found:
    if copy.found is None:
        copy.found = _extract(copy)
        copy.body = bytearray()
    return copy.found


def _extract(copy: ResponseCopy) -> Found:
    if copy.capped:
        return Found([], 0, True)
    try:
        doc = json.loads(copy.body)
    except ValueError:
        return Found([], 0, False)
    seen: dict[str, None] = {}
    for value in _walk(doc, copy.rule.pointer):
        if isinstance(value, str) and value:
            seen.setdefault(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seen.setdefault(json.dumps(value))
    ids = list(seen)
    cap = copy.rule.max_subjects
    return Found(ids[:cap], len(ids), len(ids) > cap)
