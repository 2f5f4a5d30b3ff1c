"""Session cookies, the revocation list, return paths, the CSRF rule and the gateway's cookie
names in upstream traffic: the pure parts of browser login (decision 014)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.cookies import sets_cookie, without_cookies
from gateway.identity.csrf import cross_site_reason, is_navigation
from gateway.identity.sessions import (
    LoginState,
    RevocationList,
    Session,
    SessionCodec,
    SessionInvalid,
    revocation_key,
)
from gateway.web.login import safe_return_to

ORIGIN = "https://gw.example"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def codec(clock: Clock, key: bytes | None = None) -> SessionCodec:
    return SessionCodec(
        key or Fernet.generate_key(),
        idle_timeout=900,
        absolute_timeout=8 * 3600,
        login_timeout=600,
        clock=clock,
    )


def session(now: float, **kw: object) -> Session:
    base: dict[str, object] = dict(
        sid="s1",
        user="alice",
        roles=("hr_officer",),
        created_at=now,
        last_seen=now,
        refresh_at=now + 300,
        refresh_token="rt",
    )
    base.update(kw)
    return Session(**base)  # type: ignore[arg-type]


def test_a_sealed_session_opens_only_with_its_key_and_unaltered() -> None:
    clock = Clock()
    c = codec(clock)
    value = c.seal(session(clock.now))
    assert c.open(value).user == "alice"
    assert "alice" not in value and "rt" not in value.split(".")  # encrypted, not just signed
    with pytest.raises(SessionInvalid, match="session_tampered"):
        codec(clock).open(value)  # another key
    flipped = value[:30] + ("A" if value[30] != "A" else "B") + value[31:]
    with pytest.raises(SessionInvalid, match="session_tampered"):
        c.open(flipped)


def test_idle_and_absolute_timeouts_end_a_session() -> None:
    clock = Clock()
    c = codec(clock)
    value = c.seal(session(clock.now))
    clock.now += 899
    c.open(value)
    clock.now += 2
    with pytest.raises(SessionInvalid, match="session_idle") as idle:
        c.open(value)
    assert idle.value.session is not None and idle.value.session.user == "alice"
    busy = session(clock.now - 8 * 3600, last_seen=clock.now)
    with pytest.raises(SessionInvalid, match="session_expired"):
        c.open(c.seal(busy))


def test_a_login_cookie_is_not_a_session_cookie_nor_the_reverse() -> None:
    clock = Clock()
    c = codec(clock)
    login = c.seal_logins([LoginState("st", "n", "v", "/hr/", clock.now)])
    with pytest.raises(SessionInvalid, match="session_tampered"):
        c.open(login)
    with pytest.raises(SessionInvalid, match="login_state_tampered"):
        c.open_logins(c.seal(session(clock.now)))
    clock.now += 601
    assert c.open_logins(login) == []  # expired logins are dropped


def test_at_most_a_few_logins_are_under_way_in_one_browser() -> None:
    clock = Clock()
    c = codec(clock)
    many = [LoginState(f"s{i}", "n", "v", "/", clock.now) for i in range(10)]
    assert [x.state for x in c.open_logins(c.seal_logins(many))] == ["s6", "s7", "s8", "s9"]


def test_the_trail_sees_a_keyed_hash_of_the_session_never_its_id() -> None:
    key = Fernet.generate_key()
    a, b = codec(Clock(), key), codec(Clock())
    h = a.session_hash("s1")
    assert h == codec(Clock(), key).session_hash("s1") and len(h) == 32
    assert h != b.session_hash("s1") and "s1" not in h


async def test_a_revocation_reaches_another_replica_within_its_poll_interval(
    tmp_path: Path,
) -> None:
    clock = Clock()
    path = tmp_path / "shared" / "revoked.jsonl"
    key = revocation_key(Fernet.generate_key())
    here = RevocationList(path, key=key, poll=5, clock=clock)
    there = RevocationList(path, key=key, poll=5, clock=clock)
    created = clock.now - 10
    assert not there.is_revoked("alice", created)
    await here.revoke("alice", "logout")
    assert here.is_revoked("alice", created)
    assert not there.is_revoked("alice", created)  # read 0 s ago: not yet
    clock.now += 5
    assert there.is_revoked("alice", created)
    assert not there.is_revoked("alice", clock.now + 1)  # a later login is not revoked
    assert not there.is_revoked("bob", created)
    with path.open("a") as f:
        f.write('{"user": "bob", "befo')  # a torn line of a crashed writer
    clock.now += 5
    assert there.is_revoked("alice", created)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["reason"] == "logout"
    # The file names nobody in clear (a user may be a blocked data subject too: 5.3).
    assert "alice" not in path.read_text() and first["user_hash"].startswith("u:")
    # A gateway with another session key cannot tell whom a line is about.
    other = RevocationList(path, key=revocation_key(Fernet.generate_key()), poll=5, clock=clock)
    assert not other.is_revoked("alice", created)


async def test_a_revocation_file_of_an_earlier_release_still_counts(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "revoked.jsonl"
    path.write_text(json.dumps({"user": "alice", "before": clock.now, "reason": "logout"}) + "\n")
    revocations = RevocationList(
        path, key=revocation_key(Fernet.generate_key()), poll=5, clock=clock
    )
    assert revocations.is_revoked("alice", clock.now - 1)
    assert not revocations.is_revoked("bob", clock.now - 1)


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "/\\/evil.example",
        "http:/evil",
        "javascript:alert(1)",
        "/a\r\nSet-Cookie: x=1",
        "/_pdgw/callback",
        "",
        "hr/",
        "/" + "a" * 3000,
    ],
)
def test_return_paths_off_this_site_are_refused(target: str) -> None:
    assert safe_return_to(target) is None


@given(st.text(max_size=60))
def test_an_accepted_return_path_is_always_a_path_on_this_site(value: str) -> None:
    from urllib.parse import urljoin

    got = safe_return_to(value)
    if got is not None:
        assert urljoin("https://gw.example/x", got).startswith("https://gw.example/")


@pytest.mark.parametrize(
    ("method", "headers", "reason"),
    [
        ("GET", {"Origin": "https://evil.example"}, None),
        ("POST", {"Origin": ORIGIN}, None),
        ("POST", {"Sec-Fetch-Site": "same-origin"}, None),
        ("POST", {"Origin": "https://evil.example"}, "csrf_origin_mismatch"),
        ("POST", {"Origin": "null"}, "csrf_origin_mismatch"),
        ("POST", {"Origin": ORIGIN + ".evil.example"}, "csrf_origin_mismatch"),
        ("PUT", {"Sec-Fetch-Site": "same-site"}, "csrf_cross_site"),
        ("DELETE", {}, "csrf_no_origin"),
        # Origin decides when present, even against a same-origin Sec-Fetch-Site.
        (
            "POST",
            {"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"},
            "csrf_origin_mismatch",
        ),
    ],
)
def test_cookie_authenticated_writes_must_be_same_origin(
    method: str, headers: dict[str, str], reason: str | None
) -> None:
    assert cross_site_reason(method, headers, ORIGIN) == reason


def test_navigation_or_fetch() -> None:
    assert is_navigation("GET", {"Sec-Fetch-Mode": "navigate", "Accept": "*/*"})
    assert not is_navigation("GET", {"Sec-Fetch-Mode": "cors", "Accept": "text/html"})
    assert is_navigation("GET", {"Accept": "text/html,application/xhtml+xml"})
    assert not is_navigation("GET", {"Accept": "application/json"})
    assert not is_navigation("POST", {"Sec-Fetch-Mode": "navigate"})


NAMES = frozenset({"__Host-pdgw-session", "__Host-pdgw-login"})


def test_the_gateways_cookies_are_removed_from_what_the_upstream_gets() -> None:
    assert without_cookies("a=1; __Host-pdgw-session=x; b=2", NAMES) == "a=1; b=2"
    assert without_cookies("__host-PDGW-session=x", NAMES) == "__host-PDGW-session=x"
    assert without_cookies("__HOST-pdgw-login=x", NAMES) is None  # prefix case folded
    assert without_cookies("__Host-pdgw-session=x", NAMES) is None


def test_an_upstream_cannot_set_or_clear_the_gateways_cookies() -> None:
    assert sets_cookie(["__Host-pdgw-session=evil; Path=/"], NAMES)
    assert sets_cookie(["a=1", "__SECURE-x=1", " __host-pdgw-login=; Max-Age=0"], NAMES)
    assert not sets_cookie(["pdgw-session2=1", "app=__Host-pdgw-session"], NAMES)


@given(st.lists(st.sampled_from(["a=1", "__Host-pdgw-session=s", "b=2", "__HOST-pdgw-login=l"])))
def test_no_gateway_cookie_survives_the_filter(parts: list[str]) -> None:
    out = without_cookies("; ".join(parts), NAMES) or ""
    assert "pdgw" not in out
