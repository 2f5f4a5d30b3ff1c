"""The `subject_requests` and `evidence` sections: the register of data subjects' requests (6.3,
6.5, 6.6; decision 029) and evidence packs for inspections (9.1.9; decision 028). Both have
defaults; absent, the defaults apply.

``subject_requests.calendar_file`` is read here, so a wrong date is a problem of the config with
the file, the line and the key: a YAML mapping of ``days_off`` and ``working_days``, each a list
of ISO dates — the days of a Government decree moving days off that the `holidays` library does
not know yet."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path
from typing import Any

import yaml

from gateway.config.model import EvidenceConfig, SubjectRequestsConfig
from gateway.config.reader import Section, at_least, positive

D = SubjectRequestsConfig  # the defaults
E = EvidenceConfig


def _zone(sec: Section, default: str) -> str:
    tz = sec.get("timezone", str, default)
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        sec.problems.add(sec.key("timezone"), f"unknown time zone {tz!r}")
        return default
    return str(tz)


def parse_subject_requests(top: Section) -> SubjectRequestsConfig:
    sec = top.optional("subject_requests")
    if sec is None:
        return SubjectRequestsConfig()
    tz = _zone(sec, D.timezone)
    calendar = sec.file("calendar_file", sec.path_of("calendar_file", None))
    days_off: frozenset[dt.date] = frozenset()
    working: frozenset[dt.date] = frozenset()
    if calendar is not None and calendar.is_file():
        days_off, working = _calendar(sec, calendar)
    cfg = SubjectRequestsConfig(
        timezone=tz,
        calendar_file=calendar,
        calendar_days_off=days_off,
        calendar_working_days=working,
        due_soon_days=sec.get("due_soon_days", int, D.due_soon_days, at_least(0)),
        evaluate_seconds=sec.get("evaluate_seconds", float, D.evaluate_seconds, positive),
    )
    sec.finish()
    return cfg


def _calendar(sec: Section, path: Path) -> tuple[frozenset[dt.date], frozenset[dt.date]]:
    where = sec.key("calendar_file")
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        sec.problems.add(where, f"{path}{line}: not a readable YAML file")
        return frozenset(), frozenset()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        sec.problems.add(where, f"{path}: must be a mapping of days_off and working_days")
        return frozenset(), frozenset()
    out: dict[str, set[dt.date]] = {"days_off": set(), "working_days": set()}
    for key, value in data.items():
        if key not in out:
            sec.problems.add(where, f"{path}: {key}: unknown key (days_off, working_days)")
            continue
        for i, item in enumerate(value or []):
            day = item if isinstance(item, dt.date) else None
            if day is None and isinstance(item, str):
                try:
                    day = dt.date.fromisoformat(item)
                except ValueError:
                    day = None
            if day is None:
                sec.problems.add(where, f"{path}: {key}[{i}]: not a date (YYYY-MM-DD): {item!r}")
            else:
                out[key].add(day)
    both = out["days_off"] & out["working_days"]
    if both:
        days = ", ".join(sorted(d.isoformat() for d in both))
        sec.problems.add(where, f"{path}: both a day off and a working day: {days}")
    return frozenset(out["days_off"]), frozenset(out["working_days"])


def parse_evidence(top: Section) -> EvidenceConfig:
    sec = top.optional("evidence")
    if sec is None:
        return EvidenceConfig()
    cfg = EvidenceConfig(
        key_file=sec.file("key_file", sec.path_of("key_file", None)),
        timezone=_zone(sec, E.timezone),
        alert_rules_file=sec.file("alert_rules_file", sec.path_of("alert_rules_file", None)),
    )
    sec.finish()
    return cfg
