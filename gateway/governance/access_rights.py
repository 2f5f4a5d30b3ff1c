"""Changes of who may access what (9.2.7), in one place: policy reloads (file change, SIGHUP,
the admin API), time-bound grants that lapse, break-glass sessions, role sets the IdP changed,
blocks of a data subject's data (6.5, 6.6) and browser sessions ended by an operator. Every
change is built here as a ``PermissionChange`` and written to the audit spool *before* it takes
effect; a change that cannot be recorded does not happen
(docs/decisions/006-permission-changes.md). The last two are built here and written by the API
that makes them, with the record of what they change (``subject_block_change``,
``sessions_revoked``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.audit.events import PermissionChange
from gateway.audit.recorder import Recorder
from gateway.config.model import Config
from gateway.core.errors import PolicyError, SpoolUnavailable
from gateway.core.ids import new_id
from gateway.core.metrics import Metrics
from gateway.identity.tokens import Principal
from gateway.policy import tools as policy_tools
from gateway.policy.break_glass import BreakGlass, Session, describe
from gateway.policy.break_glass import change_id as break_glass_change_id
from gateway.policy.engine import PolicyEngine, PolicyStore, permission_changes
from gateway.policy.role_changes import RoleTracker

log = logging.getLogger(__name__)


@dataclass
class AccessRights:
    cfg: Config
    metrics: Metrics
    recorder: Recorder
    policies: PolicyStore
    break_glass: BreakGlass
    roles: RoleTracker
    # After a new policy is in force (the composition root lets the collector see the old one).
    on_installed: Callable[[], None] = lambda: None
    # One change of policy at a time. A worker's file watcher and the supervisor's SIGHUP (or the
    # admin API) may see the same edit together; each would diff against the policy still in
    # force while the other's record is being written, and record the change twice (9.2.7).
    _changing: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def reload_policy(self, *, actor: str, source: str, reason: str) -> bool:
        """Load the policy files again and put them in force, recording every change (9.2.7).

        A policy that fails `policy check` or does not load is refused; the old one stays."""
        problems = [str(p) for p in self.lint_policy(self.cfg.authz.policy)]
        engine = None
        try:
            engine = self.policies.candidate()
        except PolicyError as e:
            problems.append(str(e))
        if problems or engine is None:
            self.metrics.policy_reloads.labels("refused").inc()
            log.error(
                "policy reload refused; previous policy stays in force",
                extra={"problems": problems[:10], "count": len(problems)},
            )
            return False
        return await self.apply_policy(engine, actor=actor, source=source, reason=reason)

    def lint_policy(self, policy: Path) -> list[policy_tools.Problem]:
        """`pd-gateway policy check` against this gateway's routes: what must hold before a policy
        file is put in force (the admin API runs the same check)."""
        try:
            lint = policy_tools.load_lint_settings(policy.parent)
        except PolicyError as e:
            return [policy_tools.Problem(policy.parent / "lint.yaml", 0, str(e))]
        return policy_tools.check(
            self.cfg.authz.model,
            policy,
            known_resources={(r.system, r.category) for r in self.cfg.routes},
            special_categories=lint.get("special_categories"),
        )

    async def apply_policy(
        self,
        engine: PolicyEngine,
        *,
        actor: str,
        source: str,
        reason: str,
        before_install: Callable[[], None] | None = None,
    ) -> bool:
        """Put a validated policy in force. Its effective changes are written to the audit spool
        in one write *before* it decides anything; if they cannot be recorded the change is
        refused (no silent change of access rights). ``before_install`` runs between the two
        (the admin API writes the policy file there)."""
        async with self._changing:
            return await self._apply_policy(engine, actor, source, reason, before_install)

    async def _apply_policy(
        self,
        engine: PolicyEngine,
        actor: str,
        source: str,
        reason: str,
        before_install: Callable[[], None] | None,
    ) -> bool:
        old = self.policies.engine
        if engine.rules() == old.rules() and engine.version == old.version:
            return True
        now = time.time_ns() // 1000
        records = [
            PermissionChange(
                change_id=cid,
                ts_us=now,
                actor=actor,
                change_kind=kind,
                role=role,
                user=user,
                rule_before=before,
                rule_after=after,
                policy_version_before=old.version,
                policy_version_after=engine.version,
                reason=reason,
                source=source,
            )
            for kind, role, user, before, after, cid in permission_changes(old, engine)
        ]
        if records:
            try:
                await self.recorder.note_all(records)  # one write: all of them or none
            except SpoolUnavailable as e:
                self.metrics.policy_reloads.labels("refused").inc()
                log.error(
                    "policy change refused: it cannot be recorded", extra={"reason": e.reason}
                )
                return False
        if before_install is not None:
            before_install()
        self.policies.install(engine)
        self.on_installed()
        self.metrics.policy_reloads.labels("ok").inc()
        self.metrics.set_policy(engine.version, engine.rule_count)
        log.info(
            "policy changed", extra={"changes": len(records), "actor": actor, "source": source}
        )
        return True

    async def start_break_glass(
        self, principal: Principal, seconds: float, justification: str
    ) -> Session:
        """Open a break-glass session (PermissionError / ValueError if the policy forbids it);
        it is recorded before it grants anything, SpoolUnavailable if it cannot be."""
        session = self.break_glass.open(principal.user, principal.roles, seconds, justification)
        until = dt.datetime.fromtimestamp(session.ends_at, dt.UTC).isoformat(timespec="seconds")
        await self._record_break_glass(
            session,
            "started",
            f"{describe(session.grants)} until {until}",
            principal.user,
            justification,
        )
        self.break_glass.activate(session)
        self.metrics.break_glass_invocations.inc()
        log.warning("break-glass session started", extra={"session": session.session_id})
        return session

    async def _record_break_glass(
        self, session: Session, event: str, rule: str, actor: str, reason: str
    ) -> None:
        version = self.policies.engine.version
        change = PermissionChange(
            change_id=break_glass_change_id(session, event),
            ts_us=time.time_ns() // 1000,
            actor=actor,
            change_kind=f"break_glass_{event}",
            role="",
            user=session.user,
            rule_before="" if event == "started" else rule,
            rule_after=rule if event == "started" else "",
            policy_version_before=version,
            policy_version_after=version,
            reason=reason,
            source="break_glass",
        )
        await self.recorder.note(change)

    async def end_break_glass_sessions(self, interval: float = 0.5) -> None:
        """Record the end of every session that reached it (the access ended by itself)."""
        while True:
            await asyncio.sleep(interval)
            for s in self.break_glass.expired():
                try:
                    await self._record_break_glass(
                        s, "ended", describe(s.grants), "expiry", "break-glass period ended"
                    )
                except SpoolUnavailable:
                    log.error(
                        "break-glass end could not be recorded", extra={"session": s.session_id}
                    )

    async def watch_policy_files(self, interval: float) -> None:
        """Reload when the policy files change on disk (a deploy, a git pull)."""
        stamp = self.policies.files_stamp()
        while True:
            await asyncio.sleep(interval)
            try:
                now = self.policies.files_stamp()
            except OSError:
                continue  # mid-replace: look again next time
            if now != stamp:
                stamp = now
                await self.reload_policy(
                    actor=f"file:{self.cfg.authz.policy}",
                    source="file",
                    reason="policy files changed on disk",
                )
            lapse = self.policies.engine.next_expiry
            if lapse is not None and time.time() >= lapse:
                await self.reload_policy(
                    actor="expiry", source="expiry", reason="a time-bound grant reached its end"
                )

    def roles_as_last_seen(self, principal: Principal) -> bool:
        """Whether the token's role set is the one last seen for this user: nothing to record,
        known without a coroutine (the case of nearly every request)."""
        return self.roles.last(principal.user) == principal.roles

    async def observe_roles(self, principal: Principal) -> None:
        """9.2.7: a role set from the IdP that differs from the last one seen for this user is a
        change of access rights, recorded before it is used (and before it is remembered).
        SpoolUnavailable if it cannot be: the request is refused and the next one tries again."""

        async def record(before: tuple[str, ...], after: tuple[str, ...]) -> None:
            version = self.policies.engine.version
            # The id depends on the user, both sets and the token's iat: replicas that see the
            # same token record the same change, which the store counts once.
            iat = int(principal.issued_at)
            key = f"{principal.user}|{','.join(before)}|{','.join(after)}|{iat}"
            await self.recorder.note(
                PermissionChange(
                    change_id=hashlib.sha256(key.encode()).hexdigest()[:32],
                    ts_us=time.time_ns() // 1000,
                    actor=f"idp:{self.cfg.identity.issuer}",
                    change_kind="idp_roles_changed",
                    role=",".join(after),
                    user=principal.user,
                    rule_before="roles: " + ",".join(before),
                    rule_after="roles: " + ",".join(after),
                    policy_version_before=version,
                    policy_version_after=version,
                    reason="the role set in the employee's token changed",
                    source="idp",
                )
            )

        await self.roles.track(principal.user, principal.roles, record)

    def subject_block_change(
        self, *, actor: str, action: str, subject: str, label: str, reason: str
    ) -> PermissionChange:
        """A block (6.5, 6.6) takes every job function's access to one subject's data away
        (except the verification's), an unblock gives it back: a change of access rights of its
        own, found by `audit permissions`. ``subject`` as stored (a keyed hash, 5.3); the label is
        the DPO's name for the case."""
        named = f"subject {subject}" + (f" ({label})" if label else "")
        rule = f"{named}: blocked, every access refused but the verification's"
        version = self.policies.engine.version
        return PermissionChange(
            change_id=new_id(),
            ts_us=time.time_ns() // 1000,
            actor=actor,
            change_kind="subject_blocked" if action == "block" else "subject_unblocked",
            role="",
            user="",
            rule_before="" if action == "block" else rule,
            rule_after=rule if action == "block" else "",
            policy_version_before=version,
            policy_version_after=version,
            reason=reason,
            source="admin_api",
        )

    def sessions_revoked(
        self, *, actor: str, user: str, before: float, reason: str
    ) -> PermissionChange:
        """An operator ended every browser session of ``user`` begun before ``before`` (decision
        014): recorded when it is asked for, not when a revoked cookie next comes back."""
        at = dt.datetime.fromtimestamp(before, dt.UTC).isoformat(timespec="seconds")
        version = self.policies.engine.version
        return PermissionChange(
            change_id=new_id(),
            ts_us=time.time_ns() // 1000,
            actor=actor,
            change_kind="sessions_revoked",
            role="",
            user=user,
            rule_before=f"browser sessions begun before {at}",
            rule_after="",
            policy_version_before=version,
            policy_version_after=version,
            reason=reason,
            source="admin_api",
        )
