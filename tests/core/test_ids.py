"""Request and event ids (gateway.core.ids): unique, unguessable hex, never repeated by a forked
child (the bytes are drawn from the OS in pools, so a copied pool would repeat ids)."""

from __future__ import annotations

import os
import re

from gateway.core.ids import new_id


def test_ids_are_32_hex_digits_and_unique_across_many_pools() -> None:
    ids = [new_id() for _ in range(20_000)]  # ~80 pools of 256
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_never_repeats_its_parents_next_ids() -> None:
    new_id()  # the parent holds a pool that is mostly unused
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, "".join(new_id() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 8 * 32).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(new_id() for _ in range(8))
    assert len(child) == 8 * 32 and child != parent
