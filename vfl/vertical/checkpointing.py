"""The vertical (split learning) adapter: rebuilds :class:`~vfl.vertical.trainer.SplitTrainer` s
from a run manifest, minus erased patients, for replay and retrain.

Every party is built from its full table, as the dataset loader named in the manifest
gives it, and deletes the erased patients' rows itself: the coordinator sends it
``data.erase`` with the ids it holds and it answers ``data.erased``
(:func:`vfl.core.rounds.request_erasure`); the adapter never filters a table. Alignment is
each party's stored PSI result minus the erased ids (the intersection of the tables after a
deletion), so a replay does not re-run PSI (:meth:`VerticalAdapter.align` runs it once, when
the run is created). With SISA, patients are hashed into S shards and every party keeps S
bottom models (one federation per shard); predictions are averaged.

Cost. Trainers are :class:`CheckpointingTrainer` s: when the store will keep only some
rounds (``on_checkpoint.wants_state``, see :class:`unlearning.run.CheckpointSink`), the other
rounds hand over their ids (all lineage needs) without copying every party's parameters
and optimizer state off the device. Shard assignments are a keyed hash per patient,
computed once per process and seed.

Set-up federations stay alive between requests in a :class:`TrainerPool` (one per
:class:`~unlearning.run.RunDir`): when a trainer is dropped, its federation returns to the
pool under a key of everything its setup read (dataset, training config, slice plan and
the model's exact ids after erasures), and a later ``trainer(model)`` with the same key
takes it instead of building and setting up the parties again. Erasing a patient changes
the key of that patient's model only, so the other shards (and the replayed shard, once
replayed) are reused by verification and later requests, and the replayed shard is
always set up afresh. A pooled trainer behaves as a fresh one: until ``restore`` (a
checkpoint load or resume) it is *stale*, and anything that would read its parameters
(fitting from scratch, a round, scoring, a snapshot) first runs setup again. Only the
plain protocol pools (a paillier party also keeps its keys and the aggregates it learned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import weakref
from collections import OrderedDict

import numpy as np

from vfl.core.errors import RunDirError
from vfl.core.keyed import SlicePlan, ids_digest, shard_map
from vfl.core.rounds import (
    AdapterBase,
    Checkpoint,
    from_checkpoint,
    request_erasure,
    state_tree,
    to_checkpoint,
)
from vfl.core.transcript import Transcript
from vfl.vertical.config import SecurityPolicy, TrainConfig
from vfl.vertical.federation import Federation
from vfl.vertical.source_layer import plaintext_view
from vfl.vertical.trainer import RoundRecord, SplitTrainer

_DATA_CACHE: dict[str, tuple[dict, str]] = {}


def load_tables(dataset: dict) -> tuple[dict, str]:
    """``{"name": "actg320", "kwargs": {...}}`` (vfl.datasets) or ``{"factory":
    "module:function", "kwargs": {...}, "active": NAME}`` returning party tables."""
    key = json.dumps(dataset, sort_keys=True)
    if key not in _DATA_CACHE:
        if "factory" in dataset:
            module, func = dataset["factory"].split(":")
            out = getattr(importlib.import_module(module), func)(**dataset.get("kwargs", {}))
            tables = dict(out.tables) if hasattr(out, "tables") else dict(out)
            active = getattr(out, "active", None) or dataset["active"]
        elif "name" in dataset:
            from vfl.datasets import load

            ds = load(dataset["name"], **dataset.get("kwargs", {}))
            tables, active = dict(ds.tables), ds.active
        else:
            raise RunDirError(
                "the run manifest's dataset needs a 'name' (vfl.datasets) or a 'factory'"
            )
        _DATA_CACHE[key] = (tables, active)
    return _DATA_CACHE[key]


class TrainerPool:
    """Set-up federations kept for reuse, by setup key; each is handed to one trainer at a
    time (:meth:`take` removes it) and comes back when that trainer is dropped. Holds at
    most ``capacity`` federations, least recently returned evicted first."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self._free: OrderedDict[str, list] = OrderedDict()
        self._size = 0
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return self._size

    def take(self, key: str):
        items = self._free.get(key)
        if not items:
            self.misses += 1
            return None
        item = items.pop()
        if not items:
            del self._free[key]
        self._size -= 1
        self.hits += 1
        return item

    def give(self, key: str, item) -> None:
        self._free.setdefault(key, []).append(item)
        self._free.move_to_end(key)
        self._size += 1
        while self._size > self.capacity:
            oldest, items = next(iter(self._free.items()))
            items.pop(0)
            self._size -= 1
            if not items:
                del self._free[oldest]


class CheckpointingTrainer(SplitTrainer):
    """A :class:`SplitTrainer` whose round records carry party states only for the rounds
    ``states_for(round)`` selects (all rounds when it is None); the other records carry the
    round, loss and ids used. Training itself is unchanged.

    With a pool (``pool_slot``: pool and setup key), its set-up federation returns to the
    pool when the trainer is garbage; a trainer built from a pooled federation starts
    ``stale`` (see the module docstring)."""

    states_for = None
    stale = False
    pool_slot: tuple[TrainerPool, str] | None = None
    _finalizer = None
    _digest = None

    # -- pooling ---------------------------------------------------------------------------
    def _register_return(self) -> None:
        if self.pool_slot is None or self._finalizer is not None or not self.is_set_up:
            return
        pool, key = self.pool_slot
        setup = self.setup_result()
        self._finalizer = weakref.finalize(self, pool.give, key, (self.federation, setup))
        self._finalizer.atexit = False

    @classmethod
    def from_pool(cls, item, config: TrainConfig, slices, slot) -> CheckpointingTrainer:
        federation, setup = item
        federation.transport.transcript = Transcript()  # this owner's messages only
        t = cls(federation, config, slices=slices)
        t.adopt_setup(setup)
        t.stale, t.pool_slot = True, slot
        t._register_return()
        return t

    def fresh(self) -> None:
        """Give a stale (pooled) trainer a fresh trainer's state: run setup again."""
        if self.stale:
            self.forget_setup()
            self.setup()

    # -- SplitTrainer ----------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.stale = False
        self._register_return()

    def restore(self, record: RoundRecord) -> None:
        super().restore(record)  # every party's parameters, optimizer state and round
        self.stale = False

    def fit(self, *, resume_from: RoundRecord | None = None, **kw):
        if resume_from is None:
            self.fresh()
        return super().fit(resume_from=resume_from, **kw)

    def run_rounds(self, rounds, on_done=None) -> dict[int, float]:
        self.fresh()
        return super().run_rounds(rounds, on_done)

    def evaluate(self, split: str = "test", *, with_scores: bool = False) -> dict:
        self.fresh()
        return super().evaluate(split, with_scores=with_scores)

    def predict(self, ids) -> np.ndarray:
        self.fresh()
        return super().predict(ids)

    def snapshot(self, r: int, loss: float) -> RoundRecord:
        self.fresh()
        if self.states_for is None or self.states_for(r):
            return super().snapshot(r, loss)
        fed = self.federation
        if self._digest is None:
            self._digest = self.config.digest()
        return RoundRecord(
            round=r,
            epoch=r // self.steps_per_epoch,
            states={},
            ids_used={n: fed.parties[n].used_ids(r) for n in fed.names},
            loss=loss,
            config_digest=self._digest,
        )


class VerticalAdapter(AdapterBase):
    mode = "vertical"
    cacheable = True  # nothing changes after __init__ (unlearning.run.RunDir.adapter)
    pool: TrainerPool | None = None  # set by RunDir.adapter: the run's set-up federations

    @staticmethod
    def make_pool() -> TrainerPool:
        """A pool of set-up federations for one run directory."""
        return TrainerPool()
    _setup_base: str | None = None

    def __init__(self, spec: dict, aligned: list[str], erased: set[str] = frozenset()):
        self.spec = spec
        self.config = TrainConfig.from_json(spec["config"])
        self.full_tables, self.active = load_tables(spec["dataset"])
        erased = {str(i) for i in erased}
        self.erased = erased
        self.original_aligned = list(aligned)
        self.aligned = [i for i in aligned if i not in erased]
        sisa = spec.get("sisa") or {}
        self.shards = int(sisa.get("shards", 1))
        slices = int(sisa.get("slices", 1))
        arrival = spec.get("arrival") or {}
        waves = int(arrival.get("waves", 1))
        if slices > 1 and waves > 1:
            raise RunDirError("use SISA slices or arrival waves, not both")
        n = max(slices, waves)
        eps = sisa.get("epochs_per_slice") or arrival.get("epochs_per_slice")
        self.plan = SlicePlan(n, eps) if n > 1 else None

    # -- models ----------------------------------------------------------------------------
    def models(self) -> list[str]:
        return ["main"] if self.shards == 1 else [f"shard-{k}" for k in range(self.shards)]

    def model_ids(self, model: str) -> list[str]:
        if self.shards == 1:
            return list(self.aligned)
        k = int(model.split("-")[1])
        shard = shard_map(self.aligned, self.config.seed, self.shards)
        return [i for i in self.aligned if shard[i] == k]

    def setup_key(self, ids) -> str:
        """Everything a model's setup reads: dataset, training config, slice plan, parties
        and the model's ids (each party sets up on exactly these rows of its table)."""
        if self._setup_base is None:
            self._setup_base = json.dumps(
                {"dataset": self.spec["dataset"], "config": self.config.to_json(),
                 "plan": None if self.plan is None else self.plan.to_json(),
                 "active": self.active, "parties": sorted(self.full_tables)},
                sort_keys=True)
        return hashlib.sha256(f"{self._setup_base}|{ids_digest(ids)}".encode()).hexdigest()

    def trainer(self, model: str) -> CheckpointingTrainer:
        ids = self.model_ids(model)
        slot = None
        # plain protocol only: a paillier party also keeps its keys and what it learned
        if self.pool is not None and self.config.protocol == "plain":
            slot = (self.pool, self.setup_key(ids))
            item = self.pool.take(slot[1])
            if item is not None:
                t = CheckpointingTrainer.from_pool(item, self.config, self.plan, slot)
                self._erase_in(t.federation)  # what erasures since it was pooled took
                return t
        fed = self._federation()
        self._erase_in(fed)
        ids = np.asarray(ids, dtype=object)
        for party in fed.parties.values():
            party.on_aligned(ids)  # party-local: its PSI result minus erased ids
        t = CheckpointingTrainer(fed, self.config, slices=self.plan)
        t.pool_slot = slot
        return t

    def _federation(self) -> Federation:
        """Every party built from its full table. The run's operator pinned the protocol
        and key length in the manifest's config."""
        return Federation.from_tables(
            self.full_tables, self.active, policy=SecurityPolicy.pinned(self.config)
        )

    def _erase_in(self, fed: Federation) -> dict[str, dict]:
        """Each party of ``fed`` deletes its rows of the run's erased patients itself
        (``data.erase``). Its scoring table is then its full table: verification scores
        erased rows in memory, at their holder, for the duration of a request."""
        acks = request_erasure(fed.coordinator, self.erased_held())
        for party in fed.parties.values():
            party.load_scoring_table(self.full_tables[party.name])
        return acks

    # -- erasure and alignment -------------------------------------------------------------
    def holding_parties(self):
        fed = self._federation()
        return fed.coordinator, fed.parties

    def comparable_state(self, states: dict[str, dict]) -> dict[str, dict]:
        """Encrypted source layers (``paillier``) decrypted: the ciphertexts, random shares
        and keys of two runs differ, the model does not
        (:func:`vfl.vertical.source_layer.plaintext_view`)."""
        return plaintext_view(states)

    @classmethod
    def align(cls, spec: dict, *, progress: bool = False) -> list[str]:
        """Private set intersection over the manifest's parties, once, when the run is
        created; each party keeps its result and the run stores the aligned ids."""
        tables, active = load_tables(spec["dataset"])
        fed = Federation.from_tables(tables, active)
        fed.align(progress=progress)
        return [str(i) for i in fed.parties[active].aligned_ids]

    # -- checkpoints -----------------------------------------------------------------------
    @staticmethod
    def to_checkpoint(model: str, record: RoundRecord) -> Checkpoint:
        return to_checkpoint(model, record)

    @staticmethod
    def to_record(ckpt: Checkpoint) -> RoundRecord:
        return from_checkpoint(ckpt)

    def fit(self, model, trainer, on_checkpoint=None, resume=None) -> None:
        cb = None
        if on_checkpoint is not None:
            def cb(record):
                on_checkpoint(self.to_checkpoint(model, record))
        trainer.ensure_setup()
        selective = isinstance(trainer, CheckpointingTrainer)
        if selective:
            trainer.states_for = getattr(on_checkpoint, "wants_state", None)
        try:
            trainer.fit(
                on_round_end=cb,
                resume_from=None if resume is None else self.to_record(resume),
                progress=False,
            )
        finally:
            if selective:
                trainer.states_for = None

    def load(self, model, trainer, ckpt: Checkpoint) -> None:
        trainer.ensure_setup()
        trainer.restore(self.to_record(ckpt))

    def final_state(self, trainer) -> dict[str, dict]:
        if isinstance(trainer, CheckpointingTrainer):
            trainer.fresh()
        fed = trainer.federation
        return {n: state_tree(fed.parties[n].snapshot()) for n in fed.names}

    # -- data ------------------------------------------------------------------------------
    def labels(self, ids) -> np.ndarray:
        t = self.full_tables[self.active]
        return np.asarray(t.rows([str(i) for i in ids]).labels)



def with_config(spec: dict, **changes) -> dict:
    cfg = dataclasses.replace(TrainConfig.from_json(spec["config"]), **changes)
    return {**spec, "config": cfg.to_json()}
