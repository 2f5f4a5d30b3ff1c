"""Throw-away ClickHouse servers and clusters on loopback, for tests and benchmarks.

Not part of the installed package (pyproject excludes it from the wheel)."""
