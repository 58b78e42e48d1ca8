"""Erasure certificates: JSON naming the request, rollback point, method, verification
figures and the audit-log position of the certificate entry; its own SHA-256 is logged.

A client removal (method ``approx``) adds ``guarantee`` (what approximate means) and
``calibration`` (FedEraser's settings and cost); its verification carries the comparison
with an exact retrain when one was requested."""

from __future__ import annotations

import json
from pathlib import Path

from unlearning.store import atomic_write, sha256

CERT_FORMAT = "vfl-erasure-certificate/1"


def build(request: dict, *, method: str, rollback: dict, models: dict, verification: dict,
          log_position: int, log_prev_hash: str, index_sha256: str, purged: int,
          seconds: float, **extra) -> dict:
    """``extra``: further top-level fields (e.g. ``guarantee``, ``calibration``)."""
    return extra | {
        "format": CERT_FORMAT,
        "request": request,
        "method": method,
        "rollback": rollback,
        "models": models,
        "verification": verification,
        "checkpoints": {"index_sha256": index_sha256, "purged_objects": purged},
        "log": {"position": log_position, "prev_hash": log_prev_hash},
        "seconds": seconds,
    }


def canonical(cert: dict) -> bytes:
    return json.dumps(cert, sort_keys=True, separators=(",", ":")).encode()


def write(path: Path, cert: dict, *, fsync: bool = True) -> str:
    atomic_write(path, json.dumps(cert, indent=1, sort_keys=True), fsync=fsync)
    return sha256(canonical(cert))


def check(cert: dict, log_entries: list[dict]) -> bool:
    """The certificate matches the log entry at its position (hash and request id)."""
    pos = cert["log"]["position"]
    if pos >= len(log_entries):
        return False
    entry = log_entries[pos]
    return (
        entry["kind"] == "erasure.certificate"
        and entry["data"].get("certificate_sha256") == sha256(canonical(cert))
    )
