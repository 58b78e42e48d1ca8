"""The public training configuration every party receives in ``train.setup``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from vfl.errors import ConfigError
from vfl.models import ModelConfig
from vfl.optim import OPTIMIZERS
from vfl.tasks import Task

PROTOCOLS = ("plain", "paillier")


@dataclass(frozen=True)
class TrainConfig:
    task: Task
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 0.05
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    test_fraction: float = 0.3
    protocol: str = "plain"
    key_bits: int = 2048  # Paillier modulus size for the paillier protocol
    insecure_test_key: bool = False  # allow key_bits < 2048 (tests only)

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")

    def to_json(self) -> dict:
        return {
            "task": self.task.kind,
            "n_classes": self.task.n_classes,
            "model": self.model.to_json(),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "protocol": self.protocol,
            "key_bits": self.key_bits,
            "insecure_test_key": self.insecure_test_key,
        }

    @classmethod
    def from_json(cls, obj: dict) -> TrainConfig:
        m = obj["model"]
        return cls(
            task=Task(obj["task"], obj.get("n_classes")),
            model=ModelConfig(
                m["bottom"], m["top"], tuple(m["hidden"]), m["embed_dim"], tuple(m["top_hidden"])
            ),
            epochs=obj["epochs"],
            batch_size=obj["batch_size"],
            learning_rate=obj["learning_rate"],
            optimizer=obj["optimizer"],
            weight_decay=obj.get("weight_decay", 0.0),
            seed=obj["seed"],
            test_fraction=obj["test_fraction"],
            protocol=obj["protocol"],
            key_bits=obj.get("key_bits", 2048),
            insecure_test_key=obj.get("insecure_test_key", False),
        )

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()
