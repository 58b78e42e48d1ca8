"""Cox proportional hazards building blocks (vfl.survival): the math against scikit-survival
and against an independent dense JAX implementation, the labels and their errors, the
design check, the metrics, the survival loaders and PartyTable's (n, 2) labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfl.core.errors import (
    ConfigError,
    DuplicateColumnError,
    LabelValueError,
    MissingColumnError,
    PayloadShapeError,
)
from vfl.core.table import PartyTable
from vfl.datasets import load, load_whas500
from vfl.survival.cox import (
    breslow_baseline,
    eta_gradient,
    fit_cox,
    neg_log_partial_likelihood,
    risk_sets,
    standard_errors,
    subspace_gradient,
    subspace_hessian,
    survival_function,
)
from vfl.survival.errors import (
    BrierTimesError,
    CensoringSupportError,
    CollinearFeaturesError,
    CoxConvergenceError,
    MissingEventError,
    NegativeTimeError,
    NoEventsError,
    NonFiniteRiskScoreError,
    NonFiniteTimeError,
    SurvivalLabelError,
    SurvivalLabelShapeError,
)
from vfl.survival.labels import (
    as_structured,
    check_features,
    survival_arrays,
    survival_labels,
)
from vfl.survival.metrics import brier_times, c_index, integrated_brier

sksurv_datasets = pytest.importorskip("sksurv.datasets")
from sksurv.linear_model import CoxPHSurvivalAnalysis  # noqa: E402

ACTG_COLUMNS = ("age", "karnof", "cd4", "tx", "priorzdv", "sex", "ivdrug", "hemophil")
COEF_TOL = 1e-6


def _sksurv(x, time, event, ties):
    """scikit-survival's fit, run to a tight tolerance so it is the reference."""
    model = CoxPHSurvivalAnalysis(ties=ties, tol=1e-12, n_iter=200)
    return model.fit(x, as_structured(time, event))


@pytest.fixture(scope="module")
def whas():
    """WHAS500 (age, bmi, sysbp) as scikit-survival ships it."""
    X, y = sksurv_datasets.load_whas500()
    return X[["age", "bmi", "sysbp"]].to_numpy(np.float64), y["lenfol"], y["fstat"]


@pytest.fixture(scope="module")
def actg():
    """ACTG 320 with a well-posed covariate set (txgrp left out: it nearly repeats tx)."""
    X, y = sksurv_datasets.load_aids(endpoint="aids")
    x = np.column_stack([X[c].astype(float).to_numpy(np.float64) for c in ACTG_COLUMNS])
    return x, y["time"], y["censor"]


# --- an independent reference: dense risk-set matrices in JAX float64 -----------------------
def _dense_loss(eta, at_risk, tied_events, fraction, event):
    """The negative log partial likelihood from n x n risk-set and tie matrices (O(n^2)),
    written directly from the textbook formulas; differentiated by JAX for the references."""
    w = jnp.exp(eta)
    denominators = at_risk @ w - fraction * (tied_events @ w)
    return jnp.sum(jnp.where(event, jnp.log(denominators) - eta, 0.0))


# Compiled once per shape: the random cohorts are padded to one size (see dense_derivatives).
_dense_all = jax.jit(lambda *a: (_dense_loss(*a), jax.grad(_dense_loss)(*a),
                                 jax.hessian(_dense_loss)(*a)))
PAD = 30


def dense_derivatives(eta, time, event, ties, pad=None):
    """Loss, gradient and Hessian in eta from the dense reference. With ``pad``, rows of time
    -1 (in no event's risk set, without events: they add nothing) fill the cohort up to
    ``pad`` rows so that every random cohort reuses one compiled function."""
    n = len(time)
    extra = 0 if pad is None else pad - n
    time = np.append(np.asarray(time, float), -np.ones(extra))
    event = np.append(np.asarray(event, bool), np.zeros(extra, bool))
    eta = np.append(np.asarray(eta, float), np.zeros(extra))
    at_risk = (time[None, :] >= time[:, None]).astype(float)  # row i: risk set of time_i
    tied_events = ((time[None, :] == time[:, None]) & event[None, :]).astype(float)
    fraction = np.zeros(len(time))  # Efron: l / d for the l-th of d events tied at a time
    if ties == "efron":
        for t in np.unique(time[event]):
            members = np.flatnonzero(event & (time == t))
            fraction[members] = np.arange(len(members)) / len(members)
    with jax.enable_x64(True):
        value, grad, hess = _dense_all(*(jnp.asarray(a, dtype=jnp.float64) for a in (
            eta, at_risk, tied_events, fraction)), jnp.asarray(event))
        value, grad, hess = float(value), np.asarray(grad), np.asarray(hess)
    return value, grad[:n], hess[:n, :n]


@st.composite
def cohorts(draw):
    """Small cohorts with many ties (times from a handful of values) and censoring."""
    n = draw(st.integers(2, 30))
    time = np.array(draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)), dtype=float)
    event = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    event[draw(st.integers(0, n - 1))] = True  # at least one event
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    eta = rng.normal(scale=draw(st.sampled_from([0.1, 1.0, 3.0])), size=n)
    basis = rng.normal(size=(n, draw(st.integers(1, 4))))
    ties = draw(st.sampled_from(["breslow", "efron"]))
    return time, event, eta, basis, ties


FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(cohorts())
def test_loss_gradient_and_hessian_equal_the_dense_jax_reference(cohort):
    time, event, eta, basis, ties = cohort
    rs = risk_sets(time, event, ties)
    value, grad, hess = dense_derivatives(eta, time, event, ties, pad=PAD)
    assert neg_log_partial_likelihood(eta, rs) == pytest.approx(value, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(eta_gradient(eta, rs), grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(subspace_hessian(eta, rs, basis), basis.T @ hess @ basis,
                               rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(subspace_gradient(eta, rs, basis), basis.T @ grad,
                               rtol=1e-9, atol=1e-11)


@FAST
@given(cohorts(), st.floats(-50, 50), st.randoms(use_true_random=False))
def test_loss_ignores_a_constant_shift_and_the_row_order(cohort, shift, rnd):
    time, event, eta, _, ties = cohort
    rs = risk_sets(time, event, ties)
    loss = neg_log_partial_likelihood(eta, rs)
    assert neg_log_partial_likelihood(eta + shift, rs) == pytest.approx(loss, rel=1e-11, abs=1e-9)
    perm = np.arange(len(time))
    rnd.shuffle(perm)
    permuted = risk_sets(time[perm], event[perm], ties)
    assert neg_log_partial_likelihood(eta[perm], permuted) == pytest.approx(loss, rel=1e-12,
                                                                            abs=1e-12)
    np.testing.assert_allclose(eta_gradient(eta[perm], permuted), eta_gradient(eta, rs)[perm],
                               rtol=1e-12, atol=1e-13)


def test_large_linear_predictors_do_not_overflow():
    time, event = np.array([5.0, 3.0, 3.0, 1.0]), np.array([1, 1, 0, 1])
    rs = risk_sets(time, event)
    eta = np.array([0.2, -0.4, 0.1, 0.3])
    np.testing.assert_allclose(eta_gradient(eta + 800.0, rs), eta_gradient(eta, rs), atol=1e-14)
    assert np.isfinite(neg_log_partial_likelihood(eta + 800.0, rs))
    with pytest.raises(NonFiniteRiskScoreError):
        neg_log_partial_likelihood(np.array([0.0, np.nan, 0.0, 0.0]), rs)
    with pytest.raises(PayloadShapeError, match=r"\(4,\)"):
        eta_gradient(np.zeros(3), rs)
    with pytest.raises(ConfigError, match="ties"):
        risk_sets(time, event, "exact")


# --- the centralized fit against scikit-survival -------------------------------------------
@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_fit_equals_sksurv_on_whas500_and_actg320(whas, actg, ties):
    for x, time, event in (whas, actg):
        fit = fit_cox(x, time, event, ties=ties)
        reference = _sksurv(x, time, event, ties)
        assert fit.converged and fit.ties == ties
        np.testing.assert_allclose(fit.coef, reference.coef_, rtol=0, atol=COEF_TOL)


def test_the_issue_case_pooled_whas500_split_keeping_every_patient(whas):
    """coverage=1.0: every party holds every patient, so the pooled rows are the cohort."""
    d = load_whas500(blocks={"hospital": ("age",), "clinic": ("bmi",), "lab": ("sysbp",)},
                     coverage=1.0, label="survival")
    ids, x, labels, columns = d.pooled()
    assert len(ids) == 500 and columns == ["hospital:age", "clinic:bmi", "lab:sysbp"]
    time, event = survival_labels(labels)
    fit = fit_cox(x, time, event, columns=columns)
    np.testing.assert_allclose(fit.coef, _sksurv(*whas, "breslow").coef_, atol=COEF_TOL)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_information_is_the_hessian_and_gives_standard_errors(whas, ties):
    x, time, event = whas
    fit = fit_cox(x, time, event, ties=ties)
    centred = x - x.mean(axis=0)
    _, _, hess = dense_derivatives(centred @ fit.coef, time, event, ties)
    np.testing.assert_allclose(fit.information, centred.T @ hess @ centred, rtol=1e-9)
    # And by central differences of the analytic gradient in beta.
    rs, step = risk_sets(time, event, ties), 1e-6
    numeric = np.column_stack([
        (subspace_gradient(x @ (fit.coef + step * e), rs, x)
         - subspace_gradient(x @ (fit.coef - step * e), rs, x)) / (2 * step)
        for e in np.eye(3)
    ])
    np.testing.assert_allclose(fit.information, numeric, rtol=1e-5)
    se = standard_errors(fit.information)
    np.testing.assert_allclose(se, np.sqrt(np.diag(np.linalg.inv(fit.information))))
    assert fit.neg_log_likelihood == pytest.approx(
        neg_log_partial_likelihood(x @ fit.coef, rs), rel=1e-12)


def test_fit_reports_non_convergence_and_refuses_separation(whas):
    x, time, event = whas
    one_step = fit_cox(x, time, event, max_iter=1)
    assert not one_step.converged and one_step.iterations == 1
    separating = -np.asarray(time, float)[:, None]  # earlier event <=> larger value
    with pytest.raises(CoxConvergenceError, match="separation"):
        fit_cox(separating, time, event, columns=["minus_time"])
    with pytest.raises(CollinearFeaturesError, match="age"):
        fit_cox(np.column_stack([x, 2 * x[:, 0] + 1]), time, event,
                columns=["age", "bmi", "sysbp", "age_twice"])
    with pytest.raises(PayloadShapeError):
        fit_cox(x[:-1], time, event)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_efron_differs_from_breslow_only_with_ties(ties):
    time = np.array([4.0, 3.0, 2.0, 1.0])
    event = np.array([1, 0, 1, 1])
    eta = np.array([0.3, -0.1, 0.5, 0.2])
    assert neg_log_partial_likelihood(eta, risk_sets(time, event, ties)) == pytest.approx(
        neg_log_partial_likelihood(eta, risk_sets(time, event, "breslow")), rel=1e-14)


# --- baseline hazard and survival curves ---------------------------------------------------
def test_breslow_baseline_and_survival_equal_sksurv(whas):
    x, time, event = whas
    model = _sksurv(x, time, event, "breslow")
    eta = x @ model.coef_  # scikit-survival's baseline is on the uncentred predictor
    baseline = breslow_baseline(time, event, eta)
    np.testing.assert_array_equal(baseline.times, np.unique(np.asarray(time)[event]))
    step = model.cum_baseline_hazard_
    np.testing.assert_allclose(baseline.at(step.x), step.y, rtol=1e-12)
    assert baseline.at([0.0, baseline.times[0] - 1e-9]).tolist() == [0.0, 0.0]
    times = model.unique_times_
    expected = model.predict_survival_function(x[:25], return_array=True)
    np.testing.assert_allclose(survival_function(baseline, eta[:25], times), expected,
                               rtol=1e-10, atol=1e-14)


# --- labels --------------------------------------------------------------------------------
def test_labels_accept_arrays_and_sksurv_structured_arrays():
    time, event = survival_labels(np.array([[3.0, 1.0], [0.0, 0.0], [2.5, 1.0]]))
    assert time.dtype == np.float64 and event.dtype == bool
    assert time.tolist() == [3.0, 0.0, 2.5] and event.tolist() == [True, False, True]
    structured = as_structured(time, event, name_event="censor", name_time="time")
    assert structured.dtype.names == ("censor", "time")
    again = survival_labels(structured)
    assert again[0].tolist() == time.tolist() and again[1].tolist() == event.tolist()
    swapped = np.array([(1.5, 1), (2.0, 0)], dtype=[("t", "<f8"), ("e", "<i8")])
    assert survival_labels(swapped)[1].tolist() == [True, False]
    assert survival_arrays([2.0, 1.0], [True, False])[1].tolist() == [True, False]
    with pytest.raises(SurvivalLabelShapeError, match="3 follow-up times but 2"):
        survival_arrays([1.0, 2.0, 3.0], [1, 0])


@pytest.mark.parametrize("labels, error, message", [
    (np.array([[-1.0, 1.0], [-3.0, 0.0], [2.0, 1.0]]), NegativeTimeError, "2 follow-up.*-3"),
    (np.array([[1.0, np.nan], [2.0, 1.0]]), MissingEventError, "missing"),
    (np.array([[1.0, 2.0], [2.0, 1.0]]), MissingEventError, r"not 0/1 \(values \[2.0\]"),
    (np.array([[1.0, 0.0], [2.0, 0.0]]), NoEventsError, "no terms"),
    (np.array([[np.inf, 1.0], [2.0, 1.0]]), NonFiniteTimeError, "infinite"),
    (np.array([1.0, 2.0]), SurvivalLabelShapeError, r"\(n, 2\)"),
    (np.ones((3, 3)), SurvivalLabelShapeError, r"\(3, 3\)"),
    (np.array([(1.0, 2.0)], dtype=[("a", "<f8"), ("b", "<f8")]), SurvivalLabelShapeError,
     "event field"),
])
def test_each_bad_label_raises_its_error(labels, error, message):
    with pytest.raises(error, match=message) as caught:
        survival_labels(labels)
    assert isinstance(caught.value, SurvivalLabelError)
    assert isinstance(caught.value, LabelValueError)


# --- the design check ----------------------------------------------------------------------
def test_check_features_names_dependent_and_constant_columns(actg):
    x, _, _ = actg
    columns = list(ACTG_COLUMNS)
    check_features(x, columns)  # well posed
    tx = x[:, columns.index("tx")]
    with pytest.raises(CollinearFeaturesError, match=r"\['tx', 'placebo'\]"):
        check_features(np.column_stack([x, 1.0 - tx]), [*columns, "placebo"])  # same, standardized
    age, cd4 = x[:, 0], x[:, 2]
    with pytest.raises(CollinearFeaturesError, match=r"\['age', 'cd4', 'score'\]"):
        check_features(np.column_stack([x, 0.5 * age - 2 * cd4 + 7]), [*columns, "score"])
    with pytest.raises(CollinearFeaturesError, match=r"\['site'\] are constant"):
        check_features(np.column_stack([x, np.full(len(x), 3.0)]), [*columns, "site"])
    # ACTG's txgrp is NOT an exact copy of tx: 3 patients are in arms 3/4 (d4T instead of
    # ZDV), so it is near-collinear (ill-conditioned), not dependent, and passes.
    X, _ = sksurv_datasets.load_aids(endpoint="aids")
    txgrp = X["txgrp"].astype(float).to_numpy()
    check_features(np.column_stack([tx, txgrp]), ["tx", "txgrp"])


# --- metrics -------------------------------------------------------------------------------
def test_c_index_and_integrated_brier_on_held_out_rows(whas):
    from sksurv.metrics import concordance_index_censored

    x, time, event = whas
    time, event = np.asarray(time, float), np.asarray(event, bool)
    test = np.random.default_rng(0).permutation(len(time))[:100]
    train = np.setdiff1d(np.arange(len(time)), test)
    fit = fit_cox(x[train], time[train], event[train])
    eta_test = x[test] @ fit.coef
    expected = concordance_index_censored(event[test], time[test], eta_test)[0]
    assert c_index(time[test], event[test], eta_test) == expected
    grid = brier_times(time[train], time[test])
    assert len(grid) == 50 and grid[0] > time[test].min() and grid[-1] < time[test].max()
    baseline = breslow_baseline(time[train], event[train], x[train] @ fit.coef)
    survival = survival_function(baseline, eta_test, grid)
    score = integrated_brier(time[train], event[train], time[test], event[test], survival, grid)
    assert 0.0 < score < 0.25  # better than a constant 0.5
    # Undefined grids: None, or a specific error naming what to do.
    empty = brier_times(time[train], np.array([5.0, 5.0]))
    assert len(empty) == 0
    assert integrated_brier(time[train], event[train], time[test], event[test],
                            survival[:, :0], empty) is None
    with pytest.raises(BrierTimesError, match="brier_times"):
        integrated_brier(time[train], event[train], time[test], event[test],
                         survival[:, :2], np.array([0.0, grid[0]]))
    with pytest.raises(PayloadShapeError):
        c_index(time[test], event[test], eta_test[:-1])


def test_brier_needs_censoring_support_beyond_the_training_follow_up():
    train_time, train_event = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 1])
    test_time, test_event = np.array([1.5, 2.5, 6.0]), np.array([1, 1, 0])
    grid = brier_times(train_time, test_time, n=3)
    assert grid.max() < 4.0
    with pytest.raises(CensoringSupportError, match="last training time"):
        integrated_brier(train_time, train_event, test_time, test_event,
                         np.full((3, 3), 0.5), grid)


# --- loaders -------------------------------------------------------------------------------
LOADERS = {"actg320": ("time,censor", {}), "gse7390": ("t.tdm,e.tdm", {}),
           "flchain": ("futime,death", {"impute": {"creatinine": "median"}}),
           "gbsg2": ("time,cens", {}), "whas500": ("lenfol,fstat", {})}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_loaders_give_survival_labels_at_the_active_party_only(name):
    label_name, kw = LOADERS[name]
    d = load(name, label="survival", **kw)
    events = load(name, label="event", **kw)
    assert d.task == "survival" and d.n_classes is None and d.label_name == label_name
    assert events.task == "binary" and events.label_name == label_name.split(",")[1]
    labels = d.tables[d.active].labels
    assert labels.shape == (d.tables[d.active].n_rows, 2) and labels.dtype == np.float64
    time, event = survival_labels(labels)
    assert (time >= 0).all() and set(np.unique(labels[:, 1])) == {0.0, 1.0}
    assert not any(t.has_labels for p, t in d.tables.items() if p != d.active)
    # Same seed, same rows: the event column is the binary task's label.
    for p, t in d.tables.items():
        assert np.array_equal(t.ids, events.tables[p].ids)
        assert t.features.tobytes() == events.tables[p].features.tobytes()
    assert np.array_equal(labels[:, 1], events.tables[d.active].labels)
    if name != "whas500":  # the original four: label="event" is what they always returned
        default = load(name, **kw)
        assert default.tables[d.active].labels.tobytes() == (
            events.tables[d.active].labels.tobytes())
        assert default.description == events.description


def test_whas500_options_are_checked():
    with pytest.raises(ConfigError, match="label must be one of"):
        load_whas500(label="time")
    with pytest.raises(MissingColumnError, match="cholesterol"):
        load_whas500(blocks={"hospital": ("age", "cholesterol")})
    with pytest.raises(DuplicateColumnError, match="both 'hospital' and 'lab'"):
        load_whas500(blocks={"hospital": ("age",), "lab": ("age",)})
    with pytest.raises(ConfigError, match="no columns"):
        load_whas500(blocks={"hospital": ("age",), "lab": ()})
    d = load_whas500()
    assert sum(t.n_features for t in d.tables.values()) == 14
    with pytest.raises(ConfigError, match="use one of"):
        load("multiomics", n=50, task="survival")


# --- PartyTable with (n, 2) labels ---------------------------------------------------------
def test_party_table_carries_survival_labels(tmp_path):
    ids = ["a", "b", "c", "d"]
    labels = np.array([[5.0, 1.0], [3.5, 0.0], [0.0, 1.0], [7.25, 0.0]])
    table = PartyTable.from_numpy(ids, np.arange(8.0).reshape(4, 2), ["x", "z"],
                                  labels=labels, label_name="time,censor")
    assert table.rows(["c", "a"]).labels.tolist() == [[0.0, 1.0], [5.0, 1.0]]
    assert table.without(["b"]).labels.tolist() == [[5.0, 1.0], [0.0, 1.0], [7.25, 0.0]]
    frame = table.to_frame()
    assert list(frame.columns) == ["id", "x", "z", "time", "censor"]
    path = table.to_csv(tmp_path / "hospital.csv")
    back = PartyTable.from_file(path, "id", label_column="time,censor")
    assert back.columns == ("x", "z") and back.label_name == "time,censor"
    assert back.labels.tobytes() == labels.tobytes() and list(back.ids) == ids
    with pytest.raises(LabelValueError, match=r"\(4, 3\)"):
        PartyTable.from_numpy(ids, np.zeros((4, 1)), labels=np.zeros((4, 3)), label_name="y")
    with pytest.raises(LabelValueError, match="both columns"):
        PartyTable.from_numpy(ids, np.zeros((4, 1)), labels=labels, label_name="y")
    with pytest.raises(MissingColumnError, match="censor"):
        PartyTable.from_frame(frame.drop(columns="censor"), "id", label_column="time,censor")
