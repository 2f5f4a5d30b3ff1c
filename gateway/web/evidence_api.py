"""Evidence packs on the admin port (9.1.9; decision 028): the figures of a period computed where
the store is, signed with the gateway's key.

  POST /admin/evidence   ``{"from": ISO 8601, "to": ISO 8601}`` → ``{"pack", "signature"}``

Authorised like reading the trail (``gateway.web.trail``) with the action ``export`` (10.2: the
pack carries the trail's contents out), recorded before anything is read, completed with the
pack's size. A period must have ended: one that reaches into the future would give another pack
tomorrow. The figures are a function of the period and the store (``gateway.governance.
evidence``); ``made`` says who asked and when. The signature is over the pack's canonical JSON
(``evidence.canonical``), under a domain of its own, by ``evidence.key_file`` or, unset, the
checkpoint key (decision 028). `pd-gateway evidence verify` asks for the same period again and
compares the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.audit.checkpoint import Signer, load_public_keys
from gateway.audit.store.base import AuditStore, StoreError
from gateway.config.model import Config, IPNetwork
from gateway.governance import evidence
from gateway.policy.engine import PolicyStore
from gateway.web.admin import AdminRefused, Verify
from gateway.web.boundary import REQUEST_ID
from gateway.web.trail import Ask, TrailAccess, elapsed_us

StoreOpener = Callable[[], contextlib.AbstractContextManager[AuditStore]]
ASK = Ask("evidence", "export", "admin:evidence", evidence.MAX_LIST)
MAX_BODY = 4096
MAX_PERIOD = dt.timedelta(days=400)


def parse_period(body: Any, now_us: int) -> tuple[int, int]:
    """(from_us, to_us) of ``{"from", "to"}``; ValueError naming the field."""
    if not isinstance(body, dict):
        raise ValueError('the body must be {"from": ISO 8601, "to": ISO 8601}')
    out = []
    for key in ("from", "to"):
        text = body.get(key)
        try:
            t = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{key}: a time with its zone (ISO 8601)") from None
        if t.tzinfo is None:
            raise ValueError(f"{key}: give the zone (a pack's period is exact)")
        out.append(int(t.timestamp() * 1_000_000))
    start, end = out
    if end <= start:
        raise ValueError("to: must be after from")
    if end - start > MAX_PERIOD.total_seconds() * 1_000_000:
        raise ValueError(f"the period is longer than {MAX_PERIOD.days} days")
    if end > now_us:
        raise ValueError("to: the period has not ended yet; its pack would change")
    return start, end


class EvidenceMaker:
    """Builds the inputs from the configuration and the policy in force, the figures in a thread."""

    def __init__(self, cfg: Config, policies: PolicyStore, open_store: StoreOpener | None) -> None:
        self.cfg = cfg
        self._policies = policies
        self._open_store = open_store
        key = cfg.evidence.key_file or cfg.audit.checkpoint_key_file
        self._key_file: Path = key

    @property
    def available(self) -> bool:
        return self._open_store is not None

    def signer(self) -> Signer:
        return Signer.load(self._key_file)

    def inputs(self, start: int, end: int) -> evidence.Inputs:
        cfg, engine = self.cfg, self._policies.engine
        return evidence.Inputs(
            from_us=start,
            to_us=end,
            timezone=cfg.evidence.timezone,
            register_timezone=cfg.subject_requests.timezone,
            due_soon_days=cfg.subject_requests.due_soon_days,
            controls=evidence.controls_of(cfg, cfg.evidence.alert_rules_file),
            policy_model=cfg.authz.model,
            rules_now=engine.rules(),
            version_now=engine.version,
            public_keys=load_public_keys([cfg.audit.checkpoint_key_file]),
        )

    async def figures(self, inp: evidence.Inputs) -> dict[str, Any]:
        opener = self._open_store
        assert opener is not None

        def run() -> dict[str, Any]:
            with opener() as store:
                return evidence.figures(store, inp)

        return await asyncio.to_thread(run)

    def signed(
        self, inp: evidence.Inputs, figures: dict[str, Any], made: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The pack and its detached signature (over ``evidence.canonical(pack)``)."""
        doc = evidence.pack(inp, figures, made)
        data = evidence.canonical(doc)
        signer = self.signer()
        return doc, {
            "key_id": signer.key_id,
            "sha256": hashlib.sha256(data).hexdigest(),
            "signature": signer.sign_document(evidence.DOMAIN, data),
        }


class EvidenceAPI:
    def __init__(
        self,
        *,
        verify: Verify,
        policies: PolicyStore,
        recorder: Any,
        trusted: Sequence[IPNetwork],
        maker: EvidenceMaker,
    ) -> None:
        self._trail = TrailAccess(
            verify=verify, policies=policies, recorder=recorder, trusted=trusted
        )
        self._maker = maker

    def register(self, app: web.Application) -> None:
        app.router.add_post("/admin/evidence", self._make)

    async def _make(self, request: web.Request) -> web.Response:
        t0 = time.perf_counter()
        trail = self._trail
        principal = await trail.principal(request)
        body: Any = None
        if (request.content_length or 0) <= MAX_BODY:
            with contextlib.suppress(ValueError):
                body = await request.json()
        problem, start, end = None, 0, 0
        try:
            start, end = parse_period(body, time.time_ns() // 1000)
        except ValueError as e:
            problem = str(e)
        event = await trail.authorise(
            request, principal, ASK, t0, filters=f"evidence&from_us={start}&to_us={end}"
        )
        if problem is not None:
            await trail.deny(event, 400, "bad_request", problem, t0, "bad_filter")
        if not self._maker.available:
            await trail.deny(event, 503, "no_store", "no audit store is configured", t0, "no_store")
        pending = await trail.recorder.begin(event)  # 9.2.6: on record before anything is read
        inp = self._maker.inputs(start, end)
        figures: dict[str, Any] | None = None
        with contextlib.suppress(StoreError):  # answered 503 below, its outcome recorded
            figures = await self._maker.figures(inp)
        if figures is None:
            await pending.finish(status=503, duration_us=elapsed_us(t0), outcome="store_error")
            raise AdminRefused(
                503,
                "store_unavailable",
                "the audit store cannot be read now",
                "store_error",
                recorded=True,
            )
        made = {
            "at_us": event.ts_us,
            "by": principal.user,
            "request_id": request[REQUEST_ID],
            "instance": self._maker.cfg.instance_id,
        }
        doc, signature = self._maker.signed(inp, figures, made)
        rows = figures["registration"]["totals"]["accesses"]
        await pending.finish(status=200, duration_us=elapsed_us(t0), response_count=rows)
        rid = request[REQUEST_ID]
        return web.json_response(
            {"pack": doc, "signature": signature, "request_id": rid},
            headers={"X-Request-Id": rid},
        )
