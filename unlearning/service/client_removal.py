"""A whole client (hospital) leaves a horizontal federation: approximate removal.

A :class:`ClientRemovalRequest` goes through the same steps and journal as a patient
erasure with ``method="approx"``: located (every row of the client), data deleted at the
client (its rows, by ``data.erase``, and its own update log), model unlearned by
FedEraser-style calibrated replay from the remaining clients' update logs, committed,
purged (every checkpoint of the model is replaced by the one unlearned checkpoint), verified
(against an exact retrain without the client when ``retrain=True``) and certified
(``"guarantee": "approximate"`` plus the calibration).

The service reaches the method only through the run's adapter
(:class:`vfl.core.rounds.ClientRemovalAdapter`: ``check_client_removal``,
``delete_client_update_log``, ``remove_client``, ``local_steps``, ``global_params``; the
horizontal adapter runs :mod:`horizontal.federaser`) and refuses a removal with
:class:`MethodUnavailableError` when the run's adapter has no such methods.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from unlearning.errors import MethodUnavailableError, UnknownClientError
from unlearning.lineage import Lineage
from unlearning.methods.sisa import is_sisa
from unlearning.run import STAGED_LINEAGE, RunDir, publish
from unlearning.service.base import Journal, RequestKind, now, require
from unlearning.store import sha256
from unlearning.verification import heldout_figures
from vfl.core.rounds import CLIENT_REMOVAL_METHODS

APPROX_GUARANTEE = (
    "approximate: FedEraser-style calibrated replay from the remaining clients' stored "
    "updates; the client's rows and update log are deleted and no checkpoint it influenced "
    "is kept, but the model is not equal to a retrain without it (see verification)"
)


@dataclass
class ClientRemovalRequest:
    """A whole client (hospital) leaves a horizontal federation; served approximately.

    ``every``, ``calibration_fraction`` and ``between`` are FedEraser's calibration settings
    (:func:`horizontal.federaser.calibrated_replay`). The request id depends on
    the client and method only, so repeating a removal returns the earlier certificate."""

    client: str
    reason: str = "a client leaves the federation"
    time: str = field(default_factory=now)
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


class ClientRemoval(RequestKind):
    """A whole client removed approximately (FedEraser-style calibrated replay)."""

    kind = "client_removal"
    request_type = ClientRemovalRequest

    def start(self, request: ClientRemovalRequest) -> dict:
        service, run = self.service, self.run
        rid = request.request_id
        earlier = run.certificate(rid)
        if earlier is not None:
            return earlier
        pids = self._check(request)
        t0 = time.perf_counter()
        service.journal(rid, kind=self.kind, request=request.to_json(),
                        client=request.client, patients=pids,
                        holders={request.client: len(pids)}, t0=time.time())
        run.audit.append("erasure.received", request_id=rid, client=request.client,
                         patients=len(pids), reason=request.reason, time=request.time,
                         method=request.method)
        service.done(rid, "received", {"request_id": rid, "client": request.client,
                                       "patients": len(pids)})
        return service.serve(rid, t0)

    def _check(self, request: ClientRemovalRequest) -> list[str]:
        """Everything that can refuse the request, before anything is written; returns the
        client's ids not erased yet (all of its rows leave with it)."""
        run = self.run
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
        require(adapter, ("erase_at_parties", *CLIENT_REMOVAL_METHODS),
                "remove a whole client approximately (erase the client's patients exactly "
                "instead: --method exact)")
        return adapter.check_client_removal(run, request.client)

    def parties(self, j: Journal) -> list[str]:
        return [j.client]

    def unlearn(self, rid: str, j: Journal, t0: float) -> None:
        """located -> data deleted at the client -> unlearned (calibrated replay) -> the
        index swap, in which the unlearned checkpoint replaces every checkpoint of the
        model (all of them were influenced by the client)."""
        service, run = self.service, self.run
        client, pids, request = j.client, j.patients, j.request
        model = "main"
        # located; the original model's figures are kept for the report (once: after the
        # data deletion an interrupted request can no longer rebuild the original scaler)
        influenced = run.lineage.influenced(pids)
        original = j.original or self._original_figures(model, set(pids))
        run.audit.append(
            "erasure.located", request_id=rid, client=client, holders={client: len(pids)},
            models={model: {"first_influence": -1, "rollback": None}},
            rounds={m: len(r) for m, r in influenced["rounds"].items()},
            checkpoints={m: len(r) for m, r in influenced["checkpoints"].items()},
            published=influenced["models"],
        )
        service.journal(rid, original=original)
        service.done(rid, "located", {"models": {model: None}, "client": client})
        # data deleted at the client: its rows (data.erase) and the update log it kept itself
        adapter = run.adapter()
        acks = service.delete_at_parties(adapter, pids, [client])
        run.record_erased(pids, rid)
        adapter.delete_client_update_log(run, client, model)
        run.audit.append("erasure.data_deleted", by=[client], request_id=rid, parties=[client],
                         patients=len(pids), update_log_deleted=True,
                         erased_ids=service.digests(pids), acks=acks)
        service.done(rid, "data_deleted", {"parties": [client]})
        # model unlearned: the remaining federation, set up again (its scaler no longer has
        # the client's moments), rebuilds the global model from the owners' logs
        adapter = run.adapter()
        out = adapter.remove_client(
            run, model, every=request["every"],
            calibration_fraction=request["calibration_fraction"], between=request["between"],
            meta={"approximate": True, "request_id": rid})
        index, lineage = run.store.staged(), service.stage_lineage(rid)
        written = _replace_checkpoints(run, lineage, index, out["checkpoint"])
        lineage.remove_patient(pids, rid)
        pub = publish(run, lineage, index, adapter)
        lineage.save(run.path / STAGED_LINEAGE, fsync=run.fsync)
        if run.fsync:
            os.sync()  # the staged checkpoint is durable before the commit point
        summary = {model: {"rollback": None, "rounds_replayed": out["rounds"],
                           "rounds_total": out["rounds_total"], "checkpoints": written,
                           "seconds": out["seconds"]}}
        calibration = out["calibration"]
        staged_sha = sha256(json.dumps(index, sort_keys=True, indent=1).encode())
        service.journal(rid, unlearned=summary, published=pub, staged_index_sha256=staged_sha,
                        unlearn_seconds=time.perf_counter() - t0, calibration=calibration)
        run.audit.append("erasure.unlearned", request_id=rid, method="approx",
                         models={model: {k: v for k, v in summary[model].items()
                                         if k != "checkpoints"}},
                         calibration={k: v for k, v in calibration.items()
                                      if not isinstance(v, dict | list)})
        service.done(rid, "unlearned", {model: out["rounds"],
                                        "calibration_rounds": out["calibration_rounds"]})
        run.store.flush(index)  # the commit point

    def _original_figures(self, model: str, leaving: set[str]) -> dict:
        """Test AUC/accuracy (on the remaining clients' held-out rows) and parameters of the
        model before the removal."""
        adapter, trainers = self.run.final_trainers([model])
        test = [i for i in adapter.split_ids()["test"] if i not in leaving]
        return heldout_figures(adapter, trainers, test) | {
            "params": adapter.global_params(trainers[model]).astype(float).tolist()}

    def certificate_extra(self, j: Journal) -> dict:
        return {"guarantee": APPROX_GUARANTEE, "calibration": j.calibration}

    def verify_extra(self, adapter, trainers: dict, retrain: dict | None, j: Journal) -> dict:
        """The removal against the model before it and (if run) an exact retrain without
        the client: accuracy/AUC, parameter distance (L2) and time."""
        original = j.original
        out = {"auc_original": original["test_auc"],
               "accuracy_original": original["test_accuracy"]}
        if retrain is None:
            return out | {"retrain": "not run (pass retrain=True / --retrain for the comparison)"}
        test = adapter.split_ids()["test"]
        rt = retrain["trainers"]
        ref = heldout_figures(adapter, rt, test)
        mine = heldout_figures(adapter, trainers, test)
        w_u, w_r = adapter.global_params(trainers["main"]), adapter.global_params(rt["main"])
        w_o = np.asarray(original["params"], np.float32)
        seconds = float(j.unlearn_seconds or 0.0)
        return out | {
            "auc_retrain": ref["test_auc"],
            "accuracy_retrain": ref["test_accuracy"],
            "accuracy_diff_vs_retrain": mine["test_accuracy"] - ref["test_accuracy"],
            "param_distance_vs_retrain": float(np.linalg.norm(w_u - w_r)),
            "original_param_distance_vs_retrain": float(np.linalg.norm(w_o - w_r)),
            "local_steps_unlearn": j.calibration["local_steps"],
            "local_steps_retrain": adapter.local_steps(rt["main"]),
            # whole request up to "unlearned" (setup, the replay, the checkpoint) vs retrain;
            # the replay alone is calibration.seconds. Wall times include any XLA compilation
            # for shapes the process has not seen yet; local steps are the portable cost.
            "speedup_vs_retrain": retrain["seconds"] / seconds if seconds > 0 else None,
            "calibration_seconds": j.calibration["seconds"],
        }


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
