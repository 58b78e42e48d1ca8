"""Client-level clipping for DP-FedAvg: a fixed L2 bound, or one adapted to the updates.

**DP-FedAvg** (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models", arXiv:1710.06963) makes a whole client's contribution to a round bounded: each
client's model update ``Δ`` is scaled to L2 norm at most ``C`` (:func:`clip_update`), the
server sums the clipped updates, adds ``N(0, (σC)^2 I)`` and divides by the *expected*
number of clients (:func:`dp_fedavg_mean`). Dividing by the expected rather than the actual
count keeps the sensitivity of the released mean at ``C / expected``: the actual count
depends on who took part, which is itself private. The round is then the sampled Gaussian
mechanism that :func:`horizontal.dp.accounting.dp_fedavg_event` accounts for.

**Adaptive clipping** (Andrew, Thakkar, McMahan and Ramaswamy 2021, "Differentially Private
Learning with Adaptive Clipping", arXiv:1905.03871) replaces the hand-tuned ``C`` by a
private estimate of the ``γ``-quantile of the update norms, as TensorFlow Privacy's
``QuantileAdaptiveClipSumQuery`` / ``QuantileEstimatorQuery`` and TensorFlow Federated's
``gaussian_adaptive`` implement it (the facts below are theirs; the code is ours):

1. each client clips its update to the current ``C`` and reports the indicator
   ``b = 1`` if ``‖Δ‖ ≤ C`` (the update was *not* clipped), else 0 (:meth:`clip`);
2. the server sums ``b − 0.5`` (so every report is ±0.5 and the count's sensitivity under
   adding or removing a client is 0.5, not 1), adds ``N(0, σ_b^2)``, divides by the
   expected number of clients and adds 0.5 back: the noisy *unclipped* fraction ``b̄``,
   clamped to [0, 1] (:func:`noisy_unclipped_fraction`);
3. geometric update ``C ← C · exp(−η_C (b̄ − γ))`` with target *unclipped* quantile ``γ``
   (:func:`geometric_clip_update`): if more than ``γ`` of the updates fit under ``C`` the
   bound is too loose and shrinks; if fewer fit, it grows. The step is at most a factor
   ``exp(η_C)`` per round. Andrew et al. recommend ``γ = 0.5`` (the median),
   ``η_C = 0.2`` and ``σ_b = expected clients / 20``.

The clip used in round ``t`` (for the clipping, the indicator and the value noise
``σ_Δ C_t``) is the one from before the update, and the two noisy releases together cost one
Gaussian of multiplier ``σ_z`` when the value noise is ``σ_Δ = (σ_z^{-2} −
(2σ_b)^{-2})^{-1/2}`` (:func:`horizontal.dp.accounting.adaptive_clipping_value_noise`; the
factor 2 is the 0.5 sensitivity of the shifted count). :func:`adaptive_clipping` returns
that ``σ_Δ`` with the functions.

**Flower's adaptive clipping runs the rule backwards.** In flwr 1.42
(``flwr/supercore/differential_privacy.py``), ``adaptive_clip_inputs_inplace`` returns the
*clipped* indicator (``scaling_factor < 1``), and the strategies
``DifferentialPrivacyServerSideAdaptiveClipping`` / ``...ClientSideAdaptiveClipping``
(``flwr/serverapp/strategy/dp_adaptive_clipping.py``) feed the noisy fraction of clipped
updates into ``C ← C · exp(−η (f − target_clipped_quantile))``, the rule above, which is
meant for the *unclipped* fraction. With the sign wrong the fixed point is unstable: when
most updates are clipped, ``f > target``, so ``C`` shrinks, even more updates are clipped,
and ``C`` collapses geometrically towards 0; when few are clipped it grows without bound.
(It also adds the count noise to the unshifted 0/1 count, whose sensitivity is 1, while
splitting the noise with the ``2σ_b`` of the shifted count, and divides by the number of
replies rather than the expected number.) Here the indicator is the unclipped one, the
target is the unclipped quantile, the count is shifted, and the denominator is the expected
number of clients, as in TensorFlow Privacy; ``tests/test_dp.py`` checks that a bound
started ten times too small rises to the median norm within 40 rounds, where the backwards
rule collapses.

Everything is a pure JAX function on arrays or pytrees (horizontal updates are flat
vectors), jittable; randomness comes from explicit keys, state is passed explicitly
(``init``/``update``, as in optax).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from horizontal.dp.accounting import adaptive_clipping_value_noise
from horizontal.dp.errors import DPConfigError


# -- fixed clipping ---------------------------------------------------------------------------
def global_norm(update) -> jax.Array:
    """The L2 norm of an array or of all leaves of a pytree together."""
    leaves = jax.tree.leaves(update)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves))


def clip_update(update, clip_norm) -> tuple[Any, jax.Array]:
    """``(update · min(1, C/‖update‖), ‖update‖)``: the update scaled to L2 norm at most
    ``clip_norm`` (a zero update stays zero), and its norm before clipping."""
    norm = global_norm(update)
    scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
    return jax.tree.map(lambda u: (u * scale).astype(u.dtype), update), norm


def dp_fedavg_mean(clipped_updates, *, clip_norm, noise_multiplier, expected_clients, key,
                   mask=None):
    """The server's noisy mean of DP-FedAvg: ``(Σ_k m_k Δ_k + N(0, (σC)^2 I)) / expected``.

    ``clipped_updates``: an array or pytree whose leaves have a leading client axis, each
    client's update already clipped to ``clip_norm``; ``mask`` (optional, ``(K,)``) is 0 for
    slots that hold no client (dropouts, padding). ``noise_multiplier`` is ``σ`` for fixed
    clipping and the value noise ``σ_Δ`` for adaptive clipping.
    """
    leaves, treedef = jax.tree.flatten(clipped_updates)
    n = leaves[0].shape[0]
    m = jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    keys = jax.random.split(key, len(leaves))
    std = noise_multiplier * clip_norm
    out = [
        (jnp.tensordot(m, leaf, axes=1) + std * jax.random.normal(k, leaf.shape[1:], leaf.dtype))
        / expected_clients
        for leaf, k in zip(leaves, keys)
    ]
    return jax.tree.unflatten(treedef, out)


# -- adaptive clipping ------------------------------------------------------------------------
def unclipped_indicator(norm, clip_norm) -> jax.Array:
    """``b = 1`` if ``norm ≤ clip_norm`` (the update fits, nothing is clipped), else 0."""
    return (norm <= clip_norm).astype(jnp.float32)


def noisy_unclipped_fraction(indicators, *, clipped_count_stddev, expected_clients, key,
                             mask=None) -> jax.Array:
    """``clamp((Σ_k (b_k − 0.5) + N(0, σ_b^2)) / expected + 0.5, 0, 1)``.

    The −0.5 shift (as TensorFlow Privacy's ``QuantileEstimatorQuery``) centres each report
    at ±0.5, so adding or removing one client moves the noisy sum by at most 0.5.
    """
    b = jnp.asarray(indicators, jnp.float32)
    m = jnp.ones_like(b) if mask is None else jnp.asarray(mask, jnp.float32)
    noisy = jnp.sum((b - 0.5) * m) + clipped_count_stddev * jax.random.normal(key, ())
    return jnp.clip(noisy / expected_clients + 0.5, 0.0, 1.0)


def geometric_clip_update(clip_norm, unclipped_fraction, *, target_unclipped_quantile,
                          learning_rate) -> jax.Array:
    """``C · exp(−η (b̄ − γ))``: shrink when more than ``γ`` of the updates fit, grow when
    fewer do (Andrew et al. 2021, geometric update)."""
    return clip_norm * jnp.exp(-learning_rate * (unclipped_fraction - target_unclipped_quantile))


class AdaptiveClipState(NamedTuple):
    """The server's adaptive-clipping state: the current bound ``C``."""

    clip_norm: jax.Array


class AdaptiveClipping(NamedTuple):
    """Adaptive clipping as pure functions (optax style):

    * ``init() -> AdaptiveClipState``;
    * ``clip(update, state) -> (clipped_update, indicator)``: the client side;
    * ``update(indicators, state, key, mask=None) -> (state, noisy_unclipped_fraction)``:
      the server side, once per round, after the round's mean was computed with the old
      bound;
    * ``value_noise_multiplier``: ``σ_Δ`` for :func:`dp_fedavg_mean` (None without a
      ``noise_multiplier``); the accountant is charged with ``noise_multiplier`` (``σ_z``).
    """

    init: Callable[[], AdaptiveClipState]
    clip: Callable[..., tuple[Any, jax.Array]]
    update: Callable[..., tuple[AdaptiveClipState, jax.Array]]
    value_noise_multiplier: float | None
    clipped_count_stddev: float


def adaptive_clipping(*, expected_clients: float, initial_clip_norm: float = 0.1,
                      target_unclipped_quantile: float = 0.5, learning_rate: float = 0.2,
                      clipped_count_stddev: float | None = None,
                      noise_multiplier: float | None = None) -> AdaptiveClipping:
    """Andrew et al. 2021 adaptive clipping (defaults: theirs and TF Privacy's).

    ``expected_clients``: clients per round (the fixed denominator). ``clipped_count_stddev``
    defaults to ``expected_clients / 20``. With ``noise_multiplier`` (the ``σ_z`` the
    accountant is charged with) the value noise ``σ_Δ`` is derived from it.
    """
    if not expected_clients > 0:
        raise DPConfigError(f"expected_clients must be > 0, got {expected_clients}")
    if not initial_clip_norm > 0:
        raise DPConfigError(f"the initial clip norm must be > 0, got {initial_clip_norm}")
    if not 0.0 <= target_unclipped_quantile <= 1.0:
        raise DPConfigError(
            f"the target unclipped quantile must be in [0, 1], got {target_unclipped_quantile}"
        )
    if not learning_rate > 0:
        raise DPConfigError(f"the clip learning rate must be > 0, got {learning_rate}")
    sigma_b = (expected_clients / 20.0 if clipped_count_stddev is None
               else float(clipped_count_stddev))
    if sigma_b < 0:
        raise DPConfigError(f"clipped_count_stddev must be >= 0, got {sigma_b}")
    value_noise = (None if noise_multiplier is None
                   else adaptive_clipping_value_noise(noise_multiplier, sigma_b))
    gamma, eta = float(target_unclipped_quantile), float(learning_rate)

    def init() -> AdaptiveClipState:
        return AdaptiveClipState(clip_norm=jnp.asarray(initial_clip_norm, jnp.float32))

    def clip(update, state: AdaptiveClipState):
        clipped, norm = clip_update(update, state.clip_norm)
        return clipped, unclipped_indicator(norm, state.clip_norm)

    def update(indicators, state: AdaptiveClipState, key, mask=None):
        frac = noisy_unclipped_fraction(indicators, clipped_count_stddev=sigma_b,
                                        expected_clients=expected_clients, key=key, mask=mask)
        new = geometric_clip_update(state.clip_norm, frac, target_unclipped_quantile=gamma,
                                    learning_rate=eta)
        return AdaptiveClipState(clip_norm=new), frac

    return AdaptiveClipping(init=init, clip=clip, update=update,
                            value_noise_multiplier=value_noise, clipped_count_stddev=sigma_b)
