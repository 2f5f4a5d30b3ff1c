"""The gateway's own cookies, kept out of upstreams' reach (decision 014).

Contract: ``without_cookies(header, names)`` is a `Cookie` header value with the named cookies
removed (None when nothing is left); ``sets_cookie(set_cookie, names)`` says whether an upstream's
`Set-Cookie` would set or clear one of them. Names compare exactly, as browsers do; a `__Host-`
or `__Secure-` prefix spelt in another case is treated as the same name, so an upstream cannot
shadow the gateway's cookie with a look-alike. SECURITY: THREAT_MODEL.md, browser sessions.
"""

from __future__ import annotations

from collections.abc import Iterable


def _norm(name: str) -> str:
    name = name.strip()
    for prefix in ("__host-", "__secure-"):
        if name.lower().startswith(prefix):
            return prefix + name[len(prefix) :]
    return name


def without_cookies(header: str, names: frozenset[str]) -> str | None:
    own = {_norm(n) for n in names}
    kept = [
        part.strip()
        for part in header.split(";")
        if part.strip() and _norm(part.split("=", 1)[0]) not in own
    ]
    return "; ".join(kept) if kept else None


def sets_cookie(values: Iterable[str], names: frozenset[str]) -> bool:
    own = {_norm(n) for n in names}
    return any(_norm(v.split(";", 1)[0].split("=", 1)[0]) in own for v in values)
