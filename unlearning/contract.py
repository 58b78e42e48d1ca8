"""The trainer side of the unlearning contract (DESIGN section 6), trainer-agnostic.

An :class:`Adapter` rebuilds a run's trainers from the run manifest, minus erased patients,
and converts between the trainer's own round records and store :class:`Checkpoint` s. The
vertical adapter is :class:`unlearning.vertical.VerticalAdapter`; a horizontal trainer
plugs in by implementing the same methods and registering under its ``mode``.

A trainer must be deterministic and round-based: the state after round r depends only on
the seed, the state after r-1 and the rows round r used; a replay without some patients
from a checkpoint they did not influence must equal a retrain without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from unlearning.store import Checkpoint


class ModelTrainer(Protocol):
    """One trained model (the whole model, or one SISA shard) of a run."""

    n_rounds: int
    phase_starts: list[int]

    def setup(self) -> None: ...

    def setup_ids(self) -> dict[str, tuple[str, ...]]: ...


class Adapter(Protocol):
    mode: str

    def models(self) -> list[str]: ...

    def trainer(self, model: str) -> ModelTrainer: ...

    def fit(
        self,
        model: str,
        trainer: ModelTrainer,
        on_checkpoint: Callable[[Checkpoint], None] | None,
        resume: Checkpoint | None,
    ) -> None: ...

    def load(self, model: str, trainer: ModelTrainer, ckpt: Checkpoint) -> None: ...

    def final_state(self, trainer: ModelTrainer) -> dict[str, dict]: ...

    def holders(self, pid: str) -> list[str]: ...

    def scores(self, trainers: dict[str, ModelTrainer], ids) -> np.ndarray: ...

    def labels(self, ids) -> np.ndarray: ...

    def split_ids(self) -> dict[str, list[str]]: ...


ADAPTERS: dict[str, Callable] = {}


def register(mode: str):
    def deco(cls):
        ADAPTERS[mode] = cls
        return cls

    return deco


class AdapterBase:
    """What every adapter shares: who holds a patient, SISA score averaging, and the
    keyed-hash train/test split of :func:`vfl.schedule.split_test` over the adapter's
    ``aligned`` / ``original_aligned`` ids under its ``config.seed`` and
    ``config.test_fraction``."""

    _id_sets: dict[str, set[str]] | None = None

    def holders(self, pid: str) -> list[str]:
        # the id sets are built once per adapter (its tables never change after __init__)
        if self._id_sets is None:
            self._id_sets = {n: set(map(str, t.ids)) for n, t in self.full_tables.items()}
        return sorted(n for n, ids in self._id_sets.items() if str(pid) in ids)

    def scores(self, trainers: dict, ids) -> np.ndarray:
        """Averaged scores of the models (SISA: mean over shards)."""
        ids = [str(i) for i in ids]
        return np.mean([np.asarray(t.predict(ids)) for t in trainers.values()], axis=0)

    def training_ids(self, pids) -> list[str]:
        """Those of ``pids`` that were training rows before their erasure."""
        from vfl.schedule import split_test

        known = set(self.original_aligned)
        pids = [str(p) for p in pids if str(p) in known]
        if not pids:
            return []
        test = split_test(
            np.asarray(pids, dtype=object), self.config.seed, self.config.test_fraction
        )
        return [p for p, t in zip(pids, test) if not t]

    def split_ids(self) -> dict[str, list[str]]:
        """Training (per the current data) and never-seen test ids over all models."""
        from vfl.schedule import split_test

        ids = np.asarray(self.aligned, dtype=object)
        test = split_test(ids, self.config.seed, self.config.test_fraction)
        return {"train": list(ids[~test]), "test": list(ids[test])}
