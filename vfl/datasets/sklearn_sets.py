"""scikit-learn's bundled breast cancer and diabetes sets, split column-wise across parties.

Both are read from files inside the scikit-learn package (``load_*``, never ``fetch_*``).
Columns are split into contiguous groups, one per party, in the order the source gives
them: the active party ``"hospital"`` first, then ``"lab"``, ``"imaging"``, ... .
"""

from __future__ import annotations

import numpy as np

from vfl.core.errors import ConfigError
from vfl.datasets.base import VerticalDataset
from vfl.datasets.overlap import EXTRA, Coverage, Impute, overlap_note, split_vertical

PARTY_NAMES = ("hospital", "lab", "imaging", "genomics", "pharmacy", "registry", "insurer",
               "wearables")


def party_names(n_parties: int) -> list[str]:
    if n_parties < 1:
        raise ConfigError(f"n_parties is {n_parties}; use at least 1")
    names = list(PARTY_NAMES[:n_parties])
    names += [f"party{k}" for k in range(len(names), n_parties)]
    return names


def _split_columns(columns: list[str], X: np.ndarray, n_parties: int):
    if n_parties > len(columns):
        raise ConfigError(
            f"n_parties is {n_parties} but there are only {len(columns)} columns; use at most "
            f"{len(columns)} parties"
        )
    groups = np.array_split(np.arange(len(columns)), n_parties)
    return {
        p: ([columns[j] for j in g], X[:, g]) for p, g in zip(party_names(n_parties), groups)
    }


def _column_split_dataset(name: str, task: str, columns: list[str], X: np.ndarray, y,
                          label: str, n_classes: int | None, n_parties: int, about: str,
                          source: str, *, seed: int, coverage: Coverage, extra: float,
                          impute: Impute) -> VerticalDataset:
    """Split ``X``'s columns into ``n_parties`` contiguous groups and build the dataset;
    ``about`` is the description's opening, with ``{groups}`` for the party list."""
    blocks = _split_columns(columns, X, n_parties)
    tables = split_vertical(name, blocks, y, label, seed=seed, coverage=coverage, extra=extra,
                            impute=impute)
    description = about.format(groups=", ".join(blocks)) + overlap_note(tables, len(y), extra)
    return VerticalDataset(
        name=name, task=task, active="hospital", tables=tables, label_name=label,
        n_classes=n_classes, description=description, source=source, n_cohort=len(y),
    )


def load_breast_cancer_vertical(seed: int = 0, n_parties: int = 3, *, coverage: Coverage = None,
                                extra: float = EXTRA, impute: Impute = None) -> VerticalDataset:
    """Wisconsin diagnostic breast cancer (569 tumours, 30 image features), binary.

    Label ``malignant``: 1 = malignant, 0 = benign (scikit-learn's ``target`` codes
    malignant as 0; it is flipped here so the positive class is the disease). Column
    names use underscores (``mean_radius``). The 30 columns are split into ``n_parties``
    contiguous groups (hospital, lab, imaging, ...).
    """
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    columns = [c.replace(" ", "_") for c in data.feature_names]
    X = np.asarray(data.data, dtype=np.float64)
    y = (data.target == 0).astype(np.int64)
    about = (
        "Wisconsin diagnostic breast cancer (Street, Wolberg and Mangasarian 1993), bundled "
        "with scikit-learn: 30 features of cell nuclei from fine-needle aspirate images. "
        "Label `malignant`: 1 = malignant, 0 = benign (binary). Split: the 30 columns in "
        f"{n_parties} contiguous groups ({{groups}}). "
    )
    return _column_split_dataset(
        "breast_cancer", "binary", columns, X, y, "malignant", 2, n_parties, about,
        "scikit-learn load_breast_cancer (Wisconsin diagnostic)", seed=seed,
        coverage=coverage, extra=extra, impute=impute)


def load_diabetes_vertical(seed: int = 0, n_parties: int = 2, *, coverage: Coverage = None,
                           extra: float = EXTRA, impute: Impute = None) -> VerticalDataset:
    """Diabetes progression (442 patients, 10 baseline variables), regression.

    Raw (unscaled) values: ``age``, ``sex`` (0/1; the source codes 1/2 and does not say
    which is which), ``bmi``, ``bp``, serum measurements ``s1``-``s6``. Label
    ``progression``: a quantitative measure of disease progression one year after
    baseline. The 10 columns are split into ``n_parties`` contiguous groups.
    """
    from sklearn.datasets import load_diabetes

    data = load_diabetes(scaled=False)
    columns = list(data.feature_names)
    X = np.asarray(data.data, dtype=np.float64).copy()
    X[:, columns.index("sex")] -= 1.0
    y = np.asarray(data.target, dtype=np.float64)
    about = (
        "Diabetes progression (Efron et al. 2004, 'Least Angle Regression'), bundled with "
        "scikit-learn, unscaled. Label `progression`: disease progression one year after "
        "baseline (regression). Split: age, sex, BMI, blood pressure and six serum "
        f"measurements in {n_parties} contiguous groups ({{groups}}). "
    )
    return _column_split_dataset(
        "diabetes", "regression", columns, X, y, "progression", None, n_parties, about,
        "scikit-learn load_diabetes (Efron et al. 2004)", seed=seed, coverage=coverage,
        extra=extra, impute=impute)
