"""t-of-m Shamir sharing of 32-byte secrets over GF(2^128), batched and vectorized.

What is shared, and why 32 bytes
--------------------------------
Each client shares two secrets with its holders (:mod:`horizontal.secagg.graph`): the seed
``b_u`` of its self-mask and the private X25519 key ``s_u^SK`` of its pairwise masks. Both
are 32 bytes (256 bits), the key size for which X25519 and ChaCha20 give ~128-bit security.

The field, and why two halves
-----------------------------
Sharing is over GF(2^128) with the modulus ``x^128 + x^7 + x^2 + x + 1``, elements encoded
as 16 big-endian bytes and share index ``i`` as the element ``i`` -- exactly the field and
encoding of pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` (a small, reviewed
implementation), so shares made here combine with pycryptodome's ``Shamir.combine`` and the
other way round (tested). A 32-byte secret is cut into two 16-byte halves, each shared with
its *own independent* random polynomial of degree ``t - 1`` (the half is the constant term,
the ``t - 1`` other coefficients are fresh from the OS's CSPRNG, ``os.urandom``, as in
pycryptodome), at the same x-coordinates (share index ``i`` for holder ``i``). Each half is
perfectly hidden by any ``t - 1`` shares (Shamir's information-theoretic guarantee, per field
element), and the two polynomials are independent, so ``t - 1`` shares of the pair reveal
nothing about the 32-byte secret either. A share is 32 bytes too: the two evaluations.

Why not pycryptodome's own code: it is pure Python at one field multiplication per
bit (~40 us), so a SecAgg+ round of 100 clients spent ~7 s in it. Only the arithmetic is
replaced, not the scheme or the field, and it is done in two batched forms:

* **split** -- Horner's rule at the small x-coordinates ``1..m``: multiplying by an index
  ``x < 2^16`` is a carry-less product with at most 16 shifted copies and one reduction
  step (``x^128 = x^7 + x^2 + x + 1``), and all polynomials of a call (two halves per
  secret, :func:`split_many` for several secrets) travel side by side in one Python
  integer, 144 bits apart, so one shift or XOR advances all of them;
* **reconstruct** -- the secret is ``sum_i lambda_i y_i`` with the Lagrange coefficients
  at 0, ``lambda_i = prod_{j != i} x_j / (x_i + x_j)``, which depend only on the set of
  x-coordinates: they are computed once per set (and cached: they are public; a set
  ``1..r`` with a few holders missing is derived from the coefficients of ``1..r``), and
  the products ``lambda_i y_i`` of all the secrets of a call (:func:`reconstruct_many`) are
  computed at once with numpy (shift-and-add over 128 bits on arrays of 64-bit words).

Like pycryptodome's, this arithmetic is not constant-time (Python integers are not); the
values handled are shares the caller holds anyway, and timing is outside the threat model
of :mod:`horizontal.secagg.protocol` (a semi-honest server that sees messages, not clocks).

Fewer than ``t`` shares are refused
-----------------------------------
Lagrange interpolation through fewer than ``t`` points does not fail, it returns a wrong
secret. :func:`reconstruct` is told ``t`` and raises
:class:`~horizontal.secagg.errors.NotEnoughSharesError` below it, and interpolates through
exactly ``t`` shares, chosen by lowest index so the result does not depend on the order
shares arrived in.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from horizontal.secagg.errors import NotEnoughSharesError, SecretSharingError

SECRET_BYTES = 32
_HALF = 16
#: Share indices are encoded in two bytes; a holder set is a closed neighbourhood, far smaller.
MAX_SHARES = 0xFFFF
SHARE_WIRE_BYTES = 2 + SECRET_BYTES

# -- GF(2^128), pycryptodome's field: bit i of an int is the coefficient of x^i -------------
_BITS = 128
_ONES = (1 << _BITS) - 1
_MODULUS = (1 << _BITS) | 0x87  # x^128 + x^7 + x^2 + x + 1
_INDEX_BITS = 16  # share indices are < 2^16 (MAX_SHARES)
_ROOM = 64  # bits a lane may grow past 128 before it is reduced (one fold clears them)
_LANE = _BITS + _ROOM
_WORD = (1 << 64) - 1
_BATCH = 1024  # secrets per vectorized pass (bounds its memory: 64 KiB per unit of t)


def _clmul(a: int, b: int) -> int:
    """Carry-less product of two polynomials over GF(2) (not reduced): one shifted copy per
    set bit of a small operand, else 4 bits at a time from a table of multiples."""
    if b < a:
        a, b = b, a
    if a >> _INDEX_BITS == 0:  # a share index or a small product of them
        z = 0
        while a:
            low = a & -a
            z ^= b * low
            a ^= low
        return z
    table = [0, a]
    for v in range(2, 16):
        table.append((table[v >> 1] << 1) ^ (a if v & 1 else 0))
    z = 0
    for shift in range((b.bit_length() + 3) // 4 * 4 - 4, -4, -4):
        z = (z << 4) ^ table[(b >> shift) & 15]
    return z


def _reduce(z: int) -> int:
    """``z mod (x^128 + x^7 + x^2 + x + 1)``: fold the bits above 128 down with
    ``x^128 = x^7 + x^2 + x + 1`` (each fold lowers the degree by 121)."""
    while z >> _BITS:
        hi = z >> _BITS
        z = (z & _ONES) ^ hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7)
    return z


def _gf_mul(a: int, b: int) -> int:
    return _reduce(_clmul(a, b))


def _gf_inv(a: int) -> int:
    """``a^-1`` by the extended Euclidean algorithm over GF(2)[x]."""
    if a == 0:
        raise SecretSharingError("zero has no inverse")
    r0, r1, s0, s1 = a, _MODULUS, 1, 0
    while r1:
        q, r, d = 0, r0, r1.bit_length()
        while (shift := r.bit_length() - d) >= 0:
            q ^= 1 << shift
            r ^= r1 << shift
        r0, r1, s0, s1 = r1, r, s1, s0 ^ _clmul(q, s1)
    return _reduce(s0)


@functools.lru_cache(maxsize=64)
def _lane_masks(lanes: int) -> tuple[int, int]:
    """The low 128 bits and the overflow bits (moved down) of each of ``lanes`` lanes."""
    low = sum(_ONES << (i * _LANE) for i in range(lanes))
    over = sum(((1 << _ROOM) - 1) << (i * _LANE) for i in range(lanes))
    return low, over


def _evaluate(coefficients: list[int], lanes: int, xs: Iterable[int]) -> list[int]:
    """Horner's rule at each ``x`` for ``lanes`` polynomials packed side by side:
    ``coefficients[j]`` holds every polynomial's ``x^j`` coefficient, one per lane. Products
    are carry-less and reduced lazily: a lane grows by ``bit_length(x) - 1`` bits a step and
    is folded back (``x^128 = x^7 + x^2 + x + 1``) only before it would outgrow its 64 spare
    bits, and once at the end (reduction commutes with the ring operations)."""
    low, over = _lane_masks(lanes)

    def fold(v: int) -> int:  # one fold: the spare bits are < 2^64, so hi << 7 < 2^128
        hi = (v >> _BITS) & over
        return (v & low) ^ hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7)

    top, rest = coefficients[-1], coefficients[-2::-1]
    out = []
    for x in xs:
        shifts = [b for b in range(x.bit_length()) if x >> b & 1]
        growth = x.bit_length() - 1
        acc, grown = top, 0
        for c in rest:
            if grown + growth > _ROOM:
                acc, grown = fold(acc), 0
            r = 0
            for b in shifts:
                r ^= acc << b
            acc = r ^ c
            grown += growth
        out.append(fold(acc))
    return out


def _lagrange_direct(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``lambda_i = prod_{j != i} x_j / (x_i + x_j)``, the Lagrange coefficients at 0: the
    numerators and denominators are products of small factors (< 2^16, cheap), and the
    denominators are inverted together (one inversion, Montgomery's trick)."""
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num, den = _reduce(_clmul(num, xj)), _reduce(_clmul(den, xi ^ xj))
        nums.append(num)
        dens.append(den)
    prefix = [1]
    for den in dens:
        prefix.append(_gf_mul(prefix[-1], den))
    inv = _gf_inv(prefix[-1])
    lambdas = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        lambdas[i] = _gf_mul(nums[i], _gf_mul(inv, prefix[i]))  # nums[i] / dens[i]
        inv = _gf_mul(inv, dens[i])
    return tuple(lambdas)


@functools.lru_cache(maxsize=64)
def _lagrange_prefix(r: int) -> tuple[int, ...]:
    """The coefficients for the x-coordinates ``1..r``."""
    return _lagrange_direct(tuple(range(1, r + 1)))


@functools.lru_cache(maxsize=4096)
def _ratio(i: int, j: int) -> int:
    """``(x_i + x_j) / x_j``: what removing ``x_j`` from a set multiplies ``lambda_i`` by."""
    return _gf_mul(_gf_inv(j), i ^ j)


@functools.lru_cache(maxsize=1024)
def _lagrange(xs: tuple[int, ...]) -> tuple[int, ...]:
    """The Lagrange coefficients at 0 for the sorted x-coordinates ``xs``. Public (a
    function of the x-coordinates only), hence cached. Sets are mostly ``1..r`` with a few
    indices missing (holders that dropped out), so they are derived from the cached
    coefficients of ``1..r``: ``lambda_i(S) = lambda_i(1..r) prod_{j missing} (x_i + x_j) /
    x_j``; otherwise computed directly."""
    missing = sorted(set(range(1, xs[-1] + 1)) - set(xs))
    if not missing or len(missing) > max(2, len(xs) // 4):
        return _lagrange_direct(xs)
    full = _lagrange_prefix(xs[-1])
    out = []
    for x in xs:
        lam = full[x - 1]
        for j in missing:
            lam = _gf_mul(lam, _ratio(x, j))
        out.append(lam)
    return tuple(out)


def clear_caches() -> None:
    """Forget the cached Lagrange coefficients (public values; for measuring a fresh server)."""
    for cached in (_lagrange, _lagrange_prefix, _ratio):
        cached.cache_clear()


def _gf_mul_vec(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise products of two ``(N, 2)`` arrays of field elements (low, high 64-bit
    words): shift-and-add over the 128 bits of ``b``, all ``N`` products at once."""
    one, top = np.uint64(1), np.uint64(63)
    lo, hi = a[:, 0].copy(), a[:, 1].copy()
    acc_lo, acc_hi = np.zeros_like(lo), np.zeros_like(hi)
    for word in (b[:, 0], b[:, 1]):
        for bit in range(64):
            take = np.uint64(0) - ((word >> np.uint64(bit)) & one)  # all ones or zero
            acc_lo ^= lo & take
            acc_hi ^= hi & take
            carry = hi >> top  # times x, reduced by x^128 = x^7 + x^2 + x + 1
            hi = (hi << one) | (lo >> top)
            lo = (lo << one) ^ (carry * np.uint64(0x87))
    return np.stack([acc_lo, acc_hi], axis=1)


@dataclass(frozen=True)
class Share:
    """One holder's share: its index (1-based x-coordinate) and the two 16-byte evaluations."""

    index: int
    value: bytes

    def __post_init__(self):
        if not isinstance(self.index, int) or isinstance(self.index, bool) or not (
            1 <= self.index <= MAX_SHARES
        ):
            raise SecretSharingError(f"share index must be in [1, {MAX_SHARES}], got "
                                     f"{self.index!r}")
        if not isinstance(self.value, bytes) or len(self.value) != SECRET_BYTES:
            raise SecretSharingError(f"a share value is {SECRET_BYTES} bytes")

    def to_bytes(self) -> bytes:
        return self.index.to_bytes(2, "big") + self.value

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if not isinstance(data, bytes) or len(data) != SHARE_WIRE_BYTES:
            raise SecretSharingError(f"an encoded share is {SHARE_WIRE_BYTES} bytes, got "
                                     f"{len(data) if isinstance(data, bytes) else type(data)}")
        return cls(int.from_bytes(data[:2], "big"), data[2:])


def _check_threshold(t: int, m: int) -> None:
    if not isinstance(t, int) or isinstance(t, bool) or not isinstance(m, int):
        raise SecretSharingError("threshold and share count must be integers")
    if not 1 <= t <= m <= MAX_SHARES:
        raise SecretSharingError(f"need 1 <= t <= m <= {MAX_SHARES}, got t={t}, m={m}")


def _pack(halves: Sequence[bytes]) -> int:
    """16-byte values as lanes of one integer, lane ``i`` at bit ``144 i``."""
    pad = bytes(_LANE // 8 - _HALF)
    return int.from_bytes(b"".join(pad + h for h in reversed(halves)), "big")


def split(secret: bytes, t: int, m: int) -> list[Share]:
    """``m`` shares of a 32-byte ``secret``, any ``t`` of which rebuild it (indices 1..m)."""
    return split_many([secret], t, m)[0]


def split_many(secrets: Sequence[bytes], t: int, m: int) -> list[list[Share]]:
    """:func:`split` of each secret (independent polynomials), in one batched pass:
    ``result[k]`` are the ``m`` shares of ``secrets[k]``."""
    secrets = list(secrets)
    if not secrets or not all(isinstance(s, bytes) and len(s) == SECRET_BYTES
                              for s in secrets):
        raise SecretSharingError(f"each secret must be {SECRET_BYTES} bytes")
    _check_threshold(t, m)
    halves = [s[h:h + _HALF] for s in secrets for h in (0, _HALF)]
    lanes = len(halves)
    randomness = os.urandom(_HALF * lanes * (t - 1))  # the coefficients of x^1 .. x^(t-1)
    coefficients = [_pack(halves)] + [
        _pack([randomness[o:o + _HALF] for o in range(start, start + _HALF * lanes, _HALF)])
        for start in range(0, len(randomness), _HALF * lanes)
    ]
    width = _LANE // 8
    shares: list[list[Share]] = [[] for _ in secrets]
    for x, acc in enumerate(_evaluate(coefficients, lanes, range(1, m + 1)), start=1):
        raw = acc.to_bytes(width * lanes, "big")[::-1]  # lane i at bytes [18 i, 18 i + 16)
        for k in range(len(secrets)):
            lo = raw[width * 2 * k: width * 2 * k + _HALF][::-1]
            hi = raw[width * (2 * k + 1): width * (2 * k + 1) + _HALF][::-1]
            shares[k].append(Share(x, lo + hi))
    return shares


def _chosen(shares: Iterable[Share], t) -> list[Share]:
    """The ``t`` lowest-indexed of ``shares``, after the checks of :func:`reconstruct`."""
    shares = list(shares)
    if not all(isinstance(s, Share) for s in shares):
        raise SecretSharingError("reconstruct takes Share objects")
    if not isinstance(t, int) or isinstance(t, bool) or t < 1:
        raise SecretSharingError(f"threshold must be a positive integer, got {t!r}")
    indices = [s.index for s in shares]
    if len(set(indices)) != len(indices):
        raise SecretSharingError(f"duplicate share indices: {sorted(indices)}")
    if len(shares) < t:
        raise NotEnoughSharesError(
            f"{len(shares)} share(s) given but the threshold is {t}: refusing to interpolate "
            "(it would return a wrong secret, not an error)"
        )
    return sorted(shares, key=lambda s: s.index)[:t]


def reconstruct(shares: Iterable[Share], t: int) -> bytes:
    """The secret from at least ``t`` shares with distinct indices (exactly ``t`` are used).

    Raises :class:`NotEnoughSharesError` with fewer than ``t``; a wrong or forged share gives a
    wrong secret (Shamir is not verifiable), which callers detect where they can (the mask
    key is checked against its advertised public key).
    """
    return reconstruct_many([shares], t)[0]


def reconstruct_many(share_sets: Iterable[Iterable[Share]], t: int) -> list[bytes]:
    """:func:`reconstruct` of each set of shares, batched: the Lagrange coefficients are
    computed once per set of x-coordinates, and all ``lambda_i y_i`` products of all secrets
    are one vectorized multiplication. Every set is checked before anything is
    interpolated."""
    chosen = [_chosen(shares, t) for shares in share_sets]
    out: list[bytes | None] = [None] * len(chosen)
    for first in range(0, len(chosen), _BATCH):
        part = chosen[first:first + _BATCH]
        # (secret, holder, half, word): each 16-byte half is a big-endian (high, low) pair
        raw = np.frombuffer(b"".join(s.value for use in part for s in use), ">u8")
        ys = raw.reshape(len(part), t, 2, 2)[..., ::-1].astype(np.uint64)  # (low, high)
        lams = np.array([[(lam & _WORD, lam >> 64) for lam in _lagrange(tuple(
            s.index for s in use))] for use in part], dtype=np.uint64)  # (secret, holder, 2)
        lams = np.broadcast_to(lams[:, :, None, :], ys.shape)
        terms = _gf_mul_vec(ys.reshape(-1, 2), np.ascontiguousarray(lams).reshape(-1, 2))
        total = np.bitwise_xor.reduce(terms.reshape(ys.shape), axis=1)  # (secret, half, 2)
        values = total[..., ::-1].astype(">u8").reshape(len(part), SECRET_BYTES // 8)
        out[first:first + len(part)] = [row.tobytes() for row in values]
    return out  # type: ignore[return-value]
