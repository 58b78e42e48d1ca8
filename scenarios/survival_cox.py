"""Survival analysis across a hospital, a lab and a pharmacy: a vertical Cox model on ACTG 320.

ACTG 320 (Hammer et al., N Engl J Med 1997;337:725-33; 1151 patients in scikit-survival's
copy) split the way ``hospital_lab_pharmacy`` splits it: the hospital holds demographics and
each patient's follow-up time and event (AIDS-defining event or death), the lab holds CD4
counts, the pharmacy holds the treatment arm and prior zidovudine. Patients are aligned by
private set intersection and every Cox model below is fitted by ``vfl.survival.VerticalCox``
without pooling rows, under the ``paillier`` protocol by default (a passive party receives
only ciphertexts until its own coefficients are released, masked, at the end).

1. The trial's own result: the hazard ratio of the indinavir arm (``tx``, at the pharmacy;
   the hospital contributes only the outcomes) on every aligned patient, next to the
   published 0.50 (0.33-0.76) and scikit-survival's univariate fit on the same rows.
2. The adjusted model: ``tx`` adjusted for the hospital's and the lab's covariates, fitted on
   the training patients; hazard ratios with 95% confidence intervals per party, next to
   scikit-survival on the pooled training rows, and the C-index and integrated Brier score
   on held-out patients for the vertical, centralized and hospital-only models.
3. Collinearity: the full design with the treatment-group indicators (``tx`` is exactly
   ``txgrp_2 + txgrp_4``) is refused with ``CollinearFeaturesError``.
4. Kaplan-Meier curves of held-out risk tertiles against the model's predicted survival.
5. Erasure: five patients are erased from the adjusted model, which then equals a fresh fit
   without them.
6. What the lab and the pharmacy received, by message kind and label.

``--quick`` uses a 1024-bit Paillier test key, configured at every party's security policy:
with the default 2048-bit key the same run took 90 s on 2 cores, with 1024 bits 49 s (of
which about 15 s are the private set intersections of three fits, which the key does not
affect). The model and every number are the same under either key (the arithmetic is the
same integers); ``--key-bits`` overrides.

Outputs in --out: report.md, km_vs_predicted.png, hazard_ratios.png, result.json.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from scenarios.report import (
    _pyplot,
    console,
    markdown_table,
    output_dir,
    print_table,
    scenario_parser,
    write_json,
)
from vfl.core.messages import Label
from vfl.core.table import PartyTable
from vfl.datasets.clinical import load_actg320
from vfl.survival import (
    CollinearFeaturesError,
    CoxConfig,
    VerticalCox,
    breslow_baseline,
    fit_cox,
    standard_errors,
    survival_function,
    survival_labels,
)
from vfl.survival.federated import Z95
from vfl.survival.parties import evaluate_cox
from vfl.vertical.config import SecurityPolicy

NAME = "survival_cox"
#: Hammer et al. 1997, time to an AIDS-defining event or death, indinavir arm vs not.
PUBLISHED = {
    "estimate": 0.50,
    "ci_low": 0.33,
    "ci_high": 0.76,
    "source": "Hammer SM et al. A controlled trial of two nucleoside analogues plus indinavir "
              "in persons with HIV infection and CD4 cell counts of 200 per cubic millimeter "
              "or less. N Engl J Med 1997;337:725-33",
}
#: The adjusted model's covariates per party (a well-posed set: no treatment groups).
ADJUSTED = {
    "hospital": ["age", "karnof", "sex", "ivdrug", "hemophil"],
    "lab": ["cd4", "strat2"],
    "pharmacy": ["tx", "priorzdv"],
}
TEST_FRACTION = 0.3
ERASED = 5
QUICK_KEY_BITS = 1024
KM_COLUMNS = ["risk group", "patients", "events", "Kaplan-Meier at its last time",
              "predicted at that time"]
HR_COLUMNS = ["party", "column", "HR", "95% CI", "p", "HR centralized", "95% CI centralized"]


def build_parser():
    parser = scenario_parser(NAME, __doc__)
    parser.add_argument("--protocol", default="paillier", choices=["paillier", "plain"],
                        help="vertical Cox protocol (default: paillier; plain is the "
                             "comparison, where passives see label-dependent values)")
    parser.add_argument("--key-bits", type=int, default=None,
                        help=f"Paillier key length (default 2048; --quick: {QUICK_KEY_BITS}, "
                             "a test key)")
    return parser


def _settings(args) -> tuple[dict, SecurityPolicy]:
    """CoxConfig fields and every party's own policy for the chosen protocol and key."""
    encrypted = args.protocol == "paillier"
    bits = args.key_bits or (QUICK_KEY_BITS if args.quick and encrypted else 2048)
    test_key = encrypted and bits < 2048
    fields = {"protocol": args.protocol, "key_bits": bits, "insecure_test_key": test_key,
              "seed": args.seed}
    policy = SecurityPolicy(protocols=(args.protocol,), min_key_bits=min(bits, 2048),
                            allow_insecure_test_key=test_key)
    return fields, policy


def _select(table: PartyTable, columns, *, labels: bool = False) -> PartyTable:
    idx = [table.columns.index(c) for c in columns]
    features = table.features[:, idx] if idx else np.empty((table.n_rows, 0))
    return PartyTable.from_numpy(table.ids, features, list(columns),
                                 labels=table.labels if labels else None,
                                 label_name=table.label_name if labels else None)


def _pooled(tables, ids, columns_by_party):
    """The centralized analyst's view: every party's chosen columns of ``ids``."""
    blocks = [tables[p].rows(ids).features[:, [tables[p].columns.index(c) for c in cols]]
              for p, cols in columns_by_party.items()]
    return np.concatenate(blocks, axis=1)


def _hr(coef: float, se: float) -> dict:
    from math import erfc, sqrt

    return {"coef": float(coef), "se": float(se), "hazard_ratio": float(np.exp(coef)),
            "ci_low": float(np.exp(coef - Z95 * se)), "ci_high": float(np.exp(coef + Z95 * se)),
            "p_value": float(erfc(abs(coef / se) / sqrt(2))) if se > 0 else 0.0}


def _ci(row: dict) -> str:
    return f"{row['ci_low']:.3f}-{row['ci_high']:.3f}"


def _sksurv(x, time, event):
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    y = Surv.from_arrays(event=event.astype(bool), time=time)
    return CoxPHSurvivalAnalysis(ties="breslow").fit(x, y).coef_


def _fit(tables, config, policy, progress, title):
    console.print(f"[bold]{NAME}[/] {title}")
    fed = VerticalCox(tables, "hospital", config, policy=policy)
    fit = fed.fit(progress=progress)
    return fed, fit


# -- 1. the trial's hazard ratio ------------------------------------------------------------------
def trial_hazard_ratio(full, fields, policy, progress) -> tuple[dict, dict]:
    hospital = _select(full.tables["hospital"], [], labels=True)  # outcomes only
    tables = {"hospital": hospital, "pharmacy": _select(full.tables["pharmacy"], ["tx"])}
    config = CoxConfig(test_fraction=0.0, **fields)
    fed, fit = _fit(tables, config, policy, progress,
                    "1. trial: tx alone (pharmacy), outcomes at the hospital")
    tx = fit.get("tx", "pharmacy")
    # scikit-survival on the same aligned rows (the hospital's rows after PSI)
    ids = fed.parties["hospital"].train_rows.ids
    time_, event = survival_labels(full.tables["hospital"].rows(ids).labels)
    x = full.tables["pharmacy"].rows(ids).features[:, [full.tables["pharmacy"].columns.index(
        "tx")]]
    sk_coef = float(_sksurv(x, time_, event)[0])
    central = fit_cox(x, time_, event, columns=["tx"])
    sk_se = float(standard_errors(central.information)[0])
    sk = _hr(sk_coef, sk_se)
    result = {
        "estimate": tx.hazard_ratio, "ci_low": tx.ci[0], "ci_high": tx.ci[1], "coef": tx.coef,
        "se": tx.se, "p_value": tx.p_value, "n": int(len(ids)), "events": int(event.sum()),
        "published": PUBLISHED,
        "scikit_survival": {
            "estimate": sk["hazard_ratio"], "coef": sk_coef, "ci_low": sk["ci_low"],
            "ci_high": sk["ci_high"],
            "ci_note": "scikit-survival's coefficient; its standard error from the inverse "
                       "observed information of vfl.survival.fit_cox on the same rows",
        },
        "abs_difference_to_scikit_survival": abs(tx.hazard_ratio - sk["hazard_ratio"]),
    }
    run = {"config": config.to_json(), "rounds": fit.rounds, "seconds": fit.seconds,
           "psi_seconds": fed.alignment.seconds, "bytes": fit.bytes, "aligned": int(len(ids))}
    return result, run


# -- 2. the adjusted model ------------------------------------------------------------------------
def adjusted_model(full, fields, policy, progress):
    tables = {p: _select(full.tables[p], cols, labels=p == "hospital")
              for p, cols in ADJUSTED.items()}
    config = CoxConfig(test_fraction=TEST_FRACTION, **fields)
    fed, fit = _fit(tables, config, policy, progress,
                    "2. adjusted: tx + the hospital's and the lab's covariates")
    vfl_eval = fed.evaluate("test")
    hospital = fed.parties["hospital"]
    train_ids, test_ids = hospital.train_rows.ids, hospital.test_rows.ids
    time_tr, event_tr = hospital.time, hospital.event
    time_te, event_te = hospital.test_time, hospital.test_event

    # centralized: scikit-survival on the pooled training rows
    t0 = time.perf_counter()
    x_tr, x_te = _pooled(tables, train_ids, ADJUSTED), _pooled(tables, test_ids, ADJUSTED)
    c_coef = _sksurv(x_tr, time_tr, event_tr)
    c_se = standard_errors(fit_cox(x_tr, time_tr, event_tr).information)
    eta_tr = x_tr @ c_coef
    central = evaluate_cox(time_tr, event_tr, breslow_baseline(time_tr, event_tr, eta_tr),
                           time_te, event_te, x_te @ c_coef)
    central_seconds = time.perf_counter() - t0

    # hospital only: its own columns, its own training rows
    t0 = time.perf_counter()
    own = {"hospital": ADJUSTED["hospital"]}
    h_tr, h_te = _pooled(tables, train_ids, own), _pooled(tables, test_ids, own)
    local = fit_cox(h_tr, time_tr, event_tr, columns=ADJUSTED["hospital"])
    local_eval = evaluate_cox(time_tr, event_tr,
                              breslow_baseline(time_tr, event_tr, h_tr @ local.coef),
                              time_te, event_te, h_te @ local.coef)
    local_seconds = time.perf_counter() - t0

    centralized = [{"party": c.party, "column": c.column} | _hr(b, s)
                   for c, b, s in zip(fit.coefficients, c_coef, c_se)]
    local_only = [{"party": "hospital", "column": col} | _hr(b, s) for col, b, s in
                  zip(ADJUSTED["hospital"], local.coef, standard_errors(local.information))]
    metrics = {}
    for key, ev in (("vfl", vfl_eval), ("centralized", central), ("local_only", local_eval)):
        metrics[f"{key}.c_index"] = ev["c_index"]
        metrics[f"{key}.integrated_brier"] = ev["integrated_brier"]
    plot_data = {"eta": np.asarray(vfl_eval["eta"]), "time": time_te, "event": event_te,
                 "baseline": hospital.baseline}
    out = {
        "fed": fed, "fit": fit, "config": config, "tables": tables, "metrics": metrics,
        "n_train": int(len(train_ids)), "n_test": int(len(test_ids)),
        "events_train": int(event_tr.sum()), "events_test": int(event_te.sum()),
        "coefficients": {"vfl": fit.table(), "centralized": centralized,
                         "local_only": local_only},
        "max_abs_coef_diff": float(np.abs(fit.coef() - c_coef).max()),
        "seconds": {"vfl": fit.seconds, "centralized": central_seconds,
                    "local_only": local_seconds},
        "psi_seconds": fed.alignment.seconds,
        "plot": plot_data,
    }
    return out


# -- 3. collinearity ------------------------------------------------------------------------------
def collinearity(seed, fields, policy, progress) -> dict:
    data = load_actg320(seed, label="survival", coverage=1.0, one_hot=True)
    console.print(f"[bold]{NAME}[/] 3. collinearity: the full design, treatment groups as "
                  "indicators")
    design = {p: list(t.columns) for p, t in data.tables.items()}
    fed = VerticalCox(data.tables, data.active, CoxConfig(**fields), policy=policy)
    try:
        fed.fit(progress=progress)
    except CollinearFeaturesError as exc:
        return {"refused": True, "error": type(exc).__name__, "message": str(exc),
                "design": design}
    return {"refused": False, "error": None, "message": None, "design": design}


# -- 5. erasure -----------------------------------------------------------------------------------
def erasure(adj, fields, policy, progress) -> dict:
    fed, before = adj["fed"], adj["fit"]
    hospital = fed.parties["hospital"]
    ids = [str(i) for i in sorted(hospital.train_rows.ids)[:ERASED]]
    events = int(sum(hospital.event[list(hospital.train_rows.ids).index(i)] for i in ids))
    console.print(f"[bold]{NAME}[/] 5. erasure of {len(ids)} patients, then a fresh fit "
                  "without them")
    t0 = time.perf_counter()
    acks = fed.erase(ids, progress=progress)
    erase_seconds = time.perf_counter() - t0
    erase_psi = 0.0  # each party drops the erased ids from its aligned ids: no second PSI
    after = fed.fitted
    after_eval = fed.evaluate("test")
    fresh_tables = {p: t.without(ids) for p, t in adj["tables"].items()}
    fresh_fed, fresh = _fit(fresh_tables, adj["config"], policy, progress,
                            "5. fresh fit without the erased patients")
    fresh_eval = fresh_fed.evaluate("test")
    equal = (after.coef().tobytes() == fresh.coef().tobytes()
             and [c.se for c in after.coefficients] == [c.se for c in fresh.coefficients])
    return {
        "erased": len(ids), "ids": ids, "events_among_erased": events,
        "deleted_per_party": {p: a.get("deleted") for p, a in acks.items()},
        "equal_to_retrain": bool(equal),
        "max_abs_coef_change": float(np.abs(after.coef() - before.coef()).max()),
        "c_index_after_erasure": after_eval["c_index"],
        "c_index_retrain": fresh_eval["c_index"],
        "rounds": {"erasure": after.rounds, "retrain": fresh.rounds},
        "seconds": {"erasure": erase_seconds, "retrain": fresh.seconds},
        "psi_seconds": {"erasure": erase_psi, "retrain": fresh_fed.alignment.seconds},
        "bytes": {"erasure": after.bytes, "retrain": fresh.bytes},
    }


# -- 6. what the passives saw ---------------------------------------------------------------------
def passive_view(fed) -> dict:
    out = {"parties": {}}
    plaintext = {}
    for p in fed.passives:
        rows: dict[tuple, dict] = {}
        for e in fed.transcript.received_by(p):
            if not e.kind.startswith("cox."):
                continue
            key = (e.kind, e.sender, e.label, e.label_dependent)
            row = rows.setdefault(key, {"kind": e.kind, "from": e.sender, "label": e.label,
                                        "label_dependent": e.label_dependent, "messages": 0,
                                        "bytes": 0})
            row["messages"] += 1
            row["bytes"] += e.bytes
        out["parties"][p] = list(rows.values())
        plaintext[p] = sorted({r["kind"] for r in rows.values() if r["label_dependent"]
                               and r["label"] == str(Label.PLAINTEXT_BY_DESIGN)})
    out["label_dependent_plaintext_received"] = plaintext
    out["label_dependent_only_ciphertext"] = not any(plaintext.values())
    out["summary"] = fed.transcript.summary()
    return out


# -- plots ----------------------------------------------------------------------------------------
def plot_km(plot, path):
    from sksurv.nonparametric import kaplan_meier_estimator

    plt = _pyplot()
    eta, t, e = plot["eta"], plot["time"], plot["event"]
    cuts = np.quantile(eta, [1 / 3, 2 / 3])
    group = np.searchsorted(cuts, eta, side="right")
    grid = np.linspace(0.0, float(t.max()), 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = []
    for g, (name, color) in enumerate(zip(["low", "middle", "high"],
                                          ["tab:green", "tab:orange", "tab:red"])):
        m = group == g
        km_t, km_s = kaplan_meier_estimator(e[m].astype(bool), t[m])
        ax.step(np.r_[0.0, km_t], np.r_[1.0, km_s], where="post", color=color,
                label=f"{name} risk: Kaplan-Meier (n={int(m.sum())}, {int(e[m].sum())} events)")
        pred = survival_function(plot["baseline"], eta[m], grid).mean(axis=0)
        ax.plot(grid, pred, "--", color=color, label=f"{name} risk: predicted (mean)")
        rows.append({"group": name, "n": int(m.sum()), "events": int(e[m].sum()),
                     "km_end": float(km_s[-1]),
                     "predicted_end": float(survival_function(plot["baseline"], eta[m],
                                                              [km_t[-1]]).mean())})
    ax.set(xlabel="days since randomization", ylabel="free of AIDS-defining event or death",
           title="held-out patients by tertile of the vertical linear predictor")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return rows


def plot_forest(trial, adj, path):
    plt = _pyplot()
    top = [("published (Hammer 1997)", PUBLISHED["estimate"], PUBLISHED["ci_low"],
            PUBLISHED["ci_high"], "black"),
           ("scikit-survival, pooled", trial["scikit_survival"]["estimate"],
            trial["scikit_survival"]["ci_low"], trial["scikit_survival"]["ci_high"], "gray"),
           ("vertical (pharmacy tx)", trial["estimate"], trial["ci_low"], trial["ci_high"],
            "tab:blue")]
    colors = {"hospital": "tab:red", "lab": "tab:purple", "pharmacy": "tab:blue"}
    bottom = [(f"{r['party']}: {r['column']}", r["hazard_ratio"], r["ci_low"], r["ci_high"],
               colors.get(r["party"], "black")) for r in adj["coefficients"]["vfl"]]
    central = [r["hazard_ratio"] for r in adj["coefficients"]["centralized"]]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 7), sharex=True,
                                   gridspec_kw={"height_ratios": [len(top), len(bottom)]})
    for ax, rows, title in ((ax1, top, "indinavir arm (tx) alone, all aligned patients"),
                            (ax2, bottom, "adjusted model, training patients")):
        y = np.arange(len(rows))[::-1]
        for yi, (_, hr, lo, hi, color) in zip(y, rows):
            ax.errorbar(hr, yi, xerr=[[hr - lo], [hi - hr]], fmt="o", color=color, capsize=3)
        ax.set_yticks(y, [r[0] for r in rows])
        ax.axvline(1.0, color="k", lw=0.8, ls=":")
        ax.set_title(title, fontsize=10)
    ax2.plot(central, np.arange(len(bottom))[::-1], "x", color="black",
             label="scikit-survival, pooled")
    ax2.legend(fontsize=8, loc="lower right")
    ax2.set_xscale("log")
    ax2.set_xlabel("hazard ratio (95% CI), per unit of the column")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the run --------------------------------------------------------------------------------------
def _hr_rows(adj) -> list[list]:
    return [[v["party"], v["column"], v["hazard_ratio"], _ci(v), f"{v['p_value']:.3g}",
             c["hazard_ratio"], _ci(c)]
            for v, c in zip(adj["coefficients"]["vfl"], adj["coefficients"]["centralized"])]


def _saw_rows(view) -> list[list]:
    return [[p, r["kind"], r["from"], r["label"], r["label_dependent"], r["messages"],
             r["bytes"]] for p, rows in view["parties"].items() for r in rows]


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    out = output_dir(args, NAME)
    progress = not args.no_progress
    fields, policy = _settings(args)
    t_start = time.perf_counter()
    from vfl.crypto.parallel import default_pool

    if args.protocol == "paillier":
        t0 = time.perf_counter()
        default_pool().warm_up()  # so that no fit's seconds include the worker start-up
        pool_seconds = time.perf_counter() - t0
    else:
        pool_seconds = 0.0
    full = load_actg320(args.seed, label="survival", coverage=1.0)
    key_note = "no Paillier key (plaintext messages)"
    if args.protocol == "paillier":
        key_note = f"{fields['key_bits']}-bit Paillier key" + (
            " (an insecure test key, allowed by every party's policy for this run; "
            "`--key-bits 2048` for a production-length key)" if fields["insecure_test_key"]
            else "")
    console.print(f"[bold]{NAME}[/]: {full.source}; protocol {args.protocol}, {key_note}")

    trial, trial_run = trial_hazard_ratio(full, fields, policy, progress)
    sk = trial["scikit_survival"]
    trial_rows = [
        ["vertical (hospital: outcomes, pharmacy: tx)", trial["estimate"],
         f"{trial['ci_low']:.3f}-{trial['ci_high']:.3f}", trial["n"]],
        ["scikit-survival, same rows pooled", sk["estimate"],
         f"{sk['ci_low']:.3f}-{sk['ci_high']:.3f}", trial["n"]],
        ["published (Hammer et al. 1997)", PUBLISHED["estimate"],
         f"{PUBLISHED['ci_low']:.2f}-{PUBLISHED['ci_high']:.2f}", 1156],
    ]
    trial_columns = ["indinavir arm (tx)", "HR", "95% CI", "patients"]
    print_table(f"1. trial hazard ratio ({trial['events']} events)", trial_columns, trial_rows)

    adj = adjusted_model(full, fields, policy, progress)
    fit = adj["fit"]
    view = passive_view(adj["fed"])  # before the erasure adds its messages
    print_table(f"2. adjusted hazard ratios ({adj['n_train']} training patients, "
                f"{adj['events_train']} events)", HR_COLUMNS, _hr_rows(adj))
    m = adj["metrics"]
    metric_rows = [[label, m[f"{k}.c_index"], m[f"{k}.integrated_brier"], adj["seconds"][k]]
                   for k, label in (("vfl", "vertical (3 parties)"),
                                    ("centralized", "centralized (scikit-survival, pooled)"),
                                    ("local_only", "hospital only"))]
    metric_columns = ["model", "C-index", "integrated Brier", "seconds"]
    print_table(f"held-out patients ({adj['n_test']}, {adj['events_test']} events)",
                metric_columns, metric_rows)

    km_rows = plot_km(adj["plot"], out / "km_vs_predicted.png")
    plot_forest(trial, adj, out / "hazard_ratios.png")

    collinear = collinearity(args.seed, fields, policy, progress)
    console.print(f"3. refused: {collinear['refused']}: {collinear['message']}")

    erased = erasure(adj, fields, policy, progress)
    erasure_rows = [["coefficients after erasure == fresh fit (bitwise)",
                     erased["equal_to_retrain"]],
                    ["largest coefficient change by the erasure", erased["max_abs_coef_change"]],
                    ["held-out C-index after erasure", erased["c_index_after_erasure"]],
                    ["held-out C-index of the fresh fit", erased["c_index_retrain"]]]
    print_table(f"5. erasure of {erased['erased']} patients ({erased['events_among_erased']} "
                "with events)", ["", "value"], erasure_rows)
    saw_columns = ["party", "kind", "from", "label", "label-dependent", "messages", "bytes"]
    print_table("6. what the passives received (adjusted fit and evaluation)", saw_columns,
                _saw_rows(view))

    seconds = time.perf_counter() - t_start
    result = {
        "scenario": NAME, "seed": args.seed, "quick": bool(args.quick),
        "protocol": args.protocol,
        "key_bits": fields["key_bits"] if args.protocol == "paillier" else None,
        "insecure_test_key": fields["insecure_test_key"],
        "config": {"trial": trial_run["config"], "adjusted": adj["config"].to_json(),
                   "policy": {"protocols": list(policy.protocols),
                              "min_key_bits": policy.min_key_bits,
                              "allow_insecure_test_key": policy.allow_insecure_test_key},
                   "covariates": ADJUSTED},
        "aligned_rows": trial_run["aligned"],
        "trial_hazard_ratio": trial,
        "adjusted": {"n_train": adj["n_train"], "n_test": adj["n_test"],
                     "events_train": adj["events_train"], "events_test": adj["events_test"],
                     "max_abs_coef_diff_vs_centralized": adj["max_abs_coef_diff"],
                     "neg_log_likelihood": fit.neg_log_likelihood, "history": fit.history},
        "coefficients": adj["coefficients"],
        "metrics": m,
        "km_groups": km_rows,
        "collinearity": collinear,
        "erasure": erased,
        "transcript": view,
        "rounds": {"trial": trial_run["rounds"], "adjusted": fit.rounds,
                   **erased["rounds"]},
        "seconds": {"worker_pool_start": pool_seconds, "trial": trial_run["seconds"],
                    "adjusted": fit.seconds, **erased["seconds"], "total": seconds,
                    "psi": {"trial": trial_run["psi_seconds"], "adjusted": adj["psi_seconds"],
                            **erased["psi_seconds"]}},
        "bytes": {"trial": trial_run["bytes"], "adjusted": fit.bytes, **erased["bytes"]},
    }
    design_text = "; ".join(f"{p}: {', '.join(c)}" for p, c in collinear["design"].items())
    km_table = [[r["group"], r["n"], r["events"], r["km_end"], r["predicted_end"]]
                for r in km_rows]
    plain_text = "; ".join(f"{p}: {', '.join(k) or 'none'}"
                           for p, k in view["label_dependent_plaintext_received"].items())
    text = f"""# Vertical Cox model: ACTG 320 across a hospital, a lab and a pharmacy

{full.description}

Coverage 1.0: every party holds all 1151 trial patients (plus its own non-cohort rows, which
private set intersection excludes). Protocol `{args.protocol}`, {key_note}, Breslow ties.

## 1. The trial's hazard ratio without pooling rows

The pharmacy holds `tx` (1 = indinavir arm), the hospital holds only the outcomes (no
covariates); all {trial['n']} aligned patients ({trial['events']} events), no held-out split.
{trial_run['rounds']} rounds, {trial_run['seconds']:.1f} s (private set intersection
{trial_run['psi_seconds']:.1f} s of it), {trial_run['bytes']:,} bytes.

{markdown_table(trial_columns, trial_rows)}
The two hazard ratios differ by {trial['abs_difference_to_scikit_survival']:.2e}. Hammer et
al. analysed 1156 randomized patients; the data set shipped with scikit-survival has 1151.

## 2. The adjusted model

Covariates: hospital {', '.join(ADJUSTED['hospital'])} (`ivdrug` as its integer code:
1 never, 2 current, 3 previous); lab {', '.join(ADJUSTED['lab'])}; pharmacy
{', '.join(ADJUSTED['pharmacy'])}. {adj['n_train']} training patients
({adj['events_train']} events), {adj['n_test']} held out ({adj['events_test']} events; keyed
split, test fraction {TEST_FRACTION}). Vertical fit: {fit.rounds} rounds,
{fit.seconds:.1f} s (private set intersection {adj['psi_seconds']:.1f} s of it),
{fit.bytes:,} bytes. Centralized: scikit-survival
`CoxPHSurvivalAnalysis` on the pooled training rows (its standard errors from
`vfl.survival.fit_cox`'s information on the same rows); largest coefficient difference
{adj['max_abs_coef_diff']:.2e}.

{markdown_table(HR_COLUMNS, _hr_rows(adj))}
Hazard ratios are per unit of the column (per year of age, Karnofsky point, CD4 cell/mm³,
month of prior zidovudine).

Held-out patients:

{markdown_table(metric_columns, metric_rows)}
![hazard ratios](hazard_ratios.png)

## 3. Collinearity

The full design with the treatment groups as indicators ({design_text}), where
`tx = txgrp_2 + txgrp_4`. Each party checks its own columns when the fit is set up, so the
pharmacy refuses it before any round (refused: {collinear['refused']},
`{collinear['error']}`):

> {collinear['message']}

## 4. Predicted against observed survival

Held-out patients in tertiles of the vertical linear predictor: Kaplan-Meier curves (solid)
and the mean of the model's predicted survival curves (dashed; the hospital's Breslow
baseline on the training rows).

{markdown_table(KM_COLUMNS, km_table)}
![Kaplan-Meier vs predicted](km_vs_predicted.png)

## 5. Erasure

`VerticalCox.erase` on {erased['erased']} training patients ({erased['events_among_erased']}
with events): every party deletes their rows ({erased['deleted_per_party']}), the model is
fitted again ({erased['rounds']['erasure']} rounds, {erased['seconds']['erasure']:.1f} s
including PSI), and compared with a fresh fit on tables that never held them
({erased['seconds']['retrain']:.1f} s).

{markdown_table(["", "value"], erasure_rows)}
## 6. What the lab and the pharmacy received

Every `cox.*` message each passive received in the adjusted fit and its evaluation
(message table: `vfl/survival/parties.py`). Label-dependent messages received in the clear:
{plain_text}.

{markdown_table(saw_columns, _saw_rows(view))}
Total {seconds:.1f} s (worker pool start {pool_seconds:.1f} s).
"""
    (out / "report.md").write_text(text)
    write_json(result, out / "result.json", args.json)
    console.print(f"wrote {out}/report.md and plots; {seconds:.1f} s")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
