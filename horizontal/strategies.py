"""Aggregators and server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization").

The server turns the clients' deltas ``Delta_k = w_k - w`` into one aggregate ``Delta``
with an *aggregator*, then treats ``-Delta`` as a pseudo-gradient for an Optax *server
optimizer*:

* ``fedavg``: ``optax.sgd(1.0)``, i.e. ``w <- w + Delta`` (McMahan et al. 2017);
* ``fedavgm``: SGD with momentum 0.9 (Hsu et al. 2019);
* ``fedadam`` / ``fedyogi`` / ``fedadagrad``: Adam, Yogi and Adagrad with the adaptivity
  ``tau = 1e-3`` of Reddi et al. as epsilon.

Aggregators take a stack ``(K, P)`` and example-count weights ``(K,)``:

* ``mean``: the weighted mean ``sum_k n_k Delta_k / sum_k n_k``, in float64 (exact on
  hand-computed cases, independent of client order up to float64 rounding);
* ``median``: coordinate-wise median (Yin et al. 2018); weights ignored, by design, so
  one client cannot buy influence by claiming many examples;
* ``trimmed_mean``: per coordinate, drop the ``ceil(beta K)`` largest and smallest values
  and average the rest (Yin et al. 2018);
* ``krum``: the single update closest to its ``K - f - 2`` nearest neighbours (Blanchard
  et al. 2017); needs ``K > 2 f + 2``, otherwise it falls back to the median.
"""

from __future__ import annotations

import math

import numpy as np
import optax

from horizontal.errors import FedConfigError
from vfl.core.optim import make_optimizer


def weighted_mean(updates, weights) -> np.ndarray:
    u = np.asarray(updates, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    return (w @ u) / w.sum()


def coordinate_median(updates, weights=None) -> np.ndarray:
    return np.median(np.asarray(updates, dtype=np.float64), axis=0)


def trimmed_mean(updates, weights=None, beta: float = 0.1) -> np.ndarray:
    u = np.sort(np.asarray(updates, dtype=np.float64), axis=0)
    k = len(u)
    t = min(math.ceil(beta * k), (k - 1) // 2)
    return u[t : k - t].mean(axis=0)


def krum(updates, weights=None, f: int = 1) -> np.ndarray:
    u = np.asarray(updates, dtype=np.float64)
    k = len(u)
    if k <= 2 * f + 2:
        return coordinate_median(u)
    d2 = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    m = k - f - 2
    scores = [np.sort(np.delete(d2[i], i))[:m].sum() for i in range(k)]
    return u[int(np.argmin(scores))]


def aggregate(name: str, updates, weights, *, trim_fraction=0.1, krum_f=1) -> np.ndarray:
    if name == "mean":
        return weighted_mean(updates, weights)
    if name == "median":
        return coordinate_median(updates)
    if name == "trimmed_mean":
        return trimmed_mean(updates, beta=trim_fraction)
    if name == "krum":
        return krum(updates, f=krum_f)
    raise FedConfigError(f"unknown aggregator {name!r}")


#: Server optimizers as (name, keyword arguments) of :func:`vfl.core.optim.make_optimizer`.
SERVER_OPTIMIZER_SPECS = {
    "fedavg": ("sgd", {}),
    "fedavgm": ("momentum", {"momentum": 0.9}),
    "fedadam": ("adam", {"b1": 0.9, "b2": 0.99, "eps": 1e-3}),
    "fedyogi": ("yogi", {"b1": 0.9, "b2": 0.99, "eps": 1e-3}),
    "fedadagrad": ("adagrad", {"initial_accumulator_value": 0.0, "eps": 1e-3}),
}


def server_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    if name not in SERVER_OPTIMIZER_SPECS:
        raise FedConfigError(f"unknown server optimizer {name!r}")
    base, hyper = SERVER_OPTIMIZER_SPECS[name]
    return make_optimizer(base, lr, **hyper)
