"""Every console request, authorised by the policy and recorded (9.2.6): the one place the
console meets the trail, through the recorder (decision 020) like every other path.

Contract:
- ``viewing(request, caller, ask, filters=…, subjects=…)`` decides by the policy (system
  ``audit``, category ``audit_log``, purpose ``audit_control``, the ask's action) through
  ``gateway.web.trail``. Refused: one record (the refusal) is written and the refusal raised
  (403). Allowed: the access — who, which page (the route's template, never a subject id or a
  token), the filters, the subject asked about (as stored: a keyed hash where hashing is on) — is
  begun as pending (``Recorder.begin``) *before* the block runs, and finished with its outcome
  (status, rows shown, whether a limit cut them) when it ends, whatever way it ends.
- ``decide(...)`` is the first half alone: the allowed access, not yet recorded, for a page that
  must still check what it was sent; then either ``recording(event)`` (the second half) or
  ``deny(event, …)``, which records it as a refusal (one record: a bad field, 409).
- ``refuse(...)`` records a refusal decided here before any policy decision (a cross-site
  form, an unknown page, an expired link) as one access record; ``refused(...)`` also raises it.
Such a record is a consultation of the trail (category ``audit_log``), not an access to a data
subject's data: the subject report lists it apart (gateway.audit.report). Page views, queries,
exports (action ``export``, 10.2), blocks (action ``block``) and anomaly reviews (action
``create``) all go through here, so the way they are recorded is changed here alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web

from gateway.audit.events import COMPLETE, AccessEvent
from gateway.audit.recorder import Recorder
from gateway.audit.store.base import StoreError
from gateway.core.errors import GatewayError, SpoolUnavailable
from gateway.web.admin import AdminRefused
from gateway.web.trail import Ask, Caller, TrailAccess, elapsed_us


class ConsoleUnavailable(AdminRefused):
    """The store failed after the view was recorded (its outcome says so)."""

    def __init__(self) -> None:
        super().__init__(
            503,
            "store_unavailable",
            "the audit store cannot be read now",
            "store_error",
            recorded=True,
        )


@dataclass
class Viewing:
    """What a recorded view reports for its outcome record."""

    event: AccessEvent
    rows: int = 0
    capped: bool = False
    status: int = 200  # a page that answers an error after reading (404: no such event) says so
    outcome: str = COMPLETE


class ConsoleTrail:
    def __init__(self, trail: TrailAccess, recorder: Recorder) -> None:
        self._trail = trail
        self.recorder = recorder

    async def decide(
        self,
        request: web.Request,
        caller: Caller,
        ask: Ask,
        *,
        filters: str = "",
        subjects: Sequence[str] = (),
        refusal: str = "your job function may not use the audit console",
    ) -> tuple[AccessEvent, float]:
        """The policy's decision: refused → recorded and raised; allowed → the access record, not
        yet written, and the time the request was taken up (for its duration)."""
        t0 = time.perf_counter()
        event = await self._trail.authorise(
            request,
            caller.principal,
            ask,
            t0,
            filters=filters,
            subjects=list(subjects),
            refusal=refusal,
            caller=caller,
        )
        return event, t0

    @contextlib.asynccontextmanager
    async def viewing(
        self,
        request: web.Request,
        caller: Caller,
        ask: Ask,
        *,
        filters: str = "",
        subjects: Sequence[str] = (),
        refusal: str = "your job function may not use the audit console",
    ) -> AsyncIterator[Viewing]:
        event, t0 = await self.decide(
            request, caller, ask, filters=filters, subjects=subjects, refusal=refusal
        )
        async with self.recording(request, event, t0) as view:
            yield view

    @contextlib.asynccontextmanager
    async def recording(
        self, request: web.Request, event: AccessEvent, t0: float
    ) -> AsyncIterator[Viewing]:
        """``event`` (allowed) begun as pending before the block runs (9.2.6: on record before
        anything is read or changed), finished with the block's outcome whatever way it ends."""
        pending = await self.recorder.begin(event)
        view = Viewing(event)
        outcome = ""
        try:
            yield view
        except StoreError:
            view.status, outcome = 503, "store_error"
            raise ConsoleUnavailable() from None
        except GatewayError as e:
            view.status, outcome = e.status, getattr(e, "reason", "") or e.code
            raise
        except web.HTTPException as e:  # a redirect after a form, or the router's 4xx
            view.status = e.status
            outcome = "" if e.status < 400 else "http_error"
            raise
        except (ConnectionError, asyncio.CancelledError):
            outcome = "client_aborted"
            raise
        except Exception:
            view.status, outcome = 500, "gateway_error"
            raise
        finally:
            with contextlib.suppress(SpoolUnavailable):
                await pending.finish(
                    status=view.status,
                    bytes_in=request.content_length or 0,
                    duration_us=elapsed_us(t0),
                    outcome=outcome or view.outcome,
                    response_count=view.rows,
                    response_capped=1 if view.capped else 0,
                )

    async def deny(self, event: AccessEvent, status: int, reason: str, t0: float) -> None:
        """``event`` (allowed by the policy, not yet written) recorded as refused for ``reason``:
        what was sent cannot be used (one record, like the admin API's 400 and 409)."""
        await self.recorder.refuse(event, status, reason, elapsed_us(t0))

    async def refuse(
        self,
        request: web.Request,
        caller: Caller,
        ask: Ask,
        status: int,
        reason: str,
        *,
        filters: str = "",
        subjects: Sequence[str] = (),
    ) -> None:
        """Record a refusal decided by the console itself (not the policy): one record."""
        event = self._trail.event(
            request,
            caller.principal,
            ask,
            filters=filters,
            subjects=list(subjects),
            decision="deny",
            reason=reason,
            rule="",
            caller=caller,
        )
        await self.recorder.refuse(event, status, reason, 0)

    async def refused(
        self,
        request: web.Request,
        caller: Caller,
        ask: Ask,
        status: int,
        reason: str,
        message: str,
        *,
        filters: str = "",
        subjects: Sequence[str] = (),
    ) -> NoReturn:
        await self.refuse(request, caller, ask, status, reason, filters=filters, subjects=subjects)
        raise AdminRefused(status, reason, message, reason, recorded=True)

    def allowed(self, caller: Caller, action: str) -> bool:
        """Whether the policy would allow ``action`` on the trail: to show or hide a button.
        Nothing is recorded; the request the button makes is decided and recorded itself."""
        return self._trail.allows(caller.principal, action)
