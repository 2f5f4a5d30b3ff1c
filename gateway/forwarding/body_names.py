"""Parameter names a request body must not carry, found as the body streams (decisions 011, 036).

Frameworks read parameters from a body as well as from the query, and several let the body win:
Rails merges form and JSON body parameters over the query's, PHP's `$_REQUEST` and Laravel's
`input()` take the body's first. So a name the gateway reads only elsewhere is a second reading
when a body carries it: `_method` (the method the upstream acts on, decision 011) and a route's
query subject parameter (the data subject it acts on, decision 036). The body is read only after
the decision, so such a name can never be authorised: ``BodyNames`` finds it as the body streams,
and the forwarder cuts the upstream request before the chunk that completes it is sent.

A name is matched after the decodings frameworks apply to names: percent escapes (forms),
`\\uXXXX` (JSON), `+` as a space, PHP's `.`/` `/`[` for `_`, any case. It is preceded by what
starts a name (body start, `&`, `;`, a quote, `=`, white space) and any spaces (PHP drops leading
ones: `+_method`) or brackets (Rack 2 and Express's `qs` read `[_method]` as `_method`), and
followed by what ends one — a NUL too, where PHP cuts a name (`_method%00`), or a `]` — so
"payment method" in a text field does not match.
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


def _decode(data: bytes) -> bytes:
    data = _JSON_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), data)
    return _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), data).lower()


def _name(name: str) -> bytes:
    return b"".join(_UNDERSCORE if c == "_" else re.escape(c.lower().encode()) for c in name)


@functools.lru_cache(maxsize=256)
def _compiled(names: tuple[str, ...]) -> tuple[re.Pattern[bytes], int]:
    """One pattern for ``names`` (each a group named by its index) and the raw bytes to keep
    between chunks: a name fully escaped (`\\u005F` is 6 bytes a character) and its delimiters."""
    alternatives = b"|".join(b"(?P<n%d>%s)" % (i, _name(n)) for i, n in enumerate(names))
    window = max(128, 6 * max(len(n) for n in names) + 32)
    return re.compile(_START + b"(?:" + alternatives + b")" + _END), window


class BodyNames:
    """Feed a request body chunk by chunk; ``feed`` returns what a name found stands for (the
    value given for it in ``names``) once one has appeared as a parameter name, else None. A
    match across chunk boundaries is found: the last bytes are kept."""

    def __init__(self, names: Mapping[str, str]) -> None:
        """``names``: parameter name → what finding it means (a refusal's reason)."""
        self._names = tuple(names)
        self._meaning = tuple(names.values())
        self._pattern, self._window = _compiled(self._names)
        self._tail = b""
        self._at_start = True  # the tail still begins at the body's first byte

    def feed(self, chunk: bytes) -> str | None:
        data = self._tail + chunk
        decoded = _decode(data)
        if not self._at_start:  # a window's first byte is not the start of the body
            decoded = b"x" + decoded
        self._at_start = self._at_start and len(data) <= self._window
        self._tail = data[-self._window :]
        found = self._pattern.search(decoded)
        if found is None:
            return None
        return self._meaning[int(found.lastgroup[1:]) if found.lastgroup else 0]
