"""Signed checkpoints of the audit chain (docs/decisions/012-hash-chain.md).

A bare hash chain does not stop whoever can write to the store: they can rewrite a row and
recompute every hash after it. So the gateway signs, at a regular interval and on shutdown, the
head of its chain — (instance, sequence number, head hash, time) — with an Ed25519 key that the
store's administrators do not hold. The signed checkpoint goes into the spool (and from there to
``chain_checkpoints``), into the metrics, and to the admin port's ``/checkpoint``, so the newest
head also lives outside the store. Verifying needs only the public key.

Keys: ``pd-gateway audit keygen`` writes a private key (PKCS#8 PEM, mode 0600) and its public key.
The key id is the first 16 hex digits of the SHA-256 of the raw public key, so a verifier given
several public keys (rotation) knows which one signed a checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.chain import ChainHead
from gateway.audit.segments import encode_record
from gateway.audit.spool import Spool
from gateway.core.errors import SpoolUnavailable

log = logging.getLogger(__name__)

DOMAIN = b"pd-gateway audit checkpoint v1\n"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def message(instance: str, seq: int, head: str, ts_us: int) -> bytes:
    return DOMAIN + json.dumps([instance, seq, head, ts_us], separators=(",", ":")).encode()


@dataclass(frozen=True)
class Checkpoint:
    instance: str
    seq: int
    head: str
    ts_us: int
    key_id: str
    signature: str  # base64

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "seq": self.seq,
            "head": self.head,
            "ts_us": self.ts_us,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> Checkpoint:
        return cls(
            str(m["instance"]),
            int(m["seq"]),
            str(m["head"]),
            int(m["ts_us"]),
            str(m["key_id"]),
            str(m["signature"]),
        )


class Signer:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.key_id = key_id(private.public_key())

    @classmethod
    def load(cls, path: Path) -> Signer:
        """ValueError naming the file if it is not an Ed25519 private key."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a readable Ed25519 private key (PEM)") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key)

    def sign(self, head: ChainHead, ts_us: int | None = None) -> Checkpoint:
        ts = time.time_ns() // 1000 if ts_us is None else ts_us
        sig = self._private.sign(message(head.instance, head.seq, head.hash, ts))
        return Checkpoint(
            head.instance, head.seq, head.hash, ts, self.key_id, base64.b64encode(sig).decode()
        )

    def sign_document(self, domain: bytes, data: bytes) -> str:
        """A detached signature (base64) of ``data`` under ``domain``: another kind of document
        than a checkpoint (an evidence pack, decision 028), so one can never pass for the other."""
        return base64.b64encode(self._private.sign(domain + data)).decode()


def check_document(
    keys: Mapping[str, Ed25519PublicKey], kid: str, domain: bytes, data: bytes, signature: str
) -> str | None:
    """None if the key ``kid`` among ``keys`` signed ``data`` under ``domain``."""
    key = keys.get(kid)
    if key is None:
        return f"signed by an unknown key {kid}"
    try:
        key.verify(base64.b64decode(signature), domain + data)
    except (InvalidSignature, ValueError):
        return "signature does not verify"
    return None


def load_public_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        data = path.read_bytes()
        try:
            key: Any = serialization.load_pem_public_key(data)
        except ValueError:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


def check_signature(cp: Checkpoint, keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """None if a known key signed ``cp``, else what is wrong."""
    key = keys.get(cp.key_id)
    if key is None:
        return f"signed by an unknown key {cp.key_id}"
    try:
        key.verify(base64.b64decode(cp.signature), message(cp.instance, cp.seq, cp.head, cp.ts_us))
    except (InvalidSignature, ValueError):
        return "signature does not verify"
    return None


def generate(private_path: Path, public_path: Path) -> str:
    """Write a new key pair; return its key id. Refuses to overwrite an existing private key."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(key.public_key())


class Checkpointer:
    """Signs the spool's chain head into the spool every ``interval`` seconds (when it moved),
    and once more at shutdown. ``latest`` is what the admin port and the metrics show."""

    def __init__(
        self,
        spool: Spool,
        signer: Signer,
        interval: float,
        on_checkpoint: Callable[[Checkpoint], None] = lambda cp: None,
    ) -> None:
        self._spool = spool
        self._signer = signer
        self._interval = interval
        self._on_checkpoint = on_checkpoint
        self.latest: Checkpoint | None = None

    async def checkpoint(self) -> Checkpoint | None:
        head = self._spool.head
        if self.latest is not None and self.latest.seq == head.seq:
            return self.latest
        cp = self._signer.sign(head)
        await self._spool.append(encode_record({"kind": "checkpoint", **cp.as_dict()}))
        self.latest = cp
        self._on_checkpoint(cp)
        return cp

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.checkpoint()
            except SpoolUnavailable as e:
                log.error("audit checkpoint could not be recorded", extra={"reason": e.reason})

    async def final(self) -> None:
        with contextlib.suppress(SpoolUnavailable):
            await self.checkpoint()
