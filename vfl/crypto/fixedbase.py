"""Fixed-base windowed exponentiation (Brickell-Gordon-McCurley-Wilson style tables).

For a base ``b`` used many times with exponents below ``2**exp_bits``, precompute
``T[i][j] = b**(j * 2**(w*i))`` for every window ``i`` and digit ``1 <= j < 2**w``. Then
``b**a = prod_i T[i][digit_i(a)]`` costs one modular multiplication per non-zero ``w``-bit
digit of ``a`` and no squarings at all: ``ceil(exp_bits / w)`` multiplications instead of
about ``1.2 * exp_bits`` for a generic ``powmod``. The table has
``ceil(exp_bits / w) * (2**w - 1)`` entries (e.g. 2112-bit exponents, ``w = 7``: 302 x 127
entries of 512 bytes, about 20 MB for a 2048-bit key), built once per key and process.
"""

from __future__ import annotations

import gmpy2
from gmpy2 import mpz


class FixedBaseTable:
    """Precomputed powers of ``base`` modulo ``modulus`` for exponents ``< 2**exp_bits``."""

    def __init__(self, base, modulus, exp_bits: int, window: int = 7):
        if not 1 <= int(window) <= 12:
            raise ValueError("window must be between 1 and 12 bits")
        self.modulus = mpz(modulus)
        self.base = mpz(base) % self.modulus
        self.exp_bits = int(exp_bits)
        self.window = int(window)
        self.n_windows = -(-self.exp_bits // self.window)
        size = 1 << self.window
        m = self.modulus
        rows = []
        b = self.base
        for _ in range(self.n_windows):
            row = [mpz(1), b]
            x = b
            for _ in range(2, size):
                x = x * b % m
                row.append(x)
            rows.append(row)
            b = x * b % m  # b**(2**w) for the next window
        self.rows = rows

    def pow(self, exponent) -> mpz:
        """``base ** exponent mod modulus`` for ``0 <= exponent < 2**exp_bits``."""
        a = int(exponent)
        if a < 0 or a.bit_length() > self.exp_bits:
            raise ValueError(f"exponent must be in [0, 2**{self.exp_bits})")
        m, w, rows = self.modulus, self.window, self.rows
        acc = None
        if w == 8:  # digits are bytes: fastest digit extraction in CPython
            digits = reversed(a.to_bytes(self.n_windows, "big"))
        else:
            mask = (1 << w) - 1
            digits = ((a >> (w * i)) & mask for i in range(self.n_windows))
        for row, d in zip(rows, digits):
            if d:
                acc = row[d] if acc is None else acc * row[d] % m
        return mpz(1) if acc is None else acc

    def pow_many(self, exponents) -> list:
        return [self.pow(a) for a in exponents]


def batch_invert(values, modulus) -> list:
    """Inverses of many units with one ``invert`` (Montgomery's trick: 3 mults per value)."""
    m = mpz(modulus)
    vals = [mpz(v) for v in values]
    if not vals:
        return []
    prefix = [vals[0]]
    for v in vals[1:]:
        prefix.append(prefix[-1] * v % m)
    inv = gmpy2.invert(prefix[-1], m)
    out = [None] * len(vals)
    for i in range(len(vals) - 1, 0, -1):
        out[i] = inv * prefix[i - 1] % m
        inv = inv * vals[i] % m
    out[0] = inv
    return out
