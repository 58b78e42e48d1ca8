"""Erasure requests and their lifecycle.

received -> located (lineage) -> data deleted at every holder -> model unlearned (staged)
-> committed (checkpoint index swapped atomically) -> stale checkpoints purged -> verified
-> certificate issued. Every step is an audit-log entry, and a journal file under
``RUN_DIR/journal`` records how far a request got. After a crash, :meth:`ErasureService.
recover` rolls a request back to the last consistent state (staged checkpoints that were
never committed are deleted) and then serves it to the end; once the index swap happened it
rolls forward. Repeated requests return the earlier certificate; unknown patients raise
:class:`UnknownPatientError` before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from unlearning import certificate as certs
from unlearning.errors import ErasureInterrupted, MethodUnavailableError, UnknownPatientError
from unlearning.lineage import Lineage
from unlearning.methods import exact
from unlearning.methods.sisa import is_sisa
from unlearning.run import RunDir, publish
from unlearning.store import atomic_write, sha256
from unlearning.verification import checkpoints_free_of, figures

METHODS = ("exact", "sisa", "approx")
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
        if self.method not in METHODS:
            raise MethodUnavailableError(
                f"unknown unlearning method {self.method!r}; choose one of {METHODS}"
            )

    @property
    def request_id(self) -> str:
        key = json.dumps({"patients": self.patients, "method": self.method})
        return "er-" + sha256(key.encode())[:16]

    def to_json(self) -> dict:
        return asdict(self) | {"patients": list(self.patients), "request_id": self.request_id}


class ErasureService:
    def __init__(self, run: RunDir | str, *, crash_at: str | None = None,
                 retrain: bool = False, on_step: Callable[[str, dict], None] | None = None,
                 verify_seed: int = 0):
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        if crash_at is not None and crash_at not in STEPS:
            raise ValueError(f"crash_at must be one of {STEPS}")
        self.crash_at = crash_at
        self.retrain = retrain
        self.on_step = on_step or (lambda step, info: None)
        self.verify_seed = verify_seed

    # -- journal ---------------------------------------------------------------------------
    def _journal_path(self, rid: str):
        return self.run.journal_dir / f"{rid}.json"

    def _journal(self, rid: str, **state) -> dict:
        path = self._journal_path(rid)
        cur = json.loads(path.read_text()) if path.exists() else {}
        cur.update(state)
        atomic_write(path, json.dumps(cur, indent=1), fsync=self.run.fsync)
        return cur

    def _done(self, rid: str, step: str, info: dict) -> None:
        self._journal(rid, step=step)
        self.on_step(step, info)
        if self.crash_at == step:
            raise ErasureInterrupted(
                f"simulated crash after step {step!r} of {rid}; reopen the run and call "
                "recover() (or rerun `vfl erase`)"
            )

    # -- public API ------------------------------------------------------------------------
    def submit(self, request: ErasureRequest) -> dict:
        run = self.run
        rid = request.request_id
        if self._journal_path(rid).exists():
            return self._resume(rid)
        earlier = self._already(request)
        if earlier is not None:
            return earlier
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
        if request.method == "approx":
            raise MethodUnavailableError(
                "approximate removal applies to a whole party or client; use "
                "unlearning.methods.approximate.remove_party (single patients: exact or sisa)"
            )
        t0 = time.perf_counter()
        self._journal(rid, request=request.to_json(), patients=todo, holders=holders,
                      t0=time.time())
        run.audit.append("erasure.received", request_id=rid, patients=len(todo),
                         party=request.party, reason=request.reason, time=request.time,
                         method=request.method)
        self._done(rid, "received", {"request_id": rid, "patients": len(todo)})
        return self._serve(rid, t0)

    def submit_many(self, requests: list[ErasureRequest]) -> dict:
        """Serve requests of one method together (one replay per influenced model)."""
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
        if not self.run.journal_dir.exists():
            return []
        return [self._resume(p.stem) for p in sorted(self.run.journal_dir.glob("*.json"))]

    # -- internals -------------------------------------------------------------------------
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

    def _resume(self, rid: str) -> dict:
        run = self.run
        j = json.loads(self._journal_path(rid).read_text())
        step = j.get("step", "received")
        staged = run.path / "lineage.staged.json"
        committed = j.get("staged_index_sha256") == run.store.index_digest() and j.get(
            "staged_index_sha256") is not None
        if committed:
            action = "roll forward"
        else:
            # Roll back: drop everything staged and never committed, then serve again.
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            run.store.gc()
            action = "roll back staged work, then serve"
        run.audit.append("erasure.resumed", request_id=rid, after_step=step, action=action)
        return self._serve(rid, time.perf_counter(), committed=committed)

    def _serve(self, rid: str, t0: float, committed: bool = False) -> dict:
        run = self.run
        j = json.loads(self._journal_path(rid).read_text())
        request, pids = j["request"], j["patients"]
        method = request["method"]
        staged_path = run.path / "lineage.staged.json"
        if not committed:
            # located
            models = run.adapter().models()
            location = exact.plan(run.lineage, pids, models)
            influenced = run.lineage.influenced(pids)
            run.audit.append(
                "erasure.located", request_id=rid, holders=j["holders"],
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
            run.audit.append("erasure.data_deleted", request_id=rid, parties=parties,
                             patients=len(pids))
            self._done(rid, "data_deleted", {"parties": parties})
            # model unlearned into a staged index and lineage
            adapter = run.adapter()
            index = run.store.staged()
            lineage = Lineage(run.lineage.g.copy())
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
            run.audit.append(
                "erasure.unlearned", request_id=rid, method=method,
                models={m: {k: s[k] for k in ("rollback", "rounds_replayed", "rounds_total",
                                              "seconds")} for m, s in summary.items()},
            )
            self._done(rid, "unlearned", {m: s["rounds_replayed"] for m, s in summary.items()})
            # commit: the atomic index swap is the commit point
            run.store.flush(index)
            j = self._journal(rid)
        j = json.loads(self._journal_path(rid).read_text())
        if staged_path.exists():
            os.replace(staged_path, run.lineage_path)
        run.lineage = Lineage.load(run.lineage_path)
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
        cert = certs.build(
            request,
            method=method,
            rollback={m: s["rollback"] for m, s in j["unlearned"].items()},
            models={m: {k: s[k] for k in ("rounds_replayed", "rounds_total", "seconds")}
                    for m, s in j["unlearned"].items()},
            verification=verification | {"influenced_checkpoints_left": leftovers},
            log_position=run.audit.position,
            log_prev_hash=run.audit._last,
            index_sha256=run.store.index_digest(),
            purged=len(gone),
            seconds=float(j.get("unlearn_seconds", 0.0)),
        )
        digest = certs.write(run.cert_dir / f"{rid}.json", cert, fsync=run.fsync)
        run.audit.append("erasure.certificate", request_id=rid, certificate_sha256=digest)
        self._journal_path(rid).unlink()
        self.on_step("certified", {"certificate": str(run.cert_dir / f"{rid}.json")})
        return cert

    def _verify(self, pids, j) -> dict:
        run = self.run
        adapter = run.adapter()
        trainers = {}
        for m in adapter.models():
            t = adapter.trainer(m)
            final = run.store.index["models"][m]["final_round"]
            adapter.load(m, t, run.store.load(m, final))
            trainers[m] = t
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
        return out | {"mia_rows": "every row erased from this run so far",
                      "request_training_rows": len(adapter.training_ids(pids))}
