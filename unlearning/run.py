"""A run directory: what `vfl erase`, `vfl lineage` and `vfl audit verify` work on.

Layout::

    RUN_DIR/run.json        manifest: mode, dataset (loader name/factory + kwargs), training
                            config JSON, SISA/arrival settings, retention, published models
    RUN_DIR/aligned.json    each party's PSI result (pseudonymous ids), so replays skip PSI
    RUN_DIR/erased.json     erased patient -> request id (the parties' deletion registry)
    RUN_DIR/store/          content-addressed checkpoints (unlearning.store)
    RUN_DIR/lineage.json    lineage graph (unlearning.lineage)
    RUN_DIR/audit.jsonl     hash-chained audit log (+ audit.head)
    RUN_DIR/certificates/   one JSON certificate per served request
    RUN_DIR/journal/        in-flight erasures (crash recovery)
    RUN_DIR/owners/CLIENT/  what a client keeps itself (horizontal: its own update log for
                            approximate removal), never read by the server or the store
    RUN_DIR/keys/           each party's Ed25519 public key (NAME.pub) and, in this
                            single-machine setting, its private key (private/NAME.key), plus
                            the run's secret for keyed digests of erased ids
                            (unlearning.keys)
    RUN_DIR/heads/          each party's signed record of the last audit entry it has seen
    RUN_DIR/run.lock        the lock every command that changes the run holds
                            (unlearning.locking)

Concurrency. :meth:`RunDir.lock` is held (exclusively) by everything that writes:
:func:`train_run` and the erasure service (submit, recover). The outermost acquisition
reloads what another process may have changed meanwhile (manifest, checkpoint index,
lineage, audit tail); writes without the lock raise :class:`RunDirError` (``guard``).

Deletion registry. ``erased.json`` is bound to the audit log: each ``erasure.data_deleted``
entry carries the keyed digests (HMAC-SHA256 under the run's secret) of the ids it erased,
and :meth:`RunDir.erasure_binding` reports an id removed from (or added to) the registry
behind the log's back. The service refuses to serve on a run whose log does not verify or
whose registry is not bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from unlearning import locking
from unlearning.audit_log import AuditLog
from unlearning.contract import adapter_class, adapter_name
from unlearning.errors import RunDirError
from unlearning.keys import Keyring
from unlearning.lineage import Lineage, round_node
from unlearning.store import Checkpoint, CheckpointStore, Retention, atomic_write, sha256
from vfl.core import fileio

RUN_FORMAT = "vfl-unlearning-run/1"
# run.json fields that record what happened, not how to train (not part of an adapter's key)
_BOOKKEEPING = ("published", "train_seconds", "model_seconds")
STAGED_LINEAGE = "lineage.staged.json"


def _stamp(path: Path) -> tuple | None:
    """What changes when a file is replaced (atomic writes make a new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / "run.json"
        if not manifest.exists():
            raise RunDirError(
                f"{self.path} is not an unlearning run directory (no run.json); create one with "
                "`python -m scenarios.erasure_request --out DIR` or unlearning.run.train_run"
            )
        self.spec = json.loads(manifest.read_text())
        if self.spec.get("format") != RUN_FORMAT:
            raise RunDirError(f"{manifest} has format {self.spec.get('format')!r}, "
                              f"expected {RUN_FORMAT!r}")
        adapter_name(self.spec)  # a manifest that names no adapter is refused at open
        self.fsync = bool(self.spec.get("fsync", True))
        self.store = CheckpointStore(self.path / "store", fsync=self.fsync)
        self.store.guard = self._require_lock
        self.keys = Keyring(self.path / "keys", fsync=self.fsync)
        self.audit = AuditLog(self.path / "audit.jsonl", fsync=self.fsync, keyring=self.keys,
                              heads_dir=self.path / "heads")
        self.audit.guard = self._require_lock
        self.lineage_path = self.path / "lineage.json"
        self._lineage_stamp = _stamp(self.lineage_path)
        self.lineage = Lineage.load(self.lineage_path)
        self.cert_dir = self.path / "certificates"
        self.journal_dir = self.path / "journal"
        self._aligned: list[str] | None = None
        self._adapters: dict[tuple, object] = {}
        self._pool = None  # set-up trainers kept between requests (adapters with a `pool`)

    # -- manifest pieces -------------------------------------------------------------------
    @property
    def aligned(self) -> list[str]:
        # written once, before the run directory exists as one (train_run)
        if self._aligned is None:
            self._aligned = json.loads((self.path / "aligned.json").read_text())
        return list(self._aligned)

    def erased(self) -> dict[str, str]:
        p = self.path / "erased.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def record_erased(self, pids, request_id: str) -> None:
        """Add ``pids`` to the deletion registry (after their holders deleted the rows):
        the adapters rebuild every party from its full table and have it delete the
        registry's ids itself, so the rows stay deleted in every later federation."""
        self._require_lock()
        erased = self.erased()
        for pid in pids:
            erased.setdefault(pid, request_id)
        atomic_write(self.path / "erased.json", json.dumps(erased, indent=1, sort_keys=True),
                     fsync=self.fsync)

    def save_spec(self) -> None:
        self._require_lock()
        atomic_write(self.path / "run.json", json.dumps(self.spec, indent=1), fsync=self.fsync)

    def final_trainers(self, models=None) -> tuple[object, dict]:
        """``(adapter, {model: trainer})`` with each model (default: all of the run's)
        restored from its final stored checkpoint: the published, possibly unlearned, state."""
        adapter = self.adapter()
        trainers = {}
        for model in adapter.models() if models is None else models:
            trainers[model] = adapter.trainer(model)
            final = self.store.index["models"][model]["final_round"]
            adapter.load(model, trainers[model], self.store.load(model, final))
        return adapter, trainers

    def adapter(self, extra_erased=()):
        """The run's adapter minus every erased patient (and ``extra_erased``).

        Adapters that declare themselves ``cacheable`` (immutable once built) are kept per
        erased set and training manifest, so the steps of one request, and the next
        request, share one instead of rebuilding it. Adapters with a
        ``pool`` attribute get this run directory's pool of set-up trainers
        (:class:`vfl.vertical.checkpointing.TrainerPool`): trainers built through this
        ``RunDir`` are reused by later requests served through it, never by another
        ``RunDir`` of the same folder."""
        cls = adapter_class(self.spec)
        erased = set(self.erased()) | set(extra_erased)
        if not getattr(cls, "cacheable", False):
            return self._pooled(cls(self.spec, self.aligned, erased))
        manifest = {k: v for k, v in self.spec.items() if k not in _BOOKKEEPING}
        key = (json.dumps(manifest, sort_keys=True), tuple(sorted(erased)))
        adapter = self._adapters.get(key)
        if adapter is None:
            adapter = self._pooled(cls(self.spec, self.aligned, erased))
            if len(self._adapters) >= 4:
                self._adapters.pop(next(iter(self._adapters)))
            self._adapters[key] = adapter
        return adapter

    def _pooled(self, adapter):
        if hasattr(adapter, "make_pool"):
            if self._pool is None:
                self._pool = adapter.make_pool()
            adapter.pool = self._pool
        return adapter

    def retention(self, trainer) -> Retention:
        r = self.spec.get("retention") or {}
        bounds = set()
        if r.get("slice_boundaries", True):
            bounds = {s - 1 for s in trainer.phase_starts[1:]}
        return Retention(int(r.get("every", 1)), frozenset(bounds))

    def certificate(self, request_id: str) -> dict | None:
        p = self.cert_dir / f"{request_id}.json"
        return json.loads(p.read_text()) if p.exists() else None

    # -- concurrency -----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, *, timeout: float | None = None, shared: bool = False, on_wait=None):
        """Hold the run directory's lock (:mod:`unlearning.locking`) for the block; the
        outermost acquisition reloads the run's state from disk (another operator may have
        changed it since this object read it). ``timeout``: None waits as long as it takes,
        0 refuses at once, else seconds (:class:`~unlearning.errors.RunLockedError`)."""
        with locking.run_lock(self.path, timeout=timeout, shared=shared,
                              on_wait=on_wait) as outermost:
            if outermost:
                self.refresh()
            yield self

    def holds_lock(self) -> bool:
        return locking.held(self.path)

    def _require_lock(self) -> None:
        if not locking.held(self.path):
            raise RunDirError(
                f"a change to run directory {self.path} outside its lock; hold "
                "`with run.lock():` around it (the erasure service and train_run do)"
            )

    def refresh(self) -> None:
        """Reload what another process may have changed: manifest, checkpoint index,
        audit tail and (when its file changed) the lineage graph."""
        spec = json.loads((self.path / "run.json").read_text())
        self.spec = spec
        self.store.reload()
        self.audit.reload()
        if _stamp(self.lineage_path) != self._lineage_stamp:
            self.reload_lineage()

    def reload_lineage(self) -> None:
        self._lineage_stamp = _stamp(self.lineage_path)
        self.lineage = Lineage.load(self.lineage_path)

    def commit_lineage(self, staged: Path) -> None:
        """Make the staged lineage file the run's lineage (an atomic rename)."""
        fileio.replace(staged, self.lineage_path)
        self._lineage_stamp = _stamp(self.lineage_path)

    def save_lineage(self, lineage: Lineage) -> None:
        lineage.save(self.lineage_path, fsync=self.fsync)
        self._lineage_stamp = _stamp(self.lineage_path)

    def clean_stray(self) -> list[str]:
        """Remove what interrupted writes left (temporary ``.*.tmp`` files anywhere in the
        run directory, and a staged lineage no in-flight erasure needs); call it holding
        the lock. Returns the removed paths, relative to the run directory."""
        self._require_lock()
        gone = []
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    p = Path(root) / name
                    if fileio.remove(p):
                        gone.append(str(p.relative_to(self.path)))
        staged = self.path / STAGED_LINEAGE
        if staged.exists() and not self.in_flight():
            fileio.remove(staged)
            gone.append(STAGED_LINEAGE)
        return gone

    def stray_files(self) -> list[str]:
        out = []
        for root, _dirs, files in os.walk(self.path):
            out += [str((Path(root) / n).relative_to(self.path)) for n in files
                    if n.startswith(".") and n.endswith(".tmp")]
        return sorted(out)

    # -- in-flight erasures and the committed state ----------------------------------------
    def in_flight(self) -> list[dict]:
        """Erasures that started and have not finished (their journals), each with
        ``request_id``, ``step``, ``patients`` and ``committed`` (the index swap
        happened: the erasure rolls forward)."""
        if not self.journal_dir.exists():
            return []
        out = []
        digest = self.store.index_digest()
        for p in sorted(self.journal_dir.glob("*.json")):
            try:
                j = json.loads(p.read_text())
            except (OSError, ValueError):
                j = {}
            staged = j.get("staged_index_sha256")
            out.append({"request_id": p.stem, "step": j.get("step", "received"),
                        "patients": list(j.get("patients", [])),
                        "committed": staged is not None and staged == digest})
        return out

    def committed_erased(self) -> dict[str, str]:
        """The deletion registry as committed: without the patients of erasures that
        stopped before their commit point (they are rolled back and served again)."""
        erased = self.erased()
        for j in self.in_flight():
            if not j["committed"]:
                for pid in j["patients"]:
                    if erased.get(pid) == j["request_id"]:
                        erased.pop(pid)
        return erased

    def committed_lineage(self) -> Lineage:
        """The lineage graph as committed: ``lineage.json``, or the staged graph of an
        erasure whose index swap (its commit point) happened before it stopped."""
        staged = self.path / STAGED_LINEAGE
        if staged.exists() and any(j["committed"] for j in self.in_flight()):
            return Lineage.load(staged)
        if _stamp(self.lineage_path) == self._lineage_stamp:
            return self.lineage
        return Lineage.load(self.lineage_path)

    # -- the deletion registry, bound to the log --------------------------------------------
    def erased_digest(self, pid: str) -> str:
        return self.keys.id_digest(pid, create=True)

    def erasure_binding(self, entries: list[dict] | None = None) -> list[str]:
        """Disagreements between ``erased.json`` and the keyed digests the log's
        ``erasure.data_deleted`` entries carry (empty = bound). Patients of an erasure still
        in flight may be in the registry before their entry is logged; requests logged
        before digests were recorded (older runs) cannot be checked and are skipped."""
        if entries is None:
            entries = self.audit.entries()
        logged: dict[str, str] = {}
        recorded, legacy = set(), set()
        for e in entries:
            if e.get("kind") != "erasure.data_deleted":
                continue
            data = e.get("data", {})
            if "erased_ids" in data:
                recorded.add(data.get("request_id"))
                for d in data["erased_ids"]:
                    logged.setdefault(d, data.get("request_id"))
            else:
                legacy.add(data.get("request_id"))
        erased = self.erased()
        secret = self.keys.secret()
        if logged and secret is None:
            return ["the run's secret for erased-id digests (keys/private/erased-ids.key) is "
                    "missing: the deletion registry cannot be checked against the log"]
        flying = {j["request_id"] for j in self.in_flight()}
        problems, seen = [], set()
        for pid, rid in sorted(erased.items()):
            d = self.keys.id_digest(pid) if secret is not None else None
            seen.add(d)
            if rid in flying or (rid in legacy and rid not in recorded):
                continue
            if d is not None and d in logged:
                if logged[d] != rid:
                    problems.append(f"erased.json attributes a patient to request {rid}, the "
                                    f"audit log to request {logged[d]}")
            else:
                problems.append(f"erased.json lists a patient (request {rid}) that no audit "
                                "entry records as erased: the registry was edited")
        missing = {d: r for d, r in logged.items() if d not in seen}
        for d, rid in sorted(missing.items(), key=lambda kv: (str(kv[1]), kv[0])):
            problems.append(f"a patient erased by request {rid} (audit digest {d[:12]}) is "
                            "missing from erased.json: the registry was edited, and the "
                            "patient's rows would be used again")
        return problems

    # -- consistency -----------------------------------------------------------------------
    def consistency(self) -> list[str]:
        """Problems between store, lineage, log and deletion registry (empty = consistent)."""
        problems = list(self.store.verify())
        pending = sorted(self.journal_dir.glob("*.json")) if self.journal_dir.exists() else []
        problems += [f"erasure {p.stem} is still in flight; run recovery" for p in pending]
        orphans = self.store.blob_digests() - self.store.referenced()
        if orphans:
            problems.append(f"{len(orphans)} unreferenced checkpoint objects (stale) on disk")
        stray = self.stray_files()
        if stray:
            problems.append(f"{len(stray)} temporary files left by interrupted writes "
                            f"({', '.join(stray[:3])}{' ...' if len(stray) > 3 else ''}); "
                            "recovery removes them")
        entries = self.audit.entries()
        problems += [f"deletion registry: {p}" for p in self.erasure_binding(entries)]
        logged = set()
        for e in entries:
            if e["kind"] in ("checkpoint", "erasure.committed"):
                for c in e["data"].get("checkpoints", [e["data"]]):
                    logged.add(c.get("digest"))
        lin = {
            (a["model"], a["round"], a["digest"])
            for _, a in self.lineage.g.nodes(data=True)
            if a.get("kind") == "checkpoint"
        }
        for model in self.store.models():
            for r in self.store.rounds(model):
                d = self.store.entry(model, r)["digest"]
                if d not in logged:
                    problems.append(f"checkpoint {model}@{r} has no audit entry")
                if (model, r, d) not in lin:
                    problems.append(f"checkpoint {model}@{r} is not in the lineage graph")
        if len(lin) != sum(len(self.store.rounds(m)) for m in self.store.models()):
            problems.append("the lineage graph names checkpoints the store does not hold")
        for pid in self.erased():
            if self.lineage.contributions(pid):
                problems.append(f"erased patient {pid} still has lineage contributions")
        audit = self.audit.verify()
        if not audit.ok:
            problems.append(f"audit log: {audit.reason}")
        return problems


class CheckpointSink:
    """The ``on_checkpoint`` callback :func:`record_model` hands an adapter's ``fit``: call it
    with a :class:`Checkpoint` after every round. ``wants_state(round)`` says which rounds
    the store will keep; an adapter may hand the other rounds over without party states
    (round and ``ids_used``, all the lineage needs), which saves copying every party's
    parameters and optimizer state each round. Adapters that ignore it stay correct."""

    def __init__(self, fn, wants_state):
        self.fn, self.wants_state = fn, wants_state

    def __call__(self, ckpt: Checkpoint) -> None:
        self.fn(ckpt)


def record_model(run: RunDir, lineage: Lineage, index: dict, adapter, model: str, trainer,
                 resume: Checkpoint | None, log_each: bool) -> list[dict]:
    """Fit ``model`` (from ``resume`` or from scratch), writing retained checkpoints into
    ``index`` and rounds into ``lineage``. Returns the written checkpoint entries."""
    trainer.ensure_setup()
    first = 0 if resume is None else resume.round + 1
    lineage.drop_model_from(model, first)
    run.store.drop_rounds(model, [r for r in run.store.rounds(model, index) if r >= first], index)
    if resume is None:
        lineage.add_setup(model, trainer.setup_ids())
    keep = run.retention(trainer)
    last = trainer.n_rounds - 1
    written = []

    def on_checkpoint(ckpt: Checkpoint) -> None:
        lineage.add_round(model, ckpt.round, ckpt.ids_used)
        if keep.keep(ckpt.round, last):
            if not ckpt.states:
                raise RuntimeError(f"round {ckpt.round} of {model} is retained but the "
                                   "trainer handed over no party states")
            entry = run.store.write(ckpt, index)
            lineage.add_checkpoint(model, ckpt.round, entry["digest"])
            item = {"model": model, "round": ckpt.round, "digest": entry["digest"]}
            written.append(item)
            if log_each:
                run.store.flush(index)
                run.audit.append("checkpoint", **item, parties=entry["parties"])

    # blob files are written while the next rounds train; all on disk when the block ends
    with run.store.write_behind():
        adapter.fit(model, trainer,
                    CheckpointSink(on_checkpoint, lambda r: keep.keep(r, last)), resume)
    index["models"].setdefault(model, {"rounds": {}})["final_round"] = last
    # What the parties keep themselves, outside the store (horizontal: each client's own
    # update log, for approximate removal), follows the model it came from. A replay
    # rewrites it before the commit point; a crashed erasure is always served to the end
    # (ErasureService.recover), so it ends equal to the committed model's.
    keep_owned = getattr(adapter, "keep_owner_records", None)
    if keep_owned is not None:
        keep_owned(run, model, trainer, first)
    return written


def publish(run: RunDir, lineage: Lineage, index: dict, adapter) -> dict:
    version = int(run.spec.get("published", {}).get("version", 0)) + 1
    finals = {m: index["models"][m]["final_round"] for m in adapter.models()}
    sources = [round_node(m, r) for m, r in finals.items()]
    name = "ensemble" if len(finals) > 1 else "model"
    lineage.publish(name, sources, version=version)
    digests = {m: index["models"][m]["rounds"][str(r)]["digest"] for m, r in finals.items()}
    return {"name": name, "version": version, "final_rounds": finals, "digests": digests}


def train_run(path: str | Path, spec: dict, *, progress: bool = False) -> RunDir:
    """Train every model of a new run with checkpoints, lineage and audit entries (holding
    the new run directory's lock)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with locking.run_lock(path, timeout=0):
        return _train_run(path, spec, progress)


def _train_run(path: Path, spec: dict, progress: bool) -> RunDir:
    if (path / "run.json").exists():
        raise RunDirError(f"{path} already holds a run; choose an empty --out folder")
    spec = {"format": RUN_FORMAT, **spec}
    t0 = time.perf_counter()
    if "aligned" not in spec:
        # The adapter aligns the parties once (vertical: private set intersection; each
        # party stores its own result).
        align = getattr(adapter_class(spec), "align", None)
        if align is None:
            raise RunDirError(
                f"the run manifest gives no 'aligned' ids and its adapter "
                f"{adapter_name(spec)!r} cannot align the parties' ids; add 'aligned'"
            )
        aligned = [str(i) for i in align(spec, progress=progress)]
    else:
        aligned = list(spec.pop("aligned"))
    atomic_write(path / "aligned.json", json.dumps(aligned))
    atomic_write(path / "run.json", json.dumps(spec, indent=1))
    run = RunDir(path)
    run.audit.append("run.started", spec_sha256=sha256(json.dumps(spec, sort_keys=True).encode()),
                     mode=spec["mode"], aligned=len(aligned))
    run.keys.secret(create=True)  # for keyed digests of erased ids (erasure_binding)
    adapter = run.adapter()
    index, lineage = run.store.index, run.lineage
    times = {}
    for model in adapter.models():
        t = time.perf_counter()
        record_model(run, lineage, index, adapter, model, adapter.trainer(model), None, True)
        times[model] = time.perf_counter() - t
    run.store.flush(index)
    pub = publish(run, lineage, index, adapter)
    run.save_lineage(lineage)
    run.spec["published"] = pub
    run.spec["train_seconds"] = time.perf_counter() - t0
    run.spec["model_seconds"] = times
    run.save_spec()
    run.audit.append("model.published", **pub)
    # every party gets its signing key now (registered in the log), so that its data
    # deletions and the certificates it co-signs need no key set-up later
    for party in lineage.g.graph.get("parties", []):
        run.audit.register(party)
    run.audit.append("run.finished", seconds=run.spec["train_seconds"],
                     index_sha256=run.store.index_digest())
    return run
