"""Systems heterogeneity: dropouts, stragglers under a deadline, clients that rejoin.

Everything is a seeded keyed hash of ``(seed, round, client)``, so a run is reproducible
and a replay of round ``r`` sees exactly the same availability:

* **dropout**: with probability ``dropout_rate`` a client is unreachable for the whole
  round (it does not receive the model). It rejoins by itself in a later round, picking
  up the then-current global model; its local state (personal head, error-feedback
  residual, SCAFFOLD control) is kept while it is away. ``offline`` lists explicit
  ``(client, first_round, last_round)`` windows (a hospital down for maintenance).
* **stragglers**: with probability ``straggler_rate`` a client runs at a speed drawn in
  ``straggler_speed``; by the server's ``deadline`` (a fraction of the time a full-speed
  client needs for its local work) it completes ``floor(steps * min(1, speed * deadline))``
  local steps. Its update is then weighted honestly by the examples it actually processed
  (``FedConfig.straggler_policy="partial"``), or discarded (``"drop"``, classic FedAvg).
  A client that completes no step misses the deadline and counts as dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from horizontal.errors import FedConfigError
from vfl.core.keyed import unit_hash


@dataclass(frozen=True)
class SystemsConfig:
    dropout_rate: float = 0.0
    straggler_rate: float = 0.0
    straggler_speed: tuple[float, float] = (0.2, 0.9)
    deadline: float = 1.0
    offline: tuple[tuple[str, int, int], ...] = ()

    def __post_init__(self):
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise FedConfigError(f"dropout_rate must be in [0, 1], got {self.dropout_rate}")
        if not 0.0 <= self.straggler_rate <= 1.0:
            raise FedConfigError(f"straggler_rate must be in [0, 1], got {self.straggler_rate}")
        lo, hi = self.straggler_speed
        if not 0.0 < lo <= hi:
            raise FedConfigError(f"straggler_speed must be 0 < low <= high, got {lo, hi}")
        if self.deadline <= 0:
            raise FedConfigError(f"deadline must be positive, got {self.deadline}")

    def is_offline(self, seed: int, round: int, client: str) -> bool:
        for name, first, last in self.offline:
            if name == client and first <= round <= last:
                return True
        return self.dropout_rate > 0 and unit_hash("dropout", seed, round, client) < (
            self.dropout_rate
        )

    def speed(self, seed: int, round: int, client: str) -> float:
        """Relative speed this round (1.0 = a normal client)."""
        if self.straggler_rate > 0 and unit_hash("straggle", seed, round, client) < (
            self.straggler_rate
        ):
            lo, hi = self.straggler_speed
            return lo + (hi - lo) * unit_hash("speed", seed, round, client)
        return 1.0

    def steps_done(self, seed: int, round: int, client: str, steps: int) -> int:
        """Local steps a client completes by the deadline (``steps`` when on time)."""
        frac = min(1.0, self.speed(seed, round, client) * self.deadline)
        return steps if frac >= 1.0 else int(math.floor(steps * frac))

    def to_json(self) -> dict:
        return {
            "dropout_rate": self.dropout_rate,
            "straggler_rate": self.straggler_rate,
            "straggler_speed": list(self.straggler_speed),
            "deadline": self.deadline,
            "offline": [list(x) for x in self.offline],
        }

    @classmethod
    def from_json(cls, obj: dict) -> SystemsConfig:
        return cls(
            float(obj["dropout_rate"]),
            float(obj["straggler_rate"]),
            tuple(obj["straggler_speed"]),
            float(obj["deadline"]),
            tuple((str(a), int(b), int(c)) for a, b, c in obj["offline"]),
        )
