"""Erasure requests and their lifecycle.

received -> located (lineage) -> data deleted at every holder -> model unlearned (staged)
-> committed (checkpoint index swapped atomically) -> stale checkpoints purged -> verified
-> certificate issued. Every step is an audit-log entry, and a journal file under
``RUN_DIR/journal`` records how far a request got. After a crash, :meth:`ErasureService.
recover` rolls a request back to the last consistent state (staged checkpoints that were
never committed are deleted) and then serves it to the end; once the index swap happened it
rolls forward. Repeated requests return the earlier certificate; unknown patients raise
:class:`UnknownPatientError` before anything is written.

Every public call holds the run directory's lock (:meth:`RunDir.lock`; ``lock_timeout``:
None waits, 0 refuses, else seconds) and, when it takes the lock, first finishes what a
crash left (a torn audit append, stray temporary files) and refuses to go on
(:class:`AuditTamperError`, :class:`RunInconsistentError`) when the audit log does not
verify or ``erased.json`` is not bound to it. The log names no patient: locations are
counted per party and the data deletion carries the erased ids' keyed digests, signed by
every party that deleted; the certificate entry is co-signed by those parties.

A :class:`ClientRemovalRequest` (a hospital leaves a horizontal federation) goes through the
same steps and journal with ``method="approx"``: located (every row of the client), data
deleted at the client (its rows and its own update log), model unlearned by FedEraser-style
calibrated replay from the remaining clients' update logs (:mod:`unlearning.methods.
approximate`), committed, purged (every checkpoint of the model is replaced by the one
unlearned checkpoint), verified (against an exact retrain without the client when
``retrain=True``) and certified (``"guarantee": "approximate"`` plus the calibration).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from horizontal import federaser as approximate
from unlearning import certificate as certs
from unlearning.errors import (
    AuditTamperError,
    ErasureInterrupted,
    MethodUnavailableError,
    RunInconsistentError,
    UnknownPartyNameError,
    UnknownPatientError,
    UnlearningError,
)
from unlearning.keys import COORDINATOR
from unlearning.lineage import Lineage
from unlearning.methods import exact
from unlearning.methods.sisa import is_sisa
from unlearning.run import STAGED_LINEAGE, RunDir, publish
from unlearning.store import atomic_write, sha256
from unlearning.verification import checkpoints_free_of, figures, heldout_figures
from vfl.core import fileio

METHODS = ("exact", "sisa", "approx")
PATIENT_METHODS = ("exact", "sisa")
APPROX_GUARANTEE = (
    "approximate: FedEraser-style calibrated replay from the remaining clients' stored "
    "updates; the client's rows and update log are deleted and no checkpoint it influenced "
    "is kept, but the model is not equal to a retrain without it (see verification)"
)
#: audit-log faults a crash in the middle of an append leaves (AuditLog.repair finishes them)
REPAIRABLE = ("torn_append", "appended_after_head", "head_record_stale")
STEPS = ("received", "located", "data_deleted", "unlearned", "committed", "purged",
         "verified", "certified")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ErasureRequest:
    patients: tuple[str, ...]
    party: str | None = None  # the party that received the request
    reason: str = "erasure request (GDPR art. 17)"
    time: str = field(default_factory=_now)
    method: str = "exact"

    def __post_init__(self):
        if isinstance(self.patients, str):
            self.patients = (self.patients,)
        self.patients = tuple(sorted({str(p) for p in self.patients}))
        if not self.patients:
            raise UnknownPatientError("an erasure request must name at least one patient id")
        if self.method == "approx":
            raise MethodUnavailableError(
                "approximate unlearning (method 'approx') removes a whole client (a hospital "
                "leaving a horizontal federation), not single patients: use method 'exact' "
                "or 'sisa' (--method exact|sisa) for patient ids, or remove the client "
                "(`vfl erase --client NAME --method approx`; ClientRemovalRequest)"
            )
        if self.method not in METHODS:
            raise MethodUnavailableError(
                f"unknown unlearning method {self.method!r}; choose one of {PATIENT_METHODS}"
            )

    @property
    def request_id(self) -> str:
        key = json.dumps({"patients": self.patients, "method": self.method})
        return "er-" + sha256(key.encode())[:16]

    def to_json(self) -> dict:
        return asdict(self) | {"patients": list(self.patients), "request_id": self.request_id}


class UnknownClientError(UnlearningError):
    """The client named by a removal request is not (or no longer) in the run."""


@dataclass
class ClientRemovalRequest:
    """A whole client (hospital) leaves a horizontal federation; served approximately.

    ``every``, ``calibration_fraction`` and ``between`` are FedEraser's calibration settings
    (:func:`horizontal.federaser.calibrated_replay`). The request id depends on
    the client and method only, so repeating a removal returns the earlier certificate."""

    client: str
    reason: str = "a client leaves the federation"
    time: str = field(default_factory=_now)
    method: str = "approx"
    every: int = 2
    calibration_fraction: float = 0.5
    between: str = "reuse"

    def __post_init__(self):
        if not isinstance(self.client, str) or not self.client:
            raise UnknownClientError("a client removal must name the client (e.g. hospital_2)")
        if self.method != "approx":
            raise MethodUnavailableError(
                f"a whole client is removed approximately (method 'approx'), not {self.method!r};"
                " to remove it exactly, erase its patients (method 'exact'), which equals a "
                "retrain without them"
            )
        if self.every < 1 or not 0.0 < self.calibration_fraction <= 1.0 or self.between not in (
                "reuse", "skip"):
            raise ValueError("calibration settings: every >= 1, calibration_fraction in (0, 1]"
                             ", between 'reuse' or 'skip'")

    @property
    def request_id(self) -> str:
        key = json.dumps({"client": self.client, "method": self.method})
        return "cr-" + sha256(key.encode())[:16]

    def to_json(self) -> dict:
        return asdict(self) | {"kind": "client_removal", "request_id": self.request_id}


class ErasureService:
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
    def _journal_path(self, rid: str):
        return self.run.journal_dir / f"{rid}.json"

    def _journal(self, rid: str, **state) -> dict:
        path = self._journal_path(rid)
        cur = json.loads(path.read_text()) if path.exists() else {}
        cur.update(state)
        atomic_write(path, json.dumps(cur, indent=1), fsync=self.run.fsync)
        return cur

    def _stage_lineage(self, rid: str) -> Lineage:
        """The lineage a request stages: the run's own graph, changed in place (copying a
        graph of ~10k nodes cost as much as a shard's replay). Nothing reads the committed
        graph until the commit; :meth:`_serve` reloads it from disk if serving fails."""
        self._staged_rid = rid
        return self.run.lineage

    def _done(self, rid: str, step: str, info: dict) -> None:
        self._journal(rid, step=step)
        self.on_step(step, info)
        if self.crash_at == step:
            raise ErasureInterrupted(
                f"simulated crash after step {step!r} of {rid}; reopen the run and call "
                "recover() (or rerun `vfl erase`)"
            )

    # -- public API ------------------------------------------------------------------------
    def submit(self, request: ErasureRequest | ClientRemovalRequest) -> dict:
        with self.session():
            return self._submit(request)

    def _submit(self, request: ErasureRequest | ClientRemovalRequest) -> dict:
        run = self.run
        rid = request.request_id
        if self._journal_path(rid).exists():
            return self._resume(rid)
        removal = isinstance(request, ClientRemovalRequest)
        earlier = run.certificate(rid) if removal else self._already(request)
        if earlier is not None:
            return earlier
        if removal:
            return self._submit_client_removal(request)
        erased = run.erased()
        todo = [p for p in request.patients if p not in erased]
        adapter = run.adapter()
        holders = {p: adapter.holders(p) for p in todo}
        unknown = [p for p, h in holders.items() if not h]
        if unknown:
            raise UnknownPatientError(
                f"no party holds patient(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
                f" in this run; check the pseudonymous id (nothing was changed)"
            )
        if request.method == "sisa" and not is_sisa(run.spec):
            raise MethodUnavailableError(
                "this run was not trained with SISA shards/slices; use --method exact, or "
                "train a SISA run (scenarios.erasure_request does)"
            )
        parties = list(run.lineage.g.graph.get("parties", []))
        if request.party is not None and parties and request.party not in parties:
            raise UnknownPartyNameError(
                f"--party {request.party!r} is not a party of this run (its parties: "
                f"{parties}); name the party that received the request, or leave it out "
                "(nothing was changed)"
            )
        t0 = time.perf_counter()
        self._journal(rid, request=request.to_json(), patients=todo, holders=holders,
                      t0=time.time())
        # the party that received the request co-signs it (when it is one of the run's)
        received_by = [COORDINATOR] + (
            [request.party] if request.party in run.lineage.g.graph.get("parties", []) else [])
        run.audit.append("erasure.received", by=received_by, request_id=rid,
                         patients=len(todo), party=request.party, reason=request.reason,
                         time=request.time, method=request.method)
        self._done(rid, "received", {"request_id": rid, "patients": len(todo)})
        return self._serve(rid, t0)

    def submit_many(self, requests: list[ErasureRequest]) -> dict:
        """Serve requests of one method together (one replay per influenced model)."""
        if any(isinstance(r, ClientRemovalRequest) for r in requests):
            raise MethodUnavailableError("submit client removals one at a time with submit()")
        methods = {r.method for r in requests}
        if len(methods) != 1:
            raise MethodUnavailableError("a batch must use one method")
        merged = ErasureRequest(
            tuple(p for r in requests for p in r.patients),
            party=requests[0].party,
            reason="; ".join(sorted({r.reason for r in requests})),
            method=methods.pop(),
        )
        return self.submit(merged)

    def recover(self) -> list[dict]:
        """Serve every erasure a crash interrupted to the end (under the lock; stray
        temporary files are removed on taking it). Returns their certificates."""
        with self.session():
            if not self.run.journal_dir.exists():
                return []
            return [self._resume(p.stem) for p in sorted(self.run.journal_dir.glob("*.json"))]

    # -- internals -------------------------------------------------------------------------
    def _digests(self, pids) -> list[str]:
        return sorted(self.run.erased_digest(p) for p in pids)

    @staticmethod
    def _parties(j: dict) -> list[str]:
        """The parties that deleted the request's data."""
        if j.get("kind") == "client_removal":
            return [j["client"]]
        return sorted({h for hs in j["holders"].values() for h in hs})

    def _already(self, request: ErasureRequest) -> dict | None:
        cert = self.run.certificate(request.request_id)
        if cert is not None:
            return cert
        erased = self.run.erased()
        if all(p in erased for p in request.patients):
            rids = sorted({erased[p] for p in request.patients})
            cert = self.run.certificate(rids[0])
            if cert is not None:
                return cert if len(rids) == 1 else cert | {"covered_by": rids}
        return None

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
            fileio.remove(self._journal_path(rid))
            return done
        j = json.loads(self._journal_path(rid).read_text())
        step = j.get("step", "received")
        staged = run.path / STAGED_LINEAGE
        committed = j.get("staged_index_sha256") == run.store.index_digest() and j.get(
            "staged_index_sha256") is not None
        if committed:
            action = "roll forward"
        else:
            # Roll back: drop everything staged and never committed, then serve again.
            fileio.remove(staged)
            run.store.gc()
            action = "roll back staged work, then serve"
        run.audit.append("erasure.resumed", request_id=rid, after_step=step, action=action)
        return self._serve(rid, time.perf_counter(), committed=committed)

    def _serve(self, rid: str, t0: float, committed: bool = False) -> dict:
        try:
            if not committed:
                j = json.loads(self._journal_path(rid).read_text())
                if j.get("kind") == "client_removal":
                    self._unlearn_client(rid, j, t0)
                else:
                    self._unlearn_patients(rid, j, t0)
            return self._finish(rid)
        except BaseException:
            # The staged lineage was built in place (no copy of the whole graph): after a
            # failure the file on disk, untouched until the commit, is the truth again.
            self._staged_rid = None
            self.run.lineage = Lineage.load(self.run.lineage_path)
            raise

    def _unlearn_patients(self, rid: str, j: dict, t0: float) -> None:
        """located -> data deleted -> unlearned (exact replay) -> the index swap."""
        run = self.run
        request, pids = j["request"], j["patients"]
        method = request["method"]
        staged_path = run.path / STAGED_LINEAGE
        # located
        models = run.adapter().models()
        location = exact.plan(run.lineage, pids, models)
        influenced = run.lineage.influenced(pids)
        run.audit.append(
            "erasure.located", request_id=rid, holders=_per_party(j["holders"]),
            models={m: {"first_influence": v["first_influence"], "rollback": v["rollback"]}
                    for m, v in location.items()},
            rounds={m: len(r) for m, r in influenced["rounds"].items()},
            checkpoints={m: len(r) for m, r in influenced["checkpoints"].items()},
            published=influenced["models"],
        )
        self._journal(rid, location=location)
        self._done(rid, "located", {"models": {m: v["rollback"] for m, v in
                                               location.items()}})
        # data deleted at every holder (the deletion registry the loaders honour)
        run.record_erased(pids, rid)
        parties = sorted({h for hs in j["holders"].values() for h in hs})
        run.audit.append("erasure.data_deleted", by=parties, request_id=rid, parties=parties,
                         patients=len(pids), erased_ids=self._digests(pids))
        self._done(rid, "data_deleted", {"parties": parties})
        # model unlearned into a staged index and lineage
        adapter = run.adapter()
        index = run.store.staged()
        lineage = self._stage_lineage(rid)
        result = exact.replay(run, adapter, lineage, index, location)
        lineage.remove_patient(pids, rid)
        pub = publish(run, lineage, index, adapter) if result else run.spec.get("published")
        lineage.save(staged_path, fsync=run.fsync)
        if run.fsync:
            os.sync()  # staged checkpoint objects are durable before the commit point
        summary = {m: {k: v for k, v in r.items() if k != "trainer"}
                   for m, r in result.items()}
        staged_sha = sha256(json.dumps(index, sort_keys=True, indent=1).encode())
        self._journal(rid, unlearned=summary, published=pub, staged_index_sha256=staged_sha,
                      unlearn_seconds=time.perf_counter() - t0)
        warnings = [s["warning"] for s in summary.values() if s.get("warning")]
        run.audit.append(
            "erasure.unlearned", request_id=rid, method=method,
            models={m: {k: s[k] for k in ("rollback", "rounds_replayed", "rounds_total",
                                          "seconds")} for m, s in summary.items()},
            **({"warnings": warnings} if warnings else {}),
        )
        self._done(rid, "unlearned", {m: s["rounds_replayed"] for m, s in summary.items()}
                   | ({"warnings": warnings} if warnings else {}))
        # commit: the atomic index swap is the commit point
        run.store.flush(index)

    def _finish(self, rid: str) -> dict:
        """committed -> purged -> verified -> certified (both kinds of request)."""
        run = self.run
        j = json.loads(self._journal_path(rid).read_text())
        request, pids = j["request"], j["patients"]
        staged_path = run.path / STAGED_LINEAGE
        if staged_path.exists():
            run.commit_lineage(staged_path)
        # the graph just saved as the staged file, when this process built it; else reload
        if self._staged_rid != rid:
            run.reload_lineage()
        self._staged_rid = None
        run.spec["published"] = j["published"]
        run.save_spec()
        written = [c for s in j["unlearned"].values() for c in s["checkpoints"]]
        if not any(e["kind"] == "erasure.committed" and e["data"]["request_id"] == rid
                   for e in run.audit.entries()[-50:]):
            run.audit.append("erasure.committed", request_id=rid, checkpoints=written,
                             index_sha256=run.store.index_digest(), published=j["published"])
        self._done(rid, "committed", {"checkpoints": len(written)})
        # purge stale checkpoints (every object no index entry names)
        gone = run.store.gc()
        leftovers = checkpoints_free_of(run.store, run.lineage, pids)
        run.audit.append("erasure.purged", request_id=rid, objects=len(gone),
                         influenced_checkpoints_left=len(leftovers))
        self._done(rid, "purged", {"objects": len(gone)})
        # verify
        verification = self._verify(pids, j)
        run.audit.append("erasure.verified", request_id=rid,
                         **{k: v for k, v in verification.items() if not isinstance(v, list)})
        self._done(rid, "verified", verification)
        # certificate
        extra = {}
        if j.get("kind") == "client_removal":
            extra = {"guarantee": APPROX_GUARANTEE, "calibration": j["calibration"]}
        warnings = [s["warning"] for s in j["unlearned"].values() if s.get("warning")]
        if warnings:
            extra["warnings"] = warnings
        cert = certs.build(
            request,
            method=request["method"],
            rollback={m: s["rollback"] for m, s in j["unlearned"].items()},
            models={m: {k: s[k] for k in ("rounds_replayed", "rounds_total", "seconds")}
                    for m, s in j["unlearned"].items()},
            verification=verification | {"influenced_checkpoints_left": leftovers},
            log_position=run.audit.position,
            log_prev_hash=run.audit.last_hash,
            index_sha256=run.store.index_digest(),
            purged=len(gone),
            seconds=float(j.get("unlearn_seconds", 0.0)),
            **extra,
        )
        digest = certs.write(run.cert_dir / f"{rid}.json", cert, fsync=run.fsync)
        # the parties that deleted co-sign the certificate entry: their head records then
        # cover the whole request
        run.audit.append("erasure.certificate", by=(COORDINATOR, *self._parties(j)),
                         request_id=rid, certificate_sha256=digest)
        fileio.remove(self._journal_path(rid))
        self.on_step("certified", {"certificate": str(run.cert_dir / f"{rid}.json")})
        return cert

    # -- a whole client leaves (approximate) -------------------------------------------------
    def _submit_client_removal(self, request: ClientRemovalRequest) -> dict:
        """A new removal (``submit`` has answered resumed and repeated ones)."""
        run = self.run
        rid = request.request_id
        pids = self._check_client_removal(request)
        t0 = time.perf_counter()
        self._journal(rid, kind="client_removal", request=request.to_json(),
                      client=request.client, patients=pids,
                      holders={request.client: len(pids)}, t0=time.time())
        run.audit.append("erasure.received", request_id=rid, client=request.client,
                         patients=len(pids), reason=request.reason, time=request.time,
                         method=request.method)
        self._done(rid, "received", {"request_id": rid, "client": request.client,
                                     "patients": len(pids)})
        return self._serve(rid, t0)

    def _check_client_removal(self, request: ClientRemovalRequest) -> list[str]:
        """Everything that can refuse the request, before anything is written; returns the
        client's ids not erased yet (all of its rows leave with it)."""
        run, client = self.run, request.client
        mode = run.spec["mode"]
        if mode != "horizontal":
            raise MethodUnavailableError(
                f"approximate removal of a whole client applies to horizontal (FedAvg) runs; "
                f"this is a {mode} run. A party leaving a vertical federation takes a feature "
                "block with it: retrain without that party, or erase patients exactly "
                "(--patient ID --method exact)"
            )
        if is_sisa(run.spec):
            raise MethodUnavailableError(
                "this horizontal run was trained with SISA shards/slices, whose clients keep "
                "no update logs; remove the client exactly by erasing its patients (--method "
                "sisa), which retrains only their shards"
            )
        adapter = run.adapter()
        approximate.check_supported(adapter.config)
        if client not in adapter.full_tables:
            raise UnknownClientError(
                f"no client named {client!r} in this run; its clients are "
                f"{sorted(adapter.full_tables)} (nothing was changed)"
            )
        erased = run.erased()
        pids = [str(i) for i in adapter.full_tables[client].ids if str(i) not in erased]
        if not pids:
            by = sorted({erased[str(i)] for i in adapter.full_tables[client].ids})
            raise UnknownClientError(
                f"client {client!r} holds no rows in this run any more (erased by {by}); "
                "there is nothing left to remove (nothing was changed)"
            )
        remaining = [n for n in adapter.model_tables("main") if n != client]
        if not remaining:
            raise MethodUnavailableError(
                f"removing {client!r} would leave no client with training rows; retire the "
                "run instead"
            )
        missing = [n for n in remaining if not approximate.update_log_path(
            run.path, n, "main").exists()]
        if not adapter.update_logs or missing:
            raise MethodUnavailableError(
                "approximate removal replays the remaining clients' own update logs, and this "
                f"run keeps none for {missing or remaining} (train it with "
                "client_update_logs=True, the default of horizontal_spec); or remove the "
                "client exactly by erasing its patients (--method exact)"
            )
        return pids

    def _unlearn_client(self, rid: str, j: dict, t0: float) -> None:
        """located -> data deleted at the client -> unlearned (calibrated replay) -> the
        index swap, in which the unlearned checkpoint replaces every checkpoint of the
        model (all of them were influenced by the client)."""
        run, client, pids, request = self.run, j["client"], j["patients"], j["request"]
        model = "main"
        # located; the original model's figures are kept for the report (once: after the
        # data deletion an interrupted request can no longer rebuild the original scaler)
        influenced = run.lineage.influenced(pids)
        original = j.get("original") or self._original_figures(model, set(pids))
        run.audit.append(
            "erasure.located", request_id=rid, client=client, holders={client: len(pids)},
            models={model: {"first_influence": -1, "rollback": None}},
            rounds={m: len(r) for m, r in influenced["rounds"].items()},
            checkpoints={m: len(r) for m, r in influenced["checkpoints"].items()},
            published=influenced["models"],
        )
        self._journal(rid, original=original)
        self._done(rid, "located", {"models": {model: None}, "client": client})
        # data deleted at the client: its rows and the update log it kept itself
        run.record_erased(pids, rid)
        approximate.delete_update_log(run.path, client, model)
        run.audit.append("erasure.data_deleted", by=[client], request_id=rid, parties=[client],
                         patients=len(pids), update_log_deleted=True,
                         erased_ids=self._digests(pids))
        self._done(rid, "data_deleted", {"parties": [client]})
        # model unlearned: the remaining federation, set up again (its scaler no longer has
        # the client's moments), rebuilds the global model from the owners' logs
        adapter = run.adapter()
        trainer = adapter.trainer(model)
        trainer.setup()
        logs = adapter.load_owner_logs(run, model, trainer.members, trainer.n_params)
        out = approximate.calibrated_replay(
            trainer, logs, every=request["every"],
            calibration_fraction=request["calibration_fraction"], between=request["between"])
        calibration = out["settings"] | {
            "calibration_rounds": out["calibration_rounds"], "rounds_used": out["rounds"],
            "local_steps": out["local_steps"], "seconds": out["seconds"],
            "start": "the initial model (round 0)", "remaining_clients": list(trainer.members),
            "update_log_bytes": {n: logs[n].nbytes for n in sorted(logs)},
            "update_logs_at": "each remaining client (RUN_DIR/owners/CLIENT), never the server",
            "scaler": "pooled over the remaining clients (refitted at setup)",
        }
        ckpt = adapter.checkpoint_with_global(model, trainer, out["params"],
                                              {"approximate": True, "request_id": rid})
        index, lineage = run.store.staged(), self._stage_lineage(rid)
        written = _replace_checkpoints(run, lineage, index, ckpt)
        lineage.remove_patient(pids, rid)
        pub = publish(run, lineage, index, adapter)
        lineage.save(run.path / STAGED_LINEAGE, fsync=run.fsync)
        if run.fsync:
            os.sync()  # the staged checkpoint is durable before the commit point
        summary = {model: {"rollback": None, "rounds_replayed": out["rounds"],
                           "rounds_total": trainer.n_rounds, "checkpoints": written,
                           "seconds": out["seconds"]}}
        staged_sha = sha256(json.dumps(index, sort_keys=True, indent=1).encode())
        self._journal(rid, unlearned=summary, published=pub, staged_index_sha256=staged_sha,
                      unlearn_seconds=time.perf_counter() - t0, calibration=calibration)
        run.audit.append("erasure.unlearned", request_id=rid, method="approx",
                         models={model: {k: v for k, v in summary[model].items()
                                         if k != "checkpoints"}},
                         calibration={k: v for k, v in calibration.items()
                                      if not isinstance(v, dict | list)})
        self._done(rid, "unlearned", {model: out["rounds"],
                                      "calibration_rounds": out["calibration_rounds"]})
        run.store.flush(index)  # the commit point

    def _original_figures(self, model: str, leaving: set[str]) -> dict:
        """Test AUC/accuracy (on the remaining clients' held-out rows) and parameters of the
        model before the removal."""
        adapter, trainers = self.run.final_trainers([model])
        test = [i for i in adapter.split_ids()["test"] if i not in leaving]
        return heldout_figures(adapter, trainers, test) | {
            "params": trainers[model].global_params().astype(float).tolist()}

    def _verify(self, pids, j) -> dict:
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
                      seconds=float(j.get("unlearn_seconds", 0.0)))
        out |= {"mia_rows": "every row erased from this run so far",
                "request_training_rows": len(adapter.training_ids(pids))}
        if j.get("kind") == "client_removal":
            out |= _against_retrain(adapter, trainers, retrain, j)
        return out


def _replace_checkpoints(run: RunDir, lineage: Lineage, index: dict, ckpt) -> list[dict]:
    """Stage ``ckpt`` as the model's only checkpoint (every earlier one is dropped from the
    index and the lineage; the purge step deletes their objects)."""
    model = ckpt.model
    run.store.drop_rounds(model, run.store.rounds(model, index), index)
    lineage.g.remove_nodes_from([n for n, a in lineage.g.nodes(data=True)
                                 if a.get("kind") == "checkpoint" and a.get("model") == model])
    entry = run.store.write(ckpt, index)
    lineage.add_checkpoint(model, ckpt.round, entry["digest"])
    index["models"][model]["final_round"] = ckpt.round
    return [{"model": model, "round": ckpt.round, "digest": entry["digest"]}]


def _against_retrain(adapter, trainers: dict, retrain: dict | None, j: dict) -> dict:
    """A client removal against the model before it and (if run) an exact retrain without
    the client: accuracy/AUC, parameter distance (L2) and time."""
    original = j["original"]
    out = {"auc_original": original["test_auc"],
           "accuracy_original": original["test_accuracy"]}
    if retrain is None:
        return out | {"retrain": "not run (pass retrain=True / --retrain for the comparison)"}
    test = adapter.split_ids()["test"]
    rt = retrain["trainers"]
    ref = heldout_figures(adapter, rt, test)
    mine = heldout_figures(adapter, trainers, test)
    w_u, w_r = trainers["main"].global_params(), rt["main"].global_params()
    w_o = np.asarray(original["params"], np.float32)
    seconds = float(j.get("unlearn_seconds", 0.0))
    return out | {
        "auc_retrain": ref["test_auc"],
        "accuracy_retrain": ref["test_accuracy"],
        "accuracy_diff_vs_retrain": mine["test_accuracy"] - ref["test_accuracy"],
        "param_distance_vs_retrain": float(np.linalg.norm(w_u - w_r)),
        "original_param_distance_vs_retrain": float(np.linalg.norm(w_o - w_r)),
        "local_steps_unlearn": j["calibration"]["local_steps"],
        "local_steps_retrain": approximate.local_steps(rt["main"]),
        # whole request up to "unlearned" (setup, the replay, the checkpoint) vs retrain;
        # the replay alone is calibration.seconds. Wall times include any XLA compilation
        # for shapes the process has not seen yet; local steps are the portable cost.
        "speedup_vs_retrain": retrain["seconds"] / seconds if seconds > 0 else None,
        "calibration_seconds": j["calibration"]["seconds"],
    }


def _per_party(holders: dict) -> dict[str, int]:
    """How many of a request's patients each party holds (what the log records instead of
    the ids: ``{patient: [party, ...]}`` -> ``{party: count}``)."""
    out: dict[str, int] = {}
    for parties in holders.values():
        for p in parties:
            out[p] = out.get(p, 0) + 1
    return dict(sorted(out.items()))
