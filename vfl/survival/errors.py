"""Exceptions of the survival (Cox proportional hazards) code.

They extend the framework's families in :mod:`vfl.core.errors`, so a caller that already
catches :class:`~vfl.core.errors.LabelValueError` (bad labels) or
:class:`~vfl.core.errors.ConfigError` (bad settings or design) catches these too. Every
message says what the user should do.
"""

from __future__ import annotations

from vfl.core.errors import ConfigError, LabelValueError, VFLError


# --- labels: (n, 2) [time, event] -------------------------------------------------------------
class SurvivalLabelError(LabelValueError):
    """Survival labels (follow-up time, event indicator) are not usable as given."""


class SurvivalLabelShapeError(SurvivalLabelError):
    """Labels are not an (n, 2) [time, event] array nor a two-field structured array."""


class NonFiniteTimeError(SurvivalLabelError):
    """A follow-up time is NaN or infinite."""


class NegativeTimeError(SurvivalLabelError):
    """A follow-up time is negative."""


class MissingEventError(SurvivalLabelError):
    """An event indicator is missing (NaN) or not 0/1."""


class NoEventsError(SurvivalLabelError):
    """No row has an observed event: the partial likelihood has no terms."""


# --- design and fit ---------------------------------------------------------------------------
class CollinearFeaturesError(ConfigError):
    """Feature columns are linearly dependent (a constant column included): the Cox
    coefficients are not identifiable."""


class CoxConvergenceError(VFLError):
    """Newton's method did not reach the maximum partial likelihood (e.g. separation: a
    coefficient grows without bound)."""


class NonFiniteRiskScoreError(VFLError, ValueError):
    """A linear predictor / risk score (``eta``) holds NaN or infinite values."""


# --- metrics ----------------------------------------------------------------------------------
class BrierTimesError(ConfigError):
    """The time grid of a Brier score is outside the range where the score is defined."""


class CensoringSupportError(ConfigError):
    """Test rows are followed beyond the training data's censoring distribution, so their
    inverse-probability-of-censoring weights do not exist."""
