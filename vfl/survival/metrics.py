"""Discrimination and calibration of survival predictions, via scikit-survival.

* :func:`c_index`: Harrell's concordance index (``concordance_index_censored``): the
  fraction of comparable pairs whose risk scores are ordered like their event times.
* :func:`integrated_brier`: the integrated Brier score (``integrated_brier_score``), with
  inverse-probability-of-censoring weights estimated on the training rows. It is defined
  only on a grid of times strictly inside the test follow-up and where the training
  censoring distribution is positive; :func:`brier_times` picks such a grid.
"""

from __future__ import annotations

import numpy as np

from vfl.core.errors import PayloadShapeError
from vfl.survival.errors import BrierTimesError, CensoringSupportError, NonFiniteRiskScoreError
from vfl.survival.labels import as_structured, survival_arrays


def c_index(time, event, risk_score) -> float:
    """Harrell's C: higher ``risk_score`` should mean an earlier event (for a Cox model the
    linear predictor ``eta``)."""
    from sksurv.metrics import concordance_index_censored

    time, event = survival_arrays(time, event)
    risk_score = np.asarray(risk_score, dtype=np.float64).reshape(-1)
    if risk_score.shape != time.shape:
        raise PayloadShapeError(
            f"{len(risk_score)} risk scores for {len(time)} patients; give one per patient"
        )
    if not np.isfinite(risk_score).all():
        raise NonFiniteRiskScoreError(
            f"{int((~np.isfinite(risk_score)).sum())} risk scores are NaN or infinite; the "
            "C-index needs a finite score per patient"
        )
    return float(concordance_index_censored(event, time, risk_score)[0])


def brier_times(train_time, test_time, n: int = 50) -> np.ndarray:
    """``n`` equally spaced times where the integrated Brier score is defined, or an empty
    array when there are none.

    The grid lies strictly inside ``(min test time, min(max test time, max train time))``:
    scikit-survival needs every time inside the test follow-up, and the training
    Kaplan-Meier estimate of the censoring distribution is positive before the last
    training time (it can drop to 0 only there), so the weights ``1 / G(t)`` exist.
    """
    if isinstance(n, bool) or not (isinstance(n, int | np.integer) and n >= 2):
        raise BrierTimesError(f"n must be an integer >= 2 (the score integrates), got {n!r}")
    train_time = np.asarray(train_time, dtype=np.float64).reshape(-1)
    test_time = np.asarray(test_time, dtype=np.float64).reshape(-1)
    if len(train_time) == 0 or len(test_time) == 0:
        return np.empty(0)
    low = float(test_time.min())
    high = min(float(test_time.max()), float(train_time.max()))
    if not high > low:
        return np.empty(0)
    grid = np.linspace(low, high, n + 2)[1:-1]
    grid = grid[(grid > low) & (grid < high)]  # rounding at tiny ranges
    return np.unique(grid) if len(np.unique(grid)) >= 2 else np.empty(0)


def integrated_brier(train_time, train_event, test_time, test_event, survival,
                     times) -> float | None:
    """The integrated Brier score of predicted survival probabilities on test rows.

    ``survival`` is ``(n_test, len(times))``: each test patient's predicted probability of
    being event-free at each of ``times`` (ascending). Lower is better; 0.25 is what a
    constant 0.5 prediction scores.

    Returns None when ``times`` is empty, which is what :func:`brier_times` returns when no
    valid grid exists (test follow-up of zero length, or no overlap with the training
    follow-up): the score is then undefined, not zero, and a report should say so rather
    than print a number. Times outside the valid range raise :class:`BrierTimesError`; test
    rows followed beyond the last training time, when an event happened at that time (the
    censoring distribution is then unknown beyond it), raise :class:`CensoringSupportError`.
    """
    from sksurv.metrics import integrated_brier_score

    train_time, train_event = survival_arrays(train_time, train_event)
    test_time, test_event = survival_arrays(test_time, test_event)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if len(times) == 0:
        return None
    survival = np.asarray(survival, dtype=np.float64)
    if survival.shape != (len(test_time), len(times)):
        raise PayloadShapeError(
            f"survival must be (test patients, times) = ({len(test_time)}, {len(times)}); "
            f"got {survival.shape}"
        )
    if not np.isfinite(survival).all():
        raise NonFiniteRiskScoreError("survival probabilities have NaN or infinite values")
    if len(times) < 2 or not (np.diff(times) > 0).all():
        raise BrierTimesError(
            f"times must be at least two strictly increasing values (got {len(times)}); the "
            "score integrates over them. Use brier_times(train_time, test_time)."
        )
    low, high = float(test_time.min()), float(test_time.max())
    if times[0] < low or times[-1] >= high:
        raise BrierTimesError(
            f"times span [{times[0]:g}, {times[-1]:g}] but must lie in the test follow-up "
            f"[{low:g}, {high:g}); pick them with brier_times(train_time, test_time)"
        )
    if train_event[train_time == train_time.max()].any() and high > train_time.max():
        raise CensoringSupportError(
            f"test patients are followed up to {high:g}, beyond the last training time "
            f"{float(train_time.max()):g}, at which an event happened: the training censoring "
            "distribution (the inverse-probability weights) is unknown there. Evaluate on "
            "test rows with time <= the last training time, or split so training covers them."
        )
    if times[-1] >= train_time.max():
        raise BrierTimesError(
            f"times reach {times[-1]:g}, not below the last training time "
            f"{float(train_time.max()):g}, where the censoring distribution can be 0; pick "
            "them with brier_times(train_time, test_time)"
        )
    train = as_structured(train_time, train_event)
    test = as_structured(test_time, test_event)
    return float(integrated_brier_score(train, test, survival, times))
