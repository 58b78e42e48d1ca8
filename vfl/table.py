"""A party's own table: identifiers, numeric features and (at the active party) labels.

Built from numpy, pandas, CSV or Parquet. Schema checks happen here, at the edge, so the
protocol code downstream can assume clean float64 matrices:

* every row has an identifier, and identifiers are unique;
* feature columns are numeric (encode categories yourself, or via the dataset loaders);
* NaN is an error naming the columns and counts, unless an explicit imputation policy is
  given (``"mean"``, ``"median"``, ``"zero"``, ``"drop-rows"``, or a per-column dict).
  Imputation statistics are computed from this party's own rows only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vfl.errors import (
    DuplicateIdError,
    MissingColumnError,
    MissingIdError,
    MissingValuesError,
    NonNumericColumnError,
    PartyDataError,
    SchemaMismatchError,
)

IMPUTE_POLICIES = ("mean", "median", "zero", "drop-rows")


@dataclass(frozen=True)
class PartyTable:
    """Rows of one party, keyed by pseudonymous identifiers."""

    ids: np.ndarray  # dtype object (str), shape (n,)
    features: np.ndarray  # float64, shape (n, d)
    columns: tuple[str, ...]
    labels: np.ndarray | None = None  # shape (n,), at the active party only
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
        for col in [id_column] + ([label_column] if label_column else []):
            if col not in frame.columns:
                raise MissingColumnError(
                    f"column {col!r} is not in the table; columns are {list(frame.columns)}"
                )
        if feature_columns is None:
            feature_columns = [c for c in frame.columns if c not in (id_column, label_column)]
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
        labels = frame[label_column].to_numpy() if label_column else None
        return cls._build(ids, data, tuple(feature_columns), labels, label_column, impute)

    @classmethod
    def from_csv(cls, path: str | Path, id_column: str, **kwargs) -> PartyTable:
        import pandas as pd

        return cls.from_frame(pd.read_csv(path, dtype={id_column: str}), id_column, **kwargs)

    @classmethod
    def from_parquet(cls, path: str | Path, id_column: str, **kwargs) -> PartyTable:
        import pandas as pd

        frame = pd.read_parquet(path)
        frame[id_column] = frame[id_column].astype(object)
        return cls.from_frame(frame, id_column, **kwargs)

    @classmethod
    def _build(cls, ids, data, columns, labels, label_name, impute) -> PartyTable:
        ids = _check_ids(ids)
        n = len(ids)
        feats = np.empty((n, len(columns)), dtype=np.float64)
        for j, c in enumerate(columns):
            feats[:, j] = np.asarray(data[c], dtype=np.float64)
        if labels is not None:
            labels = np.asarray(labels)
            if labels.dtype == bool:
                labels = labels.astype(np.int32)
            if labels.dtype.kind == "f" and np.isnan(labels).any():
                raise MissingValuesError(
                    f"label column {label_name!r} has {int(np.isnan(labels).sum())} missing "
                    "values; drop those rows before building the table"
                )
        keep, imputed = _impute(feats, columns, impute)
        if keep is not None:
            ids, feats = ids[keep], feats[keep]
            labels = labels[keep] if labels is not None else None
        if not np.isfinite(feats).all():
            bad = [c for j, c in enumerate(columns) if not np.isfinite(feats[:, j]).all()]
            raise PartyDataError(f"columns {bad} contain infinite values; fix or drop them")
        return cls(ids, feats, tuple(columns), labels, label_name, imputed)

    # -- operations -----------------------------------------------------------------------
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
        mean = features.mean(axis=0)
        std = features.std(axis=0)
        # Constant columns keep scale 1 so they map to 0 instead of dividing by zero.
        return cls(mean, np.where(std > 1e-12, std, 1.0))

    def transform(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.scale
