"""What the console's forms and links carry, read back: filters (those of `audit search`, the
time range entered in a chosen zone), keyset cursors, and the opaque token that stands for a
data subject in links (decision 025).

Contract:
- ``event_filters`` turns a page's query string into ``gateway.audit.query.Filters`` through the
  audit API's own parser (``query.parse_filters``): the same filters, checked the same way. Times
  are `datetime-local` values in the page's zone, or a named period (today, this week, 7 and 30
  days). ValueError names the field, never echoes the value.
- ``SubjectTokens``: a subject id is typed into a form and sent in a POST body; pages then refer
  to it by a token — the id encrypted and authenticated (Fernet) under a key of this process,
  good for ``TOKEN_SECONDS`` — so no subject id is ever in a URL, a browser's history or a
  referrer in clear (5.3). The token never reaches the trail (records name the route's template).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken

from gateway.audit import query
from gateway.governance.subject_hash import subject_problem
from gateway.web.console.render import UI

TOKEN_SECONDS = 8 * 3600
PERIODS = ("today", "week", "7d", "30d")
# The search form's fields, in its order (the filters of `audit search`).
EVENT_FIELDS = (
    "user",
    "role",
    "system",
    "category",
    "action",
    "decision",
    "status",
    "reason",
    "route",
    "request_id",
    "break_glass",
)
_CURSOR = re.compile(r"^(\d{1,20})~([0-9a-f]{1,64})\Z")


@dataclass(frozen=True)
class Range:
    since_us: int | None
    until_us: int | None
    period: str = ""


def time_range(params: Mapping[str, str], ui: UI, *, now_us: int, default: str = "") -> Range:
    """``since``/``until`` (datetime-local in ``ui.tz``) or ``period``; ``default``: a period
    used when neither is given."""
    period = params.get("period", "")
    if not period and not params.get("since") and not params.get("until"):
        period = default
    if period:
        if period not in PERIODS:
            raise ValueError("period: today, week, 7d or 30d")
        now = dt.datetime.fromtimestamp(now_us / 1e6, dt.UTC).astimezone(ui.tz)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        start = {
            "today": midnight,
            "week": midnight - dt.timedelta(days=now.isoweekday() - 1),
            "7d": now - dt.timedelta(days=7),
            "30d": now - dt.timedelta(days=30),
        }[period]
        return Range(int(start.timestamp() * 1_000_000), None, period)
    try:
        since = ui.from_input(params["since"]) if params.get("since") else None
    except ValueError:
        raise ValueError("since: a date and time, like 2026-12-01T09:00") from None
    try:
        until = ui.from_input(params["until"]) if params.get("until") else None
    except ValueError:
        raise ValueError("until: a date and time, like 2026-12-01T18:00") from None
    if since is not None and until is not None and until <= since:
        raise ValueError("until: must be after since")
    return Range(since, until)


def cursor(params: Mapping[str, str]) -> tuple[int, str] | None:
    value = params.get("after", "")
    if not value:
        return None
    m = _CURSOR.match(value)
    if m is None:
        raise ValueError("after: not a page of this table")
    return int(m.group(1)), m.group(2)


def next_cursor(page: query.Page) -> str | None:
    """The cursor of the next page, when the row limit cut this one."""
    if not page.truncated or page.after is None:
        return None
    return f"{page.after[0]}~{page.after[1]}"


@dataclass(frozen=True)
class EventForm:
    """A table of access events as asked: the filters, and what the form shows back."""

    filters: query.Filters
    values: dict[str, str] = field(default_factory=dict)
    range: Range = Range(None, None)


def event_filters(
    params: Mapping[str, str],
    ui: UI,
    *,
    now_us: int,
    subject: list[str] | None = None,
    fields: tuple[str, ...] = EVENT_FIELDS,
    default_period: str = "",
) -> EventForm:
    values = {k: params[k].strip() for k in fields if params.get(k, "").strip()}
    span = time_range(params, ui, now_us=now_us, default=default_period)
    asked: dict[str, str] = dict(values)
    if span.since_us is not None:
        asked["since"] = str(span.since_us)
    if span.until_us is not None:
        asked["until"] = str(span.until_us)
    filters, _ = query.parse_filters(asked, subject)
    return EventForm(filters, values, span)


class SubjectTokens:
    def __init__(self, key: bytes | None = None) -> None:
        self._fernet = Fernet(key or Fernet.generate_key())

    def issue(self, subject: str) -> str:
        return self._fernet.encrypt(subject.encode()).decode()

    def open(self, token: str) -> str:
        """The subject id; ValueError if the token is not this process's or has expired."""
        try:
            return self._fernet.decrypt(token.encode(), ttl=TOKEN_SECONDS).decode()
        except (InvalidToken, ValueError, UnicodeDecodeError):
            raise ValueError("token") from None


def subject_id(value: str | None) -> str:
    """A subject id as typed: trimmed (a form's stray spaces), then held to the audit API's rule
    (``subject_problem``: present, bounded, printable). ValueError names the rule."""
    text = (value or "").strip()
    problem = subject_problem(text)
    if problem is not None:
        raise ValueError(problem)
    return text
