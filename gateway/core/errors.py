"""A shallow error hierarchy: each error knows its HTTP status, a stable code and a public message.

Parsers raise builtins; the layer with context wraps them. The outermost handler turns a
``GatewayError`` into a response with the request id; a library's own message never reaches a
client (it may carry key material or internal paths).
"""

from __future__ import annotations


class GatewayError(Exception):
    status: int = 500
    code: str = "internal_error"
    public_message: str = "internal error"
    # The rest of the request cannot be read (a body cut short): answer, then close.
    close_connection: bool = False
    # Extra fields of the client's JSON body (e.g. a refused policy's problems): public too.
    public_details: dict[str, object] | None = None
    # A way on for a person reading the HTML page: (text, same-origin path, opens a new tab).
    public_link: tuple[str, str, bool] | None = None


class Refused(GatewayError):
    """A request refused with its HTTP status, a stable code and a public message; ``reason``
    goes to the trail and the metrics, never to the client."""

    def __init__(self, status: int, code: str, public_message: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.public_message = public_message
        self.reason = reason


class ConfigError(GatewayError):
    """The configuration is invalid. ``problems`` lists every problem as 'key.path: message'."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid configuration:\n  " + "\n  ".join(problems))


class AuthenticationError(GatewayError):
    """No valid bearer token. ``reason`` is for the audit trail, never for the client."""

    status = 401
    code = "unauthenticated"
    public_message = "a valid bearer token is required"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PolicyError(GatewayError):
    """The policy files cannot be loaded."""


class SpoolUnavailable(GatewayError):
    """The audit spool cannot record an event: no audit, no access (9.1.8)."""

    status = 503
    code = "audit_unavailable"
    public_message = "the audit log cannot record this request; try again later"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    public_message = "malformed request"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
