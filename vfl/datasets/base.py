"""The container every loader returns: one :class:`PartyTable` per party, plus provenance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfl.core.table import PartyTable

TASKS = ("binary", "multiclass", "regression", "survival")


@dataclass(frozen=True)
class VerticalDataset:
    """A vertically partitioned data set: the same patients, different columns per party.

    Only ``tables[active]`` carries labels. Each table holds a seeded subset of the cohort
    plus a few non-cohort rows of its own and is shuffled, so the parties must align their
    rows (private set intersection) before training. :meth:`pooled` gives the ground-truth
    joined view on the true intersection, for tests and the centralized baseline.
    """

    name: str
    task: str  # "binary" | "multiclass" | "regression" | "survival"
    active: str  # party holding the labels
    tables: dict[str, PartyTable]  # one per party; active party first
    # One column, or for survival "<time column>,<event column>" (labels (n, 2) [time, event]).
    label_name: str
    n_classes: int | None  # 2 for binary, k for multiclass, None for regression/survival
    description: str  # where the data come from, what the label is, the split
    source: str  # e.g. "scikit-survival load_aids (ACTG 320)"
    signal_blocks: tuple[str, ...] | None = None  # synthetic data: parties carrying signal
    n_cohort: int | None = None  # patients in the source cohort before the overlap split

    @property
    def parties(self) -> list[str]:
        """Party names, the active party first."""
        return [self.active] + [p for p in self.tables if p != self.active]

    def intersection(self) -> np.ndarray:
        """Identifiers held by every party, sorted (the true intersection)."""
        common: set[str] | None = None
        for p in self.parties:
            ids = set(self.tables[p].ids.tolist())
            common = ids if common is None else common & ids
        return np.array(sorted(common or ()), dtype=object)

    def pooled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """``(ids, X, y, columns)`` on the true intersection, rows sorted by id.

        ``X`` concatenates every party's features (active party first) and ``columns`` are
        prefixed ``"party:column"``. This is the view a centralized analyst would have; the
        federated protocol never builds it.
        """
        ids = self.intersection()
        blocks, columns = [], []
        y = None
        for p in self.parties:
            rows = self.tables[p].rows(ids)
            blocks.append(rows.features)
            columns += [f"{p}:{c}" for c in rows.columns]
            if p == self.active:
                y = rows.labels
        X = np.concatenate(blocks, axis=1) if blocks else np.empty((len(ids), 0))
        return ids, X, y, columns

    def summary(self) -> dict:
        """Sizes for reports: cohort, rows per party, intersection."""
        return {
            "name": self.name,
            "cohort": self.n_cohort,
            "rows": {p: self.tables[p].n_rows for p in self.parties},
            "features": {p: self.tables[p].n_features for p in self.parties},
            "intersection": len(self.intersection()),
        }
