"""Deterministic local batches and client samples from keyed hashes (DESIGN section 6).

The unlearning contract needs a replay without one patient to equal a retrain without
that patient, so nothing here depends on row positions or on a stateful RNG:

* every training row gets a 64-bit keyed hash of ``(seed, id)`` once, at setup;
* in round ``r``, local epoch ``e``, client ``c`` orders its rows by
  ``mix(h(seed, id) XOR h(seed, r, c, e))`` (``mix`` is the SplitMix64 finalizer, a
  bijection on 64 bits), i.e. by a keyed hash of ``(seed, round, client, epoch, id)``
  computed vectorized in numpy: one blake2b call per client and epoch, not per row.
  Removing a row never moves another row's key, so every batch before the removed row's
  position is unchanged;
* clients are sampled by ranking ``h(seed, round, attempt, client)``: the sample depends
  only on the seed, the round and the client names, never on who joined first.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def keyed_hash(*parts) -> int:
    """A 64-bit blake2b hash of the parts (joined by ``|``)."""
    h = hashlib.blake2b(digest_size=8)
    h.update("|".join(str(p) for p in parts).encode())
    return int.from_bytes(h.digest(), "big")


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
