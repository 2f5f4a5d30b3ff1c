"""Parameter names a request body must not carry, found as the body streams (decisions 011, 036).

Frameworks read parameters from a body as well as from the query, and some let the body win:
PHP's `$_REQUEST` and Laravel's `input()` take the body's first; Rails reads a body-only one. So a
name the gateway reads only elsewhere is a second reading when a body carries it: `_method` (the
method the upstream acts on, decision 011), a route's query subject parameter (the data subject
it acts on, decision 036) and the names its upstream also reads a path subject under (decision
039). The body is read only after the decision, so such a name can never be
authorised: ``BodyNames`` finds it as the body streams, and the forwarder cuts the upstream
request before the chunk that completes it is sent.

A name is matched after the decodings frameworks apply to names: percent escapes (forms),
`\\uXXXX` and a backslash before any other character (JSON; quoted multipart names), `+` as a
space, PHP's `.`/` `/`[` for `_`, any case, and a folded multipart header line joined to the one
before. It is preceded by what starts a name (body start, `&`, `;`, a quote, `=`, white space) and
any spaces (PHP drops leading ones: `+_method`) or brackets (Rack 2 and Express's `qs` read
`[_method]` as `_method`), and followed by what ends one — a NUL too, where PHP cuts a name
(`_method%00`), a `]`, or the body's end — so "payment method" in a text field does not match.

The body is decoded as a stream (an escape split between chunks is held back until it is whole)
and a long run of spaces or brackets is kept short, so no chunking hides a name; a name at the
very end of a chunk may be completed by the next, so ``ends_in_name`` tells the forwarder to hold
that chunk until the next one, or the body's end, says.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

_START = rb'(?:^|[&;"\'=\s])[\s+\[\]]*'
_END = rb'[&;"\'=\[\]\s\x00]'
_UNDERSCORE = rb"[_. \[+]"  # PHP reads `.`, ` ` and `[` in a name as `_`; `+` is a space
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_JSON_ESCAPE = re.compile(rb"\\u00([0-9A-Fa-f]{2})")
_BACKSLASH = re.compile(rb'\\([^"\\/bfnrtu])')  # Ruby's json and quoted names: `\_` is `_`
_FOLD = re.compile(rb"\r?\n(?=[ \t])")  # a folded header line: PHP joins it, space kept
_RUN = re.compile(rb"[\s+\[\]]{9,}")  # any run is as good as 8 to the patterns
_INCOMPLETE = re.compile(rb"(?:%[0-9A-Fa-f]?|\\(?:u(?:0(?:0[0-9A-Fa-f]?)?)?)?)\Z")
# What a parser reads as a name in ways not decoded here, refused where a route asks for it
# (``strict``): RFC 2231 names (`name*=utf-7''…`, `name*0=`), Rack's `Content-ID:` as a part's
# name, a body in UTF-16 or UTF-32 (NULs among its first bytes).
_UNREADABLE = re.compile(rb"name\*|content-id[ \t]*:")


def _decode(data: bytes) -> bytes:
    data = _JSON_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data)
    data = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), data)
    return _BACKSLASH.sub(rb"\1", data).lower()


def _name(name: str) -> bytes:
    return b"".join(_UNDERSCORE if c == "_" else re.escape(c.lower().encode()) for c in name)


@functools.lru_cache(maxsize=256)
def _compiled(names: tuple[str, ...]) -> tuple[re.Pattern[bytes], re.Pattern[bytes], int]:
    """For ``names`` (each a group named by its index): the pattern of a name, the pattern of
    one that ends the data so far, and the decoded bytes to keep between chunks."""
    alternatives = b"|".join(b"(?P<n%d>%s)" % (i, _name(n)) for i, n in enumerate(names))
    body = _START + b"(?:" + alternatives + b")"
    return re.compile(body + _END), re.compile(body + rb"\Z"), 64 + max(len(n) for n in names)


class BodyNames:
    """Feed a request body chunk by chunk; ``feed`` returns what a name found stands for (the
    value given for it in ``names``) once one has appeared as a parameter name, else None;
    ``finish`` says the same at the body's end (a name ending the body)."""

    def __init__(self, names: Mapping[str, str], *, strict: str | None = None) -> None:
        """``names``: parameter name → what finding it means (a refusal's reason). ``strict``:
        the reason to give for a body whose names cannot be read here (``_UNREADABLE``)."""
        self._meaning = tuple(names.values())
        self._pattern, self._at_end, self._window = _compiled(tuple(names))
        self._strict = strict
        self._hold = b""  # raw bytes of an escape not yet whole
        self._tail = b""  # decoded bytes kept from before
        self._at_start = True  # the tail still begins at the body's first byte
        self._seen = 0

    def feed(self, chunk: bytes) -> str | None:
        raw = self._hold + chunk
        incomplete = _INCOMPLETE.search(raw)
        cut = incomplete.start() if incomplete else len(raw)
        self._hold = raw[cut:]
        if self._strict is not None and self._seen < 4 and b"\x00" in raw[: 4 - self._seen]:
            return self._strict  # UTF-16 or UTF-32: not read here
        self._seen += len(chunk)
        data = _RUN.sub(b"        ", _FOLD.sub(b"", self._tail + _decode(raw[:cut])))
        text = data if self._at_start else b"x" + data  # a window's first byte starts nothing
        self._at_start = self._at_start and len(data) <= self._window
        self._tail = data[-self._window :]
        if self._strict is not None and _UNREADABLE.search(text):
            return self._strict
        return self._found(self._pattern.search(text))

    def ends_in_name(self) -> bool:
        """Whether the data so far ends with a whole name: what follows decides."""
        text = self._tail if self._at_start else b"x" + self._tail
        return self._at_end.search(text) is not None or bool(self._hold)

    def finish(self) -> str | None:
        """At the body's end: a name that ends it counts."""
        text = self._tail + _decode(self._hold)
        return self._found(self._at_end.search(text if self._at_start else b"x" + text))

    def _found(self, match: re.Match[bytes] | None) -> str | None:
        if match is None:
            return None
        return self._meaning[int(match.lastgroup[1:]) if match.lastgroup else 0]
