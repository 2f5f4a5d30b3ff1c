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

The same holds for what else decides the audit record (THREAT_MODEL.md "Forwarding equivalence"): a
percent-encoded `%` that a twice-decoding upstream would read as another path or parameter, a `#`
that an upstream would cut the target at, and the subject named in the query string (read here from
the raw query, as the loosest framework would read it).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gateway.config.model import Route, SubjectRule
from gateway.config.vocabulary import param_key
from gateway.core.errors import BadRequest

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ENCODED_SEPARATOR = re.compile(r"%(2[fF]|5[cC])")
_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f\\]")
MAX_SUBJECT_LEN = 128


# A path of these characters only decodes to itself and holds nothing the checks below refuse
# but what _PLAIN_REFUSED finds (an empty segment before the last, a segment ending in a dot):
# the usual path, answered without the full checks, which give the reason when one is refused.
_PLAIN = re.compile(r"/[A-Za-z0-9._~!$&'()*+,=:@/-]*\Z")
_PLAIN_REFUSED = re.compile(r"//|\.(?:/|\Z)")


def canonical_path(raw_path: str) -> str:
    """The decoded path of ``raw_path`` (query removed), or BadRequest if it is ambiguous."""
    path = raw_path.partition("?")[0]
    if _PLAIN.match(path) and not _PLAIN_REFUSED.search(path) and "#" not in raw_path:
        return path
    return _checked_path(raw_path)


def _checked_path(raw_path: str) -> str:
    if "#" in raw_path:  # a fragment is never sent; an upstream would cut the target there
        raise BadRequest("fragment_in_target")
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/"):
        raise BadRequest("path_not_absolute")
    if _BAD_ESCAPE.search(path):
        raise BadRequest("bad_percent_escape")
    if "%25" in path:  # `%252e%252e`: `..` to an upstream that decodes twice
        raise BadRequest("double_encoding")
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


@dataclass(frozen=True, slots=True)
class QueryParam:
    raw_name: str  # as sent, undecoded
    name: str  # the name as the loosest framework reads it (see ``param_key``)
    value: str  # percent-decoded, `+` read as a space
    raw_value: str = ""


_QUERY_SEPARATOR = re.compile(r"[&;]")  # `;` too: some servers and older frameworks split on it
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COOKIE_SEPARATOR = re.compile(r"[;,]")
_QUERY_SYNTAX = re.compile(r"[&+;%?#\s]")  # what a query reads as a separator, space or escape


def _query_decode(raw: str, *, strict: bool) -> str:
    if strict and _BAD_ESCAPE.search(raw):
        raise BadRequest("bad_percent_escape")
    try:
        data = unquote_to_bytes(raw.replace("+", " "))
        text = data.decode("utf-8", "strict" if strict else "replace")
    except UnicodeError as e:  # also a target with undecodable bytes (surrogate escapes)
        if strict:
            raise BadRequest("invalid_utf8") from e
        text = raw
    if strict and _CONTROL.search(text):
        raise BadRequest("control_in_query")
    return text


def query_params(raw_query: str, *, strict: bool = True) -> list[QueryParam]:
    """Every parameter of the raw query string, in order, empty pieces skipped.

    ``strict``: BadRequest for what frameworks decode differently (a bad or double percent escape,
    invalid UTF-8, control bytes); otherwise undecodable text is kept as it is."""
    if strict and "%25" in raw_query:  # `%255f` is `_` to an upstream that decodes twice
        raise BadRequest("double_encoding")
    out = []
    for piece in _QUERY_SEPARATOR.split(raw_query):
        if not piece:
            continue
        raw_name, _, raw_value = piece.partition("=")
        name = _query_decode(raw_name, strict=strict)
        value = _query_decode(raw_value, strict=strict)
        out.append(QueryParam(raw_name, param_key(name), value, raw_value))
    return out


def raw_query(raw_path: str) -> str:
    """The query string exactly as received (aiohttp's ``query_string`` is decoded)."""
    return raw_path.partition("?")[2]


def subject_ids(route: Route, path: str, query: str) -> list[str]:
    """The data subjects a request names, per the route's declaration (recorded for 6.1.1, 9.1.8).

    ``query`` is the raw query string. The recorded subjects must be every subject the upstream
    could read: a query subject given twice (`?lead_id=1&lead_id=2`, an empty first value), under
    another spelling of its name (`LEAD_ID`, `lead_id[]`, `lead.id`, `lead%5Fid`), in a query
    with `;` (a separator to some frameworks only) or with a value frameworks decode differently
    (`+`, bad escapes, invalid UTF-8, control bytes) is refused as ambiguous (400).
    """
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
        if ";" in query:  # a separator to some frameworks, part of a value to others
            raise BadRequest("ambiguous_subject")
        key = param_key(rule.query)
        given = [p for p in query_params(query) if p.name == key]
        if len(given) > 1 or any(p.raw_name != rule.query for p in given):
            raise BadRequest("ambiguous_subject")  # 9.1.8: one reading, or none at all
        if given and "+" in given[0].raw_value:  # a space to form decoders, `+` to RFC 3986 ones
            raise BadRequest("ambiguous_subject")
        if given and given[0].value:
            found.append(given[0].value)
    if rule.input_names:
        if _QUERY_SYNTAX.search(path):
            # Behind a rewrite into the query (`^/hr/employees/(.*)$ /index.php?id=$1`), `&id=1002`
            # anywhere in the path after the prefix is a second `id` to PHP (decision 039).
            raise BadRequest("ambiguous_subject")
        _refuse_input_names(rule, query)
    for s in found:
        if len(s) > MAX_SUBJECT_LEN:
            raise BadRequest("subject_id_too_long")
        if not one_reading(s, rule.id):
            raise BadRequest("ambiguous_subject")
    return found if len(found) < 2 else sorted(set(found))


def _refuse_input_names(rule: SubjectRule, query: str) -> None:
    """Decision 039: no query parameter the upstream would read as one of the route's input names
    (Laravel's `$request->id` takes the query's `id` over the route's; PHP behind a rewrite,
    `index.php?id=1001&id=1002`, the last one), under any spelling some framework reads so
    (``param_key``; `;` splits too). The query is read strictly, as a query subject's is."""
    keys = rule.input_keys
    if any(p.name in keys for p in query_params(query)):
        raise BadRequest("subject_in_query")


def refuse_input_names_in_cookies(rule: SubjectRule, cookie_headers: Sequence[str]) -> None:
    """Decision 039: no cookie named as one of the route's input names. PHP's `$_REQUEST` takes
    cookies over the query and a form when no php.ini sets `request_order` (the official Docker
    images ship none): `Cookie: id=1002` is the employee such an upstream acts on. A name is read
    as PHP reads it (leading white space of any kind dropped — a tab after `;` passes aiohttp's
    parser —, `.`, ` ` and brackets as ``param_key`` reads them, any case), and also
    URL-decoded as PHP before 8.0.24 did (`%64`, `+` for a space) and split at `,` (older cookie
    parsers)."""
    keys = rule.input_keys
    for header in cookie_headers:
        for pair in _COOKIE_SEPARATOR.split(header):
            name = pair.partition("=")[0].lstrip(_COOKIE_SPACE)
            # As PHP's php_url_decode: `+` a space too. Bytes, as the header came (aiohttp keeps
            # what is not UTF-8 as surrogate escapes).
            raw = name.replace("+", " ").encode("utf-8", "surrogateescape")
            decoded = unquote_to_bytes(raw).decode("utf-8", "replace").lstrip(_COOKIE_SPACE)
            if param_key(name) in keys or param_key(decoded) in keys:
                raise BadRequest("subject_in_cookie")


_COOKIE_SPACE = " \t\n\v\f\r"  # C's isspace(), what PHP strips before a cookie's name


_CANONICAL_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\Z")
# What a cast reads as a number from the start of a value: Ruby's `to_i` (Rails' `find`) and
# MySQL skip white space and take a sign, digits and `_`, and stop at what follows (`1001.json`,
# `1001abc`); Python's `int()` (Django, Flask's `<int:>`) takes `_`, a sign, white space and any
# script's digits; JavaScript's Number() and MySQL's doubles take a leading point (`.1001e4`).
_NUMBER_START = re.compile(r"\s*[+-]?\.?[0-9]")  # JavaScript's Number() and PHP: `.1001e4`
_JS_SPACE = "\ufeff"  # white space to JavaScript's Number() and parseInt(), not to str.strip()


def _foreign_digit(c: str) -> bool:
    return c.isdecimal() and not c.isascii()


def one_reading(value: str, kind: str) -> bool:
    """Whether every upstream that could serve a route of this ``subject.id`` kind reads the
    subject id ``value`` as written (decision 034), so that blocks (6.5) and who-accessed
    reports (6.1.1) find the access under the id the upstream served."""
    if value.isdigit() and value.isascii():  # the usual id: the checks below, in short
        return kind == "text" or value[0] != "0" or value == "0"
    if value != value.strip() or (
        not value.isascii()
        and (value[0] in _JS_SPACE or value[-1] in _JS_SPACE or any(map(_foreign_digit, value)))
    ):
        return False  # ` 1001`, `١٠٠١`: 1001 to int(), to Django and to Flask's `<int:>`
    if kind == "integer":
        return _CANONICAL_DECIMAL.match(value) is not None
    if kind == "auto" and _NUMBER_START.match(value):
        return _CANONICAL_DECIMAL.match(value) is not None  # not `01001`, `+1`, `1_001`, `1.json`
    return True
