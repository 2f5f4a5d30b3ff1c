"""Identifiers of requests and audit events: 128 random bits as 32 lower-case hex digits.

The same form `uuid.uuid4().hex` gave (a string column in the store, a header value), from the
operating system's CSPRNG. Nothing parses them as UUIDs; they only have to be unique and
unguessable. Several are made per request, and a `getrandom` call each cost ~5 µs under load
(py-spy, docs/benchmarks.md): the bytes are drawn 4 KiB at a time and handed out 16 at a time
(256 ids a call), under a lock (ids are also made off the event loop), and a forked child starts
a pool of its own (it must never repeat its parent's ids).
"""

from __future__ import annotations

import os
import threading

_POOL_BYTES = 4096
_ID_BYTES = 16
_lock = threading.Lock()
_pool = b""
_next = 0


def new_id() -> str:
    global _pool, _next
    with _lock:
        if _next >= len(_pool):
            _pool, _next = os.urandom(_POOL_BYTES), 0
        start = _next
        _next += _ID_BYTES
        return _pool[start:_next].hex()


def _forget_pool() -> None:
    global _pool, _next
    _pool, _next = b"", 0


os.register_at_fork(after_in_child=_forget_pool)
