"""Erasure requests on ACTG 320: exact replay, SISA shards, audit log and certificates.

The hospital, lab and pharmacy train the vertical model with checkpoints, a lineage graph
and a hash-chained audit log; patients arrive in waves (the scalers are fitted on the first
wave). Erasure requests for random patients are served by exact replay from the last
checkpoint each patient did not influence, and a batch (50+ patients) is served together so
the membership-inference figures mean something. A SISA ensemble (S shards, slices) serves
a request by replaying one shard. Every result is compared with a retrain from scratch
without the patients. A copy of the audit log is tampered with to show verification
catches it. Finally a whole hospital leaves a horizontal flchain federation and is removed
approximately (FedEraser-style calibrated replay), against an exact retrain without it.

Outputs in --out: run/ and sisa_run/ (run directories for `vfl erase`, `vfl lineage`,
`vfl audit verify`), certificates/, report.md, erasure_times.png, result.json.
"""

from __future__ import annotations

import json
import shutil
import sys
import time

import numpy as np

from horizontal import FedConfig
from horizontal import partition as part
from horizontal.federaser import compare_with_retrain
from scenarios.report import (
    console,
    markdown_table,
    output_dir,
    plot_bars,
    print_table,
    scenario_parser,
    write_json,
)
from unlearning.audit_log import AuditLog
from unlearning.methods.sisa import sisa_spec
from unlearning.run import RunDir, train_run
from unlearning.service import ErasureRequest, ErasureService
from unlearning.shadow import attack_run
from vfl.core.tasks import Task
from vfl.datasets import load_flchain
from vfl.vertical.config import TrainConfig
from vfl.vertical.models import ModelConfig

NAME = "erasure_request"


def build_parser():
    parser = scenario_parser(NAME, __doc__)
    parser.add_argument("--requests", type=int, default=None, help="single-patient requests")
    parser.add_argument("--batch", type=int, default=None, help="patients in the batch request")
    parser.add_argument("--shards", type=int, default=None, help="SISA shards")
    return parser


def _remove_hospital(args) -> dict:
    """A hospital leaves a horizontal federation (flchain, 4 hospitals by Dirichlet label
    skew): FedEraser-style removal from updates stored at their owners, against an exact
    retrain without that hospital."""
    dataset = load_flchain(seed=args.seed, impute={"creatinine": "median"}, coverage=1.0,
                           extra=0.0)
    ids, X, y, columns = dataset.pooled()
    parts = part.dirichlet_label_skew(ids, y, 4, 1.0, args.seed)
    tables = part.tables(ids, X, y, columns, parts)
    config = FedConfig(hidden=(16,), rounds=10 if args.quick else 20, local_epochs=1,
                       batch_size=64, client_lr=0.05, seed=args.seed, test_fraction=0.3)
    leaving = sorted(tables)[0]
    out = compare_with_retrain(tables, config, leaving, every=1)
    out["leaving"] = leaving
    return out


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    out = output_dir(args, NAME)
    t0 = time.perf_counter()
    quick = args.quick
    n_single = args.requests or (2 if quick else 8)
    n_batch = args.batch or 200
    shards = args.shards or (4 if quick else 8)
    waves = 4
    config = TrainConfig(Task("binary"), ModelConfig("linear", "sum"),
                         epochs=4 if quick else 8, batch_size=64, learning_rate=0.05,
                         seed=args.seed, test_fraction=0.35,
                         optimizer="adam", protocol="plain")
    base = {"mode": "vertical", "dataset": {"name": "actg320", "kwargs": {"seed": args.seed}},
            "config": config.to_json(), "fsync": True}
    for d in ("run", "sisa_run", "certificates"):
        shutil.rmtree(out / d, ignore_errors=True)

    console.print(f"[bold]{NAME}[/]: training the vertical ACTG 320 model with checkpoints")
    run = train_run(out / "run", base | {"arrival": {"waves": waves},
                                         "retention": {"every": 1}})
    aligned = run.aligned
    adapter = run.adapter()
    train_ids = adapter.split_ids()["train"]
    rng = np.random.default_rng(args.seed)
    picks = [str(p) for p in rng.choice(train_ids, n_single + n_batch, replace=False)]
    singles, batch = picks[:n_single], picks[n_single:]

    rows, requests = [], []
    service = ErasureService(run, retrain=True, verify_seed=args.seed)

    def record(label, pids, cert, method):
        v = cert["verification"]
        requests.append({
            "patient": pids[0] if len(pids) == 1 else f"batch of {len(pids)}",
            "patients": len(pids),
            "method": method,
            "seconds": cert["seconds"],
            "retrain_seconds": v.get("retrain_seconds"),
            "max_abs_param_diff_vs_retrain": v.get("max_abs_param_diff_vs_retrain"),
            "prediction_agreement": v.get("prediction_agreement"),
            "auc_diff_vs_retrain": v.get("auc_diff_vs_retrain"),
            "rollback": cert["rollback"],
            "mia_auc_erased": v["mia_auc_erased"],
            "mia_auc_unseen": v["mia_auc_unseen"],
            "mia_auc_diff_ci95": v["mia_auc_diff_ci95"],
            "forget_accuracy": v["forget_accuracy"],
            "retain_accuracy": v["retain_accuracy"],
            "test_accuracy": v["test_accuracy"],
            "mia_efficacy": v["mia_efficacy"],
            "certificate": cert["request"]["request_id"],
        })
        r = requests[-1]
        rows.append([label, method, str(r["rollback"]), r["seconds"], r["retrain_seconds"],
                     r["max_abs_param_diff_vs_retrain"], r["mia_auc_erased"],
                     r["mia_auc_unseen"]])

    console.print(f"exact replay: {n_single} single requests and a batch of {n_batch}")
    cert = service.submit_many([ErasureRequest(p, party="lab") for p in batch])
    record(f"batch {n_batch}", batch, cert, "exact")
    # Shadow-model MIA on the batch, before the single requests change the model again
    shadow = attack_run(run, batch, shadow_models=4 if quick else 8, seed=args.seed)
    for pid in singles:
        cert = service.submit(ErasureRequest(pid, party="hospital", reason="patient request"))
        record(pid[:12], [pid], cert, "exact")
    again = service.submit(ErasureRequest(singles[0], party="hospital"))
    idempotent = again["request"]["request_id"] == requests[1]["certificate"]
    single_auc = _test_auc(run)

    console.print(f"SISA: {shards} shards x {waves} slices")
    sisa = train_run(out / "sisa_run", sisa_spec(base, shards, waves) | {"aligned": aligned})
    sisa_service = ErasureService(sisa, retrain=True, verify_seed=args.seed)
    sisa_auc = _test_auc(sisa)
    # the batch touches every shard; in --quick its retrain comparison is skipped (time)
    batch_service = ErasureService(sisa, retrain=not quick, verify_seed=args.seed)
    cert = batch_service.submit_many([ErasureRequest(p, method="sisa") for p in batch])
    record(f"batch {n_batch}", batch, cert, "sisa")
    for pid in singles[:2]:
        cert = sisa_service.submit(ErasureRequest(pid, party="pharmacy", method="sisa"))
        record(pid[:12], [pid], cert, "sisa")

    # audit log verification and a deliberately tampered copy
    audit_ok = all(AuditLog(r.path / "audit.jsonl").verify().ok for r in (run, sisa))
    consistent = RunDir(run.path).consistency() == [] and RunDir(sisa.path).consistency() == []
    tampered = out / "tampered_audit.jsonl"
    lines = (run.path / "audit.jsonl").read_text().splitlines(keepends=True)
    entry = json.loads(lines[len(lines) // 2])
    entry["data"]["tampered"] = True
    lines[len(lines) // 2] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    tampered.write_text("".join(lines))
    shutil.copy(run.path / "audit.head", tampered.with_suffix(".head"))
    tamper_result = AuditLog(tampered).verify()
    cert_dir = out / "certificates"
    cert_dir.mkdir(exist_ok=True)
    for r in (run, sisa):
        for c in (r.path / "certificates").glob("*.json"):
            shutil.copy(c, cert_dir / f"{r.path.name}-{c.name}")

    seconds = time.perf_counter() - t0
    exact_req = [r for r in requests if r["method"] == "exact" and r["patients"] == 1]
    speed = [r["retrain_seconds"] / r["seconds"] for r in exact_req if r["seconds"]]
    sisa_req = [r for r in requests if r["method"] == "sisa" and r["patients"] == 1]
    console.print("approximate removal: a hospital leaves a horizontal flchain federation")
    approximate = _remove_hospital(args)
    approximate["status"] = (
        f"{approximate['leaving']} removed by FedEraser-style calibrated replay: AUC "
        f"{approximate['auc_unlearned']:.4f} (retrain {approximate['auc_retrain']:.4f}, "
        f"original {approximate['auc_original']:.4f}); distance to retrain "
        f"{approximate['dist_unlearned_retrain']:.3f} (original "
        f"{approximate['dist_original_retrain']:.3f}); local steps "
        f"{approximate['local_steps_unlearn']} vs {approximate['local_steps_retrain']}"
    )
    result = {
        "scenario": NAME,
        "seconds": seconds,
        "seed": args.seed,
        "config": config.to_json(),
        "aligned_rows": len(aligned),
        "requests": requests,
        "audit_verified": audit_ok,
        "store_lineage_log_consistent": consistent,
        "tamper_detected": not tamper_result.ok,
        "tamper_first_bad_entry": tamper_result.first_bad,
        "idempotent_repeat": idempotent,
        "median_exact_speedup": float(np.median(speed)) if speed else None,
        "sisa": {
            "shards": shards,
            "slices": waves,
            "auc": sisa_auc,
            "auc_single_model": single_auc,
            "median_speedup": float(np.median([r["retrain_seconds"] / r["seconds"]
                                               for r in sisa_req])) if sisa_req else None,
        },
        "approximate": approximate,
        "shadow_mia": {k: shadow[k] for k in (
            "auc_erased", "auc_unseen", "auc_members", "auc_diff_ci95", "auc_shadow",
            "shadow_models", "shadow_train_rows", "n_erased", "n_unseen_eval", "n_members",
            "seconds")},
        "run_dirs": {"vertical": str(run.path), "sisa": str(sisa.path)},
    }

    columns = ["request", "method", "rollback", "seconds", "retrain s", "max |dparam|",
               "MIA AUC erased", "MIA AUC unseen"]
    print_table("erasure requests (exact replay and SISA) vs retrain from scratch",
                columns, rows)
    console.print(
        f"audit verified: {audit_ok}; tampered copy detected: {not tamper_result.ok} "
        f"(entry {tamper_result.first_bad}); repeated request idempotent: {idempotent}; "
        f"SISA AUC {sisa_auc:.3f} vs single model {single_auc:.3f}"
    )
    plot_bars({r[0]: {"unlearn": r[3], "retrain": r[4] or 0.0} for r in rows},
              out / "erasure_times.png", "seconds", "erasure vs retrain from scratch")
    report = f"""# Erasure requests on ACTG 320

Vertical model (hospital, lab, pharmacy), {len(aligned)} aligned patients, patients
arriving in {waves} waves (scalers fitted on the first), checkpoints every round.
Exact replay restores the last checkpoint each patient did not influence and replays
without them; SISA uses {shards} shards x {waves} slices. Total {seconds:.1f} s.

{markdown_table(columns, rows)}
MIA: class-aware loss-threshold attack; "erased" is the attack AUC of erased rows against
never-seen rows, "unseen" the same for other never-seen rows (both ~0.5 is the goal).

SISA test AUC {sisa_auc:.4f} vs the single model {single_auc:.4f}.
Audit log verified: {audit_ok}; tampered copy detected at entry {tamper_result.first_bad}.
Approximate removal of a hospital: {result["approximate"]["status"]}.

{_shadow_section(shadow)}

![times](erasure_times.png)
"""
    (out / "report.md").write_text(report)
    write_json(result, out / "result.json", args.json)
    console.print(f"wrote {out}/report.md, erasure_times.png, result.json, certificates/")
    return result


def _shadow_section(shadow: dict) -> str:
    """The report's shadow-model attack table (batch request, exact replay)."""
    rows = [["erased (batch) vs never-seen", shadow["auc_erased"], shadow["n_erased"]],
            ["never-seen vs never-seen", shadow["auc_unseen"], shadow["n_unseen_eval"] // 2],
            ["still in training vs never-seen", shadow["auc_members"], shadow["n_members"]],
            ["shadow-in vs shadow-out (in-sample)", shadow["auc_shadow"],
             shadow["shadow_models"] * shadow["shadow_train_rows"]]]
    lo, hi = shadow["auc_diff_ci95"]
    return f"""## Shadow-model attack

Shokri et al. 2017 on the batch request: {shadow["shadow_models"]} shadow models trained like
the target on {shadow["shadow_train_rows"]} never-seen rows each (the attacker's share of the
never-seen rows, disjoint from every probe), per-class logistic attack models on P(true
label), its log and the entropy. AUC erased - unseen 95% CI [{lo:.3f}, {hi:.3f}].

{markdown_table(["probe rows", "attack AUC", "rows"], rows)}"""


def _test_auc(run: RunDir) -> float:
    from unlearning.verification import heldout_figures

    adapter, trainers = RunDir(run.path).final_trainers()
    return heldout_figures(adapter, trainers, adapter.split_ids()["test"])["test_auc"]


if __name__ == "__main__":
    main(sys.argv[1:])
