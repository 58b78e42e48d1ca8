"""The public configuration of a horizontal federation (sent to every client at setup).

Its digest is stored in every checkpoint record, so a resume under different settings is
refused instead of silently producing a different model.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field, fields

from horizontal.dp.config import DPConfig
from horizontal.errors import FedConfigError, NoClientsSampledError
from horizontal.secagg.config import SecAggConfig
from horizontal.systems import SystemsConfig
from vfl.core import configs
from vfl.core.tasks import Task

ALGORITHMS = ("fedavg", "scaffold")
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum")
COMPRESSIONS = ("none", "int8", "int4", "topk")
CLIENT_OPTIMIZERS = ("sgd", "momentum")
PERSONALIZATION = ("none", "fedper")


@dataclass(frozen=True)
class FedConfig:
    task: Task = field(default_factory=lambda: Task("binary"))
    hidden: tuple[int, ...] = (16,)  # () is logistic regression
    rounds: int = 20
    clients_per_round: int | None = None  # a count, or
    fraction: float | None = None  # a fraction of the clients; neither: all clients
    local_epochs: int = 1
    batch_size: int = 32
    client_lr: float = 0.05
    client_optimizer: str = "sgd"
    mu: float = 0.0  # FedProx proximal weight (0: FedAvg)
    algorithm: str = "fedavg"
    server_optimizer: str = "fedavg"
    server_lr: float | None = None  # None: 1.0 for fedavg/fedavgm, 0.03 for adaptive ones
    aggregator: str = "mean"
    trim_fraction: float = 0.1
    krum_f: int = 1
    compression: str = "none"
    topk_fraction: float = 0.1
    error_feedback: bool = True
    personalization: str = "none"
    seed: int = 0
    test_fraction: float = 0.3
    systems: SystemsConfig = field(default_factory=SystemsConfig)
    straggler_policy: str = "partial"  # or "drop"
    on_bad_update: str = "drop"  # or "raise"
    on_empty_round: str = "skip"  # "retry" (re-sample other clients) or "raise"
    max_retries: int = 2
    # differential privacy (horizontal.dp.config); None: none. Written to JSON only when
    # set, so the digests of configs without it are unchanged.
    dp: DPConfig | None = field(default=None, metadata=configs.codec(omit_default=True))
    # SecAgg+ (horizontal.secagg.config, horizontal.secure_rounds): the server learns only
    # each round's sum. None: plaintext updates. Written to JSON only when set.
    secure_aggregation: SecAggConfig | None = field(
        default=None, metadata=configs.codec(omit_default=True))

    def __post_init__(self):
        checks = [
            ("algorithm", ALGORITHMS),
            ("server_optimizer", SERVER_OPTIMIZERS),
            ("aggregator", AGGREGATORS),
            ("compression", COMPRESSIONS),
            ("client_optimizer", CLIENT_OPTIMIZERS),
            ("personalization", PERSONALIZATION),
            ("straggler_policy", ("partial", "drop")),
            ("on_bad_update", ("drop", "raise")),
            ("on_empty_round", ("skip", "retry", "raise")),
        ]
        for name, allowed in checks:
            value = getattr(self, name)
            if value not in allowed:
                raise FedConfigError(f"{name} must be one of {allowed}, got {value!r}")
        whole = ("rounds", "local_epochs", "batch_size", "krum_f", "seed", "max_retries",
                 "clients_per_round")
        for name in whole:
            value = getattr(self, name)
            if value is None and name == "clients_per_round":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise FedConfigError(f"{name} must be a whole number, got {value!r}")
        real = ("client_lr", "mu", "server_lr", "trim_fraction", "topk_fraction",
                "test_fraction", "fraction")
        for name in real:
            value = getattr(self, name)
            if value is None and name in ("server_lr", "fraction"):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
                math.isfinite(value)
            ):
                raise FedConfigError(f"{name} must be a finite number, got {value!r}")
        if not isinstance(self.error_feedback, bool):
            raise FedConfigError(f"error_feedback must be True or False, got "
                                 f"{self.error_feedback!r}")
        if not isinstance(self.task, Task) or not isinstance(self.systems, SystemsConfig):
            raise FedConfigError("task must be a Task and systems a SystemsConfig")
        if not isinstance(self.hidden, tuple | list) or not all(
            isinstance(h, numbers.Integral) and not isinstance(h, bool) and h > 0
            for h in self.hidden
        ):
            raise FedConfigError(f"hidden must be a tuple of positive layer widths, got "
                                 f"{self.hidden!r}")
        positive = {"rounds": self.rounds, "local_epochs": self.local_epochs,
                    "batch_size": self.batch_size, "client_lr": self.client_lr}
        for name, value in positive.items():
            if value <= 0:
                raise FedConfigError(f"{name} must be positive, got {value}")
        if self.mu < 0:
            raise FedConfigError(f"mu (FedProx) must be >= 0, got {self.mu}")
        if self.server_lr is not None and self.server_lr <= 0:
            raise FedConfigError(f"server_lr must be positive, got {self.server_lr}")
        if self.clients_per_round is not None and self.fraction is not None:
            raise FedConfigError("give clients_per_round or fraction, not both")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise FedConfigError(
                f"fraction must be in (0, 1], got {self.fraction}; use clients_per_round "
                "for a fixed count"
            )
        if self.clients_per_round is not None and self.clients_per_round < 1:
            raise NoClientsSampledError(
                f"clients_per_round={self.clients_per_round} samples no client; use >= 1"
            )
        if not 0.0 <= self.trim_fraction < 0.5:
            raise FedConfigError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if not 0.0 < self.topk_fraction <= 1.0:
            raise FedConfigError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise FedConfigError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.algorithm == "scaffold" and self.client_optimizer != "sgd":
            raise FedConfigError("SCAFFOLD's control variates assume client_optimizer='sgd'")
        self._check_dp()
        self._check_secure_aggregation()

    def _check_secure_aggregation(self) -> None:
        sa = self.secure_aggregation
        if sa is None:
            return
        if not isinstance(sa, SecAggConfig):
            raise FedConfigError(f"secure_aggregation must be a SecAggConfig or None, got "
                                 f"{type(sa).__name__}")
        # The server holds only the sum of a round's updates: whatever needs one client's
        # update on its own cannot run on it.
        if self.aggregator != "mean":
            raise FedConfigError(
                f"secure aggregation reveals only the sum of the updates; aggregator="
                f"{self.aggregator!r} needs each client's update (robust aggregators rank or "
                "compare individual updates). Use aggregator='mean' or turn it off")
        if self.compression != "none":
            raise FedConfigError(
                f"compression={self.compression!r} cannot be combined with secure aggregation: "
                "the update is masked in Z_2^bits after its own fixed-point quantization, and "
                "a compressed, rescaled or sparsified update would not add up to the sum. Use "
                "compression='none' (secure_aggregation.bits sets the bytes per value)")
        if self.algorithm == "scaffold":
            raise FedConfigError(
                "SCAFFOLD sends each client's control delta in the clear, which secure "
                "aggregation exists to prevent; use algorithm='fedavg'")
        if self.clients_per_round is not None and self.clients_per_round < 3:
            raise FedConfigError(
                f"secure aggregation needs at least 3 clients per round, got "
                f"clients_per_round={self.clients_per_round}: with two, each learns the "
                "other's update from the sum")

    def _check_dp(self) -> None:
        dp = self.dp
        if dp is None:
            return
        if not isinstance(dp, DPConfig):
            raise FedConfigError(f"dp must be a DPConfig or None, got {type(dp).__name__}")
        if dp.level == "client":
            # The noisy mean's sensitivity is the clip bound of one client's update: a
            # median, trimmed mean or Krum has another sensitivity, and SCAFFOLD's control
            # deltas would leave every client unclipped and without noise.
            if self.aggregator != "mean":
                raise FedConfigError(
                    f"client-level DP (DP-FedAvg) needs aggregator='mean', got "
                    f"{self.aggregator!r}; robust aggregators have another sensitivity")
            if self.algorithm == "scaffold":
                raise FedConfigError(
                    "client-level DP does not cover SCAFFOLD's control deltas (they would be "
                    "sent unclipped and without noise); use algorithm='fedavg' or record-level "
                    "DP")
            if dp.clip == "adaptive" and self.secure_aggregation is not None:
                raise FedConfigError(
                    "client-level adaptive clipping under secure aggregation would need the "
                    "unclipped count summed securely too, which the secure rounds do not carry; "
                    "use clip='fixed' (its noise is added by the clients in shares)")

    @property
    def effective_server_lr(self) -> float:
        if self.server_lr is not None:
            return self.server_lr
        return 1.0 if self.server_optimizer in ("fedavg", "fedavgm") else 0.03

    def sample_size(self, n_clients: int) -> int:
        """Clients per round for a federation of ``n_clients``; raises if that is zero."""
        if self.clients_per_round is not None:
            m = min(self.clients_per_round, n_clients)
        elif self.fraction is not None:
            m = int(math.floor(self.fraction * n_clients + 1e-9))
        else:
            m = n_clients
        if m < 1:
            raise NoClientsSampledError(
                f"fraction={self.fraction} of {n_clients} clients samples no client per "
                f"round; raise the fraction to at least {1 / max(n_clients, 1):.3g} or set "
                "clients_per_round"
            )
        return m

    def to_json(self) -> dict:
        return configs.to_json(self)

    @classmethod
    def from_json(cls, obj: dict) -> FedConfig:
        """The config sent at setup; a malformed one raises :class:`FedConfigError`."""
        if not isinstance(obj, dict):
            raise FedConfigError(f"a setup config must be a map, got {type(obj).__name__}")
        unknown = sorted(set(obj) - {f.name for f in fields(cls)}, key=str)
        if unknown:
            raise FedConfigError(f"unknown setting(s) {unknown} in the setup config")
        try:
            return configs.from_json(cls, obj, required=("task", "hidden", "systems"))
        except FedConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise FedConfigError(
                f"malformed setup config ({type(exc).__name__}: {exc}); the server and the "
                "client must run the same version"
            ) from None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()
