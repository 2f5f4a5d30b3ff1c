"""The legal deadlines of data subjects' requests (6.3, 6.5, 6.6, 7.3; decision 029), by the
Russian production calendar.

- ``access`` (6.1.1, 6.3: what is processed about me) and ``withdraw-consent`` (7.x: stop and
  destroy on withdrawal): an answer within 30 calendar days of the day the request was received;
- ``block``, ``correct``, ``destroy`` (6.5, 6.6, 7.3): the data is blocked at once (the register
  blocks the subject when it opens such a request), then corrected or destroyed — or the block's
  verification concluded — within 7 working days of receipt.

A request received on day D is due at the end of D + 30 (calendar), or of the 7th working day after
D (D itself not counted: the day of receipt is not a full working day of handling). Working days are
Monday to Friday less the days off of the production calendar: public holidays, the days off the
Government moves by decree (a holiday that falls on a weekend, the New Year Saturdays and Sundays
moved to May or December 31), plus the Saturdays a decree makes working days (1 November 2025).
The `holidays` library keeps those decrees (its Russian calendar marks the moved days off and
``weekend_workdays``); a decree it does not know yet is given in ``subject_requests.calendar_file``
(``days_off``/``working_days``), which overrides the library day by day. tests/governance/
test_deadlines.py holds the official calendar of 2025 and 2026 and checks the library against it.

Everything here is pure: dates in, dates out. "Today" is the caller's (a fixed clock in tests).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import holidays

TYPES = ("access", "block", "correct", "destroy", "withdraw-consent")
BLOCKING = frozenset({"block", "correct", "destroy"})  # blocked at once (6.5, 6.6)
CALENDAR_DAYS = 30  # 6.3: an answer to a subject's request
WORKING_DAYS = 7  # 6.5, 6.6, 7.3: correction or destruction
# Outcomes a closing may state, per type (what was done; `refused` with its reason in the note).
OUTCOMES = {
    "access": ("answered", "refused"),
    "block": ("verified", "corrected", "destroyed", "refused"),
    "correct": ("corrected", "refused"),
    "destroy": ("destroyed", "refused"),
    "withdraw-consent": ("destroyed", "processing_stopped", "refused"),
}


@lru_cache(maxsize=64)
def _russia(year: int) -> holidays.HolidayBase:
    return holidays.country_holidays("RU", years=year)


class WorkCalendar:
    """Working days by the Russian production calendar, with local overrides (newest decrees)."""

    def __init__(
        self, days_off: Iterable[dt.date] = (), working_days: Iterable[dt.date] = ()
    ) -> None:
        self._off = frozenset(days_off)
        self._working = frozenset(working_days)

    def is_working_day(self, day: dt.date) -> bool:
        if day in self._working:
            return True
        if day in self._off:
            return False
        ru = _russia(day.year)
        if day in ru.weekend_workdays:  # a Saturday a decree made a working day
            return True
        return day.weekday() < 5 and day not in ru

    def add_working_days(self, day: dt.date, n: int) -> dt.date:
        """The ``n``-th working day after ``day`` (``day`` itself not counted)."""
        count = 0
        while count < n:
            day += dt.timedelta(days=1)
            if self.is_working_day(day):
                count += 1
        return day


def due_date(kind: str, received: dt.date, calendar: WorkCalendar) -> dt.date:
    """The last day on which a request of ``kind`` received on ``received`` is answered in time."""
    if kind not in TYPES:
        raise ValueError(f"type: one of {', '.join(TYPES)}")
    if kind in BLOCKING:
        return calendar.add_working_days(received, WORKING_DAYS)
    return received + dt.timedelta(days=CALENDAR_DAYS)


@dataclass(frozen=True)
class Standing:
    """Where a request stands against its deadline on a given day."""

    state: str  # open | overdue | met | missed
    days_left: int  # calendar days until the deadline (negative: past it); 0 when closed
    due_soon: bool  # open, not overdue, and within the warning days


def standing(
    due: dt.date, today: dt.date, closed_on: dt.date | None, *, soon_days: int
) -> Standing:
    """``closed_on``: the day (in the register's zone) the request was closed, or None if open."""
    if closed_on is not None:
        return Standing("met" if closed_on <= due else "missed", 0, False)
    left = (due - today).days
    if left < 0:
        return Standing("overdue", left, False)
    return Standing("open", left, left <= soon_days)
