"""The one atomic-write helper and the one file lock (gateway/core/fsutil.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.core import fsutil
from gateway.core.fsutil import LockHeld, atomic_write, exclusive_lock, lock_held, stage


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write(path, b"old")
    atomic_write(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_durable_write_fsyncs_the_file_and_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    atomic_write(tmp_path / "a", b"x")
    assert synced == ["file", "dir"]
    synced.clear()
    atomic_write(tmp_path / "b", b"x", durable=False)
    assert synced == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    atomic_write(path, b"old")

    def broken(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(fsutil.os, "fsync", broken)
    with pytest.raises(OSError):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_staged_file_is_checked_before_it_replaces_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    path.write_text("old\n")
    staged = stage(path, b"new\n")
    assert staged.tmp.parent == tmp_path and staged.tmp.read_bytes() == b"new\n"
    assert path.read_text() == "old\n"
    staged.commit()
    staged.discard()  # after commit: nothing left to remove
    assert path.read_text() == "new\n"
    rejected = stage(path, b"bad\n")
    rejected.discard()
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.csv"]


def test_the_lock_excludes_another_process_until_released(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    assert not lock_held(lock)  # no file yet: not held, and the probe creates none
    assert not lock.exists()
    fd = exclusive_lock(lock)
    probe = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from gateway.core.fsutil import lock_held;"
        "sys.exit(0 if lock_held(Path(sys.argv[1])) else 1)",
        str(lock),
    ]
    assert subprocess.run(probe).returncode == 0
    with pytest.raises(LockHeld):
        exclusive_lock(lock)  # a second open file description, even in this process
    os.close(fd)
    assert subprocess.run(probe).returncode == 1
    os.close(exclusive_lock(lock))
