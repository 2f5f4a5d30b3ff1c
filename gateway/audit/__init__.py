"""The audit trail: event, spool, shipper and the stores (docs/architecture.md)."""
