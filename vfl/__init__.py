"""vfl: vertical federated learning for healthcare on JAX.

Parties hold different columns about the same patients, align them with private set
intersection, and train a split model through serialized, labelled messages.

The public API (``from vfl import ...``)::

    PartyTable, Federation, TrainConfig, ModelConfig, Task, SecurityPolicy, SplitTrainer,
    TrainHistory, Transcript, Label, Message, make_optimizer, register_optimizer,
    register_model, load_dataset, DATASETS, VerticalCox, CoxConfig, fit_cox, errors,
    __version__

``errors`` is the module :mod:`vfl.core.errors` (``vfl.errors.ConfigError``). Names are
imported on first use, so ``import vfl.core.errors`` alone stays free of JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# name -> (module, attribute); attribute None: the module itself.
_EXPORTS = {
    "CoxConfig": ("vfl.survival.config", "CoxConfig"),
    "DATASETS": ("vfl.datasets.registry", "DATASETS"),
    "Federation": ("vfl.vertical.federation", "Federation"),
    "Label": ("vfl.core.messages", "Label"),
    "Message": ("vfl.core.messages", "Message"),
    "ModelConfig": ("vfl.vertical.models", "ModelConfig"),
    "PartyTable": ("vfl.core.table", "PartyTable"),
    "SecurityPolicy": ("vfl.vertical.config", "SecurityPolicy"),
    "SplitTrainer": ("vfl.vertical.trainer", "SplitTrainer"),
    "Task": ("vfl.core.tasks", "Task"),
    "TrainConfig": ("vfl.vertical.config", "TrainConfig"),
    "TrainHistory": ("vfl.core.rounds", "TrainHistory"),
    "Transcript": ("vfl.core.transcript", "Transcript"),
    "VerticalCox": ("vfl.survival.federated", "VerticalCox"),
    "errors": ("vfl.core.errors", None),
    "fit_cox": ("vfl.survival.cox", "fit_cox"),
    "load_dataset": ("vfl.datasets.registry", "load"),
    "make_optimizer": ("vfl.core.optim", "make_optimizer"),
    "register_model": ("vfl.vertical.models", "register_model"),
    "register_optimizer": ("vfl.core.optim", "register_optimizer"),
}

__all__ = [
    "CoxConfig",
    "DATASETS",
    "Federation",
    "Label",
    "Message",
    "ModelConfig",
    "PartyTable",
    "SecurityPolicy",
    "SplitTrainer",
    "Task",
    "TrainConfig",
    "TrainHistory",
    "Transcript",
    "VerticalCox",
    "__version__",
    "errors",
    "fit_cox",
    "load_dataset",
    "make_optimizer",
    "register_model",
    "register_optimizer",
]


def __getattr__(name: str):
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'vfl' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from vfl.core import errors
    from vfl.core.messages import Label, Message
    from vfl.core.optim import make_optimizer, register_optimizer
    from vfl.core.rounds import TrainHistory
    from vfl.core.table import PartyTable
    from vfl.core.tasks import Task
    from vfl.core.transcript import Transcript
    from vfl.datasets.registry import DATASETS
    from vfl.datasets.registry import load as load_dataset
    from vfl.vertical.config import SecurityPolicy, TrainConfig
    from vfl.vertical.federation import Federation
    from vfl.vertical.models import ModelConfig, register_model
    from vfl.vertical.trainer import SplitTrainer
