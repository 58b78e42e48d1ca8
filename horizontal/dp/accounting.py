"""Privacy accounting: what a DP-SGD or DP-FedAvg run spends, and a guard that keeps it
within a budget.

Every number here comes from Google's ``dp_accounting`` library; this module only builds
the *events* that describe what a run actually does and asks the accountants about them.
An event is a small tree (``dp_accounting.DpEvent``):

* **DP-SGD with Poisson sampling** (Abadi et al. 2016, "Deep Learning with Differential
  Privacy", arXiv:1607.00133): every step includes each row independently with
  probability ``q`` and releases the sum of the per-example gradients, each clipped to L2
  norm ``C``, plus ``N(0, (σC)^2)`` noise. One step is
  ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))``; ``T`` steps are
  ``SelfComposedDpEvent(step, T)`` (:func:`gaussian_event`, :func:`dpsgd_event`). The
  neighbouring relation is add/remove-one (the default of both accountants).
* **DP-SGD with fixed-size batches**: every step draws exactly ``B`` of the ``n`` rows
  uniformly without replacement, ``SampledWithoutReplacementDpEvent(n, B, Gaussian(σ))``
  (:func:`fixed_size_gaussian_event`). ``dp_accounting`` accounts for this event only with
  the RDP accountant and only under the *replace-one* relation (Wang, Balle and
  Kasiviswanathan 2019, "Subsampled Rényi Differential Privacy and Analytical Moments
  Accountant"), so its epsilon is not comparable with an add/remove-one epsilon (it is
  roughly the add/remove epsilon at twice the sensitivity). The PLD accountant refuses it
  (:class:`~horizontal.dp.errors.AccountingError`).
* **DP-FedAvg, client-level** (McMahan et al. 2018, "Learning Differentially Private
  Recurrent Language Models", arXiv:1710.06963): a round samples clients with probability
  ``q = clients per round / total clients``, clips each client's whole update to ``C`` and
  releases the noisy sum, so a round is the same sampled Gaussian with clients in place of
  rows (:func:`dp_fedavg_event`). With every client in every round (``q = 1``, the usual
  hospital federation) there is no amplification: ``R`` rounds are ``R`` Gaussian
  mechanisms, i.e. one Gaussian with noise multiplier ``σ/√R``. The project's trainer
  samples a *fixed number* of clients per round; accounting for that as Poisson with the
  same ``q`` is the standard approximation of McMahan et al. and TensorFlow Federated;
  ``sampling="fixed"`` gives the exact without-replacement event (RDP, replace-one).

Two accountants, both upper bounds on the true epsilon:

* ``"rdp"``: :class:`dp_accounting.rdp.RdpAccountant`, Rényi DP of the subsampled Gaussian
  (Mironov 2017; Mironov, Talwar and Zhang 2019) converted to (ε, δ) with the improved
  conversion of Canonne, Kamath and Steinke 2020. Fast (RDP composes by addition), and
  slightly loose.
* ``"pld"``: :class:`dp_accounting.pld.PLDAccountant`, privacy loss distributions composed
  by FFT (Meiser and Mohammadi 2018; Koskela et al. 2020; Doroshenko et al. 2022), with a
  pessimistic discretization so it stays an upper bound. Tighter, and slower.

For the published MNIST DP-SGD setting (``q = 256/60000``, ``σ = 1.1``, 60 epochs, δ =
1e-5) the RDP accountant gives ε ≈ 2.60 and the PLD accountant ε ≈ 2.38;
``tests/test_dp.py`` recomputes both.

**Budget guard.** :class:`BudgetGuard` holds a :class:`PrivacyBudget` ``(ε, δ)``. Given the
planned run (steps, ``q``, ``σ``, all public), :meth:`BudgetGuard.check_plan` refuses to
start a run whose planned epsilon exceeds the budget, before any data is used, and says
which σ, how many steps or which ``q`` would fit. Driven round by round (optax style:
``state = guard.init()``, then ``state = guard.update(state, ...)`` *before* each round's
noisy result is released) it raises :class:`~horizontal.dp.errors.BudgetExhaustedError` as
soon as the next round would exceed the budget, leaving the state as it was: the model
released after the last charged round is within budget. Rounds may differ (σ or ``q`` may
change between rounds); the state is a ledger of ``(q, σ, count)`` entries composed
exactly. ``BudgetGuard(..., dataset_size=n)`` charges fixed-size batches of ``round(q·n)``
of ``n`` records instead of Poisson steps; :meth:`BudgetGuard.charge` is ``update``
without the check (accounting without a budget). The trainer's account of a run is
:class:`horizontal.dp.ledger.PrivacyLedger`, one guard state per hospital.

**Adaptive clipping.** Andrew et al. 2021 ("Differentially Private Learning with Adaptive
Clipping", arXiv:1905.03871, Section 3.1) release two Gaussian queries per round: the
clipped update sum (sensitivity ``C``, noise ``σ_Δ C``) and the count of unclipped
clients, shifted by −0.5 so its sensitivity is 0.5, with noise ``σ_b``. Releasing both is
equivalent to one Gaussian mechanism with noise multiplier ``σ_z`` where
``σ_z^{-2} = σ_Δ^{-2} + (2σ_b)^{-2}`` (scale each coordinate to unit noise and add the
squared sensitivities). So to keep the accountant's ``σ_z``, the value noise is raised to
``σ_Δ = (σ_z^{-2} − (2σ_b)^{-2})^{-1/2}`` (:func:`adaptive_clipping_value_noise`), which
requires ``2σ_b > σ_z``; the accountant is then charged with ``σ_z``
(:func:`adaptive_clipping_noise_multiplier` is the inverse). TensorFlow Federated's
``DifferentiallyPrivateFactory.gaussian_adaptive`` does the same split.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import dp_accounting
from dp_accounting import pld, rdp

from horizontal.dp.errors import (
    AccountingError,
    BudgetExhaustedError,
    DPConfigError,
    PlannedBudgetExceededError,
)

Accountant = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "pld")
Sampling = Literal["poisson", "fixed"]


# -- validation -------------------------------------------------------------------------------
def _probability(q: float, what: str = "sampling probability q") -> float:
    q = float(q)
    if not (0.0 < q <= 1.0):
        raise DPConfigError(f"the {what} must be in (0, 1], got {q}")
    return q


def _noise(sigma: float) -> float:
    sigma = float(sigma)
    if not (sigma >= 0.0) or math.isinf(sigma):
        raise DPConfigError(f"the noise multiplier must be finite and >= 0, got {sigma}")
    return sigma


def _count(count: int, what: str) -> int:
    if isinstance(count, bool) or int(count) != count or count < 0:
        raise DPConfigError(f"the number of {what} must be an integer >= 0, got {count!r}")
    return int(count)


def _delta(delta: float) -> float:
    delta = float(delta)
    if not (0.0 < delta < 1.0):
        raise DPConfigError(f"delta must be in (0, 1), got {delta}")
    return delta


# -- events -----------------------------------------------------------------------------------
def gaussian_event(noise_multiplier: float, *, sampling_probability: float = 1.0,
                   count: int = 1) -> dp_accounting.DpEvent:
    """``count`` compositions of the Poisson-sampled Gaussian mechanism.

    ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), count)``; with
    ``q = 1`` (nothing sampled out) the plain ``GaussianDpEvent(σ)`` is composed instead.
    ``σ`` is the noise standard deviation divided by the L2 sensitivity (the clip norm).
    """
    q = _probability(sampling_probability)
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(_noise(noise_multiplier))
    if q < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    count = _count(count, "steps")
    return event if count == 1 else dp_accounting.SelfComposedDpEvent(event, count)


def fixed_size_gaussian_event(noise_multiplier: float, *, dataset_size: int,
                              sample_size: int, count: int = 1) -> dp_accounting.DpEvent:
    """``count`` steps that each draw exactly ``sample_size`` of ``dataset_size`` records
    uniformly without replacement and release a Gaussian sum (RDP accountant, replace-one
    relation only; see the module docstring)."""
    n, b = _count(dataset_size, "records"), _count(sample_size, "sampled records")
    if not 0 < b <= n:
        raise DPConfigError(f"the sample size must be in [1, dataset size {n}], got {b}")
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(_noise(noise_multiplier))
    if b < n:
        event = dp_accounting.SampledWithoutReplacementDpEvent(n, b, event)
    count = _count(count, "steps")
    return event if count == 1 else dp_accounting.SelfComposedDpEvent(event, count)


def dpsgd_event(*, noise_multiplier: float, steps: int, dataset_size: int, batch_size: int,
                sampling: Sampling = "poisson") -> dp_accounting.DpEvent:
    """Record-level DP-SGD over ``steps`` steps.

    ``sampling="poisson"``: ``batch_size`` is the *expected* batch size, ``q = batch_size /
    dataset_size``. ``sampling="fixed"``: every batch has exactly ``batch_size`` rows.
    """
    if sampling == "poisson":
        q = _count(batch_size, "rows per batch") / max(_count(dataset_size, "records"), 1)
        return gaussian_event(noise_multiplier, sampling_probability=q, count=steps)
    if sampling == "fixed":
        return fixed_size_gaussian_event(noise_multiplier, dataset_size=dataset_size,
                                         sample_size=batch_size, count=steps)
    raise DPConfigError(f"sampling must be 'poisson' or 'fixed', got {sampling!r}")


def dp_fedavg_event(*, noise_multiplier: float, rounds: int, clients_per_round: int,
                    total_clients: int, sampling: Sampling = "poisson") -> dp_accounting.DpEvent:
    """Client-level DP-FedAvg over ``rounds`` rounds: each client's whole update is one
    record, sampled with ``q = clients_per_round / total_clients`` (McMahan et al. 2018).
    With adaptive clipping pass the *effective* ``σ_z``, not the value noise ``σ_Δ``."""
    return dpsgd_event(noise_multiplier=noise_multiplier, steps=rounds,
                       dataset_size=total_clients, batch_size=clients_per_round,
                       sampling=sampling)


# -- accountants ------------------------------------------------------------------------------
def _samples_without_replacement(event: dp_accounting.DpEvent) -> bool:
    if isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent):
        return True
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return _samples_without_replacement(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return any(_samples_without_replacement(e) for e in event.events)
    sampled = dp_accounting.PoissonSampledDpEvent | dp_accounting.SampledWithReplacementDpEvent
    if isinstance(event, sampled):
        return _samples_without_replacement(event.event)
    return False


def make_accountant(accountant: Accountant = "rdp", *,
                    replace_one: bool = False) -> dp_accounting.PrivacyAccountant:
    """A fresh ``dp_accounting`` accountant: ``"rdp"`` (default orders) or ``"pld"``
    (value discretization 1e-4, pessimistic)."""
    relation = (dp_accounting.NeighboringRelation.REPLACE_ONE if replace_one
                else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    if accountant == "rdp":
        return rdp.RdpAccountant(neighboring_relation=relation)
    if accountant == "pld":
        return pld.PLDAccountant(neighboring_relation=relation)
    raise DPConfigError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def epsilon(event: dp_accounting.DpEvent, delta: float, accountant: Accountant = "rdp") -> float:
    """The epsilon ``event`` spends at ``delta`` according to ``accountant``.

    Events with sampling without replacement are accounted under the replace-one relation
    (the only one ``dp_accounting`` supports for them), all others under add/remove-one.
    ``inf`` when the noise is zero.
    """
    delta = _delta(delta)
    try:  # an RDP curve costs about 0.3 s; plans and guards ask for the same events again
        return _epsilon_cached(event, delta, accountant)
    except TypeError:  # an event that cannot be hashed
        return _epsilon(event, delta, accountant)


@functools.lru_cache(maxsize=1024)
def _epsilon_cached(event: dp_accounting.DpEvent, delta: float, accountant: Accountant) -> float:
    return _epsilon(event, delta, accountant)


def _epsilon(event: dp_accounting.DpEvent, delta: float, accountant: Accountant) -> float:
    replace_one = _samples_without_replacement(event)
    acc = make_accountant(accountant, replace_one=replace_one)
    if not acc.supports(event):
        raise AccountingError(
            f"the {accountant!r} accountant cannot account for {type(event).__name__}"
            + (" with fixed-size sampling; use accountant='rdp' (replace-one relation) or "
               "Poisson sampling" if replace_one else "")
        )
    try:
        acc.compose(event)
    except ZeroDivisionError:  # dp_accounting divides by σ for fixed-size sampling: σ = 0
        return math.inf
    return float(acc.get_epsilon(delta))


def epsilons(event: dp_accounting.DpEvent, delta: float) -> dict[str, float]:
    """``{accountant: epsilon}`` for every accountant that supports ``event``."""
    out = {}
    for name in ACCOUNTANTS:
        try:
            out[name] = epsilon(event, delta, name)
        except AccountingError:
            continue
    return out


# -- adaptive clipping: the noise split -------------------------------------------------------
def adaptive_clipping_value_noise(noise_multiplier: float, clipped_count_stddev: float) -> float:
    """``σ_Δ = (σ_z^{-2} − (2σ_b)^{-2})^{-1/2}``: the noise multiplier of the clipped update
    sum when the unclipped count is released with noise ``σ_b`` and the whole round must
    cost what one Gaussian of multiplier ``σ_z`` costs (Andrew et al. 2021, Section 3.1).

    Needs ``2σ_b > σ_z``: the count alone must be noisier than the whole budget allows
    (Andrew et al. suggest ``σ_b = clients per round / 20``, so with few clients per round a
    large ``σ_z`` cannot be split, and :class:`~horizontal.dp.errors.DPConfigError` says so).
    """
    sigma_z, sigma_b = _noise(noise_multiplier), float(clipped_count_stddev)
    if sigma_z == 0.0:
        return 0.0
    if not (2.0 * sigma_b > sigma_z):
        raise DPConfigError(
            f"adaptive clipping cannot keep noise multiplier {sigma_z}: the count noise "
            f"stddev {sigma_b} must exceed noise_multiplier / 2 = {sigma_z / 2}; raise "
            "clipped_count_stddev (more clients per round) or lower the noise multiplier"
        )
    return (sigma_z ** -2 - (2.0 * sigma_b) ** -2) ** -0.5


def adaptive_clipping_noise_multiplier(value_noise_multiplier: float,
                                       clipped_count_stddev: float) -> float:
    """The effective ``σ_z = (σ_Δ^{-2} + (2σ_b)^{-2})^{-1/2}`` of one adaptive-clipping round
    (the noise multiplier the accountant is charged with); the inverse of
    :func:`adaptive_clipping_value_noise`."""
    sigma_d, sigma_b = _noise(value_noise_multiplier), float(clipped_count_stddev)
    if sigma_d == 0.0 or sigma_b <= 0.0:
        return 0.0  # either release is noiseless: no privacy
    return (sigma_d ** -2 + (2.0 * sigma_b) ** -2) ** -0.5


# -- budget and guard -------------------------------------------------------------------------
@dataclass(frozen=True)
class PrivacyBudget:
    """An (ε, δ) differential-privacy budget."""

    epsilon: float
    delta: float

    def __post_init__(self):
        eps = float(self.epsilon)
        if not (eps > 0.0) or math.isinf(eps):
            raise DPConfigError(f"the privacy budget epsilon must be finite and > 0, got {eps}")
        object.__setattr__(self, "epsilon", eps)
        object.__setattr__(self, "delta", _delta(self.delta))


@dataclass(frozen=True)
class GuardState:
    """What a run has spent: a ledger of ``(q, σ, count)`` entries (consecutive equal
    charges merged) and the epsilon of their composition at the budget's delta."""

    ledger: tuple[tuple[float, float, int], ...] = ()
    epsilon: float = 0.0

    @property
    def steps(self) -> int:
        """How many steps (or rounds) have been charged."""
        return sum(c for _, _, c in self.ledger)


class BudgetGuard:
    """Refuses to start a run whose plan exceeds ``budget`` and, driven round by round,
    refuses to continue past it. Pure: the state is passed explicitly (``init``/``update``).

    ``accountant`` is ``"rdp"`` (default: fast and conservative) or ``"pld"`` (tighter).
    The suggestions in a refusal (σ, steps, ``q`` that would fit) are computed with the RDP
    accountant, so they also fit under PLD.
    """

    def __init__(self, budget: PrivacyBudget, accountant: Accountant = "rdp", *,
                 dataset_size: int | None = None):
        if accountant not in ACCOUNTANTS:
            raise DPConfigError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        self.budget = budget
        self.accountant = accountant
        # ``dataset_size``: the steps draw fixed-size batches of ``round(q · n)`` of these
        # ``n`` records (sampling without replacement, RDP, replace-one) instead of Poisson.
        self.dataset_size = None if dataset_size is None else _count(dataset_size, "records")

    def _event(self, q: float, sigma: float, count: int) -> dp_accounting.DpEvent:
        if self.dataset_size is None:
            return gaussian_event(sigma, sampling_probability=q, count=count)
        n = self.dataset_size
        return fixed_size_gaussian_event(sigma, dataset_size=n, count=count,
                                         sample_size=min(n, max(1, round(q * n))))

    # -- before the run --
    def planned_epsilon(self, *, steps: int, sampling_probability: float,
                        noise_multiplier: float) -> float:
        """The epsilon a run of ``steps`` sampled Gaussian steps would spend."""
        event = self._event(_probability(sampling_probability), _noise(noise_multiplier),
                            _count(steps, "steps"))
        return epsilon(event, self.budget.delta, self.accountant)

    def check_plan(self, *, steps: int, sampling_probability: float,
                   noise_multiplier: float) -> float:
        """The planned epsilon, or :class:`PlannedBudgetExceededError` if it exceeds the
        budget. Uses only the public plan: call it before touching any data."""
        eps = self.planned_epsilon(steps=steps, sampling_probability=sampling_probability,
                                   noise_multiplier=noise_multiplier)
        if eps <= self.budget.epsilon:
            return eps
        b = self.budget
        hints = (_fitting_plans(b, steps, float(sampling_probability), float(noise_multiplier))
                 if self.dataset_size is None else
                 "raise the noise multiplier σ, plan fewer rounds, or use smaller batches")
        raise PlannedBudgetExceededError(
            f"refusing to start: {steps} steps at sampling probability q={sampling_probability:g} "
            f"with noise multiplier σ={noise_multiplier:g} spend ε={eps:.3f} ({self.accountant}) "
            f"> budget ε={b.epsilon:g} at δ={b.delta:g}. To fit: {hints}",
            planned_epsilon=eps, budget_epsilon=b.epsilon,
        )

    def init(self) -> GuardState:
        """Nothing spent yet."""
        return GuardState()

    def start(self, *, steps: int, sampling_probability: float,
              noise_multiplier: float) -> GuardState:
        """:meth:`check_plan`, then :meth:`init`."""
        self.check_plan(steps=steps, sampling_probability=sampling_probability,
                        noise_multiplier=noise_multiplier)
        return self.init()

    # -- during the run --
    def charge(self, state: GuardState, *, sampling_probability: float,
               noise_multiplier: float, steps: int = 1) -> GuardState:
        """The state after ``steps`` more sampled Gaussian steps, whatever the budget says
        (what :meth:`update` checks; accounting without a guard)."""
        q, s = _probability(sampling_probability), _noise(noise_multiplier)
        steps = _count(steps, "steps")
        ledger = list(state.ledger)
        if ledger and ledger[-1][:2] == (q, s):
            ledger[-1] = (q, s, ledger[-1][2] + steps)
        else:
            ledger.append((q, s, steps))
        return GuardState(ledger=tuple(ledger), epsilon=self._ledger_epsilon(ledger))

    def update(self, state: GuardState, *, sampling_probability: float,
               noise_multiplier: float, steps: int = 1) -> GuardState:
        """Charge ``steps`` more sampled Gaussian steps (a round, or a round's local steps)
        *before* their result is released. Returns the new state, or raises
        :class:`BudgetExhaustedError` (state unchanged) if the budget would be exceeded."""
        new = self.charge(state, sampling_probability=sampling_probability,
                          noise_multiplier=noise_multiplier, steps=steps)
        eps = new.epsilon
        if eps > self.budget.epsilon:
            b = self.budget
            raise BudgetExhaustedError(
                f"privacy budget exhausted: charging {steps} more step(s) after {state.steps} "
                f"would spend ε={eps:.3f} ({self.accountant}) > budget ε={b.epsilon:g} at "
                f"δ={b.delta:g}; stop here and release the model of the last charged round "
                f"(ε={state.epsilon:.3f} spent). To train further in a new run: raise the "
                "noise multiplier σ, plan fewer rounds, or sample fewer (lower q)",
                spent_epsilon=state.epsilon, next_epsilon=eps, budget_epsilon=b.epsilon,
                rounds=state.steps,
            )
        return new

    def _ledger_epsilon(self, ledger) -> float:
        events = [self._event(q, s, c) for q, s, c in ledger if c]
        if not events:
            return 0.0
        event = events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)
        return epsilon(event, self.budget.delta, self.accountant)


def _calibrate(make_event: Callable, budget: PrivacyBudget, bracket, *, discrete: bool = False,
               tol: float | None = None):
    try:
        return dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant("rdp"), make_event, budget.epsilon, budget.delta,
            bracket_interval=bracket, discrete=discrete, tol=tol,
        )
    except Exception:  # a hint that cannot be computed is left out; it is never fatal
        return None


@contextlib.contextmanager
def quiet_accountant():
    """The RDP accountant logs (through absl) a warning for every Rényi order it drops
    while a plan is checked or a hint searched; those are expected and say nothing to the
    user, so callers silence them here."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fitting_plans(budget: PrivacyBudget, steps: int, q: float, sigma: float) -> str:
    """Which single change of the plan would fit the budget (RDP, conservative)."""
    with quiet_accountant():
        return _fitting_plans_impl(budget, steps, q, sigma)


def _fitting_plans_impl(budget: PrivacyBudget, steps: int, q: float, sigma: float) -> str:
    hints = []
    s_fit = _calibrate(
        lambda s: gaussian_event(s, sampling_probability=q, count=steps), budget,
        dp_accounting.LowerEndpointAndGuess(max(sigma, 1e-3), max(2 * sigma, 1.0)), tol=1e-3,
    )
    if s_fit is not None:
        hints.append(f"raise the noise multiplier to σ ≥ {math.ceil(s_fit * 1000) / 1000:g}")
    if steps > 1:
        one = epsilon(gaussian_event(sigma, sampling_probability=q), budget.delta, "rdp")
        t_fit = 0 if one > budget.epsilon else _calibrate(
            lambda t: gaussian_event(sigma, sampling_probability=q, count=max(int(t), 1)),
            budget, dp_accounting.ExplicitBracketInterval(1, steps), discrete=True,
        )
        if t_fit:  # None: not computable; 0: not even one step fits at this σ and q
            hints.append(f"lower the number of steps/rounds to at most {int(t_fit)}")
    q_fit = _calibrate(
        lambda p: gaussian_event(sigma, sampling_probability=min(max(p, 1e-12), 1.0),
                                 count=steps),
        budget, dp_accounting.ExplicitBracketInterval(1e-12, q), tol=q * 1e-3,
    )
    if q_fit is not None and q_fit > 1e-9:
        unit = 10.0 ** (math.floor(math.log10(q_fit)) - 3)  # 4 significant digits, rounded down
        q_show = math.floor(q_fit / unit) * unit
        hints.append(f"sample fewer: sampling probability q ≤ {q_show:.4g}")
    return "; or ".join(hints) if hints else "raise σ, lower the rounds, or sample fewer"
