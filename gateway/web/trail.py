"""The trail's own data through the admin port (9.2.6): who may read it, or block a subject,
is the policy's — the category ``audit_log`` of the system ``audit`` for the purpose
``audit_control`` — and each such request is an access record of its own with that purpose,
written (``Recorder.begin``) before anything is read or changed, completed by an outcome with
the rows returned. Shared by the audit query API and the subject-blocks API.

Such a record is a consultation of the trail, not an access to a data subject's data: a subject
report lists consultations about the person in a section of their own (6.1.1, 9.2.6).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web

from gateway.audit.events import AccessEvent
from gateway.audit.recorder import Recorder
from gateway.config.model import IPNetwork
from gateway.config.vocabulary import AUDIT_CATEGORY, AUDIT_PURPOSE, AUDIT_SYSTEM
from gateway.identity.tokens import Principal
from gateway.policy.engine import PolicyStore
from gateway.web.admin import AdminRefused, Verify, admin_event, caller


@dataclass(frozen=True)
class Ask:
    """One kind of request for the trail: what it reads, the policy action, its route label."""

    kind: str  # events | permissions | blocks | report | console
    action: str  # read | export | block
    route: str
    max_rows: int


def elapsed_us(t0: float) -> int:
    return int((time.perf_counter() - t0) * 1e6)


@dataclass(frozen=True)
class Caller:
    """Who asks, when not by a bearer token on this request: a browser session (the console),
    authenticated by this process or by the worker that forwarded the request (decision 025)."""

    principal: Principal
    auth: str  # session
    session: str  # keyed hash of the session id
    client_ip: str


class TrailAccess:
    def __init__(
        self,
        *,
        verify: Verify,
        policies: PolicyStore,
        recorder: Recorder,
        trusted: Sequence[IPNetwork],
    ) -> None:
        self._verify = verify
        self._policies = policies
        self.recorder = recorder
        self._trusted = trusted

    async def principal(self, request: web.Request) -> Principal:
        """The caller (401 without a valid token, counted by the admin app's recorder)."""
        return await caller(request, self._verify)

    def event(
        self,
        request: web.Request,
        principal: Principal,
        ask: Ask,
        *,
        filters: str,
        subjects: list[str],
        decision: str,
        reason: str,
        rule: str,
        caller: Caller | None = None,
    ) -> AccessEvent:
        resource = request.match_info.route.resource
        return admin_event(
            request,
            principal,
            trusted=self._trusted,
            route=ask.route,
            system=AUDIT_SYSTEM,
            category=AUDIT_CATEGORY,
            purpose=AUDIT_PURPOSE,
            action=ask.action,
            # The subject's id never goes into the path of the record (5.3): it is in subject_ids.
            path=resource.canonical if resource is not None else request.path,
            query=filters,
            subject_ids=subjects,
            decision=decision,
            reason=reason,
            rule=rule,
            policy_version=self._policies.engine.version,
            auth=caller.auth if caller is not None else "bearer",
            session=caller.session if caller is not None else "",
            client_ip=caller.client_ip if caller is not None else None,
        )

    def allows(self, principal: Principal, action: str) -> bool:
        """The policy's answer for ``action`` on the trail, without a record (what a page may
        offer; the request that uses it is decided and recorded by ``authorise``)."""
        return self._policies.engine.decide(
            principal.user, principal.roles, AUDIT_SYSTEM, AUDIT_CATEGORY, action, AUDIT_PURPOSE
        ).allowed

    async def authorise(
        self,
        request: web.Request,
        principal: Principal,
        ask: Ask,
        t0: float,
        *,
        filters: str = "",
        subjects: list[str] | None = None,
        refusal: str = "your job function does not permit this",
        caller: Caller | None = None,
    ) -> AccessEvent:
        """The decision, as an access record: refused → recorded and raised (403, ``refusal``);
        allowed → returned, for the caller to record before it reads or changes anything."""
        decision = self._policies.engine.decide(
            principal.user, principal.roles, AUDIT_SYSTEM, AUDIT_CATEGORY, ask.action, AUDIT_PURPOSE
        )
        event = self.event(
            request,
            principal,
            ask,
            filters=filters,
            subjects=subjects or [],
            decision="allow" if decision.allowed else "deny",
            reason="rule" if decision.allowed else "no_matching_rule",
            rule=decision.rule,
            caller=caller,
        )
        if not decision.allowed:
            await self.deny(event, 403, "forbidden", refusal, t0)
        return event

    async def deny(
        self,
        event: AccessEvent,
        status: int,
        code: str,
        message: str,
        t0: float,
        reason: str | None = None,
    ) -> NoReturn:
        """Record ``event`` as a refusal (for ``reason``, else the decision's) and raise it."""
        await self.recorder.refuse(event, status, reason or event.reason, elapsed_us(t0))
        raise AdminRefused(status, code, message, event.reason, recorded=True)
