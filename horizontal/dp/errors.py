"""Exceptions of the differential-privacy building blocks (:mod:`horizontal.dp`).

Each failure gets its own class and a message that says what to do about it. All derive
from :class:`horizontal.errors.HorizontalError`, hence from
:class:`vfl.core.errors.VFLError`, so callers can catch the whole family at once.

The two budget errors are raised at different moments on purpose:

* :class:`PlannedBudgetExceededError` is raised by
  :meth:`~horizontal.dp.accounting.BudgetGuard.check_plan` (and ``start``) from the *public*
  plan alone (steps, sampling probability, noise multiplier), before any data is touched:
  a run that cannot fit its budget is never started;
* :class:`BudgetExhaustedError` is raised by
  :meth:`~horizontal.dp.accounting.BudgetGuard.update` when the *next* charge (a round or a
  step) would push the spent epsilon past the budget. The guard's state is left as it was,
  so the model released after the last charged round is still within budget.
"""

from __future__ import annotations

from horizontal.errors import FedConfigError, HorizontalError


class DPError(HorizontalError):
    """Base class of the differential-privacy errors."""


class DPConfigError(DPError, FedConfigError):
    """A differential-privacy setting is invalid (a probability outside (0, 1], a negative
    noise multiplier, a delta outside (0, 1), a noise split that cannot be met, ...)."""


class AccountingError(DPError):
    """An accountant cannot account for the given event (e.g. fixed-size sampling, which
    ``dp_accounting`` supports only in the RDP accountant under the replace-one relation)."""


class PrivacyBudgetError(DPError):
    """Base class of the errors raised by the budget guard."""


class PlannedBudgetExceededError(PrivacyBudgetError):
    """The planned run would spend more than its privacy budget; it is refused before it
    starts (before any data is used)."""

    def __init__(self, message: str, *, planned_epsilon: float, budget_epsilon: float):
        super().__init__(message)
        self.planned_epsilon = planned_epsilon
        self.budget_epsilon = budget_epsilon


class BudgetExhaustedError(PrivacyBudgetError):
    """Driven round by round, the next round would exceed the budget; the run must stop."""

    def __init__(self, message: str, *, spent_epsilon: float, next_epsilon: float,
                 budget_epsilon: float, rounds: int):
        super().__init__(message)
        self.spent_epsilon = spent_epsilon
        self.next_epsilon = next_epsilon
        self.budget_epsilon = budget_epsilon
        self.rounds = rounds


class BatchCapacityError(DPError):
    """A Poisson-sampled batch drew more rows than the fixed capacity of the compiled step.
    Truncating it would change the mechanism the accountant assumes, so it is refused."""
