"""The Cox proportional-hazards model's math, as pure float64 numpy functions.

Everything is written in terms of the per-patient linear predictor ``eta`` (the "cut layer"
of a vertical model: ``eta = sum_k X_k beta_k`` over the parties), so the same functions
serve the centralized fit here and a federated protocol that only ever sees ``eta``.

Partial likelihood. Sort patients by descending time; the risk set of an event time ``t``
is everyone with time ``>= t`` (a prefix of that order, including those censored at ``t``).
With ``w = exp(eta)``, ``S_g`` the sum of ``w`` over group ``g``'s risk set, ``d_g`` its
number of events and ``E_g`` the sum of ``w`` over those events, the negative log partial
likelihood is

    -sum_i delta_i eta_i + sum_g sum_{l<d_g} log(S_g - f_gl E_g),

with ``f_gl = 0`` for Breslow's approximation of tied event times and ``f_gl = l / d_g``
for Efron's. Both are one formula here: Efron's only adds the ``f`` terms. Loss, gradient
and any projection ``B^T H B`` of the Hessian are cumulative sums over the sorted order:
``O(n r^2)`` after one ``O(n log n)`` sort, never the ``n x n`` Hessian.

Why numpy and not JAX. The sums are sequential prefix sums over a data-dependent order,
which numpy does exactly in float64 without touching JAX's global x64 switch (other code
depends on float32 defaults). Tests check these against ``jax.grad``/``jax.hessian``.

Overflow. ``exp(eta)`` is taken after subtracting ``max(eta)``; the shift cancels in every
ratio and is added back to the loss. Only if ``eta`` spans more than ~700 (hazard ratios
beyond 1e300, a diverged model) can a risk-set sum underflow; that raises
:class:`~vfl.survival.errors.CoxConvergenceError` rather than returning NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vfl.core.errors import ConfigError, PayloadShapeError
from vfl.survival.errors import CoxConvergenceError, NonFiniteRiskScoreError
from vfl.survival.labels import check_features, survival_arrays

TIES = ("breslow", "efron")
# Newton's stopping rule (besides the relative loss change ``tol``): the largest
# coefficient step, in units of the standardized columns (per standard deviation).
STEP_TOL = 1e-9
# A coefficient this large per standard deviation (a hazard ratio of e^25 ~ 7e10 between
# patients one SD apart) only arises when the partial likelihood has no maximum (separation:
# a column orders the event times perfectly); Newton would walk to infinity.
MAX_STANDARDIZED_COEF = 25.0
# Step halvings before a Newton direction is declared not a descent direction.
MAX_HALVINGS = 40


@dataclass(frozen=True, eq=False)
class RiskSets:
    """The time structure of a cohort, computed once (one sort) and reused for every
    ``eta``: the descending-time order and the tied event-time groups.

    Positions below refer to the sorted order. Event group ``g`` (descending time) has
    risk set ``[0, risk_end[g])`` and ``group_size[g]`` events; ``first_group[k]`` is the
    first event group whose risk set holds position ``k`` (``n_groups`` if none), which is
    the patient's own group when it is an event. ``term_group``/``term_fraction`` list the
    ``sum_g d_g`` log terms of the likelihood and their Efron fraction (0 for Breslow).
    """

    ties: str
    order: np.ndarray  # (n,) original index of each sorted position, descending time, stable
    event_sorted: np.ndarray  # (n,) bool, event indicator in sorted order
    event_positions: np.ndarray  # (n_events,) sorted positions of the events
    risk_end: np.ndarray  # (G,) exclusive end of each event group's risk set
    group_size: np.ndarray  # (G,) events per group (>= 1)
    group_start: np.ndarray  # (G,) index of each group's first event in event_positions
    first_group: np.ndarray  # (n,) see the class docstring
    term_group: np.ndarray  # (n_events,) group of each log term
    term_fraction: np.ndarray  # (n_events,) Efron's l / d_g, or 0 for Breslow

    @property
    def n(self) -> int:
        return len(self.order)

    @property
    def n_groups(self) -> int:
        return len(self.risk_end)

    @property
    def n_events(self) -> int:
        return len(self.event_positions)


def risk_sets(time, event, ties: str = "breslow") -> RiskSets:
    """The :class:`RiskSets` of a cohort (``time``, ``event`` validated as survival labels).

    ``ties``: ``"breslow"`` (what scikit-survival's ``CoxPHSurvivalAnalysis`` uses by
    default) or ``"efron"`` (closer to the exact partial likelihood when many event times
    are tied).
    """
    if ties not in TIES:
        raise ConfigError(f"ties must be one of {TIES}, got {ties!r}")
    time, event = survival_arrays(time, event)
    order = np.argsort(-time, kind="stable")
    t_sorted, e_sorted = time[order], event[order]
    n = len(time)
    # End (exclusive) of each block of equal times; the risk set of a time is the prefix
    # up to the end of its block, so patients censored at an event time are at risk.
    block_end = np.append(np.flatnonzero(np.diff(t_sorted) != 0) + 1, n)
    block_of = np.repeat(np.arange(len(block_end)), np.diff(np.append(0, block_end)))
    event_positions = np.flatnonzero(e_sorted)
    blocks_with_events, group_size = np.unique(block_of[event_positions], return_counts=True)
    risk_end = block_end[blocks_with_events]
    group_start = np.append(0, np.cumsum(group_size)[:-1])
    first_group = np.searchsorted(risk_end, np.arange(n), side="right")
    term_group = np.repeat(np.arange(len(risk_end)), group_size)
    if ties == "efron":
        term_fraction = (np.arange(len(event_positions)) - group_start[term_group]) / (
            group_size[term_group])
    else:
        term_fraction = np.zeros(len(event_positions))
    return RiskSets(ties, order, e_sorted, event_positions, risk_end, group_size, group_start,
                    first_group, term_group, term_fraction.astype(np.float64))


@dataclass(frozen=True)
class _Terms:
    """Shared pieces of loss, gradient and Hessian at one ``eta`` (sorted order, scaled
    by ``exp(-shift)``)."""

    eta: np.ndarray  # sorted
    shift: float
    w: np.ndarray  # exp(eta - shift), sorted
    denominators: np.ndarray  # (n_events,) S_g - f E_g per log term, scaled
    group_events_w: np.ndarray  # (G,) E_g, scaled


def _terms(eta, rs: RiskSets) -> _Terms:
    eta = np.asarray(eta, dtype=np.float64)
    if eta.shape != (rs.n,):
        raise PayloadShapeError(
            f"eta must have one value per patient, shape ({rs.n},); got {eta.shape}"
        )
    if not np.isfinite(eta).all():
        raise NonFiniteRiskScoreError(
            f"eta has {int((~np.isfinite(eta)).sum())} NaN or infinite values; the model "
            "producing the linear predictor has diverged or received bad inputs"
        )
    e = eta[rs.order]
    shift = float(e.max())
    w = np.exp(e - shift)
    risk_sum = np.cumsum(w)[rs.risk_end - 1]
    events_w = np.add.reduceat(w[rs.event_positions], rs.group_start)
    denominators = risk_sum[rs.term_group] - rs.term_fraction * events_w[rs.term_group]
    if not (denominators > 0).all():
        raise CoxConvergenceError(
            f"eta spans {float(e.max() - e.min()):.3g} (hazard ratios beyond 1e300): a "
            "risk-set sum underflows. The model has diverged; check for separation (a "
            "column that orders the event times perfectly) or lower the learning rate."
        )
    return _Terms(e, shift, w, denominators, events_w)


def neg_log_partial_likelihood(eta, rs: RiskSets) -> float:
    """The negative log partial likelihood at ``eta`` (a sum over events, not a mean),
    with Breslow's or Efron's ties as ``rs`` says."""
    t = _terms(eta, rs)
    observed = t.eta[rs.event_positions].sum()
    return float(np.log(t.denominators).sum() + rs.n_events * t.shift - observed)


def _weights(t: _Terms, rs: RiskSets) -> np.ndarray:
    """Per sorted position, ``d(loss)/d eta + delta``: ``w_k`` times the sum of ``1/D`` over
    the terms whose risk set holds ``k``, minus Efron's own-group correction for events."""
    inverse = 1.0 / t.denominators
    per_group = np.bincount(rs.term_group, inverse, minlength=rs.n_groups)
    from_here_on = np.append(np.cumsum(per_group[::-1])[::-1], 0.0)  # groups g >= first
    weights = t.w * from_here_on[rs.first_group]
    if rs.ties == "efron":
        own = np.bincount(rs.term_group, rs.term_fraction * inverse, minlength=rs.n_groups)
        ev = rs.event_positions
        weights[ev] -= t.w[ev] * own[rs.first_group[ev]]
    return weights


def eta_gradient(eta, rs: RiskSets) -> np.ndarray:
    """``d(neg log PL)/d eta``, shape ``(n,)``, in the patients' original order: the
    per-patient gradient a vertical model sends back through its cut layer."""
    t = _terms(eta, rs)
    grad_sorted = _weights(t, rs) - rs.event_sorted
    grad = np.empty(rs.n)
    grad[rs.order] = grad_sorted
    return grad


def subspace_gradient(eta, rs: RiskSets, basis) -> np.ndarray:
    """``basis^T`` times :func:`eta_gradient`: the gradient in the coordinates of ``basis``
    (for ``basis = X`` the gradient with respect to ``beta``)."""
    basis = _basis(basis, rs)
    return basis.T @ eta_gradient(eta, rs)


def subspace_hessian(eta, rs: RiskSets, basis) -> np.ndarray:
    """``basis^T H basis`` with ``H`` the Hessian of the negative log partial likelihood in
    ``eta``; ``basis`` is ``(n, r)``, the result ``(r, r)``.

    ``H = sum_terms diag(c w)/D - (c w)(c w)^T/D^2`` with ``c`` the term's membership
    (1 in the risk set, minus ``f`` for the group's events). Projected, the diagonal part
    is one weighted ``basis^T basis`` and the rank-one parts need only each group's risk-set
    sum ``M_g`` and event sum ``F_g`` of ``w * basis``: ``O(n r^2)``.
    """
    basis = _basis(basis, rs)
    t = _terms(eta, rs)
    b = basis[rs.order]
    wb = t.w[:, None] * b
    diagonal = b.T @ (_weights(t, rs)[:, None] * b)
    risk_sums = np.cumsum(wb, axis=0)[rs.risk_end - 1]  # M_g
    inv2 = t.denominators**-2.0
    p = np.bincount(rs.term_group, inv2, minlength=rs.n_groups)
    outer = risk_sums.T @ (p[:, None] * risk_sums)
    if rs.ties == "efron":
        f = rs.term_fraction
        q = np.bincount(rs.term_group, f * inv2, minlength=rs.n_groups)
        s = np.bincount(rs.term_group, f * f * inv2, minlength=rs.n_groups)
        event_sums = np.add.reduceat(wb[rs.event_positions], rs.group_start, axis=0)  # F_g
        cross = risk_sums.T @ (q[:, None] * event_sums)
        outer += event_sums.T @ (s[:, None] * event_sums) - cross - cross.T
    hessian = diagonal - outer
    return 0.5 * (hessian + hessian.T)  # exact symmetry for solvers and eigenvalues


def _basis(basis, rs: RiskSets) -> np.ndarray:
    basis = np.asarray(basis, dtype=np.float64)
    if basis.ndim == 1:
        basis = basis[:, None]
    if basis.ndim != 2 or basis.shape[0] != rs.n:
        raise PayloadShapeError(
            f"basis must be ({rs.n}, r), one row per patient; got shape {basis.shape}"
        )
    if not np.isfinite(basis).all():
        raise NonFiniteRiskScoreError("basis has NaN or infinite values; check its source")
    return basis


# --- the centralized fit ----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class CoxFit:
    """A fitted Cox model on a design without intercept.

    ``information`` is the observed information at ``coef``: the Hessian of the negative
    log partial likelihood with respect to the coefficients (its inverse estimates their
    covariance). ``converged`` is False only when ``max_iter`` ran out first (for a fixed
    number of Newton steps, e.g. to compare with a federated protocol round by round).
    """

    coef: np.ndarray  # (d,), per unit of each column
    information: np.ndarray  # (d, d)
    neg_log_likelihood: float
    iterations: int
    converged: bool
    ties: str = "breslow"


def fit_cox(x, time, event, *, ties: str = "breslow", tol: float = 1e-10, max_iter: int = 100,
            columns: Sequence[str] | None = None) -> CoxFit:
    """Maximum partial likelihood by Newton-Raphson with step halving, on ``x`` as given
    (no intercept: the partial likelihood has none).

    Checks ``x`` with :func:`~vfl.survival.labels.check_features` first (``columns`` name
    the columns in its message; default ``x0, x1, ...``). Newton runs on standardized
    columns (Newton is affine-invariant, so the iterates are the same; the linear solves are
    better conditioned) and the coefficients are mapped back to the columns' units.

    Stops when the relative change of the loss is below ``tol`` *and* the largest Newton
    step is below :data:`STEP_TOL` (per standard deviation of its column): the loss alone
    can look flat while a coefficient still walks away, as under separation. A coefficient
    beyond :data:`MAX_STANDARDIZED_COEF` per standard deviation, a singular information
    matrix or a direction that does not descend raises :class:`CoxConvergenceError`.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise PayloadShapeError(f"x must be (patients, columns); got shape {x.shape}")
    rs = risk_sets(time, event, ties)
    if x.shape[0] != rs.n:
        raise PayloadShapeError(
            f"x has {x.shape[0]} rows but there are {rs.n} survival labels; give one row per "
            "patient, in the labels' order"
        )
    if isinstance(max_iter, bool) or not (isinstance(max_iter, int | np.integer)
                                          and max_iter >= 1):
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol > 0:
        raise ConfigError(f"tol must be > 0, got {tol!r}")
    names = list(columns) if columns is not None else [f"x{j}" for j in range(x.shape[1])]
    check_features(x, names)
    centred = x - x.mean(axis=0)
    scale = centred.std(axis=0)
    z = centred / scale

    beta = np.zeros(x.shape[1])
    loss = neg_log_partial_likelihood(z @ beta, rs)
    converged, iterations = False, 0
    for iterations in range(1, max_iter + 1):
        eta = z @ beta
        gradient = z.T @ eta_gradient(eta, rs)
        hessian = subspace_hessian(eta, rs, z)
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            raise CoxConvergenceError(
                f"the information matrix is singular at iteration {iterations}; the "
                f"coefficients of {names} are not identifiable from these events"
            ) from None
        beta, new_loss, taken = _halve_until_descent(z, rs, beta, step, loss, iterations)
        relative = abs(loss - new_loss) / max(abs(new_loss), np.finfo(float).tiny)
        loss = new_loss
        big = np.abs(beta) > MAX_STANDARDIZED_COEF
        if big.any():
            raise CoxConvergenceError(
                f"coefficients of {[c for c, b in zip(names, big) if b]} exceed "
                f"{MAX_STANDARDIZED_COEF} per standard deviation after {iterations} Newton "
                "steps and keep growing: the partial likelihood has no maximum (separation, "
                "e.g. a column that orders the event times perfectly). Drop or merge those "
                "columns, or add events."
            )
        if relative < tol and np.abs(taken).max(initial=0.0) < STEP_TOL:
            converged = True
            break
    coef = beta / scale
    eta = centred @ coef
    return CoxFit(
        coef=coef,
        information=subspace_hessian(eta, rs, centred),
        neg_log_likelihood=neg_log_partial_likelihood(eta, rs),
        iterations=iterations,
        converged=converged,
        ties=ties,
    )


def _halve_until_descent(z, rs, beta, step, loss, iteration):
    """``(beta - t step, its loss, t step)`` for the largest ``t = 2^-k`` that does not
    increase the loss. A step below :data:`STEP_TOL` is taken as is: at the optimum the loss
    differences are rounding noise."""
    t = 1.0
    for _ in range(MAX_HALVINGS):
        taken = t * step
        candidate = beta - taken
        try:
            new_loss = neg_log_partial_likelihood(z @ candidate, rs)
        except CoxConvergenceError:  # overflowing risk sets: too long a step
            new_loss = np.inf
        if new_loss <= loss or np.abs(taken).max(initial=0.0) < STEP_TOL:
            return candidate, new_loss, taken
        t *= 0.5
    raise CoxConvergenceError(
        f"Newton's direction does not decrease the loss at iteration {iteration} even after "
        f"{MAX_HALVINGS} halvings; the information matrix is numerically singular. Check the "
        "columns for near-collinearity."
    )


def standard_errors(information) -> np.ndarray:
    """Standard errors of the coefficients: ``sqrt(diag(inv(information)))``."""
    information = np.asarray(information, dtype=np.float64)
    if information.ndim != 2 or information.shape[0] != information.shape[1]:
        raise PayloadShapeError(f"information must be square; got shape {information.shape}")
    try:
        covariance = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        raise CoxConvergenceError(
            "the information matrix is singular: some coefficients are not identifiable, "
            "so they have no standard error. Check the columns for collinearity."
        ) from None
    return np.sqrt(np.diag(covariance))


# --- baseline hazard and survival curves ------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BaselineHazard:
    """Breslow's baseline cumulative hazard ``H0`` at the unique event times (ascending);
    a right-continuous step function, 0 before the first event time."""

    times: np.ndarray
    cumulative_hazard: np.ndarray

    def at(self, times) -> np.ndarray:
        """``H0(t)`` at arbitrary ``times``."""
        idx = np.searchsorted(self.times, np.asarray(times, dtype=np.float64), side="right")
        return np.append(0.0, self.cumulative_hazard)[idx]


def breslow_baseline(time, event, eta) -> BaselineHazard:
    """Breslow's estimator: ``H0(t) = sum over event times s <= t of d_s / S(s)``, with
    ``S(s)`` the sum of ``exp(eta)`` over the risk set at ``s`` (what scikit-survival's
    ``cum_baseline_hazard_`` is, given the same ``eta``)."""
    rs = risk_sets(time, event, "breslow")
    t = _terms(eta, rs)
    scaled_risk_sum = np.cumsum(t.w)[rs.risk_end - 1]  # S_g * exp(-shift)
    increments = np.exp(np.log(rs.group_size / scaled_risk_sum) - t.shift)  # descending time
    time_sorted = np.asarray(time, dtype=np.float64)[rs.order]
    times = time_sorted[rs.event_positions[rs.group_start]][::-1]
    return BaselineHazard(times=times, cumulative_hazard=np.cumsum(increments[::-1]))


def survival_function(baseline: BaselineHazard, eta, times) -> np.ndarray:
    """``S(t | eta) = exp(-H0(t) exp(eta))``, shape ``(len(eta), len(times))``."""
    eta = np.asarray(eta, dtype=np.float64).reshape(-1)
    if not np.isfinite(eta).all():
        raise NonFiniteRiskScoreError("eta has NaN or infinite values; check the model")
    return np.exp(-np.outer(np.exp(eta), baseline.at(times)))
