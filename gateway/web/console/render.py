"""The console's pages as HTML: Jinja2 templates (package data), the Russian and English UI, times
in a chosen zone, and the headers every console response carries (decision 025).

Contract:
- ``Renderer.page(request, ui, name, status=200, **context)`` renders ``templates/<name>`` with
  every value escaped (autoescape, undefined names are errors) and returns a response with
  ``SECURITY_HEADERS``: no inline script or style can run (``Content-Security-Policy``), nothing is
  cached (``no-store``), no referrer leaves for another origin, and it cannot be framed.
- ``UI`` is one request's language and time zone: ``_`` translates a message (English text is
  the key; ``catalogs/<lang>.json`` the translations, a test checks every message of every
  template has one), ``when`` formats µs since the epoch in the zone. The language is the
  ``lang`` parameter (a switch on every page, then a cookie), else the browser's
  ``Accept-Language``, else English; the zone is the ``tz`` parameter, else the configured one.
"""

from __future__ import annotations

import datetime as dt
import json
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import jinja2
from aiohttp import web

from gateway.web.trail import Caller

CALLER = web.RequestKey("pdgw_console_caller", Caller)
LANGUAGES = ("en", "ru")
LANG_COOKIE = "pdgw-console-lang"
# Zones offered in the forms; the configured one is added if it is not among them.
ZONES = ("UTC", "Europe/Moscow", "Europe/Kaliningrad", "Asia/Yekaterinburg", "Asia/Novosibirsk")


def security_headers(form_targets: str = "") -> dict[str, str]:
    """``form_targets``: origins a form may lead to besides this one (the logout form ends at
    the OpenID provider's sign-out page)."""
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'; form-action 'self'{' ' + form_targets if form_targets else ''}; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        # Never to another origin (a page's address holds a subject's token); and not
        # `no-referrer`, with which browsers send `Origin: null` on the console's own forms.
        "Referrer-Policy": "same-origin",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


@cache
def catalog(lang: str) -> Mapping[str, str]:
    """English message → its translation (empty for English)."""
    if lang == "en":
        return {}
    text = files("gateway.web.console").joinpath("catalogs", f"{lang}.json").read_text("utf-8")
    data: dict[str, str] = json.loads(text)
    return data


def pick_language(request: web.Request) -> str:
    asked = request.query.get("lang")
    if asked in LANGUAGES:
        return asked
    kept = request.cookies.get(LANG_COOKIE)
    if kept in LANGUAGES:
        return kept
    for part in request.headers.get("Accept-Language", "").split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGUAGES:
            return tag
    return "en"


def zone(name: str | None, default: str) -> zoneinfo.ZoneInfo:
    """The zone ``name`` (a form's `tz`), or ``default``; ValueError for an unknown zone."""
    try:
        return zoneinfo.ZoneInfo(name or default)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError("tz: an IANA time zone such as Europe/Moscow or UTC") from None


@dataclass(frozen=True)
class UI:
    lang: str
    tz: zoneinfo.ZoneInfo

    def _(self, message: str, **values: Any) -> str:
        text = catalog(self.lang).get(message, message)
        return text.format(**values) if values else text

    def when(self, us: int | str | None, *, seconds: bool = True) -> str:
        if not us:
            return "—"
        t = dt.datetime.fromtimestamp(int(us) / 1e6, dt.UTC).astimezone(self.tz)
        return t.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")

    def local_input(self, us: int | None) -> str:
        """µs → the value of a `datetime-local` input, in this zone."""
        if us is None:
            return ""
        t = dt.datetime.fromtimestamp(us / 1e6, dt.UTC).astimezone(self.tz)
        return t.strftime("%Y-%m-%dT%H:%M:%S")

    def from_input(self, value: str) -> int:
        """A `datetime-local` value (or a date) in this zone → µs; ValueError if malformed."""
        t = dt.datetime.fromisoformat(value)
        if t.tzinfo is None:
            t = t.replace(tzinfo=self.tz)
        return int(t.timestamp() * 1_000_000)


class Renderer:
    def __init__(self, *, base: str, default_zone: str, form_targets: str = "") -> None:
        """``base``: the console's path (e.g. /_pdgw/console/), for links."""
        self.base = base
        self.default_zone = default_zone
        self.zones = ZONES if default_zone in ZONES else (default_zone, *ZONES)
        self.headers = security_headers(form_targets)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.web.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["tojson_attr"] = lambda v: json.dumps(v, separators=(",", ":"))

    def ui(self, request: web.Request) -> UI:
        """The request's language and zone (an unknown zone falls back to the default here;
        forms that take a zone check it themselves)."""
        try:
            tz = zone(request.query.get("tz"), self.default_zone)
        except ValueError:
            tz = zoneinfo.ZoneInfo(self.default_zone)
        return UI(pick_language(request), tz)

    def page(
        self, request: web.Request, ui: UI, name: str, *, status: int = 200, **context: Any
    ) -> web.Response:
        other = {
            lang: request.rel_url.update_query(lang=lang).path_qs
            for lang in LANGUAGES
            if request.method == "GET"
        }
        html = self.env.get_template(name).render(
            _=ui._,
            ui=ui,
            base=self.base,
            zones=self.zones,
            request_path=request.path,
            caller=request.get(CALLER),
            lang_links=other,
            **{"show_nav": True, **context},
        )
        resp = web.Response(status=status, text=html, content_type="text/html", charset="utf-8")
        self.decorate(request, resp)
        return resp

    def decorate(self, request: web.Request, resp: web.StreamResponse) -> None:
        """The console's headers on any response; keeps a language chosen with ``lang``."""
        resp.headers.update(self.headers)
        asked = request.query.get("lang")
        if asked in LANGUAGES and request.cookies.get(LANG_COOKIE) != asked:
            resp.set_cookie(
                LANG_COOKIE,
                asked,
                path=self.base,
                httponly=True,
                samesite="Lax",
                secure=request.secure,
                max_age=365 * 86400,
            )
