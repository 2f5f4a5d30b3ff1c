"""Times on the command line: what `--since`/`--until` accept, and the zone times are shown in.

Contract:
- ``parse_when(text, tz, now)`` accepts an ISO 8601 time with a zone (``2026-12-03T09:00+03:00``,
  ``…Z``), one without (read in ``tz``), a date (its midnight in ``tz``) and a time before ``now``
  (``30m``, ``24h``, ``7d``, ``2w``). A bare number is refused with a message saying which units
  to use: seconds, ms and µs since the epoch look alike, and a wrong guess silently answers
  everything or nothing.
- ``zone(name)`` is ``--tz``: an IANA name, or the machine's zone when none is given (``TZ``, then
  ``/etc/localtime``); ``describe(tz)`` is how a header names it ("Europe/Moscow, UTC+03:00").
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
FORMS = (
    "an ISO 8601 time (2026-12-03T09:00+03:00), a date (2026-12-03) or a time ago (30m, 24h, 7d)"
)


class TimeError(ValueError):
    """A time or zone the command cannot use; the message says what to write instead."""


def zone(name: str | None) -> dt.tzinfo:
    """``--tz NAME``; the machine's zone without one."""
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise TimeError(
                f"--tz {name}: not a time zone (an IANA name such as Europe/Moscow, or UTC)"
            ) from None
    return local_zone()


def local_zone() -> dt.tzinfo:
    for name in (os.environ.get("TZ", "").lstrip(":"), _localtime_name()):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    local = dt.datetime.now().astimezone().tzinfo
    return local if local is not None else dt.UTC


def _localtime_name() -> str:
    try:
        target = str(Path("/etc/localtime").resolve())
    except OSError:
        return ""
    _, found, name = target.partition("/zoneinfo/")
    return name if found else ""


def describe(tz: dt.tzinfo, at: dt.datetime | None = None) -> str:
    """ "Europe/Moscow, UTC+03:00": the zone's name and its offset now (or at ``at``)."""
    when = (at or dt.datetime.now(dt.UTC)).astimezone(tz)
    offset = when.strftime("%z")
    name = getattr(tz, "key", None) or when.tzname() or "local"
    return f"{name}, UTC{offset[:3]}:{offset[3:]}"


def parse_when(text: str, tz: dt.tzinfo, now: dt.datetime) -> dt.datetime:
    """An aware datetime for ``text`` (see the module's contract); TimeError otherwise."""
    value = text.strip()
    if value.lstrip("-").isdigit():
        raise TimeError(
            f"{value}: a bare number has no unit: write {value}d, {value}h or {value}m for a time "
            f"that long ago, or {FORMS}"
        )
    relative = _RELATIVE.match(value)
    if relative:
        return now - dt.timedelta(seconds=int(relative[1]) * _UNITS[relative[2]])
    try:
        if _DATE.match(value):
            return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), tzinfo=tz)
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeError(f"{value}: not a time: write {FORMS}") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=tz)


def is_date(text: str) -> bool:
    """A day without a time (``2026-11-30``): as a period's end it means through that day."""
    return bool(_DATE.match(text.strip()))


def for_api(t: dt.datetime) -> str:
    """What the audit API is sent: ISO 8601 in UTC, to the microsecond."""
    return t.astimezone(dt.UTC).isoformat(timespec="microseconds")


def show(ts_us: int, tz: dt.tzinfo) -> str:
    """A trail time in a table (its zone is in the header)."""
    return dt.datetime.fromtimestamp(ts_us / 1e6, tz).strftime("%Y-%m-%d %H:%M:%S")
