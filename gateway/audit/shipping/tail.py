"""Reading the spool as it grows: complete records from a position on, following new segments,
with the directory listed only when it may have changed (decision 017)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.audit.segments import SUFFIX, decode_line, list_segments
from gateway.audit.shipping.state import Position

READ_CHUNK = 4 * 1024 * 1024


# A directory listing taken less than this after the directory's mtime is not trusted to be
# complete: the mtime has the granularity of the kernel's coarse clock (a few milliseconds).
RACY_LISTING_NS = 1_000_000_000


class Segments:
    """The spool's segment numbers as last listed, listed again only when the directory may have
    changed since: its mtime moved, or the last listing was taken too soon after a change to be
    trusted (a directory's mtime has the file system clock's granularity, so a segment created
    in the same tick as the listing leaves it unchanged). Sizes of segments that are complete
    (a newer one exists) are remembered, so progress is reported without a stat per batch."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.numbers: list[int] = []
        self._mtime_ns: int | None = None
        self._racy = True
        self._sizes: dict[int, int] = {}

    def refresh(self) -> None:
        mtime = os.stat(self.directory).st_mtime_ns  # before listing: a later change moves it
        self.numbers = [int(p.stem) for p in list_segments(self.directory)]
        self._mtime_ns = mtime
        self._racy = time.time_ns() - mtime < RACY_LISTING_NS
        known = set(self.numbers)
        self._sizes = {n: size for n, size in self._sizes.items() if n in known}

    def refresh_if_changed(self) -> None:
        """One stat of the directory; a listing only if it may have changed."""
        if self._racy or os.stat(self.directory).st_mtime_ns != self._mtime_ns:
            self.refresh()

    def newer(self, number: int) -> int | None:
        return next((n for n in self.numbers if n > number), None)

    def path(self, number: int) -> Path:
        return self.directory / f"{number:012d}{SUFFIX}"

    def set_size(self, number: int, size: int) -> None:
        self._sizes[number] = size

    def size(self, number: int) -> int:
        """The size of a complete segment (a stat the first time it is asked for)."""
        if number not in self._sizes:
            self._sizes[number] = size_now(self.path(number))
        return self._sizes[number]

    def delete(self, number: int) -> None:
        self.path(number).unlink(missing_ok=True)
        self.numbers.remove(number)
        self._sizes.pop(number, None)


class SpoolTail:
    """Complete records of the spool from a position on, following new segments as they appear.

    ``on_bad`` hears of a complete line that is not a JSON record (corruption). ``on_torn`` hears
    of a torn final line of a segment that a newer one follows: a write that was never
    acknowledged, skipped as decision 001 says (not an error).

    The directory is listed when the position's segment is not known, and at the end of the
    newest known segment only if the directory changed (``Segments``): not once per read."""

    def __init__(
        self,
        directory: Path,
        start: Position,
        on_bad: Callable[[str], None],
        on_torn: Callable[[str], None] = lambda where: None,
    ) -> None:
        self.directory = directory
        self.position = start
        self.segments = Segments(directory)
        self._on_bad = on_bad
        self._on_torn = on_torn

    def read(self, limit: int = 10_000) -> list[tuple[Position, dict[str, Any]]]:
        out: list[tuple[Position, dict[str, Any]]] = []
        segments = self.segments
        chunk = READ_CHUNK
        while len(out) < limit:
            seg, off = self.position
            if seg not in segments.numbers:
                segments.refresh()
                later = [n for n in segments.numbers if n >= seg]
                if not later:
                    return out
                if seg not in segments.numbers:  # deleted or never existed: the next that does
                    self.position = (later[0], 0)
                    continue
            path = segments.path(seg)
            try:
                with path.open("rb") as f:
                    f.seek(off)
                    data = f.read(chunk)
            except FileNotFoundError:  # deleted since it was listed
                segments.refresh()
                continue
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines(keepends=True):
                try:
                    out.append(((seg, off), decode_line(line)))
                except ValueError:
                    self._on_bad(f"{path}@{off}: not a valid record")
                off += len(line)
            self.position = (seg, off)
            if len(data) == chunk:
                # More of this segment to read. A line longer than the chunk: read more at once.
                chunk = chunk if end else chunk * 2
                continue
            chunk = READ_CHUNK
            newer = segments.newer(seg)
            if newer is None:
                segments.refresh_if_changed()
                newer = segments.newer(seg)
                if newer is None:
                    return out  # the live end: a partial line here may still be completed
                # The segment is complete now that a newer one exists, but it may have grown
                # between the read above and the listing: read it to its end again first.
                continue
            if end < len(data):
                self._on_torn(f"{path}@{off}")
            segments.set_size(seg, off + len(data) - end)
            self.position = (newer, 0)
        return out


def size_now(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
