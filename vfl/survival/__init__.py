"""Survival analysis: Cox proportional hazards, centralized and vertical.

``fit_cox`` fits the pooled design (Newton, Breslow or Efron ties); ``VerticalCox`` fits
the same model over parties that hold different columns of the same patients, without
pooling rows (README, "Survival analysis"). Labels are ``(time, event)`` pairs at the
hospital (``survival_labels``).
"""

from vfl.survival.config import CoxConfig
from vfl.survival.cox import breslow_baseline, fit_cox, standard_errors, survival_function
from vfl.survival.errors import (
    CollinearFeaturesError,
    CoxConvergenceError,
    MissingEventError,
    NegativeTimeError,
    NoEventsError,
    SurvivalLabelError,
)
from vfl.survival.federated import Coefficient, VerticalCox, VerticalCoxFit
from vfl.survival.labels import survival_labels
from vfl.survival.metrics import c_index, integrated_brier

__all__ = [
    "Coefficient",
    "CollinearFeaturesError",
    "CoxConfig",
    "CoxConvergenceError",
    "MissingEventError",
    "NegativeTimeError",
    "NoEventsError",
    "SurvivalLabelError",
    "VerticalCox",
    "VerticalCoxFit",
    "breslow_baseline",
    "c_index",
    "fit_cox",
    "integrated_brier",
    "standard_errors",
    "survival_function",
    "survival_labels",
]
