"""The horizontal (FedAvg) adapter: rebuilds :class:`~horizontal.trainer.FederatedTrainer` s
from a run manifest, minus erased patients, for replay and retrain.

Every client's table comes from the dataset factory named in the manifest minus the erased
ids (each hospital deletes the patient's rows). There is no PSI in a horizontal federation:
the manifest's ``aligned`` list is simply every client's ids (:func:`horizontal_spec` fills
it in), kept for the held-out split and the erasure bookkeeping.

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
"""

from __future__ import annotations

import importlib
import json

import numpy as np

from horizontal.config import FedConfig
from horizontal.local import compiled_predict
from horizontal.server import SERVER
from horizontal.trainer import FederatedTrainer, FedRoundRecord
from unlearning.contract import AdapterBase, register
from unlearning.errors import RunDirError
from unlearning.store import Checkpoint
from vfl.parties import PartyState

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
    tables = load_client_tables(dataset)
    aligned = sorted({str(i) for t in tables.values() for i in t.ids})
    return {"mode": "horizontal", "dataset": dataset, "config": config.to_json(),
            "aligned": aligned} | extra


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def state_tree(st: PartyState) -> dict:
    return {
        "party": st.party,
        "round": int(st.round),
        "params": {k: np.asarray(v) for k, v in st.params.items()},
        "opt_state": [np.asarray(x) for x in st.opt_state],
        "rng": np.asarray(st.rng),
        "config_digest": st.config_digest,
        "extra": _plain(st.extra),
    }


def _as_list(x):
    if isinstance(x, dict):  # msgpack may return lists as {"0": ...}
        return [x[k] for k in sorted(x, key=int)]
    return list(x)


def party_state(tree: dict) -> PartyState:
    return PartyState(
        tree["party"], int(tree["round"]), dict(tree.get("params") or {}),
        [np.asarray(x) for x in _as_list(tree.get("opt_state") or [])],
        np.asarray(tree["rng"]), tree["config_digest"], dict(tree.get("extra") or {}),
    )


class UnlearnableFedTrainer(FederatedTrainer):
    """:class:`FederatedTrainer` plus what the unlearning contract reads: ``n_rounds``,
    ``phase_starts`` and id-keyed predictions (scores of any patient a client held, erased
    ones included, computed in memory by its holder with the federation's scaler)."""

    def __init__(self, tables, config, *, scoring_tables=None, **kw):
        super().__init__(tables, config, **kw)
        self.n_rounds = config.rounds
        self.phase_starts = [0]
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
        if not self._setup_done:
            self.setup()
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


@register("horizontal")
class HorizontalAdapter(AdapterBase):
    mode = "horizontal"

    def __init__(self, spec: dict, aligned: list[str], erased: set[str] = frozenset()):
        self.spec = spec
        self.config = FedConfig.from_json(spec["config"])
        self.full_tables = load_client_tables(spec["dataset"])
        self.erased = set(erased)
        self.tables = {}
        for name, t in self.full_tables.items():
            keep = [i for i in t.ids if str(i) not in self.erased]
            if not keep:
                continue  # a hospital with no rows left leaves the federation
            self.tables[name] = t if len(keep) == t.n_rows else t.rows(keep)
        self.original_aligned = list(aligned)
        self.aligned = [i for i in aligned if i not in self.erased]
        if int((spec.get("sisa") or {}).get("shards", 1)) > 1:
            raise RunDirError("SISA shards are not implemented for horizontal runs")

    # -- models ----------------------------------------------------------------------------
    def models(self) -> list[str]:
        return ["main"]

    def trainer(self, model: str) -> UnlearnableFedTrainer:
        return UnlearnableFedTrainer(self.tables, self.config, mode="loop",
                                     scoring_tables=self.full_tables)

    # -- checkpoints -----------------------------------------------------------------------
    @staticmethod
    def to_checkpoint(model: str, record: FedRoundRecord) -> Checkpoint:
        return Checkpoint(
            model, record.round,
            {n: state_tree(s) for n, s in record.states.items()},
            {n: tuple(str(i) for i in ids) for n, ids in record.ids_used.items()},
            record.loss,
            {"epoch": record.epoch, "config_digest": record.config_digest,
             "participants": list(record.participants), "dropped": list(record.dropped),
             "skipped": bool(record.skipped)},
        )

    @staticmethod
    def to_record(ckpt: Checkpoint) -> FedRoundRecord:
        states = {n: party_state(t) for n, t in ckpt.states.items()}
        digest = states[SERVER].config_digest
        return FedRoundRecord(
            round=ckpt.round, epoch=int(ckpt.meta.get("epoch", ckpt.round)), states=states,
            ids_used={}, loss=ckpt.loss, config_digest=digest,
            participants=tuple(ckpt.meta.get("participants", ())),
            dropped=tuple(ckpt.meta.get("dropped", ())),
            skipped=bool(ckpt.meta.get("skipped", False)),
        )

    def fit(self, model, trainer, on_checkpoint=None, resume=None) -> None:
        cb = None
        if on_checkpoint is not None:
            def cb(record):
                on_checkpoint(self.to_checkpoint(model, record))
        if not trainer._setup_done:
            trainer.setup()
        trainer.fit(on_round_end=cb,
                    resume_from=None if resume is None else self.to_record(resume),
                    progress=False)

    def load(self, model, trainer, ckpt: Checkpoint) -> None:
        if not trainer._setup_done:
            trainer.setup()
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

