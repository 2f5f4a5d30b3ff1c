"""The `console` section: the DPO's and investigators' pages in a browser (decision 025).
Absent: no console. It needs browser login (`oidc`) and an audit store to read."""

from __future__ import annotations

import re
import zoneinfo

from gateway.config.model import ConsoleConfig, OidcConfig, StoreConfig
from gateway.config.reader import Section, at_least
from gateway.config.vocabulary import GATEWAY_PATH_PREFIX

D = ConsoleConfig  # the defaults
# The login machinery's own pages under the prefix (gateway.web.browser): not the console's.
_TAKEN = ("login", "callback", "logout", "logged-out")
_PATH = re.compile(r"^/_pdgw/([a-z0-9][a-z0-9-]*/)+\Z")


def parse_console(
    top: Section, oidc: OidcConfig | None, store: StoreConfig | None
) -> ConsoleConfig | None:
    c = top.optional("console")
    if c is None:
        return None
    problems = c.problems
    path = c.get("path", str, D.path)
    if not _PATH.match(path):
        problems.add(
            c.key("path"),
            f"must be a path under {GATEWAY_PATH_PREFIX} of lower-case letters, digits and '-', "
            "ending with '/', like /_pdgw/console/",
        )
        path = D.path
    elif path[len(GATEWAY_PATH_PREFIX) :].split("/")[0] in _TAKEN:
        problems.add(c.key("path"), "is a page of the browser login; choose another")
    tz = c.get("timezone", str, D.timezone)
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.add(c.key("timezone"), f"unknown time zone {tz!r}")
        tz = D.timezone
    rows = c.get("page_rows", int, D.page_rows, at_least(10))
    if rows is not None and rows > 1000:
        problems.add(c.key("page_rows"), "must be at most 1000")
    if oidc is None:
        problems.add(c.path, "needs the oidc section: the console uses the gateway's login")
    if store is None:
        problems.add(c.path, "needs a store section: the console reads the audit trail there")
    cfg = ConsoleConfig(path=path, timezone=tz, page_rows=min(rows or D.page_rows, 1000))
    c.finish()
    return cfg
