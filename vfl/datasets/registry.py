"""Loaders by name: ``DATASETS[name](**kw)`` or ``load(name, **kw)``."""

from __future__ import annotations

from collections.abc import Callable

from vfl.core.errors import ConfigError
from vfl.datasets.base import VerticalDataset
from vfl.datasets.clinical import (
    load_actg320,
    load_flchain,
    load_gbsg2,
    load_gse7390,
    load_whas500,
)
from vfl.datasets.multiomics import make_multiomics
from vfl.datasets.sklearn_sets import load_breast_cancer_vertical, load_diabetes_vertical

DATASETS: dict[str, Callable[..., VerticalDataset]] = {
    "actg320": load_actg320,
    "gse7390": load_gse7390,
    "flchain": load_flchain,
    "gbsg2": load_gbsg2,
    "whas500": load_whas500,
    "breast_cancer": load_breast_cancer_vertical,
    "diabetes": load_diabetes_vertical,
    "multiomics": make_multiomics,
}


def load(name: str, **kwargs) -> VerticalDataset:
    """The data set called ``name`` (see :data:`DATASETS`), loader options as keywords."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown data set {name!r}; choose one of {sorted(DATASETS)}"
        ) from None
    return loader(**kwargs)
