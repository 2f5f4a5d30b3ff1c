"""Tests of gateway.governance."""
