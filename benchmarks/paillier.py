"""Paillier benchmark: the encrypted gradient exchange, engine vs a python-paillier loop,
and a FATE-shaped vertical logistic-regression epoch.

Part 1 -- exchange step (DESIGN.md section 4), 2048-bit key, batch B=256, J^T of 30 x 256:
the active party encrypts the cut-layer gradient delta under its own key, the passive party
computes [[J^T delta]], adds an encrypted mask, the active party decrypts, the passive
unmasks. Run twice on the same fixed-point inputs: with the engine (vfl.crypto) and with a
straightforward per-element python-paillier (phe, gmpy2 backend) loop. Both must give the
same integer gradient. speedup = phe_loop_seconds / engine_seconds, where engine_seconds is
the step with encryption randomness computed INLINE (nothing precomputed); the step with
randomness precomputed in idle time (it does not depend on data) is reported beside it.

Part 2 -- epoch: --rows rows, 30 features at the active party, 300 at one passive party,
batch 1024; per batch the full protocol above (the passive's [[X^T delta]] over 300
features). --quick measures a few batches and extrapolates linearly to --rows (reported as
such). FATE 2.x reports 139 s/epoch for 100k rows on 16 cores.

Fixed point: delta at 2^-32 (|delta| <= 16), features at 2^-20 (|x| <= 4096): the
protocol constants of vfl.secure_exchange. --x-frac-bits lowers the feature precision.

    PYTHONPATH=. python benchmarks/paillier.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import secrets
import time

import numpy as np
from rich.console import Console
from rich.table import Table

import vfl.crypto as vc
from vfl.secure_exchange import DELTA_BOUND, DELTA_FRAC_BITS, JACOBIAN_FRAC_BITS

FATE_SECONDS, FATE_CORES, FATE_ROWS = 139.0, 16, 100_000
STEP_BATCH, STEP_PARAMS = 256, 30
EPOCH_ACTIVE_FEATURES, EPOCH_PASSIVE_FEATURES = 30, 300


# --- protocol pieces -------------------------------------------------------------------------
class Exchange:
    """One party pair's state: the active party's key and CRT randomness, the passive's
    public-key randomness. ``encrypt_mask_packed``: masks are added to the *packed*
    ciphertexts (one fresh encryption per packed ciphertext, not per value)."""

    def __init__(self, pk, sk, pool, x_frac_bits, short_exponent=False):
        self.pk, self.sk, self.pool = pk, sk, pool
        self.x_frac_bits = x_frac_bits
        se = short_exponent  # DJN short exponents: an extra assumption, opt-in only
        self.active_rp = vc.RandomnessPool(pk, private_key=sk, pool=pool, short_exponent=se)
        self.passive_rp = vc.RandomnessPool(pk, pool=pool, short_exponent=se)
        self.delta_codec = vc.FixedPointCodec(DELTA_FRAC_BITS, max_abs_value=DELTA_BOUND)
        self.timings: dict[str, float] = {}

    def warm(self, workers: int) -> None:
        """Build the per-key fixed-base tables in every worker and in this process (built
        once per key; a task may land on any worker), then drop what was drawn, so that
        timed steps start with nothing precomputed."""
        for _ in range(3):
            self.active_rp.precompute(32 * workers)
            self.passive_rp.precompute(16 * workers)
        self.active_rp.precompute(1, pool=1)  # small draws run in this process
        self.passive_rp.precompute(1, pool=1)
        self.active_rp.clear()
        self.passive_rp.clear()

    def _t(self, name, fn):
        t = time.perf_counter()
        out = fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t
        return out

    def step(self, delta_int, xt_int, x_bits):
        """Returns the unmasked integer gradient ``X^T delta`` at scale 2^-(32 + x_frac)."""
        pk, pool = self.pk, self.pool
        terms = len(delta_int)
        enc = self._t(
            "active_encrypt",
            lambda: vc.encrypt_array(
                pk, delta_int, scale_bits=DELTA_FRAC_BITS, randomness=self.active_rp, pool=pool
            ),
        )
        wire = self._t("serialize", lambda: enc.to_bytes())
        enc = self._t("passive_validate", lambda: vc.EncryptedArray.from_bytes(wire, pk))
        g = self._t(
            "passive_matvec",
            lambda: vc.plain_matmul_encrypted(
                xt_int, enc, matrix_scale_bits=self.x_frac_bits, pool=pool
            ),
        )
        gbits = terms.bit_length() + self.delta_codec.bits_for(DELTA_BOUND) + x_bits
        layout = vc.PackingLayout(magnitude_bits=gbits + vc.STAT_SLACK_BITS + 1)
        mask = vc.draw_mask(g.shape, gbits)

        masked = self._t(
            "passive_pack_and_mask",
            lambda: vc.pack_masked(g, mask, layout, randomness=self.passive_rp, pool=pool),
        )
        plain = self._t(
            "active_decrypt_packed",
            lambda: vc.decrypt_packed(self.sk, masked, layout, g.size, pool=pool),
        )
        return self._t(
            "passive_unmask", lambda: [int(v) - int(r) for v, r in zip(plain, mask, strict=True)]
        )


def phe_step(phe_pk, phe_sk, delta_int, xt_int, mask_bits):
    """The same exchange with python-paillier, one EncryptedNumber at a time."""
    cts = [phe_pk.encrypt(int(d)) for d in delta_int]  # active
    g = []
    for row in xt_int:  # passive
        acc = cts[0] * int(row[0])
        for c, m in zip(cts[1:], row[1:], strict=True):
            acc = acc + c * int(m)
        g.append(acc)
    mask = [secrets.randbits(mask_bits) for _ in g]
    masked = [x + phe_pk.encrypt(r) for x, r in zip(g, mask, strict=True)]
    plain = [phe_sk.decrypt(x) for x in masked]  # active
    return [int(p) - r for p, r in zip(plain, mask, strict=True)]  # passive


def exact_matvec(xt_int, delta_int):
    d = [int(v) for v in delta_int]
    return [sum(int(a) * b for a, b in zip(row, d, strict=True)) for row in xt_int]


def encode_ints(x, frac_bits):
    return np.rint(np.ldexp(np.asarray(x, dtype=np.float64), frac_bits)).astype(np.int64)


def realistic_inputs(rng, batch, params, x_frac_bits):
    """Standardized features (clipped at 8 sd) and logistic-loss gradients of a mean loss."""
    x = np.clip(rng.standard_normal((batch, params)), -8, 8)
    w = rng.standard_normal(params) * 0.3
    y = (rng.random(batch) < 0.3).astype(np.float64)
    p = 1 / (1 + np.exp(-(x @ w)))
    delta = (p - y) / batch  # dL/dlogit of the mean loss
    d_int = encode_ints(delta, DELTA_FRAC_BITS)
    xt_int = encode_ints(x.T, x_frac_bits)
    return x, delta, d_int, xt_int


def profile_summary(fn, top=12):
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append(
            {
                "function": f"{os.path.basename(file)}:{line}({func})",
                "calls": nc,
                "tottime_s": round(tt, 4),
                "cumtime_s": round(ct, 4),
            }
        )
    by_cum = sorted(rows, key=lambda r: -r["cumtime_s"])[:top]
    by_tot = sorted(rows, key=lambda r: -r["tottime_s"])[:top]
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(8)
    return {"total_s": round(total, 4), "top_cumulative": by_cum, "top_self": by_tot}


# --- part 1 ----------------------------------------------------------------------------------
def run_step(args, pk, sk, pool, console):
    rng = np.random.default_rng(0)  # data only; crypto randomness comes from secrets
    x, delta, d_int, xt_int = realistic_inputs(rng, STEP_BATCH, STEP_PARAMS, args.x_frac_bits)
    x_bits = int(np.abs(xt_int).max()).bit_length()
    ex = Exchange(pk, sk, pool, args.x_frac_bits)
    # warm: worker processes, per-key fixed-base tables in every worker (built once per key)
    t = time.perf_counter()
    ex.warm(pool.max_workers)
    ex.step(d_int[:64], xt_int[:, :64], x_bits)  # warms the matvec path too
    ex.warm(pool.max_workers)  # drops what the warm-up step left precomputed
    warm_s = time.perf_counter() - t

    expected = exact_matvec(xt_int, d_int)
    ex.timings = {}
    t = time.perf_counter()
    got = ex.step(d_int, xt_int, x_bits)
    inline_s = time.perf_counter() - t
    inline_phases = dict(ex.timings)
    assert got == expected, "engine gradient differs from the exact integer product"

    # precomputed randomness: drawn in idle time (does not depend on the data)
    t = time.perf_counter()
    ex.active_rp.precompute(STEP_BATCH)
    ex.passive_rp.precompute(2)
    precompute_s = time.perf_counter() - t
    ex.timings = {}
    t = time.perf_counter()
    got2 = ex.step(d_int, xt_int, x_bits)
    pre_s = time.perf_counter() - t
    pre_phases = dict(ex.timings)
    assert got2 == expected

    # the DJN short-exponent obfuscators (opt-in: extra assumption), randomness inline
    djn = Exchange(pk, sk, pool, args.x_frac_bits, short_exponent=True)
    djn.warm(pool.max_workers)
    t = time.perf_counter()
    got3 = djn.step(d_int, xt_int, x_bits)
    djn_s = time.perf_counter() - t
    assert got3 == expected

    console.print("[bold]exchange step[/]: python-paillier per-element loop (one core) ...")
    phe_pk, phe_sk = pk.to_phe(), sk.to_phe()
    gbits = STEP_BATCH.bit_length() + DELTA_FRAC_BITS + 5 + x_bits
    t = time.perf_counter()
    phe_got = phe_step(phe_pk, phe_sk, d_int, xt_int, gbits + vc.STAT_SLACK_BITS)
    phe_s = time.perf_counter() - t
    assert phe_got == expected, "phe gradient differs from the exact integer product"
    grad = np.array(got, dtype=np.float64) / 2.0 ** (DELTA_FRAC_BITS + args.x_frac_bits)
    max_err = float(np.max(np.abs(grad - x.T @ delta)))

    # where the time goes: the inline step on one core (the pool would hide work in workers)
    serial = Exchange(pk, sk, vc.WorkerPool(1), args.x_frac_bits)
    serial.active_rp.precompute(1)
    serial.passive_rp.precompute(1)
    serial.active_rp.clear()
    serial.passive_rp.clear()
    serial.timings = {}
    t = time.perf_counter()
    prof = profile_summary(lambda: serial.step(d_int, xt_int, x_bits))
    serial_s = time.perf_counter() - t
    return {
        "batch": STEP_BATCH,
        "params": STEP_PARAMS,
        "delta_frac_bits": DELTA_FRAC_BITS,
        "x_frac_bits": args.x_frac_bits,
        "x_max_bits": x_bits,
        "engine_inline_seconds": inline_s,
        "engine_precomputed_seconds": pre_s,
        "precompute_seconds": precompute_s,
        "warmup_seconds": warm_s,
        "phe_loop_seconds": phe_s,
        "speedup_inline": phe_s / inline_s,
        "speedup_precomputed": phe_s / pre_s,
        "engine_short_exponent_seconds": djn_s,
        "speedup_short_exponent": phe_s / djn_s,
        "phases_short_exponent": djn.timings,
        "phases_inline": inline_phases,
        "phases_precomputed": pre_phases,
        "phases_serial_profiled": serial.timings,
        "serial_profiled_seconds": serial_s,
        "gradients_equal": True,
        "max_abs_error_vs_float": max_err,
        "profile": prof,
    }


# --- part 2 ----------------------------------------------------------------------------------
def run_epoch(args, pk, sk, pool, console):
    rng = np.random.default_rng(1)
    batch = args.batch
    n_batches = math.ceil(args.rows / batch)
    measure = min(n_batches, args.quick_batches) if args.quick else n_batches
    ex = Exchange(pk, sk, pool, args.x_frac_bits)
    ex.warm(pool.max_workers)
    w_a = np.zeros(EPOCH_ACTIVE_FEATURES)
    w_p = np.zeros(EPOCH_PASSIVE_FEATURES)
    lr = 0.1
    checked = False
    ex.timings = {}
    t0 = time.perf_counter()
    rows_done = 0
    for b in range(measure):
        size = min(batch, args.rows - b * batch)
        xa = np.clip(rng.standard_normal((size, EPOCH_ACTIVE_FEATURES)), -8, 8)
        xp = np.clip(rng.standard_normal((size, EPOCH_PASSIVE_FEATURES)), -8, 8)
        y = (rng.random(size) < 0.3).astype(np.float64)
        # passive: embedding u_p = X_p w_p (plaintext by design in split learning)
        z = xa @ w_a + xp @ w_p
        delta = (1 / (1 + np.exp(-z)) - y) / size  # active: dL/dz
        grad_a = xa.T @ delta
        d_int = encode_ints(delta, DELTA_FRAC_BITS)
        xt_int = encode_ints(xp.T, args.x_frac_bits)
        x_bits = int(np.abs(xt_int).max()).bit_length()
        got = ex.step(d_int, xt_int, x_bits)
        if not checked:
            assert got == exact_matvec(xt_int, d_int), "epoch gradient is wrong"
            checked = True
        grad_p = np.array(got, dtype=np.float64) / 2.0 ** (DELTA_FRAC_BITS + args.x_frac_bits)
        w_a -= lr * grad_a
        w_p -= lr * grad_p
        rows_done += size
        console.print(f"  batch {b + 1}/{measure}: {time.perf_counter() - t0:7.2f} s")
    measured_s = time.perf_counter() - t0
    per_row = measured_s / rows_done
    epoch_s = measured_s if rows_done == args.rows else per_row * args.rows
    return {
        "epoch_rows": args.rows,
        "batch_size": batch,
        "active_features": EPOCH_ACTIVE_FEATURES,
        "passive_features": EPOCH_PASSIVE_FEATURES,
        "measured_rows": rows_done,
        "measured_batches": measure,
        "measured_seconds": measured_s,
        "epoch_seconds": epoch_s,
        "extrapolated": rows_done != args.rows,
        "phases": ex.timings,
        "randomness": "inline (computed in the step, CRT for the key holder)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="measure a few epoch batches and "
        "extrapolate linearly to --rows (about 1-2 minutes on 2 cores)",
    )
    ap.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    ap.add_argument("--rows", type=int, default=100_000, help="rows per epoch (default 100000)")
    ap.add_argument("--batch", type=int, default=1024, help="epoch batch size (default 1024)")
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help="worker processes for the engine (default: all cores)",
    )
    ap.add_argument(
        "--x-frac-bits",
        type=int,
        default=JACOBIAN_FRAC_BITS,
        help=f"fractional bits of the features (default {JACOBIAN_FRAC_BITS})",
    )
    ap.add_argument("--quick-batches", type=int, default=3, help="batches measured in --quick")
    ap.add_argument("--skip-epoch", action="store_true", help="only the exchange step")
    args = ap.parse_args()
    console = Console()
    cores = os.cpu_count() or 1
    pool = vc.WorkerPool(args.workers, min_items=16)
    pool.warm_up()
    t = time.perf_counter()
    pk, sk = vc.generate_keypair(2048)
    keygen_s = time.perf_counter() - t
    console.print(f"2048-bit key in {keygen_s:.2f} s; {cores} cores, {pool.max_workers} workers")
    try:
        step = run_step(args, pk, sk, pool, console)
        epoch = None if args.skip_epoch else run_epoch(args, pk, sk, pool, console)
    finally:
        pool.shutdown()

    table = Table(title="Paillier exchange step (2048-bit, B=256, J^T 30x256)")
    for col in ("variant", "seconds", "speed-up vs phe loop"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    table.add_row(
        "python-paillier per-element loop (1 core)", f"{step['phe_loop_seconds']:.3f}", "1.0x"
    )
    table.add_row(
        f"engine, randomness inline ({pool.max_workers} workers)",
        f"{step['engine_inline_seconds']:.3f}",
        f"{step['speedup_inline']:.1f}x",
    )
    table.add_row(
        "engine, randomness precomputed",
        f"{step['engine_precomputed_seconds']:.3f}",
        f"{step['speedup_precomputed']:.1f}x",
    )
    table.add_row(
        "engine, DJN short exponents, inline (opt-in assumption)",
        f"{step['engine_short_exponent_seconds']:.3f}",
        f"{step['speedup_short_exponent']:.1f}x",
    )
    table.add_row(
        "  (precomputing 256+2 obfuscators, idle time)", f"{step['precompute_seconds']:.3f}", ""
    )
    console.print(table)
    ph = Table(title="inline step phases (s)")
    ph.add_column("phase")
    ph.add_column("pool", justify="right")
    ph.add_column("1 core (profiled)", justify="right")
    for k, v in step["phases_inline"].items():
        ph.add_row(k, f"{v:.4f}", f"{step['phases_serial_profiled'].get(k, 0):.4f}")
    console.print(ph)
    prof = Table(title="profile of the inline step on 1 core: top by cumulative time")
    for col in ("function", "calls", "tottime s", "cumtime s"):
        prof.add_column(col, justify="left" if col == "function" else "right")
    for r in step["profile"]["top_cumulative"]:
        prof.add_row(
            r["function"], str(r["calls"]), f"{r['tottime_s']:.4f}", f"{r['cumtime_s']:.4f}"
        )
    console.print(prof)
    if epoch:
        et = Table(
            title=f"vertical LR epoch: {args.rows} rows, 30 + 300 features, batch {args.batch}"
        )
        for col in ("system", "cores", "s/epoch", "core-seconds"):
            et.add_column(col, justify="left" if col == "system" else "right")
        how = (
            f"extrapolated from {epoch['measured_rows']} rows"
            if epoch["extrapolated"]
            else "measured"
        )
        et.add_row(
            f"vfl engine ({how})",
            str(cores),
            f"{epoch['epoch_seconds']:.1f}",
            f"{epoch['epoch_seconds'] * cores:.0f}",
        )
        et.add_row(
            "FATE 2.x (reported, 100k rows)",
            str(FATE_CORES),
            f"{FATE_SECONDS:.0f}",
            f"{FATE_SECONDS * FATE_CORES:.0f}",
        )
        console.print(et)
        if epoch["extrapolated"]:
            console.print(
                f"[yellow]epoch time extrapolated linearly from "
                f"{epoch['measured_batches']} measured batches[/]"
            )
    result = {
        "key_bits": 2048,
        "cores": cores,
        "workers": pool.max_workers,
        "engine_seconds": step["engine_inline_seconds"],
        "engine_seconds_is": "inline randomness (nothing precomputed)",
        "engine_precomputed_seconds": step["engine_precomputed_seconds"],
        "phe_loop_seconds": step["phe_loop_seconds"],
        "speedup": step["speedup_inline"],
        "speedup_precomputed": step["speedup_precomputed"],
        "speedup_short_exponent": step["speedup_short_exponent"],
        "epoch_rows": args.rows,
        "epoch_seconds": epoch["epoch_seconds"] if epoch else None,
        "extrapolated": epoch["extrapolated"] if epoch else None,
        "measured_rows": epoch["measured_rows"] if epoch else None,
        "fate_reference": {"seconds": FATE_SECONDS, "cores": FATE_CORES, "rows": FATE_ROWS},
        "step": step,
        "epoch": epoch,
        "profile_summary": step["profile"],
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
