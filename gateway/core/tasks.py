"""The one sanctioned way to start a background task: it keeps a reference until the task ends
(a bare asyncio.create_task result may be garbage-collected mid-flight)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    task = asyncio.create_task(coro, name=name)  # noqa: TID251 - this is the sanctioned wrapper
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
