"""TLS contexts for the listeners (server side) and for upstreams and the JWKS URL (client side).

Both sides require TLS 1.2 or newer and verify certificates: there is no setting that turns
verification off. A listener with ``client_ca_file`` requires a client certificate signed by that
CA (mutual TLS); an upstream with ``client_cert_file``/``client_key_file`` presents one.
Errors are raised as ``ssl.SSLError`` or ``OSError``; config validation reports them by key.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(
    cert_file: Path, key_file: Path, client_ca_file: Path | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        ctx.load_verify_locations(cafile=client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """Verifies the server against ``ca_file`` (or the system's CAs) and its host name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx
