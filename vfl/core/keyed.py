"""Keyed hashing: every deterministic schedule of the framework, in one place.

The unlearning contract needs a replay without one patient to reproduce a retrain without
that patient exactly, so nothing here depends on row positions or on a stateful RNG. Every
choice is a 64-bit blake2b hash of ``(purpose, seed, ..., id)`` joined by ``|``:

* **split** (:func:`split_test`): an id is held out by a keyed hash of (seed, id) alone, so
  removing one patient never moves another;
* **vertical batches** (:class:`BatchSchedule`): within epoch ``e`` the ids are ordered by a
  keyed hash of (seed, e, id) and cut into consecutive batches. Removing a patient leaves
  every batch *before* its position unchanged, so the rounds before its first use are
  identical with or without it;
* **slices** (:class:`SlicePlan`, :class:`SlicedSchedule`): SISA slices and arrival waves;
* **shards** (:func:`shard_of`): SISA shards, by (seed, id);
* **horizontal local batches** (:func:`local_batches`): every training row gets a keyed
  hash of (seed, id) once; in round ``r``, local epoch ``e``, client ``c`` orders its rows by
  ``mix(h(seed, id) XOR h(seed, r, c, e))`` (``mix`` is the SplitMix64 finalizer, a
  bijection on 64 bits): one blake2b call per client and epoch, not per row;
* **client samples** (:func:`sample_clients`): ranking ``h(seed, round, attempt, client)``,
  so the sample depends only on the seed, the round and the client names.

Every party computes the same schedule from the public seed and the ids it holds.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def keyed_hash(*parts) -> int:
    """A 64-bit blake2b hash of the parts (joined by ``|``)."""
    h = hashlib.blake2b(digest_size=8)
    h.update("|".join(str(p) for p in parts).encode())
    return int.from_bytes(h.digest(), "big")


def split_test(ids, seed: int, test_fraction: float) -> np.ndarray:
    """Boolean mask: True where the id is held out for testing."""
    return _split_test(tuple(str(i) for i in ids), int(seed), float(test_fraction)).copy()


@functools.lru_cache(maxsize=64)
def _split_test(ids: tuple, seed: int, test_fraction: float) -> np.ndarray:
    # Memoized: every federation an erasure sets up (and every adapter) splits the same ids.
    cut = int(test_fraction * 2**64)
    return np.fromiter((keyed_hash("split", seed, i) < cut for i in ids), bool, len(ids))


def ids_digest(ids) -> str:
    """A public fingerprint of an ordered id list (parties compare batch agreement)."""
    # One update over "id\0id\0...": the same bytes (and digest) as hashing id by id.
    text = "".join(f"{i}\x00" for i in ids)
    return hashlib.sha256(text.encode()).hexdigest()


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
                (keyed_hash("batch", self.seed, epoch, i) for i in self.ids),
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


# -- data added in slices / arriving over time (SISA slicing, arrival waves) ---------------
@dataclass(frozen=True)
class SlicePlan:
    """Training rows join in ``slices`` waves: phase ``k`` trains on slices ``0..k``.

    A row's slice is either its explicit admission wave (``admission``: id -> slice, data
    arriving over time) or a keyed hash of (seed, id) (SISA slicing). Phase ``k`` runs
    ``epochs_per_slice`` epochs over the rows of slices ``0..k``; the phase lengths of
    ``0..k-1`` do not depend on any row of slice ``k``, so a patient admitted in slice ``k``
    leaves every round before phase ``k`` unchanged. The scaler is fitted on slice 0 (the
    rows present at setup); later slices do not change it.
    """

    slices: int
    epochs_per_slice: int | None = None  # None: the training config's epochs
    admission: tuple[tuple[str, int], ...] | None = None

    def __post_init__(self):
        if self.slices < 1:
            raise ValueError(f"slices must be >= 1, got {self.slices}")
        if self.epochs_per_slice is not None and self.epochs_per_slice < 1:
            raise ValueError(f"epochs_per_slice must be >= 1, got {self.epochs_per_slice}")

    @classmethod
    def from_admission(cls, admission, epochs_per_slice: int | None = None) -> SlicePlan:
        """Arrival over time: ``admission`` maps id -> wave (0 = present at setup)."""
        items = tuple(sorted((str(k), int(v)) for k, v in dict(admission).items()))
        n = 1 + max((v for _, v in items), default=0)
        return cls(n, epochs_per_slice, items)

    def slice_of(self, ids, seed: int) -> np.ndarray:
        if self.admission is not None:
            table = dict(self.admission)
            missing = [i for i in ids if str(i) not in table]
            if missing:
                raise ValueError(
                    f"{len(missing)} training ids have no admission wave (e.g. {missing[0]!r});"
                    " give every training row an admission wave"
                )
            return np.fromiter((table[str(i)] for i in ids), np.int64, len(ids))
        return np.fromiter(
            (keyed_hash("slice", seed, i) % self.slices for i in ids), np.int64, len(ids)
        )

    def to_json(self) -> dict:
        out = {"slices": self.slices, "epochs_per_slice": self.epochs_per_slice}
        if self.admission is not None:
            out["admission"] = [list(x) for x in self.admission]
        return out

    @classmethod
    def from_json(cls, obj: dict) -> SlicePlan:
        adm = obj.get("admission")
        return cls(
            int(obj["slices"]),
            obj.get("epochs_per_slice"),
            None if adm is None else tuple((str(k), int(v)) for k, v in adm),
        )


class SlicedSchedule:
    """Round r -> row positions under a :class:`SlicePlan` (same interface as
    :class:`BatchSchedule`: ``positions``, ``round_ids``, ``n_rounds``)."""

    def __init__(self, ids, slice_idx, n_slices: int, seed: int, batch_size: int, epochs: int):
        self.ids = np.asarray(ids, dtype=object)
        self.slice_idx = np.asarray(slice_idx, dtype=np.int64)
        self.n_slices, self.seed, self.batch_size, self.epochs = n_slices, seed, batch_size, epochs
        self.members: list[np.ndarray] = []
        self.steps: list[int] = []
        self.phase_starts: list[int] = []
        start = 0
        for k in range(n_slices):
            members = np.flatnonzero(self.slice_idx <= k)
            spe = math.ceil(len(members) / batch_size) if len(members) else 0
            self.members.append(members)
            self.steps.append(spe)
            self.phase_starts.append(start)
            start += spe * epochs
        self._n_rounds = start
        self._cache: tuple[int, int, np.ndarray] | None = None

    @property
    def n_rounds(self) -> int:
        return self._n_rounds

    def phase_of(self, round: int) -> int:
        for k in range(self.n_slices - 1, -1, -1):
            if round >= self.phase_starts[k] and self.steps[k]:
                return k
        raise ValueError(f"round {round} is before the first phase")

    def positions(self, round: int) -> np.ndarray:
        if not 0 <= round < self._n_rounds:
            raise ValueError(f"round {round} outside 0..{self._n_rounds - 1}")
        k = self.phase_of(round)
        epoch, step = divmod(round - self.phase_starts[k], self.steps[k])
        if self._cache is None or self._cache[:2] != (k, epoch):
            members = self.members[k]
            keys = np.fromiter(
                (keyed_hash("batch", self.seed, k, epoch, i) for i in self.ids[members]),
                dtype=np.uint64,
                count=len(members),
            )
            self._cache = (k, epoch, members[np.argsort(keys, kind="stable")])
        return self._cache[2][step * self.batch_size : (step + 1) * self.batch_size]

    def round_ids(self, round: int) -> np.ndarray:
        return self.ids[self.positions(round)]


# -- SISA shards --------------------------------------------------------------------------
_SHARD_CACHE: dict[tuple[int, int], dict[str, int]] = {}


def shard_of(pid: str, seed: int, shards: int) -> int:
    """The SISA shard of a patient: a keyed hash of (seed, id), independent of everyone else."""
    return keyed_hash("shard", seed, pid) % shards


def shard_map(ids, seed: int, shards: int) -> dict[str, int]:
    """``shard_of`` for every id, memoized per (seed, shards): a pure function of the id."""
    known = _SHARD_CACHE.setdefault((seed, shards), {})
    for i in ids:
        if i not in known:
            known[i] = shard_of(i, seed, shards)
    return known


# -- horizontal: local batches and client samples -----------------------------------------
def unit_hash(*parts) -> float:
    """A keyed hash mapped to [0, 1) (seeded Bernoulli draws: dropouts, stragglers)."""
    return keyed_hash(*parts) / 2.0**64


def id_hashes(ids, seed: int) -> np.ndarray:
    """Per-row keyed hash of ``(seed, id)``, computed once per client at setup."""
    return np.fromiter((keyed_hash("row", seed, i) for i in ids), np.uint64, len(ids))


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer, elementwise (bijective, well mixed)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def epoch_order(row_hashes: np.ndarray, seed: int, round: int, client: str, epoch: int):
    """Row positions of one client in the order of round ``round``, local epoch ``epoch``."""
    salt = np.uint64(keyed_hash("batch", seed, round, client, epoch))
    return np.argsort(mix64(row_hashes ^ salt), kind="stable")


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return max(1, math.ceil(n_rows / batch_size))


def local_batches(row_hashes, seed, round, client, epochs, batch_size):
    """``(positions (S, B) int32, mask (S, B) float32)`` for a client's local work.

    Padding slots point at row 0 with mask 0, so every step has the same shape.
    """
    n = len(row_hashes)
    spe = steps_per_epoch(n, batch_size)
    pos = np.zeros((epochs * spe, batch_size), dtype=np.int32)
    mask = np.zeros((epochs * spe, batch_size), dtype=np.float32)
    for e in range(epochs):
        order = epoch_order(row_hashes, seed, round, client, e)
        padded = np.zeros(spe * batch_size, dtype=np.int32)
        padded[:n] = order
        m = np.zeros(spe * batch_size, dtype=np.float32)
        m[:n] = 1.0
        pos[e * spe : (e + 1) * spe] = padded.reshape(spe, batch_size)
        mask[e * spe : (e + 1) * spe] = m.reshape(spe, batch_size)
    return pos, mask


def sample_clients(clients, seed: int, round: int, count: int, attempt: int = 0,
                   exclude=()) -> list[str]:
    """The ``count`` clients with the smallest keyed hash of ``(seed, round, attempt, c)``,
    returned in name order (so routing order never depends on the hash)."""
    pool = sorted(c for c in clients if c not in set(exclude))
    ranked = sorted(pool, key=lambda c: keyed_hash("sample", seed, round, attempt, c))
    return sorted(ranked[:count])
