"""Browser sessions: the sealed cookie, the login state, and the revocation list.

Contract: a session lives only in its cookie, encrypted and authenticated with Fernet (AES-128-CBC
+ HMAC-SHA256, `cryptography`) under the key in `oidc.session.key_file`; ``SessionCodec.open``
returns a Session or raises ``SessionInvalid`` with a short machine reason. What ends a session
before its timeouts is the ``RevocationList``: a shared append-only file of "user's sessions that
began before T are over", re-read every `revocation_poll_seconds`
(docs/decisions/014-browser-sessions.md). The trail sees a session only as ``session_hash(sid)``,
a keyed hash: never the cookie, never the id itself (SECURITY: THREAT_MODEL.md, browser sessions).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

log = logging.getLogger(__name__)

MAX_COOKIE_BYTES = 4000  # browsers keep 4096 bytes per cookie, name and attributes included
MAX_PENDING_LOGINS = 4  # logins under way at once in one browser (tabs), each with its state


class SessionInvalid(Exception):
    """A cookie that does not open: ``reason`` is for the trail, never for the client."""

    def __init__(self, reason: str, session: Session | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.session = session  # set when the cookie opened but the session is over


@dataclass(frozen=True, slots=True)
class Session:
    sid: str  # random; in the trail only as a keyed hash
    user: str
    roles: tuple[str, ...]
    created_at: float  # the login; the absolute timeout counts from here
    last_seen: float  # the idle timeout counts from here
    refresh_at: float  # after this, the provider is asked again (refresh token)
    refresh_token: str

    def touched(self, now: float) -> Session:
        return replace(self, last_seen=now)


@dataclass(frozen=True, slots=True)
class LoginState:
    """What the gateway must remember between the redirect to the provider and the callback."""

    state: str
    nonce: str
    code_verifier: str  # PKCE (RFC 7636)
    return_to: str  # a same-origin path, checked when the login began
    started_at: float
    # A silent re-login (`prompt=none`) of a session due for renewal without a refresh token
    # (decision 023): the session kept if the same user comes back, its bounds unchanged.
    renews: str = ""  # the session's id
    renews_user: str = ""
    created_at: float = 0.0  # the session's login time: the absolute timeout still counts from it


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class SessionCodec:
    """Seals and opens the session and login cookies; hashes session ids for the trail."""

    def __init__(
        self,
        key: bytes,
        *,
        idle_timeout: float,
        absolute_timeout: float,
        login_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._fernet = Fernet(key)
        # A separate key for the trail's session hashes, derived so one file holds both.
        self._hash_key = hmac.new(key, b"pd-gateway session hash", hashlib.sha256).digest()
        self._idle = idle_timeout
        self._absolute = absolute_timeout
        self._login_timeout = login_timeout
        self._clock = clock

    @classmethod
    def from_file(
        cls,
        path: Path,
        *,
        idle_timeout: float,
        absolute_timeout: float,
        login_timeout: float,
        clock: Callable[[], float],
    ) -> SessionCodec:
        return cls(
            path.read_bytes().strip(),
            idle_timeout=idle_timeout,
            absolute_timeout=absolute_timeout,
            login_timeout=login_timeout,
            clock=clock,
        )

    def session_hash(self, sid: str) -> str:
        return hmac.new(self._hash_key, sid.encode(), hashlib.sha256).hexdigest()[:32]

    def seal(self, session: Session) -> str:
        data = asdict(session)
        data["roles"] = list(session.roles)
        value = self._seal("s", data)
        if len(value) > MAX_COOKIE_BYTES:
            raise ValueError("session cookie too large")
        return value

    def open(self, value: str) -> Session:
        """The session in ``value``; SessionInvalid("session_tampered" | "session_expired" |
        "session_idle")."""
        data = self._open("s", value, self._absolute)
        try:
            session = Session(
                sid=str(data["sid"]),
                user=str(data["user"]),
                roles=tuple(str(r) for r in data["roles"]),
                created_at=float(data["created_at"]),
                last_seen=float(data["last_seen"]),
                refresh_at=float(data["refresh_at"]),
                refresh_token=str(data["refresh_token"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SessionInvalid("session_tampered") from e
        now = self._clock()
        if now >= session.created_at + self._absolute:
            raise SessionInvalid("session_expired", session)
        if now >= session.last_seen + self._idle:
            raise SessionInvalid("session_idle", session)
        return session

    def open_unchecked(self, value: str) -> Session | None:
        """The session in ``value`` if it opens and is within its timeouts, else None."""
        try:
            return self.open(value) if value else None
        except SessionInvalid:
            return None

    def seal_logins(self, logins: Sequence[LoginState]) -> str:
        """The logins under way in this browser (several tabs may each start one), newest last;
        at most MAX_PENDING_LOGINS are kept."""
        return self._seal("l", {"logins": [asdict(x) for x in logins[-MAX_PENDING_LOGINS:]]})

    def open_logins(self, value: str) -> list[LoginState]:
        """The unexpired logins in ``value``; SessionInvalid("login_state_tampered")."""
        data = self._open("l", value, self._login_timeout)
        items = data.get("logins")
        if not isinstance(items, list):
            raise SessionInvalid("login_state_tampered")
        logins: list[LoginState] = []
        try:
            for item in items:
                logins.append(
                    LoginState(
                        state=str(item["state"]),
                        nonce=str(item["nonce"]),
                        code_verifier=str(item["code_verifier"]),
                        return_to=str(item["return_to"]),
                        started_at=float(item["started_at"]),
                        renews=str(item.get("renews", "")),
                        renews_user=str(item.get("renews_user", "")),
                        created_at=float(item.get("created_at", 0.0)),
                    )
                )
        except (KeyError, TypeError, ValueError) as e:
            raise SessionInvalid("login_state_tampered") from e
        now = self._clock()
        return [x for x in logins if now < x.started_at + self._login_timeout]

    def _seal(self, kind: str, data: dict[str, Any]) -> str:
        payload = json.dumps({"k": kind, **data}, separators=(",", ":")).encode()
        return self._fernet.encrypt_at_time(payload, int(self._clock())).decode("ascii")

    def _open(self, kind: str, value: str, ttl: float) -> dict[str, Any]:
        tampered = "session_tampered" if kind == "s" else "login_state_tampered"
        try:
            # Fernet's own timestamp bounds the cookie too, with the key's clock, not the data's.
            raw = self._fernet.decrypt_at_time(
                value.encode("ascii"), ttl=int(ttl) + 1, current_time=int(self._clock())
            )
        except InvalidToken as e:
            # Fernet does not say whether the MAC failed or the token aged out; neither opens.
            raise SessionInvalid(tampered) from e
        except (UnicodeError, ValueError) as e:
            raise SessionInvalid(tampered) from e
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise SessionInvalid(tampered) from e
        if not isinstance(data, dict) or data.pop("k", None) != kind:
            # A login cookie presented as a session (or the reverse) is not either.
            raise SessionInvalid(tampered)
        return data


def revocation_key(session_key: bytes) -> bytes:
    """The key of the revocation list's user hashes, derived from the session cookie key that
    every replica shares (so each can hash a user the same way, and nobody without it can)."""
    return hmac.new(session_key, b"pd-gateway revocation list", hashlib.sha256).digest()


class RevocationList:
    """Users whose sessions that began before a time are over, on every replica (9.2.7).

    One JSON line per revocation, appended (O_APPEND, fsync) by a gateway at logout, at a role
    change, for a subject block and for `pd-gateway session revoke` (the admin API); every
    replica re-reads the file when it changed, at most every ``poll`` seconds: that is the bound
    on how long a revoked cookie still works on another replica
    (docs/decisions/014-browser-sessions.md).

    The file names users by a keyed hash (``user_hash``, under ``revocation_key``), never in
    clear: a user may also be a data subject (a blocked employee), whose id is kept only as a
    keyed hash at rest (5.3, decision 015). Lines of earlier releases (``user`` in clear) still
    count.
    """

    def __init__(
        self,
        path: Path,
        *,
        key: bytes,
        poll: float,
        clock: Callable[[], float],
        actor: str = "",
    ) -> None:
        self._path = path
        self._key = key
        self._actor = actor
        self._poll = poll
        self._clock = clock
        self._before: dict[str, float] = {}
        self._checked = float("-inf")
        self._stamp: tuple[int, int] | None = None

    @classmethod
    def shared(
        cls, path: Path, *, session_key_file: Path, poll: float, actor: str
    ) -> RevocationList:
        """The list every replica shares, its users hashed under their common session key."""
        key = revocation_key(session_key_file.read_bytes().strip())
        return cls(path, key=key, poll=poll, clock=time.time, actor=actor)

    def user_hash(self, user: str) -> str:
        return "u:" + hmac.new(self._key, user.encode(), hashlib.sha256).hexdigest()[:32]

    def revoked_before(self, user: str) -> float:
        """Sessions of ``user`` created at or before this time are revoked (-inf: none)."""
        now = self._clock()
        if now - self._checked >= self._poll:
            self._checked = now
            self._reload()
        if not self._before:
            return float("-inf")
        return self._before.get(self.user_hash(user), float("-inf"))

    def is_revoked(self, user: str, created_at: float) -> bool:
        return created_at <= self.revoked_before(user)

    def _reload(self) -> None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._before, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        before: dict[str, float] = {}
        with self._path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    item = json.loads(line)
                    at = float(item["before"])
                    if "user_hash" in item:
                        user = str(item["user_hash"])
                    else:  # a line of an earlier release, the user in clear
                        user = self.user_hash(str(item["user"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line of a crashed writer: the rest still counts
                before[user] = max(before.get(user, float("-inf")), at)
        self._before, self._stamp = before, stamp

    async def revoke(self, user: str, reason: str, actor: str | None = None) -> float:
        """End every session of ``user`` begun until now; ``reason`` a short code (the trail
        holds the words), ``actor`` who asked (default: this gateway)."""
        at = self._clock()
        key = self.user_hash(user)
        who = self._actor if actor is None else actor
        await asyncio.to_thread(append_revocation, self._path, key, at, reason, who)
        self._before[key] = max(self._before.get(key, float("-inf")), at)
        return at


def append_revocation(path: Path, user_hash: str, at: float, reason: str, actor: str = "") -> None:
    """Append one revocation durably; one write of one line, so concurrent writers interleave
    whole lines. ``user_hash``: ``RevocationList.user_hash`` of the user; ``actor``: who asked
    (an operator, or the gateway instance)."""
    record = {"user_hash": user_hash, "before": at, "reason": reason, "actor": actor}
    line = json.dumps(record) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
