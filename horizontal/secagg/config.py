"""SecAggConfig: a federation's secure-aggregation settings, and the setup of one aggregation.

The settings are public (they travel in the federation's config, and its digest), and every
party derives everything security-relevant from its *own* copy: the degree ``k`` and
threshold ``t`` (:func:`~horizontal.secagg.graph.choose_parameters` from the cohort size and
the tolerated dropout and corruption fractions), the ring ``Z_2^bits`` and the fixed-point
grid. A round's messages carry only who is in the cohort; nothing on the wire can lower
``t`` or change the ring.

What a client sends into the sum (``x_u``, :func:`layout`): its FedAvg weight
``rho_u = num_examples / max_weight`` in ``(0, 1]``, rounded to the grid first so that the
weight multiplying the update is exactly the one in the denominator (as Flower's SecAgg+
mod does), then ``rho_u * delta_u`` (each coordinate clipped to ``[-clip, clip]``), its
weighted loss, the weight itself and its example count. The server divides the sums.
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields

from horizontal.secagg.errors import InfeasibleParametersError, QuantizationError
from horizontal.secagg.graph import (
    DEFAULT_ETA,
    DEFAULT_SIGMA,
    MIN_CLIENTS,
    GraphParameters,
    build_graph,
    choose_parameters,
)
from horizontal.secagg.masks import RING_BITS
from horizontal.secagg.protocol import SecAggSetup
from horizontal.secagg.quantize import Quantizer
from vfl.core import configs

#: Coordinates after the weighted update: weighted loss, weight, example count.
EXTRA_COORDINATES = 3
#: A client's loss enters the sum as ``rho * clip * min(loss, LOSS_RANGE) / LOSS_RANGE``.
LOSS_RANGE = 256.0


@functools.lru_cache(maxsize=256)
def _parameters(n: int, dropout: float, corruption: float, sigma: int, eta: int
                ) -> GraphParameters:
    return choose_parameters(n, dropout=dropout, corruption=corruption, sigma=sigma, eta=eta)


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class SecAggConfig:
    """SecAgg+ for every training round (``FedConfig.secure_aggregation``).

    ``dropout`` / ``corruption``: the fractions of a round's cohort that may drop out / may
    collude with the server; with ``sigma`` and ``eta`` they fix ``k`` and ``t`` per cohort
    size. ``bits``: the ring, 32 or 64. ``clip``: bound of every coordinate of a client's
    weighted update ``rho * delta``. ``max_weight``: the example count that gives a full
    weight (``rho = 1``); every client's ``local_epochs x training rows`` must stay within
    it. ``scale``: the fixed-point scale; ``None`` picks the largest power of two for which
    the cohort's sum cannot overflow.
    """

    dropout: float = 0.1
    corruption: float = 0.1
    bits: int = 32
    clip: float = 1.0
    max_weight: int = 10_000
    scale: float | None = None
    sigma: int = DEFAULT_SIGMA
    eta: int = DEFAULT_ETA

    def __post_init__(self):
        for name in ("dropout", "corruption"):
            v = getattr(self, name)
            if not _real(v) or not 0 <= v < 1:
                raise InfeasibleParametersError(
                    f"secure_aggregation.{name} is a fraction in [0, 1), got {v!r}")
        if self.dropout + self.corruption >= 1:
            raise InfeasibleParametersError(
                f"secure_aggregation: dropout ({self.dropout}) + corruption "
                f"({self.corruption}) must stay below 1")
        for name in ("sigma", "eta"):
            v = getattr(self, name)
            if not _whole(v) or v < 1:
                raise InfeasibleParametersError(
                    f"secure_aggregation.{name} must be a positive whole number, got {v!r}")
        if not _whole(self.bits) or self.bits not in RING_BITS:
            raise QuantizationError(
                f"secure_aggregation.bits must be one of {RING_BITS}, got {self.bits!r}")
        if not _real(self.clip) or self.clip <= 0:
            raise QuantizationError(
                f"secure_aggregation.clip must be a finite positive number, got {self.clip!r}")
        if not _whole(self.max_weight) or self.max_weight < 1:
            raise QuantizationError(
                f"secure_aggregation.max_weight must be a positive whole number of examples, "
                f"got {self.max_weight!r}")
        if self.scale is not None:
            if not _real(self.scale) or self.scale <= 0:
                raise QuantizationError(
                    f"secure_aggregation.scale must be a finite positive number or None, got "
                    f"{self.scale!r}")
            Quantizer(float(self.clip), float(self.scale), int(self.bits))

    # -- derived per cohort ---------------------------------------------------------------------
    def parameters(self, n: int) -> GraphParameters:
        """``k`` and ``t`` for a cohort of ``n`` clients (InfeasibleParametersError if none)."""
        return _parameters(n, float(self.dropout), float(self.corruption), int(self.sigma),
                           int(self.eta))

    def quantizer(self, n: int) -> Quantizer:
        if self.scale is None:
            return Quantizer.for_clients(n, float(self.clip), int(self.bits))
        return Quantizer(float(self.clip), float(self.scale), int(self.bits))

    def check(self, n: int) -> Quantizer:
        """Everything a cohort of ``n`` clients needs, before any key exists: feasible ``k``
        and ``t`` (:class:`InfeasibleParametersError`), no wrap-around of the sum
        (:class:`~horizontal.secagg.errors.RingOverflowError`), and a weight grid fine
        enough that one example still counts. Returns the cohort's quantizer."""
        self.parameters(n)
        q = self.quantizer(n)
        q.check(n)
        if n * int(self.max_weight) >= 2 ** (int(self.bits) - 1):
            raise QuantizationError(
                f"{n} clients x max_weight {self.max_weight} examples does not fit in "
                f"Z_2^{self.bits}; lower max_weight or use bits=64")
        if q.clip * q.scale / int(self.max_weight) < 1:
            raise QuantizationError(
                f"with {n} clients in Z_2^{self.bits} the fixed-point grid (scale "
                f"{q.scale:g}, clip {q.clip:g}) cannot tell one example from none at "
                f"max_weight {self.max_weight}; use bits=64, a larger clip or a smaller "
                "max_weight")
        return q

    def setup(self, cohort: Sequence[str], *, round: int, attempt: int, length: int,
              context: str) -> tuple[SecAggSetup, Quantizer]:
        """The aggregation of ``cohort`` in ``round`` (try ``attempt``): the Harary graph
        with ``k`` and ``t`` for ``len(cohort)``, its ring order keyed by
        ``(context, round, attempt)`` (public, the same at every party) and the ring; and
        the cohort's quantizer (the setup itself carries none: clients pass ring vectors,
        :func:`horizontal.secure_rounds.encode_input`). ``context`` names the federation
        (its config digest): it binds every derived key and encrypted share to this
        federation, round and attempt."""
        cohort = list(cohort)
        if len(cohort) < MIN_CLIENTS:
            raise InfeasibleParametersError(
                f"secure aggregation needs at least {MIN_CLIENTS} clients in a round, got "
                f"{len(cohort)}: with two, each learns the other's update from the sum")
        n = len(cohort)
        q = self.check(n)
        params = self.parameters(n)
        order = hashlib.sha256(
            b"vfl/secagg/v1/round-order\x00" + context.encode() + b"\x00"
            + f"{round}/{attempt}".encode()).digest()
        graph = build_graph(cohort, params.k, params.t, seed=order, parameters=params)
        setup = SecAggSetup(graph=graph, length=length, bits=int(self.bits), round=round,
                            session=f"{context}/{attempt}")
        return setup, q

    # -- JSON ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return configs.to_json(self)

    @classmethod
    def from_json(cls, obj) -> SecAggConfig:
        if not isinstance(obj, dict):
            raise InfeasibleParametersError(
                f"secure_aggregation must be a map of settings, got {type(obj).__name__}")
        unknown = sorted(set(obj) - {f.name for f in fields(cls)}, key=str)
        if unknown:
            raise InfeasibleParametersError(
                f"unknown secure_aggregation setting(s) {unknown}")
        return configs.from_json(cls, obj, required=())


def layout(length: int) -> dict[str, slice | int]:
    """Where each part of a client's input sits in a vector of ``length`` coordinates."""
    p = length - EXTRA_COORDINATES
    return {"update": slice(0, p), "loss": p, "weight": p + 1, "examples": p + 2}
