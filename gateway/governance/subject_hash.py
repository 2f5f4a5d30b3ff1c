"""Data subjects' ids as keyed hashes in the audit trail (5.3; docs/decisions/015).

Contract:
- ``stored(id)`` is what the trail holds for a subject: ``h:<key id>:<HMAC-SHA256 hex, 32>``
  under the current key. The same id gives the same value under one key, so every access to a
  subject is still found with one indexed look-up; without the key the value says nothing.
- ``candidates(id)`` is the id under every configured key (current first): what a search or a
  block check compares with, so a key rotation loses neither history nor blocks.
- ``path``/``query`` replace the subject where the route's declaration puts it (a path segment,
  a query value), so the recorded path and query are not a second copy of the id either.
- No key configured: ids are kept as they are (``enabled`` is False).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from urllib.parse import unquote

from gateway.config.model import Route

PREFIX = "h:"
MIN_KEY_BYTES = 32
# An id an investigator or the DPO gives (`audit who-accessed ID`, `subject block ID`): business
# systems' ids are short; a longer one is a mistake (or a paste of something else).
MAX_SUBJECT_CHARS = 256


def subject_problem(subject: str) -> str | None:
    """Why ``subject`` cannot be a data subject's id given to the audit or blocks API (a message
    naming the rule, never echoing the value), or None."""
    if not subject.strip():
        return "subject: the id is required"
    if len(subject) > MAX_SUBJECT_CHARS:
        return f"subject: at most {MAX_SUBJECT_CHARS} characters (this one has {len(subject)})"
    if subject != subject.strip():
        return "subject: no spaces before or after the id"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in subject):
        return "subject: printable characters only (no control characters)"
    return None


def key_id(key: bytes) -> str:
    """A short public name of a key (not secret: a hash of it), written in every stored value."""
    return hashlib.sha256(b"pd-gateway subject key id\0" + key).hexdigest()[:8]


def load_key(path: Path) -> bytes:
    """A key file: at least 32 bytes of secret material (e.g. `head -c 32 /dev/urandom`)."""
    key = path.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{path}: a subject key needs at least {MIN_KEY_BYTES} bytes")
    return key


class SubjectHasher:
    def __init__(self, keys: list[bytes]) -> None:
        """``keys``: the current key first, then the previous ones still needed for searches."""
        self._keys = [(key_id(k), k) for k in keys]

    @classmethod
    def from_files(cls, current: Path | None, previous: tuple[Path, ...] = ()) -> SubjectHasher:
        if current is None:
            return cls([])
        return cls([load_key(current), *(load_key(p) for p in previous)])

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @staticmethod
    def _mac(kid: str, key: bytes, subject: str) -> str:
        digest = hmac.new(key, subject.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{PREFIX}{kid}:{digest}"

    def stored(self, subject: str) -> str:
        if not self._keys:
            return subject
        kid, key = self._keys[0]
        return self._mac(kid, key, subject)

    def candidates(self, subject: str) -> list[str]:
        if not self._keys:
            return [subject]
        return [self._mac(kid, key, subject) for kid, key in self._keys]

    def path(self, route: Route | None, path: str) -> str:
        rule = route.subject if route is not None else None
        if not self._keys or rule is None or rule.path_index is None:
            return path
        segments = path.split("/")
        i = rule.path_index
        # The declared position is hashed whether or not the subject was extracted yet: a refusal
        # before extraction (405, a role change that could not be recorded) keeps no id in clear.
        if len(segments) > i and segments[i]:
            segments[i] = self.stored(segments[i])
        return "/".join(segments)

    def query(self, route: Route | None, query: str) -> str:
        rule = route.subject if route is not None else None
        if not self._keys or rule is None or rule.query is None or not query:
            return query
        parts = query.split("&")
        for i, part in enumerate(parts):
            name, eq, value = part.partition("=")
            if eq and value and name == rule.query:
                # Decoded as routing decodes an unambiguous value (no `+`, valid escapes): the
                # same id, so the same hash as in subject_ids.
                parts[i] = f"{name}={self.stored(unquote(value))}"
        return "&".join(parts)
