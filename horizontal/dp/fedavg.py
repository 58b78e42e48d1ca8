"""Client-level DP-FedAvg in a federation: what a hospital does to its update, what the
server does with the updates, and the distributed noise for secure aggregation.

The maths is :mod:`horizontal.dp.clipping`'s; this module is how the client and the server
of :mod:`horizontal` use it in a round ``r`` with clip bound ``C_r`` (public: the server
sends it with the global model):

* **client** (:func:`clip_client_update`): clip the model delta to ``C_r`` and, under
  adaptive clipping, report the *unclipped* indicator ``b = [‖Δ‖ ≤ C_r]``;
* **server, in the clear** (:func:`central_noisy_mean`): clip again (what a client sends is
  compressed and carries its error-feedback residual, so the server enforces the bound
  itself), sum, add ``N(0, (σ_Δ C_r)^2)``, divide by the *expected* number of clients
  (:func:`~horizontal.dp.clipping.dp_fedavg_mean`); adaptive: the bound follows the noisy
  unclipped fraction (:func:`~horizontal.dp.clipping.adaptive_clipping`). The noise key is
  the server's own secret (:func:`~horizontal.dp.dpsgd.noise_key`), so no client can
  subtract it.

**Secure aggregation: distributed noise.** Under secure aggregation the server learns only
the sum, so it cannot add noise to a noiseless sum it never sees, and must never see one:
each of the ``m`` expected clients adds its own share ``N(0, (σ_Δ C)^2 / m)`` to its clipped
update *before masking* (:func:`secure_client_vector`; adaptive: also ``b − 0.5 + N(0,
σ_b^2 / m)`` as one more coordinate), and the server divides the unmasked sum by ``m``
(:func:`secure_server_mean`). Gaussians add, so when all ``m`` shares arrive the sum carries
exactly the central noise. **With dropouts fewer shares arrive**: ``k`` surviving clients
leave noise of variance ``(k/m)(σ_Δ C)^2``, i.e. the effective noise multiplier is
``σ · sqrt(k/m)`` (:func:`distributed_noise_multiplier`), lower than planned. The accounting
is therefore done for the fewest clients whose shares can reach a released sum,
``k_min = dp.min_clients`` (default: all ``m``, and then a round with a dropout must not be
unmasked): the accountant is charged ``σ · sqrt(k_min / m)`` every round, an upper bound on
the epsilon of any round that releases a sum of at least ``k_min`` inputs. The secure
aggregation must refuse to unmask a sum of fewer than ``k_min`` inputs (its threshold ``t``
should be at least ``k_min``). A client's own share does not protect it against itself; the
other ``k − 1`` shares do protect it against the server (and, with ``t − 1`` colluders at
most, against them: colluding clients know their own shares, which is ``(k−c)/m`` of the
variance left, a further reason to keep ``k_min`` conservative). SecAgg+ clips every
coordinate of a client's input to ``[-secure_aggregation.clip, clip]`` before quantizing it:
keep that bound well above ``clip_norm`` plus a few share deviations ``σC/sqrt(m)``, or the
truncated shares are no longer the Gaussian the accountant assumes. Clients enter the sum
at weight 1 (their example count is sent as ``max_weight``), and adaptive clipping is
refused there (its count would need a secure sum of its own).

Everything returns numpy float32 (the wire format of updates).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from horizontal.dp.clipping import (
    AdaptiveClipState,
    clip_update,
    dp_fedavg_mean,
    geometric_clip_update,
)
from horizontal.dp.dpsgd import noise_key
from horizontal.dp.ledger import ClientPlan, distributed_noise_multiplier

__all__ = ["central_noisy_mean", "clip_client_update", "clip_count_key",
           "distributed_noise_multiplier", "noise_share", "secure_client_vector",
           "secure_server_mean"]


# -- the client ---------------------------------------------------------------------------------
def clip_client_update(delta, clip_norm: float) -> tuple[np.ndarray, int]:
    """``(delta scaled to L2 norm ≤ clip_norm, unclipped indicator 0/1)``."""
    clipped, norm = clip_update(np.asarray(delta, np.float32), np.float32(clip_norm))
    return np.asarray(clipped, np.float32), int(float(norm) <= float(clip_norm))


def noise_share(secret, round: int, client: str, length: int, *, plan: ClientPlan,
                clip_norm: float) -> tuple[np.ndarray, float]:
    """A client's share of a round's noise under secure aggregation: ``N(0, (σ_Δ C)^2/m)``
    for each of ``length`` coordinates and ``N(0, σ_b^2/m)`` for the shifted indicator,
    keyed by the client's own secret (unpredictable to the server and the other clients)."""
    key = noise_key(secret, "dp-fedavg-share", round, client)
    k_vec, k_count = jax.random.split(key)
    m = plan.clients_per_round
    std = plan.value_noise_multiplier * float(clip_norm) / math.sqrt(m)
    vec = np.asarray(jax.random.normal(k_vec, (int(length),)), np.float32) * np.float32(std)
    count = float(jax.random.normal(k_count, ())) * plan.clipped_count_stddev / math.sqrt(m)
    return vec, count


def secure_client_vector(delta, *, secret, round: int, client: str, plan: ClientPlan,
                         clip_norm: float, adaptive: bool) -> np.ndarray:
    """What a client hands to secure aggregation at client level: its clipped update plus
    its noise share, and (``adaptive``) one more coordinate ``b − 0.5`` plus its count
    noise share. Mask this vector; :func:`secure_server_mean` reads the unmasked sum."""
    clipped, unclipped = clip_client_update(delta, clip_norm)
    vec, count = noise_share(secret, round, client, clipped.size, plan=plan, clip_norm=clip_norm)
    out = clipped + vec
    if adaptive:
        out = np.append(out, np.float32(unclipped - 0.5 + count))
    return out.astype(np.float32)


# -- the server ---------------------------------------------------------------------------------
def secure_server_mean(summed, *, plan: ClientPlan, clip_state: AdaptiveClipState | None,
                       target_unclipped_quantile: float = 0.5,
                       learning_rate: float = 0.2) -> tuple[np.ndarray, AdaptiveClipState | None]:
    """The server's side under secure aggregation: the unmasked sum of
    :func:`secure_client_vector` divided by the expected clients ``m`` (the noise is already
    in it); with ``clip_state`` (adaptive), the last coordinate is the noisy shifted count
    and the bound moves by :func:`~horizontal.dp.clipping.geometric_clip_update`."""
    summed = np.asarray(summed, np.float32)
    m = plan.clients_per_round
    if clip_state is None:
        return summed / np.float32(m), None
    frac = float(np.clip(summed[-1] / m + 0.5, 0.0, 1.0))
    new = geometric_clip_update(clip_state.clip_norm, frac,
                                target_unclipped_quantile=target_unclipped_quantile,
                                learning_rate=learning_rate)
    return summed[:-1] / np.float32(m), AdaptiveClipState(clip_norm=new)


def central_noisy_mean(updates, *, clip_norm: float, plan: ClientPlan, secret,
                       round: int) -> np.ndarray:
    """The server's DP-FedAvg mean in the clear: each row of ``updates`` (clients × P)
    clipped to ``clip_norm`` again, summed, ``N(0, (σ_Δ C)^2)`` added, divided by the
    expected clients; the noise key comes from the server's own secret."""
    clipped = np.stack([clip_client_update(u, clip_norm)[0] for u in np.asarray(updates)])
    key = noise_key(secret, "dp-fedavg", round)
    mean = dp_fedavg_mean(clipped, clip_norm=np.float32(clip_norm),
                          noise_multiplier=plan.value_noise_multiplier,
                          expected_clients=plan.clients_per_round, key=key)
    return np.asarray(mean, np.float32)


def clip_count_key(secret, round: int):
    """The server's key for the noisy unclipped count of adaptive clipping in ``round``."""
    return noise_key(secret, "dp-clip-count", round)
