"""remembered(): a pure function of a value clients send, asked on every request, kept for the
few distinct values a gateway sees (host names, a `Connection` header's list).

A value longer than ``longest`` is worked out each time and never kept: one sent to fill the
memory costs its sender the work, and the cache stays ``maxsize`` entries of bounded size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

T = TypeVar("T")
A = TypeVarTuple("A")


def remembered(
    longest: int, maxsize: int = 1024
) -> Callable[[Callable[[str, *A], T]], Callable[[str, *A], T]]:
    """The decorated function's results for a first argument of at most ``longest`` characters
    (the other arguments positional and hashable) are kept, the least recently used ``maxsize``
    of them. A result is shared by every caller: the function must return immutable values."""

    def wrap(fn: Callable[[str, *A], T]) -> Callable[[str, *A], T]:
        kept = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(value: str, *args: *A) -> T:
            if len(value) <= longest:
                result: T = kept(value, *args)
                return result
            return fn(value, *args)

        return call

    return wrap
