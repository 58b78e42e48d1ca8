"""Horizontal federated learning: the FedAvg family for hospital networks.

Several hospitals hold the *same columns* about *different patients*. A
:class:`~horizontal.server.FedServer` and one :class:`~horizontal.client.HospitalClient`
per hospital speak through the vertical engine's message and transport contract
(:mod:`vfl.core.messages`, :mod:`vfl.core.transport`), so every byte is serialized, counted and
labelled. :class:`~horizontal.trainer.FederatedTrainer` drives rounds; in memory, all
sampled clients' local training runs as one ``jit(vmap(...))`` program
(:mod:`horizontal.simulation`).

Modules: ``config`` (FedConfig), ``flat_model`` (flat-vector Flax NNX model),
``client_update`` (pure client update), ``simulation`` (vectorized executor), ``client``,
``server``, ``secure_rounds`` (SecAgg+ as messages; settings in ``secagg.config``),
``strategies`` (aggregators, server optimizers), ``compression``, ``systems``
(stragglers, dropouts), ``partition``, ``personalization``, ``federaser`` (approximate
client removal), ``checkpointing`` (the unlearning adapter), ``trainer``, ``errors``. Keyed-hash
batches and client samples come from :mod:`vfl.core.keyed`. Differential privacy
(``FedConfig.dp``, :class:`DPConfig`) lives in :mod:`horizontal.dp`.
"""

from horizontal import errors, partition
from horizontal.client import HospitalClient
from horizontal.config import FedConfig
from horizontal.dp.config import DPConfig
from horizontal.errors import (
    AllClientsDroppedError,
    BadUpdateError,
    ClientSchemaError,
    EmptyRoundError,
    FedConfigError,
    HorizontalError,
    InvalidExampleCountError,
    NoClientsSampledError,
    NonFiniteUpdateError,
    PrivacyPolicyError,
    SecureRoundAbortedError,
    UpdateShapeError,
)
from horizontal.partition import dirichlet_label_skew, iid, natural, quantity_skew
from horizontal.privacy_policy import PrivacyPolicy
from horizontal.secagg.config import SecAggConfig
from horizontal.server import FedServer
from horizontal.simulation import LocalExecutor
from horizontal.systems import SystemsConfig
from horizontal.trainer import FederatedTrainer, FedRoundRecord

__all__ = [
    "AllClientsDroppedError",
    "BadUpdateError",
    "ClientSchemaError",
    "DPConfig",
    "EmptyRoundError",
    "FedConfig",
    "FedConfigError",
    "FedRoundRecord",
    "FedServer",
    "FederatedTrainer",
    "HorizontalError",
    "HospitalClient",
    "InvalidExampleCountError",
    "LocalExecutor",
    "NoClientsSampledError",
    "NonFiniteUpdateError",
    "PrivacyPolicy",
    "PrivacyPolicyError",
    "SecAggConfig",
    "SecureRoundAbortedError",
    "SystemsConfig",
    "UpdateShapeError",
    "dirichlet_label_skew",
    "errors",
    "iid",
    "natural",
    "partition",
    "quantity_skew",
]
