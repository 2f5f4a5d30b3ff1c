"""The method an upstream acts on, whatever its framework takes it from (decision 011).

Frameworks let a request name another method than its own: headers (`X-HTTP-Method-Override`,
`X-HTTP-Method`, `X-Method-Override`: ASP.NET, Express method-override, Google APIs), `_method`
in the query (Symfony), in a form body (Rails/Rack, Laravel, Symfony, Spring) or in a JSON body
(Laravel). A POST authorised and recorded as `create` would then be a DELETE the job function may
not do (4.4, 9.1.8).

Contract: ``effective_method`` returns the method to authorise and record; a route declares in
`method_override` which carriers its upstream honours (`header`, `query`), and only those count.
Undeclared override headers are stripped by the forwarder; an undeclared `_method` in the query,
and any `_method` in a body, is refused: the raw target is forwarded byte for byte, and a body is
read only after the decision, so a body override can never be authorised (``body_names.BodyNames``
finds it as the body streams and the forwarder cuts the upstream request).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote

from gateway.config.model import Route
from gateway.config.vocabulary import param_key
from gateway.core.errors import BadRequest
from gateway.forwarding.routing import query_params

OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})
OVERRIDE_PARAM = "_method"


def effective_method(
    method: str, headers: Iterable[tuple[str, str]], query: str, route: Route
) -> str:
    """The method the upstream will act on: ``method``, or the override in a carrier the route
    declares, which is then what is authorised and recorded (9.1.8). ``query`` is the raw query.

    BadRequest("method_override") for `_method` in the query of a route that does not declare it;
    BadRequest("method_override_ambiguous") for several overrides, or one on another method than
    POST (frameworks differ there: some honour it, most ignore it)."""
    carriers = route.method_override
    if not query and "header" not in carriers:
        return method  # the usual request: no carrier of an override to read
    found: list[str] = []
    if "header" in carriers:
        found += [v.strip().upper() for n, v in headers if n.lower() in OVERRIDE_HEADERS]
    for p in query_params(query, strict="query" in carriers):
        # Read once and, for an upstream that decodes twice (`%255fmethod`), twice.
        if OVERRIDE_PARAM in (p.name, param_key(unquote(p.name))):
            if "query" not in carriers:
                raise BadRequest("method_override")
            found.append(p.value.strip().upper())
    if not found:
        return method
    if len(found) > 1 or method != "POST":
        raise BadRequest("method_override_ambiguous")
    return found[0]
