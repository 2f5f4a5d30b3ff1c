"""Blocked data subjects (6.5, 6.6): who is blocked, as this replica sees it, and the change.

Contract:
- A block or unblock is a chained ``SubjectBlock`` record in the spool; it is in force in this
  process the moment the record is durable (before the API answers), and on every other replica
  within ``audit.blocks_poll_seconds`` plus the shipper's lag: each replica re-reads
  ``subject_blocks`` from the store in a thread and exports the age of its view
  (``pdgw_subject_blocks_view_age_seconds``).
- Blocks survive restarts: the store holds them (never dropped by retention), and a local copy
  beside the spool (``subject-blocks.json``, written atomically) holds this replica's own changes
  until the store has them, and every block when no store is configured.
- The latest record of a subject decides (by time, then block id); a failed poll keeps the last
  view (blocks are never lifted because the store is down) and the age metric grows.
- Subjects are compared as stored in the trail (the caller maps a real id first, 5.3). A block
  carries the label the DPO chose for it (never the id itself), which is what `subject list`
  shows beside the stored form.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.audit.events import SubjectBlock
from gateway.audit.recorder import Note, Recorder
from gateway.audit.store.base import AuditStore, StoreError
from gateway.core.fsutil import atomic_write
from gateway.core.ids import new_id

log = logging.getLogger(__name__)

STATE_FILE = "subject-blocks.json"
StoreOpener = Callable[[], contextlib.AbstractContextManager[AuditStore]]


@dataclass(frozen=True)
class BlockRecord:
    ts_us: int
    block_id: str
    action: str  # block | unblock
    subject: str
    actor: str
    reason: str
    label: str = ""


def fold(records: Iterable[BlockRecord]) -> dict[str, BlockRecord]:
    """Subject → its latest record, for the subjects whose latest record is a block."""
    latest: dict[str, BlockRecord] = {}
    for r in sorted(records, key=lambda r: (r.ts_us, r.block_id)):
        latest[r.subject] = r
    return {s: r for s, r in latest.items() if r.action == "block"}


class SubjectBlocks:
    def __init__(
        self,
        recorder: Recorder,
        directory: Path,
        open_store: StoreOpener | None,
        *,
        poll_seconds: float,
        on_count: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._recorder = recorder
        self._file = directory / STATE_FILE
        self._open_store = open_store
        self._poll_seconds = poll_seconds
        self._on_count = on_count
        self._local: dict[str, BlockRecord] = {}  # by block id: this replica's records
        self._stored: dict[str, BlockRecord] = {}  # by block id: the store's, at the last poll
        self._active: dict[str, BlockRecord] = {}
        self._polled_at = time.monotonic()  # start-up counts as the view's age until a poll

    @property
    def view_age_seconds(self) -> float:
        return time.monotonic() - self._polled_at

    def blocked(self, subjects: Iterable[str]) -> str | None:
        """The first of ``subjects`` that is blocked, or None (the request path: look-ups)."""
        if not self._active:
            return None
        for s in subjects:
            if s in self._active:
                return s
        return None

    def active(self) -> list[BlockRecord]:
        return sorted(self._active.values(), key=lambda r: (r.ts_us, r.block_id))

    def history(self, subjects: Iterable[str]) -> list[BlockRecord]:
        """Every block and unblock of ``subjects`` this replica knows of, oldest first."""
        wanted = set(subjects)
        records = {**self._stored, **self._local}.values()
        return sorted(
            (r for r in records if r.subject in wanted), key=lambda r: (r.ts_us, r.block_id)
        )

    def current(self, subjects: Iterable[str]) -> BlockRecord | None:
        """The block in force on one of ``subjects`` (the forms of one id), or None."""
        found = self.blocked(subjects)
        return self._active[found] if found is not None else None

    def _refold(self) -> None:
        self._active = fold({**self._stored, **self._local}.values())
        self._on_count(len(self._active))

    async def start(self) -> None:
        """Before serving: this replica's own records, then the store's (if it answers)."""
        if self._file.exists():
            data = json.loads(await asyncio.to_thread(self._file.read_text))
            self._local = {r["block_id"]: BlockRecord(**r) for r in data}
        self._refold()
        await self.poll()

    async def poll(self) -> bool:
        if self._open_store is None:
            self._polled_at = time.monotonic()  # no store: this replica's view is all there is
            return True
        try:
            rows = await asyncio.to_thread(self._read_store)
        except StoreError as e:
            log.warning("subject blocks: store not readable; keeping the last view", exc_info=e)
            return False
        self._stored = {r.block_id: r for r in rows}
        # Once the store has a local record, the local copy is no longer needed.
        shipped = [bid for bid in self._local if bid in self._stored]
        for bid in shipped:
            del self._local[bid]
        if shipped:
            await asyncio.to_thread(self._save)
        self._refold()
        self._polled_at = time.monotonic()
        return True

    def _read_store(self) -> list[BlockRecord]:
        assert self._open_store is not None
        with self._open_store() as store:
            rows = store.select(
                "SELECT ts_us, block_id, action, subject, actor, reason, label "
                f"FROM {store.database}.subject_blocks",
                settings={"max_execution_time": max(1, int(self._poll_seconds * 5))},
            )
        return [
            BlockRecord(
                int(r["ts_us"]),
                str(r["block_id"]),
                str(r["action"]),
                str(r["subject"]),
                str(r["actor"]),
                str(r["reason"]),
                str(r["label"]),
            )
            for r in rows
        ]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self.poll()
            except Exception:  # a bug must not stop the polling: the metric shows the age
                log.exception("subject blocks: poll failed")

    async def change(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        reason: str,
        request_id: str,
        label: str = "",
        also: Sequence[Note] = (),
        block_id: str | None = None,
    ) -> BlockRecord:
        """Record a block or unblock, with ``also`` (its permission change, 9.2.7) in the same
        write (SpoolUnavailable if they cannot be), then enforce it."""
        record = SubjectBlock(
            block_id=block_id or new_id(),
            ts_us=time.time_ns() // 1000,
            actor=actor,
            action=action,
            subject=subject,
            reason=reason,
            request_id=request_id,
            label=label,
        )
        # Durable before it is in force or answered.
        await self._recorder.note_all([record, *also])
        rec = BlockRecord(record.ts_us, record.block_id, action, subject, actor, reason, label)
        self._local[rec.block_id] = rec
        self._refold()
        await asyncio.to_thread(self._save)
        return rec

    def _save(self) -> None:
        data = [asdict(r) for r in self._local.values()]
        atomic_write(self._file, json.dumps(data).encode())

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.active()]
