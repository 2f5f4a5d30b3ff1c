"""Reading one YAML document while collecting every problem, each with its line and key path.

``Section`` reads one mapping; ``Problems`` collects what is wrong across the whole document, so
``gateway.config.load`` can report every problem at once. The checks below return a message or
None; a message names the key's rule, never its value where the value could be a secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

T = TypeVar("T")
Check = Callable[[Any], str | None]


class Problems:
    """Every problem of one document, as ``line N: key.path: message``."""

    def __init__(self, lines: Mapping[str, int], base: Path) -> None:
        self.items: list[str] = []
        self._lines = lines
        self.base = base  # relative paths are relative to the config file's directory

    def add(self, path: str, message: str) -> None:
        line = self._line_of(path)
        where = f"line {line}: " if line else ""
        self.items.append(f"{where}{path}: {message}")

    def _line_of(self, path: str) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path.rpartition(".")[0] if "." in path else ""
        return None


class Section:
    """Reads one mapping of the YAML document, recording problems under its key path."""

    def __init__(self, data: Any, path: str, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            problems.add(path or "(top level)", "must be a mapping")
            data = {}
        self.data: Mapping[str, Any] = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(
        self,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: Any = ...,
        check: Check | None = None,
    ) -> Any:
        """The value of ``name``; ``default`` ``...`` makes it required."""
        self.seen.add(name)
        if name not in self.data or self.data[name] is None:
            if default is ...:
                self.problems.add(self.key(name), "is required")
                return None
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.problems.add(self.key(name), f"must be {names}, got {type(value).__name__}")
            return None if default is ... else default
        if check is not None and (message := check(value)) is not None:
            self.problems.add(self.key(name), message)
            return None if default is ... else default
        return value

    def section(self, name: str, required: bool = True) -> Section:
        self.seen.add(name)
        if required and name not in self.data:
            self.problems.add(self.key(name), "is required")
        return Section(self.data.get(name), self.key(name), self.problems)

    def optional(self, name: str) -> Section | None:
        """The subsection ``name``, or None when the document has none (the feature is off)."""
        if name not in self.data:
            self.seen.add(name)
            return None
        return self.section(name)

    def resolve(self, value: str | None) -> Path | None:
        """A path from the document, absolute: relative ones are beside the config file."""
        return None if value is None else (self.problems.base / value).resolve()

    def path_of(self, name: str, default: Any = ...) -> Path | None:
        """``name``'s value as a path (``resolve``), required unless a default is given."""
        return self.resolve(self.get(name, str, default))

    def file(self, name: str, path: Path | None) -> Path | None:
        """A file the config refers to must exist now: `serve` would otherwise fail later (or
        never become ready) with an error that does not say which key named it."""
        if path is not None and not path.is_file():
            reason = "is a directory, not a file" if path.is_dir() else "file not found"
            self.problems.add(self.key(name), f"{reason}: {path}")
        return path

    def files(self, paths: Mapping[str, Path | None]) -> bool:
        """Check several referenced files, each under its own key; True when all given exist."""
        for name, path in paths.items():
            self.file(name, path)
        return all(p is None or p.is_file() for p in paths.values())

    def check_tls(self, name: str, build: Callable[[], object]) -> None:
        """Build the TLS context now, so a bad file is a config problem, not a failure at start."""
        try:
            build()
        except OSError as e:  # ssl.SSLError is an OSError too
            detail = e.strerror or getattr(e, "reason", None) or type(e).__name__
            self.problems.add(self.key(name), f"cannot use for TLS: {detail}")

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.problems.add(self.key(str(name)), "unknown key")


def line_index(
    node: yaml.Node, path: str = "", out: dict[str, int] | None = None
) -> dict[str, int]:
    """Map each key path ('routes.2.category') to its 1-based line in the YAML file."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{path}.{key_node.value}" if path else str(key_node.value)
            out[key] = key_node.start_mark.line + 1
            line_index(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{path}.{i}" if path else str(i)
            out[key] = item.start_mark.line + 1
            line_index(item, key, out)
    return out


# Checks: a message when the value breaks the rule, None when it keeps it.


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: int) -> str | None:
    return None if value >= 0 else "must be 0 or greater"


def at_least(n: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return None if value >= n else f"must be at least {n}"

    return check


def port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number 0-65535"


def one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "must not carry credentials"
    return None


_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}\Z")


def name(value: str) -> str | None:
    return None if _NAME.match(value) else "must be lower-case letters, digits, '_' or '-'"


def identifier(value: str) -> str | None:
    return (
        None if re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z", value) else "must be a plain identifier"
    )
