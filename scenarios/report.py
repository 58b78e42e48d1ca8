"""Scenario output: the common command line, printed tables, report.md, PNG plots, JSON.

Every scenario takes ``--quick``, ``--seed``, ``--out DIR`` and ``--json PATH`` and writes
``report.md``, PNG plots and a JSON of its metrics into ``--out``. Files are written
atomically (temporary file, then rename) so an interrupted run never leaves half a report.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vfl.core.fileio import atomic_write

# Logs and CI are not terminals; rich would wrap tables at 80 columns there.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def scenario_parser(name: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m scenarios.{name}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (under a minute on 2 cores)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data, split and models")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output folder (default: runs/{name})"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--no-progress", action="store_true", help="hide progress bars (for logs and CI)"
    )
    return parser


def output_dir(args, name: str) -> Path:
    out = args.out if args.out is not None else Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    return out


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj, *paths: Path | None) -> None:
    text = json.dumps(_jsonable(obj), indent=2)
    for path in paths:
        if path is not None:
            atomic_write(Path(path), text + "\n")


def fmt(value) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    console.print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    return head + "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for i, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        ax.plot(fpr, tpr, ["-", "--", ":", "-."][i % 4], label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training(histories: dict[str, list[dict]], path: Path, metric: str, title: str):
    """Loss and a held-out metric per epoch for each model."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    styles = ["-", "--", ":", "-."]
    for i, (name, rows) in enumerate(histories.items()):
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        style = styles[i % len(styles)]
        ax1.plot(epochs, [r["loss"] for r in rows], style, label=name)
        ax2.plot(epochs, [r.get(metric, float("nan")) for r in rows], style, label=name)
    ax1.set(xlabel="epoch", ylabel="mean training loss", title="loss")
    ax2.set(xlabel="epoch", ylabel=f"held-out {metric}", title=metric)
    for ax in (ax1, ax2):
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(values: dict[str, dict[str, float]], path: Path, ylabel: str, title: str):
    """Grouped bars: outer key on the x axis, inner keys as series."""
    plt = _pyplot()
    groups = list(values)
    series = sorted({k for v in values.values() for k in v})
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(groups)), 4))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, s in enumerate(series):
        ax.bar(x + i * width, [values[g].get(s, 0) for g in groups], width, label=s)
    ax.set_xticks(x + width * (len(series) - 1) / 2, groups)
    ax.set(ylabel=ylabel, title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
