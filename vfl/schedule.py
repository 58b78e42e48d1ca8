"""Deterministic data schedule: batches and splits derived from (seed, round, ids).

The unlearning contract (DESIGN section 6) needs a replay without one patient to reproduce
a retrain without that patient exactly. So nothing here depends on row positions or on a
stateful RNG:

* the train/test split puts each id in the test set by a keyed hash of (seed, id) alone, so
  removing one patient never moves another;
* within epoch ``e`` the ids are ordered by a keyed hash of (seed, e, id) and cut into
  consecutive batches. Removing a patient leaves every batch *before* its position
  unchanged, so the rounds before its first use are identical with or without it.

Every party computes the same schedule from the public seed and the aligned ids.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np


def _keyed_hash(*parts) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update("|".join(str(p) for p in parts).encode())
    return int.from_bytes(h.digest(), "big")


def split_test(ids, seed: int, test_fraction: float) -> np.ndarray:
    """Boolean mask: True where the id is held out for testing."""
    cut = int(test_fraction * 2**64)
    return np.fromiter((_keyed_hash("split", seed, i) < cut for i in ids), bool, len(ids))


def ids_digest(ids) -> str:
    """A public fingerprint of an ordered id list (parties compare batch agreement)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\x00")
    return h.hexdigest()


@dataclass
class BatchSchedule:
    """Batches of ``batch_size`` over ``ids`` for ``epochs`` epochs: round r -> row positions."""

    ids: np.ndarray
    seed: int
    batch_size: int
    epochs: int

    def __post_init__(self):
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.ids) / self.batch_size))

    @property
    def n_rounds(self) -> int:
        return self.epochs * self.steps_per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            keys = np.fromiter(
                (_keyed_hash("batch", self.seed, epoch, i) for i in self.ids),
                dtype=np.uint64,
                count=len(self.ids),
            )
            self._epoch_cache = (epoch, np.argsort(keys, kind="stable"))
        return self._epoch_cache[1]

    def positions(self, round: int) -> np.ndarray:
        """Row positions (into ``ids``) used in ``round``."""
        epoch, step = divmod(round, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        return order[step * self.batch_size : (step + 1) * self.batch_size]

    def round_ids(self, round: int) -> np.ndarray:
        return self.ids[self.positions(round)]
