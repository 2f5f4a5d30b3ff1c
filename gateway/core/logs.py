"""JSON operational logs with the request id bound per request.

Operational logs never carry tokens, cookies or personal data (no user ids, no paths with subject
ids): the audit trail is a separate pipeline with its own access rules (9.2.6).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class ParserErrorRedaction(logging.Filter):
    """aiohttp logs a request its parser refused together with the exception, whose text quotes
    the offending request line or header: a path with a subject id, a bearer token. Keep only
    the kind of error (the client got its 400; nothing else is needed to operate the gateway)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.__dict__["error"] = type(record.exc_info[1]).__name__
            record.msg, record.args = "malformed request refused by the HTTP parser", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def redact_parser_errors() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ParserErrorRedaction) for f in server.filters):
        server.addFilter(ParserErrorRedaction())


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # ~25 % of a request's cost
    logging.getLogger("casbin").setLevel(logging.WARNING)  # it logs the whole policy at INFO
    redact_parser_errors()
