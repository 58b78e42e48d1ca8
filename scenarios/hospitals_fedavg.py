"""Hospitals train one model with FedAvg and its relatives, without moving patient rows.

The Mayo serum free light chain cohort (flchain, as shipped with scikit-survival) is split
*horizontally* into hospitals: by default naturally, by the year the sample was taken
(1995, 1996, 1997, 1998-99, 2000-03: later years have shorter follow-up and fewer deaths,
a real label and size skew), or with ``--partition dirichlet`` by Dirichlet label skew.
Every hospital holds all columns (age, sex, kappa, lambda, FLC group, creatinine, MGUS)
for its own patients; the label is death during follow-up.

Compared on each hospital's held-out rows (hash-derived split): FedAvg, FedProx and
FedAdam against a centralized model on pooled rows and local-only models; per-hospital
AUC (the fairness spread), personalization (FedPer, local fine-tuning), bytes per round
with 8-bit, 4-bit and top-k compression (with error feedback), and 20% client dropouts.

Outputs in --out: report.md, auc_rounds.png, hospitals.png, bytes.png, result.json.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np

from horizontal import FedConfig, FederatedTrainer, SystemsConfig
from horizontal import partition as part
from horizontal.personalization import compare
from scenarios.report import (
    console,
    markdown_table,
    output_dir,
    plot_bars,
    plot_training,
    print_table,
    scenario_parser,
    write_json,
)
from vfl.core.progress import progress_bar
from vfl.datasets import load_flchain

NAME = "hospitals_fedavg"
YEAR_GROUPS = {
    "hospital_1995": [1995.0],
    "hospital_1996": [1996.0],
    "hospital_1997": [1997.0],
    "hospital_1998_99": [1998.0, 1999.0],
    "hospital_2000_03": [2000.0, 2001.0, 2002.0, 2003.0],
}
YEAR = "hospital:sample.yr"


def build_parser():
    parser = scenario_parser(NAME, __doc__)
    parser.add_argument("--partition", choices=["natural", "dirichlet"], default="natural",
                        help="hospitals by sample year (natural) or Dirichlet label skew")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet alpha")
    parser.add_argument("--clients", type=int, default=5, help="hospitals (dirichlet only)")
    parser.add_argument("--rounds", type=int, default=None, help="override the round count")
    parser.add_argument("--mode", choices=["vectorized", "loop"], default="vectorized",
                        help="local training engine")
    return parser


def hospitals(args):
    dataset = load_flchain(seed=args.seed, impute={"creatinine": "median"}, coverage=1.0,
                           extra=0.0)
    ids, X, y, columns = dataset.pooled()
    if args.partition == "natural":
        parts = part.natural(X[:, columns.index(YEAR)], YEAR_GROUPS)
        drop = [YEAR]  # the partitioning attribute is constant within most hospitals
    else:
        parts = part.dirichlet_label_skew(ids, y, args.clients, args.alpha, args.seed)
        drop = []
    tables = part.tables(ids, X, y, columns, parts, drop=drop)
    return dataset, tables, part.stats(y, parts), (ids, X, y, columns, drop)


def pooled_table(ids, X, y, columns, drop):
    """The centralized baseline: every hospital's rows in one table (one-client run)."""
    return part.tables(ids, X, y, columns, {"pooled": np.arange(len(ids))}, drop=drop)


def curve(history):
    return [{"epoch": h["round"] + 1, "loss": h["loss"], **h.get("eval", {})} for h in history
            if "eval" in h]


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    out = output_dir(args, NAME)
    t0 = time.perf_counter()
    progress = not args.no_progress
    dataset, tables, pstats, pooled_parts = hospitals(args)
    rounds = args.rounds or (30 if args.quick else 60)
    base = FedConfig(hidden=(32, 16), rounds=rounds, local_epochs=1, batch_size=32,
                     client_lr=0.05, seed=args.seed, test_fraction=0.3)
    console.print(f"[bold]{NAME}[/]: {dataset.source}; {len(tables)} hospitals "
                  f"({args.partition}), {rounds} rounds, engine {args.mode}")

    runs: dict[str, dict] = {}

    def run(key, config, tabs=None, *, eval_every=1, label=None):
        trainer = FederatedTrainer(tabs or tables, config, mode=args.mode)
        start = time.perf_counter()
        history = trainer.fit(eval_every=eval_every, progress=progress,
                              description=label or key)
        result = trainer.evaluate()
        runs[key] = {"trainer": trainer, "history": history, "eval": result,
                     "seconds": time.perf_counter() - start}
        return runs[key]

    run("fedavg", base)
    run("fedprox", replace(base, mu=0.1))
    run("fedadam", replace(base, server_optimizer="fedadam", server_lr=0.01))
    run("centralized", base, pooled_table(*pooled_parts), label="centralized")
    # local-only: each hospital trains alone for the same number of epochs
    local = {}
    with progress_bar("local-only models", total=len(tables), enabled=progress) as bar:
        for name, table in tables.items():
            trainer = FederatedTrainer({name: table}, base, mode=args.mode)
            trainer.fit(progress=False)
            local[name] = trainer.evaluate()["per_client"][name]
            bar.advance(1)
    # personalization: FedPer run, and local fine-tuning of the FedAvg model
    fedper = run("fedper", replace(base, personalization="fedper"), eval_every=0)
    fedper_cmp = compare(fedper["trainer"], finetune_epochs=0)
    finetune = compare(runs["fedavg"]["trainer"], finetune_epochs=2)
    # compression with error feedback
    for scheme in ("int8", "int4", "topk"):
        run(scheme, replace(base, compression=scheme, topk_fraction=0.1), eval_every=0)
    # 20% dropouts (seeded per round; dropped hospitals rejoin later)
    drop = run("dropout", replace(base, systems=SystemsConfig(dropout_rate=0.2)), eval_every=0)
    seconds = time.perf_counter() - t0

    # -- metrics -------------------------------------------------------------------------
    def m(key):
        ev = runs[key]["eval"]
        pc = [v["auc"] for v in ev["per_client"].values()]
        return {**ev["pooled"], "per_client_mean_auc": float(np.nanmean(pc)),
                "seconds": runs[key]["seconds"]}

    fedavg_pc = {c: v["auc"] for c, v in runs["fedavg"]["eval"]["per_client"].items()}
    local_pc = {c: v["auc"] for c, v in local.items()}
    bytes_round = {k: int(np.median([h["bytes_up"] for h in runs[k]["history"]]))
                   for k in ("fedavg", "int8", "int4", "topk")}
    bytes_round["none"] = bytes_round.pop("fedavg")
    dhist = drop["history"]
    metrics = {
        "fedavg": m("fedavg"), "fedprox": m("fedprox"), "fedadam": m("fedadam"),
        "centralized": m("centralized"),
        "local_only_mean": {"auc": float(np.nanmean(list(local_pc.values())))},
        "per_client_auc": fedavg_pc,
        "local_only_per_client_auc": local_pc,
        "personalized_mean": {"auc": finetune["mean"]["finetuned"],
                              "method": "local fine-tuning, 2 epochs"},
        "fedper_mean": {"auc": fedper_cmp["mean"]["fedper"]},
        "global_per_client_mean": {"auc": finetune["mean"]["global"]},
        "compressed": {k: m(k) for k in ("int8", "int4", "topk")},
    }
    spread = {"fedavg": max(fedavg_pc.values()) - min(fedavg_pc.values()),
              "local_only": max(local_pc.values()) - min(local_pc.values())}
    targets = {
        "fedavg_within_0.02_of_centralized":
            abs(metrics["fedavg"]["auc"] - metrics["centralized"]["auc"]) <= 0.02,
        "fedavg_above_local_only_mean":
            metrics["fedavg"]["per_client_mean_auc"] > metrics["local_only_mean"]["auc"],
        "compression_within_0.01_auc": all(
            abs(metrics["compressed"][k]["auc"] - metrics["fedavg"]["auc"]) <= 0.01
            for k in ("int8", "int4", "topk")),
    }
    result = {
        "scenario": NAME,
        "seconds": seconds,
        "seed": args.seed,
        "partition": {"kind": args.partition, "alpha": args.alpha if args.partition ==
                      "dirichlet" else None, "hospitals": pstats},
        "config": base.to_json(),
        "metrics": metrics,
        "fairness_spread_auc": spread,
        "bytes_per_round": bytes_round,
        "dropout": {
            "rate": 0.2, "auc": float(runs["dropout"]["eval"]["pooled"]["auc"]),
            "rounds_skipped": sum(h["skipped"] for h in dhist),
            "mean_clients_per_round": float(np.mean([len(h["clients"]) for h in dhist])),
        },
        "personalization": {"finetune": finetune, "fedper": fedper_cmp},
        "targets": targets,
        "engine": args.mode,
    }

    # -- printed summary -----------------------------------------------------------------
    cols = ["model", "pooled AUC", "mean hospital AUC", "accuracy", "seconds"]
    names = {"fedavg": "FedAvg", "fedprox": "FedProx (mu 0.1)", "fedadam": "FedAdam",
             "centralized": "centralized (pooled rows)"}
    rows = [[names[k], metrics[k]["auc"], metrics[k]["per_client_mean_auc"],
             metrics[k]["accuracy"], metrics[k]["seconds"]] for k in names]
    rows.append(["local-only (mean)", float("nan"), metrics["local_only_mean"]["auc"],
                 float("nan"), float("nan")])
    rows.append(["FedAvg + fine-tuning (mean)", float("nan"),
                 metrics["personalized_mean"]["auc"], float("nan"), float("nan")])
    rows.append(["FedPer (mean)", float("nan"), metrics["fedper_mean"]["auc"], float("nan"),
                 float("nan")])
    print_table(f"flchain held-out, {len(tables)} hospitals ({args.partition})", cols, rows)
    hcols = ["hospital", "rows", "death rate", "FedAvg AUC", "local-only AUC", "fine-tuned AUC"]
    hrows = [[c, pstats[c]["rows"], pstats[c]["positive_rate"], fedavg_pc[c], local_pc[c],
              finetune["per_client"][c]["finetuned"]] for c in tables]
    print_table("per hospital", hcols, hrows)
    brows = [[k, v, bytes_round["none"] / v,
              metrics["compressed"][k]["auc"] if k != "none" else metrics["fedavg"]["auc"]]
             for k, v in bytes_round.items()]
    bcols = ["compression", "bytes/round (all clients)", "reduction", "AUC"]
    print_table("update bytes per round (serialized messages)", bcols, brows)
    dropout = result["dropout"]
    console.print(f"20% dropouts: AUC {dropout['auc']:.4f} (FedAvg "
                  f"{metrics['fedavg']['auc']:.4f}), {dropout['mean_clients_per_round']:.1f}"
                  f" hospitals per round; targets {targets}; {seconds:.1f} s")

    # -- files -----------------------------------------------------------------------------
    plot_training({names[k]: curve(runs[k]["history"]) for k in names},
                  out / "auc_rounds.png", "auc", "flchain: held-out AUC per round")
    plot_bars({c: {"FedAvg": fedavg_pc[c], "local only": local_pc[c],
                   "fine-tuned": finetune["per_client"][c]["finetuned"]} for c in tables},
              out / "hospitals.png", "held-out AUC", "AUC per hospital")
    plot_bars({k: {"bytes": v / 1e3} for k, v in bytes_round.items()}, out / "bytes.png",
              "kB per round", "update bytes per round")
    report = f"""# Hospitals with FedAvg on flchain

{dataset.description}

Horizontal split: {len(tables)} hospitals ({args.partition}); the sample-year column defines
the natural split and is dropped from the features. {rounds} rounds, 1 local epoch, batch
{base.batch_size}, client SGD lr {base.client_lr}, MLP {list(base.hidden)}, seed {args.seed}.
Features are standardized with the pooled mean and standard deviation computed from the
hospitals' aggregate moments. Run time {seconds:.1f} s.

## Hospitals

{markdown_table(["hospital", "rows", "share", "death rate"],
                [[c, s["rows"], s["share"], s["positive_rate"]] for c, s in pstats.items()])}
## Held-out results

{markdown_table(cols, rows)}
Pooled AUC is over the union of the hospitals' held-out rows; mean hospital AUC averages
each hospital's AUC on its own held-out rows (the local-only models can only be scored
that way). Fairness spread (max - min hospital AUC): FedAvg {spread['fedavg']:.3f},
local-only {spread['local_only']:.3f}.

![AUC per round](auc_rounds.png)

## Per hospital

{markdown_table(hcols, hrows)}
![per hospital](hospitals.png)

## Communication

{markdown_table(bcols, brows)}
Bytes are those of the serialized `fit.update` messages (`plaintext-by-design`: a model
update is a function of the hospital's labels; secure aggregation is not part of this
scenario). Compression uses error feedback.

![bytes](bytes.png)

## Dropouts

With each hospital unreachable in a round with probability 0.2 (seeded; it rejoins later),
FedAvg reaches AUC {result['dropout']['auc']:.4f} against {metrics['fedavg']['auc']:.4f},
with {result['dropout']['mean_clients_per_round']:.1f} hospitals per round and
{result['dropout']['rounds_skipped']} skipped rounds.

## Targets

{markdown_table(["target", "met"], [[k, str(v)] for k, v in targets.items()])}"""
    (out / "report.md").write_text(report)
    write_json(result, out / "result.json", args.json)
    console.print(f"wrote {out}/report.md, auc_rounds.png, hospitals.png, bytes.png, result.json")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
