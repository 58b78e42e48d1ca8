"""Differential-privacy building blocks for horizontal federated learning.

Pure functions in the optax style (``init``/``update`` pairs, state and random keys passed
explicitly), JAX for the compute, Google's ``dp_accounting`` for the epsilons. One concept
per module:

* :mod:`~horizontal.dp.accounting`: DpEvents for DP-SGD (Poisson or fixed-size sampling)
  and client-level DP-FedAvg; epsilon from the RDP and PLD accountants; ``PrivacyBudget``
  and ``BudgetGuard`` (refuses to start a run over budget, stops one that reaches it); the
  noise split of adaptive clipping;
* :mod:`~horizontal.dp.clipping`: a client's update clipped to a fixed L2 bound, the noisy
  DP-FedAvg mean, and adaptive clipping (Andrew et al. 2021, as TensorFlow Privacy does it);
* :mod:`~horizontal.dp.dpsgd`: record-level DP-SGD for the local update (per-example
  gradients, clipping, noise via ``optax.contrib.differentially_private_aggregate``),
  keyed Poisson and fixed-size batch schedules;
* :mod:`~horizontal.dp.config`: ``DPConfig``, the ``FedConfig.dp`` setting (record or
  client level, the budget, the accountant);
* :mod:`~horizontal.dp.ledger`: what a run spends: each hospital's record-level plan, the
  client-level plan, the party-local secrets, and the trainer's ``PrivacyLedger`` (the
  budget guard before and during a run);
* :mod:`~horizontal.dp.fedavg`: client-level DP-FedAvg in a round: the client's clipping,
  the server's noisy mean, and the distributed noise shares for secure aggregation;
* :mod:`~horizontal.dp.errors`: the exceptions (all ``VFLError``).

The trainer uses it when ``FedConfig.dp`` is set (:mod:`horizontal.trainer`,
:mod:`horizontal.client`, :mod:`horizontal.server`); the README's "Differential privacy"
says what the epsilons mean.
"""

from horizontal.dp.accounting import (
    BudgetGuard,
    GuardState,
    PrivacyBudget,
    adaptive_clipping_noise_multiplier,
    adaptive_clipping_value_noise,
    dp_fedavg_event,
    dpsgd_event,
    epsilon,
    epsilons,
    fixed_size_gaussian_event,
    gaussian_event,
)
from horizontal.dp.clipping import (
    AdaptiveClipping,
    AdaptiveClipState,
    adaptive_clipping,
    clip_update,
    dp_fedavg_mean,
)
from horizontal.dp.config import DPConfig
from horizontal.dp.dpsgd import (
    dp_row_hashes,
    fixed_size_batches,
    make_dp_local_train,
    make_dp_value_and_grad,
    noise_key,
    noisy_clipped_mean,
    per_example_grads,
    poisson_batch_size,
    poisson_batches,
)
from horizontal.dp.errors import (
    AccountingError,
    BatchCapacityError,
    BudgetExhaustedError,
    DPConfigError,
    DPError,
    PlannedBudgetExceededError,
    PrivacyBudgetError,
)
from horizontal.dp.fedavg import (
    central_noisy_mean,
    clip_client_update,
    distributed_noise_multiplier,
    secure_client_vector,
    secure_server_mean,
)
from horizontal.dp.ledger import (
    ClientPlan,
    PrivacyLedger,
    RecordPlan,
    client_plan,
    fresh_secret,
    record_plan,
    simulation_secret,
)

__all__ = [
    "AccountingError",
    "AdaptiveClipState",
    "AdaptiveClipping",
    "BatchCapacityError",
    "BudgetExhaustedError",
    "BudgetGuard",
    "ClientPlan",
    "DPConfig",
    "DPConfigError",
    "DPError",
    "GuardState",
    "PlannedBudgetExceededError",
    "PrivacyBudget",
    "PrivacyBudgetError",
    "PrivacyLedger",
    "RecordPlan",
    "adaptive_clipping",
    "adaptive_clipping_noise_multiplier",
    "adaptive_clipping_value_noise",
    "central_noisy_mean",
    "client_plan",
    "clip_client_update",
    "clip_update",
    "dp_fedavg_event",
    "dp_fedavg_mean",
    "distributed_noise_multiplier",
    "dp_row_hashes",
    "dpsgd_event",
    "epsilon",
    "epsilons",
    "fixed_size_batches",
    "fixed_size_gaussian_event",
    "fresh_secret",
    "gaussian_event",
    "make_dp_local_train",
    "make_dp_value_and_grad",
    "noise_key",
    "noisy_clipped_mean",
    "per_example_grads",
    "poisson_batch_size",
    "poisson_batches",
    "record_plan",
    "secure_client_vector",
    "secure_server_mean",
    "simulation_secret",
]
