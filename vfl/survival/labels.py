"""Survival labels and a party's design check for a Cox model.

Survival labels travel through the framework as one float64 array of shape ``(n, 2)``:
column 0 is the follow-up time (any unit, >= 0), column 1 the event indicator (1 = the event
was observed at that time, 0 = the patient was censored then). One array (rather than two)
lets :class:`~vfl.core.table.PartyTable` carry them like any other label column, through
alignment, row selection and files (``label_name`` ``"time,event"`` names both columns).

:func:`survival_labels` is the single gate that turns such an array (or scikit-survival's
structured array) into a validated ``(time, event)`` pair; everything downstream assumes its
guarantees. :func:`check_features` is what a party runs on its own columns before a Cox fit:
dependent columns make the coefficients non-identifiable, and Newton's method would fail
with an unhelpful singular-matrix error much later.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vfl.core.errors import FeatureMagnitudeError, MissingValuesError, PayloadShapeError
from vfl.survival.errors import (
    CollinearFeaturesError,
    MissingEventError,
    NegativeTimeError,
    NoEventsError,
    NonFiniteTimeError,
    SurvivalLabelShapeError,
)

# Relative tolerance of the rank test: a standardized column whose distance to the span of
# the columns before it is below RANK_TOL * (largest singular value) counts as dependent.
# Exact dependencies computed in float64 land near 1e-15; real near-collinear clinical
# columns (correlation 0.999) stay around 1e-2, so 1e-10 separates the two with margin.
RANK_TOL = 1e-10
# A column is constant when its range is below this fraction of its magnitude (or of 1).
CONSTANT_TOL = 1e-12
# Weights below this fraction of the largest one are rounding noise in a dependency.
WEIGHT_TOL = 1e-6


def survival_labels(labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(time float64 (n,), event bool (n,))`` from survival labels.

    ``labels`` is an ``(n, 2)`` array ``[time, event]``, or a numpy structured array with
    one boolean (or 0/1 integer) field, the event, and one float field, the time (what
    ``sksurv.util.Surv`` builds, e.g. fields ``('censor', '?'), ('time', '<f8')``).

    Raises :class:`SurvivalLabelShapeError`, :class:`NonFiniteTimeError`,
    :class:`NegativeTimeError`, :class:`MissingEventError` or :class:`NoEventsError`.
    """
    arr = np.asarray(labels)
    if arr.dtype.names is not None:
        time, event = _from_structured(arr)
    else:
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise SurvivalLabelShapeError(
                f"survival labels must be an (n, 2) array [time, event]; got shape {arr.shape}."
                " Stack them with np.column_stack([time, event])."
            )
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise SurvivalLabelShapeError(
                f"survival labels have dtype {arr.dtype}; time and event must be numbers "
                "(event 1 = observed, 0 = censored)"
            ) from None
        time, event = arr[:, 0], arr[:, 1]
    return _check_time(time), _check_event(event)


def survival_arrays(time, event) -> tuple[np.ndarray, np.ndarray]:
    """:func:`survival_labels` for time and event given as two arrays of equal length."""
    time = np.asarray(time, dtype=np.float64).reshape(-1)
    event = np.asarray(event, dtype=np.float64).reshape(-1)
    if time.shape != event.shape:
        raise SurvivalLabelShapeError(
            f"{len(time)} follow-up times but {len(event)} event indicators; give one of each "
            "per patient"
        )
    return survival_labels(np.column_stack([time, event]))


def _from_structured(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) from a two-field structured array: the boolean (else integer) field is
    the event, the float field the time, whatever their names and order."""
    names = arr.dtype.names
    if arr.ndim != 1 or len(names) != 2:
        raise SurvivalLabelShapeError(
            f"a structured survival array needs exactly two fields (event, time) and one "
            f"dimension; got fields {names} and shape {arr.shape}. Build it with "
            "sksurv.util.Surv.from_arrays(event=..., time=...)."
        )
    kinds = {name: arr.dtype[name].kind for name in names}
    event_field = next((n for n in names if kinds[n] == "b"), None)
    if event_field is None:
        event_field = next((n for n in names if kinds[n] in "iu"), None)
    time_field = next((n for n in names if n != event_field and kinds[n] in "iuf"), None)
    if event_field is None or time_field is None:
        raise SurvivalLabelShapeError(
            f"cannot tell the event field from the time field in {names} (kinds {kinds}); "
            "the event must be a boolean (or 0/1 integer) field and the time a float field"
        )
    return arr[time_field].astype(np.float64), arr[event_field].astype(np.float64)


def _check_time(time: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(time)
    if bad.any():
        raise NonFiniteTimeError(
            f"{int(bad.sum())} follow-up times are NaN or infinite (first at row "
            f"{int(np.flatnonzero(bad)[0])}); every patient needs a finite time of event or "
            "censoring. Drop or fix those rows."
        )
    negative = time < 0
    if negative.any():
        raise NegativeTimeError(
            f"{int(negative.sum())} follow-up times are negative (smallest "
            f"{float(time.min()):g}, first at row {int(np.flatnonzero(negative)[0])}); times "
            "count from study entry and must be >= 0. Check the date arithmetic of those rows."
        )
    return np.ascontiguousarray(time, dtype=np.float64)


def _check_event(event: np.ndarray) -> np.ndarray:
    missing = np.isnan(event)
    if missing.any():
        raise MissingEventError(
            f"{int(missing.sum())} event indicators are missing (NaN; first at row "
            f"{int(np.flatnonzero(missing)[0])}); every row needs 1 (event observed) or 0 "
            "(censored). Drop those rows or establish their status."
        )
    other = (event != 0) & (event != 1)
    if other.any():
        values = sorted(set(event[other].tolist()))[:5]
        raise MissingEventError(
            f"{int(other.sum())} event indicators are not 0/1 (values {values}); use 1 for an "
            "observed event and 0 for censored (recode competing or multi-state outcomes)"
        )
    event = event == 1
    if not event.any():
        raise NoEventsError(
            f"none of the {len(event)} rows has an observed event; the Cox partial "
            "likelihood has no terms. Use a cohort (or a split) with at least one event."
        )
    return event


def as_structured(time, event, *, name_event: str = "event", name_time: str = "time"):
    """The scikit-survival structured array (``Surv.from_arrays``) of ``time`` and ``event``,
    for its estimators and metrics."""
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event).astype(bool),
                            time=np.asarray(time, dtype=np.float64),
                            name_event=name_event, name_time=name_time)


def check_features(x: np.ndarray, columns: Sequence[str]) -> None:
    """Raise :class:`CollinearFeaturesError` unless ``x``'s columns are identifiable in a Cox
    model: none constant, none a linear combination of others.

    A Cox model has no intercept, and its partial likelihood ignores any constant added to
    the linear predictor, so a constant column is dependent on nothing at all (its
    coefficient is arbitrary). The rank test runs on standardized columns (so units do not
    matter): a pivot-free QR gives each column's distance to the span of the columns before
    it; a column whose distance is below :data:`RANK_TOL` times the largest singular value
    is dependent, and the message names a minimal dependent set (that column and the earlier
    columns with nonzero weight in its unique representation).
    """
    x = np.asarray(x, dtype=np.float64)
    columns = list(columns)
    if x.ndim != 2 or x.shape[1] != len(columns):
        raise PayloadShapeError(
            f"features must be (rows, {len(columns)}) for columns {columns}; got shape "
            f"{x.shape}"
        )
    nan = np.isnan(x)
    if nan.any():
        bad = [c for j, c in enumerate(columns) if nan[:, j].any()]
        raise MissingValuesError(f"columns {bad} have missing values; impute or drop them first")
    if not np.isfinite(x).all():
        bad = [c for j, c in enumerate(columns) if not np.isfinite(x[:, j]).all()]
        raise FeatureMagnitudeError(f"columns {bad} have infinite values; fix or drop them")
    n, d = x.shape
    if d == 0:
        return
    spread = np.ptp(x, axis=0) if n else np.zeros(d)
    constant = [c for j, c in enumerate(columns)
                if spread[j] <= CONSTANT_TOL * max(1.0, float(np.abs(x[:, j]).max(initial=0)))]
    if constant:
        raise CollinearFeaturesError(
            f"columns {constant} are constant; a Cox model has no intercept and ignores "
            "constant shifts, so their coefficients are not identifiable. Drop them."
        )
    if n <= d:
        raise CollinearFeaturesError(
            f"{d} columns but only {n} rows: after centring at most {n - 1} columns can be "
            f"independent, so the coefficients of {columns} are not identifiable. Use fewer "
            "columns (or more rows)."
        )
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    r = np.linalg.qr(z, mode="r")
    singular = np.linalg.svd(r, compute_uv=False)
    threshold = RANK_TOL * singular[0]
    if singular[-1] > threshold:
        return
    sets = _dependent_sets(r, threshold)
    if not sets:  # near-dependence that the pivot-free QR does not localise: the null vector
        v = np.linalg.svd(r)[2][-1]
        sets = [np.flatnonzero(np.abs(v) > WEIGHT_TOL * np.abs(v).max()).tolist()]
    described = "; ".join(str([columns[j] for j in s]) for s in sets[:5])
    more = f" (and {len(sets) - 5} more)" if len(sets) > 5 else ""
    raise CollinearFeaturesError(
        f"linearly dependent feature columns (after standardization): {described}{more}. "
        "Each set's last column is a linear combination of the others, so the Cox "
        "coefficients are not identifiable; drop one column of each set."
    )


def _dependent_sets(r: np.ndarray, threshold: float) -> list[list[int]]:
    """For each column of ``r`` (the R of ``z = QR``, so with ``z``'s dependencies) that lies
    in the span of the independent columns before it, that column plus the earlier columns
    in its representation. The earlier independent columns give a unique representation,
    so each set is minimal (no proper subset is dependent)."""
    independent: list[int] = []
    sets = []
    for j in range(r.shape[1]):
        if abs(r[j, j]) > threshold:
            independent.append(j)
            continue
        if not independent:  # cannot happen for non-constant standardized columns
            sets.append([j])
            continue
        weights = np.linalg.lstsq(r[:, independent], r[:, j], rcond=None)[0]
        used = np.abs(weights) > WEIGHT_TOL * max(np.abs(weights).max(), 1e-300)
        sets.append([independent[k] for k in np.flatnonzero(used)] + [j])
    return sets
