"""The `anomalies` section: the detectors over the audit store (9.1.6, 9.1.9, 10.2) — windows,
working hours, change windows (9.2.7), thresholds per job function, usual readers of a special
category. Absent: no detectors run."""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import fields

from gateway.config.model import AnomaliesConfig, Thresholds
from gateway.config.reader import Section, at_least, non_negative, positive
from gateway.config.vocabulary import CATEGORIES

D = AnomaliesConfig  # the defaults


def parse_anomalies(top: Section) -> AnomaliesConfig | None:
    an = top.optional("anomalies")
    if an is None:
        return None
    problems = an.problems
    tz = an.get("timezone", str, D.timezone)
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.add(an.key("timezone"), f"unknown time zone {tz!r}")
        tz = D.timezone
    start, end, days = _hours(
        an.section("working_hours", required=False),
        D.work_start_minute,
        D.work_end_minute,
        D.work_days,
    )
    # 9.2.7: access-rights changes are expected inside agreed change windows only.
    c_start, c_end, c_days = _hours(
        an.section("change_windows", required=False),
        D.change_start_minute,
        D.change_end_minute,
        D.change_days,
    )
    th = an.section("thresholds", required=False)
    base = _thresholds(th.section("default", required=False), Thresholds())
    thresholds = {"default": base}
    for name in th.data:
        if name != "default":
            thresholds[str(name)] = _thresholds(th.section(str(name)), base)
    th.finish()
    ur = an.section("usual_readers", required=False)
    readers: dict[str, frozenset[str]] = {}
    for name in ur.data:
        if name not in CATEGORIES:
            problems.add(ur.key(str(name)), f"not a category: one of {', '.join(CATEGORIES)}")
        roles = ur.get(str(name), list, [])
        if any(not isinstance(r, str) or not re.match(r"^[\w.:-]+\Z", r) for r in roles):
            problems.add(ur.key(str(name)), "must be a list of job function names")
            roles = []
        readers[str(name)] = frozenset(roles)
    ur.finish()
    cfg = AnomaliesConfig(
        interval_seconds=an.get("interval_seconds", float, D.interval_seconds, positive),
        window_seconds=an.get("window_seconds", int, D.window_seconds, at_least(10)),
        delay_seconds=an.get("delay_seconds", int, D.delay_seconds, non_negative),
        catch_up_windows=an.get("catch_up_windows", int, D.catch_up_windows, at_least(1)),
        timezone=tz,
        work_days=days,
        work_start_minute=start,
        work_end_minute=end,
        change_days=c_days,
        change_start_minute=c_start,
        change_end_minute=c_end,
        thresholds=thresholds,
        usual_readers=readers,
    )
    an.finish()
    return cfg


def _hours(
    sec: Section, start_default: int, end_default: int, days_default: tuple[int, ...]
) -> tuple[int, int, tuple[int, ...]]:
    """`start`/`end` (HH:MM, local time) and `days` (ISO weekdays) of a weekly window."""
    start = _minute_of_day(sec, "start", f"{start_default // 60:02d}:{start_default % 60:02d}")
    end = _minute_of_day(sec, "end", f"{end_default // 60:02d}:{end_default % 60:02d}")
    if end <= start:
        sec.problems.add(sec.key("end"), "must be after start")
    days = sec.get("days", list, list(days_default))
    if any(not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= 7 for d in days):
        sec.problems.add(sec.key("days"), "must be ISO weekdays 1 (Monday) to 7 (Sunday)")
        days = list(days_default)
    sec.finish()
    return start, end, tuple(sorted(set(days)))


def _minute_of_day(sec: Section, key: str, default: str) -> int:
    value = sec.get(key, str, default)
    m = re.match(r"^([01]\d|2[0-4]):([0-5]\d)\Z", value)
    if m is None or int(m[1]) * 60 + int(m[2]) > 24 * 60:
        sec.problems.add(sec.key(key), "must be HH:MM")
        return 0
    return int(m[1]) * 60 + int(m[2])


def _thresholds(sec: Section, base: Thresholds) -> Thresholds:
    values = {
        f.name: sec.get(f.name, int, getattr(base, f.name), non_negative)
        for f in fields(Thresholds)
    }
    sec.finish()
    return Thresholds(**values)
