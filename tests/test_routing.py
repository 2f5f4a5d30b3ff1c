"""The canonical path: what is routed and authorised is exactly what is forwarded."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Route, SubjectRule
from gateway.errors import BadRequest
from gateway.routing import RouteTable, canonical_path, subject_ids

raw_paths = st.lists(
    st.one_of(
        st.text(min_size=0, max_size=6),
        st.sampled_from(
            [".", "..", "%2e", "%2E%2e", "%2f", "%5C", "\\", "%00", "%c0%ae", "%", "%zz", ""]
        ),
    ),
    min_size=1,
    max_size=6,
).map(lambda segs: "/" + "/".join(segs))


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


@given(st.text(min_size=1, max_size=20).filter(lambda s: s not in (".", "..") and "/" not in s))
def test_a_percent_encoded_segment_decodes_to_itself(segment: str) -> None:
    try:
        assert canonical_path("/hr/" + quote(segment, safe="")) == "/hr/" + segment
    except BadRequest as e:
        assert e.reason in ("control_or_backslash", "encoded_separator")


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
