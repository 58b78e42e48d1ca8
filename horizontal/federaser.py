"""Approximate removal of a whole client (a hospital leaves): FedEraser (Liu et al. 2021).

Exact removal of a client is a retrain without it. FedEraser trades exactness for speed:

* **During training** every client keeps its own per-round updates in a
  :class:`ClientUpdateLog` (written by the client side, :class:`LoggingClient`). With secure
  aggregation the server only ever sees the *sum* of the updates, never one client's, so the
  updates are stored at their owners; the removal asks the remaining clients for them (their
  norms), and the leaving client's log is simply deleted with its data.
* **Removal** (:func:`remove_client`) rebuilds the global model from the initial model
  (round 0), aggregating only the remaining clients. In a *calibration round* (every
  ``every``-th round) each remaining participant runs a few local steps
  (``calibration_fraction`` of its original local steps) from the *new* global model to get
  the update's direction, and its stored update of that round gives the step length::

      new_update = ||old_update|| * calibration / ||calibration||

  Between calibration rounds the stored updates of the remaining clients are reused as they
  are (``between="reuse"``) or the round is left out (``between="skip"``: the original
  FedEraser, which keeps updates only every Δ rounds).

Scope: plain FedAvg (``algorithm="fedavg"``, ``server_optimizer="fedavg"``, ``aggregator=
"mean"``, no compression, no personalization); other settings raise
:class:`~unlearning.errors.MethodUnavailableError`. :func:`remove_client` keeps the pooled
scaler fitted at setup (which includes the leaving client's moments), so it is approximate in
the scaler too; :func:`compare_with_retrain` reports it against an exact retrain.

In a run directory. A horizontal run made by :func:`unlearning.run.train_run` (with
``client_update_logs``, the default of :func:`horizontal.checkpointing.horizontal_spec`) keeps
each client's log at that client: ``RUN_DIR/owners/CLIENT/update-log-MODEL.msgpack``
(:func:`update_log_path`; flax msgpack, never pickle), standing for the hospital's own
storage; the checkpoint store and the server never hold one client's update. An exact replay
rewrites the logs with the replayed updates (a log is influenced by every patient the model
was). ``ClientRemovalRequest`` of the erasure service (``vfl erase --client NAME --method
approx``) serves a removal there: the leaving client deletes its rows and its log, the
federation of the remaining clients is set up again (so the scaler no longer has the leaving
client's moments) and :func:`calibrated_replay` rebuilds the global model from the remaining
owners' logs; the result replaces every stored checkpoint of the model.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flax import serialization

from horizontal.client import HospitalClient
from horizontal.client_update import compiled_predict
from horizontal.compression import decode
from horizontal.config import FedConfig
from horizontal.simulation import LocalJob
from horizontal.strategies import weighted_mean
from horizontal.trainer import FederatedTrainer
from vfl.core import fileio
from vfl.core.errors import MethodUnavailableError, RunDirError
from vfl.core.fileio import atomic_write
from vfl.core.keyed import local_batches
from vfl.core.metrics import auc

OWNERS_DIR = "owners"  # RUN_DIR/owners/CLIENT/: what a client keeps itself, not the server


@dataclass
class ClientUpdateLog:
    """One client's own record of its updates (kept at the client, never at the server)."""

    client: str
    updates: dict[int, np.ndarray] = field(default_factory=dict)
    examples: dict[int, int] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)

    def record(self, r: int, delta: np.ndarray, examples: int, steps: int) -> None:
        self.updates[r] = np.asarray(delta, np.float32).copy()
        self.examples[r] = int(examples)
        self.steps[r] = int(steps)

    def norm(self, r: int) -> float:
        return float(np.linalg.norm(self.updates[r]))

    @property
    def nbytes(self) -> int:
        return sum(u.nbytes for u in self.updates.values())


class LoggingClient(HospitalClient):
    """A hospital that logs its own updates and can compute FedEraser calibration updates."""

    def __init__(self, name, table, executor, server="server"):
        super().__init__(name, table, executor, server)
        self.update_log = ClientUpdateLog(name)

    def on_collect(self, msg):
        out = super().on_collect(msg)
        for m in out:
            if m.kind == "fit.update":
                p = m.payload
                delta = decode(p["update"], len(self.shared), self.name)
                self.update_log.record(msg.round, delta, p["num_examples"], p["steps"])
        return out

    def calibration_update(self, global_w: np.ndarray, r: int, steps: int) -> tuple:
        """``steps`` local steps of round ``r``'s batches from ``global_w`` (party-local)."""
        c = self.config
        start = self._start_vector(global_w)
        pos, bmask = local_batches(self.row_hashes, c.seed, r, self.name, c.local_epochs,
                                   c.batch_size)
        k = max(1, min(int(steps), len(pos)))
        job = LocalJob(self.spec, start, start, np.zeros_like(start), float(c.mu), self.x_train,
                       self.y_train, pos, bmask, np.arange(len(pos)) < k)
        w_new, _ = self.executor.run_now(job)
        return (w_new - start)[self.shared], k


def train_with_logs(tables, config: FedConfig, **kw) -> FederatedTrainer:
    """A federated run whose clients keep their update logs (``trainer.clients[n].
    update_log``)."""
    trainer = FederatedTrainer(tables, config, mode="loop", client_factory=LoggingClient, **kw)
    trainer.fit(progress=False)
    return trainer


def check_supported(config: FedConfig) -> None:
    need = {"algorithm": "fedavg", "server_optimizer": "fedavg", "aggregator": "mean",
            "compression": "none", "personalization": "none"}
    bad = {k: getattr(config, k) for k, v in need.items() if getattr(config, k) != v}
    if bad:
        raise MethodUnavailableError(
            f"FedEraser removal supports plain FedAvg only; this run has {bad}. Use an exact "
            "retrain without the client instead"
        )
    if config.secure_aggregation is not None:
        raise MethodUnavailableError(
            "FedEraser removal replays each client's own update, which secure aggregation "
            "never lets the server see (only each round's sum); use an exact retrain "
            "without the client instead"
        )


_check = check_supported  # the earlier private name


def remove_client(trainer: FederatedTrainer, leaving: str, *, every: int = 2,
                  calibration_fraction: float = 0.5, between: str = "reuse") -> dict:
    """FedEraser: the global model rebuilt without ``leaving`` (see the module docstring).

    Returns ``{"params", "local_steps", "calibration_rounds", "rounds", "seconds"}``;
    ``local_steps`` counts the remaining clients' calibration steps (the only training)."""
    check_supported(trainer.config)
    if leaving not in trainer.members:
        raise MethodUnavailableError(f"{leaving!r} is not a member of this federation")
    remaining = [n for n in trainer.members if n != leaving]
    logs = {n: trainer.clients[n].update_log for n in remaining}
    return calibrated_replay(trainer, logs, every=every,
                             calibration_fraction=calibration_fraction, between=between)


def calibrated_replay(trainer: FederatedTrainer, logs: dict[str, ClientUpdateLog], *,
                      every: int = 2, calibration_fraction: float = 0.5,
                      between: str = "reuse") -> dict:
    """Rebuild the global model from the initial one using only ``logs`` (the remaining
    clients' own update logs); ``trainer.clients[n]`` (a :class:`LoggingClient`, set up)
    computes client ``n``'s calibration updates on its current rows. ``trainer`` may be the
    original federation (:func:`remove_client`) or one set up again without the leaving
    client (a run directory's removal: its scaler no longer has that client's moments)."""
    check_supported(trainer.config)
    if between not in ("reuse", "skip"):
        raise ValueError("between must be 'reuse' or 'skip'")
    if every < 1 or not 0.0 < calibration_fraction <= 1.0:
        raise ValueError("every must be >= 1 and calibration_fraction in (0, 1]")
    t0 = time.perf_counter()
    c = trainer.config
    w = trainer.server.model.init.astype(np.float32).copy()
    lr = np.float32(c.effective_server_lr)
    steps_done = calibrations = rounds = 0
    for r in range(c.rounds):
        parts = [n for n in sorted(logs) if r in logs[n].updates]
        calibrate = r % every == 0
        if not parts or (between == "skip" and not calibrate):
            continue
        ups, weights = [], []
        for n in parts:
            old = logs[n].updates[r]
            if calibrate:
                want = math.ceil(calibration_fraction * logs[n].steps[r])
                new, k = trainer.clients[n].calibration_update(w, r, want)
                steps_done += k
                nn = float(np.linalg.norm(new))
                old = (logs[n].norm(r) / nn * new) if nn > 0 else np.zeros_like(old)
            ups.append(np.asarray(old, np.float32))
            weights.append(logs[n].examples[r])
        calibrations += int(calibrate)
        rounds += 1
        w = (w + lr * weighted_mean(np.stack(ups), weights).astype(np.float32)).astype(
            np.float32)
    return {"params": w, "local_steps": steps_done, "calibration_rounds": calibrations,
            "rounds": rounds, "seconds": time.perf_counter() - t0,
            "settings": {"every": every, "calibration_fraction": calibration_fraction,
                         "between": between}}


# -- the owners' logs in a run directory ---------------------------------------------------
def update_log_path(run_path: str | Path, client: str, model: str) -> Path:
    return Path(run_path) / OWNERS_DIR / client / f"update-log-{model}.msgpack"


def delete_update_log(run_path: str | Path, client: str, model: str) -> None:
    """The client deletes its log (it leaves, or its model was replayed without it); its
    folder goes too once empty."""
    path = update_log_path(run_path, client, model)
    fileio.remove(path)
    with contextlib.suppress(OSError):  # not empty: the client keeps other models' logs
        path.parent.rmdir()


def save_update_log(path: Path, log: ClientUpdateLog, *, fsync: bool = True) -> None:
    tree = {"client": log.client,
            "rounds": {str(r): {"update": log.updates[r], "examples": log.examples[r],
                                "steps": log.steps[r]} for r in sorted(log.updates)}}
    atomic_write(path, serialization.msgpack_serialize(tree), fsync=fsync)


def load_update_log(path: Path, client: str, size: int | None = None) -> ClientUpdateLog:
    """Read a client's log; ``size`` (the model's parameter count) is checked per round."""
    if not path.exists():
        raise RunDirError(
            f"client {client!r} keeps no update log at {path}; approximate removal needs every "
            "remaining client's log (train the run with client_update_logs=True, or serve the "
            "removal exactly by erasing the client's patients)"
        )
    tree = serialization.msgpack_restore(path.read_bytes())
    log = ClientUpdateLog(client)
    for r, item in tree.get("rounds", {}).items():
        update = np.asarray(item["update"], np.float32)
        if (size is not None and update.shape != (size,)) or not np.isfinite(update).all():
            raise RunDirError(
                f"the update log of {client!r} at {path} has a bad round {r} (shape "
                f"{update.shape}, expected ({size},), or non-finite values); restore it from "
                "the client's backup"
            )
        log.record(int(r), update, int(item["examples"]), int(item["steps"]))
    return log


def pooled_auc(trainer: FederatedTrainer, w: np.ndarray, clients) -> float:
    """AUC of global model ``w`` on the held-out rows of ``clients`` (each standardized
    with ``trainer``'s scaler)."""
    task = trainer.config.task
    scores, labels = [], []
    for n in clients:
        cl = trainer.clients[n]
        fn = compiled_predict(cl.model.key, task.kind, task.n_classes)
        scores.append(np.asarray(fn(w, cl.x_test)).reshape(len(cl.y_test), -1)[:, -1])
        labels.append(np.asarray(cl.y_test))
    s, y = np.concatenate(scores), np.concatenate(labels)
    return auc(s[y == 1], s[y == 0])


def local_steps(trainer: FederatedTrainer, clients=None) -> int:
    names = trainer.members if clients is None else clients
    return sum(sum(trainer.clients[n].update_log.steps.values()) for n in names)


def compare_with_retrain(tables, config: FedConfig, leaving: str, *, original=None,
                         **kw) -> dict:
    """Report FedEraser removal of ``leaving`` against an exact retrain without it: test AUC
    on the remaining clients' held-out rows, parameter distances and seconds/local steps."""
    if original is None:
        original = train_with_logs(tables, config)
    removal = remove_client(original, leaving, **kw)
    t0 = time.perf_counter()
    retrain = train_with_logs({n: t for n, t in tables.items() if n != leaving}, config)
    retrain_seconds = time.perf_counter() - t0
    remaining = [n for n in original.members if n != leaving]
    w_o, w_u, w_r = original.global_params(), removal["params"], retrain.global_params()
    return {
        "auc_original": pooled_auc(original, w_o, remaining),
        "auc_unlearned": pooled_auc(original, w_u, remaining),
        "auc_retrain": pooled_auc(retrain, w_r, remaining),
        "dist_unlearned_retrain": float(np.linalg.norm(w_u - w_r)),
        "dist_original_retrain": float(np.linalg.norm(w_o - w_r)),
        "seconds_unlearn": removal["seconds"],
        "seconds_retrain": retrain_seconds,
        "local_steps_unlearn": removal["local_steps"],
        "local_steps_retrain": local_steps(retrain),
        "calibration_rounds": removal["calibration_rounds"],
        "rounds": removal["rounds"],
        "update_log_bytes": {n: original.clients[n].update_log.nbytes for n in remaining},
    }


remove_party = remove_client  # the name ErasureService's "approx" message points to
