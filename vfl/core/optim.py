"""Optax optimizers by name: every party builds its own from the public training config."""

from __future__ import annotations

import optax

from vfl.core.errors import ConfigError

OPTIMIZERS = ("adam", "sgd", "adamw", "adagrad", "momentum")


def make_optimizer(
    name: str, learning_rate: float, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """An Optax optimizer; ``weight_decay`` > 0 adds decoupled L2 decay (AdamW-style)."""
    if learning_rate <= 0:
        raise ConfigError(f"learning_rate must be positive, got {learning_rate}")
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    base = _base(name, learning_rate, weight_decay)
    if weight_decay and name != "adamw":
        return optax.chain(optax.add_decayed_weights(weight_decay), base)
    return base


def _base(name: str, learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=0.9)
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay or 1e-4)
    if name == "adagrad":
        return optax.adagrad(learning_rate)
    raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
