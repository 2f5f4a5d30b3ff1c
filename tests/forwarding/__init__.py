"""Tests of gateway.forwarding."""
