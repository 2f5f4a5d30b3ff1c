"""The `audit` section: the spool, its durability and limits, the chain's checkpoint key, subject
hashing (5.3) and how often blocks are re-read (6.5)."""

from __future__ import annotations

from pathlib import Path

from gateway.config.model import AuditConfig
from gateway.config.reader import Section, at_least, one_of, positive

D = AuditConfig  # the defaults


def parse_audit(top: Section) -> AuditConfig:
    au = top.section("audit")
    audit = AuditConfig(
        spool_dir=au.path_of("spool_dir") or Path(),
        durability=au.get("durability", str, D.durability, one_of(("fsync", "batch"))),
        batch_interval_ms=au.get("batch_interval_ms", float, D.batch_interval_ms, positive),
        segment_max_bytes=au.get("segment_max_bytes", int, D.segment_max_bytes, at_least(4096)),
        max_pending=au.get("max_pending", int, D.max_pending, positive),
        max_spool_bytes=au.get("max_spool_bytes", int, D.max_spool_bytes, at_least(64 * 1024)),
        on_spool_full=au.get("on_spool_full", str, D.on_spool_full, one_of(("refuse", "alert"))),
        checkpoint_key_file=au.path_of("checkpoint_key_file") or Path(),
        checkpoint_interval_seconds=au.get(
            "checkpoint_interval_seconds", float, D.checkpoint_interval_seconds, positive
        ),
        anonymous_window_seconds=au.get(
            "anonymous_window_seconds", float, D.anonymous_window_seconds, positive
        ),
        anonymous_max_keys=au.get("anonymous_max_keys", int, D.anonymous_max_keys, positive),
        blocks_poll_seconds=au.get("blocks_poll_seconds", float, D.blocks_poll_seconds, positive),
        subject_key_file=au.path_of("subject_key_file", None),
        subject_previous_key_files=tuple(
            p
            for p in (au.resolve(str(v)) for v in au.get("subject_previous_key_files", list, []))
            if p is not None
        ),
    )
    if audit.checkpoint_key_file != Path() and au.files(
        {"checkpoint_key_file": audit.checkpoint_key_file}
    ):
        _check_signing_key(au, audit.checkpoint_key_file)
    for i, key_file in enumerate(
        [audit.subject_key_file, *audit.subject_previous_key_files]
    ):  # 5.3: a key too short to be secret is refused, not used
        if key_file is None:
            continue
        name = "subject_key_file" if i == 0 else f"subject_previous_key_files[{i - 1}]"
        try:
            if len(key_file.read_bytes().strip()) < 32:
                au.problems.add(au.key(name), "the key must hold at least 32 bytes")
        except OSError:
            au.problems.add(au.key(name), f"cannot read {key_file}")
    au.finish()
    return audit


def _check_signing_key(sec: Section, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        sec.problems.add(
            sec.key("checkpoint_key_file"),
            f"{path} is not a readable Ed25519 private key (make one: pd-gateway audit keygen)",
        )
