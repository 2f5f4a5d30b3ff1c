"""The heap once a process serves (decision 019).

CPython's default collector thresholds (700, 10, 10) collect the young generation every 700
allocations — a few requests — and each full collection walks every object the process holds
(policies, keys, chdb's Python side, aiohttp). Once start-up is done, what it made is moved into
the collector's permanent generation and the young generation is collected less often.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (20_000, 50, 100)


def settle_heap() -> None:
    """Once start-up is done: collect, move what survived into the collector's permanent
    generation (gc.freeze: never scanned again), and collect the young generation less often.
    Measured side by side (decision 019): ~11 % less CPU per request with the embedded store."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def resettle_heap() -> None:
    """After a policy is replaced: the old engine was frozen with the rest, and frozen cycles are
    never collected; unfreeze, collect it, freeze again (nothing to do before settle_heap)."""
    if gc.get_freeze_count():
        gc.unfreeze()
        settle_heap()
