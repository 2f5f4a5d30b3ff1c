"""pd-gateway: access control and audit log in front of systems that hold personal data."""

__version__ = "0.1.0"
