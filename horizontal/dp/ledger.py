"""What a differentially private horizontal run spends: plans, party secrets, the ledger.

**Plans** (public: they depend only on :class:`~horizontal.config.FedConfig` and on counts
every party already publishes):

* :func:`record_plan`: a hospital's DP-SGD per round. ``q`` is ``dp.sampling_probability``
  or ``batch_size / n_train`` (capped at 1), the expected batch ``L = q · n_train`` (the
  denominator of every step), ``local_epochs · ceil(1/q)`` steps per round (with ``q`` from
  the batch size: ``local_epochs · ceil(n_train / batch_size)``, as without DP), and the
  width of the compiled batch (Poisson: a capacity exceeded with probability ``1e-9`` per
  step, :func:`~horizontal.dp.dpsgd.poisson_capacity`; fixed: ``batch_size``). Its epsilon
  after ``R`` rounds is that of ``steps_per_round · R`` sampled Gaussian steps at ``q``
  (:meth:`RecordPlan.event`);
* :func:`client_plan`: DP-FedAvg per round: ``q = clients per round / clients``, the noise
  multiplier the accountant is charged with (σ; adaptive clipping: the same σ is the
  ``σ_z`` of the two releases, and the value noise ``σ_Δ`` is derived from it; with secure
  aggregation: ``σ · sqrt(min_clients / clients per round)``, see
  :mod:`horizontal.dp.fedavg`).

**Secrets.** Amplification by sampling and the noise itself assume the adversary cannot
predict which rows a hospital sampled or which noise it drew, so both come from a secret
only that party holds (:func:`~horizontal.dp.dpsgd.poisson_batches`,
:func:`~horizontal.dp.dpsgd.noise_key`): party-local configuration, never in a message,
never in a checkpoint. A party built without one draws :func:`fresh_secret`
(``os.urandom``); a deployed hospital's operator may pin one (``vfl deploy node
--dp-secret-file``). The in-memory simulation pins :func:`simulation_secret` (a hash of the
public seed and the party's name) so that two simulated runs with one seed are bitwise
equal: **that is for reproducible simulation only**, since anyone who knows the seed can
recompute it.

**Ledger.** :class:`PrivacyLedger` is the trainer's account: one
:class:`~horizontal.dp.accounting.BudgetGuard` state per hospital (record level) or one for
the federation (client level). :meth:`PrivacyLedger.check_plans` refuses a run whose
planned epsilon exceeds the budget (before any data is used);
:meth:`PrivacyLedger.precheck` charges the next round tentatively *before* it runs and
raises :class:`~horizontal.dp.errors.BudgetExhaustedError` if it would exceed the budget;
:meth:`PrivacyLedger.commit` keeps the charges of the parties that took part.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import dataclass

import dp_accounting
import numpy as np

from horizontal.dp.accounting import (
    BudgetGuard,
    GuardState,
    PrivacyBudget,
    adaptive_clipping_value_noise,
    fixed_size_gaussian_event,
    gaussian_event,
    quiet_accountant,
)
from horizontal.dp.config import DPConfig
from horizontal.dp.dpsgd import poisson_capacity
from horizontal.dp.errors import BudgetExhaustedError, DPConfigError, PlannedBudgetExceededError
from vfl.core.keyed import steps_per_epoch

#: The ledger's key for the federation as a whole (client level).
FEDERATION = "federation"


# -- secrets ----------------------------------------------------------------------------------
def fresh_secret() -> str:
    """256 bits from ``os.urandom``, hex: the secret of a party nobody pinned one for."""
    return os.urandom(32).hex()


def simulation_secret(seed: int, party: str) -> str:
    """A party's DP secret **in the in-memory simulation only**: a hash of the public seed
    and its name, so two simulated runs with one seed draw the same samples and noise.
    Anyone who knows the seed can recompute it; a deployed party never uses it."""
    return hashlib.sha256(f"vfl-dp-simulation|{int(seed)}|{party}".encode()).hexdigest()


def secret_text(secret) -> str:
    """A pinned secret as text (bytes as hex); refuses an empty one."""
    text = secret.hex() if isinstance(secret, bytes | bytearray) else str(secret).strip()
    if len(text) < 16:
        raise DPConfigError("a pinned DP secret must have at least 16 characters (64 bits); "
                            "use e.g. os.urandom(32).hex()")
    return text


# -- plans ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordPlan:
    """One hospital's DP-SGD per round (see the module docstring)."""

    n_train: int
    sampling: str
    sampling_probability: float  # q
    expected_batch_size: float  # L = q · n_train, the denominator of a step
    width: int  # columns of the compiled batch: Poisson capacity, or the fixed batch size
    steps_per_round: int
    noise_multiplier: float

    def event(self, rounds: int) -> dp_accounting.DpEvent:
        """The DpEvent of ``rounds`` rounds of this hospital's local steps."""
        steps = self.steps_per_round * int(rounds)
        if self.sampling == "fixed":
            return fixed_size_gaussian_event(self.noise_multiplier, dataset_size=self.n_train,
                                             sample_size=self.width, count=steps)
        return gaussian_event(self.noise_multiplier, sampling_probability=self.sampling_probability,
                              count=steps)


def record_plan(dp: DPConfig, n_train: int, *, batch_size: int, local_epochs: int) -> RecordPlan:
    """A hospital's DP-SGD plan from public counts (its training rows and the config)."""
    n = int(n_train)
    if n < 1:
        raise DPConfigError("record-level DP needs at least one training row")
    if dp.sampling == "fixed":
        b = min(int(batch_size), n)
        return RecordPlan(n, "fixed", b / n, float(b), b,
                          local_epochs * steps_per_epoch(n, b), dp.noise_multiplier)
    if dp.sampling_probability is None:
        q = min(1.0, batch_size / n)
        per_epoch = steps_per_epoch(n, batch_size)
    else:
        q = float(dp.sampling_probability)
        per_epoch = max(1, math.ceil(1.0 / q - 1e-9))
    width = n if q >= 1.0 else min(n, poisson_capacity(n, q))
    return RecordPlan(n, "poisson", q, q * n, width, local_epochs * per_epoch,
                      dp.noise_multiplier)


@dataclass(frozen=True)
class ClientPlan:
    """DP-FedAvg per round (see the module docstring)."""

    total_clients: int
    clients_per_round: int  # the expected number, the denominator of the mean
    sampling_probability: float  # clients per round / clients
    noise_multiplier: float  # what the accountant is charged with per round
    value_noise_multiplier: float  # σ_Δ: noise on the clipped sum, in units of the clip
    clipped_count_stddev: float  # σ_b of the unclipped count (adaptive; 0 for fixed)
    secure: bool  # noise added by the clients in shares (secure aggregation)
    min_clients: int  # with secure: the fewest shares the accounting assumes

    def event(self, rounds: int) -> dp_accounting.DpEvent:
        return gaussian_event(self.noise_multiplier,
                              sampling_probability=self.sampling_probability, count=int(rounds))


def client_plan(dp: DPConfig, total_clients: int, clients_per_round: int, *,
                secure: bool = False, surviving: int | None = None) -> ClientPlan:
    """The DP-FedAvg plan of a federation of ``total_clients`` sampling
    ``clients_per_round`` per round; ``secure``: the noise is added by the clients in shares
    under secure aggregation (:func:`horizontal.dp.fedavg.distributed_noise_multiplier`),
    and the accounting assumes the fewest shares that can reach a released sum: the larger
    of ``dp.min_clients`` and ``surviving`` (secure aggregation's threshold ``t``, below
    which it unmasks nothing); all of them if neither is given."""
    n, m = int(total_clients), int(clients_per_round)
    if not 1 <= m <= n:
        raise DPConfigError(f"client-level DP needs 1 <= clients per round ({m}) <= clients ({n})")
    sigma = float(dp.noise_multiplier)
    sigma_b = 0.0
    value = sigma
    if dp.clip == "adaptive":
        sigma_b = m / 20.0 if dp.clipped_count_stddev is None else float(dp.clipped_count_stddev)
        try:
            value = adaptive_clipping_value_noise(sigma, sigma_b)
        except DPConfigError as exc:
            raise DPConfigError(
                f"{exc} (client-level adaptive clipping with {m} clients per round: set "
                "dp.clipped_count_stddev above noise_multiplier / 2, or use clip='fixed')"
            ) from None
    # Adaptive clipping: σ is the σ_z of the two releases together (value noise raised).
    charged = sigma
    floors = [int(v) for v in (dp.min_clients, surviving) if v is not None]
    k = min(max(floors), m) if floors else m
    if secure:
        charged = distributed_noise_multiplier(charged, m, k)
    return ClientPlan(n, m, m / n, charged, value, sigma_b, bool(secure), k)


def secure_min_survivors(config, clients_per_round: int) -> int | None:
    """Secure aggregation's threshold ``t`` for a cohort of ``clients_per_round`` (the
    fewest inputs it ever unmasks), or None without secure aggregation or for a cohort it
    cannot serve (setup refuses that one)."""
    sa = getattr(config, "secure_aggregation", None)
    if sa is None:
        return None
    try:
        return int(sa.parameters(int(clients_per_round)).t)
    except Exception:  # infeasible cohort: refused with a clear error at setup
        return None


def distributed_noise_multiplier(noise_multiplier: float, expected_clients: int,
                                 surviving_clients: int) -> float:
    """``σ · sqrt(k / m)``: the noise multiplier of a sum of ``k`` of the ``m`` shares
    ``N(0, σ²C²/m)`` (what the accountant must be charged with if only ``k`` arrive;
    :mod:`horizontal.dp.fedavg`)."""
    m, k = int(expected_clients), int(surviving_clients)
    if not 1 <= k <= m:
        raise DPConfigError(f"surviving clients must be in [1, {m}], got {k}")
    return float(noise_multiplier) * math.sqrt(k / m)


# -- the ledger -------------------------------------------------------------------------------
class PrivacyLedger:
    """The trainer's privacy account (see the module docstring). Pure bookkeeping on public
    numbers: it never sees data."""

    def __init__(self, dp: DPConfig):
        self.dp = dp
        # Without a budget the guard only accounts (``charge``); its epsilon is never used.
        budget = PrivacyBudget(dp.epsilon if dp.has_budget else sys.float_info.max, dp.delta)
        self._budget = budget
        self.guards: dict[str, BudgetGuard] = {}
        self.plans: dict[str, RecordPlan | ClientPlan] = {}
        self.states: dict[str, GuardState] = {}

    # -- plans --
    def _guard(self, plan) -> BudgetGuard:
        fixed = isinstance(plan, RecordPlan) and plan.sampling == "fixed"
        return BudgetGuard(self._budget, self.dp.accountant,
                           dataset_size=plan.n_train if fixed else None)

    def planned_epsilons(self, plans: dict, rounds: int) -> dict[str, float]:
        """``{party: planned epsilon}`` of ``rounds`` rounds each (conservative: every
        hospital in every round)."""
        out = {}
        for name, plan in plans.items():
            out[name] = self._guard(plan).planned_epsilon(
                steps=self._steps(plan) * int(rounds),
                sampling_probability=plan.sampling_probability,
                noise_multiplier=plan.noise_multiplier)
        return out

    def check_plans(self, plans: dict, rounds: int) -> dict[str, float]:
        """The planned epsilons, or :class:`~horizontal.dp.errors.PlannedBudgetExceededError`
        (naming the party) if any exceeds the budget. Public numbers only: call it before
        any data is used."""
        with quiet_accountant():  # the RDP accountant's notes on the orders it drops
            return self._check_plans(plans, rounds)

    def _check_plans(self, plans: dict, rounds: int) -> dict[str, float]:
        if not self.dp.has_budget:
            return self.planned_epsilons(plans, rounds)
        out = {}
        for name, plan in sorted(plans.items()):
            try:
                out[name] = self._guard(plan).check_plan(
                    steps=self._steps(plan) * int(rounds),
                    sampling_probability=plan.sampling_probability,
                    noise_multiplier=plan.noise_multiplier)
            except PlannedBudgetExceededError as exc:
                raise PlannedBudgetExceededError(
                    f"{name}: {exc}", planned_epsilon=exc.planned_epsilon,
                    budget_epsilon=exc.budget_epsilon) from None
        return out

    def start(self, plans: dict, rounds: int) -> dict[str, float]:
        """Check the plans (:meth:`check_plans`) and open one account per party."""
        planned = self.check_plans(plans, rounds)
        self.plans = dict(plans)
        self.guards = {n: self._guard(p) for n, p in plans.items()}
        self.states = {n: self.states.get(n, GuardState()) for n in plans}
        return planned

    @staticmethod
    def _steps(plan) -> int:
        return plan.steps_per_round if isinstance(plan, RecordPlan) else 1

    # -- rounds --
    def precheck(self, names) -> dict[str, GuardState]:
        """Every listed party's state after one more round, computed *before* the round;
        :class:`~horizontal.dp.errors.BudgetExhaustedError` if any would exceed the budget
        (nothing is charged then)."""
        with quiet_accountant():
            return self._precheck(names)

    def _precheck(self, names) -> dict[str, GuardState]:
        out = {}
        for name in sorted(names):
            plan, guard = self.plans[name], self.guards[name]
            step = guard.update if self.dp.has_budget else guard.charge
            try:
                out[name] = step(self.states[name], steps=self._steps(plan),
                                 sampling_probability=plan.sampling_probability,
                                 noise_multiplier=plan.noise_multiplier)
            except BudgetExhaustedError as exc:
                raise BudgetExhaustedError(
                    f"{name}: {exc}", spent_epsilon=exc.spent_epsilon,
                    next_epsilon=exc.next_epsilon, budget_epsilon=exc.budget_epsilon,
                    rounds=exc.rounds) from None
        return out

    def commit(self, tentative: dict[str, GuardState], names) -> None:
        """Keep the charges of ``names`` (those that released something this round)."""
        for name in names:
            self.states[name] = tentative[name]

    # -- reports --
    def spent(self) -> dict:
        """``{"level", "epsilon", "delta", "accountant", "per_party"}``: epsilon spent per
        hospital (record level) or by the federation (client level); ``epsilon`` is the
        largest (each patient is at one hospital)."""
        per = {n: float(s.epsilon) for n, s in sorted(self.states.items())}
        return {"level": self.dp.level, "epsilon": max(per.values(), default=0.0),
                "delta": self.dp.delta, "accountant": self.dp.accountant,
                "budget": self.dp.epsilon, "per_party": per,
                "steps": {n: s.steps for n, s in sorted(self.states.items())}}

    def to_tree(self) -> dict:
        """The ledger as ``{party: (k, 3) float64 array of (q, σ, count)}`` (checkpoints)."""
        return {n: np.asarray(s.ledger, np.float64).reshape(-1, 3)
                for n, s in self.states.items()}

    def restore(self, tree: dict | None) -> None:
        """Rebuild the accounts from :meth:`to_tree` (a resumed run continues its spending)."""
        tree = tree or {}
        for name in self.plans:
            rows = np.asarray(tree.get(name, np.zeros((0, 3))), np.float64).reshape(-1, 3)
            state = GuardState()
            for q, s, c in rows:  # re-charging the entries rebuilds the same ledger
                state = self.guards[name].charge(state, sampling_probability=float(q),
                                                 noise_multiplier=float(s), steps=int(c))
            self.states[name] = state
