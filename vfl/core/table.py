"""A party's own table: identifiers, numeric features and (at the active party) labels.

Built from numpy, pandas, CSV or Parquet. Schema checks happen here, at the edge, so the
protocol code downstream can assume clean float64 matrices:

* every row has an identifier, and identifiers are unique;
* feature columns are numeric (encode categories yourself, or via the dataset loaders);
* NaN is an error naming the columns and counts, unless an explicit imputation policy is
  given (``"mean"``, ``"median"``, ``"zero"``, ``"drop-rows"``, or a per-column dict).
  Imputation statistics are computed from this party's own rows only;
* values are finite and at most :data:`MAX_FEATURE_MAGNITUDE` in magnitude (larger ones
  cannot be standardized in float64), labels are finite, the label and identifier columns
  are never also features, and column names are unique;
* labels are one value per row, or survival labels: an (n, 2) [time, event] array whose
  ``label_name`` ``"time,event"`` names the two file columns they are read from and
  written to (their values are checked by :mod:`vfl.survival.labels`, not here);
* a missing, unreadable or empty CSV/Parquet file raises a :class:`DataFileError` naming it.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vfl.core.errors import (
    DataFileError,
    DuplicateColumnError,
    DuplicateIdError,
    EmptyDataFileError,
    FeatureMagnitudeError,
    IdAsFeatureError,
    LabelAsFeatureError,
    LabelValueError,
    MissingColumnError,
    MissingIdError,
    MissingValuesError,
    NonFiniteLabelError,
    NonNumericColumnError,
    PartyDataError,
    SchemaMismatchError,
)

IMPUTE_POLICIES = ("mean", "median", "zero", "drop-rows")
# Largest feature magnitude accepted: squares (standardization, pooled moments) stay far from
# float64's 1.8e308 even summed over 1e8 rows. Real clinical values are many orders smaller.
MAX_FEATURE_MAGNITUDE = 1e150


@dataclass(frozen=True)
class PartyTable:
    """Rows of one party, keyed by pseudonymous identifiers."""

    ids: np.ndarray  # dtype object (str), shape (n,)
    features: np.ndarray  # float64, shape (n, d)
    columns: tuple[str, ...]
    # At the active party only: shape (n,), or (n, 2) [time, event] for survival labels
    # (label_name then names both columns, "time,event"; see label_columns()).
    labels: np.ndarray | None = None
    label_name: str | None = None
    imputed: dict[str, int] = field(default_factory=dict)  # column -> values filled

    def __post_init__(self):
        if self.features.ndim != 2 or self.features.shape[0] != len(self.ids):
            raise PartyDataError(
                f"features must be (rows, columns) with one row per id; got "
                f"{self.features.shape} for {len(self.ids)} ids"
            )
        if self.features.shape[1] != len(self.columns):
            raise PartyDataError(
                f"{self.features.shape[1]} feature columns but {len(self.columns)} names"
            )
        if self.labels is not None and len(self.labels) != len(self.ids):
            raise PartyDataError("labels must have one value per row")

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    @functools.cached_property
    def _position(self) -> dict:
        """id -> row position, built once per table (tables are never modified in place)."""
        return {v: i for i, v in enumerate(self.ids)}

    @property
    def n_features(self) -> int:
        return len(self.columns)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_numpy(
        cls,
        ids: Sequence,
        features: np.ndarray,
        columns: Sequence[str] | None = None,
        labels: Sequence | None = None,
        label_name: str | None = None,
        impute: str | Mapping[str, str] | None = None,
    ) -> PartyTable:
        features = np.asarray(features)
        if features.ndim == 1:
            features = features[:, None]
        if features.ndim != 2:
            raise PartyDataError(f"features must be 2-D, got shape {features.shape}")
        columns = tuple(columns) if columns is not None else tuple(
            f"x{i}" for i in range(features.shape[1])
        )
        if features.dtype.kind not in "biuf":
            raise NonNumericColumnError(
                f"feature matrix has dtype {features.dtype}; all feature columns must be "
                "numeric. Encode categorical columns (one-hot or ordinal) before building "
                "the table."
            )
        data = {c: features[:, j] for j, c in enumerate(columns)}
        return cls._build(np.asarray(ids, dtype=object), data, columns, labels, label_name, impute)

    @classmethod
    def from_frame(
        cls,
        frame,
        id_column: str,
        label_column: str | None = None,
        feature_columns: Sequence[str] | None = None,
        impute: str | Mapping[str, str] | None = None,
    ) -> PartyTable:
        """Build from a pandas DataFrame with an identifier column."""
        # "time,event" names two columns (survival labels), unless one column has that name.
        label_parts = (label_column,) if label_column in frame.columns else (
            label_columns(label_column))
        if len(label_parts) > 2:
            raise LabelValueError(
                f"label_column {label_column!r} names {len(label_parts)} columns; give one "
                "label column, or two ('time,event') for survival labels"
            )
        for col in [id_column, *label_parts]:
            if col not in frame.columns:
                raise MissingColumnError(
                    f"column {col!r} is not in the table; columns are {list(frame.columns)}"
                )
        if feature_columns is None:
            feature_columns = [c for c in frame.columns if c not in (id_column, *label_parts)]
        feature_columns = list(feature_columns)
        for part in label_parts:
            if part in feature_columns:
                raise LabelAsFeatureError(
                    f"the label column {part!r} is also listed as a feature column; the "
                    "model would be trained on the answer. Remove it from feature_columns."
                )
        if id_column in feature_columns:
            raise IdAsFeatureError(
                f"the identifier column {id_column!r} is also listed as a feature column; "
                "identifiers are for alignment only. Remove it from feature_columns."
            )
        missing = [c for c in feature_columns if c not in frame.columns]
        if missing:
            raise MissingColumnError(
                f"feature columns {missing} are not in the table; columns are "
                f"{list(frame.columns)}"
            )
        bad = [c for c in feature_columns if frame[c].dtype.kind not in "biuf"]
        if bad:
            raise NonNumericColumnError(
                f"non-numeric feature columns {bad} (dtypes "
                f"{[str(frame[c].dtype) for c in bad]}); encode them as numbers (one-hot or "
                "ordinal) or leave them out with feature_columns=..."
            )
        ids = frame[id_column].to_numpy(dtype=object)
        data = {c: frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in feature_columns}
        if len(label_parts) == 2:  # survival labels: (n, 2) [time, event]
            labels = frame[list(label_parts)].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            labels = frame[label_column].to_numpy() if label_column else None
        return cls._build(ids, data, tuple(feature_columns), labels, label_column, impute)

    @classmethod
    def from_csv(cls, path: str | Path, id_column: str, **kwargs) -> PartyTable:
        import pandas as pd

        frame = _read_file(path, "CSV", lambda p: pd.read_csv(p, dtype={id_column: str}))
        return cls.from_frame(frame, id_column, **kwargs)

    @classmethod
    def from_parquet(cls, path: str | Path, id_column: str, **kwargs) -> PartyTable:
        import pandas as pd

        frame = _read_file(path, "Parquet", pd.read_parquet)
        if id_column in frame.columns:
            frame[id_column] = frame[id_column].astype(object)
        return cls.from_frame(frame, id_column, **kwargs)

    @classmethod
    def from_file(cls, path: str | Path, id_column: str, label_column: str | None = None,
                  **kwargs) -> PartyTable:
        """A CSV or Parquet file (by its suffix: ``.parquet``/``.pq``, else CSV): what a
        deployed node loads from its operator's ``--data``. ``label_column="time,event"``
        (two names) reads survival labels, an (n, 2) [time, event] array."""
        read = cls.from_parquet if Path(path).suffix.lower() in (".parquet", ".pq") else (
            cls.from_csv
        )
        return read(path, id_column, label_column=label_column, **kwargs)

    @classmethod
    def _build(cls, ids, data, columns, labels, label_name, impute) -> PartyTable:
        dup = sorted((c for c, k in Counter(columns).items() if k > 1), key=str)
        if dup:
            raise DuplicateColumnError(
                f"feature columns {dup} appear more than once; give every column a distinct "
                "name (or list it once in feature_columns)"
            )
        ids = _check_ids(ids)
        n = len(ids)
        feats = np.empty((n, len(columns)), dtype=np.float64)
        for j, c in enumerate(columns):
            feats[:, j] = np.asarray(data[c], dtype=np.float64)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.dtype == bool:
                labels = labels.astype(np.int32)
            _check_label_shape(labels, label_name)
            if labels.dtype.kind == "f" and np.isnan(labels).any():
                raise MissingValuesError(
                    f"label column {label_name!r} has {int(np.isnan(labels).sum())} missing "
                    "values; drop those rows before building the table"
                )
            if labels.dtype.kind in "fc" and np.isinf(labels).any():
                raise NonFiniteLabelError(
                    f"label column {label_name!r} has {int(np.isinf(labels).sum())} infinite "
                    "values; fix or drop those rows before building the table"
                )
        keep, imputed = _impute(feats, columns, impute)
        if keep is not None:
            ids, feats = ids[keep], feats[keep]
            labels = labels[keep] if labels is not None else None
        if not np.isfinite(feats).all():
            bad = [c for j, c in enumerate(columns) if not np.isfinite(feats[:, j]).all()]
            raise PartyDataError(f"columns {bad} contain infinite values; fix or drop them")
        _check_magnitude(feats, columns)
        return cls(ids, feats, tuple(columns), labels, label_name, imputed)

    # -- operations -----------------------------------------------------------------------
    def to_frame(self, id_column: str = "id"):
        """The table as a pandas DataFrame (ids, features, then the label if any; survival
        labels as two columns named by ``label_name``): what :meth:`from_frame` reads back to
        an equal table (with ``label_column=label_name``)."""
        import pandas as pd

        frame = pd.DataFrame(self.features, columns=list(self.columns))
        frame.insert(0, id_column, np.asarray(self.ids, dtype=object))
        if self.labels is not None and self.labels.ndim == 2:
            time_name, event_name = label_columns(self.label_name or "time,event")
            frame[time_name], frame[event_name] = self.labels[:, 0], self.labels[:, 1]
        elif self.labels is not None:
            frame[self.label_name or "label"] = self.labels
        return frame

    def to_csv(self, path: str | Path, id_column: str = "id") -> Path:
        """Write the table as CSV (floats to their shortest exact repr: lossless)."""
        path = Path(path)
        self.to_frame(id_column).to_csv(path, index=False, float_format=None)
        return path

    def rows(self, ids: Sequence) -> PartyTable:
        """The rows for ``ids``, in that order (every id must be present)."""
        index = self._position
        try:
            pos = np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise PartyDataError(f"identifier {exc.args[0]!r} is not in this table") from None
        return PartyTable(
            self.ids[pos],
            self.features[pos],
            self.columns,
            None if self.labels is None else self.labels[pos],
            self.label_name,
            self.imputed,
        )

    def without(self, ids) -> PartyTable:
        """This table minus the rows of ``ids`` (compared as ``str``), the others in their
        order; the table itself when it holds none of them."""
        gone = {str(i) for i in ids}
        keep = [i for i in self.ids if str(i) not in gone]
        return self if len(keep) == self.n_rows else self.rows(keep)

    def without_labels(self) -> PartyTable:
        return PartyTable(self.ids, self.features, self.columns, None, None, self.imputed)

    def check_schema(self, columns: Sequence[str]) -> None:
        """Raise :class:`SchemaMismatchError` unless the columns equal ``columns``."""
        if tuple(columns) != self.columns:
            extra = [c for c in self.columns if c not in columns]
            lost = [c for c in columns if c not in self.columns]
            raise SchemaMismatchError(
                f"the table's columns differ from training: missing {lost}, unexpected "
                f"{extra}, order {'differs' if not extra and not lost else 'n/a'}. Provide "
                f"exactly the training columns {list(columns)} in that order."
            )


def label_columns(label_name: str | None) -> tuple[str, ...]:
    """The file columns a label name stands for: ``"time,event"`` (survival labels) names
    two, any other name one, None none."""
    if not label_name:
        return ()
    return tuple(p.strip() for p in label_name.split(",")) if "," in label_name else (
        label_name,)


def _check_label_shape(labels: np.ndarray, label_name: str | None) -> None:
    """Labels are one value per row, or survival labels (n, 2) named by two columns."""
    if labels.ndim == 1:
        return
    if labels.ndim != 2 or labels.shape[1] != 2:
        raise LabelValueError(
            f"labels must be one value per row, or (rows, 2) [time, event] survival labels; "
            f"got shape {labels.shape}"
        )
    if label_name is not None and len(label_columns(label_name)) != 2:
        raise LabelValueError(
            f"survival labels (rows, 2) need a label name for both columns, like "
            f"'time,event'; got {label_name!r}"
        )


def _read_file(path, kind: str, read):
    """``read(path)`` as a DataFrame; a missing, unreadable, malformed or empty file raises a
    :class:`DataFileError` naming it instead of a pandas or OS traceback."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataFileError(f"{kind} file {str(path)!r} {what}; check the path")
    try:
        frame = read(path)
    except pd.errors.EmptyDataError:
        raise EmptyDataFileError(
            f"{kind} file {str(path)!r} is empty (no header, no rows); export the table with "
            "a header row and at least one data row"
        ) from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # incl. UnicodeDecodeError
        raise DataFileError(
            f"{kind} file {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); check "
            f"that it is a well-formed {kind} file"
        ) from None
    except Exception as exc:  # pyarrow's errors for a corrupt Parquet file
        if type(exc).__module__.split(".")[0] not in ("pyarrow", "fastparquet"):
            raise
        raise DataFileError(
            f"{kind} file {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); check "
            f"that it is a well-formed {kind} file"
        ) from None
    if len(frame) == 0:
        raise EmptyDataFileError(
            f"{kind} file {str(path)!r} has a header but no rows ({list(frame.columns)}); "
            "export the rows too"
        )
    return frame


def _check_magnitude(feats: np.ndarray, columns) -> None:
    big = np.abs(feats) > MAX_FEATURE_MAGNITUDE
    if big.any():
        cols = [c for j, c in enumerate(columns) if big[:, j].any()]
        raise FeatureMagnitudeError(
            f"columns {cols} hold values of magnitude above {MAX_FEATURE_MAGNITUDE:g} "
            f"({int(big.sum())} values, largest {float(np.abs(feats).max()):.3g}); they "
            "cannot be standardized in float64. Rescale them (other units, or a log) first."
        )


def _check_ids(ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=object)
    if ids.ndim != 1:
        raise PartyDataError("identifiers must be a 1-D sequence")
    missing = [
        i for i, v in enumerate(ids) if v is None or (isinstance(v, float) and np.isnan(v))
        or (isinstance(v, str) and not v.strip())
    ]
    if missing:
        raise MissingIdError(
            f"{len(missing)} rows have no identifier (first at row {missing[0]}); every row "
            "needs the pseudonymous patient id used for alignment. Drop or fix those rows."
        )
    ids = np.asarray([str(v) for v in ids], dtype=object)
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    dups = uniq[counts > 1]
    if len(dups):
        raise DuplicateIdError(
            f"{len(dups)} identifiers appear more than once (e.g. {list(dups[:3])}); each "
            "patient must be one row. Aggregate or deduplicate the rows first."
        )
    return ids


def _impute(feats: np.ndarray, columns, impute):
    """Fill NaN in place by the given policy; return (rows to keep or None, counts)."""
    nan = np.isnan(feats)
    if not nan.any():
        return None, {}
    counts = {c: int(nan[:, j].sum()) for j, c in enumerate(columns) if nan[:, j].any()}
    if impute is None:
        detail = ", ".join(f"{c}: {k}" for c, k in counts.items())
        raise MissingValuesError(
            f"missing values in {len(counts)} columns ({detail}). Choose an imputation "
            f"policy with impute= one of {IMPUTE_POLICIES} or a dict per column."
        )
    policies = impute if isinstance(impute, Mapping) else {c: impute for c in counts}
    keep = np.ones(len(feats), dtype=bool)
    for j, c in enumerate(columns):
        if c not in counts:
            continue
        policy = policies.get(c)
        if policy not in IMPUTE_POLICIES:
            raise MissingValuesError(
                f"column {c!r} has {counts[c]} missing values and policy {policy!r}; use one "
                f"of {IMPUTE_POLICIES}"
            )
        col = feats[:, j]
        if policy == "drop-rows":
            keep &= ~np.isnan(col)
            continue
        fill = {"mean": np.nanmean, "median": np.nanmedian}.get(policy, lambda _: 0.0)(col)
        col[np.isnan(col)] = fill
    return (keep if not keep.all() else None), counts


@dataclass(frozen=True)
class Standardizer:
    """Per-column standardization fitted by a party on its own training rows."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Standardizer:
        features = np.asarray(features, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            mean = features.mean(axis=0)
            std = features.std(axis=0)
        bad = ~(np.isfinite(mean) & np.isfinite(std))
        if bad.any():
            raise FeatureMagnitudeError(
                f"feature columns {np.flatnonzero(bad).tolist()} (by position) have a "
                "non-finite mean or standard deviation: their values are too large (or "
                "infinite) to standardize in float64. Rescale them (other units, or a log)."
            )
        # Constant columns keep scale 1 so they map to 0 instead of dividing by zero.
        return cls(mean, np.where(std > 1e-12, std, 1.0))

    def transform(self, features: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            out = (features - self.mean) / self.scale
        if not np.isfinite(out).all():
            bad = np.flatnonzero(~np.isfinite(out).all(axis=0)).tolist()
            raise FeatureMagnitudeError(
                f"standardizing produced non-finite values in feature columns {bad} (by "
                "position): the rows hold values far outside the training range or "
                "infinite ones. Check those columns' units."
            )
        return out
