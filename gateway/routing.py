"""The route table, the canonical request path, and subject-id extraction.

SECURITY (THREAT_MODEL.md, path confusion): the path used for routing and authorisation must be
the path the upstream receives. The gateway forwards the raw path byte for byte and routes on its
percent-decoded form, so it refuses every raw path whose decoded form could be read differently
by an upstream: encoded slashes or backslashes, dot segments, empty segments, control bytes and
invalid (e.g. overlong) UTF-8. What passes has the same segments raw and decoded.

Upstream servers also read paths in ways of their own, and each is refused rather than guessed:
`;` path parameters (servlet containers drop them: `/hr/employees/..;/medical`), trailing dots and
spaces (Windows servers drop them: `/hr/medical./1`), characters that Unicode compatibility
normalisation changes (fullwidth `．．`, ligatures), and a path that a case-insensitive server would
route to another route than the gateway does (`/HR/Medical/1` where only `/hr/medical` is
declared). A path refused here never reaches routing, authorisation or the upstream.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from urllib.parse import unquote_to_bytes

from gateway.config import Route
from gateway.errors import BadRequest

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR = re.compile(r"%(2[fF]|5[cC])")
_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f\\]")
MAX_SUBJECT_LEN = 128


def canonical_path(raw_path: str) -> str:
    """The decoded path of ``raw_path`` (query removed), or BadRequest if it is ambiguous."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/"):
        raise BadRequest("path_not_absolute")
    if _BAD_ESCAPE.search(path):
        raise BadRequest("bad_percent_escape")
    if _ENCODED_SEPARATOR.search(path):
        raise BadRequest("encoded_separator")
    try:  # a target with undecodable bytes (surrogate escapes) fails the encode: same reason
        decoded = unquote_to_bytes(path).decode("utf-8", "strict")
    except UnicodeError as e:
        raise BadRequest("invalid_utf8") from e
    if _CONTROL_OR_BACKSLASH.search(decoded):
        raise BadRequest("control_or_backslash")
    segments = decoded.split("/")[1:]
    for i, seg in enumerate(segments):
        if seg in (".", ".."):
            raise BadRequest("dot_segment")
        if seg == "" and i != len(segments) - 1:  # only a trailing slash may leave one empty
            raise BadRequest("empty_segment")
        if ";" in seg:
            raise BadRequest("path_parameter")
        if seg.endswith((".", " ")):
            raise BadRequest("trailing_dot_or_space")
        if not seg.isascii() and not unicodedata.is_normalized("NFKC", seg):
            raise BadRequest("unnormalised_unicode")
    return decoded


class RouteTable:
    """Longest-prefix match at a segment boundary; a route's `methods` narrow what it matches.

    ``match`` raises BadRequest("case_ambiguous") when the path, compared without regard to case,
    would match another route (or a route where the exact path matches none): a case-insensitive
    upstream would serve it as that route's data."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(sorted(routes, key=lambda r: len(r.prefix.rstrip("/")), reverse=True))
        self._exact = tuple((r.prefix.rstrip("/"), r) for r in self.routes)
        self._folded = tuple((p.lower(), r) for p, r in self._exact)

    def match(self, path: str, method: str) -> Route | None:
        route = self._first(self._exact, path, method)
        if self._first(self._folded, path.lower(), method) is not route:
            raise BadRequest("case_ambiguous")
        return route

    @staticmethod
    def _first(prefixes: tuple[tuple[str, Route], ...], path: str, method: str) -> Route | None:
        for prefix, route in prefixes:
            at_boundary = path == prefix or path.startswith(prefix + "/") or prefix == ""
            if at_boundary and (route.methods is None or method in route.methods):
                return route
        return None


def subject_ids(route: Route, path: str, query: Mapping[str, str]) -> list[str]:
    """The data subjects a request names, per the route's declaration (recorded for 6.1.1)."""
    rule = route.subject
    if rule is None:
        return []
    found: list[str] = []
    if rule.path_index is not None:
        segments = path.split("/")
        if len(segments) > rule.path_index and segments[rule.path_index]:
            literals = tuple(segments[: rule.path_index])
            if literals == rule.path_literals:
                found.append(segments[rule.path_index])
            elif tuple(s.lower() for s in literals) == tuple(s.lower() for s in rule.path_literals):
                # A case-insensitive upstream would serve this subject; the audit would miss it.
                raise BadRequest("case_ambiguous")
    if rule.query is not None:
        value = query.get(rule.query)
        if value:
            found.append(value)
    for s in found:
        if len(s) > MAX_SUBJECT_LEN:
            raise BadRequest("subject_id_too_long")
    return sorted(set(found))
