"""Refusals of requests that came with no valid token, counted instead of recorded one by one
(docs/decisions/013-anonymous-refusals.md).

Anyone can send requests without a token; one record each would let an anonymous flood fill the
spool and, with `on_spool_full: refuse`, stop the organisation's own staff. So they are counted
per window (``window_seconds``) and per (route, reason, status, client address), and each window
ends as one ``refusal_summary`` record per key: how many, first and last time, and a few request
ids. At most ``max_keys`` keys per window; past that, further addresses are counted under
``client_ip = "*"``. A refusal *with* a valid token is never aggregated: it is an event of its own,
attributed to the employee.

What is lost: a crash loses the counts of the current window (no personal data was disclosed by
those requests; the connection-level metrics and alerts still saw them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.audit.events import RefusalSummary
from gateway.core.errors import SpoolUnavailable

log = logging.getLogger(__name__)

SAMPLES = 5
OVERFLOW = "*"

Key = tuple[str, str, int, str]  # route, reason, status, client address


@dataclass
class _Count:
    count: int
    first_us: int
    last_us: int
    samples: list[str] = field(default_factory=list)


class AnonymousRefusals:
    def __init__(
        self,
        append: Callable[[RefusalSummary], Awaitable[None]],
        *,
        window_seconds: float = 60.0,
        max_keys: int = 1000,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self._append = append
        self._window = window_seconds
        self._max_keys = max_keys
        self._clock = clock
        self._counts: dict[Key, _Count] = {}
        self._start_us = clock()

    def count(self, route: str, reason: str, status: int, client_ip: str, request_id: str) -> None:
        now = self._clock()
        key = (route, reason, status, client_ip)
        c = self._counts.get(key)
        if c is None:
            if len(self._counts) >= self._max_keys:
                key = (route, reason, status, OVERFLOW)
                c = self._counts.get(key)
            if c is None:
                c = self._counts[key] = _Count(0, now, now)
        c.count += 1
        c.last_us = now
        if len(c.samples) < SAMPLES:
            c.samples.append(request_id)

    @property
    def pending(self) -> int:
        return sum(c.count for c in self._counts.values())

    async def flush(self) -> int:
        """Record the current window's summaries; return how many records were written. If the
        spool refuses, the counts are kept and added to the next window."""
        if not self._counts:
            self._start_us = self._clock()
            return 0
        counts, self._counts = self._counts, {}
        start, end = self._start_us, self._clock()
        records = [
            RefusalSummary(
                window_start_us=start,
                window_end_us=end,
                route=route,
                reason=reason,
                status=status,
                client_ip=ip,
                count=c.count,
                first_ts_us=c.first_us,
                last_ts_us=c.last_us,
                sample_request_ids=c.samples,
            )
            for (route, reason, status, ip), c in sorted(counts.items())
        ]
        try:
            # One loop iteration: the spool writes them in one write(2), all or (but for a write
            # cut short by a full disk, whose whole records keep their numbers) none.
            await asyncio.gather(*(self._append(r) for r in records))
        except SpoolUnavailable as e:
            log.error("refusal summaries could not be recorded yet", extra={"reason": e.reason})
            for key, c in counts.items():  # try again with the next window
                mine = self._counts.setdefault(key, _Count(0, c.first_us, c.last_us))
                mine.count += c.count
                mine.first_us = min(mine.first_us, c.first_us)
                mine.samples = (c.samples + mine.samples)[:SAMPLES]
            return 0
        self._start_us = end
        return len(records)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._window)
            try:
                await self.flush()
            except Exception:  # a bug: keep counting, say so
                log.exception("refusal summaries failed")
