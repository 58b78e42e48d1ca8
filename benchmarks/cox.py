"""Vertical Cox fit (encrypted, 2048-bit Paillier) at 500 and 5,000 patients, against the
plain protocol and scikit-survival's centralized fit in the same run.

The workload is Verticox+'s (Dai et al., IEEE TKDE 2022; the CARRIER project's vertical
Cox): 6 covariates over 3 parties, 2 each, the first party holding times and events.
500 patients: WHAS500 (age, bmi | hr, sysbp | diasbp, los). 5,000 patients: the first
5,000 complete rows of flchain (age, sex | kappa, lambda | flc.grp, creatinine). Both ship
with scikit-survival. Verticox+ reports 245 s at 500 records and 15,200 s at 5,000 on its
own hardware (not this machine): the ratios below are indicative, not a like-for-like race.

    python benchmarks/cox.py [--quick] [--json PATH] [--markdown docs/BENCHMARKS.md]

``--quick`` uses a 1024-bit test key and 500 patients only (a smoke run, under a minute).
Every row checks the vertical coefficients against scikit-survival's (max |difference|).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

# Run as a script (python benchmarks/cox.py) as well as a module: the repository root on
# the path instead of this folder.
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
from vfl.core.table import PartyTable  # noqa: E402
from vfl.survival.config import CoxConfig  # noqa: E402
from vfl.survival.federated import VerticalCox  # noqa: E402
from vfl.vertical.config import SecurityPolicy  # noqa: E402

VERTICOX = {500: 245.0, 5000: 15200.0}  # seconds, as published (their hardware)
BLOCKS = {
    500: {"hospital": ["age", "bmi"], "clinic": ["hr", "sysbp"], "lab": ["diasbp", "los"]},
    5000: {"hospital": ["age", "sex"], "lab": ["kappa", "lambda"],
           "clinic": ["flc.grp", "creatinine"]},
}


def workload(rows: int):
    """``(x frame, structured outcome, blocks)`` of ``rows`` patients."""
    import pandas as pd
    from sksurv.datasets import load_flchain, load_whas500

    if rows <= 500:
        x, y = load_whas500()
        x = x[[c for cols in BLOCKS[500].values() for c in cols]].astype(float)
        return x.iloc[:rows], y[:rows], BLOCKS[500], ("lenfol", "fstat")
    x, y = load_flchain()
    x = x.copy()
    x["sex"] = (x["sex"].astype(object) == "M").astype(float)
    x["flc.grp"] = pd.to_numeric(x["flc.grp"].astype(object))
    cols = [c for cols in BLOCKS[5000].values() for c in cols]
    x = x[cols].astype(float)
    keep = np.flatnonzero(x.notna().all(axis=1).to_numpy())[:rows]
    return x.iloc[keep], y[keep], BLOCKS[5000], ("futime", "death")


def tables(x, y, blocks, fields):
    time_f, event_f = fields
    ids = [f"p{i:05d}" for i in range(len(y))]
    labels = np.column_stack([y[time_f].astype(float), y[event_f].astype(float)])
    out = {}
    for k, (party, cols) in enumerate(blocks.items()):
        out[party] = PartyTable.from_numpy(
            ids, x[cols].to_numpy(), cols, labels=labels if k == 0 else None,
            label_name=f"{time_f},{event_f}" if k == 0 else None)
    return out


def fit_vertical(tabs, protocol: str, key_bits: int):
    config = CoxConfig(protocol=protocol, key_bits=key_bits, test_fraction=0.0,
                       insecure_test_key=key_bits < 2048)
    policy = SecurityPolicy(allow_insecure_test_key=key_bits < 2048, min_key_bits=key_bits)
    fed = VerticalCox(tabs, next(iter(tabs)), config, policy=policy)
    t0 = time.perf_counter()
    fit = fed.fit(progress=False)
    return fit, time.perf_counter() - t0


def measure_row(rows: int, key_bits: int, console: Console) -> dict:
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    x, y, blocks, fields = workload(rows)
    tabs = tables(x, y, blocks, fields)
    t0 = time.perf_counter()
    ref = CoxPHSurvivalAnalysis(ties="breslow").fit(x.to_numpy(), y)
    central = time.perf_counter() - t0
    plain, plain_s = fit_vertical(tabs, "plain", key_bits)
    enc, enc_s = fit_vertical(tabs, "paillier", key_bits)
    diff = float(np.abs(enc.coef() - ref.coef_).max())
    console.print(f"{len(y)} patients: encrypted {enc_s:.1f} s ({enc.rounds} rounds), plain "
                  f"{plain_s:.2f} s, scikit-survival {central:.3f} s, max |coef diff| {diff:.1e}")
    row = {"rows": int(len(y)), "features": int(x.shape[1]), "parties": len(blocks),
           "key_bits": key_bits, "encrypted_seconds": enc_s, "plain_seconds": plain_s,
           "centralized_seconds": central, "rounds": enc.rounds,
           "bytes": enc.bytes, "max_coef_diff": diff,
           "bitwise_equal_plain": enc.coef().tobytes() == plain.coef().tobytes(),
           "verticox_seconds": VERTICOX.get(int(len(y)))}
    if row["verticox_seconds"]:
        row["speedup_vs_verticox"] = row["verticox_seconds"] / enc_s
    return row


def profile_row(rows: int, key_bits: int) -> list[dict]:
    """Where the encrypted fit's time goes (cProfile, cumulative, our functions)."""
    x, y, blocks, fields = workload(rows)
    tabs = tables(x, y, blocks, fields)
    prof = cProfile.Profile()
    prof.enable()
    _, total = fit_vertical(tabs, "paillier", key_bits)
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    wanted = {
        "embed": "the passives' encrypted forward passes (X U + X [[V]], packing)",
        "apply_update": "the passives' encrypted updates ([[V]] += X^T [[dP]])",
        "encrypt_update": "the hospital encrypting [[dP]]",
        "decrypt_embedding": "the hospital decrypting embeddings",
        "step": "the hospital's Newton over the explored directions",
        "on_release": "the release: covariance factors, encrypted",
        "on_release_factor": "the release at the passives (X^T [[C]], masking)",
        "generate_keypair": "key generation",
        "run_psi": "private set intersection",
    }
    out = []
    for (file, _, name), (_, _, _, cum, _) in stats.stats.items():
        if name in wanted and ("vfl" in file or "crypto" in file):
            out.append({"function": name, "what": wanted[name], "seconds": cum,
                        "share": cum / total})
    merged: dict[str, dict] = {}
    for r in out:  # a name may appear in several modules: keep the largest
        if r["function"] not in merged or r["seconds"] > merged[r["function"]]["seconds"]:
            merged[r["function"]] = r
    return sorted(merged.values(), key=lambda r: -r["seconds"]) + [
        {"function": "total", "what": "the whole fit", "seconds": total, "share": 1.0}]


def print_rows(res: dict, console: Console) -> None:
    t = Table(title="vertical Cox (paillier) vs plain and centralized")
    for c in ("patients", "key", "rounds", "encrypted s", "plain s", "sksurv s",
              "max |diff|", "Verticox+ s (theirs)", "ratio"):
        t.add_column(c)
    for r in res["rows"]:
        t.add_row(str(r["rows"]), str(r["key_bits"]), str(r["rounds"]),
                  f"{r['encrypted_seconds']:.1f}", f"{r['plain_seconds']:.2f}",
                  f"{r['centralized_seconds']:.3f}", f"{r['max_coef_diff']:.1e}",
                  str(r.get("verticox_seconds") or "-"),
                  f"{r['speedup_vs_verticox']:.0f}x" if r.get("speedup_vs_verticox") else "-")
    console.print(t)


def write_markdown(res: dict, path: str) -> None:
    begin, end = markers("cox")
    body = table_head("patients", "covariates / parties", "Paillier key", "rounds",
                      "encrypted (s)", "plain (s)", "scikit-survival (s)",
                      "max coef difference", "Verticox+ published (s)", "Verticox+ / ours")
    for r in res["rows"]:
        body.append(
            f"| {r['rows']:,} | {r['features']} / {r['parties']} | {r['key_bits']} | "
            f"{r['rounds']} | {r['encrypted_seconds']:.1f} | {r['plain_seconds']:.2f} | "
            f"{r['centralized_seconds']:.3f} | {r['max_coef_diff']:.1e} | "
            f"{r.get('verticox_seconds') or '-'} | "
            + (f"{r['speedup_vs_verticox']:.0f}x |" if r.get("speedup_vs_verticox") else "- |"))
    body += ["", "Verticox+'s times are as published, on its authors' hardware; ours are this "
             "machine's. The plain protocol computes bitwise the same coefficients "
             f"({', '.join(str(r['bitwise_equal_plain']) for r in res['rows'])}).", ""]
    if res.get("profile"):
        body += [f"Where the time goes ({res['profile_rows']:,} patients, cProfile, "
                 "cumulative; calls nest, so shares overlap):", ""]
        body += table_head("function", "what", "seconds", "share")
        for p in res["profile"]:
            body.append(f"| `{p['function']}` | {p['what']} | {p['seconds']:.2f} | "
                        f"{100 * p['share']:.0f}% |")
    write_section(path, begin, end, section(begin, end, res, body))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1024-bit test key, 500 patients only (under a minute)")
    ap.add_argument("--rows", type=int, nargs="*", default=[500, 5000])
    add_output_flags(ap, "Cox")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    args = ap.parse_args(argv)
    console = Console(highlight=False)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
    else:
        key_bits = 1024 if args.quick else 2048
        rows = [500] if args.quick else args.rows
        started = time.perf_counter()
        res = {"benchmark": "cox",
               "command": "python benchmarks/cox.py" + (" --quick" if args.quick else ""),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                          f"{platform.python_version()}, numpy {np.__version__}",
               "rows": [measure_row(n, key_bits, console) for n in rows]}
        if not args.no_profile:
            res["profile_rows"] = rows[0]
            res["profile"] = profile_row(rows[0], key_bits)
        res["benchmark_seconds"] = time.perf_counter() - started
    return emit(res, args, console, lambda r: print_rows(r, console), write_markdown)


if __name__ == "__main__":
    main()
