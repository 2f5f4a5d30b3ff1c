"""Tests of the repository itself: layering, packaging, the test helpers."""
