"""Tests of gateway.core."""
