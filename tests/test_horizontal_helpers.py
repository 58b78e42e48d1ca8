"""Shared synthetic hospitals for the horizontal tests (helpers only, no tests)."""

import numpy as np

from vfl.core.table import PartyTable


def make_hospitals(sizes=(120, 80, 200, 60), d=5, seed=0, shift=0.4):
    """Hospitals of unequal size with a shared logistic signal and shifted features."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    tables = {}
    for k, n in enumerate(sizes):
        X = rng.normal(size=(n, d)) + shift * k
        y = ((X - shift * k) @ w + rng.logistic(size=n) > 0).astype(int)
        ids = [f"h{k}-{i:04d}" for i in range(n)]
        tables[f"hospital_{k}"] = PartyTable.from_numpy(
            ids, X, [f"x{j}" for j in range(d)], labels=y, label_name="y"
        )
    return tables


def hospital_files(directory, tables):
    """Write each hospital's table to ``directory/<name>.csv`` (creating ``directory``) and
    read it back: ``(files, tables)``, the paths by name and the tables as loaded from them,
    so an in-memory run reads the same data as the nodes given those files."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {n: t.to_csv(directory / f"{n}.csv") for n, t in tables.items()}
    return files, {n: PartyTable.from_file(files[n], "id", "y") for n in files}


class RecordingTable:
    """A hospital's table that records every read of its features or labels."""

    def __init__(self, table: PartyTable):
        self._table = table
        self.reads: list[str] = []

    def __getattr__(self, name):
        if name in ("features", "labels"):
            self.reads.append(name)
        return getattr(self._table, name)
