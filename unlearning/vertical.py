"""The vertical (split learning) adapter: rebuilds :class:`~vfl.trainer.SplitTrainer` s
from a run manifest, minus erased patients, for replay and retrain.

Every party's table comes from the dataset loader named in the manifest minus the erased
ids (each party deletes the patient's rows). Alignment is each party's stored PSI result
minus the erased ids (the intersection of the tables after a deletion), so a replay does
not re-run PSI. With SISA, patients are hashed into S shards and every party keeps S
bottom models (one federation per shard); predictions are averaged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json

import numpy as np

from unlearning.contract import AdapterBase, register
from unlearning.errors import RunDirError
from unlearning.store import Checkpoint
from vfl.config import TrainConfig
from vfl.federation import Federation
from vfl.parties import PartyState
from vfl.schedule import SlicePlan
from vfl.trainer import RoundRecord, SplitTrainer

_DATA_CACHE: dict[str, tuple[dict, str]] = {}


def shard_of(pid: str, seed: int, shards: int) -> int:
    h = hashlib.blake2b(f"shard|{seed}|{pid}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % shards


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


def state_tree(st: PartyState) -> dict:
    return {
        "party": st.party,
        "round": int(st.round),
        "params": st.params,
        "opt_state": [np.asarray(x) for x in st.opt_state],
        "rng": np.asarray(st.rng),
        "config_digest": st.config_digest,
    }


def _keys_to_int(tree):
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _keys_to_int(v)
                for k, v in tree.items()}
    return tree


def party_state(tree: dict) -> PartyState:
    opt = tree["opt_state"]
    if isinstance(opt, dict):  # msgpack may return lists as {"0": ...}
        opt = [opt[k] for k in sorted(opt, key=int)]
    return PartyState(
        tree["party"], int(tree["round"]), _keys_to_int(tree["params"]),
        [np.asarray(x) for x in opt], np.asarray(tree["rng"]), tree["config_digest"],
    )


@register("vertical")
class VerticalAdapter(AdapterBase):
    mode = "vertical"

    def __init__(self, spec: dict, aligned: list[str], erased: set[str] = frozenset()):
        self.spec = spec
        self.config = TrainConfig.from_json(spec["config"])
        tables, self.active = load_tables(spec["dataset"])
        self.full_tables = tables
        erased = set(erased)
        self.erased = erased
        self.tables = {}
        for name, t in tables.items():
            keep = [i for i in t.ids if str(i) not in erased]
            self.tables[name] = t if len(keep) == t.n_rows else t.rows(keep)
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
        return [i for i in self.aligned if shard_of(i, self.config.seed, self.shards) == k]

    def trainer(self, model: str) -> SplitTrainer:
        fed = Federation.from_tables(self.tables, self.active)
        ids = np.asarray(self.model_ids(model), dtype=object)
        for party in fed.parties.values():
            party.on_aligned(ids)  # party-local: its PSI result minus erased ids
            party.load_scoring_table(self.full_tables[party.name])
        return SplitTrainer(fed, self.config, slices=self.plan)

    # -- checkpoints -----------------------------------------------------------------------
    @staticmethod
    def to_checkpoint(model: str, record: RoundRecord) -> Checkpoint:
        return Checkpoint(
            model, record.round,
            {n: state_tree(s) for n, s in record.states.items()},
            {n: tuple(str(i) for i in ids) for n, ids in record.ids_used.items()},
            record.loss, {"epoch": record.epoch, "config_digest": record.config_digest},
        )

    @staticmethod
    def to_record(ckpt: Checkpoint) -> RoundRecord:
        states = {n: party_state(t) for n, t in ckpt.states.items()}
        digest = next(iter(states.values())).config_digest
        return RoundRecord(ckpt.round, int(ckpt.meta.get("epoch", 0)), states, {}, ckpt.loss,
                           digest)

    def fit(self, model, trainer, on_checkpoint=None, resume=None) -> None:
        cb = None
        if on_checkpoint is not None:
            def cb(record):
                on_checkpoint(self.to_checkpoint(model, record))
        if not trainer._setup_done:
            trainer.setup()
        trainer.fit(
            on_round_end=cb,
            resume_from=None if resume is None else self.to_record(resume),
            progress=False,
        )

    def load(self, model, trainer, ckpt: Checkpoint) -> None:
        if not trainer._setup_done:
            trainer.setup()
        trainer.restore(self.to_record(ckpt))

    def final_state(self, trainer) -> dict[str, dict]:
        fed = trainer.federation
        return {n: state_tree(fed.parties[n].snapshot()) for n in fed.names}

    # -- data ------------------------------------------------------------------------------
    def labels(self, ids) -> np.ndarray:
        t = self.full_tables[self.active]
        return np.asarray(t.rows([str(i) for i in ids]).labels)



def with_config(spec: dict, **changes) -> dict:
    cfg = dataclasses.replace(TrainConfig.from_json(spec["config"]), **changes)
    return {**spec, "config": cfg.to_json()}
