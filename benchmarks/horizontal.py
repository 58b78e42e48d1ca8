"""Horizontal benchmark: one FedAvg round for 4, 32 and 128 clients, vectorized against a
per-client loop in the same run.

Each client holds about 1000 synthetic rows (8 features, a logistic label); the model is a
small MLP (8 -> 32 -> 1); one local epoch of SGD in batches of 32 (about 22 steps after the
30% held-out split). Both engines run the full protocol (serialized ``fit`` / ``fit.update``
messages, validation, aggregation); they differ only in how the clients' local training
runs: one ``jit(vmap(...))`` program per round, or one ``jit`` call per client. Both compile
once (the loop pads every client to the same shape); the first round, which compiles, is
reported separately and not in the per-round time.

Reported per client count and engine: seconds per round (median of the timed rounds),
client-updates per second, seconds of local training per round, compile (first-round)
seconds, and the ratios loop / vectorized.

    PYTHONPATH=. python benchmarks/horizontal.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Run as a script, this file's folder comes first on sys.path and its name would shadow
# the ``horizontal`` package; put the repository root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from horizontal import FedConfig, FederatedTrainer  # noqa: E402
from vfl.core.table import PartyTable  # noqa: E402

ROWS, FEATURES, HIDDEN, BATCH = 1000, 8, (32,), 32


def make_tables(n_clients: int, seed: int = 0) -> dict[str, PartyTable]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=FEATURES)
    tables = {}
    for c in range(n_clients):
        n = ROWS + int(rng.integers(-50, 51))
        X = rng.normal(size=(n, FEATURES)) + rng.normal(scale=0.3, size=FEATURES)
        y = (X @ w + rng.logistic(size=n) > 0).astype(int)
        ids = [f"c{c}-{i}" for i in range(n)]
        tables[f"client_{c:03d}"] = PartyTable.from_numpy(
            ids, X, [f"x{j}" for j in range(FEATURES)], labels=y)
    return tables


def measure(tables, mode: str, rounds: int) -> dict:
    config = FedConfig(hidden=HIDDEN, rounds=rounds + 1, batch_size=BATCH, client_lr=0.1)
    trainer = FederatedTrainer(tables, config, mode=mode)
    trainer.setup()
    t0 = time.perf_counter()
    trainer.run_round(0)
    first = time.perf_counter() - t0
    trainer.executor.seconds = 0.0
    times = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        trainer.run_round(r)
        times.append(time.perf_counter() - t0)
    per_round = float(np.median(times))
    return {
        "seconds_per_round": per_round,
        "client_updates_per_second": len(tables) / per_round,
        "local_training_seconds_per_round": trainer.executor.seconds / rounds,
        "first_round_seconds": first,
        "bytes_up_per_round": trainer.bytes_up(rounds),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed rounds")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--clients", type=int, nargs="*", default=[4, 32, 128])
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 10
    console = Console(highlight=False)
    results = {}
    for k in args.clients:
        tables = make_tables(k)
        vec = measure(tables, "vectorized", rounds)
        loop = measure(tables, "loop", rounds)
        results[str(k)] = {
            "vectorized": vec, "loop": loop,
            "speedup_round": loop["seconds_per_round"] / vec["seconds_per_round"],
            "speedup_local_training": loop["local_training_seconds_per_round"]
            / max(vec["local_training_seconds_per_round"], 1e-12),
        }
    table = Table(title=f"FedAvg round, ~{ROWS} rows/client, MLP {FEATURES}-{HIDDEN}-1, "
                  f"batch {BATCH}, {rounds} timed rounds")
    for col in ["clients", "engine", "s/round", "updates/s", "local training s/round",
                "first round s"]:
        table.add_column(col)
    for k, r in results.items():
        for mode in ("vectorized", "loop"):
            m = r[mode]
            table.add_row(k, mode, f"{m['seconds_per_round']:.4f}",
                          f"{m['client_updates_per_second']:,.0f}",
                          f"{m['local_training_seconds_per_round']:.4f}",
                          f"{m['first_round_seconds']:.2f}")
    console.print(table)
    for k, r in results.items():
        console.print(f"{k:>4} clients: vectorized is {r['speedup_round']:.2f}x faster per round,"
                      f" {r['speedup_local_training']:.2f}x in local training")
    out = {"benchmark": "horizontal", "rounds_timed": rounds, "rows_per_client": ROWS,
           "results": results,
           "speedup_round": {k: r["speedup_round"] for k, r in results.items()},
           "speedup_local_training": {k: r["speedup_local_training"]
                                      for k, r in results.items()}}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
