"""Real clinical cohorts shipped inside scikit-survival (no download at run time).

Categorical columns are converted explicitly, never silently:

* binary categories become 0/1 (which level is 1 is stated per loader);
* ordinal categories become their number (Karnofsky score 70..100, grade 1..3, FLC decile);
* nominal multi-level categories (race/ethnicity, treatment group, IV drug use) are kept
  as their integer codes, or expanded to 0/1 indicator columns ``<name>_<level>`` (the
  first level is the reference and is dropped) with ``one_hot=True``.

Every loader takes ``label``: ``"event"`` (the default of the four original cohorts) makes
the survival outcome's event indicator the label (a binary task; follow-up time is not
used); ``"survival"`` gives task ``"survival"`` with labels a float64 ``(n, 2)`` array
``[time, event]`` at the active party and ``label_name`` ``"<time column>,<event column>"``
(the columns scikit-survival ships, e.g. ``"time,censor"`` for ACTG 320), as
:mod:`vfl.survival.labels` reads them. Follow-up time is never a feature. The seed decides
the same rows, ids and features under either label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import pandas as pd

from vfl.core.errors import ConfigError, DuplicateColumnError, MissingColumnError
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


LABELS = ("event", "survival")


def _outcome(outcome, event: str, time: str, label: str) -> tuple[str, np.ndarray, str]:
    """``(task, labels, label_name)`` of a scikit-survival outcome for the chosen ``label``:
    the event indicator (binary), or ``[time, event]`` (survival)."""
    if label == "event":
        return "binary", outcome[event].astype(np.int64), event
    if label == "survival":
        labels = np.column_stack([outcome[time], outcome[event]]).astype(np.float64)
        return "survival", labels, f"{time},{event}"
    raise ConfigError(f"label must be one of {LABELS}, got {label!r}")


def _survival_text(event: str, time: str, what: str) -> str:
    return (f"Labels `{time},{event}` (survival): follow-up time `{time}` in days and event "
            f"indicator `{event}` (1 = {what} observed at that time, 0 = censored). ")


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
                 one_hot: bool = False, impute: Impute = None,
                 label: str = "event") -> VerticalDataset:
    """ACTG 320 HIV trial (1151 patients): hospital, lab and pharmacy.

    * hospital (active): ``sex`` (1 = male, 0 = female), ``raceth`` (codes 1-5),
      ``ivdrug`` (codes 1 never, 2 currently, 3 previously), ``hemophil`` (0/1),
      ``karnof`` (Karnofsky score 70-100), ``age``; label ``censor`` (1 = AIDS-defining
      event or death during follow-up, 0 = censored);
    * lab: ``cd4`` (baseline CD4 count), ``strat2`` (1 = CD4 > 50);
    * pharmacy: ``tx`` (1 = indinavir arm), ``txgrp`` (codes 1-4), ``priorzdv``
      (months of prior zidovudine).

    ``label="survival"``: labels ``[time, censor]``, label name ``"time,censor"``.
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
    task, y, label_name = _outcome(outcome, "censor", "time", label)
    coding = "one-hot indicators" if one_hot else "integer codes"
    source = "scikit-survival load_aids(endpoint='aids') (ACTG 320)"
    label_text = (
        "Label `censor`: 1 if an AIDS-defining event or death occurred during follow-up, "
        "else 0 (binary; follow-up time is not used). " if task == "binary"
        else _survival_text("censor", "time", "an AIDS-defining event or death"))
    return _dataset("actg320", task, blocks, y, label_name, (
        "ACTG 320, a randomized trial of indinavir added to zidovudine and lamivudine in "
        "HIV-infected adults with CD4 <= 200 (Hammer et al. 1997), as shipped with "
        "scikit-survival. " + label_text + "Split: demographics and history at the "
        "hospital, CD4 at the lab, treatment arm and prior zidovudine at "
        f"the pharmacy. Race/ethnicity, IV drug use and treatment group are {coding}."
    ), source, seed=seed, coverage=coverage, extra=extra, impute=impute)


GSE7390_IMPUTE = MappingProxyType({"grade": "median"})
_GRADE = {"well differentiated": 1.0, "intermediate": 2.0, "poorly differentiated": 3.0}


def load_gse7390(seed: int = 0, *, coverage: Coverage = None, extra: float = EXTRA,
                 impute: Impute = GSE7390_IMPUTE, label: str = "event") -> VerticalDataset:
    """GSE7390 breast cancer (198 patients): clinical variables + 76-gene expression.

    * hospital (active): ``age``, ``size`` (tumour cm), ``grade`` (1 well, 2 intermediate,
      3 poorly differentiated; the 2 "unkown" grades are NaN and, by default, filled with
      the hospital's median via ``impute={"grade": "median"}``), ``er`` (1 = positive);
      label ``e.tdm`` (1 = distant metastasis during follow-up);
    * genomics_lab: the 76 expression probes.

    ``label="survival"``: labels ``[t.tdm, e.tdm]`` (time to distant metastasis, the time
    of the binary label's event), label name ``"t.tdm,e.tdm"``.
    """
    from sksurv.datasets import load_breast_cancer

    X, outcome = load_breast_cancer()
    grade = X["grade"].astype(object).map(_GRADE).to_numpy(dtype=np.float64)
    hospital = {"age": X["age"].to_numpy(np.float64), "size": X["size"].to_numpy(np.float64),
                "grade": grade, "er": _flag(X["er"], "positive")}
    genes = [c for c in X.columns if c not in hospital]
    blocks = {"hospital": _block(hospital),
              "genomics_lab": (genes, X[genes].to_numpy(np.float64))}
    task, y, label_name = _outcome(outcome, "e.tdm", "t.tdm", label)
    label_text = (
        "Label `e.tdm`: 1 if distant metastasis occurred during follow-up (binary). "
        if task == "binary" else _survival_text("e.tdm", "t.tdm", "distant metastasis"))
    description = (
        "GSE7390 (TRANSBIG, Desmedt et al. 2007): untreated node-negative breast cancer, "
        "as shipped with scikit-survival. " + label_text + "Split: age, tumour size, grade "
        "and ER status at the hospital; the 76-gene expression signature at the genomics "
        "lab. Grade "
        "'unkown' (2 patients) is missing and imputed by the hospital's median unless "
        "another policy is given."
    )
    return _dataset("gse7390", task, blocks, y, label_name, description,
                    "scikit-survival load_breast_cancer (GSE7390)", seed=seed,
                    coverage=coverage, extra=extra, impute=impute)


def load_flchain(seed: int = 0, *, impute: Impute = None, coverage: Coverage = None,
                 extra: float = EXTRA, label: str = "event") -> VerticalDataset:
    """Mayo serum free light chain study (7874 residents of Olmsted County).

    * hospital (active): ``age``, ``sex`` (1 = male), ``sample.yr`` (year);
      label ``death`` (1 = died during follow-up);
    * lab: ``kappa``, ``lambda``, ``flc.grp`` (FLC decile 1-10), ``creatinine``,
      ``mgus`` (1 = yes).

    ``chapter`` (cause of death) is never included: it is only recorded for those who
    died, so it leaks the label. ``creatinine`` has missing values (1350 in the cohort):
    without ``impute`` the lab's table raises :class:`~vfl.core.errors.MissingValuesError`;
    choose a policy, e.g. ``impute={"creatinine": "median"}``.

    ``label="survival"``: labels ``[futime, death]``, label name ``"futime,death"`` (3
    residents have follow-up time 0).
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
    task, y, label_name = _outcome(outcome, "death", "futime", label)
    label_text = (
        "Label `death`: 1 if the resident died during follow-up (binary). "
        if task == "binary" else _survival_text("death", "futime", "death"))
    description = (
        "Serum free light chain study (Dispenzieri et al. 2012; Kyle et al.), as shipped "
        "with scikit-survival. " + label_text + "Split: age, sex and sample year at the "
        "hospital; kappa, lambda, FLC "
        "group, creatinine and MGUS at the lab. Cause of death (`chapter`) is excluded "
        "because it leaks the label. Creatinine is missing for some patients; the lab's "
        f"imputation policy is {dict(impute) if isinstance(impute, dict) else impute!r}."
    )
    return _dataset("flchain", task, blocks, y, label_name, description,
                    "scikit-survival load_flchain (Mayo FLC study)", seed=seed,
                    coverage=coverage, extra=extra, impute=impute)


def load_gbsg2(seed: int = 0, *, coverage: Coverage = None, extra: float = EXTRA,
               impute: Impute = None, label: str = "event") -> VerticalDataset:
    """German Breast Cancer Study Group 2 (686 patients): hospital, pathology, pharmacy.

    * hospital (active): ``age``, ``menostat`` (1 = post-menopausal), ``tsize`` (mm),
      ``pnodes`` (positive nodes); label ``cens`` (1 = recurrence or death observed);
    * pathology: ``tgrade`` (I-III as 1-3), ``progrec``, ``estrec`` (receptors fmol/l);
    * pharmacy: ``horTh`` (1 = hormonal therapy).

    ``label="survival"``: labels ``[time, cens]`` (recurrence-free survival), label name
    ``"time,cens"``.
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
    task, y, label_name = _outcome(outcome, "cens", "time", label)
    label_text = (
        "Label `cens`: 1 if recurrence-free survival ended in an observed event (binary). "
        if task == "binary" else _survival_text("cens", "time", "recurrence or death"))
    description = (
        "GBSG2 trial of node-positive breast cancer (Schumacher et al. 1994), as shipped "
        "with scikit-survival. " + label_text + "Split: age, menopausal status, tumour "
        "size and positive "
        "nodes at the hospital; grade and receptor levels at pathology; hormonal therapy "
        "at the pharmacy."
    )
    return _dataset("gbsg2", task, blocks, y, label_name, description,
                    "scikit-survival load_gbsg2 (GBSG2)", seed=seed, coverage=coverage,
                    extra=extra, impute=impute)


# Worcester Heart Attack Study: which party records which covariate. The hospital (active,
# it follows the patients up) has the admission and in-hospital course; the GP clinic the
# patient's history; the lab the vital-sign and ECG measurements.
WHAS500_BLOCKS = MappingProxyType({
    "hospital": ("age", "gender", "hr", "los", "sho", "chf", "miord", "mitype"),
    "clinic": ("bmi", "cvd"),
    "lab": ("sysbp", "diasbp", "afb", "av3"),
})
_WHAS500_BINARY = ("gender", "sho", "chf", "miord", "mitype", "cvd", "afb", "av3")


def load_whas500(seed: int = 0, *, label: str = "event",
                 blocks: Mapping[str, Sequence[str]] | None = None, coverage: Coverage = None,
                 extra: float = EXTRA, impute: Impute = None) -> VerticalDataset:
    """Worcester Heart Attack Study (500 patients after acute myocardial infarction).

    Default ``blocks`` (:data:`WHAS500_BLOCKS`; the first party is active and holds the
    outcome):

    * hospital: ``age``, ``gender`` (1 = female), ``hr`` (heart rate at admission),
      ``los`` (days in hospital), ``sho`` (cardiogenic shock), ``chf`` (congestive heart
      complications), ``miord`` (1 = recurrent MI), ``mitype`` (1 = Q-wave MI);
    * clinic: ``bmi``, ``cvd`` (history of cardiovascular disease);
    * lab: ``sysbp``, ``diasbp`` (blood pressure at admission), ``afb`` (atrial
      fibrillation), ``av3`` (complete heart block).

    The binary categories become 0/1 with 1 = "1" in the source (= yes, female, recurrent,
    Q-wave). ``blocks`` maps party -> columns to use another split or a subset of the 14
    covariates. Outcome: ``lenfol`` (days of follow-up) and ``fstat`` (1 = died);
    ``label="survival"`` gives labels ``[lenfol, fstat]``, label name ``"lenfol,fstat"``;
    ``label="event"`` (the default, as for every loader: the split models' binary task) the
    binary ``fstat``.

    The defaults of ``coverage``/``extra`` leave each party a random 90-97 % of the cohort,
    so the intersection misses some patients. ``coverage=1.0`` gives every party every
    patient: the intersection (:meth:`~vfl.datasets.base.VerticalDataset.pooled`) is then the
    whole cohort (``extra`` only adds non-cohort rows, which never enter it; ``extra=0.0``
    drops them too).
    """
    from sksurv.datasets import load_whas500 as _load

    X, outcome = _load()
    chosen = {p: tuple(cols) for p, cols in (WHAS500_BLOCKS if blocks is None else blocks).items()}
    _check_blocks(chosen, list(X.columns))
    values = {c: _flag(X[c], "1") if c in _WHAS500_BINARY else X[c].to_numpy(np.float64)
              for c in X.columns}
    parts = {p: (list(cols), np.column_stack([values[c] for c in cols]))
             for p, cols in chosen.items()}
    task, y, label_name = _outcome(outcome, "fstat", "lenfol", label)
    label_text = ("Label `fstat`: 1 if the patient died during follow-up (binary). "
                  if task == "binary" else _survival_text("fstat", "lenfol", "death"))
    split = "; ".join(f"{', '.join(cols)} at the {p}" for p, cols in chosen.items())
    description = (
        "Worcester Heart Attack Study (WHAS500; Hosmer, Lemeshow and May 2008): patients "
        "admitted with acute myocardial infarction, as shipped with scikit-survival. "
        + label_text + f"Split: {split}."
    )
    return _dataset("whas500", task, parts, y, label_name, description,
                    "scikit-survival load_whas500 (WHAS500)", seed=seed, coverage=coverage,
                    extra=extra, impute=impute)


def _check_blocks(blocks: Mapping[str, tuple[str, ...]], available: list[str]) -> None:
    """Every party names at least one known column, and no column is at two parties."""
    if not blocks:
        raise ConfigError("blocks is empty; map at least the active party to its columns")
    empty = [p for p, cols in blocks.items() if not cols]
    if empty:
        raise ConfigError(f"parties {empty} have no columns; give each at least one or drop it")
    unknown = sorted({c for cols in blocks.values() for c in cols} - set(available))
    if unknown:
        raise MissingColumnError(f"columns {unknown} are not in the cohort; choose from "
                                 f"{available}")
    seen: dict[str, str] = {}
    for p, cols in blocks.items():
        for c in cols:
            if c in seen:
                where = f"twice to {p!r}" if seen[c] == p else f"to both {seen[c]!r} and {p!r}"
                raise DuplicateColumnError(
                    f"column {c!r} is given {where}; in a vertical split each column belongs "
                    "to one party, once"
                )
            seen[c] = p
