"""Deadlines of data subjects' requests (6.3, 6.5, 6.6, 7.3) by the Russian production calendar:
the `holidays` library checked against the official calendars of 2025 and 2026, fixed dates
across the New Year and May holidays and a transferred working Saturday, the local override."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from gateway.config.load import load_config
from gateway.governance.deadlines import WorkCalendar, due_date, standing
from tests.conftest import Keys, config_dict, write_config

D = dt.date

# The official production calendars: the weekdays that are days off (public holidays, Art. 112 of
# the Labour Code, and the days off moved by the Government's decrees — No. 1335 of 4 Oct 2024 for
# 2025, of 24 Sep 2025 for 2026) and the weekend days that are working days. Written out by hand,
# not computed, so that a library release that gets a decree wrong fails here.
OFFICIAL_WEEKDAYS_OFF = {
    2025: [
        D(2025, 1, 1),
        D(2025, 1, 2),
        D(2025, 1, 3),
        D(2025, 1, 6),
        D(2025, 1, 7),
        D(2025, 1, 8),
        D(2025, 5, 1),
        D(2025, 5, 2),  # 2 May: moved from Saturday 4 January
        D(2025, 5, 8),  # moved from Sunday 23 February
        D(2025, 5, 9),
        D(2025, 6, 12),
        D(2025, 6, 13),  # 13 June: moved from Saturday 8 March
        D(2025, 11, 3),  # moved from Saturday 1 November (which became a working day)
        D(2025, 11, 4),
        D(2025, 12, 31),  # moved from Sunday 5 January
    ],
    2026: [
        D(2026, 1, 1),
        D(2026, 1, 2),
        D(2026, 1, 5),
        D(2026, 1, 6),
        D(2026, 1, 7),
        D(2026, 1, 8),
        D(2026, 1, 9),  # moved from Saturday 3 January
        D(2026, 2, 23),
        D(2026, 3, 9),  # 8 March is a Sunday: the next working day (Art. 112)
        D(2026, 5, 1),
        D(2026, 5, 11),  # 9 May is a Saturday: the next working day
        D(2026, 6, 12),
        D(2026, 11, 4),
        D(2026, 12, 31),  # moved from Sunday 4 January
    ],
}
OFFICIAL_WORKING_WEEKENDS = {2025: [D(2025, 11, 1)], 2026: []}


@pytest.mark.parametrize("year", [2025, 2026])
def test_the_library_calendar_is_the_official_production_calendar(year: int) -> None:
    cal = WorkCalendar()
    days = [D(year, 1, 1) + dt.timedelta(days=i) for i in range(366 if year % 4 == 0 else 365)]
    weekdays_off = [d for d in days if d.weekday() < 5 and not cal.is_working_day(d)]
    working_weekends = [d for d in days if d.weekday() >= 5 and cal.is_working_day(d)]
    assert weekdays_off == OFFICIAL_WEEKDAYS_OFF[year]
    assert working_weekends == OFFICIAL_WORKING_WEEKENDS[year]
    # 247 working days in 2025 and 2026 alike (the calendars' own totals).
    assert sum(1 for d in days if cal.is_working_day(d)) == 247


def test_correction_across_the_new_year_holidays_takes_the_working_days_after_them() -> None:
    cal = WorkCalendar()
    # Received Tuesday 30 Dec 2025: 31 Dec and 1-11 Jan are days off; the 7th working day after
    # is Tuesday 20 January 2026 (12, 13, 14, 15, 16, 19, 20).
    assert due_date("correct", D(2025, 12, 30), cal) == D(2026, 1, 20)
    # An answer (6.3) counts calendar days, holidays or not.
    assert due_date("access", D(2025, 12, 30), cal) == D(2026, 1, 29)


def test_destruction_across_the_may_holidays() -> None:
    cal = WorkCalendar()
    # Received Wednesday 29 April 2026: 30 Apr, 4-8 May, 12 May (1-3, 9-11 May are off) → 12 May.
    assert due_date("destroy", D(2026, 4, 29), cal) == D(2026, 5, 12)
    # 2025: received Wednesday 30 April; 1-4 and 8-11 May off → 5, 6, 7, 12, 13, 14, 15 May.
    assert due_date("destroy", D(2025, 4, 30), cal) == D(2025, 5, 15)


def test_a_transferred_working_saturday_counts_as_a_working_day() -> None:
    cal = WorkCalendar()
    # Received Thursday 30 Oct 2025: 31 Oct (Fri), 1 Nov (Saturday, a working day by decree),
    # then 3-4 Nov off: 5, 6, 7, 10, 11 → the 7th is Tuesday 11 November.
    assert cal.is_working_day(D(2025, 11, 1)) and not cal.is_working_day(D(2025, 11, 3))
    assert due_date("block", D(2025, 10, 30), cal) == D(2025, 11, 11)


def test_a_local_override_adds_a_decree_the_library_does_not_know() -> None:
    # A hypothetical decree for 2027 moving a day off to Friday 7 May and working Saturday 15 May.
    plain = WorkCalendar()
    local = WorkCalendar(days_off=[D(2027, 5, 7)], working_days=[D(2027, 5, 15)])
    assert plain.is_working_day(D(2027, 5, 7)) and not local.is_working_day(D(2027, 5, 7))
    assert not plain.is_working_day(D(2027, 5, 15)) and local.is_working_day(D(2027, 5, 15))
    # Received Wednesday 12 May 2027: the working Saturday brings the 7th working day forward.
    assert due_date("destroy", D(2027, 5, 12), plain) == D(2027, 5, 21)
    assert due_date("destroy", D(2027, 5, 12), local) == D(2027, 5, 20)


def test_the_override_file_is_read_from_the_config_and_bad_dates_name_file_and_key(
    tmp_path: Path, keys: Keys
) -> None:
    cal = tmp_path / "calendar.yaml"
    cal.write_text(yaml.safe_dump({"days_off": ["2027-05-07"], "working_days": ["2027-05-15"]}))
    data = config_dict(tmp_path, "http://127.0.0.1:1", subject_requests={"calendar_file": str(cal)})
    cfg = load_config(write_config(tmp_path, data, keys))
    assert cfg.subject_requests.calendar_days_off == {D(2027, 5, 7)}
    assert cfg.subject_requests.calendar_working_days == {D(2027, 5, 15)}
    cal.write_text("days_off: [2027-05-07, 'the seventh']\n")
    with pytest.raises(Exception) as e:
        load_config(write_config(tmp_path, data, keys))
    assert "subject_requests.calendar_file" in str(e.value) and "days_off[1]" in str(e.value)
    assert str(cal) in str(e.value)


def test_standing_open_due_soon_overdue_met_missed() -> None:
    due = D(2026, 5, 12)
    assert standing(due, D(2026, 5, 5), None, soon_days=2).state == "open"
    assert not standing(due, D(2026, 5, 5), None, soon_days=2).due_soon
    assert standing(due, D(2026, 5, 10), None, soon_days=2).due_soon
    assert standing(due, D(2026, 5, 12), None, soon_days=2).due_soon  # the last day
    late = standing(due, D(2026, 5, 13), None, soon_days=2)
    assert (late.state, late.days_left, late.due_soon) == ("overdue", -1, False)
    assert standing(due, D(2026, 6, 1), D(2026, 5, 12), soon_days=2).state == "met"
    assert standing(due, D(2026, 6, 1), D(2026, 5, 13), soon_days=2).state == "missed"
