"""IdP role changes fail closed (9.2.7): recorded before they are remembered, a baseline written
atomically off the event loop, and a baseline that cannot be read stops start-up."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from gateway.policy import role_changes
from gateway.policy.role_changes import STATE_FILE, RoleBaselineError, RoleTracker, load_baseline
from tests.conftest import Keys, config_dict, run_cli, write_config


def tracker(directory: Path, save_every: int = 100) -> RoleTracker:
    return RoleTracker(directory, save_every=save_every)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"alice": ["hr_officer"]', "not valid JSON"),  # torn by a crash mid-write
        (b"", "not valid JSON"),
        (b'["alice"]', "not an object"),
        (b'{"alice": "hr_officer"}', "not an object"),
        (b'{"alice": [1]}', "not an object"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_a_corrupt_baseline_is_an_error_naming_the_file_not_an_empty_baseline(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(RoleBaselineError) as raised:
        tracker(tmp_path)
    assert str(tmp_path / STATE_FILE) in str(raised.value)
    assert problem in str(raised.value)
    assert "alice" not in str(raised.value)  # names the file, never what it holds


def test_an_unreadable_baseline_is_an_error_and_a_missing_one_is_empty(tmp_path: Path) -> None:
    assert load_baseline(tmp_path / STATE_FILE) == {}
    (tmp_path / STATE_FILE).mkdir()
    with pytest.raises(RoleBaselineError, match=STATE_FILE):
        tracker(tmp_path)


def test_serve_refuses_to_start_on_a_corrupt_baseline_with_a_clear_message(
    tmp_path: Path, keys: Keys
) -> None:
    data = config_dict(tmp_path, "http://127.0.0.1:9")
    data["listen"] = {"proxy": {"port": 0}, "admin": {"port": 0}}
    path = write_config(tmp_path, data, keys)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / STATE_FILE).write_text('{"alice": ["hr_of')
    out = run_cli("serve", "--config", str(path))
    assert out.returncode == 2, out.stderr
    assert f"{spool / STATE_FILE}: the IdP role baseline (9.2.7) cannot be read" in out.stderr
    assert "Traceback" not in out.stderr


async def test_a_change_is_remembered_only_once_its_record_is_appended(tmp_path: Path) -> None:
    roles = tracker(tmp_path)
    recorded: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    async def record(before: tuple[str, ...], after: tuple[str, ...]) -> None:
        recorded.append((before, after))

    async def broken(before: tuple[str, ...], after: tuple[str, ...]) -> None:
        raise RuntimeError("the spool failed in a way nobody foresaw")

    assert await roles.track("alice", ("hr_officer",), record) is False
    assert recorded == []  # first sight: the baseline
    with pytest.raises(RuntimeError):
        await roles.track("alice", ("dpo", "hr_officer"), broken)
    assert roles.last("alice") == ("hr_officer",)  # not remembered: the next request retries
    assert await roles.track("alice", ("dpo", "hr_officer"), record) is True
    assert recorded == [(("hr_officer",), ("dpo", "hr_officer"))]
    assert roles.last("alice") == ("dpo", "hr_officer")
    assert await roles.track("alice", ("dpo", "hr_officer"), record) is False


async def test_the_baseline_is_saved_atomically_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: list[str] = []
    real = role_changes.atomic_write

    def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
        writers.append(threading.current_thread().name)
        real(path, data, durable=durable)

    monkeypatch.setattr(role_changes, "atomic_write", atomic_write)
    roles = tracker(tmp_path, save_every=2)

    async def record(before: tuple[str, ...], after: tuple[str, ...]) -> None:
        pass

    await roles.track("alice", ("hr_officer",), record)
    await roles.track("bob", ("dpo",), record)  # the second: a save in the background
    await roles.track("carol", ("dpo",), record)
    await roles.close()
    assert writers and threading.main_thread().name not in writers
    assert json.loads((tmp_path / STATE_FILE).read_text()) == {
        "alice": ["hr_officer"],
        "bob": ["dpo"],
        "carol": ["dpo"],
    }
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary left behind
