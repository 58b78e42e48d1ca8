"""Micro-benchmark of the Paillier engine against a per-element python-paillier loop.

Measures, at 2048 bits by default: encrypting ``batch`` values, decrypting them, the
plaintext-matrix x encrypted-vector product ``[[M @ v]]`` for an ``(params x batch)`` matrix
of signed ~2^40 entries, and the full vertical-FL exchange step (encrypt delta,
``J^T [[delta]]``, mask, decrypt, unmask), each next to the same work done with ``phe``
one number at a time. Prints a table with speed-up ratios and writes JSON.

    PYTHONPATH=. python benchmarks/paillier_engine_micro.py [--key-bits 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import time

import numpy as np

import vfl.crypto as vc
from vfl.crypto.multiexp import estimate_costs


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def signed(bits: int) -> int:
    v = secrets.randbits(bits)
    return -v if secrets.randbits(1) else v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--params", type=int, default=30)
    ap.add_argument("--entry-bits", type=int, default=40)
    ap.add_argument("--delta-bits", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    args = ap.parse_args()
    B, P = args.batch, args.params
    insecure = args.key_bits < 2048
    pk, sk = vc.generate_keypair(args.key_bits, insecure_test_key=insecure)
    phe_pk, phe_sk = pk.to_phe(), sk.to_phe()
    pool = vc.WorkerPool(args.workers, min_items=16)
    serial = vc.WorkerPool(1)
    rows = {}

    delta = np.array([signed(args.delta_bits) for _ in range(B)], dtype=object)
    M = np.array([[signed(args.entry_bits) for _ in range(B)] for _ in range(P)], dtype=object)
    print(
        f"key {args.key_bits} bits, batch {B}, params {P}, |M| < 2^{args.entry_bits}, "
        f"|delta| < 2^{args.delta_bits}, workers {pool.max_workers}"
    )

    # ---- phe per-element baseline ----
    t_phe_enc, phe_cts = timed(lambda: [phe_pk.encrypt(int(d)) for d in delta])
    t_phe_dec, _ = timed(lambda: [phe_sk.decrypt(c) for c in phe_cts])

    def phe_matvec():
        out = []
        for row in M:
            acc = phe_cts[0] * int(row[0])
            for c, m in zip(phe_cts[1:], row[1:]):
                acc = acc + c * int(m)
            out.append(acc)
        return out

    t_phe_mv, phe_g = timed(phe_matvec)
    mask_bits = args.entry_bits + args.delta_bits + B.bit_length()

    def phe_exchange():
        cts = [phe_pk.encrypt(int(d)) for d in delta]
        g = []
        for row in M:
            acc = cts[0] * int(row[0])
            for c, m in zip(cts[1:], row[1:]):
                acc = acc + c * int(m)
            g.append(acc)
        mask = [secrets.randbits(mask_bits + 40) for _ in range(P)]
        masked = [x + phe_pk.encrypt(r) for x, r in zip(g, mask)]
        plain = [phe_sk.decrypt(x) for x in masked]
        return [p - r for p, r in zip(plain, mask)]

    t_phe_x, phe_res = timed(phe_exchange)

    # ---- engine ----
    t_table, _ = timed(lambda: vc.RandomnessPool(pk).precompute(1, pool=serial))
    pool.warm_up()
    full = vc.RandomnessPool(pk, pool=pool)
    full.precompute(8 * pool.max_workers * pool.min_items)  # builds the table in every worker
    full_serial = vc.RandomnessPool(pk, pool=serial)
    full_serial.precompute(1)
    short = vc.RandomnessPool(pk, short_exponent=True, pool=pool)
    short.precompute(8 * pool.max_workers * pool.min_items)

    def enc_with(rp, p):
        rp.clear()
        return vc.encrypt_array(pk, delta, randomness=rp, pool=p)

    t_enc_serial, _ = timed(lambda: enc_with(full_serial, serial))
    t_enc, enc = timed(lambda: enc_with(full, pool))
    t_enc_short, _ = timed(lambda: enc_with(short, pool))
    full.precompute(B)
    t_enc_online, enc = timed(lambda: vc.encrypt_array(pk, delta, randomness=full, pool=pool))
    t_dec_serial, dec = timed(lambda: vc.decrypt_array(sk, enc, pool=serial))
    assert list(dec) == list(delta)
    t_dec, _ = timed(lambda: vc.decrypt_array(sk, enc, pool=pool))

    expected = [sum(int(a) * int(b) for a, b in zip(row, delta)) for row in M]
    mv = {}
    for method in ("naive", "pippenger", "straus_shared"):
        sub = M[: max(1, P // 10)] if method == "naive" else M  # naive is slow: time a slice
        t, g = timed(
            lambda sub=sub, method=method: vc.plain_matmul_encrypted(
                sub, enc, method=method, pool=serial
            )
        )
        assert list(vc.decrypt_array(sk, g)) == expected[: sub.shape[0]]
        mv[method] = t * P / sub.shape[0]
    t_mv, g = timed(lambda: vc.plain_matmul_encrypted(M, enc, pool=pool), repeat=2)
    assert list(vc.decrypt_array(sk, g)) == expected

    layout = vc.PackingLayout(magnitude_bits=mask_bits + 41)
    masks_rp = vc.RandomnessPool(pk, pool=pool)

    def exchange(precomputed: bool):
        if not precomputed:
            full.clear()
        e = vc.encrypt_array(pk, delta, randomness=full, pool=pool)  # active
        g = vc.plain_matmul_encrypted(M, e, pool=pool)  # passive
        mask = vc.draw_mask(P, mask_bits)
        masked = vc.add(g, vc.encrypt_array(pk, mask, randomness=masks_rp, pool=serial))
        packed = vc.pack_encrypted(masked, layout)
        plain = vc.decrypt_packed(sk, packed, layout, P, pool=pool)  # active
        return plain - mask  # passive

    t_x_cold, res = timed(lambda: exchange(False))
    assert list(res) == expected and [int(v) for v in phe_res] == expected
    full.precompute(B)
    masks_rp.precompute(P)
    t_x_online, res = timed(lambda: exchange(True))
    assert list(res) == expected

    def row(name, ours, base):
        rows[name] = {"engine_s": ours, "phe_s": base, "speedup": base / ours if base else None}
        base_s = f"{base:9.3f}" if base else "        -"
        ratio = f"{base / ours:8.1f}x" if base else "        -"
        print(f"{name:<46}{ours:9.3f}{base_s}{ratio}")

    print(f"\n{'operation':<46}{'engine s':>9}{'phe s':>9}{'speedup':>9}")
    row("fixed-base table build (once per key, 1 core)", t_table, 0)
    row(f"encrypt {B} (full exponent, 1 core)", t_enc_serial, t_phe_enc)
    row(f"encrypt {B} (full exponent, pool)", t_enc, t_phe_enc)
    row(f"encrypt {B} (short exponent [DJN], pool)", t_enc_short, t_phe_enc)
    row(f"encrypt {B} (precomputed randomness)", t_enc_online, t_phe_enc)
    row(f"decrypt {B} (CRT, 1 core)", t_dec_serial, t_phe_dec)
    row(f"decrypt {B} (CRT, pool)", t_dec, t_phe_dec)
    for method, t in mv.items():
        row(f"matvec {P}x{B} {method} (1 core)", t, t_phe_mv)
    row(f"matvec {P}x{B} auto (pool)", t_mv, t_phe_mv)
    row("exchange step (randomness computed inline)", t_x_cold, t_phe_x)
    row("exchange step (randomness precomputed)", t_x_online, t_phe_x)
    costs = estimate_costs(P, B, args.entry_bits)
    print(f"\nmodeled multiplications for the matvec: {costs}")
    print(
        f"packed {P} masked values into {layout.packed_count(P, pk)} ciphertext(s) "
        f"({layout.slot_bits}-bit slots)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows, "model": costs}, f, indent=2)
    pool.shutdown()


if __name__ == "__main__":
    main()
