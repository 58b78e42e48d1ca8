"""Deployment benchmark: seconds per protocol round on Flower over localhost against the
in-memory transport, in the same run, for vertical plain, vertical encrypted (paillier) and
horizontal (FedAvg), with a profile of where a Flower round's time goes.

Each mode runs the same configuration twice: in one process (the in-memory transport) and
as a real deployment on this machine (:class:`vfl.deploy.local.LocalFederation`: a TLS
SuperLink, one ``vfl deploy node`` per party with its SuperNode, ``flwr run``). A round's
time is the median interval between consecutive rounds finishing, after the first (which
compiles), on both sides. The two runs' results are compared bitwise.

Where a Flower round's time goes, per training wave and node (from timestamps the
ClientApp returns and the party host's own counters):

* ``node poll``: from the push until Flower starts the ClientApp process: the SuperNode
  sleeps 3 s whenever a pull finds no message (Flower's polling floor);
* ``clientapp start``: Flower's per-message ClientApp process (interpreter, Flower's
  imports, pulling the message, context and FAB from the SuperNode) until our code runs;
* ``party host``: our share on the node: decode, open sealed payloads, the party's handler
  (compute and Paillier crypto), seal, encode (split out from the host's counters);
* ``reply``: from the host's answer until the coordinator pulled the reply (the SuperNode
  waits in 0.5 s steps for the ClientApp's reply, then pushes it; the coordinator pulls every
  20 ms).

    PYTHONPATH=. python benchmarks/deployment.py --quick --json out.json
    PYTHONPATH=. python benchmarks/deployment.py --from-json out.json --markdown docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.markdown_doc import (  # noqa: E402
    add_output_flags,
    emit,
    markers,
    section,
    table_head,
    write_section,
)
from vfl.deploy.local import LocalFederation  # noqa: E402

MD_BEGIN, MD_END = markers("deployment")
TEST_KEY = ["--allow-insecure-test-key", "--min-key-bits", "1024"]


def steady_round_seconds(finished: list[float]) -> float:
    """Median interval between rounds finishing, after the first (which compiles)."""
    gaps = np.diff(np.asarray(finished, dtype=float))
    if len(gaps) == 0:
        return float(finished[0]) if finished else float("nan")
    return float(np.median(gaps[1:] if len(gaps) > 1 else gaps))


# -- vertical ------------------------------------------------------------------------------
def vertical_config(protocol: str, quick: bool):
    from vfl.core.tasks import Task
    from vfl.vertical.config import TrainConfig
    from vfl.vertical.models import ModelConfig

    model = (ModelConfig("linear", "mlp", embed_dim=4, top_hidden=(16,))
             if protocol == "paillier" else ModelConfig("mlp", "linear", hidden=(16,), embed_dim=4))
    key = {"key_bits": 1024, "insecure_test_key": True} if quick else {}
    return TrainConfig(Task("binary"), model, epochs=2 if quick else 4, batch_size=128,
                       learning_rate=0.5, optimizer="sgd", seed=0, test_fraction=0.35,
                       protocol=protocol, **key)


def vertical_in_memory(tables, active, config) -> dict:
    from vfl.vertical.config import SecurityPolicy
    from vfl.vertical.trainer import SplitTrainer

    trainer = SplitTrainer.from_tables(tables, active, config,
                                       policy=SecurityPolicy.pinned(config))
    trainer.ensure_setup()
    t0, finished = time.perf_counter(), []
    losses = trainer.run_rounds(range(trainer.n_rounds),
                                on_done=lambda r, _: finished.append(time.perf_counter() - t0))
    metrics = trainer.evaluate("test")["metrics"]
    return {"rounds": trainer.n_rounds, "finished": finished,
            "losses": [losses[r] for r in range(trainer.n_rounds)], "metrics": metrics}


def vertical_mode(protocol: str, quick: bool, workdir: Path, console: Console) -> dict:
    from vfl import load_dataset
    from vfl.core.table import PartyTable

    ds = load_dataset("actg320")
    files = {n: t.to_csv(workdir / f"{n}.csv") for n, t in ds.tables.items()}
    tables = {n: PartyTable.from_file(files[n], "id", ds.tables[n].label_name) for n in files}
    config = vertical_config(protocol, quick)
    console.print(f"vertical {protocol}: in memory")
    mem = vertical_in_memory(tables, ds.active, config)
    console.print(f"vertical {protocol}: on Flower (TLS, {len(files)} nodes)")
    extra = TEST_KEY if config.insecure_test_key else []
    t0 = time.perf_counter()
    with LocalFederation(workdir / "fed", tls=True) as fed:
        fed.start_superlink()
        for name in ds.tables:
            fed.start_node(name, files[name], "id", label_column=ds.tables[name].label_name,
                           extra=extra)
        res = fed.run("vertical", {"parties": list(ds.tables), "train": config.to_json()},
                      timeout=3600)
    wall = time.perf_counter() - t0
    return row(f"vertical {protocol}", mem, res, wall, len(files),
               equal=res["losses"] == mem["losses"] and res["metrics"]["test"] == mem["metrics"])


# -- horizontal ----------------------------------------------------------------------------
HOSPITALS, ROWS, FEATURES = 4, 600, 8


def hospital_tables(seed: int = 0):
    from vfl.core.table import PartyTable

    rng = np.random.default_rng(seed)
    w = rng.normal(size=FEATURES)
    tables = {}
    for c in range(HOSPITALS):
        x = rng.normal(size=(ROWS, FEATURES)) + rng.normal(scale=0.3, size=FEATURES)
        y = (x @ w + rng.logistic(size=ROWS) > 0).astype(int)
        tables[f"hospital_{c}"] = PartyTable.from_numpy(
            [f"h{c}-{i}" for i in range(ROWS)], x, [f"x{j}" for j in range(FEATURES)],
            labels=y, label_name="y")
    return tables


def horizontal_mode(quick: bool, workdir: Path, console: Console) -> dict:
    import hashlib

    from horizontal import FedConfig, FederatedTrainer
    from vfl.core.table import PartyTable

    files = {n: t.to_csv(workdir / f"{n}.csv") for n, t in hospital_tables().items()}
    tables = {n: PartyTable.from_file(p, "id", "y") for n, p in files.items()}
    config = FedConfig(hidden=(32,), rounds=4 if quick else 8, batch_size=32, client_lr=0.1,
                       clients_per_round=3, compression="int8", seed=0)
    console.print("horizontal: in memory")
    trainer = FederatedTrainer(tables, config)
    trainer.ensure_setup()
    t0, finished, losses = time.perf_counter(), [], []
    for r in range(config.rounds):
        losses.append(float(trainer.run_round(r)["loss"]))
        finished.append(time.perf_counter() - t0)
    digest = hashlib.sha256(np.ascontiguousarray(trainer.global_params()).tobytes()).hexdigest()
    mem = {"finished": finished}
    console.print(f"horizontal: on Flower (TLS, {len(files)} nodes)")
    t0 = time.perf_counter()
    with LocalFederation(workdir / "fed", tls=True) as fed:
        fed.start_superlink()
        for name, path in files.items():
            fed.start_node(name, path, "id", label_column="y", mode="horizontal")
        res = fed.run("horizontal", {"parties": list(files), "train": config.to_json(),
                                     "columns": list(tables[next(iter(tables))].columns)},
                      timeout=3600)
    wall = time.perf_counter() - t0
    equal = res["global_sha256"] == digest and res["losses"] == losses
    return row("horizontal", mem, res, wall, len(files), equal=equal)


# -- rows ----------------------------------------------------------------------------------
def profile_of(res: dict) -> dict:
    """Median seconds per node per training wave, by stage (the median, so the first
    round's compile does not stand for every round)."""
    first, last = res.get("train_waves", [0, 10**9])
    rows = np.asarray([t for t in res["deployment"]["node_timings"]
                       if first <= t[0] <= last], dtype=float)
    if len(rows) == 0:
        return {}
    _, pushed, started, imported, entered, answered, pulled = rows.T
    host = res.get("profile", {})
    bundles = sum(p.get("bundles", 0) for p in host.values()) or 1
    ours = {k: sum(p.get(k, 0.0) for p in host.values()) / bundles
            for k in ("decode", "open", "handle", "seal", "encode")}
    return {
        "node_poll": float(np.median(np.clip(started - pushed, 0, None))),
        "clientapp_start": float(np.median(entered - np.maximum(started, pushed))),
        "party_host": float(np.median(answered - entered)),
        "reply": float(np.median(pulled - answered)),
        "wave_total": float(np.median(pulled - pushed)),
        "host_split": ours,
        "waves": int(last - first + 1),
        "statistic": "median",
    }


def row(mode: str, mem: dict, res: dict, wall: float, parties: int, *, equal: bool) -> dict:
    rounds = int(res["rounds"])
    flower = steady_round_seconds(res["round_finished"])
    inmem = steady_round_seconds(mem["finished"])
    prof = profile_of(res)
    return {
        "mode": mode,
        "parties": parties,
        "rounds": rounds,
        "inmemory_seconds_per_round": inmem,
        "flower_seconds_per_round": flower,
        "ratio": flower / inmem if inmem > 0 else float("nan"),
        "waves_per_round": prof.get("waves", 0) / max(rounds, 1),
        "flower_wall_seconds": wall,
        "round_trips": res["deployment"]["round_trips"],
        "equal_to_in_memory": bool(equal),
        "profile": prof,
    }


def print_rows(rows, console: Console) -> None:
    t = Table(title="seconds per protocol round: Flower over localhost vs in memory")
    for col in ("mode", "rounds", "in memory", "Flower", "ratio", "waves/round", "equal"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["mode"], str(r["rounds"]), f"{r['inmemory_seconds_per_round']:.3f}",
                  f"{r['flower_seconds_per_round']:.2f}", f"{r['ratio']:.0f}x",
                  f"{r['waves_per_round']:.1f}", "yes" if r["equal_to_in_memory"] else "NO")
    console.print(t)
    p = Table(title="where a Flower wave's time goes (median s per node per training wave)")
    for col in ("mode", "node poll", "ClientApp start", "party host (ours)", "reply", "total"):
        p.add_column(col)
    for r in rows:
        f = r["profile"]
        if f:
            p.add_row(r["mode"], f"{f['node_poll']:.2f}", f"{f['clientapp_start']:.2f}",
                      f"{f['party_host']:.3f}", f"{f['reply']:.2f}", f"{f['wave_total']:.2f}")
    console.print(p)


def markdown_section(res: dict) -> str:
    lines = table_head("mode", "rounds", "in memory (s/round)", "Flower (s/round)", "ratio",
                       "waves per round", "bitwise equal")
    for r in res["rows"]:
        lines.append(
            f"| {r['mode']} | {r['rounds']} | {r['inmemory_seconds_per_round']:.3f} | "
            f"{r['flower_seconds_per_round']:.2f} | {r['ratio']:.0f}x | "
            f"{r['waves_per_round']:.1f} | {'yes' if r['equal_to_in_memory'] else 'no'} |")
    lines += ["", "Where a Flower wave's time goes (seconds per node per training wave, the "
              "statistic after the mode; a "
              "vertical round is two sequential waves, the passives' then the active party's "
              "bundle; a horizontal round one, `fit` and `fit.collect` in one bundle). "
              "Flower's floor is node poll + "
              "ClientApp start + reply; ours is the party host:", "",
              *table_head("mode", "node poll (Flower)", "ClientApp start (Flower)",
                          "party host (ours)", "reply (Flower)", "total", "Flower's share")]
    for r in res["rows"]:
        f = r["profile"]
        if f:
            floor = f["node_poll"] + f["clientapp_start"] + f["reply"]
            stat = f.get("statistic", "mean")
            lines.append(f"| {r['mode']} ({stat}) | {f['node_poll']:.2f} | "
                         f"{f['clientapp_start']:.2f} | "
                         f"{f['party_host']:.3f} | {f['reply']:.2f} | {f['wave_total']:.2f} | "
                         f"{floor:.2f} s ({100 * floor / f['wave_total']:.0f}%) |")
    lines += ["", "The party hosts' own time over the whole run (PSI, setup and the first "
              "round's compile included), mean seconds per bundle: " + "; ".join(
        f"{r['mode']}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["profile"]["host_split"].items())
        for r in res["rows"] if r["profile"])]
    return section(MD_BEGIN, MD_END, res, lines)


def write_markdown(res: dict, path: str) -> None:
    write_section(path, MD_BEGIN, MD_END, markdown_section(res))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds and 1024-bit test keys (CI and a first look)")
    add_output_flags(ap, "deployment")
    ap.add_argument("--modes", default="plain,paillier,horizontal",
                    help="comma-separated: plain, paillier, horizontal")
    args = ap.parse_args(argv)
    console = Console()
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
    else:
        rows = []
        with tempfile.TemporaryDirectory(prefix="vfl-deploy-bench-") as tmp:
            for mode in args.modes.split(","):
                work = Path(tmp) / mode
                work.mkdir()
                if mode in ("plain", "paillier"):
                    rows.append(vertical_mode(mode, args.quick, work, console))
                elif mode == "horizontal":
                    rows.append(horizontal_mode(args.quick, work, console))
                else:
                    ap.error(f"unknown mode {mode!r}")
        res = {"command": "python benchmarks/deployment.py" + (" --quick" if args.quick else ""),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"Python {platform.python_version()}",
               "rows": rows}
    return emit(res, args, console, lambda r: print_rows(r["rows"], console), write_markdown)


if __name__ == "__main__":
    main()
