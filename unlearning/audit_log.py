"""Append-only, hash-chained audit log (JSON lines).

Each entry is ``{"seq", "time", "kind", "data", "prev", "hash"}`` where ``prev`` is the
SHA-256 of the previous entry and ``hash`` the SHA-256 of this entry's canonical JSON
without ``hash``. A sidecar ``audit.head`` holds the last (seq, hash), so deleting entries
from the end is caught as well. :meth:`AuditLog.verify` returns the first entry that was
edited, deleted, inserted or reordered.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from unlearning.errors import AuditLogError, AuditTamperError
from unlearning.store import atomic_write, sha256

GENESIS = "0" * 64


def _canonical(entry: dict) -> bytes:
    body = {k: entry[k] for k in ("seq", "time", "kind", "data", "prev")}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_bad: int | None = None  # 0-based line number of the first bad entry
    reason: str = ""

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad": self.first_bad,
            "reason": self.reason,
        }


class AuditLog:
    def __init__(self, path: str | Path, *, fsync: bool = True):
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_torn_tail()
        self._seq, self._last = self._read_tail()

    def _repair_torn_tail(self) -> None:
        """A crash during an append can leave a last line without its newline; that entry
        never completed (the head file was not advanced), so it is cut off."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)

    def _read_tail(self) -> tuple[int, str]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            last = fh.read().splitlines()[-1]
        try:
            entry = json.loads(last)
            return int(entry["seq"]) + 1, entry["hash"]
        except (ValueError, KeyError) as exc:
            raise AuditLogError(
                f"the last entry of {self.path} is unreadable ({exc}); run "
                "`vfl audit verify` to locate the damage"
            ) from None

    @property
    def position(self) -> int:
        """The seq the next entry will get (= number of entries)."""
        return self._seq

    def append(self, kind: str, **data) -> dict:
        entry = {
            "seq": self._seq,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kind": kind,
            "data": data,
            "prev": self._last,
        }
        entry["hash"] = sha256(_canonical(entry))
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        self._seq, self._last = self._seq + 1, entry["hash"]
        atomic_write(
            self.head_path, json.dumps({"seq": entry["seq"], "hash": entry["hash"]}),
            fsync=self.fsync,
        )
        return entry

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def verify(self) -> VerifyResult:
        if not self.path.exists():
            return VerifyResult(False, 0, 0, f"no audit log at {self.path}")
        prev, n = GENESIS, 0
        for i, line in enumerate(self.path.read_text().splitlines()):
            n = i + 1
            try:
                entry = json.loads(line)
                seq, stored, entry_prev = entry["seq"], entry["hash"], entry["prev"]
                recomputed = sha256(_canonical(entry))
            except (ValueError, KeyError, TypeError):
                return VerifyResult(False, n, i, f"entry {i} is not a well-formed log entry")
            if seq != i:
                return VerifyResult(
                    False, n, i, f"entry {i} carries seq {seq}: an entry was deleted, inserted "
                    "or reordered here"
                )
            if recomputed != stored:
                return VerifyResult(False, n, i, f"entry {i} was edited (its hash does not match)")
            if entry_prev != prev:
                return VerifyResult(
                    False, n, i, f"entry {i} does not chain to entry {i - 1} (missing or "
                    "reordered entry)"
                )
            prev = stored
        if self.head_path.exists():
            head = json.loads(self.head_path.read_text())
            if head["seq"] != n - 1 or head["hash"] != prev:
                return VerifyResult(
                    False, n, min(n, head["seq"] + 1) if head["seq"] >= n else n - 1,
                    f"the log ends at entry {n - 1} but the head records entry {head['seq']}: "
                    "entries were deleted from the end or the log was replaced",
                )
        elif n:
            return VerifyResult(False, n, n - 1, "the head file audit.head is missing")
        return VerifyResult(True, n)

    def require_valid(self) -> None:
        result = self.verify()
        if not result.ok:
            raise AuditTamperError(
                f"audit log {self.path} failed verification at entry {result.first_bad}: "
                f"{result.reason}. Do not continue; restore the log from a trusted copy."
            )
