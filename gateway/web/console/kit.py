"""What every console page uses: its dependencies, the caller and UI of the request, the store
read off the event loop, and the asks (policy action and route label) of its requests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.checkpoint import Checkpoint
from gateway.audit.store.base import AuditStore
from gateway.config.model import AnomaliesConfig, ConsoleConfig
from gateway.governance.access_rights import AccessRights
from gateway.governance.blocks import SubjectBlocks
from gateway.governance.subject_hash import SubjectHasher
from gateway.identity.csrf import SAFE_METHODS
from gateway.web.admin import AdminRefused
from gateway.web.blocks_api import OnBlock
from gateway.web.boundary import REQUEST_ID
from gateway.web.console.access import ConsoleTrail
from gateway.web.console.forms import SubjectTokens
from gateway.web.console.identity import CallerSource
from gateway.web.console.render import CALLER, UI, Renderer
from gateway.web.evidence_api import EvidenceMaker
from gateway.web.requests_api import Deps as RegisterDeps
from gateway.web.trail import Ask, Caller

__all__ = [
    "CALLER",
    "UI_OF",
    "ConsoleDeps",
    "InstanceHealth",
    "caller_of",
    "link",
    "problem_page",
    "ui_of",
]
T = TypeVar("T")
StoreOpener = Callable[[], contextlib.AbstractContextManager[AuditStore]]
UI_OF = web.RequestKey("pdgw_console_ui", UI)


REFUSE, HOME = "refuse", "home"


def from_another_origin(page: str, method: str, headers: Mapping[str, str]) -> str | None:
    """What becomes of a request another origin made the browser send (decision 035). The
    proxied apps are the same site (the same host, another port), so the session cookie rides
    their requests here; a page of theirs must make the console neither read nor record
    anything as the person viewing it. ``page``: the path under the console's base.

    - None: not such a request — the console's own pages, an address typed or bookmarked
      (`Sec-Fetch-Site` same-origin or none), or a client that sends no `Sec-Fetch-*` (the
      `Origin` rule for forms still holds; the config keeps the console on origins browsers
      send them to); a form from elsewhere is left to the `Origin` rule, which refuses it.
    - HOME: a top-level GET navigation from elsewhere (a link, a script setting `location`, the
      return from the login) to any page but the home page: sent to the home page, which reads
      nothing of the trail, so no query, export or person's page runs on a link another origin
      chose.
    - REFUSE: anything else — a `fetch`, a frame, an image, a prefetch or prerender (nobody
      looks at it, whatever its origin) — refused and recorded as refused."""
    if "Sec-Purpose" in headers or "Purpose" in headers:
        return REFUSE
    if headers.get("Sec-Fetch-Site") not in ("cross-site", "same-site"):
        return None
    top_level = (
        headers.get("Sec-Fetch-Mode") == "navigate" and headers.get("Sec-Fetch-Dest") == "document"
    )
    if not top_level:
        return REFUSE
    if method not in SAFE_METHODS or page == "":
        return None
    return HOME


async def answer_another_origin(
    trail: ConsoleTrail, request: web.Request, caller: Caller, ask: Ask, page: str, home: str
) -> None:
    """``from_another_origin`` carried out, in the process and in a worker's front alike:
    refused and recorded (403), or sent to ``home`` (the console's base); else nothing."""
    elsewhere = from_another_origin(page, request.method, request.headers)
    if elsewhere == REFUSE:
        await trail.refused(
            request, caller, ask, 403, "csrf_cross_site", "cross-site request refused"
        )
    if elsewhere == HOME:
        raise web.HTTPSeeOther(home, headers={"X-Request-Id": request[REQUEST_ID]})


@dataclass(frozen=True)
class InstanceHealth:
    """One gateway process as the trail-health page shows it."""

    instance: str
    role: str  # gateway | supervisor | worker
    live: Checkpoint | None
    shipper_lag_seconds: float | None
    store_up: bool | None
    spool_backlog_bytes: float | None


@dataclass
class ConsoleDeps:
    cfg: ConsoleConfig
    instance: str
    renderer: Renderer
    trail: ConsoleTrail
    callers: CallerSource
    open_store: StoreOpener | None
    hasher: SubjectHasher
    blocks: SubjectBlocks
    rights: AccessRights  # a block's permission change (9.2.7) is made by it
    tokens: SubjectTokens
    purposes_of: Mapping[str, str]
    public_keys: Callable[[], Mapping[str, Ed25519PublicKey]]
    health: Callable[[], Awaitable[list[InstanceHealth]]]
    roster: Callable[[], list[dict[str, Any]]]
    anomalies: AnomaliesConfig | None = None
    on_block: OnBlock | None = None
    # Called after a block or unblock is in force here: the supervisor hands it to its workers
    # before the page answers (decision 016).
    after_block: Callable[[], Awaitable[None]] | None = None
    # The register of subjects' requests (decision 029) and evidence packs (decision 028).
    register: RegisterDeps | None = None
    evidence: EvidenceMaker | None = None

    def ask(self, name: str, action: str = "read") -> Ask:
        return Ask("console", action, f"console:{name}", self.cfg.page_rows)

    async def read(self, run: Callable[[AuditStore], T]) -> T:
        """``run(store)`` in a thread of its own, on a store opened for it (gateway.audit.query
        bounds every query in rows and time)."""
        opener = self.open_store
        if opener is None:
            raise AdminRefused(
                503, "no_store", "no audit store is configured", "no_store", recorded=True
            )

        def call() -> T:
            with opener() as store:
                return run(store)

        return await asyncio.to_thread(call)


def problem_page(
    deps: ConsoleDeps, request: web.Request, status: int, title: str, message: str
) -> web.Response:
    """A page that says what could not be done (the request is recorded by its handler)."""
    return deps.renderer.page(
        request,
        ui_of(request),
        "error.html",
        status=status,
        title=title,
        message=message,
        request_id=request[REQUEST_ID],
        signed_in=True,
    )


def caller_of(request: web.Request) -> Caller:
    return request[CALLER]


def ui_of(request: web.Request) -> UI:
    return request[UI_OF]


def now_us() -> int:
    return time.time_ns() // 1000


def link(base: str, path: str, params: Mapping[str, Any] | None = None) -> str:
    """A console URL: ``base`` + ``path`` with the non-empty ``params`` as its query."""
    from urllib.parse import urlencode

    kept = {k: v for k, v in (params or {}).items() if v not in (None, "")}
    return base + path + (("?" + urlencode(kept)) if kept else "")
