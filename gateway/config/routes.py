"""The `routes` section: path prefix (and methods) → upstream, system, personal-data category,
purpose (3.2, 4.2), action per method, where the data subject's id is (6.1.1), declared method
overrides (decision 011) and subjects named in responses."""

from __future__ import annotations

import re
from collections.abc import Mapping

from gateway.config.model import ResponseSubjects, Route, SubjectRule
from gateway.config.reader import Section, at_least, name, one_of, positive
from gateway.config.vocabulary import (
    ACTIONS,
    CATEGORIES,
    DEFAULT_ACTIONS,
    PURPOSES,
    SUBJECT_ID_KINDS,
    param_key,
)


def parse_routes(top: Section, upstreams: Mapping[str, str]) -> tuple[Route, ...]:
    problems = top.problems
    raw = top.get("routes", list)
    routes: list[Route] = []
    names: set[str] = set()
    for i, item in enumerate(raw or ()):
        r = Section(item, f"routes.{i}", problems)
        route_name = r.get("name", str, ..., name)
        if route_name in names:
            problems.add(r.key("name"), f"duplicate route name {route_name!r}")
        names.add(route_name)
        prefix = r.get("prefix", str, ..., _prefix_check)
        upstream = r.get("upstream", str)
        if upstream is not None and upstream not in upstreams:
            problems.add(r.key("upstream"), f"no upstream named {upstream!r} under upstreams")
        system = r.get("system", str, ..., name)
        category = r.get("category", str, ..., one_of(CATEGORIES))
        purpose = r.get("purpose", str, ..., one_of(tuple(PURPOSES)))
        methods = r.get("methods", list, None)
        method_set = frozenset(str(m).upper() for m in methods) if methods else None

        actions = dict(DEFAULT_ACTIONS)
        declared = r.section("actions", required=False)
        for method in declared.data:
            act = declared.get(str(method), str, ..., one_of(ACTIONS))
            if act is not None:
                actions[str(method).upper()] = act
        declared.finish()
        if "GET" in actions:
            # RFC 9110 §9.3.2: HEAD is GET without the body, and frameworks answer it by running
            # GET's handler (Flask, Django, Rails, Express): it is GET's access, so GET's action
            # and GET's route (`methods: [GET]` takes HEAD too).
            head_declared = any(str(m).upper() == "HEAD" for m in declared.data)
            if head_declared and actions["HEAD"] != actions["GET"]:
                problems.add(
                    r.key("actions"),
                    "HEAD must have GET's action: upstreams answer HEAD by running GET's handler",
                )
            actions["HEAD"] = actions["GET"]
            if method_set is not None and "GET" in method_set:
                method_set = method_set | {"HEAD"}
        if method_set is not None and "HEAD" in method_set and "GET" not in method_set:
            problems.add(
                r.key("methods"),
                "HEAD without GET: upstreams answer HEAD by running GET's handler, so GET is "
                "this route's too",
            )
        if method_set is not None:
            for m in sorted(method_set - set(actions)):
                problems.add(
                    r.key("methods"), f"method {m} has no action; declare it under actions"
                )
            actions = {m: a for m, a in actions.items() if m in method_set}

        subject = _parse_subject(r, prefix)
        listed = _parse_response_subjects(r)
        override = r.get("method_override", list, [])
        for carrier in override:
            if carrier in ("form", "json"):
                problems.add(
                    r.key("method_override"),
                    f"{carrier!r} cannot be declared: the gateway authorises before it reads "
                    "the body, so a body override is always refused (decision 011)",
                )
            elif carrier not in ("header", "query"):
                problems.add(r.key("method_override"), "must list 'header' and/or 'query'")
        host = r.get("host", str, Route.host, one_of(("preserve", "upstream")))
        websocket = r.get("websocket", bool, Route.websocket)
        if websocket and actions.get("GET") is None:
            problems.add(r.key("websocket"), "an upgrade is a GET: the route must allow GET")
        no_store = r.get("no_store", bool, Route.no_store)
        # Why a route carries no personal data (an evidence pack lists it, 9.1.9); only a route
        # of category `none` has one.
        reason = r.get("reason", str, Route.reason)
        if reason and category != "none":
            problems.add(r.key("reason"), "only a route of category none declares a reason")
        r.finish()
        routes.append(
            Route(
                name=route_name,
                prefix=prefix or "/",
                upstream=upstream or "",
                upstream_url=upstreams.get(upstream or "", ""),
                system=system,
                category=category,
                actions=actions,
                purpose=purpose or "",
                methods=method_set,
                subject=subject,
                method_override=frozenset(str(c) for c in override) & {"header", "query"},
                response_subjects=listed,
                host="upstream" if host == "upstream" else "preserve",
                websocket=websocket,
                no_store=no_store,
                reason=reason.strip(),
            )
        )
    _check_overlapping_prefixes(routes, top)
    return tuple(routes)


def _parse_response_subjects(r: Section) -> ResponseSubjects | None:
    if "response_subjects" not in r.data:
        return None
    sec = r.section("response_subjects")
    pointer = sec.get("pointer", str, ..., _pointer_check)
    found = ResponseSubjects(
        pointer=tuple(
            p.replace("~1", "/").replace("~0", "~") for p in (pointer or "/").split("/")[1:]
        ),
        max_bytes=sec.get("max_bytes", int, ResponseSubjects.max_bytes, at_least(1024)),
        max_subjects=sec.get("max_subjects", int, ResponseSubjects.max_subjects, positive),
    )
    sec.finish()
    return found


def _pointer_check(value: str) -> str | None:
    if not value.startswith("/") or value == "/":
        return "a JSON pointer into the response, e.g. /items/*/id"
    return None


def _check_overlapping_prefixes(routes: list[Route], top: Section) -> None:
    """Two routes whose prefixes differ only in case (and share a method) could not be told apart
    by a case-insensitive upstream; the router refuses such requests, so refuse such a table."""
    seen: dict[str, list[tuple[int, Route]]] = {}
    for i, route in enumerate(routes):
        key = route.prefix.rstrip("/").lower()
        for j, other in seen.get(key, []):
            if route.methods is None or other.methods is None or route.methods & other.methods:
                top.problems.add(
                    f"routes.{i}.prefix",
                    f"{route.prefix!r} overlaps routes.{j} ({other.prefix!r}) for the same "
                    "methods (prefixes are compared without regard to case)",
                )
        seen.setdefault(key, []).append((i, route))


def _parse_subject(r: Section, prefix: str | None) -> SubjectRule | None:
    s = r.optional("subject")
    if s is None:
        return None
    template = s.get("path", str, None)
    query = s.get("query", str, None)
    index = None
    literals: tuple[str, ...] = ()
    if template is not None:
        segments = template.split("/")
        params = [i for i, seg in enumerate(segments) if seg.startswith("{") and seg.endswith("}")]
        if len(params) != 1:
            s.problems.add(s.key("path"), "must contain exactly one {param} segment")
        elif prefix and not template.startswith(prefix.rstrip("/") + "/"):
            s.problems.add(s.key("path"), f"must start with the route prefix {prefix}")
        else:
            index = params[0]
            literals = tuple(segments[:index])
    if template is None and query is None:
        s.problems.add(s.path, "give path and/or query")
    kind = s.get("id", str, SubjectRule.id, one_of(SUBJECT_ID_KINDS))
    input_names = _parse_input_names(s, query, template)
    s.finish()
    return SubjectRule(
        path_template=template,
        path_index=index,
        path_literals=literals,
        query=query,
        id=kind,
        input_names=input_names,
    )


def _parse_input_names(s: Section, query: str | None, path: str | None) -> tuple[str, ...]:
    """`subject.input_names` (decision 039): other readings of a path subject, as plain parameter
    names (letters, digits, `_`), each apart from the query subject's and from `_method` as the
    loosest framework reads names (``param_key``: case, PHP's `.` and brackets)."""
    listed = s.get("input_names", list, [])
    if listed and path is None:
        s.problems.add(s.key("input_names"), "needs subject.path: they are other readings of it")
        return ()
    names: list[str] = []
    taken = {param_key("_method"): "the method override parameter (decision 011)"}
    if query is not None:
        taken[param_key(query)] = "read as the query subject parameter, which bodies may not carry"
    for i, value in enumerate(listed or ()):
        key = f"{s.key('input_names')}.{i}"
        if not isinstance(value, str) or not _INPUT_NAME.fullmatch(value):
            s.problems.add(key, "must be a parameter name: letters, digits and _")
        elif param_key(value) in taken:
            s.problems.add(key, f"{value!r} is {taken[param_key(value)]}")
        else:
            taken[param_key(value)] = f"listed already (input_names.{i})"
            names.append(value)
    return tuple(names)


_INPUT_NAME = re.compile(r"[A-Za-z0-9_]+")


def _prefix_check(value: str) -> str | None:
    if not value.startswith("/"):
        return "must start with /"
    if "//" in value or "/./" in value or "/../" in value or "%" in value or "\\" in value:
        return "must be a plain decoded path without '//', dot segments, '%' or '\\'"
    if ";" in value or any(s.endswith((".", " ")) for s in value.rstrip("/").split("/")[1:]):
        return "must not contain ';' or a segment ending in '.' or ' ' (such paths are refused)"
    return None
