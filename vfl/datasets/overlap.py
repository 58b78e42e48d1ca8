"""Turning one cohort table into per-party tables with a realistic, seeded partial overlap.

Every loader hands a cohort (one row per patient, columns grouped by party) to
:func:`split_vertical`, which

1. gives each patient a pseudonymous identifier: ``"pt-"`` + the first 12 hex digits of
   SHA-256 over (data set name, cohort row index, :data:`PUBLIC_SALT`). The identifier
   does not depend on the seed, so a patient keeps their id across seeds;
2. lets each party hold a seeded random subset of the cohort (defaults: the active party
   97 %, passive parties 92 %, 90 %, 93 %, 91 %, ... in turn);
3. adds to each party ``round(extra * cohort)`` *non-cohort* patients of its own: every
   column (and the label, at the active party) is resampled independently from that
   party's own cohort rows, under fresh identifiers unique to that party. They never
   appear in the intersection; they exist so that private set intersection has
   something to exclude;
4. shuffles each table's rows.

Everything is a pure function of ``seed`` through one ``numpy.random.Generator(PCG64(seed))``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from vfl.core.errors import ConfigError
from vfl.core.table import PartyTable

PUBLIC_SALT = "vfl-datasets-v1"  # public, fixed: pseudonyms are reproducible, not secret
ACTIVE_COVERAGE = 0.97
PASSIVE_COVERAGE = (0.92, 0.90, 0.93, 0.91)
EXTRA = 0.03

Coverage = float | Mapping[str, float] | None
Impute = str | Mapping[str, str] | None


def pseudonym(*parts) -> str:
    """``"pt-"`` + first 12 hex digits of SHA-256 over the parts and the public salt."""
    text = "|".join(str(p) for p in (*parts, PUBLIC_SALT))
    return "pt-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def cohort_ids(name: str, n: int) -> np.ndarray:
    return np.array([pseudonym(name, i) for i in range(n)], dtype=object)


def resolve_coverage(parties: Sequence[str], coverage: Coverage) -> dict[str, float]:
    """Fraction of the cohort each party holds (``parties[0]`` is the active party).

    ``None``: the defaults; a float: that fraction for every party; a mapping: overrides
    per party, defaults for the rest.
    """
    defaults = {parties[0]: ACTIVE_COVERAGE}
    for k, p in enumerate(parties[1:]):
        defaults[p] = PASSIVE_COVERAGE[k % len(PASSIVE_COVERAGE)]
    if coverage is None:
        out = defaults
    elif isinstance(coverage, Mapping):
        unknown = sorted(set(coverage) - set(parties))
        if unknown:
            raise ConfigError(f"coverage names unknown parties {unknown}; parties are {parties}")
        out = {p: float(coverage.get(p, defaults[p])) for p in parties}
    else:
        out = {p: float(coverage) for p in parties}
    for p, c in out.items():
        if not 0.0 < c <= 1.0:
            raise ConfigError(f"coverage of {p!r} is {c}; use a fraction in (0, 1]")
    return out


def split_vertical(
    name: str,
    blocks: Mapping[str, tuple[Sequence[str], np.ndarray]],
    labels: np.ndarray,
    label_name: str,
    *,
    seed: int = 0,
    coverage: Coverage = None,
    extra: float = EXTRA,
    impute: Impute = None,
) -> dict[str, PartyTable]:
    """Per-party tables from a cohort; ``blocks`` maps party -> (columns, float matrix).

    The first party in ``blocks`` is the active one and gets the labels. ``impute`` is
    passed to every :class:`PartyTable` (NaN without a policy raises
    :class:`~vfl.core.errors.MissingValuesError` naming the columns and counts).
    """
    parties = list(blocks)
    n = len(labels)
    if not 0.0 <= extra < 1.0:
        raise ConfigError(f"extra is {extra}; use a fraction in [0, 1)")
    fractions = resolve_coverage(parties, coverage)
    ids = cohort_ids(name, n)
    rng = np.random.Generator(np.random.PCG64(seed))
    n_extra = int(round(extra * n))
    tables: dict[str, PartyTable] = {}
    seen_extra: set[str] = set(ids.tolist())
    for p in parties:
        columns, X = blocks[p]
        X = np.asarray(X, dtype=np.float64)
        if X.shape != (n, len(columns)):
            raise ValueError(f"block {p!r} has shape {X.shape}, expected ({n}, {len(columns)})")
        k = int(round(fractions[p] * n))
        members = np.sort(rng.choice(n, size=k, replace=False))
        feats, part_ids = X[members], ids[members]
        y = labels[members] if p == parties[0] else None
        if n_extra:
            # Each column resampled on its own from this party's rows: plausible values,
            # no copy of any real patient's row.
            picks = rng.integers(0, k, size=(n_extra, X.shape[1] + 1))
            fake = feats[picks[:, :-1], np.arange(X.shape[1])]
            fake_ids = np.array(
                [pseudonym(name, "non-cohort", p, seed, i) for i in range(n_extra)], dtype=object
            )
            assert not seen_extra & set(fake_ids.tolist()), "pseudonym collision"
            seen_extra |= set(fake_ids.tolist())
            feats = np.concatenate([feats, fake])
            part_ids = np.concatenate([part_ids, fake_ids])
            if y is not None:
                y = np.concatenate([y, y[picks[:, -1]]])
        order = rng.permutation(len(part_ids))
        tables[p] = PartyTable.from_numpy(
            part_ids[order],
            feats[order],
            columns,
            labels=None if y is None else y[order],
            label_name=label_name if y is not None else None,
            impute=impute,
        )
    return tables


def overlap_note(tables: Mapping[str, PartyTable], n: int, extra: float) -> str:
    """One sentence for descriptions: rows per party and the intersection."""
    common = set.intersection(*(set(t.ids.tolist()) for t in tables.values()))
    rows = ", ".join(f"{p} {t.n_rows}" for p, t in tables.items())
    return (
        f"Cohort of {n} patients; rows per party: {rows} (each party holds a seeded random "
        f"subset of the cohort plus {round(extra * n)} non-cohort patients of its own); "
        f"{len(common)} patients are held by every party."
    )
