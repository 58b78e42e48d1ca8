"""The horizontal (FedAvg) adapter: rebuilds :class:`~horizontal.trainer.FederatedTrainer` s
from a run manifest, minus erased patients, for replay and retrain.

Every client is built from its full table, as the dataset factory named in the manifest
gives it, and deletes the erased patients' rows itself: the coordinator sends it
``data.erase`` with the ids it holds and it answers ``data.erased``
(:func:`vfl.core.rounds.request_erasure`); the adapter never filters a table, it only keeps
the ids (which clients still hold rows, which train). There is no PSI in a horizontal
federation: the manifest's ``aligned`` list is simply every client's ids
(:meth:`HorizontalAdapter.align`, which :func:`horizontal_spec` calls), kept for the held-out
split and the erasure bookkeeping.

Checkpoints hold one state tree per party: the server (global model, server optimizer state,
SCAFFOLD control) and every client (error-feedback residual, SCAFFOLD control, FedPer head).
``ids_used`` is, per client, the ids of the rows its update of that round used.

Setup influence. The federation standardizes with the *pooled* mean and standard deviation:
every client sends the count, sum and sum of squares of its training rows at setup and the
server fits one scaler from them (:meth:`horizontal.server.FedServer.on_finish`). So every
training patient influenced setup (``setup_ids`` = all training rows), their first influence
is ``-1`` and the exact replay for a training patient is a retrain from scratch without them
(rollback "before round 0"). That is acceptable here (horizontal runs are small and the
replay is exact); keeping the scaler fixed from a public or earlier cohort would let replays
start at the patient's first round instead. A held-out (test) patient influenced nothing: its
erasure replays zero rounds and the published model is unchanged (and equals a retrain).

SISA (``spec["sisa"]``, :func:`unlearning.methods.sisa.sisa_spec`). Patients are hashed into
S shards (:func:`vfl.core.keyed.shard_of`, the vertical adapter's hash); shard k is a
sub-federation over the same clients, each client training only on its rows of shard k (a
client with no training row in the shard sits that federation out). Each shard has its own
pooled scaler, so erasing a patient replays only its shard. With slices (or arrival
``waves``), a client's training rows of a shard join in slices (:class:`vfl.core.keyed.
SlicePlan`, keyed hash of (seed, id)); phase k runs ``epochs_per_slice`` federated rounds
(default: the config's ``rounds``) over slices 0..k (:class:`SlicedClient`), and the pooled
scaler is fitted on slice 0 only (a client with no slice-0 row joins with zero moments,
:class:`SlicedServer`). A patient of slice k >= 1 then first influences the first round of
phase k, and its erasure replays from the checkpoint at the previous slice boundary.

Update logs (``spec["client_update_logs"]``, on by default in :func:`horizontal_spec`; single
model, no slices). Every client logs its own per-round update
(:class:`~horizontal.federaser.LoggingClient`) and keeps it at
``RUN_DIR/owners/CLIENT/`` (:meth:`HorizontalAdapter.keep_owner_records`), for approximate
removal of a whole client (``ClientRemovalRequest`` of the erasure service). The removal
itself is served through this adapter's client-removal methods
(:class:`vfl.core.rounds.ClientRemovalAdapter`: :meth:`HorizontalAdapter.check_client_removal`,
:meth:`~HorizontalAdapter.delete_client_update_log`, :meth:`~HorizontalAdapter.remove_client`,
:meth:`~HorizontalAdapter.local_steps` and :meth:`~HorizontalAdapter.global_params`), which run
:mod:`horizontal.federaser`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json

import numpy as np

from horizontal import federaser as approximate
from horizontal.client import HospitalClient
from horizontal.client_update import compiled_predict
from horizontal.config import FedConfig
from horizontal.errors import EmptyRoundError
from horizontal.server import SERVER, FedServer
from horizontal.simulation import LocalExecutor
from horizontal.trainer import FederatedTrainer, FedRoundRecord
from vfl.core.coordinator import Coordinator
from vfl.core.errors import MethodUnavailableError, RunDirError, UnknownClientError
from vfl.core.keyed import SlicePlan, ids_digest, shard_map, split_test
from vfl.core.messages import Label
from vfl.core.party import handles
from vfl.core.rounds import (
    AdapterBase,
    Checkpoint,
    from_checkpoint,
    request_erasure,
    state_tree,
    to_checkpoint,
)
from vfl.core.transport import InMemoryTransport

_DATA_CACHE: dict[str, dict] = {}


def load_client_tables(dataset: dict) -> dict:
    """``{"factory": "module:function", "kwargs": {...}}`` returning ``{client: PartyTable}``
    (or an object with ``.tables``)."""
    key = json.dumps(dataset, sort_keys=True)
    if key not in _DATA_CACHE:
        if "factory" not in dataset:
            raise RunDirError("a horizontal run manifest's dataset needs a 'factory'")
        module, func = dataset["factory"].split(":")
        out = getattr(importlib.import_module(module), func)(**dataset.get("kwargs", {}))
        _DATA_CACHE[key] = dict(out.tables) if hasattr(out, "tables") else dict(out)
    return _DATA_CACHE[key]


def horizontal_spec(dataset: dict, config: FedConfig, **extra) -> dict:
    """A run manifest for :func:`unlearning.run.train_run` (``aligned`` = every client's ids,
    so no PSI runs)."""
    aligned = HorizontalAdapter.align({"dataset": dataset})
    # Each client keeps its own per-round updates (for approximate removal of a client).
    return {"mode": "horizontal", "dataset": dataset, "config": config.to_json(),
            "aligned": aligned, "client_update_logs": True} | extra


# -- slices within a shard ------------------------------------------------------------------
class SlicedClient(HospitalClient):
    """A hospital whose training rows join in slices: in round r (phase ``r //
    rounds_per_slice``) it trains on its rows of slices 0..phase only, and at setup it sends
    the moments of its slice-0 rows only (the pooled scaler never sees a later slice).

    The phase's rows are swapped in as the client's training view (ids, standardized rows,
    labels, row hashes), so batching, the update and ``used_ids`` are the base client's.
    Batches come from per-row keyed hashes, so a slice-k row never moves a row of an earlier
    phase. A client with no row in the current phase sits the round out (``fit.missed``)."""

    def __init__(self, name, table, executor, server=SERVER, *, plan: SlicePlan,
                 rounds_per_slice: int):
        super().__init__(name, table, executor, server)
        self.plan, self.rounds_per_slice = plan, int(rounds_per_slice)
        self._phase: int | None = None

    @handles("setup")
    def on_setup(self, msg):
        super().on_setup(msg)  # its all-rows statistics are replaced by slice 0's below
        self._slice = self.plan.slice_of(self.train_ids, self.config.seed)
        raw = self._raw_train[self._slice == 0]
        stats = {"n": int(len(raw)), "sum": raw.sum(axis=0), "sumsq": (raw**2).sum(axis=0)}
        return [self.send(self.server, "setup.stats", Label.PLAINTEXT_BY_DESIGN, stats)]

    @handles("setup.scaler")
    def on_scaler(self, msg):
        # Standardize every row once; setup.ready reports the full sizes, the largest any
        # phase needs (the executor's shape hints).
        out = super().on_scaler(msg)
        self._full = (self.train_ids, self.x_train, self.y_train, self.row_hashes)
        self._phase = None
        return out

    def _view(self, phase: int) -> None:
        if phase == self._phase:
            return
        ids, x, y, hashes = self._full
        keep = np.flatnonzero(self._slice <= phase)
        self.train_ids, self.x_train, self.y_train = ids[keep], x[keep], y[keep]
        self.row_hashes = hashes[keep]
        self._all_digest = ids_digest(self._sorted_ids(np.arange(len(keep))))
        self._phase = phase

    @handles("fit")
    def on_fit(self, msg):
        self._view(min(msg.round // self.rounds_per_slice, self.plan.slices - 1))
        if not len(self.train_ids):
            self._pending = {"round": msg.round, "ticket": None}  # nothing to train on yet
            return []
        return super().on_fit(msg)

    def setup_ids(self) -> tuple[str, ...]:
        """Slice 0's rows (the scaler's moments). A client with no slice-0 row is a member
        only because of its later rows (erasing all of them would change the federation),
        so all of them count as setup influence: their erasure replays the shard from
        scratch, which keeps it exact."""
        ids = self._full[0]
        first = ids[self._slice == 0]
        return tuple(str(i) for i in (first if len(first) else ids))


class SlicedServer(FedServer):
    """A server that admits clients whose slice 0 is empty (zero moments, still members:
    they train once their rows' slice begins)."""

    @handles("setup.stats")
    def on_stats(self, msg):
        p = msg.payload
        if int(p.get("n", -1)) != 0:
            return super().on_stats(msg)
        d = len(self.columns)
        self._stats[msg.sender] = {"n": 0, "sum": np.zeros(d), "sumsq": np.zeros(d)}
        return []

    @handles("setup.finish")
    def on_finish(self, msg):
        if self._stats and not sum(v["n"] for v in self._stats.values()):
            raise EmptyRoundError(
                "no client has a training row in the first slice (the rows the pooled scaler "
                "is fitted on); use fewer SISA slices or shards"
            )
        return super().on_finish(msg)


class UnlearnableFedTrainer(FederatedTrainer):
    """:class:`FederatedTrainer` plus what the unlearning contract reads: ``n_rounds``,
    ``phase_starts`` and id-keyed predictions (scores of any patient a client held, erased
    ones included, computed in memory by its holder with the federation's scaler).

    ``slices``: training rows join in slices (:class:`SlicedClient`, :class:`SlicedServer`);
    ``config.rounds`` must then be ``slices.slices * rounds_per_slice``."""

    def __init__(self, tables, config, *, scoring_tables=None, slices: SlicePlan | None = None,
                 rounds_per_slice: int | None = None, **kw):
        if slices is not None:
            if rounds_per_slice is None or rounds_per_slice * slices.slices != config.rounds:
                raise ValueError("sliced training needs config.rounds == slices * "
                                 "rounds_per_slice")
            kw["client_factory"] = functools.partial(SlicedClient, plan=slices,
                                                     rounds_per_slice=rounds_per_slice)
            kw["server_factory"] = SlicedServer
        super().__init__(tables, config, **kw)
        self.n_rounds = config.rounds
        self.phase_starts = [0]
        if slices is not None:
            self.phase_starts = [k * rounds_per_slice for k in range(slices.slices)]
        self._scoring = scoring_tables if scoring_tables is not None else tables

    def scaler(self) -> tuple[np.ndarray, np.ndarray]:
        """The pooled scaler, recomputed exactly as the server fitted it at setup."""
        stats = self.server._stats
        n = sum(v["n"] for v in stats.values())
        mean = sum(v["sum"] for v in stats.values()) / n
        var = sum(v["sumsq"] for v in stats.values()) / n - mean**2
        std = np.sqrt(np.maximum(var, 0.0))
        return mean, np.where(std > 1e-12, std, 1.0)

    def predict(self, ids) -> np.ndarray:
        self.ensure_setup()
        mean, scale = self.scaler()
        task = self.config.task
        client = self.clients[self.members[0]]
        fn = compiled_predict(client.model.key, task.kind, task.n_classes)
        w = self.global_params()
        where = {}
        for name, t in self._scoring.items():
            for k, i in enumerate(t.ids):
                where[str(i)] = (name, k)
        rows = np.stack([self._scoring[where[str(i)][0]].features[where[str(i)][1]]
                         for i in ids]) if len(ids) else np.zeros((0, len(self.columns)))
        x = ((np.asarray(rows, np.float64) - mean) / scale).astype(np.float32)
        return np.asarray(fn(w, x))


class HorizontalAdapter(AdapterBase):
    mode = "horizontal"

    def __init__(self, spec: dict, aligned: list[str], erased: set[str] = frozenset()):
        self.spec = spec
        self.config = FedConfig.from_json(spec["config"])
        self.full_tables = load_client_tables(spec["dataset"])
        self.erased = {str(i) for i in erased}
        # The ids each client still holds once it deleted the erased rows (bookkeeping:
        # the clients delete the rows themselves when a trainer is built).
        self._left = {}
        for name, t in self.full_tables.items():
            keep = [i for i in t.ids if str(i) not in self.erased]
            if keep:  # a hospital with no rows left leaves the federation
                self._left[name] = keep
        self.original_aligned = list(aligned)
        self.aligned = [i for i in aligned if i not in self.erased]
        self._init_sisa(spec)
        self._shares: dict[str, dict] = {}

    def _init_sisa(self, spec: dict) -> None:
        """Shards, slices (or arrival waves) and the training config they imply."""
        sisa = spec.get("sisa") or {}
        self.shards = int(sisa.get("shards", 1))
        slices = int(sisa.get("slices", 1))
        waves = int((spec.get("arrival") or {}).get("waves", 1))
        if self.shards < 1 or slices < 1:
            raise RunDirError(f"SISA needs shards >= 1 and slices >= 1, got {sisa}")
        if slices > 1 and waves > 1:
            raise RunDirError("use SISA slices or arrival waves, not both")
        n = max(slices, waves)
        per = sisa.get("epochs_per_slice") or (spec.get("arrival") or {}).get(
            "epochs_per_slice")
        # Horizontal rounds take the place of the vertical epochs: a phase runs ``per``
        # federated rounds (default: the config's rounds) over the slices joined so far.
        self.rounds_per_slice = int(per or self.config.rounds)
        self.plan = SlicePlan(n) if n > 1 else None
        self.train_config = self.config if self.plan is None else dataclasses.replace(
            self.config, rounds=n * self.rounds_per_slice)
        # Per-client update logs only for the plain single model (approximate removal).
        self.update_logs = bool(spec.get("client_update_logs")) and (
            self.shards == 1 and self.plan is None)

    # -- models ----------------------------------------------------------------------------
    def models(self) -> list[str]:
        return ["main"] if self.shards == 1 else [f"shard-{k}" for k in range(self.shards)]

    def model_tables(self, model: str) -> dict:
        """Each client's share of ``model`` as loaded (its rows of the shard; the client
        deletes the erased ones itself when :meth:`trainer` builds it), minus clients with no
        training row left there (a hospital cannot train on held-out rows only; it sits
        out)."""
        if model not in self._shares:
            share = {}
            for name, left in self._left.items():
                t = self.full_tables[name]
                if model == "main":
                    share[name] = (t, left)
                    continue
                k = int(model.split("-")[1])
                shard = shard_map(map(str, t.ids), self.config.seed, self.shards)
                rows = [i for i in t.ids if shard[str(i)] == k]
                left = [i for i in left if shard[str(i)] == k]
                if left:
                    share[name] = (t if len(rows) == t.n_rows else t.rows(rows), left)
            self._shares[model] = {n: t for n, (t, left) in share.items() if self._trains(left)}
            if not self._shares[model]:
                raise RunDirError(
                    f"model {model!r} has no client with a training row; use fewer SISA "
                    "shards for this data"
                )
        return self._shares[model]

    def _trains(self, ids) -> bool:
        return not split_test(ids, self.config.seed, self.config.test_fraction).all()

    def trainer(self, model: str) -> UnlearnableFedTrainer:
        """The federation of ``model``: its clients are built from their shares as loaded
        and each deletes its erased rows itself (``data.erase``) before setup."""
        kw = {"client_factory": approximate.LoggingClient} if self.update_logs else {}
        t = UnlearnableFedTrainer(self.model_tables(model), self.train_config, mode="loop",
                                  scoring_tables=self.full_tables, slices=self.plan,
                                  rounds_per_slice=self.rounds_per_slice, **kw)
        request_erasure(t.coordinator, {n: ids for n, ids in self.erased_held().items()
                                        if n in t.clients})
        return t

    @property
    def tables(self) -> dict:
        """Each client's table as the client holds it after the run's erasures, for
        inspection (reports, tests): clients built from their full tables delete the erased
        rows themselves (``data.erase``); a client with no row left has left the federation.
        Training never reads this (each trainer's clients do the same deletion)."""
        coordinator, clients = self.holding_parties()
        request_erasure(coordinator, self.erased_held())
        return {n: c.table for n, c in clients.items() if c.table.n_rows}

    # -- erasure and alignment -------------------------------------------------------------
    def holding_parties(self):
        transport, executor = InMemoryTransport(), LocalExecutor("loop")
        clients = {n: HospitalClient(n, t, executor) for n, t in self.full_tables.items()}
        for client in clients.values():
            transport.register(client)
        return Coordinator(transport), clients

    @classmethod
    def align(cls, spec: dict, *, progress: bool = False) -> list[str]:
        """No PSI in a horizontal federation: every client's ids, sorted."""
        tables = load_client_tables(spec["dataset"])
        return sorted({str(i) for t in tables.values() for i in t.ids})

    # -- approximate removal of a whole client (horizontal.federaser) ----------------------
    def check_client_removal(self, run, client: str) -> list[str]:
        """Everything in this run that can refuse removing ``client`` approximately, checked
        before anything is written (``run``: the run directory, for its deletion registry
        and the owners' update logs); returns the client's ids not erased yet (all of its
        rows leave with it)."""
        approximate.check_supported(self.config)
        if client not in self.full_tables:
            raise UnknownClientError(
                f"no client named {client!r} in this run; its clients are "
                f"{sorted(self.full_tables)} (nothing was changed)"
            )
        erased = run.erased()
        ids = self.full_tables[client].ids
        pids = [str(i) for i in ids if str(i) not in erased]
        if not pids:
            by = sorted({erased[str(i)] for i in ids})
            raise UnknownClientError(
                f"client {client!r} holds no rows in this run any more (erased by {by}); "
                "there is nothing left to remove (nothing was changed)"
            )
        remaining = [n for n in self.model_tables("main") if n != client]
        if not remaining:
            raise MethodUnavailableError(
                f"removing {client!r} would leave no client with training rows; retire the "
                "run instead"
            )
        missing = [n for n in remaining if not approximate.update_log_path(
            run.path, n, "main").exists()]
        if not self.update_logs or missing:
            raise MethodUnavailableError(
                "approximate removal replays the remaining clients' own update logs, and this "
                f"run keeps none for {missing or remaining} (train it with "
                "client_update_logs=True, the default of horizontal_spec); or remove the "
                "client exactly by erasing its patients (--method exact)"
            )
        return pids

    def delete_client_update_log(self, run, client: str, model: str = "main") -> None:
        """The leaving client deletes the update log it kept itself."""
        approximate.delete_update_log(run.path, client, model)

    def remove_client(self, run, model: str, *, every: int, calibration_fraction: float,
                      between: str, meta: dict) -> dict:
        """FedEraser-style calibrated replay (:func:`horizontal.federaser.calibrated_replay`)
        by the remaining federation, set up again (its scaler no longer has the leaving
        client's moments; this adapter must be the run's after the client's rows were
        erased), from the remaining owners' update logs. Returns the checkpoint that
        replaces every checkpoint of ``model`` (``meta`` added to its meta), ``rounds``
        replayed, ``rounds_total``, ``calibration_rounds``, ``seconds`` and
        ``calibration`` (settings and cost, for the certificate)."""
        trainer = self.trainer(model)
        trainer.setup()
        logs = self.load_owner_logs(run, model, trainer.members, trainer.n_params)
        out = approximate.calibrated_replay(
            trainer, logs, every=every, calibration_fraction=calibration_fraction,
            between=between)
        calibration = out["settings"] | {
            "calibration_rounds": out["calibration_rounds"], "rounds_used": out["rounds"],
            "local_steps": out["local_steps"], "seconds": out["seconds"],
            "start": "the initial model (round 0)", "remaining_clients": list(trainer.members),
            "update_log_bytes": {n: logs[n].nbytes for n in sorted(logs)},
            "update_logs_at": "each remaining client (RUN_DIR/owners/CLIENT), never the server",
            "scaler": "pooled over the remaining clients (refitted at setup)",
        }
        ckpt = self.checkpoint_with_global(model, trainer, out["params"], meta)
        return {"checkpoint": ckpt, "rounds": out["rounds"], "rounds_total": trainer.n_rounds,
                "calibration_rounds": out["calibration_rounds"], "seconds": out["seconds"],
                "calibration": calibration}

    def local_steps(self, trainer) -> int:
        """Local steps every member of ``trainer`` (fitted with update logs) trained."""
        return approximate.local_steps(trainer)

    @staticmethod
    def global_params(trainer) -> np.ndarray:
        """The global model's parameters (one flat vector)."""
        return trainer.global_params()

    # -- what the clients keep themselves ---------------------------------------------------
    def keep_owner_records(self, run, model: str, trainer, first_round: int) -> None:
        """After ``model`` was fitted from ``first_round``: every member writes its update log
        at its own place (rounds before ``first_round`` kept from its stored log: a replay
        does not change them), and a client no longer a member deletes its log."""
        if not self.update_logs:
            return
        owners = run.path / approximate.OWNERS_DIR
        members = set(trainer.members)
        for path in sorted(owners.glob(f"*/update-log-{model}.msgpack")):
            if path.parent.name not in members:
                approximate.delete_update_log(run.path, path.parent.name, model)
        for name in trainer.members:
            path = approximate.update_log_path(run.path, name, model)
            log = trainer.clients[name].update_log
            if first_round > 0 and path.exists():
                old = approximate.load_update_log(path, name)
                for r in sorted(old.updates):
                    if r < first_round:
                        log.record(r, old.updates[r], old.examples[r], old.steps[r])
            approximate.save_update_log(path, log, fsync=run.fsync)

    def load_owner_logs(self, run, model: str, clients, size: int) -> dict:
        """The stored update logs of ``clients`` (each read at its owner)."""
        return {n: approximate.load_update_log(approximate.update_log_path(run.path, n, model),
                                               n, size) for n in clients}

    # -- checkpoints -----------------------------------------------------------------------
    @staticmethod
    def to_checkpoint(model: str, record: FedRoundRecord) -> Checkpoint:
        return to_checkpoint(model, record)

    @staticmethod
    def to_record(ckpt: Checkpoint) -> FedRoundRecord:
        return from_checkpoint(ckpt, digest_of=SERVER)

    def checkpoint_with_global(self, model: str, trainer, params, meta: dict) -> Checkpoint:
        """The checkpoint of ``trainer`` (set up, no round run: fresh client and server
        optimizer states) holding ``params`` as the global model after its last round: what
        an approximate removal stores in place of the model's checkpoints. Plain FedAvg
        only (no server momentum, control variates or compression residuals to carry)."""
        last = trainer.n_rounds - 1
        states = self.final_state(trainer)
        for tree in states.values():
            tree["round"] = last
        states[SERVER]["params"]["global"] = np.asarray(params, np.float32)
        return Checkpoint(model, last, states, {}, float("nan"),
                          {"epoch": last, "config_digest": trainer.config.digest(),
                           "participants": list(trainer.members), "dropped": [],
                           "skipped": False} | meta)

    def fit(self, model, trainer, on_checkpoint=None, resume=None) -> None:
        cb = None
        if on_checkpoint is not None:
            def cb(record):
                on_checkpoint(self.to_checkpoint(model, record))
        trainer.ensure_setup()
        trainer.fit(on_round_end=cb,
                    resume_from=None if resume is None else self.to_record(resume),
                    progress=False)

    def load(self, model, trainer, ckpt: Checkpoint) -> None:
        trainer.ensure_setup()
        trainer.restore(self.to_record(ckpt))

    def final_state(self, trainer) -> dict[str, dict]:
        out = {SERVER: state_tree(trainer.server.snapshot())}
        return out | {n: state_tree(trainer.clients[n].snapshot()) for n in trainer.members}

    # -- data ------------------------------------------------------------------------------
    def labels(self, ids) -> np.ndarray:
        where = {}
        for t in self.full_tables.values():
            for i, y in zip(t.ids, t.labels):
                where[str(i)] = y
        return np.asarray([where[str(i)] for i in ids])

