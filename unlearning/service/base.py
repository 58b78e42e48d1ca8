"""What every kind of erasure request shares: the run's lock and the checks made on taking
it, the journal, crash recovery, and the last steps (commit, purge, verify, certificate).

Steps. received -> located (lineage) -> data deleted at every holder -> model unlearned
(staged) -> committed (checkpoint index swapped atomically) -> stale checkpoints purged ->
verified -> certificate issued. Every step is an audit-log entry, and a journal file under
``RUN_DIR/journal`` (:class:`Journal`) records how far a request got. After a crash,
:meth:`ServiceBase.recover` rolls a request back to the last consistent state (staged
checkpoints that were never committed are deleted) and then serves it to the end; once the
index swap happened it rolls forward.

Data deletion is a message: every party holding the request's rows is asked to delete them
(``data.erase``) and answers ``data.erased`` (rows deleted, rows left, digest of the ids it
keeps), through the run's adapter (:meth:`vfl.core.rounds.AdapterBase.erase_at_parties`).
The ``erasure.data_deleted`` entry records the answers (``acks``; each digest of the ids a
party keeps is keyed under the run's secret, so the log does not let anyone who knows the
id list find the erased id) and is signed by the parties that deleted; then the deletion
registry (``erased.json``) the adapters rebuild the parties' data from records the ids.

Every public call holds the run directory's lock (:meth:`RunDir.lock`; ``lock_timeout``:
None waits, 0 refuses, else seconds) and, when it takes the lock, first finishes what a
crash left (a torn audit append, stray temporary files) and refuses to go on
(:class:`AuditTamperError`, :class:`RunInconsistentError`) when the audit log does not
verify or ``erased.json`` is not bound to it.

The kinds of request (:class:`RequestKind`: patients, :mod:`unlearning.service.patient`; a
whole client, :mod:`unlearning.service.client_removal`) plug in how a new request is
checked and received, how it is located, deleted and unlearned, who co-signs it, and what
its certificate and verification add.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from unlearning import certificate as certs
from unlearning.errors import (
    AuditTamperError,
    ErasureInterrupted,
    MethodUnavailableError,
    RunInconsistentError,
    UnlearningError,
)
from unlearning.keys import COORDINATOR
from unlearning.lineage import Lineage
from unlearning.run import STAGED_LINEAGE, RunDir
from unlearning.store import atomic_write, sha256
from unlearning.verification import checkpoints_free_of, figures
from vfl.core import fileio

#: audit-log faults a crash in the middle of an append leaves (AuditLog.repair finishes them)
REPAIRABLE = ("torn_append", "appended_after_head", "head_record_stale")
STEPS = ("received", "located", "data_deleted", "unlearned", "committed", "purged",
         "verified", "certified")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Journal:
    """How far one request got: ``RUN_DIR/journal/REQUEST_ID.json`` (fields left unset are
    not written). It names the patients in the clear, so it is deleted once the request
    is certified."""

    kind: str = "patients"  # the RequestKind that serves it
    request: dict = field(default_factory=dict)  # the request's to_json()
    patients: list[str] = field(default_factory=list)  # the ids this request erases
    holders: dict = field(default_factory=dict)  # patients: {id: [party]}; a client: {c: n}
    t0: float | None = None  # wall clock when received
    step: str = "received"  # the last step done
    client: str | None = None  # a client removal: the leaving client
    location: dict | None = None  # patients: per model, first influence and rollback
    original: dict | None = None  # a client removal: the model's figures before it
    unlearned: dict | None = None  # per model: rollback, rounds replayed, checkpoints
    published: dict | None = None  # the published model after the request
    staged_index_sha256: str | None = None  # the staged index (equal once committed)
    unlearn_seconds: float | None = None
    calibration: dict | None = None  # a client removal: FedEraser settings and cost

    @classmethod
    def from_json(cls, data: dict) -> Journal:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


def require(adapter, methods, what: str) -> None:
    """Refuse (before anything is written) a request the run's adapter cannot serve."""
    missing = [m for m in methods if not callable(getattr(adapter, m, None))]
    if missing:
        raise MethodUnavailableError(
            f"this run's trainer adapter ({type(adapter).__module__}."
            f"{type(adapter).__name__}) cannot {what}: it has no {', '.join(missing)} "
            "(nothing was changed)"
        )


class RequestKind(ABC):
    """One kind of request. ``kind`` names it in the journal; ``request_type`` is the
    request class it serves."""

    kind = ""
    request_type: type = object

    def __init__(self, service: ServiceBase):
        self.service = service

    @property
    def run(self) -> RunDir:
        return self.service.run

    @abstractmethod
    def start(self, request) -> dict:
        """Serve a request that has no journal: an earlier certificate, or check (nothing
        written before the checks pass), receive and serve it."""

    @abstractmethod
    def unlearn(self, rid: str, j: Journal, t0: float) -> None:
        """located -> data deleted -> unlearned, up to the index swap (the commit point)."""

    @abstractmethod
    def parties(self, j: Journal) -> list[str]:
        """The parties that deleted the request's data (they co-sign the certificate)."""

    def certificate_extra(self, j: Journal) -> dict:
        """Further top-level certificate fields."""
        return {}

    def verify_extra(self, adapter, trainers: dict, retrain: dict | None, j: Journal) -> dict:
        """Further verification figures."""
        return {}


class ServiceBase:
    """The lifecycle every request kind shares; ``KINDS`` are the kinds it serves."""

    KINDS: tuple[type[RequestKind], ...] = ()

    def __init__(self, run: RunDir | str, *, crash_at: str | None = None,
                 retrain: bool = False, on_step: Callable[[str, dict], None] | None = None,
                 verify_seed: int = 0, lock_timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None):
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        if crash_at is not None and crash_at not in STEPS:
            raise ValueError(f"crash_at must be one of {STEPS}")
        self.crash_at = crash_at
        self.retrain = retrain
        self.on_step = on_step or (lambda step, info: None)
        self.verify_seed = verify_seed
        self.lock_timeout = lock_timeout
        self.on_wait = on_wait
        self.repairs: list[str] = []  # what taking the lock last had to finish or clean
        self._staged_rid: str | None = None  # request whose lineage run.lineage holds, staged
        self.kinds = {k.kind: k(self) for k in self.KINDS}

    def kind_of(self, request) -> RequestKind:
        for kind in self.kinds.values():
            if isinstance(request, kind.request_type):
                return kind
        raise UnlearningError(f"no request kind serves a {type(request).__name__}")

    # -- the run's lock and the checks made on taking it ---------------------------------------
    @contextlib.contextmanager
    def session(self):
        """Hold the run's lock for the block (within a held lock: nothing more); on taking
        it, finish what a crash left and refuse a log that does not verify or a registry
        not bound to it."""
        if self.run.holds_lock():
            yield self.run
            return
        with self.run.lock(timeout=self.lock_timeout, on_wait=self.on_wait) as run:
            self._open_checks(run)
            yield run

    def _open_checks(self, run: RunDir) -> None:
        result = run.audit.verify()
        fixes = []
        if not result.ok and result.fault in REPAIRABLE:
            fixes = run.audit.repair()  # an append a crash cut short
            result = run.audit.verify()
        if not result.ok:
            raise AuditTamperError(
                f"refusing to change run {run.path}: its audit log does not verify (entry "
                f"{result.first_bad}: {result.reason}). Nothing was changed; inspect it with "
                "`vfl audit verify` and restore the log from a trusted copy"
            )
        problems = run.erasure_binding()
        if problems:
            raise RunInconsistentError(
                f"refusing to change run {run.path}: its deletion registry (erased.json) is not "
                f"the one the audit log records: {'; '.join(problems[:3])}"
                f"{' ...' if len(problems) > 3 else ''}. Nothing was changed; restore "
                "erased.json from a trusted copy (`vfl check` lists every problem)"
            )
        stray = run.clean_stray()
        self.repairs = fixes + [f"removed {p}" for p in stray]
        if self.repairs:
            run.audit.append("run.repaired", fixes=fixes, stray_files=len(stray))

    # -- journal ---------------------------------------------------------------------------
    def journal_path(self, rid: str):
        return self.run.journal_dir / f"{rid}.json"

    def read_journal(self, rid: str) -> Journal:
        return Journal.from_json(json.loads(self.journal_path(rid).read_text()))

    def journal(self, rid: str, **state) -> Journal:
        """Update the request's journal with ``state`` (durably)."""
        path = self.journal_path(rid)
        j = self.read_journal(rid) if path.exists() else Journal()
        for name, value in state.items():
            if not hasattr(j, name):
                raise TypeError(f"a journal has no field {name!r}")
            setattr(j, name, value)
        atomic_write(path, json.dumps(j.to_json(), indent=1), fsync=self.run.fsync)
        return j

    def stage_lineage(self, rid: str) -> Lineage:
        """The lineage a request stages: the run's own graph, changed in place (copying a
        graph of ~10k nodes cost as much as a shard's replay). Nothing reads the committed
        graph until the commit; :meth:`_serve` reloads it from disk if serving fails."""
        self._staged_rid = rid
        return self.run.lineage

    def done(self, rid: str, step: str, info: dict) -> None:
        self.journal(rid, step=step)
        self.on_step(step, info)
        if self.crash_at == step:
            raise ErasureInterrupted(
                f"simulated crash after step {step!r} of {rid}; reopen the run and call "
                "recover() (or rerun `vfl erase`)"
            )

    def digests(self, pids) -> list[str]:
        """The erased ids' keyed digests (what the log carries instead of the ids)."""
        return sorted(self.run.erased_digest(p) for p in pids)

    def delete_at_parties(self, adapter, pids, holders) -> dict[str, dict]:
        """Every party holding rows of ``pids`` deletes them (``data.erase``, through the
        adapter); returns their ``data.erased`` answers as the log records them: rows
        deleted, rows left and the party's digest of the ids it keeps, keyed under the
        run's secret. Every one of ``holders`` must have answered."""
        acks = adapter.erase_at_parties(pids)
        missing = sorted(set(holders) - set(acks))
        if missing:
            raise UnlearningError(
                f"parties {missing} hold the request's rows but did not confirm deleting them; "
                "nothing was committed: serve the request again (`vfl erase`)"
            )
        return {p: {"deleted": int(a["deleted"]), "rows_left": int(a["rows_left"]),
                    "remaining_ids": self.run.erased_digest(str(a["ids_digest"]))}
                for p, a in sorted(acks.items())}

    # -- public API ------------------------------------------------------------------------
    def submit(self, request) -> dict:
        with self.session():
            rid = request.request_id
            if self.journal_path(rid).exists():
                return self._resume(rid)
            return self.kind_of(request).start(request)

    def recover(self) -> list[dict]:
        """Serve every erasure a crash interrupted to the end (under the lock; stray
        temporary files are removed on taking it). Returns their certificates."""
        with self.session():
            if not self.run.journal_dir.exists():
                return []
            return [self._resume(p.stem) for p in sorted(self.run.journal_dir.glob("*.json"))]

    # -- serving ---------------------------------------------------------------------------
    def _certified(self, rid: str) -> dict | None:
        """The request's certificate, if it was written and logged (then only removing its
        journal was left undone)."""
        cert = self.run.certificate(rid)
        if cert is None:
            return None
        digest = sha256(certs.canonical(cert))
        for e in reversed(self.run.audit.entries()):
            if e["kind"] == "erasure.certificate" and e["data"].get("request_id") == rid:
                return cert if e["data"].get("certificate_sha256") == digest else None
        return None

    def _resume(self, rid: str) -> dict:
        run = self.run
        done = self._certified(rid)
        if done is not None:
            # certified before the crash: the journal (patient ids in the clear) is all
            # that was left
            fileio.remove(self.journal_path(rid))
            return done
        j = self.read_journal(rid)
        staged = run.path / STAGED_LINEAGE
        committed = (j.staged_index_sha256 is not None
                     and j.staged_index_sha256 == run.store.index_digest())
        if committed:
            action = "roll forward"
        else:
            # Roll back: drop everything staged and never committed, then serve again.
            fileio.remove(staged)
            run.store.gc()
            action = "roll back staged work, then serve"
        run.audit.append("erasure.resumed", request_id=rid, after_step=j.step, action=action)
        return self.serve(rid, time.perf_counter(), committed=committed)

    def serve(self, rid: str, t0: float, committed: bool = False) -> dict:
        """Serve a received request to the end (``committed``: its index swap happened)."""
        try:
            if not committed:
                j = self.read_journal(rid)
                self.kinds[j.kind].unlearn(rid, j, t0)
            return self._finish(rid)
        except BaseException:
            # The staged lineage was built in place (no copy of the whole graph): after a
            # failure the file on disk, untouched until the commit, is the truth again.
            self._staged_rid = None
            self.run.lineage = Lineage.load(self.run.lineage_path)
            raise

    def _finish(self, rid: str) -> dict:
        """committed -> purged -> verified -> certified (every kind of request)."""
        run = self.run
        j = self.read_journal(rid)
        kind = self.kinds[j.kind]
        request, pids = j.request, j.patients
        staged_path = run.path / STAGED_LINEAGE
        if staged_path.exists():
            run.commit_lineage(staged_path)
        # the graph just saved as the staged file, when this process built it; else reload
        if self._staged_rid != rid:
            run.reload_lineage()
        self._staged_rid = None
        run.spec["published"] = j.published
        run.save_spec()
        written = [c for s in j.unlearned.values() for c in s["checkpoints"]]
        if not any(e["kind"] == "erasure.committed" and e["data"]["request_id"] == rid
                   for e in run.audit.entries()[-50:]):
            run.audit.append("erasure.committed", request_id=rid, checkpoints=written,
                             index_sha256=run.store.index_digest(), published=j.published)
        self.done(rid, "committed", {"checkpoints": len(written)})
        # purge stale checkpoints (every object no index entry names)
        gone = run.store.gc()
        leftovers = checkpoints_free_of(run.store, run.lineage, pids)
        run.audit.append("erasure.purged", request_id=rid, objects=len(gone),
                         influenced_checkpoints_left=len(leftovers))
        self.done(rid, "purged", {"objects": len(gone)})
        # verify
        verification = self._verify(kind, pids, j)
        run.audit.append("erasure.verified", request_id=rid,
                         **{k: v for k, v in verification.items() if not isinstance(v, list)})
        self.done(rid, "verified", verification)
        # certificate
        extra = kind.certificate_extra(j)
        warnings = [s["warning"] for s in j.unlearned.values() if s.get("warning")]
        if warnings:
            extra["warnings"] = warnings
        cert = certs.build(
            request,
            method=request["method"],
            rollback={m: s["rollback"] for m, s in j.unlearned.items()},
            models={m: {k: s[k] for k in ("rounds_replayed", "rounds_total", "seconds")}
                    for m, s in j.unlearned.items()},
            verification=verification | {"influenced_checkpoints_left": leftovers},
            log_position=run.audit.position,
            log_prev_hash=run.audit.last_hash,
            index_sha256=run.store.index_digest(),
            purged=len(gone),
            seconds=float(j.unlearn_seconds or 0.0),
            **extra,
        )
        digest = certs.write(run.cert_dir / f"{rid}.json", cert, fsync=run.fsync)
        # the parties that deleted co-sign the certificate entry: their head records then
        # cover the whole request
        run.audit.append("erasure.certificate", by=(COORDINATOR, *kind.parties(j)),
                         request_id=rid, certificate_sha256=digest)
        fileio.remove(self.journal_path(rid))
        self.on_step("certified", {"certificate": str(run.cert_dir / f"{rid}.json")})
        return cert

    def _verify(self, kind: RequestKind, pids, j: Journal) -> dict:
        run = self.run
        adapter, trainers = run.final_trainers()
        retrain = None
        if self.retrain:
            t1 = time.perf_counter()
            rt = {}
            for m in adapter.models():
                rt[m] = adapter.trainer(m)
                adapter.fit(m, rt[m], None, None)
            retrain = {"trainers": rt, "seconds": time.perf_counter() - t1}
        attacked = sorted(set(pids) | set(run.erased()))
        out = figures(adapter, trainers, attacked, seed=self.verify_seed, retrain=retrain,
                      seconds=float(j.unlearn_seconds or 0.0))
        out |= {"mia_rows": "every row erased from this run so far",
                "request_training_rows": len(adapter.training_ids(pids))}
        return out | kind.verify_extra(adapter, trainers, retrain, j)
