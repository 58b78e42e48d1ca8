"""The public training configuration every party receives in ``train.setup``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from vfl.core.errors import ConfigError, SecurityPolicyError, UnsupportedAtPassiveError
from vfl.core.optim import OPTIMIZERS
from vfl.core.tasks import Task
from vfl.vertical.models import ModelConfig

#: ``paillier`` (default): the federated source layer, no party sees a gradient
#: (:mod:`vfl.vertical.source_layer`). ``paillier-masked-gradient``: each passive unmasks its own
#: batch-aggregate gradient (:mod:`vfl.vertical.masked_gradient`); opt-in, refused where invertible.
#: ``plain``: split learning with plaintext cut-layer gradients (labels leak; a baseline).
PROTOCOLS = ("paillier", "paillier-masked-gradient", "plain")
ENCRYPTED_PROTOCOLS = ("paillier", "paillier-masked-gradient")
SOURCE_FORMS = ("auto", "primal", "dual")
LINEAR_OPTIMIZERS = ("sgd", "momentum")


@dataclass(frozen=True)
class TrainConfig:
    task: Task
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    seed: int = 0
    test_fraction: float = 0.3
    protocol: str = "paillier"
    key_bits: int = 2048  # Paillier modulus size for the encrypted protocols
    insecure_test_key: bool = False  # allow key_bits < 2048 (tests only)
    #: the passives' optimizer (None: the same as ``optimizer``). Under ``paillier`` it must
    #: be linear in the gradient (sgd, momentum): the active party runs it on dual
    #: coefficients. The active party's own bottom and top may use any Optax optimizer.
    passive_optimizer: str | None = None
    #: ``paillier`` source-layer storage: ``primal`` ([[V]], d x w), ``dual`` ([[P]], N x w)
    #: or ``auto`` (dual when a party has more features than training rows).
    source_form: str = "auto"

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
        if self.passive_optimizer is not None and self.passive_optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"passive_optimizer must be one of {OPTIMIZERS}, got {self.passive_optimizer!r}"
            )
        if self.source_form not in SOURCE_FORMS:
            raise ConfigError(
                f"source_form must be one of {SOURCE_FORMS}, got {self.source_form!r}"
            )
        if self.protocol == "paillier":
            if self.model.bottom != "linear":
                raise UnsupportedAtPassiveError(
                    f"the paillier protocol keeps each passive's source layer linear (it is "
                    f"held encrypted); got bottom={self.model.bottom!r}. Use "
                    "ModelConfig(bottom='linear', top='mlp', ...) so the non-linear layers "
                    "live in the active party's top model, or protocol='plain' to compare"
                )
            if self.passive_optimizer_name not in LINEAR_OPTIMIZERS:
                raise UnsupportedAtPassiveError(
                    f"the paillier protocol runs the passives' optimizer on dual coefficients, "
                    f"which needs an optimizer linear in the gradient; got "
                    f"{self.passive_optimizer_name!r}. Set passive_optimizer='sgd' or "
                    "'momentum' (the active party's own optimizer may stay adam)"
                )

            if self.weight_decay > 0:
                raise UnsupportedAtPassiveError(
                    "weight decay would shrink the passives' encrypted source layers, which "
                    "the paillier protocol does not do (the decayed part leaves the dual "
                    "coordinates). Set weight_decay=0 (optimizer='adamw' still decays the "
                    "active party's own weights), or protocol='plain' to compare"
                )

    @property
    def passive_optimizer_name(self) -> str:
        return self.passive_optimizer or self.optimizer

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
            "passive_optimizer": self.passive_optimizer,
            "source_form": self.source_form,
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
            passive_optimizer=obj.get("passive_optimizer"),
            source_form=obj.get("source_form", "auto"),
        )

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SecurityPolicy:
    """A party's own security settings, set by its operator and never read from the wire.

    A ``train.setup`` whose config asks for a protocol outside ``protocols``, or a Paillier
    key shorter than ``min_key_bits``, is refused with :class:`SecurityPolicyError`; a key
    below 2048 bits needs ``allow_insecure_test_key`` *here* (tests only), whatever the
    wire config says.
    """

    protocols: tuple[str, ...] = PROTOCOLS
    min_key_bits: int = 2048
    allow_insecure_test_key: bool = False
    #: audits only: let ``paillier-masked-gradient`` run where a passive can invert its
    #: aggregate gradient (to measure that attack); never in production
    allow_invertible_masked_gradient: bool = False

    def __post_init__(self):
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown or not self.protocols:
            raise ConfigError(f"policy protocols must be among {PROTOCOLS}, got {self.protocols}")

    @classmethod
    def pinned(cls, config: TrainConfig) -> SecurityPolicy:
        """Accept exactly ``config``'s protocol and key length (what an operator who chose
        ``config`` configures at every party)."""
        return cls(
            protocols=(config.protocol,),
            min_key_bits=min(config.key_bits, 2048),
            allow_insecure_test_key=config.insecure_test_key,
        )

    def check(self, config: TrainConfig, party: str) -> None:
        if config.protocol not in self.protocols:
            raise SecurityPolicyError(
                f"{party!r} was asked to run protocol {config.protocol!r}, but its own policy "
                f"allows only {list(self.protocols)}; the setup is refused (a downgrade "
                "attempt or a misconfigured coordinator)"
            )
        if config.protocol in ENCRYPTED_PROTOCOLS:
            self.check_key_bits(config.key_bits, party)

    def check_key_bits(self, bits: int, party: str) -> None:
        floor = self.min_key_bits if self.allow_insecure_test_key else max(
            self.min_key_bits, 2048
        )
        if int(bits) < floor:
            raise SecurityPolicyError(
                f"{party!r} refuses a {bits}-bit Paillier key: its own policy needs at least "
                f"{floor} bits (set SecurityPolicy(allow_insecure_test_key=True, "
                "min_key_bits=...) at the party itself, in tests only)"
            )
