"""The caller a worker seals for its supervisor's console (decision 025): it opens only with
this run's secret, for the very request it was made for, within the time bound; any other
bytes are refused with a short reason, never opened."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.tokens import Principal
from gateway.web.console.identity import MAX_SKEW_SECONDS, seal, unseal
from gateway.web.trail import Caller

SECRET = b"s" * 32
CALLER = Caller(Principal("grace", ("dpo",), expires_at=0), "session", "sess-hash", "10.1.2.3")
REQUEST = {"method": "POST", "target": "/_pdgw/console/subject?tz=UTC", "body": b"subject=1001"}


def test_a_sealed_caller_opens_with_its_request_id_for_its_own_request() -> None:
    value = seal(SECRET, CALLER, "rid-7", **REQUEST)  # type: ignore[arg-type]
    caller, request_id = unseal(SECRET, value, **REQUEST)  # type: ignore[arg-type]
    assert (caller.principal.user, caller.principal.roles) == ("grace", ("dpo",))
    assert (caller.auth, caller.session, caller.client_ip, request_id) == (
        "session",
        "sess-hash",
        "10.1.2.3",
        "rid-7",
    )


def _refusal(value: str, **changed: object) -> str:
    try:
        unseal(SECRET, value, **{**REQUEST, **changed})  # type: ignore[arg-type]
    except ValueError as e:
        return str(e)
    raise AssertionError("opened")


def test_another_secret_method_path_body_or_time_is_refused() -> None:
    value = seal(SECRET, CALLER, "rid", **REQUEST)  # type: ignore[arg-type]
    assert _refusal(value, method="GET") == "caller_other_request"
    assert _refusal(value, target="/_pdgw/console/subject?tz=Europe/Moscow") == (
        "caller_other_request"
    )
    assert _refusal(value, body=b"subject=1002") == "caller_other_request"
    late = time.time() + MAX_SKEW_SECONDS + 5
    assert _refusal(value, now=late) == "caller_stale"
    other = seal(b"o" * 32, CALLER, "rid", **REQUEST)  # type: ignore[arg-type]
    assert _refusal(other) == "caller_bad_signature"


@given(st.text(max_size=300))
def test_any_other_header_value_is_refused_with_a_short_reason(value: str) -> None:
    assert _refusal(value) == "caller_bad_signature"


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_change_of_a_sealed_value_is_refused(position: int, byte: int) -> None:
    value = seal(SECRET, CALLER, "rid", **REQUEST)  # type: ignore[arg-type]
    i = position % len(value)
    changed = value[:i] + chr(byte) + value[i + 1 :]
    if changed != value:
        assert _refusal(changed) == "caller_bad_signature"
