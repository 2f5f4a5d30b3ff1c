"""To the upstream and back: routing, header hygiene, method overrides, streaming."""
