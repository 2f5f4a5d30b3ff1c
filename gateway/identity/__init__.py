"""Who is asking: bearer tokens (python-jose, JWKS), the OIDC client, browser sessions."""
