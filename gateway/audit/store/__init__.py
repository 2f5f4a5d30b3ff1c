"""The audit store: its interface, schema and migrations, and the two engines."""
