"""Tests of gateway.policy."""
