"""Where the shipper is: its position in the spool and the batch it is sending, saved durably
twice a batch in a file of two checksummed slots (decisions 005 and 017), and the spool's id."""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.audit.segments import list_segments
from gateway.core.fsutil import atomic_write
from gateway.core.ids import new_id

Position = tuple[int, int]  # (segment number, byte offset of the record)


BEFORE_ALL: Position = (-1, -1)
STATE_FILE = "shipper.state"
LEGACY_STATE_FILE = "shipper-state.json"  # up to 0.x: JSON replaced by atomic_write per save
STATE_SLOT = 4096
STATE_MAGIC = b"pdgw-shipper-state/2"
ID_FILE = "spool.id"


@dataclass
class ShipperState:
    shipped_through: Position = BEFORE_ALL
    read_from: Position = (0, 0)
    intent: dict[str, Any] | None = None

    def encode(self) -> bytes:
        data = {
            "shipped_through": self.shipped_through,
            "read_from": self.read_from,
            "intent": self.intent,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, text: bytes) -> ShipperState:
        data = json.loads(text)
        through, start = data["shipped_through"], data["read_from"]
        return cls((through[0], through[1]), (start[0], start[1]), data.get("intent"))


class StateFile:
    """The shipper's state on disk, saved durably twice a batch (docs/decisions/005 and 017).

    Two fixed slots of one page each in one file of constant size; a save writes the slot that
    does not hold the newest state (with a counter and a CRC) in place and fdatasyncs it. A
    save cut short by a crash or power loss leaves a slot whose CRC fails, and the other slot —
    the state before — is read. So a save is atomic like a rename, and costs one data sync: no
    temporary file, no rename, no directory fsync (only when the file is first made)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self._legacy = directory / LEGACY_STATE_FILE
        self._fd = -1
        self._counter = 0

    def load(self, directory: Path) -> ShipperState:
        self.close()
        if self.path.exists():
            self._fd = os.open(self.path, os.O_RDWR)
            data = os.pread(self._fd, 2 * STATE_SLOT, 0)
            slots = [_parse_slot(data[i * STATE_SLOT : (i + 1) * STATE_SLOT]) for i in (0, 1)]
            valid = [slot for slot in slots if slot is not None]
            if not valid:
                raise ValueError(f"{self.path}: neither state slot is intact")
            self._counter, state = max(valid, key=lambda slot: slot[0])
            return state
        if self._legacy.exists():  # written by an earlier release (atomic_write of the JSON)
            return ShipperState.decode(self._legacy.read_bytes())
        first = list_segments(directory)
        return ShipperState(read_from=(int(first[0].stem), 0) if first else (0, 0))

    def save(self, state: ShipperState) -> None:
        self._counter += 1
        slot = _slot(self._counter, state)
        offset = (self._counter % 2) * STATE_SLOT
        if self._fd < 0:
            # The first save: make the file whole (the other slot blank) and durable, then
            # drop an earlier release's file, which the new one now supersedes.
            data = bytearray(b" " * (2 * STATE_SLOT))
            data[offset : offset + STATE_SLOT] = slot
            atomic_write(self.path, bytes(data))
            self._fd = os.open(self.path, os.O_RDWR)
            self._legacy.unlink(missing_ok=True)
            return
        if os.pwrite(self._fd, slot, offset) != STATE_SLOT:
            raise OSError(f"{self.path}: short write")
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _slot(counter: int, state: ShipperState) -> bytes:
    body = state.encode()
    line = b"%s %d %08x %s\n" % (STATE_MAGIC, counter, zlib.crc32(body), body)
    if len(line) > STATE_SLOT:
        raise ValueError("shipper state larger than its slot")
    return line.ljust(STATE_SLOT, b" ")


def _parse_slot(slot: bytes) -> tuple[int, ShipperState] | None:
    """(counter, state) of an intact slot; None for a blank or torn one."""
    parts = slot.split(b"\n", 1)[0].split(b" ", 3)
    if len(parts) != 4 or parts[0] != STATE_MAGIC or len(slot) != STATE_SLOT:
        return None
    try:
        counter, crc = int(parts[1]), int(parts[2], 16)
        if zlib.crc32(parts[3]) != crc:
            return None
        return counter, ShipperState.decode(parts[3])
    except ValueError:
        return None


def spool_id(directory: Path) -> str:
    """A stable id for this spool directory (part of every batch id)."""
    path = directory / ID_FILE
    if not path.exists():
        tmp = directory / (ID_FILE + ".tmp")
        tmp.write_text(new_id()[:16])
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # first writer wins
        tmp.unlink()
    return path.read_text().strip()
