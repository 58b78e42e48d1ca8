"""Append-only, hash-chained and signed audit log (JSON lines).

Each entry is ``{"seq", "time", "kind", "data", "prev", "by", "hash", "sig"}``: ``prev`` is
the SHA-256 of the previous entry, ``hash`` the SHA-256 of this entry's canonical JSON
(``seq, time, kind, data, prev`` and ``by``; entries of older logs have no ``by`` and hash
as before), ``by`` the parties that acted and ``sig`` their Ed25519 signatures of ``hash``
(:mod:`unlearning.keys`: ``RUN_DIR/keys/NAME.pub``, private keys under ``keys/private``).
Writes, in order: the line, the sidecar ``audit.head`` (the last seq and hash), then a
*head record* ``RUN_DIR/heads/NAME.json`` per signer: the latest entry that party has seen,
signed by it. A party's first signature is preceded by a ``key.registered`` entry carrying
its public key (signed by the coordinator and the new key), so the log pins every key.

:meth:`AuditLog.verify` never writes. It checks, and names the first fault it finds:

1. the chain (as before): every entry well formed, in sequence, hashing to its ``hash`` and
   chaining to its predecessor; the end of the log against ``audit.head`` (entries deleted
   from the end, an entry appended after the head was written, a torn last line);
2. the signatures: every entry after the first signed one is signed, by registered keys that
   equal the verifier's public keys (``keys/*.pub`` or ``trusted_keys``), each signature
   matches, and a data deletion is signed by every party that deleted;
3. the head records: each is signed by its party, names an entry that is in the log with
   that hash, and is not older than the last entry the party signed.

What this protects against. Someone who edits, deletes, inserts or reorders entries and
does not recompute the chain fails step 1 (as before). An insider who edits an entry and
recomputes every hash after it fails step 2 unless they hold the private key of every
party that signed the edited entry and every later one, and step 3 unless they can also
re-sign the head record of every party that saw a later entry: an operator holding only
the coordinator's key cannot rewrite what a hospital signed (its data deletions, and the
certificate entries it co-signs) or saw. Swapping a public key file is caught by the key
registered in the log.

What it does not protect against. An insider holding *every* private key involved (in
the single-machine simulation all private keys live in ``RUN_DIR/keys/private``, so whoever
can read the whole run directory can) can rewrite the log from any point and re-sign
everything, including the head records; so can anyone who may replace the verifier's public
keys and rewrite the log from entry 0. Head records kept in the run directory can be
replaced by older signed ones after entries were cut from the end. Against these, keep the
private keys with their parties, give the verifier the public keys out of band
(``vfl audit verify --keys DIR``), and have each party keep a copy of its own head record
(or of the certificates, which name their log position and hash) outside the run directory.
The log does not hide its content from readers (it holds no patient ids: erased patients
appear as keyed digests, :meth:`unlearning.keys.Keyring.id_digest`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from unlearning.errors import AuditLogError, AuditTamperError
from unlearning.keys import COORDINATOR, Keyring, check_name, verify_signature
from unlearning.store import atomic_write, sha256
from vfl.core import fileio

GENESIS = "0" * 64
KEY_REGISTERED = "key.registered"
#: entry kinds a party other than the coordinator must sign: kind -> data field naming them
PARTY_SIGNED = {"erasure.data_deleted": "parties"}


def _canonical(entry: dict) -> bytes:
    body = {k: entry[k] for k in ("seq", "time", "kind", "data", "prev")}
    if "by" in entry:
        body["by"] = entry["by"]
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _entry_message(digest: str) -> bytes:
    return b"vfl-audit-entry/1:" + digest.encode()


def _head_message(party: str, seq: int, digest: str) -> bytes:
    body = json.dumps({"party": party, "seq": seq, "hash": digest}, sort_keys=True,
                      separators=(",", ":"))
    return b"vfl-audit-head/1:" + body.encode()


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_bad: int | None = None  # 0-based line number of the first bad entry
    reason: str = ""
    fault: str = ""  # short name of the fault (empty when ok)
    signed: bool = False  # signatures and head records were checked
    signers: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad": self.first_bad,
            "reason": self.reason,
            "fault": self.fault,
            "signed": self.signed,
            "signers": self.signers,
        }


def _split(data: bytes) -> tuple[list[bytes], bytes | None]:
    """Complete lines and the torn tail (a last line without its newline), if any."""
    if not data:
        return [], None
    parts = data.split(b"\n")
    tail = parts.pop()
    return parts, (tail or None)


class AuditLog:
    def __init__(self, path: str | Path, *, fsync: bool = True, keyring: Keyring | None = None,
                 heads_dir: str | Path | None = None):
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")
        self.fsync = fsync
        self.keyring = keyring or Keyring(self.path.parent / "keys", fsync=fsync)
        self.heads_dir = Path(heads_dir) if heads_dir is not None else self.path.parent / "heads"
        #: called before every append (a run directory checks that it holds its lock)
        self.guard = None
        self._tail: tuple[int, str] | None = None
        self._registered: dict[str, str] | None = None
        # (public key, message, signature) triples this object has checked: a later verify
        # recomputes the chain, but need not check an unchanged signature twice
        self._good_sigs: set[tuple[str, bytes, str]] = set()

    # -- reading ---------------------------------------------------------------------------
    def reload(self) -> None:
        """Forget what is cached about the file (another process may have appended)."""
        self._tail = None
        self._registered = None

    def _tail_state(self) -> tuple[int, str]:
        if self._tail is None:
            self._tail = self._read_tail()
        return self._tail

    def _read_tail(self) -> tuple[int, str]:
        """``(next seq, last hash)`` from the last complete line (a torn one is ignored)."""
        if not self.path.exists():
            return 0, GENESIS
        with open(self.path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = window = fh.tell()
            window = 65536
            while True:
                fh.seek(max(0, size - window))
                lines, _ = _split(fh.read())
                if len(lines) > 1 or window >= size:
                    break
                window *= 4
        if size - window > 0:
            lines = lines[1:]  # the first line read may be cut
        lines = [ln for ln in lines if ln]
        if not lines:
            return 0, GENESIS
        try:
            entry = json.loads(lines[-1])
            return int(entry["seq"]) + 1, entry["hash"]
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditLogError(
                f"the last entry of {self.path} is unreadable ({exc}); run "
                "`vfl audit verify` to locate the damage"
            ) from None

    @property
    def position(self) -> int:
        """The seq the next entry will get (= number of entries)."""
        return self._tail_state()[0]

    @property
    def last_hash(self) -> str:
        """The hash of the last entry (the ``prev`` the next entry will carry)."""
        return self._tail_state()[1]

    def entries(self) -> list[dict]:
        """Every complete entry (a torn last line is left out)."""
        if not self.path.exists():
            return []
        lines, _ = _split(self.path.read_bytes())
        return [json.loads(line) for line in lines if line]

    def _read_head(self) -> dict | None:
        try:
            return json.loads(self.head_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"seq": -2, "hash": ""}  # unreadable: never matches

    def head_record_path(self, party: str) -> Path:
        return self.heads_dir / f"{check_name(party)}.json"

    def head_records(self) -> dict[str, dict]:
        if not self.heads_dir.is_dir():
            return {}
        out = {}
        for p in sorted(self.heads_dir.glob("*.json")):
            try:
                out[p.stem] = json.loads(p.read_text())
            except ValueError:
                out[p.stem] = {}
        return out

    # -- writing ---------------------------------------------------------------------------
    def registered_keys(self) -> dict[str, str]:
        """``{party: public key hex}`` registered in the log."""
        if self._registered is None:
            self._registered = {
                e["data"]["name"]: e["data"]["public_key"]
                for e in self.entries() if e.get("kind") == KEY_REGISTERED
            }
        return self._registered

    def register(self, name: str) -> None:
        """Give ``name`` a signing key (if it has none) and register it in the log."""
        if self.guard is not None:
            self.guard()
        self._register(check_name(name))

    def _register(self, name: str) -> None:
        registered = self.registered_keys()
        pub = self.keyring.ensure(name)
        if name in registered:
            if registered[name] != pub:
                raise AuditLogError(
                    f"the key of {name!r} under {self.keyring.root} is not the one registered "
                    "in the audit log; restore the key pair from a trusted copy"
                )
            return
        by = (name,) if name == COORDINATOR else (COORDINATOR, name)
        if name != COORDINATOR:
            self._register(COORDINATOR)
        self._append(KEY_REGISTERED, by, {"name": name, "public_key": pub})
        registered[name] = pub

    def append(self, kind: str, *, by: str | tuple[str, ...] | list[str] | None = None,
               **data) -> dict:
        """Append an entry signed by ``by`` (one party or several; default: the
        coordinator). A party signing for the first time is registered first."""
        if self.guard is not None:
            self.guard()
        if by is None:
            by = (COORDINATOR,)
        elif isinstance(by, str):
            by = (by,)
        by = tuple(dict.fromkeys(check_name(b) for b in by))
        if not by:
            raise AuditLogError("an audit entry needs at least one signer")
        for name in by:
            self._register(name)
        return self._append(kind, by, data)

    def _append(self, kind: str, by: tuple[str, ...], data: dict) -> dict:
        seq, prev = self._tail_state()
        entry = {
            "seq": seq,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "kind": kind,
            "data": data,
            "prev": prev,
            "by": list(by),
        }
        entry["hash"] = sha256(_canonical(entry))
        entry["sig"] = {n: self.keyring.sign(n, _entry_message(entry["hash"])) for n in by}
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fileio.append_line(self.path, line, fsync=self.fsync)
        self._tail = (seq + 1, entry["hash"])
        self._write_head(seq, entry["hash"])
        for name in by:
            self._write_head_record(name, seq, entry["hash"])
        return entry

    def _write_head(self, seq: int, digest: str) -> None:
        atomic_write(self.head_path, json.dumps({"seq": seq, "hash": digest}),
                     fsync=self.fsync)

    def _write_head_record(self, party: str, seq: int, digest: str) -> None:
        rec = {"party": party, "seq": seq, "hash": digest,
               "sig": self.keyring.sign(party, _head_message(party, seq, digest))}
        atomic_write(self.head_record_path(party), json.dumps(rec, sort_keys=True),
                     fsync=self.fsync)

    def repair(self) -> list[str]:
        """Finish what a crash in the middle of an append left (call it holding the run's
        lock): cut a torn last line, advance ``audit.head`` over one complete entry written
        after it, and the head records of that entry's signers. Only a log whose chain
        verifies is rolled forward; anything else is left for :meth:`verify` to report.
        Returns what was done."""
        done: list[str] = []
        if not self.path.exists():
            return done
        data = self.path.read_bytes()
        lines, torn = _split(data)
        if torn is not None:
            fileio.write_point("truncate", self.path)
            with open(self.path, "r+b") as fh:
                fh.truncate(len(data) - len(torn))
                if self.fsync:
                    os.fsync(fh.fileno())
            done.append(f"cut the torn last line of {self.path.name} (an interrupted append)")
        self.reload()
        entries = [json.loads(line) for line in lines if line]
        if not entries or not self._chain(entries).ok:
            return done
        last = entries[-1]
        head = self._read_head()
        n = len(entries)
        behind = (head is None and n == 1) or (
            head is not None and head.get("seq") == n - 2
            and entries[n - 2]["hash"] == head.get("hash"))
        if behind:
            self._write_head(last["seq"], last["hash"])
            done.append(f"advanced {self.head_path.name} over entry {n - 1} (written before "
                        "a crash)")
        elif head is None or head.get("seq") != n - 1 or head.get("hash") != last["hash"]:
            return done
        records = self.head_records()
        for name in last.get("by") or []:
            rec = records.get(name) or {}
            if rec.get("seq") == last["seq"] and rec.get("hash") == last["hash"]:
                continue
            if isinstance(rec.get("seq"), int) and rec["seq"] > last["seq"]:
                continue  # ahead of the log: for verify to report
            if self.keyring.has_private(name):
                self._write_head_record(name, last["seq"], last["hash"])
                done.append(f"recorded entry {n - 1} as the head {name} has seen")
        return done

    # -- verification ----------------------------------------------------------------------
    def _chain(self, entries: list[dict]) -> VerifyResult:
        prev = GENESIS
        for i, entry in enumerate(entries):
            try:
                seq, stored, entry_prev = entry["seq"], entry["hash"], entry["prev"]
                recomputed = sha256(_canonical(entry))
            except (KeyError, TypeError):
                return VerifyResult(False, i + 1, i, f"entry {i} is not a well-formed log "
                                    "entry", "malformed")
            if seq != i:
                return VerifyResult(
                    False, i + 1, i, f"entry {i} carries seq {seq}: an entry was deleted, "
                    "inserted or reordered here", "sequence"
                )
            if recomputed != stored:
                return VerifyResult(False, i + 1, i, f"entry {i} was edited (its hash does not "
                                    "match)", "edited")
            if entry_prev != prev:
                return VerifyResult(
                    False, i + 1, i, f"entry {i} does not chain to entry {i - 1} (missing or "
                    "reordered entry)", "chain"
                )
            prev = stored
        return VerifyResult(True, len(entries))

    def verify(self, *, trusted_keys: dict[str, str] | None = None,
               require_signatures: bool | None = None) -> VerifyResult:
        """Check the log (see the module docstring); never writes. ``trusted_keys``:
        ``{party: public key hex}`` from outside the run directory (default: the run's
        ``keys/*.pub``). Signatures are required when the run has public keys or any entry
        is signed (``require_signatures`` overrides)."""
        if not self.path.exists():
            return VerifyResult(False, 0, 0, f"no audit log at {self.path}", "missing")
        lines, torn = _split(self.path.read_bytes())
        entries = []
        for i, line in enumerate(lines):
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError
            except ValueError:
                return VerifyResult(False, i + 1, i, f"entry {i} is not a well-formed log entry",
                                    "malformed")
            entries.append(entry)
        chain = self._chain(entries)
        if not chain.ok:
            return chain
        n = len(entries)
        if torn is not None:
            return VerifyResult(
                False, n + 1, n, f"entry {n} is incomplete: an append was interrupted before "
                "its line was finished (a torn append). The next `vfl erase` on this run cuts "
                "it off", "torn_append")
        end = self._verify_end(entries)
        if end is not None:
            return end
        keys = trusted_keys if trusted_keys is not None else self.keyring.public_keys()
        signed = any("by" in e for e in entries)
        if not (require_signatures if require_signatures is not None else keys or signed):
            return VerifyResult(True, n)
        return self._verify_signatures(entries, keys)

    def _verify_end(self, entries: list[dict]) -> VerifyResult | None:
        n = len(entries)
        head = self._read_head()
        if head is None:
            if n:
                return VerifyResult(False, n, n - 1, "the head file audit.head is missing",
                                    "head_missing")
            return None
        seq, digest = head.get("seq"), head.get("hash")
        if not isinstance(seq, int):
            return VerifyResult(False, n, n - 1 if n else 0, "audit.head is unreadable",
                                "head_unreadable")
        if seq > n - 1:
            return VerifyResult(
                False, n, n,
                f"the log ends at entry {n - 1} but the head records entry {seq}: entries were "
                "deleted from the end or the log was replaced", "deleted_from_end")
        if seq < n - 1 and seq >= 0 and entries[seq]["hash"] == digest:
            extra = (f"entry {seq + 1} was" if seq + 2 == n
                     else f"entries {seq + 1}..{n - 1} were")
            return VerifyResult(
                False, n, seq + 1,
                f"{extra} appended after the head was written: an append was interrupted "
                f"before audit.head was advanced (the head records entry {seq}). The next "
                "`vfl erase` on this run completes it", "appended_after_head")
        if seq != n - 1 or entries[seq]["hash"] != digest:
            return VerifyResult(
                False, n, max(0, min(seq, n - 1)),
                f"the head records entry {seq} with a hash the log does not have at that "
                "position: the log was replaced or rewritten", "head_mismatch")
        return None

    def _signature_ok(self, pub: str, message: bytes, sig) -> bool:
        key = (pub, message, str(sig))
        if key in self._good_sigs:
            return True
        if not verify_signature(pub, message, str(sig)):
            return False
        if len(self._good_sigs) > 200_000:
            self._good_sigs.clear()
        self._good_sigs.add(key)
        return True

    def _verify_signatures(self, entries: list[dict], keys: dict[str, str]) -> VerifyResult:
        n = len(entries)
        registered: dict[str, str] = {}
        last_signed: dict[str, int] = {}
        first_signed = None

        def bad(i, reason, fault):
            return VerifyResult(False, n, i, reason, fault, True, sorted(registered))

        for i, e in enumerate(entries):
            by = e.get("by")
            if by is None:
                if first_signed is not None:
                    return bad(i, f"entry {i} is not signed (every entry after the first signed "
                               "one must be): it was inserted or its signatures were removed",
                               "unsigned")
                continue
            if first_signed is None:
                first_signed = i
            if not (isinstance(by, list) and by and all(isinstance(b, str) for b in by)):
                return bad(i, f"entry {i} names no valid signers", "unsigned")
            data = e.get("data") if isinstance(e.get("data"), dict) else {}
            if e.get("kind") == KEY_REGISTERED:
                name, pub = data.get("name"), data.get("public_key")
                if name in registered and registered[name] != pub:
                    return bad(i, f"entry {i} registers a second key for {name!r}", "key")
                if name not in by or (name != COORDINATOR and COORDINATOR not in by):
                    return bad(i, f"entry {i} registers the key of {name!r} without its own "
                               "and the coordinator's signature", "key")
                registered.setdefault(name, pub)
            sigs = e.get("sig") if isinstance(e.get("sig"), dict) else {}
            for name in by:
                if name not in registered:
                    return bad(i, f"entry {i} is signed by {name!r}, whose key was never "
                               "registered in the log", "unregistered_signer")
                pub = keys.get(name)
                if pub is None:
                    return bad(i, f"no public key of {name!r} to check entry {i} with (expected "
                               f"{self.keyring.public_path(name)} or a trusted key)",
                               "no_public_key")
                if pub != registered[name]:
                    return bad(i, f"the public key of {name!r} the verifier holds is not the one "
                               "registered in the log (a key file was replaced, or the log was "
                               "rewritten with new keys)", "key_mismatch")
                if not self._signature_ok(pub, _entry_message(e["hash"]), sigs.get(name, "")):
                    return bad(i, f"entry {i}: the signature of {name!r} does not match (the "
                               "entry was edited and the chain recomputed, or it was signed "
                               "with another key)", "bad_signature")
                last_signed[name] = i
            field_ = PARTY_SIGNED.get(e.get("kind"))
            if field_ is not None:
                missing = sorted(set(data.get(field_) or ()) - set(by))
                if missing:
                    return bad(i, f"entry {i} ({e['kind']}) is not signed by {missing}, the "
                               "parties that acted", "missing_signer")
        if first_signed is None:
            return bad(0, "the log carries no signatures, but the run has signing keys: "
                       "signatures were stripped or the log was replaced", "unsigned")
        records = self.head_records()
        for name, last in sorted(last_signed.items(), key=lambda kv: kv[1]):
            if name not in records:
                return bad(last, f"{name!r} signed entry {last} but keeps no head record "
                           f"({self.head_record_path(name)})", "head_record_missing")
        for name, rec in sorted(records.items()):
            seq, digest = rec.get("seq"), rec.get("hash")
            pub = keys.get(name)
            if (not isinstance(seq, int) or not isinstance(digest, str) or pub is None
                    or rec.get("party") != name
                    or not self._signature_ok(pub, _head_message(name, seq, digest),
                                              rec.get("sig", ""))):
                return bad(min(last_signed.get(name, n - 1), n - 1),
                           f"the head record of {name!r} is not signed by {name!r}",
                           "head_record_signature")
            if seq >= n:
                return bad(n, f"{name!r} saw entry {seq} (its signed head record), but the log "
                           f"ends at entry {n - 1}: entries were deleted from the end",
                           "deleted_from_end")
            if entries[seq]["hash"] != digest:
                return bad(seq, f"entry {seq} is not the entry {name!r} saw (its signed head "
                           "record): the log was rewritten", "head_record_mismatch")
            if seq < last_signed.get(name, -1):
                return bad(last_signed[name],
                           f"the head record of {name!r} (entry {seq}) is older than the last "
                           f"entry it signed (entry {last_signed[name]}): an append was "
                           "interrupted before it recorded the head, or an older head record "
                           "was put back", "head_record_stale")
        return VerifyResult(True, n, signed=True, signers=sorted(registered))

    def require_valid(self) -> None:
        result = self.verify()
        if not result.ok:
            raise AuditTamperError(
                f"audit log {self.path} failed verification at entry {result.first_bad}: "
                f"{result.reason}. Do not continue; restore the log from a trusted copy."
            )
