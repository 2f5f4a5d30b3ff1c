"""Tests of deploy/, dashboards/ and the alert rules, checked with the real tools."""
