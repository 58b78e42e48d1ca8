"""Erasing patients (GDPR art. 17): exact replay, or SISA (replay of the patient's shard
from the checkpoint before the slice it joined in).

An :class:`ErasureRequest` names pseudonymous patient ids. Unknown patients raise
:class:`UnknownPatientError` before anything is written, and a repeated request returns the
earlier certificate. The log names no patient: locations are counted per party and the
data deletion carries the erased ids' keyed digests, signed by every party that deleted;
the certificate entry is co-signed by those parties.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from unlearning.errors import (
    MethodUnavailableError,
    UnknownPartyNameError,
    UnknownPatientError,
)
from unlearning.keys import COORDINATOR
from unlearning.methods import exact
from unlearning.methods.sisa import is_sisa
from unlearning.run import STAGED_LINEAGE, publish
from unlearning.service.base import Journal, RequestKind, now, require
from unlearning.store import sha256

METHODS = ("exact", "sisa", "approx")
PATIENT_METHODS = ("exact", "sisa")


@dataclass
class ErasureRequest:
    patients: tuple[str, ...]
    party: str | None = None  # the party that received the request
    reason: str = "erasure request (GDPR art. 17)"
    time: str = field(default_factory=now)
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


class PatientErasure(RequestKind):
    """Patients erased exactly: the models they influenced are replayed without them."""

    kind = "patients"
    request_type = ErasureRequest

    def start(self, request: ErasureRequest) -> dict:
        service, run = self.service, self.run
        earlier = self._already(request)
        if earlier is not None:
            return earlier
        rid = request.request_id
        erased = run.erased()
        todo = [p for p in request.patients if p not in erased]
        adapter = run.adapter()
        require(adapter, ("erase_at_parties",), "ask its parties to delete rows")
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
        service.journal(rid, kind=self.kind, request=request.to_json(), patients=todo,
                        holders=holders, t0=time.time())
        # the party that received the request co-signs it (when it is one of the run's)
        received_by = [COORDINATOR] + (
            [request.party] if request.party in run.lineage.g.graph.get("parties", []) else [])
        run.audit.append("erasure.received", by=received_by, request_id=rid,
                         patients=len(todo), party=request.party, reason=request.reason,
                         time=request.time, method=request.method)
        service.done(rid, "received", {"request_id": rid, "patients": len(todo)})
        return service.serve(rid, t0)

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

    def parties(self, j: Journal) -> list[str]:
        return sorted({h for hs in j.holders.values() for h in hs})

    def unlearn(self, rid: str, j: Journal, t0: float) -> None:
        """located -> data deleted -> unlearned (exact replay) -> the index swap."""
        service, run = self.service, self.run
        request, pids = j.request, j.patients
        method = request["method"]
        staged_path = run.path / STAGED_LINEAGE
        # located
        adapter = run.adapter()
        location = exact.plan(run.lineage, pids, adapter.models())
        influenced = run.lineage.influenced(pids)
        run.audit.append(
            "erasure.located", request_id=rid, holders=_per_party(j.holders),
            models={m: {"first_influence": v["first_influence"], "rollback": v["rollback"]}
                    for m, v in location.items()},
            rounds={m: len(r) for m, r in influenced["rounds"].items()},
            checkpoints={m: len(r) for m, r in influenced["checkpoints"].items()},
            published=influenced["models"],
        )
        service.journal(rid, location=location)
        service.done(rid, "located", {"models": {m: v["rollback"] for m, v in
                                                 location.items()}})
        # data deleted at every holder: each deletes its rows (data.erase) and says so
        # (data.erased); the deletion registry the parties' data is rebuilt from records it
        parties = self.parties(j)
        acks = service.delete_at_parties(run.adapter(), pids, parties)
        run.record_erased(pids, rid)
        run.audit.append("erasure.data_deleted", by=parties, request_id=rid, parties=parties,
                         patients=len(pids), erased_ids=service.digests(pids), acks=acks)
        service.done(rid, "data_deleted", {"parties": parties})
        # model unlearned into a staged index and lineage
        adapter = run.adapter()
        index = run.store.staged()
        lineage = service.stage_lineage(rid)
        result = exact.replay(run, adapter, lineage, index, location)
        lineage.remove_patient(pids, rid)
        pub = publish(run, lineage, index, adapter) if result else run.spec.get("published")
        lineage.save(staged_path, fsync=run.fsync)
        if run.fsync:
            os.sync()  # staged checkpoint objects are durable before the commit point
        summary = {m: {k: v for k, v in r.items() if k != "trainer"}
                   for m, r in result.items()}
        staged_sha = sha256(json.dumps(index, sort_keys=True, indent=1).encode())
        service.journal(rid, unlearned=summary, published=pub, staged_index_sha256=staged_sha,
                        unlearn_seconds=time.perf_counter() - t0)
        warnings = [s["warning"] for s in summary.values() if s.get("warning")]
        run.audit.append(
            "erasure.unlearned", request_id=rid, method=method,
            models={m: {k: s[k] for k in ("rollback", "rounds_replayed", "rounds_total",
                                          "seconds")} for m, s in summary.items()},
            **({"warnings": warnings} if warnings else {}),
        )
        service.done(rid, "unlearned", {m: s["rounds_replayed"] for m, s in summary.items()}
                     | ({"warnings": warnings} if warnings else {}))
        # commit: the atomic index swap is the commit point
        run.store.flush(index)


def _per_party(holders: dict) -> dict[str, int]:
    """How many of a request's patients each party holds (what the log records instead of
    the ids: ``{patient: [party, ...]}`` -> ``{party: count}``)."""
    out: dict[str, int] = {}
    for parties in holders.values():
        for p in parties:
            out[p] = out.get(p, 0) + 1
    return dict(sorted(out.items()))
