"""One optimizer factory for every engine: an Optax optimizer from a name, a registered
name or a ready ``optax.GradientTransformation``.

Every party builds its own optimizer from the public training config; the horizontal
server and clients build theirs here too (with their own hyperparameters as keyword
arguments, e.g. FedAdam's ``make_optimizer("adam", lr, b1=0.9, b2=0.99, eps=1e-3)``).

Weight decay. ``weight_decay > 0`` is *coupled* L2 regularization for every optimizer but
``adamw``: the penalty gradient ``weight_decay * w`` is added to the loss gradient before
the optimizer scales it (``optax.add_decayed_weights`` chained in front), exactly the
gradient of ``loss + weight_decay / 2 * ||w||^2``. Under Adam or Adagrad that penalty is
rescaled per coordinate like any gradient. ``adamw`` is the decoupled form (Loshchilov &
Hutter): the decay is applied after Adam's scaling, ``w <- w - lr * (adam_step + wd * w)``.
``decay_biases=False`` leaves biases out of either form (1-D parameters and parameters
named ``bias``), as scikit-learn leaves the intercept unpenalized.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from vfl.core.errors import ConfigError

OPTIMIZERS = ("adam", "sgd", "adamw", "adagrad", "momentum", "yogi")

#: Optimizers registered by name (:func:`register_optimizer`): ``factory(learning_rate,
#: **hyper) -> optax.GradientTransformation``.
_REGISTERED: dict[str, Callable[..., optax.GradientTransformation]] = {}


def register_optimizer(name: str, factory: Callable[..., optax.GradientTransformation]) -> None:
    """Make ``name`` a valid optimizer name in this process: ``factory(learning_rate)``
    builds it. A name (unlike a transformation object) travels in a config's JSON, so a
    setup message or a run manifest can carry it; every process that reads the config
    must register the same name."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(f"an optimizer name must be a non-empty string without ':', got "
                          f"{name!r}")
    if name in OPTIMIZERS:
        raise ConfigError(f"{name!r} is a built-in optimizer; choose another name")
    if not callable(factory):
        raise ConfigError(f"the factory for optimizer {name!r} must be callable")
    _REGISTERED[name] = factory


def optimizer_names() -> tuple[str, ...]:
    """The built-in and the registered optimizer names."""
    return OPTIMIZERS + tuple(_REGISTERED)


def is_transformation(value) -> bool:
    """Whether ``value`` is an Optax gradient transformation (an ``init``/``update`` pair)
    rather than a name."""
    return isinstance(value, optax.GradientTransformation) or (
        not isinstance(value, str)
        and callable(getattr(value, "init", None))
        and callable(getattr(value, "update", None))
    )


def is_optimizer(value) -> bool:
    """A valid optimizer setting: a known name or a gradient transformation."""
    return is_transformation(value) or (isinstance(value, str) and value in optimizer_names())


def is_bias(path, leaf) -> bool:
    """A bias: a parameter with at most one dimension, or one named ``bias``."""
    if getattr(leaf, "ndim", 0) <= 1:
        return True
    return any(getattr(k, "key", getattr(k, "name", None)) == "bias" for k in path)


def decay_mask(params):
    """``True`` where weight decay applies: every parameter but the biases."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: not is_bias(path, leaf), params)


def make_optimizer(
    optimizer,
    learning_rate: float,
    weight_decay: float = 0.0,
    *,
    decay_biases: bool = True,
    **hyper,
) -> optax.GradientTransformation:
    """An Optax optimizer.

    ``optimizer``: a name (:data:`OPTIMIZERS`: ``momentum`` is SGD with momentum 0.9;
    or a name from :func:`register_optimizer`), or an ``optax.GradientTransformation``,
    used as given (``learning_rate`` then does not apply to it). ``hyper``: keyword
    arguments of the named Optax constructor (``b1``, ``b2``, ``eps``, ``momentum``,
    ``initial_accumulator_value``, ...). ``weight_decay`` > 0 adds coupled L2 (decoupled for
    ``adamw``; see the module docstring); ``decay_biases=False`` exempts the biases.
    """
    if learning_rate <= 0:
        raise ConfigError(f"learning_rate must be positive, got {learning_rate}")
    if weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
    mask = None if decay_biases else decay_mask
    if is_transformation(optimizer):
        if hyper:
            raise ConfigError(
                f"optimizer hyperparameters {sorted(hyper)} apply to a named optimizer; an "
                "optax.GradientTransformation is used as given"
            )
        base = optimizer
    else:
        base = _base(optimizer, learning_rate, weight_decay, mask, hyper)
    if weight_decay and optimizer != "adamw":
        return optax.chain(optax.add_decayed_weights(weight_decay, mask), base)
    return base


def _base(name, learning_rate, weight_decay, mask, hyper) -> optax.GradientTransformation:
    try:
        if name == "adam":
            return optax.adam(learning_rate, **hyper)
        if name == "sgd":
            return optax.sgd(learning_rate, **hyper)
        if name == "momentum":
            return optax.sgd(learning_rate, momentum=hyper.pop("momentum", 0.9), **hyper)
        if name == "adamw":
            return optax.adamw(learning_rate, weight_decay=weight_decay or 1e-4, mask=mask,
                               **hyper)
        if name == "adagrad":
            return optax.adagrad(learning_rate, **hyper)
        if name == "yogi":
            return optax.yogi(learning_rate, **hyper)
        if isinstance(name, str) and name in _REGISTERED:
            return _REGISTERED[name](learning_rate, **hyper)
    except TypeError as exc:
        raise ConfigError(f"bad hyperparameters for optimizer {name!r}: {exc}") from None
    raise ConfigError(
        f"optimizer must be one of {optimizer_names()} or an optax.GradientTransformation, "
        f"got {name!r}"
    )
