"""``DPConfig``: differential privacy for a horizontal federation (``FedConfig.dp``).

Public, like the rest of :class:`~horizontal.config.FedConfig` (it travels in the setup
message and feeds the config digest); the secrets that make the noise and the sampling
unpredictable are party-local and never in it (:mod:`horizontal.dp.ledger`).

Two levels, which protect different things:

* ``level="record"`` (the default): **DP-SGD at each hospital** (Abadi et al. 2016). Every
  local step samples the hospital's training rows (``sampling="poisson"``, the default:
  each row independently with probability ``q``; or ``"fixed"``: exactly ``batch_size``
  rows, uniformly without replacement), clips every row's gradient to ``clip_norm`` and adds
  ``N(0, (noise_multiplier · clip_norm)^2)`` to the sum. It protects each *patient*: the
  models a hospital sends are (ε, δ)-DP with respect to adding or removing one of its rows.
  ``q`` is ``sampling_probability`` if given, else ``FedConfig.batch_size`` divided by the
  hospital's training rows (so the expected batch is ``batch_size`` rows);
* ``level="client"``: **DP-FedAvg** (McMahan et al. 2018). Each hospital clips its whole
  update to an L2 bound (``clip="fixed"``: ``clip_norm``; ``clip="adaptive"``: a bound
  that starts at ``clip_norm`` and follows the ``target_unclipped_quantile`` of the update
  norms, Andrew et al. 2021, with ``clip_learning_rate`` and the count noise
  ``clipped_count_stddev``), the server adds ``N(0, (σC)^2)`` to the sum and divides by
  the expected number of clients. It protects each *hospital* as a whole, which with a
  handful of hospitals costs a large ε (about 30 after 20 rounds at σ = 1 with 5
  hospitals); see the README, "Differential privacy".

``epsilon`` and ``delta`` are the budget: a run whose planned ε exceeds it is refused
before any data is used, and a run is stopped before the round that would exceed it.
``epsilon=None`` accounts and reports ε without a guard. ``accountant`` is ``"rdp"`` (fast,
slightly loose) or ``"pld"`` (tighter; not for ``sampling="fixed"``).
``min_clients`` matters only with secure aggregation at client level: the fewest clients
whose noise shares can reach a round's sum (see :mod:`horizontal.dp.fedavg`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from horizontal.dp.accounting import ACCOUNTANTS
from horizontal.dp.errors import DPConfigError
from vfl.core import configs

LEVELS = ("record", "client")
SAMPLINGS = ("poisson", "fixed")
CLIPS = ("fixed", "adaptive")

#: Settings that only one level uses, and their defaults: setting one of them at the other
#: level is refused (it would silently do nothing).
_RECORD_ONLY = {"sampling": "poisson", "sampling_probability": None}
_CLIENT_ONLY = {"clip": "fixed", "target_unclipped_quantile": 0.5, "clip_learning_rate": 0.2,
                "clipped_count_stddev": None, "min_clients": None}


def _real(name: str, value, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DPConfigError(f"dp.{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy of a horizontal run (see the module docstring)."""

    level: str = "record"  # "record" (DP-SGD at each hospital) or "client" (DP-FedAvg)
    noise_multiplier: float = 1.0  # σ: noise stddev / clip norm
    clip_norm: float = 1.0  # record: per-row gradient bound; client: update bound (or initial)
    epsilon: float | None = None  # the budget; None: account and report, no guard
    delta: float = 1e-5
    accountant: str = "rdp"  # or "pld"
    # record level
    sampling: str = "poisson"  # or "fixed"
    sampling_probability: float | None = None  # Poisson q; None: batch_size / training rows
    # client level
    clip: str = "fixed"  # or "adaptive"
    target_unclipped_quantile: float = 0.5  # adaptive: γ
    clip_learning_rate: float = 0.2  # adaptive: η_C
    clipped_count_stddev: float | None = None  # adaptive: σ_b; None: clients per round / 20
    min_clients: int | None = None  # secure aggregation: fewest noise shares; None: all

    def __post_init__(self):
        for name, allowed in (("level", LEVELS), ("sampling", SAMPLINGS), ("clip", CLIPS),
                              ("accountant", ACCOUNTANTS)):
            value = getattr(self, name)
            if value not in allowed:
                raise DPConfigError(f"dp.{name} must be one of {allowed}, got {value!r}")
        for name in ("noise_multiplier", "clip_norm", "delta", "target_unclipped_quantile",
                     "clip_learning_rate"):
            _real(name, getattr(self, name))
        for name in ("epsilon", "sampling_probability", "clipped_count_stddev"):
            _real(name, getattr(self, name), optional=True)
        if self.noise_multiplier < 0:
            raise DPConfigError(f"dp.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.clip_norm <= 0:
            raise DPConfigError(f"dp.clip_norm must be > 0, got {self.clip_norm}")
        if self.epsilon is not None and self.epsilon <= 0:
            raise DPConfigError(f"dp.epsilon (the budget) must be > 0, got {self.epsilon}; "
                                "use None to account without a budget")
        if not 0.0 < self.delta < 1.0:
            raise DPConfigError(f"dp.delta must be in (0, 1), got {self.delta}")
        q = self.sampling_probability
        if q is not None and not 0.0 < q <= 1.0:
            raise DPConfigError(f"dp.sampling_probability must be in (0, 1], got {q}")
        if not 0.0 <= self.target_unclipped_quantile <= 1.0:
            raise DPConfigError("dp.target_unclipped_quantile must be in [0, 1], got "
                                f"{self.target_unclipped_quantile}")
        if self.clip_learning_rate <= 0:
            raise DPConfigError(
                f"dp.clip_learning_rate must be > 0, got {self.clip_learning_rate}")
        if self.clipped_count_stddev is not None and self.clipped_count_stddev < 0:
            raise DPConfigError(
                f"dp.clipped_count_stddev must be >= 0, got {self.clipped_count_stddev}")
        m = self.min_clients
        if m is not None and (isinstance(m, bool) or not isinstance(m, numbers.Integral)
                              or m < 1):
            raise DPConfigError(f"dp.min_clients must be a whole number >= 1, got {m!r}")
        if self.sampling == "fixed" and self.sampling_probability is not None:
            raise DPConfigError("dp.sampling_probability is for sampling='poisson'; fixed-size "
                                "batches take FedConfig.batch_size rows")
        if self.sampling == "fixed" and self.accountant == "pld":
            raise DPConfigError(
                "dp.sampling='fixed' is accounted only by the RDP accountant (dp_accounting "
                "supports sampling without replacement there only); use accountant='rdp' or "
                "sampling='poisson'"
            )
        other = _CLIENT_ONLY if self.level == "record" else _RECORD_ONLY
        wrong = [k for k, default in other.items() if getattr(self, k) != default]
        if wrong:
            kind = "client-level (DP-FedAvg)" if self.level == "record" else "record-level"
            raise DPConfigError(
                f"dp.{', dp.'.join(wrong)}: {kind} setting(s), which level={self.level!r} "
                "would ignore; leave them at their defaults or change the level"
            )

    @property
    def has_budget(self) -> bool:
        return self.epsilon is not None

    def to_json(self) -> dict:
        return configs.to_json(self)

    @classmethod
    def from_json(cls, obj) -> DPConfig:
        """The ``dp`` map of a setup config; unknown or malformed settings raise
        :class:`~horizontal.dp.errors.DPConfigError`."""
        if not isinstance(obj, dict):
            raise DPConfigError(f"the dp config must be a map, got {type(obj).__name__}")
        unknown = sorted(set(obj) - {f.name for f in fields(cls)}, key=str)
        if unknown:
            raise DPConfigError(f"unknown dp setting(s) {unknown} in the setup config")
        try:
            return configs.from_json(cls, obj, required=())
        except DPConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise DPConfigError(f"malformed dp config ({type(exc).__name__}: {exc})") from None
