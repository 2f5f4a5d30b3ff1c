"""The admin port's client for the commands that talk to a running gateway (`audit who-accessed`,
`subject block`, `session revoke`, …).

SECURITY: the bearer token comes from a file (``--token-file``) or the environment
(``PDGW_TOKEN``), never from a flag's value, so it never lands in shell history or in a process
list; it is sent to the admin URL only and never printed.

Every refusal is printed as the gateway worded it, with its status, code and request id (the id
that finds its record in the trail); an answer that is not the gateway's JSON (a request the
HTTP layer refused before the gateway read it) gets a readable sentence too, never a bare status.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TOKEN_ENV = "PDGW_TOKEN"
URL_ENV = "PDGW_ADMIN_URL"
DEFAULT_URL = "http://127.0.0.1:9470"


class ApiError(Exception):
    """A request the gateway refused or could not answer; the message is for the user."""


def connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gateway",
        default=os.environ.get(URL_ENV, DEFAULT_URL),
        help=f"the gateway's admin URL (env {URL_ENV}; default {DEFAULT_URL})",
    )
    p.add_argument(
        "--token-file",
        help=f"a file holding your bearer token (or set {TOKEN_ENV}; never pass a token itself)",
    )


def read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as e:
            raise ApiError(f"{args.token_file}: {e.strerror or e}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ApiError(f"no token: use --token-file FILE or set {TOKEN_ENV}")
    return token


def refusal(status: int, body: bytes) -> str:
    """The sentence for a refused request: the gateway's own words and request id, or what an
    answer without them means."""
    try:
        err = json.loads(body)
    except ValueError:
        err = None
    if isinstance(err, dict) and "error" in err:
        rid = err.get("request_id") or "-"
        message = err.get("message") or err["error"]
        return f"refused ({status} {err['error']}): {message} (request {rid})"
    if status in (400, 414, 431):
        return (
            f"refused ({status}) before the gateway read it: the request line or a header is "
            "too long or malformed (no record was made)"
        )
    return f"the gateway answered {status} without an explanation"


def _open(url: str, token: str, body: dict[str, Any] | None, timeout: float) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise ApiError(refusal(e.code, e.read())) from None
    except urllib.error.URLError as e:
        raise ApiError(f"cannot reach the gateway's admin port ({url}): {e.reason}") from None
    except OSError as e:  # a connection reset or a timeout while the answer comes
        raise ApiError(f"the gateway's admin port stopped answering: {e}") from None


def request(url: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON answer (a POST when ``body`` is given)."""
    with _open(url, token, body, 30) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def stream(url: str, token: str) -> Iterator[dict[str, Any]]:
    """The API's NDJSON lines, one at a time (the answer is never whole in memory)."""
    resp = _open(url, token, None, 120)
    with resp:
        try:
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        except (OSError, ValueError) as e:
            raise ApiError(f"the answer broke off: {e}") from None
