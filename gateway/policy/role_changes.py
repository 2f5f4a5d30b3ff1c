"""Role changes seen in tokens (9.2.7): when the IdP starts sending a different set of job
functions for an employee, that is a change of access rights, recorded like a policy change.

The last role set seen per user is kept in memory and saved in the spool directory
(``idp-roles.json``), so a restart does not forget it. A user seen for the first time sets the
baseline without a record (nothing is known to have changed). The record itself is built by
``gateway.governance.access_rights`` (every ``PermissionChange`` is built there).

Failing closed:
- ``track()`` appends the change record *before* the new role set is remembered; if the append
  fails, nothing is remembered, the caller refuses the request and the next request tries again.
- The baseline is written with ``fsutil.atomic_write`` (fsynced) in a worker thread, never on the
  event loop. Saving lazily is safe: a change recorded but not yet in the baseline is seen again
  after a restart and recorded again under the same change id, which the store keeps once.
- A baseline that exists but cannot be read stops start-up (``RoleBaselineError``): starting
  with an empty one would silently forget every role set, and every change made while it was
  forgotten would go unrecorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.core.errors import GatewayError
from gateway.core.fsutil import atomic_write
from gateway.core.tasks import spawn

log = logging.getLogger(__name__)
STATE_FILE = "idp-roles.json"

Baseline = dict[str, tuple[str, ...]]


class RoleBaselineError(GatewayError):
    """The saved IdP role baseline cannot be read; the message names the file, never its content."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"{path}: the IdP role baseline (9.2.7) cannot be read: {problem}. Not starting: "
            "without it every role change would go unrecorded. Restore the file from a backup, "
            "or move it away to start a new baseline (role changes of users not yet seen again "
            "are then not recorded)."
        )
        self.path = path


def load_baseline(path: Path) -> Baseline:
    """The saved role sets; empty if the file does not exist, RoleBaselineError if it is bad."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise RoleBaselineError(path, "not UTF-8 text") from None
    except OSError as e:
        raise RoleBaselineError(path, e.strerror or type(e).__name__) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:  # its message has a position only, no content
        raise RoleBaselineError(
            path, f"not valid JSON ({e.msg}: line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(data, dict) or not all(
        isinstance(roles, list) and all(isinstance(r, str) for r in roles)
        for roles in data.values()
    ):
        raise RoleBaselineError(path, "not an object of user → list of role names")
    return {str(u): tuple(r) for u, r in data.items()}


class RoleTracker:
    def __init__(self, directory: Path, *, save_every: int = 100) -> None:
        """Loads the baseline now: RoleBaselineError if it exists and cannot be read."""
        self._path = directory / STATE_FILE
        self._save_every = save_every
        self._unsaved = 0
        self._roles: Baseline = load_baseline(self._path)
        self._save_lock = asyncio.Lock()  # saves land in the order their snapshots were taken
        self._saving: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return self._path

    async def track(
        self,
        user: str,
        roles: tuple[str, ...],
        record: Callable[[tuple[str, ...], tuple[str, ...]], Awaitable[None]],
    ) -> bool:
        """9.2.7, fail closed: if ``user``'s role set differs from the one last seen, ``record``
        the change (before, after) and only then remember the new set. Returns whether a change
        was recorded (a user seen for the first time sets the baseline without one).

        Whatever ``record`` raises propagates with nothing remembered: the caller refuses the
        request, and the next request with the new set tries to record the change again."""
        before = self._roles.get(user)
        if before == roles:
            return False
        if before is not None:
            await record(before, roles)
        self._remember(user, roles)
        return before is not None

    def last(self, user: str) -> tuple[str, ...] | None:
        return self._roles.get(user)

    def _remember(self, user: str, roles: tuple[str, ...]) -> None:
        self._roles[user] = roles
        self._unsaved += 1
        if self._unsaved >= self._save_every and (self._saving is None or self._saving.done()):
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # no event loop (a tool, a test): nothing to keep free
                self.save()
                return
            self._saving = spawn(self._save_in_background(), name="idp-roles-save")

    async def _save_in_background(self) -> None:
        try:
            await self.save_async()
        except OSError as e:
            # Not a refusal: every change is in the spool already; the baseline is retried with
            # the next changes and at shutdown.
            log.error(
                "IdP role baseline not saved; will retry",
                extra={"path": str(self._path), "errno": e.errno},
            )

    async def save_async(self) -> None:
        """Write the baseline (atomically, fsynced) in a worker thread; OSError if it fails."""
        async with self._save_lock:
            snapshot, n = dict(self._roles), self._unsaved
            self._unsaved = 0
            try:
                await asyncio.to_thread(atomic_write, self._path, _encode(snapshot))
            except BaseException:
                self._unsaved += n
                raise

    async def close(self) -> None:
        """At shutdown: wait for a background save, then save what is left (off the loop); a
        failure is logged, not raised (every change is in the spool already)."""
        if self._saving is not None:
            await asyncio.gather(self._saving, return_exceptions=True)
        await self._save_in_background()

    def save(self) -> None:
        """Write the baseline now, blocking (atomically, fsynced): not on a serving event loop."""
        atomic_write(self._path, _encode(self._roles))
        self._unsaved = 0


def _encode(roles: Baseline) -> bytes:
    return json.dumps({u: list(r) for u, r in roles.items()}).encode()
