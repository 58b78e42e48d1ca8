"""The public training configuration every party receives in ``train.setup``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import optax

from vfl.core import configs
from vfl.core.configs import codec, describe, refuse_custom
from vfl.core.errors import ConfigError, SecurityPolicyError, UnsupportedAtPassiveError
from vfl.core.optim import is_optimizer, is_transformation, optimizer_names
from vfl.core.tasks import Task
from vfl.vertical.models import ModelConfig, spec_json

#: ``paillier`` (default): the federated source layer, no party sees a gradient
#: (:mod:`vfl.vertical.source_layer`). ``paillier-masked-gradient``: each passive unmasks its own
#: batch-aggregate gradient (:mod:`vfl.vertical.masked_gradient`); opt-in, refused where invertible.
#: ``plain``: split learning with plaintext cut-layer gradients (labels leak; a baseline).
PROTOCOLS = ("paillier", "paillier-masked-gradient", "plain")
ENCRYPTED_PROTOCOLS = ("paillier", "paillier-masked-gradient")
SOURCE_FORMS = ("auto", "primal", "dual")
LINEAR_OPTIMIZERS = ("sgd", "momentum")

#: The keys a config's JSON must have (the others default when absent).
_REQUIRED_JSON = ("task", "model", "epochs", "batch_size", "learning_rate", "optimizer",
                  "seed", "test_fraction", "protocol")


def _encode_optimizer(value):
    return describe(value) if is_transformation(value) else value


def _decode_optimizer(setting: str):
    def decode(value):
        refuse_custom(setting, value, register="vfl.core.optim.register_optimizer")
        return value

    return decode


def _optimizer_text(value) -> str:
    return describe(value) if is_transformation(value) else repr(value)


@dataclass(frozen=True)
class TrainConfig:
    """The public training configuration.

    ``optimizer`` is a name (``vfl.core.optim.OPTIMIZERS`` or a registered one) or an
    ``optax.GradientTransformation``; ``model`` may hold Flax NNX module factories
    (:class:`~vfl.vertical.models.ModelConfig`). Python objects cannot travel in JSON:
    :meth:`to_json` records a description of them (so the digest still names them) and
    :meth:`from_json` refuses it; :attr:`is_portable` says whether a config round-trips.
    """

    task: Task = field(metadata=codec(
        flatten=True,
        encode=lambda t: {"task": t.kind, "n_classes": t.n_classes},
        decode=lambda obj: Task(obj["task"], obj.get("n_classes")),
    ))
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 0.05
    optimizer: str | optax.GradientTransformation = field(
        default="sgd",
        metadata=codec(encode=_encode_optimizer, decode=_decode_optimizer("optimizer")),
    )
    #: coupled L2 regularization (the penalty gradient is added before the optimizer's
    #: scaling); decoupled under ``optimizer="adamw"``. See :mod:`vfl.core.optim`.
    weight_decay: float = 0.0
    seed: int = 0
    test_fraction: float = 0.3
    protocol: str = "paillier"
    key_bits: int = 2048  # Paillier modulus size for the encrypted protocols
    insecure_test_key: bool = False  # allow key_bits < 2048 (tests only)
    #: the passives' optimizer (None: the same as ``optimizer``). Under ``paillier`` it must
    #: be linear in the gradient (sgd, momentum): the active party runs it on dual
    #: coefficients. The active party's own bottom and top may use any Optax optimizer.
    passive_optimizer: str | optax.GradientTransformation | None = field(
        default=None,
        metadata=codec(encode=_encode_optimizer,
                       decode=_decode_optimizer("passive_optimizer")),
    )
    #: ``paillier`` source-layer storage: ``primal`` ([[V]], d x w), ``dual`` ([[P]], N x w)
    #: or ``auto`` (dual when a party has more features than training rows).
    source_form: str = "auto"
    #: whether ``weight_decay`` also penalizes the biases (1-D parameters and parameters
    #: named ``bias``); ``False`` leaves them unpenalized, as scikit-learn leaves the
    #: intercept. Written to the JSON only when ``False``.
    decay_biases: bool = field(default=True, metadata=codec(omit_default=True))

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if not is_optimizer(self.optimizer):
            raise ConfigError(
                f"optimizer must be one of {optimizer_names()} or an "
                f"optax.GradientTransformation, got {self.optimizer!r}"
            )
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.passive_optimizer is not None and not is_optimizer(self.passive_optimizer):
            raise ConfigError(
                f"passive_optimizer must be one of {optimizer_names()} or an "
                f"optax.GradientTransformation, got {self.passive_optimizer!r}"
            )
        if not isinstance(self.decay_biases, bool):
            raise ConfigError(f"decay_biases must be True or False, got {self.decay_biases!r}")
        if self.source_form not in SOURCE_FORMS:
            raise ConfigError(
                f"source_form must be one of {SOURCE_FORMS}, got {self.source_form!r}"
            )
        if self.protocol == "paillier":
            bottom = self.model.bottom
            if not isinstance(bottom, Mapping) and not (
                isinstance(bottom, str) and bottom == "linear"
            ):
                raise UnsupportedAtPassiveError(
                    f"the paillier protocol keeps each passive's source layer linear (it is "
                    f"held encrypted); got bottom={spec_json(bottom)!r} "
                    "for every party. Use ModelConfig(bottom='linear', top='mlp', ...) so the "
                    "non-linear layers live in the active party's top model, give only the "
                    "active party its own bottom (bottom={active_name: factory}), or use "
                    "protocol='plain'"
                )
            if self.passive_optimizer_name not in LINEAR_OPTIMIZERS:
                raise UnsupportedAtPassiveError(
                    f"the paillier protocol runs the passives' optimizer on dual coefficients, "
                    f"which needs an optimizer linear in the gradient; got "
                    f"{_optimizer_text(self.passive_optimizer_name)}. Set "
                    "passive_optimizer='sgd' or 'momentum' (the active party's own optimizer "
                    "may stay adam or be an optax.GradientTransformation)"
                )

            if self.weight_decay > 0:
                raise UnsupportedAtPassiveError(
                    "weight_decay > 0 (an L2 penalty) would shrink the passives' encrypted "
                    "source layers, which the paillier protocol does not do (the decayed part "
                    "leaves the dual coordinates). Set weight_decay=0 (optimizer='adamw' "
                    "still applies its own decoupled decay, 1e-4, to the active party's "
                    "weights), or protocol='plain' to compare"
                )

    @property
    def passive_optimizer_name(self) -> str | optax.GradientTransformation:
        return self.optimizer if self.passive_optimizer is None else self.passive_optimizer

    @property
    def is_portable(self) -> bool:
        """Whether :meth:`from_json` rebuilds this config from :meth:`to_json` (no module
        factory or optimizer object in it)."""
        return self.model.is_portable and not any(
            is_transformation(o) for o in (self.optimizer, self.passive_optimizer)
        )

    def check_parties(self, active: str, passives) -> None:
        """Checks that need the parties' roles: a per-party bottom mapping names only
        parties of the federation, and under ``paillier`` every passive's bottom is linear
        (its source layer is held encrypted). Each party also checks its own at setup."""
        bottom = self.model.bottom
        if isinstance(bottom, Mapping):
            unknown = sorted(set(bottom) - {active, *passives})
            if unknown:
                raise ConfigError(
                    f"the bottom mapping names {unknown}, which are not parties of this "
                    f"federation ({[active, *passives]})"
                )
        for p in passives:
            self.check_passive_bottom(p)

    def check_passive_bottom(self, party: str) -> None:
        spec = self.model.bottom_for(party)
        if self.protocol == "paillier" and not (isinstance(spec, str) and spec == "linear"):
            raise UnsupportedAtPassiveError(
                f"the paillier protocol keeps each passive's source layer linear (it is held "
                f"encrypted); the passive party {party!r} was given bottom="
                f"{spec_json(spec)!r}. A custom bottom works at the active party under "
                "paillier (bottom={active_name: factory}), or at every party under "
                "protocol='plain'"
            )

    def to_json(self) -> dict:
        """The JSON map (a Python object in the config appears as its description)."""
        return configs.to_json(self)

    @classmethod
    def from_json(cls, obj: dict) -> TrainConfig:
        """The config from its JSON map; refuses a map that describes Python objects."""
        return configs.from_json(cls, obj, required=_REQUIRED_JSON)

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
