import re

import numpy as np
import pytest

from vfl.core.errors import ConfigError, MissingValuesError
from vfl.datasets import (
    DATASETS,
    VerticalDataset,
    load,
    load_actg320,
    load_breast_cancer_vertical,
    load_diabetes_vertical,
    load_flchain,
    load_gse7390,
    make_multiomics,
    pseudonym,
)

GENES = 76
EXPECTED_COLUMNS = {
    "actg320": {
        "hospital": ("sex", "raceth", "ivdrug", "hemophil", "karnof", "age"),
        "lab": ("cd4", "strat2"),
        "pharmacy": ("tx", "txgrp", "priorzdv"),
    },
    "flchain": {
        "hospital": ("age", "sex", "sample.yr"),
        "lab": ("kappa", "lambda", "flc.grp", "creatinine", "mgus"),
    },
    "gbsg2": {
        "hospital": ("age", "menostat", "tsize", "pnodes"),
        "pathology": ("tgrade", "progrec", "estrec"),
        "pharmacy": ("horTh",),
    },
    "diabetes": {
        "hospital": ("age", "sex", "bmi", "bp", "s1"),
        "lab": ("s2", "s3", "s4", "s5", "s6"),
    },
    "whas500": {
        "hospital": ("age", "gender", "hr", "los", "sho", "chf", "miord", "mitype"),
        "clinic": ("bmi", "cvd"),
        "lab": ("sysbp", "diasbp", "afb", "av3"),
    },
}
LABELS = {"actg320": "censor", "gse7390": "e.tdm", "flchain": "death", "gbsg2": "cens",
          "breast_cancer": "malignant", "diabetes": "progression", "multiomics": "y",
          "whas500": "fstat"}
KW = {"flchain": {"impute": {"creatinine": "median"}}, "multiomics": {"n": 600}}


@pytest.fixture(scope="module", params=sorted(DATASETS))
def named(request) -> tuple[str, VerticalDataset]:
    return request.param, load(request.param, **KW.get(request.param, {}))


def test_tables_are_well_formed(named):
    name, d = named
    assert d.name == name and d.parties[0] == d.active == "hospital"
    assert list(d.tables) == d.parties and d.label_name == LABELS[name]
    assert d.source and d.description
    assert d.task in ("binary", "multiclass", "regression", "survival")
    for p, t in d.tables.items():
        assert len(set(t.ids.tolist())) == t.n_rows  # unique ids
        assert all(re.fullmatch(r"pt-[0-9a-f]{12}", i) for i in t.ids)  # pseudonyms
        assert t.features.dtype == np.float64 and np.isfinite(t.features).all()
        assert t.has_labels == (p == d.active)
    labels = d.tables[d.active].labels
    if d.task == "binary":
        assert d.n_classes == 2 and set(np.unique(labels)) == {0, 1}
    elif d.task == "regression":
        assert d.n_classes is None and labels.dtype.kind == "f"
    elif d.task == "survival":  # (n, 2) [time, event]
        assert d.n_classes is None and labels.shape == (len(labels), 2)
        assert (labels[:, 0] >= 0).all() and set(np.unique(labels[:, 1])) == {0.0, 1.0}


def test_columns_are_exactly_the_specified_ones(named):
    name, d = named
    columns = {p: t.columns for p, t in d.tables.items()}
    if name in EXPECTED_COLUMNS:
        assert columns == EXPECTED_COLUMNS[name]
    elif name == "gse7390":
        assert columns["hospital"] == ("age", "size", "grade", "er")
        assert len(columns["genomics_lab"]) == GENES
        assert all(c.startswith("X") for c in columns["genomics_lab"])
    elif name == "breast_cancer":
        assert list(columns) == ["hospital", "lab", "imaging"]
        assert [len(c) for c in columns.values()] == [10, 10, 10]
        assert columns["hospital"][0] == "mean_radius"
    elif name == "multiomics":
        assert columns["hospital"] == ("age", "sex", "bmi")
        widths = {p: len(c) for p, c in columns.items() if p != "hospital"}
        assert widths == {"genomics": 200, "transcriptomics": 100, "proteomics": 50,
                          "prescriptions": 20}


def test_partial_overlap_is_realistic(named):
    name, d = named
    common = set(d.intersection().tolist())
    cohort = {pseudonym(name, i) for i in range(d.n_cohort)}
    assert common <= cohort
    # 3 parties: > 75 % of the cohort; the 5-party synthetic set compounds five subsets.
    assert len(common) > (0.75 if len(d.tables) <= 3 else 0.6) * d.n_cohort
    first_rows = []
    for p, t in d.tables.items():
        ids = set(t.ids.tolist())
        assert common < ids  # a strict subset of every party
        outsiders = ids - cohort  # non-cohort patients: this party's alone
        assert outsiders
        for q, other in d.tables.items():
            if q != p:
                assert not outsiders & set(other.ids.tolist())
        first_rows.append(t.ids[:20].tolist())
    assert all(r != first_rows[0] for r in first_rows[1:])  # rows are not pre-aligned


def _same(a: VerticalDataset, b: VerticalDataset) -> bool:
    return list(a.tables) == list(b.tables) and all(
        np.array_equal(a.tables[p].ids, b.tables[p].ids)
        and a.tables[p].features.tobytes() == b.tables[p].features.tobytes()
        and a.tables[p].columns == b.tables[p].columns
        and (a.tables[p].labels is None) == (b.tables[p].labels is None)
        and (a.tables[p].labels is None
             or a.tables[p].labels.tobytes() == b.tables[p].labels.tobytes())
        for p in a.tables
    )


def test_seed_determines_everything(named):
    name, d = named
    kw = KW.get(name, {})
    assert _same(d, load(name, seed=0, **kw))
    other = load(name, seed=1, **kw)
    assert not np.array_equal(d.intersection(), other.intersection())


def test_pooled_rows_align_with_the_source():
    from sksurv.datasets import load_aids

    d = load_actg320()
    ids, X, y, columns = d.pooled()
    assert X.shape == (len(d.intersection()), 11) and len(columns) == 11
    assert columns[:2] == ["hospital:sex", "hospital:raceth"] and columns[-1] == "pharmacy:priorzdv"
    raw, outcome = load_aids(endpoint="aids")
    index = {pseudonym("actg320", i): i for i in range(len(raw))}
    rows = np.array([index[i] for i in ids])
    np.testing.assert_array_equal(X[:, columns.index("lab:cd4")], raw["cd4"].to_numpy()[rows])
    np.testing.assert_array_equal(X[:, columns.index("hospital:age")], raw["age"].to_numpy()[rows])
    np.testing.assert_array_equal(X[:, columns.index("pharmacy:priorzdv")],
                                  raw["priorzdv"].to_numpy()[rows])
    np.testing.assert_array_equal(
        X[:, columns.index("hospital:karnof")], raw["karnof"].astype(float).to_numpy()[rows]
    )
    np.testing.assert_array_equal(y, outcome["censor"][rows].astype(int))


def test_actg_one_hot():
    d = load_actg320(one_hot=True)
    assert d.tables["hospital"].columns == (
        "sex", "raceth_2", "raceth_3", "raceth_4", "raceth_5", "ivdrug_2", "ivdrug_3",
        "hemophil", "karnof", "age",
    )
    assert d.tables["pharmacy"].columns == ("tx", "txgrp_2", "txgrp_3", "txgrp_4", "priorzdv")
    assert set(np.unique(d.tables["pharmacy"].features[:, 1:4])) <= {0.0, 1.0}


def test_overlap_options():
    d = load_actg320(coverage=1.0, extra=0.0)
    assert all(t.n_rows == 1151 for t in d.tables.values())
    assert len(d.intersection()) == 1151
    d = load_actg320(coverage={"lab": 0.5})
    assert d.tables["lab"].n_rows == round(0.5 * 1151) + round(0.03 * 1151)
    with pytest.raises(ConfigError, match="unknown parties"):
        load_actg320(coverage={"radiology": 0.5})
    with pytest.raises(ConfigError, match="fraction"):
        load_actg320(coverage=1.5)


def test_flchain_never_leaks_cause_of_death():
    d = load_flchain(impute={"creatinine": "median"})
    for t in d.tables.values():
        assert not any("chapter" in c for c in t.columns)
    assert "creatinine" in d.tables["lab"].imputed


def test_flchain_requires_a_policy_for_creatinine():
    with pytest.raises(MissingValuesError, match=r"creatinine: \d+") as err:
        load_flchain()
    assert "impute" in str(err.value)
    d = load_flchain(impute={"creatinine": "drop-rows"})
    assert np.isfinite(d.tables["lab"].features).all()


def test_gse7390_grade_imputation():
    d = load_gse7390(coverage=1.0, extra=0.0)
    assert d.tables["hospital"].imputed == {"grade": 2}  # the two "unkown" grades
    assert set(np.unique(d.tables["hospital"].features[:, 2])) == {1.0, 2.0, 3.0}
    with pytest.raises(MissingValuesError, match="grade: 2"):
        load_gse7390(coverage=1.0, extra=0.0, impute=None)


def test_sklearn_sets_split_columns():
    d = load_breast_cancer_vertical(n_parties=5)
    assert d.parties == ["hospital", "lab", "imaging", "genomics", "pharmacy"]
    assert sum(t.n_features for t in d.tables.values()) == 30
    d = load_diabetes_vertical(n_parties=3)
    assert [t.n_features for t in d.tables.values()] == [4, 3, 3]
    assert set(np.unique(d.tables["hospital"].features[:, 1])) == {0.0, 1.0}  # sex
    with pytest.raises(ConfigError):
        load_diabetes_vertical(n_parties=11)


def _mean_abs_corr(X: np.ndarray, y: np.ndarray) -> float:
    Xc = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    yc = (y - y.mean()) / y.std()
    return float(np.abs(Xc.T @ yc / len(y)).mean())


def test_multiomics_signal_blocks_carry_the_signal():
    d = make_multiomics(n=1500, seed=3)
    assert d.signal_blocks == ("transcriptomics", "proteomics")
    _, X, y, columns = d.pooled()
    score = {p: _mean_abs_corr(X[:, [c.startswith(p + ":") for c in columns]], y)
             for p in d.parties}
    noise = max(score["genomics"], score["prescriptions"])
    assert min(score["transcriptomics"], score["proteomics"]) > 3 * noise
    rx = d.tables["prescriptions"].features
    assert set(np.unique(rx)) == {0.0, 1.0}
    assert set(np.unique(d.tables["genomics"].features)) == {0.0, 1.0, 2.0}


def test_multiomics_options():
    d = make_multiomics(n=300, task="multiclass", n_classes=4, signal_blocks=("genomics",))
    assert d.n_classes == 4 and set(np.unique(d.tables["hospital"].labels)) == {0, 1, 2, 3}
    assert d.signal_blocks == ("genomics",)
    d = make_multiomics(n=300, task="regression", block_widths={"proteomics": 5},
                        signal_blocks=("proteomics",))
    assert d.n_classes is None and d.parties == ["hospital", "proteomics"]
    with pytest.raises(MissingValuesError, match="impute"):
        make_multiomics(n=300, missingness=0.1)
    d = make_multiomics(n=300, missingness={"proteomics": 0.1}, impute="mean")
    assert d.tables["proteomics"].imputed and not d.tables["genomics"].imputed
    with pytest.raises(ConfigError, match="not blocks"):
        make_multiomics(n=300, signal_blocks=("metabolomics",))


def test_registry():
    assert load("diabetes", seed=2).name == "diabetes"
    with pytest.raises(ConfigError, match="unknown data set"):
        load("mimic")
