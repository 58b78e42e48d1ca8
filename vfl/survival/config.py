"""``CoxConfig``: the public settings of a vertical Cox fit.

Public like :class:`~vfl.vertical.config.TrainConfig`: it travels in the ``cox.setup``
message. Security settings in it (protocol, key length) are checked by every party against
its *own* :class:`~vfl.vertical.config.SecurityPolicy`; nothing on the wire can lower them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from vfl.core import configs
from vfl.core.errors import ConfigError

#: The protocols a vertical Cox fit runs: ``paillier`` (default: no passive party sees a
#: label-dependent value in the clear) and ``plain`` (the comparison; labels leak).
COX_PROTOCOLS = ("paillier", "plain")
TIES = ("breslow", "efron")


@dataclass(frozen=True)
class CoxConfig:
    """How a vertical Cox model is fitted (see :mod:`vfl.survival.federated`).

    ``ties``: Breslow's or Efron's approximation of the partial likelihood for tied event
    times. ``max_rounds``: a fit that has not converged after this many protocol rounds
    stops with :class:`~vfl.survival.errors.CoxConvergenceError`. ``tol``: Newton's
    stopping rule at the hospital (relative decrease of the negative log partial
    likelihood). ``test_fraction``: aligned patients held out (keyed by id and seed, the
    same at every party) for the C-index and Brier score.
    """

    protocol: str = "paillier"
    key_bits: int = 2048
    insecure_test_key: bool = False
    ties: str = "breslow"
    seed: int = 0
    test_fraction: float = 0.2
    max_rounds: int = 40
    tol: float = 1e-12

    def __post_init__(self):
        if self.protocol not in COX_PROTOCOLS:
            raise ConfigError(
                f"a vertical Cox fit runs protocol 'paillier' or 'plain', got {self.protocol!r}")
        if self.ties not in TIES:
            raise ConfigError(f"ties must be one of {TIES}, got {self.ties!r}")
        for name in ("key_bits", "seed", "max_rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ConfigError(f"{name} must be a whole number, got {v!r}")
        if self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be at least 1, got {self.max_rounds}")
        f = self.test_fraction
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0.0 <= f < 1.0:
            raise ConfigError(f"test_fraction must be in [0, 1), got {f!r}")
        t = self.tol
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not (
            math.isfinite(t) and 0 < t < 1e-3
        ):
            raise ConfigError(f"tol must be in (0, 1e-3), got {t!r}")

    def to_json(self) -> dict:
        return configs.to_json(self)

    @classmethod
    def from_json(cls, obj) -> CoxConfig:
        if not isinstance(obj, dict):
            raise ConfigError(f"a Cox config must be a map, got {type(obj).__name__}")
        unknown = sorted(set(obj) - {f.name for f in fields(cls)}, key=str)
        if unknown:
            raise ConfigError(f"unknown Cox setting(s) {unknown}")
        return configs.from_json(cls, obj, required=())
