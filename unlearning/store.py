"""Content-addressed checkpoint store for the round contract of :mod:`vfl.core.rounds`.

Layout under ``root`` (``RUN_DIR/store``)::

    objects/ab/abcdef...   one blob per party/client state, named by its SHA-256
    index.json             the manifest: per model and round, the party -> SHA-256 map

Blobs are ``flax.serialization.msgpack_serialize`` bytes (never pickle) of a state tree:
nested dicts/lists of numpy arrays, numbers and strings. Every write is atomic (temporary
file, fsync, rename) and the index is written only after the blobs it names, so a crash
never leaves a half checkpoint: at worst an unreferenced blob, which :meth:`gc` removes.
Reading a blob checks its hash (:class:`CheckpointCorruptedError`); an index of another
format than ``vfl-checkpoint-index/1`` is refused (:class:`RunDirError`: retrain the run).

The store is trainer-agnostic: a trainer (vertical or horizontal) hands it a
:class:`Checkpoint` (model name, round, per-party state trees, per-party ids used).

Inside :meth:`CheckpointStore.write_behind` (a replay or a training run), blob files are
written by one background thread while training goes on; the digests and index entries
are computed as before, and every write is finished before the block ends, before the
index is flushed and before any blob is read, listed or collected, so what reaches disk
and when the index names it are unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from flax import serialization

from unlearning.errors import CheckpointCorruptedError, CheckpointMissingError, RunDirError
from vfl.core import fileio
from vfl.core.fileio import atomic_write  # noqa: F401  (re-exported for unlearning modules)
from vfl.core.rounds import Checkpoint

INDEX_FORMAT = "vfl-checkpoint-index/1"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Retention:
    """Which rounds keep a checkpoint: every ``every``-th round (counting from round
    ``every - 1``), the given slice ``boundaries`` (last round of each slice phase) and
    always the final round (the published model)."""

    every: int = 1
    boundaries: frozenset[int] = frozenset()

    def keep(self, round: int, last_round: int) -> bool:
        if round == last_round or round in self.boundaries:
            return True
        return self.every > 0 and (round + 1) % self.every == 0

    def to_json(self) -> dict:
        return {"every": self.every, "boundaries": sorted(self.boundaries)}

    @classmethod
    def from_json(cls, obj: dict | None) -> Retention:
        obj = obj or {}
        return cls(int(obj.get("every", 1)), frozenset(int(b) for b in obj.get("boundaries", ())))


class CheckpointStore:
    def __init__(self, root: str | Path, *, fsync: bool = True):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.index_path = self.root / "index.json"
        self.fsync = fsync
        self.objects.mkdir(parents=True, exist_ok=True)
        self.index = self._read_index()
        self._writer: ThreadPoolExecutor | None = None
        self._pending: dict[str, object] = {}  # digest -> Future of its blob write
        #: called before the index is replaced or objects are deleted (a run directory
        #: checks that it holds its lock)
        self.guard = None

    # -- blobs -----------------------------------------------------------------------------
    def _blob_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    def put_blob(self, data: bytes) -> str:
        digest = sha256(data)
        if digest in self._pending:
            return digest
        path = self._blob_path(digest)
        if not path.exists():
            if self._writer is None:
                atomic_write(path, data, fsync=self.fsync)
            else:
                self._pending[digest] = self._writer.submit(
                    atomic_write, path, data, fsync=self.fsync
                )
        return digest

    @contextlib.contextmanager
    def write_behind(self):
        """Write blob files in a background thread until the block ends (see the module
        docstring); leaving the block waits for every write and raises the first failure.
        Nested blocks share the outer one."""
        if self._writer is not None:
            yield self
            return
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-write")
        try:
            yield self
        finally:
            writer, self._writer = self._writer, None
            writer.shutdown(wait=True)
            failed = self._settle()
        if failed is not None:
            raise failed

    def _settle(self) -> BaseException | None:
        """Wait for every pending write; returns the first failure (None if all landed)."""
        failed = None
        for future in self._pending.values():
            exc = future.exception()
            if exc is not None and failed is None:
                failed = exc
        self._pending.clear()
        return failed

    def drain(self) -> None:
        """Finish every pending blob write now (raises the first failure)."""
        if self._pending:
            failed = self._settle()
            if failed is not None:
                raise failed

    def get_blob(self, digest: str) -> bytes:
        self.drain()
        path = self._blob_path(digest)
        if not path.exists():
            raise CheckpointMissingError(
                f"checkpoint object {digest[:12]} is named in the index but missing from "
                f"{self.objects}; restore the run directory from a backup or retrain"
            )
        data = path.read_bytes()
        if sha256(data) != digest:
            raise CheckpointCorruptedError(
                f"checkpoint object {path} does not match its SHA-256 (corrupted or edited); "
                "the checkpoint cannot be trusted: restore it from a backup or roll back to an "
                "earlier checkpoint"
            )
        return data

    def blob_digests(self) -> set[str]:
        self.drain()
        return {p.name for p in self.objects.glob("*/*") if not p.name.startswith(".")}

    # -- index -----------------------------------------------------------------------------
    def reload(self) -> None:
        """Read index.json again (another process may have replaced it)."""
        self.drain()
        self.index = self._read_index()

    def _read_index(self) -> dict:
        if not self.index_path.exists():
            return {"format": INDEX_FORMAT, "models": {}}
        index = json.loads(self.index_path.read_text())
        fmt = index.get("format") if isinstance(index, dict) else None
        if fmt != INDEX_FORMAT:
            raise RunDirError(
                f"{self.index_path} is not a {INDEX_FORMAT!r} checkpoint index (format "
                f"{fmt!r}); this version reads no other. Retrain the run into a new run "
                "directory (python -m scenarios.erasure_request --out DIR, or "
                "unlearning.run.train_run)"
            )
        return index

    def flush(self, index: dict | None = None) -> str:
        """Atomically replace index.json (``index`` or the current one); returns its hash.
        Pending blob writes finish first: the index never names a blob not on disk."""
        if self.guard is not None:
            self.guard()
        self.drain()
        if index is not None:
            self.index = index
        text = json.dumps(self.index, sort_keys=True, indent=1)
        atomic_write(self.index_path, text, fsync=self.fsync)
        return sha256(text.encode())

    def index_digest(self) -> str:
        return sha256(json.dumps(self.index, sort_keys=True, indent=1).encode())

    def staged(self) -> dict:
        """A copy of the index to build a replacement in (committed by :meth:`flush`)."""
        return copy.deepcopy(self.index)

    # -- checkpoints -----------------------------------------------------------------------
    @staticmethod
    def encode_state(tree: dict) -> bytes:
        return serialization.msgpack_serialize(tree)

    def write(self, ckpt: Checkpoint, index: dict | None = None, *, flush: bool = True) -> dict:
        """Write ``ckpt``'s blobs, then its manifest entry into ``index`` (default: the
        live index, flushed to disk). Returns the manifest entry."""
        target = self.index if index is None else index
        parties = {name: self.put_blob(self.encode_state(st)) for name, st in ckpt.states.items()}
        entry = {
            "round": ckpt.round,
            "loss": None if ckpt.loss != ckpt.loss else float(ckpt.loss),
            "parties": parties,
            "meta": ckpt.meta,
        }
        entry["digest"] = sha256(json.dumps(entry, sort_keys=True).encode())
        model = target["models"].setdefault(ckpt.model, {"rounds": {}})
        model["rounds"][str(ckpt.round)] = entry
        if index is None and flush:
            self.flush()
        return entry

    def models(self, index: dict | None = None) -> list[str]:
        return sorted((index or self.index)["models"])

    def rounds(self, model: str, index: dict | None = None) -> list[int]:
        m = (index or self.index)["models"].get(model)
        return sorted(int(r) for r in m["rounds"]) if m else []

    def entry(self, model: str, round: int) -> dict:
        try:
            return self.index["models"][model]["rounds"][str(round)]
        except KeyError:
            raise CheckpointMissingError(
                f"no checkpoint of model {model!r} at round {round}; stored rounds: "
                f"{self.rounds(model)}"
            ) from None

    def load(self, model: str, round: int) -> Checkpoint:
        entry = self.entry(model, round)
        states = {
            name: serialization.msgpack_restore(self.get_blob(d))
            for name, d in entry["parties"].items()
        }
        loss = entry["loss"] if entry["loss"] is not None else float("nan")
        return Checkpoint(model, round, states, {}, loss, dict(entry.get("meta", {})))

    def drop_rounds(self, model: str, rounds: Iterable[int], index: dict) -> None:
        m = index["models"].get(model)
        for r in rounds:
            if m:
                m["rounds"].pop(str(r), None)

    # -- integrity -------------------------------------------------------------------------
    def referenced(self, index: dict | None = None) -> set[str]:
        idx = index or self.index
        return {
            d
            for m in idx["models"].values()
            for e in m["rounds"].values()
            for d in e["parties"].values()
        }

    def gc(self) -> list[str]:
        """Delete blobs no index entry names (stale or half-written); returns their hashes."""
        if self.guard is not None:
            self.guard()
        self.drain()
        live = self.referenced()
        gone = []
        for digest in sorted(self.blob_digests() - live):
            fileio.remove(self._blob_path(digest))
            gone.append(digest)
        for tmp in self.objects.glob("*/.*.tmp"):
            fileio.remove(tmp)
        return gone

    def bad_objects(self, model: str, round: int, index: dict | None = None) -> list[str]:
        """The objects of a checkpoint that are missing or do not match their SHA-256."""
        idx = index or self.index
        entry = idx["models"][model]["rounds"][str(round)]
        bad = []
        for d in entry["parties"].values():
            try:
                self.get_blob(d)
            except (CheckpointMissingError, CheckpointCorruptedError):
                bad.append(d)
        return bad

    def quarantine(self, digest: str) -> Path | None:
        """Move a corrupted object out of ``objects/`` into ``quarantine/`` (kept for
        inspection), so that a rewrite of the same content lands again. Returns where it
        went (None if it was missing)."""
        src = self._blob_path(digest)
        if not src.exists():
            return None
        dst = self.root / "quarantine" / digest
        dst.parent.mkdir(parents=True, exist_ok=True)
        fileio.replace(src, dst)
        return dst

    def verify(self) -> list[str]:
        """Problems found: missing or corrupted blobs named by the index (empty = sound)."""
        problems = []
        for model in self.models():
            for r in self.rounds(model):
                for party, d in self.entry(model, r)["parties"].items():
                    try:
                        self.get_blob(d)
                    except (CheckpointMissingError, CheckpointCorruptedError) as exc:
                        problems.append(f"{model} round {r} {party}: {exc}")
        return problems
