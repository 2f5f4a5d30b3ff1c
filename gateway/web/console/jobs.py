"""`audit verify` on demand, in the background, with progress (decision 012): the chain of every
instance recomputed from the store for a chosen period and checked against the signed
checkpoints, off the event loop, one verification at a time per process.

Contract: ``VerifyJobs.start(...)`` returns a job (or None while one runs); its ``state`` is read
by the page as it polls. A job's result is kept with the last ``KEPT`` jobs, in memory: a
verification is evidence only as the record of the console request that started and showed it,
and ``pd-gateway audit verify`` can be run again by anyone with the public key.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit.store.base import AuditStore, StoreError
from gateway.audit.verify import instances, verify_store
from gateway.core.ids import new_id
from gateway.core.tasks import spawn

KEPT = 10
log = logging.getLogger(__name__)


@dataclass
class VerifyJob:
    job_id: str
    started_by: str
    since_us: int | None
    until_us: int | None
    started_us: int
    state: str = "running"  # running | intact | problems | failed
    instances: list[str] = field(default_factory=list)
    done: int = 0  # instances finished
    current: str = ""
    fraction: float = 0.0
    records: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    finished_us: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def percent(self) -> int:
        return 100 if self.state != "running" else int(self.fraction * 100)

    def progress(self, instance: str, checked: int, last: int) -> None:
        """From the verifying thread, after each window of sequence numbers."""
        with self._lock:
            if instance != self.current and self.current:
                self.done += 1
            self.current = instance
            part = checked / last if last else 1.0
            total = max(1, len(self.instances))
            self.fraction = min(0.99, (self.done + min(1.0, part)) / total)


class VerifyJobs:
    def __init__(
        self,
        open_store: Callable[[], AbstractContextManager[AuditStore]] | None,
        public_keys: Callable[[], Mapping[str, Ed25519PublicKey]],
    ) -> None:
        self._open_store = open_store
        self._public_keys = public_keys
        self._jobs: dict[str, VerifyJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, job_id: str) -> VerifyJob | None:
        return self._jobs.get(job_id)

    def recent(self) -> list[VerifyJob]:
        return sorted(self._jobs.values(), key=lambda j: j.started_us, reverse=True)

    def running(self) -> VerifyJob | None:
        return next((j for j in self._jobs.values() if j.state == "running"), None)

    def start(
        self,
        *,
        started_by: str,
        since_us: int | None,
        until_us: int | None,
    ) -> VerifyJob | None:
        """Start a verification (None while one runs). Like the subject report, it checks the
        store against the signed checkpoints in the store; the live head, signed every
        checkpoint interval, is not compared (newer records are not forgeries)."""
        if self.running() is not None or self._open_store is None:
            return None
        job = VerifyJob(new_id(), started_by, since_us, until_us, time.time_ns() // 1000)
        self._jobs[job.job_id] = job
        for old in self.recent()[KEPT:]:
            del self._jobs[old.job_id]
        opener, keys = self._open_store, self._public_keys()

        def run() -> None:
            with opener() as store:
                job.instances = instances(store)
                report = verify_store(
                    store,
                    keys,
                    since_us=since_us,
                    until_us=until_us,
                    progress=job.progress,
                )
            job.records = sum(i.records for i in report.instances)
            job.problems = [str(p) for p in report.problems[:50]]
            job.problem_count = len(report.problems)
            job.state = "intact" if report.ok else "problems"

        async def background() -> None:
            try:
                await asyncio.to_thread(run)
            except StoreError:
                job.state = "failed"
            except Exception:
                log.exception("verification failed")
                job.state = "failed"
            finally:
                job.done = len(job.instances)
                job.finished_us = time.time_ns() // 1000

        task = spawn(background(), name=f"verify-{job.job_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
