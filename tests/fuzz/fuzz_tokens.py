"""Fuzz target: bearer token verification (THREAT_MODEL.md, decisions 009 and 010). Run by tests/fuzz/run.py.

Whatever the Authorization header holds, verification ends in AuthenticationError (whose reason
goes to the audit trail) — never another exception, which would surface as a 500 and, worse,
could mean a parser path nobody considered. The corpus starts from real signed tokens.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from gateway.config.model import IdentityConfig
    from gateway.core.errors import AuthenticationError
    from gateway.identity.tokens import KeySet, TokenVerifier, bearer_token

from tests.conftest import AUDIENCE, ISSUER, Keys, rsa_keypair

LOOP = asyncio.new_event_loop()
KEYS: Keys | None = None
VERIFIER: TokenVerifier | None = None


def setup(corpus: Path | None) -> None:
    global KEYS, VERIFIER
    pem, jwk = rsa_keypair()
    KEYS = Keys(pem, jwk, "")

    async def fetch() -> dict[str, object]:
        return KEYS.jwks() if KEYS else {}

    keys = KeySet(fetch, 3600, 3600, clock=LOOP.time)
    LOOP.run_until_complete(keys.refresh())
    cfg = IdentityConfig(ISSUER, AUDIENCE, ("RS256",), None, None, token_cache_size=1)
    VERIFIER = TokenVerifier(cfg, keys)
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        for i, roles in enumerate((["hr_officer"], ["dpo", "accountant"], [])):
            (corpus / f"seed-{i}").write_text("Bearer " + KEYS.token("alice", roles))


def one_input(data: bytes) -> None:
    assert VERIFIER is not None
    header = data.decode("utf-8", "replace")
    try:
        LOOP.run_until_complete(VERIFIER.verify(bearer_token(header)))
    except AuthenticationError:
        return
    # Accepted: only a token our key signed, i.e. one of the seeds, can get here.
    assert header.startswith("Bearer ") or header.lower().startswith("bearer "), header


if __name__ == "__main__":
    corpora = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    setup(corpora[0] if corpora else None)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
