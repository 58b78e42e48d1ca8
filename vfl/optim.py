"""Optax optimizers by name: every party builds its own from the public training config."""

from __future__ import annotations

import optax

from vfl.errors import ConfigError

OPTIMIZERS = ("adam", "sgd", "adamw", "adagrad", "momentum")


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    if learning_rate <= 0:
        raise ConfigError(f"learning_rate must be positive, got {learning_rate}")
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=0.9)
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=1e-4)
    if name == "adagrad":
        return optax.adagrad(learning_rate)
    raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
