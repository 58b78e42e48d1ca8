"""Synthetic multi-omics cohort with a known ground truth: which parties carry signal.

Latent factors ``Z ~ N(0, I)`` are split into *label-relevant* factors (the first
``n_factors // 2``) and *nuisance* factors (the rest). Each omics block ``k`` is

    X_k = signal * Z_rel W_k,rel + Z_nuis W_k,nuis + noise * eps     (signal blocks)
    X_k =                          Z_nuis W_k,nuis + noise * eps     (other blocks)

then put on a realistic scale by kind: ``"continuous"`` (per-column offset and scale, e.g.
log-expression), ``"dosage"`` (genotype 0/1/2 with a minor-allele frequency per column)
or ``"binary"`` (present if a Poisson count driven by the latent value is > 0, e.g.
prescriptions). The label depends on the relevant factors only:

* binary: ``y = 1[Z_rel beta + logistic noise > 0]``;
* multiclass: ``y = argmax(Z_rel B + Gumbel noise)`` (a multinomial logit);
* regression: ``y = Z_rel beta + N(0, 1)``;

with ``|beta| = 2``. Nuisance blocks are independent of the label (any association is
chance). The active party ``"hospital"`` holds the label and a small clinical block
(``age``, ``sex``, ``bmi``) that depends weakly on ``Z_rel beta``. Missingness is MCAR per
entry, per omics block, at the given rate; NaN then needs an ``impute`` policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

from vfl.core.errors import ConfigError
from vfl.datasets.base import TASKS, VerticalDataset
from vfl.datasets.overlap import EXTRA, Coverage, Impute, overlap_note, split_vertical

DEFAULT_BLOCKS = MappingProxyType(
    {"genomics": 200, "transcriptomics": 100, "proteomics": 50, "prescriptions": 20}
)
DEFAULT_KINDS = MappingProxyType({"genomics": "dosage", "prescriptions": "binary"})
KINDS = ("continuous", "dosage", "binary")
# The generator draws no event times, so of the data set tasks it makes all but survival.
SYNTHETIC_TASKS = tuple(t for t in TASKS if t != "survival")
PREFIX = {"genomics": "snp", "transcriptomics": "gene", "proteomics": "prot",
          "prescriptions": "rx", "metabolomics": "metab", "methylation": "cpg"}
LABEL_SCALE = 2.0


def _column_names(block: str, width: int) -> list[str]:
    prefix = PREFIX.get(block, block)
    digits = len(str(max(width - 1, 0)))
    return [f"{prefix}_{j:0{digits}d}" for j in range(width)]


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)


def _shape(kind: str, latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, d = latent.shape
    if kind == "continuous":
        return rng.uniform(2.0, 10.0, size=d) + rng.uniform(0.5, 2.0, size=d) * latent
    z = _zscore(latent)
    if kind == "dosage":
        maf = rng.uniform(0.05, 0.5, size=d)
        # Hardy-Weinberg: P(>=1 minor allele) = 1-(1-maf)^2, P(2) = maf^2.
        ranked, cols = np.sort(z, axis=0), np.arange(d)
        t1 = ranked[np.floor((1 - maf) ** 2 * (n - 1)).astype(int), cols]
        t2 = ranked[np.floor((1 - maf**2) * (n - 1)).astype(int), cols]
        return (z > t1).astype(np.float64) + (z > t2).astype(np.float64)
    base = rng.uniform(0.05, 0.5, size=d)  # mean prescriptions per patient and drug
    counts = rng.poisson(base * np.exp(0.8 * z - 0.32))
    return (counts > 0).astype(np.float64)


def make_multiomics(
    n: int = 2000,
    block_widths: Mapping[str, int] = DEFAULT_BLOCKS,
    n_factors: int = 8,
    signal_blocks: Sequence[str] = ("transcriptomics", "proteomics"),
    signal: float = 1.0,
    noise: float = 1.0,
    missingness: float | Mapping[str, float] = 0.0,
    task: str = "binary",
    seed: int = 0,
    impute: Impute = None,
    *,
    n_classes: int = 3,
    block_kinds: Mapping[str, str] | None = None,
    coverage: Coverage = None,
    extra: float = EXTRA,
) -> VerticalDataset:
    """Hospital (clinical + label) plus one party per omics block; see the module doc.

    ``block_kinds`` overrides the kind per block (default: genomics ``"dosage"``,
    prescriptions ``"binary"``, others ``"continuous"``). ``n_classes`` is used for
    ``task="multiclass"`` only. The result's ``signal_blocks`` names the parties whose
    features carry label information (the hospital's clinical block is weakly
    informative too).
    """
    blocks = dict(block_widths)
    signal_blocks = tuple(signal_blocks)
    if task not in SYNTHETIC_TASKS:
        raise ConfigError(f"task is {task!r}; use one of {SYNTHETIC_TASKS}")
    if task == "multiclass" and n_classes < 2:
        raise ConfigError(f"n_classes is {n_classes}; a multiclass task needs at least 2")
    if n < 10:
        raise ConfigError(f"n is {n}; use at least 10 patients")
    if n_factors < 2:
        raise ConfigError(f"n_factors is {n_factors}; need at least 2 (relevant + nuisance)")
    if "hospital" in blocks:
        raise ConfigError("'hospital' is the active party's clinical block; rename that block")
    bad = [b for b, w in blocks.items() if int(w) < 1]
    if bad:
        raise ConfigError(f"blocks {bad} have no columns; give every block a width >= 1")
    unknown = [b for b in signal_blocks if b not in blocks]
    if unknown:
        raise ConfigError(f"signal_blocks {unknown} are not blocks; blocks are {list(blocks)}")
    kinds = {b: DEFAULT_KINDS.get(b, "continuous") for b in blocks} | dict(block_kinds or {})
    bad = {b: k for b, k in kinds.items() if k not in KINDS or b not in blocks}
    if bad:
        raise ConfigError(f"block_kinds {bad} invalid; kinds are {KINDS}, blocks {list(blocks)}")
    rates = (
        {b: float(missingness.get(b, 0.0)) for b in blocks}
        if isinstance(missingness, Mapping) else dict.fromkeys(blocks, float(missingness))
    )
    if any(not 0.0 <= r < 1.0 for r in rates.values()):
        raise ConfigError(f"missingness {rates} must be fractions in [0, 1)")

    # A stream of its own (the overlap split uses PCG64(seed) directly).
    rng = np.random.Generator(np.random.PCG64(seed).jumped())
    k_rel = n_factors // 2
    k_nuis = n_factors - k_rel
    Z_rel = rng.standard_normal((n, k_rel))
    Z_nuis = rng.standard_normal((n, k_nuis))

    beta = rng.standard_normal(k_rel)
    beta *= LABEL_SCALE / np.linalg.norm(beta)
    eta = Z_rel @ beta
    if task == "binary":
        y = (eta + rng.logistic(size=n) > 0).astype(np.int64)
    elif task == "multiclass":
        B = rng.standard_normal((k_rel, n_classes)) * LABEL_SCALE / np.sqrt(k_rel)
        y = np.argmax(Z_rel @ B + rng.gumbel(size=(n, n_classes)), axis=1).astype(np.int64)
    else:
        y = eta + rng.standard_normal(n)

    u = eta / LABEL_SCALE  # unit variance
    age = np.clip(np.round(60 + 10 * (0.3 * u + np.sqrt(0.91) * rng.standard_normal(n))), 18, 95)
    sex = (rng.random(n) < 1 / (1 + np.exp(-0.3 * u))).astype(np.float64)
    bmi = np.round(27 + 4 * (0.15 * u + np.sqrt(1 - 0.15**2) * rng.standard_normal(n)), 1)
    parts = {"hospital": (["age", "sex", "bmi"], np.column_stack([age, sex, bmi]))}

    for b, width in blocks.items():
        width = int(width)
        latent = Z_nuis @ rng.standard_normal((k_nuis, width)) / np.sqrt(k_nuis)
        if b in signal_blocks:
            latent += signal * Z_rel @ rng.standard_normal((k_rel, width)) / np.sqrt(k_rel)
        latent += noise * rng.standard_normal((n, width))
        X = _shape(kinds[b], latent, rng)
        if rates[b] > 0:
            X[rng.random(X.shape) < rates[b]] = np.nan
        parts[b] = (_column_names(b, width), X)

    tables = split_vertical("multiomics", parts, y, "y", seed=seed, coverage=coverage,
                            extra=extra, impute=impute)
    label = {"binary": "binary (logistic)", "multiclass": f"{n_classes} classes (argmax)",
             "regression": "continuous (linear + Gaussian noise)"}[task]
    description = (
        f"Synthetic multi-omics cohort (seed {seed}): {n_factors} latent factors "
        f"({k_rel} label-relevant, {k_nuis} nuisance) drive "
        + ", ".join(f"{b} ({blocks[b]} {kinds[b]})" for b in blocks)
        + f". Label `y`: {label}, from the relevant factors only. Signal blocks "
        f"{list(signal_blocks)} load on the relevant factors (signal {signal}); the others "
        f"only on nuisance factors, so they carry no label information beyond chance. "
        f"Noise {noise}; MCAR missingness {rates}. The hospital holds the label and a "
        f"weakly informative clinical block (age, sex, bmi). "
        + overlap_note(tables, n, extra)
    )
    return VerticalDataset(
        name="multiomics", task=task, active="hospital", tables=tables, label_name="y",
        n_classes={"binary": 2, "multiclass": n_classes}.get(task), description=description,
        source="vfl.datasets.make_multiomics (synthetic latent-factor generator)",
        signal_blocks=signal_blocks, n_cohort=n,
    )
