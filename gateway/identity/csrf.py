"""Cross-site request refusal for cookie-authenticated requests (decision 014).

Contract: ``cross_site_reason(method, headers, origin)`` returns None when a request may change
state, or a short machine reason for the trail. Only requests authenticated by the session
cookie are checked: a browser attaches the cookie to a cross-site request, it never attaches a
bearer token. The check is the one modern frameworks make: the `Origin` header when present
(exact match with the gateway's public origin), else `Sec-Fetch-Site` (`same-origin` only);
a state-changing request with neither is refused too (every browser that runs the staff apps
sends one of them). SECURITY: THREAT_MODEL.md, cross-site request forgery.
"""

from __future__ import annotations

from collections.abc import Mapping

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site_reason(method: str, headers: Mapping[str, str], origin: str) -> str | None:
    if method in SAFE_METHODS:
        return None
    sent = headers.get("Origin")
    if sent is not None:
        return None if sent == origin else "csrf_origin_mismatch"
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        return None if site == "same-origin" else "csrf_cross_site"
    return "csrf_no_origin"


def is_navigation(method: str, headers: Mapping[str, str]) -> bool:
    """A top-level browser navigation (may be redirected to the login page) rather than a
    fetch/XHR (gets 401). `Sec-Fetch-Mode` decides when present; otherwise an HTML `Accept`."""
    if method not in ("GET", "HEAD"):
        return False
    mode = headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate"
    return "text/html" in headers.get("Accept", "")


def websocket_origin_reason(headers: Mapping[str, str], origin: str) -> str | None:
    """A cookie-authenticated WebSocket upgrade is a GET that opens a two-way channel with the
    employee's authority: a cross-site page must not open one (cross-site WebSocket hijacking).
    Browsers always send `Origin` on an upgrade; it must be the gateway's."""
    sent = headers.get("Origin")
    if sent is None:
        return "csrf_no_origin"
    return None if sent == origin else "csrf_websocket_origin"
