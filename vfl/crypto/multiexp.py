"""Simultaneous multi-exponentiation kernels for ``[[M @ v]]`` (plain matrix, encrypted vector).

Row ``j`` of the result is ``prod_i c_i ** M[j, i] mod n^2``: ``P`` multi-exponentiations
sharing the same ``N`` bases ``c_i``, with small signed exponents (fixed-point Jacobian
entries, typically 20-60 bits). Three kernels, all returning one ciphertext per row:

``naive``
    one ``powmod`` per entry (negative exponents through the inverse ``c^-1``). Reference.

``pippenger``
    per row, Pippenger's bucket method (Pippenger 1976; Bernstein, "Pippenger's
    exponentiation algorithm", 2002): split exponents into ``c``-bit windows, multiply each
    base into the bucket of its digit, combine buckets with two running products. Cost per row
    about ``ceil(b/c) * (N + 2**(c+1)) + b`` multiplications. Signs use ``c_i^-1`` (one
    batched inversion per chunk), so exponents stay ``|M|``-sized.

``straus_shared``
    Straus/Shamir interleaving with *joint* tables shared by all rows: bases are grouped
    ``g`` at a time and every subset product of a group is tabulated once
    (``2**g - g - 1`` multiplications per group). Each row then does one squaring per
    exponent bit and one table multiplication per (group, bit). Cost about
    ``(N/g) * 2**g + P * b * (N/g + 1)``, which beats per-row Pippenger when many rows share
    the bases (``J^T [[delta]]`` with tens to hundreds of parameters). Signs are handled by
    an offset: ``E = M + 2**B >= 0`` and each row is multiplied by the shared correction
    ``(prod_i c_i) ** -(2**B)``.

:func:`choose_method` picks the cheapest from these operation counts.
"""

from __future__ import annotations

import gmpy2
import numpy as np
from gmpy2 import mpz

from vfl.crypto.fixedbase import batch_invert

METHODS = ("naive", "pippenger", "straus_shared")


def _as_small(matrix: np.ndarray):
    """Return (int64 array, max bit length) when every |entry| < 2**62, else (None, bits)."""
    bits = max((abs(int(v)).bit_length() for v in matrix.reshape(-1)), default=0)
    if bits <= 62:
        return matrix.astype(np.int64), bits
    return None, bits


def _pippenger_cost(rows: int, n: int, bits: int) -> tuple[int, int]:
    best = None
    for c in range(1, 16):
        cost = rows * (-(-bits // c) * (n + (1 << (c + 1))) + bits)
        if best is None or cost < best[0]:
            best = (cost, c)
    return best


def _straus_cost(rows: int, n: int, bits: int) -> tuple[int, int]:
    best = None
    for g in range(1, 13):
        groups = -(-n // g)
        cost = groups * ((1 << g) - g - 1) + rows * (bits + 1) * (groups + 1) + n
        if best is None or cost < best[0]:
            best = (cost, g)
    return best


def estimate_costs(rows: int, n: int, bits: int) -> dict[str, int]:
    """Modular multiplications each method needs (squarings counted as multiplications)."""
    return {
        "naive": rows * n * (bits + bits // 5 + 8),
        "pippenger": _pippenger_cost(rows, n, bits)[0],
        "straus_shared": _straus_cost(rows, n, bits + 1)[0],
    }


def choose_method(rows: int, n: int, bits: int) -> str:
    costs = estimate_costs(rows, n, bits)
    return min(costs, key=costs.get)


def matvec(method: str, matrix, bases, modulus, param: int | None = None) -> list:
    """``[prod_i bases[i] ** matrix[j, i] mod modulus for j in rows]``.

    ``matrix`` is an integer array of shape ``(rows, len(bases))`` (int64 or object of ints).
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[1] != len(bases):
        raise ValueError(f"matrix of shape {m.shape} does not match {len(bases)} bases")
    if m.shape[0] == 0:
        return []
    if m.shape[1] == 0:
        return [mpz(1)] * m.shape[0]
    modulus = mpz(modulus)
    bases = [mpz(b) for b in bases]
    if method == "naive":
        return _matvec_naive(m, bases, modulus)
    if method == "pippenger":
        return _matvec_pippenger(m, bases, modulus, param)
    if method == "straus_shared":
        return _matvec_straus_shared(m, bases, modulus, param)
    raise ValueError(f"unknown multi-exponentiation method {method!r}; use one of {METHODS}")


def _matvec_naive(m, bases, n2) -> list:
    out = []
    for row in m:
        acc = mpz(1)
        for b, e in zip(bases, row.tolist()):
            if e:
                acc = acc * gmpy2.powmod(b, int(e), n2) % n2  # gmpy2 inverts for e < 0
        out.append(acc)
    return out


def _digit_planes(absm: np.ndarray, bits: int, c: int):
    """Yield (window index, digit array) from the most significant window down."""
    windows = -(-bits // c)
    mask = (1 << c) - 1
    if absm.dtype == np.int64:
        for t in range(windows - 1, -1, -1):
            yield t, ((absm >> (c * t)) & mask).astype(np.int64)
    else:
        for t in range(windows - 1, -1, -1):
            f = np.frompyfunc(lambda v, s=c * t: (int(v) >> s) & mask, 1, 1)
            yield t, f(absm).astype(np.int64)


def _matvec_pippenger(m, bases, n2, c: int | None) -> list:
    small, bits = _as_small(m)
    if bits == 0:
        return [mpz(1)] * m.shape[0]
    rows, n = m.shape
    if c is None:
        c = _pippenger_cost(1, n, bits)[1]
    sign = (
        np.sign(small)
        if small is not None
        else np.frompyfunc(lambda v: (v > 0) - (v < 0), 1, 1)(m).astype(np.int64)
    )
    absm = np.abs(small) if small is not None else np.frompyfunc(abs, 1, 1)(m)
    inv = batch_invert(bases, n2) if (sign < 0).any() else None
    planes = list(_digit_planes(absm, bits, c))
    nb = 1 << c
    out = []
    for j in range(rows):
        row_bases = [inv[i] if s < 0 else bases[i] for i, s in enumerate(sign[j].tolist())]
        acc = None
        for _t, plane in planes:
            if acc is not None:
                acc = gmpy2.powmod(acc, nb, n2)  # c squarings inside GMP
            digits = plane[j]
            buckets = [None] * nb
            for i in np.flatnonzero(digits).tolist():
                d = int(digits[i])
                b = buckets[d]
                buckets[d] = row_bases[i] if b is None else b * row_bases[i] % n2
            running = total = None
            for d in range(nb - 1, 0, -1):
                b = buckets[d]
                if b is not None:
                    running = b if running is None else running * b % n2
                if running is not None:
                    total = running if total is None else total * running % n2
            if total is not None:
                acc = total if acc is None else acc * total % n2
        out.append(mpz(1) if acc is None else acc)
    return out


def _bit_planes(e: np.ndarray, bits: int) -> np.ndarray:
    """Bits of non-negative ``e`` (rows, n) as uint8 array (rows, n, bits), LSB first."""
    if e.dtype == np.int64:
        return ((e[:, :, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    out = np.zeros(e.shape + (bits,), dtype=np.uint8)
    for start in range(0, bits, 62):
        k = min(62, bits - start)
        limb = np.frompyfunc(lambda v, s=start, k=k: (int(v) >> s) & ((1 << k) - 1), 1, 1)
        limb = limb(e).astype(np.int64)
        out[:, :, start : start + k] = (limb[:, :, None] >> np.arange(k, dtype=np.int64)) & 1
    return out


def _matvec_straus_shared(m, bases, n2, g: int | None) -> list:
    small, bits = _as_small(m)
    rows, n = m.shape
    if bits == 0:
        return [mpz(1)] * rows
    ebits = bits + 1
    if g is None:
        g = _straus_cost(rows, n, ebits)[1]
    offset = 1 << bits
    if small is not None and ebits <= 62:
        e = small + np.int64(offset)
    else:
        e = np.frompyfunc(lambda v: int(v) + offset, 1, 1)(m)
    planes = _bit_planes(e, ebits)  # (rows, n, ebits)
    groups = -(-n // g)
    pad = groups * g - n
    if pad:
        planes = np.concatenate([planes, np.zeros((rows, pad, ebits), np.uint8)], axis=1)
    weights = 1 << np.arange(g, dtype=np.int64)
    # subset index of every (row, group, bit)
    idx = (
        planes.reshape(rows, groups, g, ebits).astype(np.int64) * weights[None, None, :, None]
    ).sum(axis=2)
    tables = []
    for k in range(groups):
        members = bases[k * g : (k + 1) * g]
        table = [mpz(1)] * (1 << len(members))
        for u, b in enumerate(members):
            step = 1 << u
            table[step] = b
            for s in range(step + 1, step << 1):
                table[s] = table[s - step] * b % n2
        tables.append(table)
    # correction (prod c_i) ** -(2**bits): undoes the offset added to every exponent
    prod = mpz(1)
    for b in bases:
        prod = prod * b % n2
    correction = gmpy2.powmod(gmpy2.invert(prod, n2), offset, n2)
    out = []
    for j in range(rows):
        acc = None
        idx_j = idx[j]  # (groups, ebits)
        for t in range(ebits - 1, -1, -1):
            if acc is not None:
                acc = acc * acc % n2
            col = idx_j[:, t].tolist()
            for k, s in enumerate(col):
                if s:
                    v = tables[k][s]
                    acc = v if acc is None else acc * v % n2
        out.append(correction if acc is None else acc * correction % n2)
    return out
