"""Non-IID partitioners: which hospital holds which rows, and statistics of the result.

Every partitioner assigns a row by a keyed hash of ``(seed, id)`` (plus, for skewed
splits, client proportions drawn once from the seed), never by its position, so removing
one patient never moves another patient to a different hospital (the unlearning contract).

* :func:`iid` - uniform assignment;
* :func:`dirichlet_label_skew` - per class ``c``, client proportions ``p_c ~ Dir(alpha)``;
  a row of class ``c`` goes to the client whose cumulative share of ``p_c`` covers its hash
  (small ``alpha``: each hospital sees mostly one outcome; large ``alpha``: IID);
* :func:`quantity_skew` - client sizes ``~ Dir(alpha)``, labels IID;
* :func:`natural` - by a real attribute (e.g. flchain's sample year, ACTG 320's CD4
  stratum): ``groups`` maps each client to the attribute values it holds.
"""

from __future__ import annotations

import numpy as np

from horizontal.errors import FedConfigError
from vfl.core.keyed import keyed_hash
from vfl.core.table import PartyTable


def _units(ids, seed: int) -> np.ndarray:
    return np.fromiter((keyed_hash("partition", seed, i) / 2.0**64 for i in ids), float,
                       len(ids))


def _names(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{k}" for k in range(n)]


def iid(ids, n_clients: int, seed: int, prefix: str = "hospital_") -> dict[str, np.ndarray]:
    u = _units(ids, seed)
    who = np.minimum((u * n_clients).astype(int), n_clients - 1)
    return {name: np.flatnonzero(who == k) for k, name in enumerate(_names(n_clients, prefix))}


def _by_shares(u: np.ndarray, shares: np.ndarray) -> np.ndarray:
    edges = np.cumsum(shares)
    edges[-1] = 1.0
    return np.searchsorted(edges, u, side="right").clip(0, len(shares) - 1)


def dirichlet_label_skew(ids, labels, n_clients: int, alpha: float, seed: int,
                         prefix: str = "hospital_") -> dict[str, np.ndarray]:
    if alpha <= 0:
        raise FedConfigError(f"Dirichlet alpha must be positive, got {alpha}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(keyed_hash("dirichlet", seed))
    u = _units(ids, seed)
    who = np.zeros(len(ids), dtype=int)
    for c in np.unique(labels):
        rows = labels == c
        who[rows] = _by_shares(u[rows], rng.dirichlet(np.full(n_clients, alpha)))
    return {name: np.flatnonzero(who == k) for k, name in enumerate(_names(n_clients, prefix))}


def quantity_skew(ids, n_clients: int, alpha: float, seed: int,
                  prefix: str = "hospital_") -> dict[str, np.ndarray]:
    if alpha <= 0:
        raise FedConfigError(f"Dirichlet alpha must be positive, got {alpha}")
    shares = np.random.default_rng(keyed_hash("quantity", seed)).dirichlet(
        np.full(n_clients, alpha))
    who = _by_shares(_units(ids, seed), shares)
    return {name: np.flatnonzero(who == k) for k, name in enumerate(_names(n_clients, prefix))}


def natural(values, groups: dict[str, list]) -> dict[str, np.ndarray]:
    """Rows whose attribute value is in ``groups[client]``; every value must be covered."""
    values = np.asarray(values)
    out, covered = {}, np.zeros(len(values), bool)
    for name, vals in groups.items():
        rows = np.isin(values, vals)
        if (covered & rows).any():
            raise FedConfigError(f"attribute values of {name!r} overlap another client's")
        covered |= rows
        out[name] = np.flatnonzero(rows)
    if not covered.all():
        missing = sorted(set(np.unique(values[~covered]).tolist()))
        raise FedConfigError(f"attribute values {missing[:5]} are assigned to no client")
    return out


def tables(ids, X, y, columns, parts: dict[str, np.ndarray], drop=()) -> dict[str, PartyTable]:
    """One :class:`PartyTable` per client (optionally dropping the partitioning column)."""
    keep = [j for j, c in enumerate(columns) if c not in set(drop)]
    cols = [columns[j] for j in keep]
    out = {}
    for name, rows in parts.items():
        if len(rows) == 0:
            raise FedConfigError(f"client {name!r} received no rows; use fewer clients or a "
                                 "larger alpha")
        out[name] = PartyTable.from_numpy(np.asarray(ids)[rows], np.asarray(X)[rows][:, keep],
                                          cols, labels=np.asarray(y)[rows], label_name="y")
    return out


def stats(labels, parts: dict[str, np.ndarray]) -> dict[str, dict]:
    """Rows, share of all rows, positive rate (binary) or class counts, per client."""
    labels = np.asarray(labels)
    total = sum(len(v) for v in parts.values())
    classes = np.unique(labels)
    out = {}
    for name, rows in parts.items():
        y = labels[rows]
        row = {"rows": int(len(rows)), "share": len(rows) / max(total, 1)}
        if len(classes) <= 2:
            row["positive_rate"] = float(y.mean()) if len(y) else float("nan")
        row["class_counts"] = {str(c): int((y == c).sum()) for c in classes}
        out[name] = row
    return out
