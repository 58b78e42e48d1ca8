"""Vertically partitioned data sets: real clinical cohorts shipped in PyPI packages and a
synthetic multi-omics generator, each split across parties with a seeded partial overlap.
"""

from vfl.datasets.base import VerticalDataset
from vfl.datasets.clinical import (
    load_actg320,
    load_flchain,
    load_gbsg2,
    load_gse7390,
    load_whas500,
)
from vfl.datasets.multiomics import make_multiomics
from vfl.datasets.overlap import PUBLIC_SALT, pseudonym, split_vertical
from vfl.datasets.registry import DATASETS, load
from vfl.datasets.sklearn_sets import load_breast_cancer_vertical, load_diabetes_vertical

__all__ = [
    "DATASETS",
    "PUBLIC_SALT",
    "VerticalDataset",
    "load",
    "load_actg320",
    "load_breast_cancer_vertical",
    "load_diabetes_vertical",
    "load_flchain",
    "load_gbsg2",
    "load_gse7390",
    "load_whas500",
    "make_multiomics",
    "pseudonym",
    "split_vertical",
]
