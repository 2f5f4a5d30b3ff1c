"""Role changes seen in tokens (9.2.7): when the IdP starts sending a different set of job
functions for an employee, that is a change of access rights, recorded like a policy change.

The last role set seen per user is kept in memory and saved in the spool directory
(``idp-roles.json``), so a restart does not forget it. A user seen for the first time sets the
baseline without a record (nothing is known to have changed). The change id is derived from the
user, both role sets and the token's ``iat``, so replicas that see the same token record the same
change once in the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path

from gateway.audit.events import PermissionChange
from gateway.fsutil import atomic_write

log = logging.getLogger(__name__)
STATE_FILE = "idp-roles.json"


class RoleTracker:
    def __init__(
        self, directory: Path, *, instance: str, issuer: str, save_every: int = 100
    ) -> None:
        self._path = directory / STATE_FILE
        self._instance = instance
        self._issuer = issuer
        self._save_every = save_every
        self._unsaved = 0
        self._roles: dict[str, tuple[str, ...]] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads(self._path.read_text())
            self._roles = {u: tuple(r) for u, r in data.items()}

    def observe(
        self, user: str, roles: tuple[str, ...], issued_at: float, policy_version: str
    ) -> PermissionChange | None:
        """The change this sighting reveals, if any; the new set is remembered at once."""
        before = self._roles.get(user)
        if before == roles:
            return None
        self._roles[user] = roles
        self._unsaved += 1
        if self._unsaved >= self._save_every:
            self.save()
        if before is None:
            return None
        key = f"{user}|{','.join(before)}|{','.join(roles)}|{int(issued_at)}"
        return PermissionChange(
            change_id=hashlib.sha256(key.encode()).hexdigest()[:32],
            ts_us=time.time_ns() // 1000,
            instance=self._instance,
            actor=f"idp:{self._issuer}",
            change_kind="idp_roles_changed",
            role=",".join(roles),
            user=user,
            rule_before="roles: " + ",".join(before),
            rule_after="roles: " + ",".join(roles),
            policy_version_before=policy_version,
            policy_version_after=policy_version,
            reason="the role set in the employee's token changed",
            source="idp",
        )

    def forget(self, user: str, roles: tuple[str, ...] | None) -> None:
        """Undo an observation whose record could not be written (it is tried again next time)."""
        if roles is None:
            self._roles.pop(user, None)
        else:
            self._roles[user] = roles

    def last(self, user: str) -> tuple[str, ...] | None:
        return self._roles.get(user)

    def save(self) -> None:
        atomic_write(self._path, json.dumps({u: list(r) for u, r in self._roles.items()}).encode())
        self._unsaved = 0
