"""Fuzz target: what a browser can send about its session (decision 014). Run by tests/fuzz/run.py.

Whatever a client puts in its session or login cookie, opening it ends in a Session, a list of
logins, or ``SessionInvalid`` — never another exception, never a session under a key it was not
sealed with. Whatever `Cookie` header it sends, none of the gateway's cookies survives the
filter toward the upstream; whatever return path it asks for, an accepted one stays on the site.
"""

from __future__ import annotations

import sys
from urllib.parse import urljoin

import atheris

with atheris.instrument_imports():
    from gateway.identity.cookies import sets_cookie, without_cookies
    from gateway.identity.sessions import SessionCodec, SessionInvalid
    from gateway.web.login import safe_return_to

KEY = b"1yXy7p3Vj3b2v2sN7pN8eYk0Wm2wC9q2C6gO7h3b1ZQ="
CODEC = SessionCodec(
    KEY, idle_timeout=900, absolute_timeout=28800, login_timeout=600, clock=lambda: 1.8e9
)
NAMES = frozenset({"__Host-pdgw-session", "__Host-pdgw-login"})


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cookie = fdp.ConsumeUnicodeNoSurrogates(2048)
    for opener in (CODEC.open, CODEC.open_logins):
        try:
            opener(cookie)
        except SessionInvalid:
            pass
        else:
            raise AssertionError("a cookie not sealed with the key opened")
    header = fdp.ConsumeUnicodeNoSurrogates(512)
    kept = without_cookies(header, NAMES) or ""
    for part in kept.split(";"):
        name = part.split("=", 1)[0].strip()
        assert not sets_cookie([name + "=x"], NAMES), (header, kept)
    target = fdp.ConsumeUnicodeNoSurrogates(256)
    got = safe_return_to(target)
    if got is not None:
        assert urljoin("https://gw.example/a/b", got).startswith("https://gw.example/"), target


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
