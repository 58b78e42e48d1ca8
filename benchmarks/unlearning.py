"""Unlearning benchmark: median seconds per erasure against a retrain from scratch.

* exact replay on the vertical ACTG 320 model with patients arriving in waves;
* SISA with S in {1, 4, 8} shards and {1, 4} slices, with the ensemble's test AUC.

The erasure time is a request up to the staged, unlearned model (receive, locate,
delete, replay with checkpoint writes); ``median_lifecycle_seconds`` adds commit, purge,
verification (which scores every shard) and the certificate. The retrain is every model
of the run trained from scratch without the patient. Usage:
``python benchmarks/unlearning.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unlearning.methods.sisa import sisa_spec  # noqa: E402
from unlearning.requests import ErasureRequest, ErasureService  # noqa: E402
from unlearning.run import RunDir, train_run  # noqa: E402
from vfl.config import TrainConfig  # noqa: E402
from vfl.models import ModelConfig  # noqa: E402
from vfl.tasks import Task  # noqa: E402


def _retrain_seconds(run: RunDir, pid: str) -> float:
    adapter = run.adapter(extra_erased=[pid])
    t0 = time.perf_counter()
    for m in adapter.models():
        adapter.fit(m, adapter.trainer(m), None, None)
    return time.perf_counter() - t0


def _auc(run: RunDir) -> float:
    from scenarios.erasure_request import _test_auc

    return _test_auc(run)


def bench(root: Path, name: str, spec: dict, aligned, n_req: int, rng) -> dict:
    run = train_run(root / name, spec | ({"aligned": aligned} if aligned else {}))
    auc = _auc(run)
    train = run.adapter().split_ids()["train"]
    pids = [str(p) for p in rng.choice(train, n_req, replace=False)]
    service = ErasureService(run)
    times, retrains, lifecycle = [], [], []
    for pid in pids:
        retrains.append(_retrain_seconds(RunDir(run.path), pid))
        t0 = time.perf_counter()
        cert = service.submit(ErasureRequest(pid, method="exact"))
        lifecycle.append(time.perf_counter() - t0)
        times.append(cert["seconds"])  # received -> located -> deleted -> replayed (staged)
    med, med_rt = float(np.median(times)), float(np.median(retrains))
    return {"name": name, "test_auc": auc, "median_erasure_seconds": med,
            "median_retrain_seconds": med_rt, "speedup": med_rt / med, "requests": n_req,
            "median_lifecycle_seconds": float(np.median(lifecycle)),
            "aligned": run.aligned}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n_req = 3 if args.quick else 9
    config = TrainConfig(Task("binary"), ModelConfig("linear", "sum"),
                         epochs=4 if args.quick else 8, batch_size=64, learning_rate=0.05,
                         seed=args.seed, test_fraction=0.35)
    base = {"mode": "vertical", "dataset": {"name": "actg320", "kwargs": {"seed": args.seed}},
            "config": config.to_json(), "fsync": False}
    root = Path(tempfile.mkdtemp(prefix="vfl-unlearning-bench-"))
    rows = []
    try:
        first = bench(root, "exact, arrival in 4 waves", base | {"arrival": {"waves": 4}},
                      None, n_req, rng)
        aligned = first.pop("aligned")
        rows.append(first)
        for shards in (1, 4, 8):
            for slices in (1, 4):
                r = bench(root, f"sisa S={shards} slices={slices}",
                          sisa_spec(base, shards, slices), aligned, n_req, rng)
                r.pop("aligned")
                rows.append(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    single = next(r["test_auc"] for r in rows if r["name"] == "sisa S=1 slices=1")
    for r in rows:
        r["auc_vs_single_points"] = 100 * (r["test_auc"] - single)
        print(f"{r['name']:28s} erase {r['median_erasure_seconds']:.3f}s  retrain "
              f"{r['median_retrain_seconds']:.3f}s  speedup {r['speedup']:.1f}x  AUC "
              f"{r['test_auc']:.4f} ({r['auc_vs_single_points']:+.2f} pts)")
    result = {"benchmark": "unlearning", "quick": args.quick, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
