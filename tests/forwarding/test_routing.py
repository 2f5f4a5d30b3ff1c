"""The canonical path: what is routed and authorised is exactly what is forwarded (THREAT_MODEL.md, decisions 009 and 010)."""

from __future__ import annotations

import contextlib
import unicodedata
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config.model import Route, SubjectRule
from gateway.core.errors import BadRequest
from gateway.forwarding.routing import RouteTable, _checked_path, canonical_path, subject_ids

raw_paths = st.lists(
    st.one_of(
        st.text(min_size=0, max_size=6),
        st.sampled_from(
            [
                *(".", "..", "%2e", "%2E%2e", "%2f", "%5C", "\\", "%00", "%c0%ae", "%", "%zz", ""),
                *("..;", "x;y", "1001.", "1001%20", "%EF%BC%8E%EF%BC%8E", "ﬁ", "HR", "Medical"),
            ]
        ),
    ),
    min_size=1,
    max_size=6,
).map(lambda segs: "/" + "/".join(segs))


def _reading(check: object, raw: str) -> str:
    try:
        return str(check(raw))  # type: ignore[operator]
    except BadRequest as e:
        return f"refused: {e.reason}"


@given(
    st.one_of(
        raw_paths,
        st.text(alphabet="/.-_~!$&'()*+,=:@aZ09;#?% \\", max_size=24).map(lambda t: "/" + t),
    )
)
def test_the_plain_path_shortcut_reads_every_path_as_the_full_checks_do(raw: str) -> None:
    """canonical_path answers plain paths without the full checks: never differently from them
    (the same decoded path, or the same refusal)."""
    assert _reading(canonical_path, raw) == _reading(_checked_path, raw)


@given(raw_paths)
def test_an_accepted_path_has_the_same_segments_raw_and_decoded(raw: str) -> None:
    try:
        decoded = canonical_path(raw)
    except BadRequest:
        return
    raw_segments = raw.split("?", 1)[0].split("/")
    dec_segments = decoded.split("/")
    assert len(raw_segments) == len(dec_segments)
    assert all(seg not in (".", "..") for seg in dec_segments)
    assert "\\" not in decoded and "\x00" not in decoded
    # Re-encoding the decoded segments never introduces a separator the upstream would split on.
    assert all("/" not in s for s in dec_segments)
    # Nothing an upstream would strip or fold: path parameters, trailing dots/spaces, NFKC forms.
    for seg in dec_segments:
        assert ";" not in seg and not seg.endswith((".", " "))
        assert unicodedata.normalize("NFKC", seg) == seg


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/hr/employees/..;/medical/1", "path_parameter"),
        ("/hr/employees;jsessionid=1/1", "path_parameter"),
        ("/hr/medical./1", "trailing_dot_or_space"),
        ("/hr/employees/1001%20", "trailing_dot_or_space"),
        ("/hr/employees/%EF%BC%8E%EF%BC%8E/medical/1", "unnormalised_unicode"),
        ("/hr/employees/%EF%AC%81le", "unnormalised_unicode"),  # the ligature ﬁ
        ("/\udca22", "invalid_utf8"),  # a raw non-UTF-8 byte, as surrogateescape hands it over
    ],
)
def test_paths_an_upstream_would_read_another_way_are_refused(raw: str, reason: str) -> None:
    with pytest.raises(BadRequest) as e:
        canonical_path(raw)
    assert e.value.reason == reason


def test_cyrillic_and_other_normalised_text_passes() -> None:
    assert canonical_path("/hr/employees/%D0%98%D0%B2%D0%B0%D0%BD%D0%BE%D0%B2%D0%B0") == (
        "/hr/employees/Иванова"
    )


@given(st.text(min_size=1, max_size=20).filter(lambda s: s not in (".", "..") and "/" not in s))
def test_a_percent_encoded_segment_decodes_to_itself(segment: str) -> None:
    try:
        assert canonical_path("/hr/" + quote(segment, safe="")) == "/hr/" + segment
    except BadRequest as e:
        # Refused only for what the segment really holds.
        held = {
            "control_or_backslash": any(c < " " or c == "\x7f" for c in segment),
            "double_encoding": "%" in segment,
            "encoded_separator": "\\" in segment,
            "path_parameter": ";" in segment,
            "trailing_dot_or_space": segment.endswith((".", " ")),
            "unnormalised_unicode": unicodedata.normalize("NFKC", segment) != segment,
        }
        assert held.get(e.reason), (segment, e.reason)


def _route(name: str, prefix: str, methods: frozenset[str] | None = None) -> Route:
    return Route(
        name=name,
        prefix=prefix,
        upstream="u",
        upstream_url="http://u",
        system="s",
        category="employee",
        actions={"GET": "read"},
        methods=methods,
        subject=SubjectRule(
            path_template=prefix + "/{id}",
            path_index=prefix.count("/") + 1,
            path_literals=tuple(prefix.split("/")),
        ),
    )


def test_longest_prefix_wins_at_segment_boundaries() -> None:
    table = RouteTable(
        [
            _route("a", "/hr"),
            _route("b", "/hr/medical"),
            _route("c", "/hr/exp", frozenset({"POST"})),
        ]
    )
    assert table.match("/hr/medical/1", "GET").name == "b"  # type: ignore[union-attr]
    assert table.match("/hr/medicalx", "GET").name == "a"  # type: ignore[union-attr]
    assert table.match("/hrx", "GET") is None
    assert table.match("/hr/exp", "GET").name == "a"  # type: ignore[union-attr]  # methods narrow
    assert table.match("/hr/exp", "POST").name == "c"  # type: ignore[union-attr]


def test_subject_id_comes_from_the_declared_segment_only() -> None:
    route = _route("b", "/hr/medical")
    assert subject_ids(route, "/hr/medical/1001", {}) == ["1001"]
    assert subject_ids(route, "/hr/medical/1001/certificates", {}) == ["1001"]
    assert subject_ids(route, "/hr/medical", {}) == []
    assert subject_ids(route, "/hr/medical/", {}) == []


def test_a_path_that_case_folding_routes_elsewhere_is_refused() -> None:
    table = RouteTable([_route("a", "/hr"), _route("b", "/hr/medical")])
    for path in ("/hr/Medical/1", "/HR/medical/1", "/Hr"):
        with pytest.raises(BadRequest) as e:
            table.match(path, "GET")
        assert e.value.reason == "case_ambiguous", path
    assert table.match("/hr/medical/ABC", "GET").name == "b"  # type: ignore[union-attr]
    assert table.match("/hr/MEDICALX", "GET").name == "a"  # type: ignore[union-attr]


def test_subject_literals_differing_only_in_case_are_refused() -> None:
    route = _route("a", "/crm")
    route = Route(
        **{**route.__dict__, "subject": SubjectRule("/crm/people/{id}", 3, ("", "crm", "people"))}
    )
    assert subject_ids(route, "/crm/people/7", {}) == ["7"]
    with pytest.raises(BadRequest):
        subject_ids(route, "/crm/People/7", {})


mixed_case_paths = st.lists(
    st.sampled_from(["hr", "HR", "Hr", "medical", "MEDICAL", "employees", "x", "1", "Medicalx"]),
    min_size=1,
    max_size=4,
).map(lambda segs: "/" + "/".join(segs))


@given(mixed_case_paths)
def test_a_routed_path_routes_the_same_whatever_its_case(path: str) -> None:
    table = RouteTable([_route("a", "/hr"), _route("b", "/hr/medical"), _route("c", "/x")])
    try:
        route = table.match(path, "GET")
    except BadRequest:
        return
    for variant in (path.lower(), path.upper()):
        # A variant is routed as the same route, or refused as ambiguous: never routed elsewhere.
        with contextlib.suppress(BadRequest):
            assert table.match(variant, "GET") in (route, None)
