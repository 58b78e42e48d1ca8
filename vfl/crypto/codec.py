"""Fixed-point encoding of real tensors into the Paillier plaintext space, and masks.

One public scale per tensor
---------------------------
A tensor ``x`` is encoded as the integers ``round(x * 2**frac_bits)`` with a single
``frac_bits`` chosen in advance and known to everyone. No per-value exponent travels beside a
ciphertext (``phe`` by default picks one per number, which leaks magnitudes). The product of
two encoded tensors carries scale ``frac_bits_a + frac_bits_b``; :class:`EncryptedArray`
tracks that sum as ``scale_bits``.

Signed integers and the plaintext space
---------------------------------------
Plaintexts live in ``Z_n``. A signed integer ``v`` is stored as the residue ``v mod n``
(negative values as ``n - |v|``). Decoding uses the convention of python-paillier: with
``max_int = n // 3 - 1`` (exactly phe's value), residues ``<= max_int`` are non-negative,
residues ``>= n - max_int`` are negative, and the band in between can only be reached by an
overflow, which is reported as :class:`FixedPointOverflowError` instead of returning
garbage. Because a sum or product
that wraps around ``n`` is undetectable in general, :func:`check_sum_bound` and
:func:`check_product_bound` check a bound *before* the homomorphic computation runs.

Masks
-----
:func:`draw_mask` gives additive masks for statistical hiding: to hide an integer ``v`` with
``|v| < 2**bits`` the mask ``R`` is uniform in ``[0, 2**(bits + slack_bits))`` with
``slack_bits >= 40``. Then ``v + R`` and ``R`` are within statistical distance
``|v| / 2**(bits + slack_bits) < 2**-slack_bits`` of each other: whoever sees ``v + R`` learns
about ``v`` with advantage at most ``2**-40``. Masks come from :mod:`secrets` only.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from vfl.crypto.errors import FixedPointOverflowError

#: Statistical security parameter of masks: the hiding advantage is below ``2**-40``.
STAT_SLACK_BITS = 40


def as_int_array(values) -> np.ndarray:
    """Validate ``values`` as integers and return an object array of Python ints.

    Floats are refused (encode them with :class:`FixedPointCodec` first) so that no value is
    silently truncated on its way into a ciphertext.
    """
    if isinstance(values, np.ndarray):
        arr = values
    else:
        arr = np.asarray(values, dtype=object) if not np.isscalar(values) else np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(object)
    if arr.dtype.kind == "b":
        raise TypeError("boolean arrays are not plaintexts; convert them to integers first")
    if arr.dtype.kind != "O":
        raise TypeError(
            f"expected integers, got an array of dtype {arr.dtype}; encode real values with "
            "FixedPointCodec.encode first"
        )
    out = np.empty(arr.shape, dtype=object)
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    for i, v in enumerate(flat_in):
        is_int = isinstance(v, int | np.integer) or type(v).__name__ == "mpz"
        if isinstance(v, bool | np.bool_) or not is_int:
            raise TypeError(
                f"element {i} is {type(v).__name__}, not an integer; encode real values with "
                "FixedPointCodec.encode first"
            )
        flat_out[i] = int(v)
    return out


def max_abs(ints: np.ndarray) -> int:
    """Largest absolute value of an integer object array (0 when empty)."""
    return max((abs(int(v)) for v in np.asarray(ints, dtype=object).reshape(-1)), default=0)


def check_fits(ints: np.ndarray, public_key, what: str = "value") -> None:
    """Raise :class:`FixedPointOverflowError` if any ``|v| > max_int`` of ``public_key``."""
    m = max_abs(ints)
    if m > public_key.max_int:
        raise FixedPointOverflowError(
            f"a {what} of magnitude 2^{m.bit_length()} does not fit the signed plaintext space "
            f"(|v| <= n//3 - 1, about 2^{int(public_key.max_int.bit_length())}); use fewer "
            "fractional bits, clip the tensor, or a longer key"
        )


def check_sum_bound(max_abs_value: int, terms: int, public_key) -> int:
    """Check that a sum of ``terms`` values with ``|v| <= max_abs_value`` cannot overflow.

    Returns the bound ``terms * max_abs_value``.
    """
    bound = int(terms) * int(max_abs_value)
    if bound > public_key.max_int:
        raise FixedPointOverflowError(
            f"a sum of {terms} values of magnitude <= 2^{int(max_abs_value).bit_length()} may "
            f"reach 2^{bound.bit_length()}, beyond the plaintext bound "
            f"2^{int(public_key.max_int.bit_length())}; reduce frac_bits or the batch size"
        )
    return bound


def check_product_bound(max_abs_matrix: int, max_abs_vector: int, length: int, public_key) -> int:
    """Check that ``M @ v`` cannot overflow when ``|M_ij| <= max_abs_matrix``,
    ``|v_j| <= max_abs_vector`` and rows have ``length`` entries. Returns the bound."""
    return check_sum_bound(int(max_abs_matrix) * int(max_abs_vector), length, public_key)


def to_residues(ints, public_key) -> np.ndarray:
    """Signed integers -> residues mod n (negative ``v`` becomes ``n - |v|``)."""
    arr = as_int_array(ints)
    check_fits(arr, public_key)
    n = int(public_key.n)
    return np.frompyfunc(lambda v: v % n, 1, 1)(arr).astype(object) if arr.size else arr


def from_residues(residues, public_key) -> np.ndarray:
    """Residues mod n -> signed integers, with phe's ``max_int = n // 3 - 1`` convention.

    Raises :class:`FixedPointOverflowError` for residues in the overflow band.
    """
    n, max_int = int(public_key.n), int(public_key.max_int)
    arr = np.asarray(residues, dtype=object)
    out = np.empty(arr.shape, dtype=object)
    flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
    for i, r in enumerate(flat_in):
        r = int(r)
        if r <= max_int:
            flat_out[i] = r
        elif r >= n - max_int:
            flat_out[i] = r - n
        else:
            raise FixedPointOverflowError(
                f"decrypted value {i} lies in the overflow band of the plaintext space: a sum "
                "or product exceeded n//3 - 1; check bounds with check_product_bound beforehand "
                "and use fewer fractional bits"
            )
    return out


@dataclass(frozen=True)
class FixedPointCodec:
    """Encode real tensors as integers ``round(x * 2**frac_bits)`` with one public scale.

    ``frac_bits`` is the fractional precision; decoding is exact up to ``2**-(frac_bits+1)``
    (round to nearest). Use a multiple of 4 to map onto python-paillier's base-16 exponents
    without rescaling (other values are rescaled losslessly, see ``EncryptedArray.to_phe``).
    ``max_abs_value`` optionally caps the magnitude of real inputs: larger values raise
    :class:`FixedPointOverflowError` (clip upstream if saturation is wanted).
    """

    frac_bits: int = 32
    max_abs_value: float | None = None

    def __post_init__(self):
        if not 0 <= int(self.frac_bits) <= 512:
            raise ValueError("frac_bits must be between 0 and 512")

    @property
    def scale(self) -> int:
        return 1 << int(self.frac_bits)

    def encode(self, x, public_key=None) -> np.ndarray:
        """Real array -> object array of signed Python ints at scale ``2**frac_bits``.

        With ``public_key`` the result is also checked against the plaintext space.
        """
        arr = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise FixedPointOverflowError("cannot encode NaN or infinity; clean the tensor first")
        if self.max_abs_value is not None and arr.size and np.max(np.abs(arr)) > self.max_abs_value:
            raise FixedPointOverflowError(
                f"a value of magnitude {float(np.max(np.abs(arr))):.3g} exceeds the codec's "
                f"max_abs_value={self.max_abs_value}; clip the tensor or raise the bound"
            )
        out = np.empty(arr.shape, dtype=object)
        flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
        f = int(self.frac_bits)
        for i, v in enumerate(flat_in.tolist()):
            # Exact: ldexp scales by a power of two without rounding; round() to nearest int.
            flat_out[i] = int(round(math.ldexp(v, f)))
        if public_key is not None:
            check_fits(out, public_key, "fixed-point value")
        return out

    def decode(self, ints, *, scale_bits: int | None = None) -> np.ndarray:
        """Signed ints at scale ``2**scale_bits`` (default ``frac_bits``) -> float64 array."""
        s = int(self.frac_bits if scale_bits is None else scale_bits)
        arr = np.asarray(ints, dtype=object)
        out = np.empty(arr.shape, dtype=np.float64)
        flat_in, flat_out = arr.reshape(-1), out.reshape(-1)
        for i, v in enumerate(flat_in):
            # int / 2**s as an exact rational rounded once (no float overflow for big ints).
            flat_out[i] = int(v) / (1 << s) if s >= 0 else float(int(v) << -s)
        return out

    def bits_for(self, max_abs_real: float) -> int:
        """Bit length of ``max_abs_real`` once encoded (``|encode(x)| < 2**bits``)."""
        return int(math.ceil(abs(max_abs_real) * self.scale)).bit_length()


def draw_mask(shape, bits: int, *, slack_bits: int = STAT_SLACK_BITS) -> np.ndarray:
    """Uniform masks in ``[0, 2**(bits + slack_bits))`` from :mod:`secrets`.

    ``bits`` bounds the magnitude being hidden (``|v| < 2**bits``); ``slack_bits`` (at least
    40) is the statistical security: ``v + R`` is within statistical distance ``2**-slack_bits``
    of ``R`` alone. The returned object array holds non-negative Python ints of at most
    ``bits + slack_bits`` bits. Callers must check that ``v + R`` still fits the plaintext
    space (``check_sum_bound``) or a packing slot.
    """
    if int(slack_bits) < STAT_SLACK_BITS:
        raise ValueError(
            f"slack_bits={slack_bits} gives weak hiding; use at least {STAT_SLACK_BITS}"
        )
    if int(bits) < 0:
        raise ValueError("bits must be non-negative")
    width = int(bits) + int(slack_bits)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    out = np.empty(shape, dtype=object)
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = secrets.randbits(width)
    return out
