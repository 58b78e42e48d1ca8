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
    blocks = _split_columns(columns, X, n_parties)
    tables = split_vertical("breast_cancer", blocks, y, "malignant", seed=seed,
                            coverage=coverage, extra=extra, impute=impute)
    description = (
        "Wisconsin diagnostic breast cancer (Street, Wolberg and Mangasarian 1993), bundled "
        "with scikit-learn: 30 features of cell nuclei from fine-needle aspirate images. "
        "Label `malignant`: 1 = malignant, 0 = benign (binary). Split: the 30 columns in "
        f"{n_parties} contiguous groups ({', '.join(blocks)}). "
        + overlap_note(tables, len(y), extra)
    )
    return VerticalDataset(
        name="breast_cancer", task="binary", active="hospital", tables=tables,
        label_name="malignant", n_classes=2, description=description,
        source="scikit-learn load_breast_cancer (Wisconsin diagnostic)", n_cohort=len(y),
    )


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
    blocks = _split_columns(columns, X, n_parties)
    tables = split_vertical("diabetes", blocks, y, "progression", seed=seed,
                            coverage=coverage, extra=extra, impute=impute)
    description = (
        "Diabetes progression (Efron et al. 2004, 'Least Angle Regression'), bundled with "
        "scikit-learn, unscaled. Label `progression`: disease progression one year after "
        "baseline (regression). Split: age, sex, BMI, blood pressure and six serum "
        f"measurements in {n_parties} contiguous groups ({', '.join(blocks)}). "
        + overlap_note(tables, len(y), extra)
    )
    return VerticalDataset(
        name="diabetes", task="regression", active="hospital", tables=tables,
        label_name="progression", n_classes=None, description=description,
        source="scikit-learn load_diabetes (Efron et al. 2004)", n_cohort=len(y),
    )
