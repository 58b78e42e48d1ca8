"""Real clinical cohorts shipped inside scikit-survival (no download at run time).

Categorical columns are converted explicitly, never silently:

* binary categories become 0/1 (which level is 1 is stated per loader);
* ordinal categories become their number (Karnofsky score 70..100, grade 1..3, FLC decile);
* nominal multi-level categories (race/ethnicity, treatment group, IV drug use) are kept
  as their integer codes, or expanded to 0/1 indicator columns ``<name>_<level>`` (the
  first level is the reference and is dropped) with ``one_hot=True``.

The survival outcome's event indicator is the label (a binary task); follow-up time is
not a feature.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pandas as pd

from vfl.datasets.base import VerticalDataset
from vfl.datasets.overlap import EXTRA, Coverage, Impute, overlap_note, split_vertical


def _number(series: pd.Series) -> np.ndarray:
    """Category labels that are numbers ("70", "1995") as floats; NaN stays NaN."""
    return pd.to_numeric(series.astype(object), errors="raise").to_numpy(dtype=np.float64)


def _flag(series: pd.Series, one: str) -> np.ndarray:
    """1.0 where the category equals ``one``, else 0.0 (NaN stays NaN)."""
    values = series.astype(object)
    out = (values == one).to_numpy(dtype=np.float64)
    out[values.isna().to_numpy()] = np.nan
    return out


def _nominal(frame: pd.DataFrame, column: str, one_hot: bool) -> dict[str, np.ndarray]:
    if not one_hot:
        return {column: _number(frame[column])}
    levels = list(frame[column].cat.categories)
    return {f"{column}_{lv}": _flag(frame[column], lv) for lv in levels[1:]}


def _block(columns: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    return list(columns), np.column_stack(list(columns.values()))


def _dataset(name, task, blocks, y, label_name, description, source, *, seed, coverage,
             extra, impute) -> VerticalDataset:
    tables = split_vertical(name, blocks, y, label_name, seed=seed, coverage=coverage,
                            extra=extra, impute=impute)
    active = next(iter(blocks))
    return VerticalDataset(
        name=name, task=task, active=active, tables=tables, label_name=label_name,
        n_classes=2 if task == "binary" else None,
        description=f"{description} {overlap_note(tables, len(y), extra)}",
        source=source, n_cohort=len(y),
    )


def load_actg320(seed: int = 0, *, coverage: Coverage = None, extra: float = EXTRA,
                 one_hot: bool = False, impute: Impute = None) -> VerticalDataset:
    """ACTG 320 HIV trial (1151 patients): hospital, lab and pharmacy.

    * hospital (active): ``sex`` (1 = male, 0 = female), ``raceth`` (codes 1-5),
      ``ivdrug`` (codes 1 never, 2 currently, 3 previously), ``hemophil`` (0/1),
      ``karnof`` (Karnofsky score 70-100), ``age``; label ``censor`` (1 = AIDS-defining
      event or death during follow-up, 0 = censored);
    * lab: ``cd4`` (baseline CD4 count), ``strat2`` (1 = CD4 > 50);
    * pharmacy: ``tx`` (1 = indinavir arm), ``txgrp`` (codes 1-4), ``priorzdv``
      (months of prior zidovudine).
    """
    from sksurv.datasets import load_aids

    X, outcome = load_aids(endpoint="aids")
    hospital = {"sex": _flag(X["sex"], "1")}
    hospital |= _nominal(X, "raceth", one_hot) | _nominal(X, "ivdrug", one_hot)
    hospital |= {"hemophil": _flag(X["hemophil"], "1"), "karnof": _number(X["karnof"]),
                 "age": X["age"].to_numpy(np.float64)}
    lab = {"cd4": X["cd4"].to_numpy(np.float64), "strat2": _flag(X["strat2"], "1")}
    pharmacy = {"tx": _flag(X["tx"], "1")} | _nominal(X, "txgrp", one_hot)
    pharmacy |= {"priorzdv": X["priorzdv"].to_numpy(np.float64)}
    blocks = {"hospital": _block(hospital), "lab": _block(lab), "pharmacy": _block(pharmacy)}
    y = outcome["censor"].astype(np.int64)
    coding = "one-hot indicators" if one_hot else "integer codes"
    source = "scikit-survival load_aids(endpoint='aids') (ACTG 320)"
    return _dataset("actg320", "binary", blocks, y, "censor", (
        "ACTG 320, a randomized trial of indinavir added to zidovudine and lamivudine in "
        "HIV-infected adults with CD4 <= 200 (Hammer et al. 1997), as shipped with "
        "scikit-survival. Label `censor`: 1 if an AIDS-defining event or death occurred "
        "during follow-up, else 0 (binary; follow-up time is not used). Split: demographics "
        "and history at the hospital, CD4 at the lab, treatment arm and prior zidovudine at "
        f"the pharmacy. Race/ethnicity, IV drug use and treatment group are {coding}."
    ), source, seed=seed, coverage=coverage, extra=extra, impute=impute)


GSE7390_IMPUTE = MappingProxyType({"grade": "median"})
_GRADE = {"well differentiated": 1.0, "intermediate": 2.0, "poorly differentiated": 3.0}


def load_gse7390(seed: int = 0, *, coverage: Coverage = None, extra: float = EXTRA,
                 impute: Impute = GSE7390_IMPUTE) -> VerticalDataset:
    """GSE7390 breast cancer (198 patients): clinical variables + 76-gene expression.

    * hospital (active): ``age``, ``size`` (tumour cm), ``grade`` (1 well, 2 intermediate,
      3 poorly differentiated; the 2 "unkown" grades are NaN and, by default, filled with
      the hospital's median via ``impute={"grade": "median"}``), ``er`` (1 = positive);
      label ``e.tdm`` (1 = distant metastasis during follow-up);
    * genomics_lab: the 76 expression probes.
    """
    from sksurv.datasets import load_breast_cancer

    X, outcome = load_breast_cancer()
    grade = X["grade"].astype(object).map(_GRADE).to_numpy(dtype=np.float64)
    hospital = {"age": X["age"].to_numpy(np.float64), "size": X["size"].to_numpy(np.float64),
                "grade": grade, "er": _flag(X["er"], "positive")}
    genes = [c for c in X.columns if c not in hospital]
    blocks = {"hospital": _block(hospital),
              "genomics_lab": (genes, X[genes].to_numpy(np.float64))}
    y = outcome["e.tdm"].astype(np.int64)
    description = (
        "GSE7390 (TRANSBIG, Desmedt et al. 2007): untreated node-negative breast cancer, "
        "as shipped with scikit-survival. Label `e.tdm`: 1 if distant metastasis occurred "
        "during follow-up (binary). Split: age, tumour size, grade and ER status at the "
        "hospital; the 76-gene expression signature at the genomics lab. Grade "
        "'unkown' (2 patients) is missing and imputed by the hospital's median unless "
        "another policy is given."
    )
    return _dataset("gse7390", "binary", blocks, y, "e.tdm", description,
                    "scikit-survival load_breast_cancer (GSE7390)", seed=seed,
                    coverage=coverage, extra=extra, impute=impute)


def load_flchain(seed: int = 0, *, impute: Impute = None, coverage: Coverage = None,
                 extra: float = EXTRA) -> VerticalDataset:
    """Mayo serum free light chain study (7874 residents of Olmsted County).

    * hospital (active): ``age``, ``sex`` (1 = male), ``sample.yr`` (year);
      label ``death`` (1 = died during follow-up);
    * lab: ``kappa``, ``lambda``, ``flc.grp`` (FLC decile 1-10), ``creatinine``,
      ``mgus`` (1 = yes).

    ``chapter`` (cause of death) is never included: it is only recorded for those who
    died, so it leaks the label. ``creatinine`` has missing values (1350 in the cohort):
    without ``impute`` the lab's table raises :class:`~vfl.core.errors.MissingValuesError`;
    choose a policy, e.g. ``impute={"creatinine": "median"}``.
    """
    from sksurv.datasets import load_flchain as _load

    X, outcome = _load()
    hospital = {"age": X["age"].to_numpy(np.float64), "sex": _flag(X["sex"], "M"),
                "sample.yr": _number(X["sample.yr"])}
    lab = {"kappa": X["kappa"].to_numpy(np.float64), "lambda": X["lambda"].to_numpy(np.float64),
           "flc.grp": _number(X["flc.grp"]),
           "creatinine": X["creatinine"].to_numpy(np.float64, na_value=np.nan),
           "mgus": _flag(X["mgus"], "yes")}
    blocks = {"hospital": _block(hospital), "lab": _block(lab)}
    y = outcome["death"].astype(np.int64)
    description = (
        "Serum free light chain study (Dispenzieri et al. 2012; Kyle et al.), as shipped "
        "with scikit-survival. Label `death`: 1 if the resident died during follow-up "
        "(binary). Split: age, sex and sample year at the hospital; kappa, lambda, FLC "
        "group, creatinine and MGUS at the lab. Cause of death (`chapter`) is excluded "
        "because it leaks the label. Creatinine is missing for some patients; the lab's "
        f"imputation policy is {dict(impute) if isinstance(impute, dict) else impute!r}."
    )
    return _dataset("flchain", "binary", blocks, y, "death", description,
                    "scikit-survival load_flchain (Mayo FLC study)", seed=seed,
                    coverage=coverage, extra=extra, impute=impute)


def load_gbsg2(seed: int = 0, *, coverage: Coverage = None, extra: float = EXTRA,
               impute: Impute = None) -> VerticalDataset:
    """German Breast Cancer Study Group 2 (686 patients): hospital, pathology, pharmacy.

    * hospital (active): ``age``, ``menostat`` (1 = post-menopausal), ``tsize`` (mm),
      ``pnodes`` (positive nodes); label ``cens`` (1 = recurrence or death observed);
    * pathology: ``tgrade`` (I-III as 1-3), ``progrec``, ``estrec`` (receptors fmol/l);
    * pharmacy: ``horTh`` (1 = hormonal therapy).
    """
    from sksurv.datasets import load_gbsg2 as _load

    X, outcome = _load()
    hospital = {"age": X["age"].to_numpy(np.float64), "menostat": _flag(X["menostat"], "Post"),
                "tsize": X["tsize"].to_numpy(np.float64),
                "pnodes": X["pnodes"].to_numpy(np.float64)}
    grade = X["tgrade"].astype(object).map({"I": 1.0, "II": 2.0, "III": 3.0})
    pathology = {"tgrade": grade.to_numpy(np.float64),
                 "progrec": X["progrec"].to_numpy(np.float64),
                 "estrec": X["estrec"].to_numpy(np.float64)}
    pharmacy = {"horTh": _flag(X["horTh"], "yes")}
    blocks = {"hospital": _block(hospital), "pathology": _block(pathology),
              "pharmacy": _block(pharmacy)}
    y = outcome["cens"].astype(np.int64)
    description = (
        "GBSG2 trial of node-positive breast cancer (Schumacher et al. 1994), as shipped "
        "with scikit-survival. Label `cens`: 1 if recurrence-free survival ended in an "
        "observed event (binary). Split: age, menopausal status, tumour size and positive "
        "nodes at the hospital; grade and receptor levels at pathology; hormonal therapy "
        "at the pharmacy."
    )
    return _dataset("gbsg2", "binary", blocks, y, "cens", description,
                    "scikit-survival load_gbsg2 (GBSG2)", seed=seed, coverage=coverage,
                    extra=extra, impute=impute)
