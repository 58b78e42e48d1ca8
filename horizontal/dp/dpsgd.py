"""Record-level DP-SGD for a client's local update (protects each patient *within* a
hospital, where DP-FedAvg's client-level clipping protects a hospital as a whole).

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv:1607.00133)
changes one thing in a gradient step: instead of the gradient of the batch mean loss it
uses

    g = (Σ_{i in batch} clip_C(∇ℓ_i(w)) + N(0, (σC)^2 I)) / L

* **per-example gradients** ``∇ℓ_i`` by ``jax.vmap(jax.grad(...))`` over the rows of the
  batch (:func:`per_example_grads`): each row's gradient must be bounded separately, which
  the batch gradient cannot do;
* **per-example L2 clipping** to ``C`` and **Gaussian noise** ``σC`` on the sum: one row can
  move the sum by at most ``C``, and the noise hides that move. This is
  :func:`optax.contrib.differentially_private_aggregate` (optax >= 0.2), which clips every
  example to global L2 norm ``C`` (``optax.transforms.per_example_global_norm_clip``; a
  zero gradient stays zero), sums, adds ``N(0, (σC)^2)`` to every coordinate and divides by
  the array's batch dimension. :func:`noisy_clipped_mean` calls it and rescales, so the
  division is by
* **the expected batch size** ``L``: ``q·n`` for Poisson sampling, ``B`` for fixed-size
  batches, never the number of rows actually drawn, which is data-dependent and private.
  The batch arrays have a fixed capacity (one compiled program for every step); padding
  slots and rows not drawn have mask 0 and contribute an exact zero.

**Sampling.** The accountant's amplification by subsampling
(:mod:`horizontal.dp.accounting`) holds only for the sampling it assumes, so the batches
are drawn for it, not by the epoch shuffling of :func:`vfl.core.keyed.local_batches` (which
matches neither event):

* :func:`poisson_batches`: in every step, every row is included independently with
  probability ``q`` (``PoissonSampledDpEvent``). The draw is a keyed hash, like every
  schedule of the project: row ``i`` is in step ``s`` of round ``r`` iff
  ``mix64(h(secret, id_i) XOR h(secret, r, client, s)) < q·2^64``; it is deterministic for
  a secret (a replay reproduces it) and removing a patient changes no other row's draws
  (the unlearning contract);
* :func:`fixed_size_batches`: exactly ``B`` rows per step, uniformly without replacement,
  independently per step (``SampledWithoutReplacementDpEvent``; RDP, replace-one);
* :func:`poisson_mask`: the same Poisson draw in the graph, from a JAX key, over all rows.

**The secret must be the client's own.** Amplification assumes the adversary does not know
which rows were sampled, and the noise must be unpredictable to it. So the sampling secret
and the noise key (:func:`noise_key`) come from a secret only the client holds (e.g.
``secrets.randbits(128)`` kept with its private state), never from the federation's public
seed, from which every party can recompute the public schedules.

**Wiring into** :func:`horizontal.client_update.make_local_train`: both run the same loop,
:func:`horizontal.client_update.local_steps`, which takes the step's gradient as a function
of ``(w, xb, yb, mb, i)``, ``i`` the step index. ``make_local_train`` gives it
``grad_fn(w, xb, yb, mb)``; :func:`make_dp_local_train` gives it
``dp_grad(w, xb, yb, mb, jax.random.fold_in(key, i), expected_batch_size)``, where
``dp_grad = make_dp_value_and_grad(loss_fn, clip_norm=C, noise_multiplier=σ)`` and ``key``,
``expected_batch_size`` are two more arguments of ``train``: pure, jittable and vmappable
over clients. FedProx's
``mu (w − anchor)`` uses only the public global model and is post-processing; SCAFFOLD's
client control must be recomputed from the privatized model (its option II,
``(w_start − w_end) / (S·lr)``, is), not from raw gradients. The returned mean loss is a
local diagnostic and is *not* privatized. Steps a client skips (``active`` 0) release
nothing; charging the planned steps is the conservative choice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib

from horizontal.client_update import batch_loss, client_optimizer, local_steps
from horizontal.dp.errors import BatchCapacityError, DPConfigError
from horizontal.flat_model import FlatModel
from vfl.core.keyed import keyed_hash, mix64
from vfl.core.tasks import Task


# -- sampling ---------------------------------------------------------------------------------
def dp_row_hashes(ids, secret) -> np.ndarray:
    """Per-row keyed hash of ``(secret, id)``, computed once per client."""
    return np.fromiter((keyed_hash("dp-row", secret, i) for i in ids), np.uint64, len(ids))


def _step_draws(row_hashes, secret, round, client, step) -> np.ndarray:
    salt = np.uint64(keyed_hash("dp-step", secret, round, client, step))
    return mix64(np.asarray(row_hashes, np.uint64) ^ salt)


def poisson_capacity(n_rows: int, sampling_probability: float, *,
                     overflow_probability: float = 1e-9) -> int:
    """A batch capacity that a Poisson batch of ``n_rows`` rows at rate ``q`` exceeds with
    probability at most ``overflow_probability`` per step (binomial tail)."""
    from scipy.stats import binom

    tail = binom.isf(overflow_probability, int(n_rows), float(sampling_probability))
    return max(1, int(tail) + 1)


def poisson_batches(row_hashes, secret, round, client, steps: int, sampling_probability: float,
                    capacity: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(positions (S, capacity) int32, mask (S, capacity) float32)``: Poisson batches.

    Row ``i`` is in step ``s`` independently with probability ``q``. ``capacity`` fixes the
    width (one compiled program); a step that draws more rows raises
    :class:`~horizontal.dp.errors.BatchCapacityError` instead of truncating, since
    truncation would change the mechanism. ``None``: the largest draw of these steps. The
    expected batch size to divide by is ``q · len(row_hashes)`` (:func:`poisson_batch_size`).
    """
    q = float(sampling_probability)
    if not 0.0 < q <= 1.0:
        raise DPConfigError(f"the sampling probability must be in (0, 1], got {q}")
    threshold = np.uint64(min(int(q * 2.0**64), 2**64 - 1))
    chosen = []
    for s in range(int(steps)):
        draws = _step_draws(row_hashes, secret, round, client, s)
        chosen.append(np.flatnonzero(draws < threshold) if q < 1.0
                      else np.arange(len(draws)))
    largest = max((len(c) for c in chosen), default=0)
    width = max(largest, 1) if capacity is None else int(capacity)
    if largest > width:
        raise BatchCapacityError(
            f"a Poisson batch of client {client!r} in round {round} drew {largest} rows, more "
            f"than the capacity {width}; raise the capacity (poisson_capacity(n, q) gives one "
            "that overflows with negligible probability)"
        )
    pos = np.zeros((len(chosen), width), np.int32)
    mask = np.zeros((len(chosen), width), np.float32)
    for s, rows in enumerate(chosen):
        pos[s, : len(rows)] = rows
        mask[s, : len(rows)] = 1.0
    return pos, mask


def fixed_size_batches(row_hashes, secret, round, client, steps: int,
                       batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(positions (S, B), mask (S, B))``: every step an independent uniform sample of
    exactly ``batch_size`` rows without replacement (the expected batch size is ``B``)."""
    n = len(row_hashes)
    if not 0 < batch_size <= n:
        raise DPConfigError(f"the batch size must be in [1, {n}] rows, got {batch_size}")
    pos = np.stack([
        np.argsort(_step_draws(row_hashes, secret, round, client, s), kind="stable")[:batch_size]
        for s in range(int(steps))
    ]).astype(np.int32) if steps else np.zeros((0, batch_size), np.int32)
    return pos, np.ones(pos.shape, np.float32)


def poisson_mask(key, n_rows: int, sampling_probability) -> jax.Array:
    """In-graph Poisson sampling: a ``(n_rows,)`` float mask, each row 1 with probability
    ``q``, from a JAX key (jittable; use with all rows as the batch)."""
    return jax.random.bernoulli(key, sampling_probability, (n_rows,)).astype(jnp.float32)


def noise_key(secret, *parts) -> jax.Array:
    """A JAX key from the client's secret and e.g. the round: a keyed hash split into the
    two 32-bit words of a threefry key (deterministic for the secret, unpredictable
    without it)."""
    h = keyed_hash("dp-noise", secret, *parts)
    return jax.random.wrap_key_data(np.array([h >> 32, h & 0xFFFFFFFF], dtype=np.uint32))


# -- the gradient step ------------------------------------------------------------------------
def per_example_grads(loss_fn, w, xb, yb):
    """``(losses (B,), grads)``: each row's loss and gradient, ``jax.vmap(jax.grad(...))``.

    ``loss_fn(w, xb, yb, mb)`` is the batch-mean loss of
    :func:`horizontal.client_update.make_local_train`; each row is evaluated as a batch of
    one. ``grads`` has the structure of ``w`` with a leading batch axis.
    """
    def one(w, xi, yi):
        return loss_fn(w, xi[None], yi[None], jnp.ones((1,), jnp.float32))

    return jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 0))(w, xb, yb)


def noisy_clipped_mean(grads, mask, *, clip_norm, noise_multiplier, expected_batch_size, key):
    """``(Σ_i m_i clip_C(g_i) + N(0, (σC)^2 I)) / L`` with
    :func:`optax.contrib.differentially_private_aggregate`.

    ``grads``: per-example gradients (leading batch axis ``B``); rows with ``mask`` 0
    contribute exactly zero. optax divides by ``B``; the result is rescaled by ``B / L`` so
    the division is by the expected batch size ``L``.
    """
    m = jnp.asarray(mask) > 0
    masked = jax.tree.map(
        lambda g: jnp.where(m.reshape((-1,) + (1,) * (g.ndim - 1)), g, jnp.zeros_like(g)), grads
    )
    tx = optax.contrib.differentially_private_aggregate(clip_norm, noise_multiplier, key=key)
    out, _ = tx.update(masked, tx.init(None))
    batch = jax.tree.leaves(masked)[0].shape[0]
    return jax.tree.map(lambda g: g * (batch / expected_batch_size), out)


def make_dp_value_and_grad(loss_fn, *, clip_norm: float, noise_multiplier: float):
    """The DP-SGD replacement for ``jax.value_and_grad(loss_fn)`` in a local step:

    ``dp_grad(w, xb, yb, mb, key, expected_batch_size) -> (loss, g)``, where ``g`` is the
    clipped, noised sum of the per-example gradients of the rows with ``mb`` 1, divided by
    ``expected_batch_size``, and ``loss`` the (non-private) mean loss of those rows. Pure
    and jittable; ``key`` is a JAX key, fresh for every step.
    """
    if not clip_norm > 0:
        raise DPConfigError(f"the clip norm must be > 0, got {clip_norm}")
    if not noise_multiplier >= 0:
        raise DPConfigError(f"the noise multiplier must be >= 0, got {noise_multiplier}")

    def dp_grad(w, xb, yb, mb, key, expected_batch_size):
        losses, grads = per_example_grads(loss_fn, w, xb, yb)
        g = noisy_clipped_mean(grads, mb, clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                               expected_batch_size=expected_batch_size, key=key)
        mbf = jnp.asarray(mb, losses.dtype)
        return jnp.sum(losses * mbf) / jnp.maximum(jnp.sum(mbf), 1.0), g

    return dp_grad


def make_dp_local_train(model: FlatModel, task: Task, optimizer: str, lr: float, *,
                        clip_norm: float, noise_multiplier: float):
    """:func:`horizontal.client_update.make_local_train` with the DP-SGD gradient step.

    ``train(w_start, anchor, corr, mu, x, y, pos, bmask, active, key, expected_batch_size)
    -> (w_end, mean_loss)``: the same arguments plus the round's noise key (step ``s`` uses
    ``fold_in(key, s)``) and the expected batch size ``L``. With ``noise_multiplier = 0``,
    a clip norm no gradient reaches and ``L`` equal to the rows in each batch, it computes
    what ``make_local_train`` computes.
    """
    tx = client_optimizer(optimizer, lr)
    dp_grad = make_dp_value_and_grad(batch_loss(model, task), clip_norm=clip_norm,
                                     noise_multiplier=noise_multiplier)

    def train(w_start, anchor, corr, mu, x, y, pos, bmask, active, key, expected_batch_size):
        def grad_step(w, xb, yb, mb, i):
            return dp_grad(w, xb, yb, mb, jax.random.fold_in(key, i), expected_batch_size)

        return local_steps(tx, grad_step, w_start, anchor, corr, mu, x, y, pos, bmask, active)

    return train


def poisson_batch_size(n_rows: int, sampling_probability: float) -> float:
    """``q · n``: the expected batch size, the denominator of a Poisson-sampled step."""
    size = float(sampling_probability) * int(n_rows)
    if not size > 0:
        raise DPConfigError(f"the expected batch size q·n must be > 0, got {size}")
    return size
