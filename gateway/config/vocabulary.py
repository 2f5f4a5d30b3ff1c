"""The domain's words: personal-data categories, actions, purposes of processing; and how the
names a configuration and a request share are read (subject id kinds, header names).

They come from the organisation's personal-data policy (docs/policy-clauses.md); routes, the
policy (`pd-gateway policy check`) and the audit trail use exactly these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# DIGEST 2.2-2.4: the personal-data categories the organisation processes; `none` marks a route
# that carries no personal data. Biometric data is not processed (2.4), so it has no category.
# `audit_log` is the audit trail itself (9.2.6): reading it is an access of its own, granted
# by the policy (gateway.web.audit_api), never a route's category.
CATEGORIES = ("employee", "employee_health", "counterparty", "site_visitor", "audit_log", "none")


ACTIONS = ("read", "create", "update", "delete", "export", "block")


# 3.2: the purposes of processing. Each route serves one; grants apply within a job function's
# purposes only (4.2: compatible purposes; 4.3: no merging across incompatible ones).
# `audit_control` (9.2.6): control of the lawfulness of processing, the only purpose for which
# the trail is read.
PURPOSES = {
    "hr_records": "3.2.1",
    "contracts": "3.2.2",
    "site_visitors": "3.2.3",
    "audit_control": "9.2.6",
}


# 9.2.6: where reading the audit trail sits in the policy (gateway.web.audit_api).
AUDIT_SYSTEM = "audit"
AUDIT_CATEGORY = "audit_log"
AUDIT_PURPOSE = "audit_control"


# How a route's upstream reads a subject id (`subject.id`, decision 034).
SUBJECT_ID_KINDS = ("auto", "integer", "text")

DEFAULT_ACTIONS: Mapping[str, str] = {
    "GET": "read",
    "HEAD": "read",
    "POST": "create",
    "PUT": "update",
    "PATCH": "update",
    "DELETE": "delete",
}


# The gateway's own paths (login callback, logout); no route may use this prefix.
GATEWAY_PATH_PREFIX = "/_pdgw/"


def header_key(name: str) -> str:
    """A header name as CGI-style servers read it: case does not count, and neither does which
    of `-`, `_`, `.`, `+`, … separates its words (CGI joins `X_PD_User` with `X-PD-User`;
    lighttpd turns every character but letters and digits into `_`). The one normalisation of
    header names: `proxy.strip_headers` and the forwarder's header hygiene (decision 011)."""
    key = name.lower()
    return _SEPARATOR.sub("-", key) if ODD_HEADER_NAME.search(key) else key


# A character header_key reads as `-`, other than `-` and case: searched in one name, or in a
# request's names joined (one search for the usual request, where no name has one).
ODD_HEADER_NAME = re.compile(r"[^A-Za-z0-9-]")
_SEPARATOR = re.compile(r"[^a-z0-9]")


def param_key(decoded_name: str) -> str:
    """A query or form parameter's name as the loosest framework would read it: PHP ends a name at
    a NUL byte (C strings), drops leading spaces, turns `.`, ` ` and an unmatched `[` into `_` and
    reads `a[]`/`a[x]` as `a`; Rack 2 and Express's `qs` drop outer brackets (`[a]` is `a`);
    some frameworks ignore case. Two names with one key are one parameter to some upstream. The
    one normalisation of parameter names: query subjects, input names (decision 039), overrides."""
    name = decoded_name.partition("\x00")[0].lstrip(" ").lstrip("[]")
    bracket = name.find("[")
    if bracket > 0 and "]" in name[bracket:]:
        name = name[:bracket]
    return name.rstrip("]").translate(_PHP_MANGLED).lower()  # Rack 2: `a]` is `a`


_PHP_MANGLED = str.maketrans({".": "_", " ": "_", "[": "_"})
