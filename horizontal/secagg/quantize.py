"""Fixed-point quantization of float updates into the ring Z_{2^k}, and back for the sum.

Masking works on integers mod 2^k, so a float update ``x`` becomes
``q = round(clip(x, -c, c) * scale)``, a signed integer with ``|q| <= L = round(c * scale)``,
stored in two's complement (``q mod 2^k``). Sums of such values mod 2^k are sums of the
signed integers as long as no partial sum leaves ``[-2^(k-1), 2^(k-1))``.

Overflow bound
--------------
The server decodes the masked sum of at most ``n`` clients, each ``|q| <= L``, so
``|sum| <= n · L``; it decodes correctly iff ``n · L < 2^(k-1)``. :meth:`Quantizer.check`
enforces this for the federation's ``n`` (all clients, not just this round's survivors) and
raises :class:`~horizontal.secagg.errors.RingOverflowError` -- *before* anything is masked:
a wrapped sum would decode to a plausible-looking wrong number, not to an error. Because
values are clipped to ``[-c, c]`` first, the bound is a property of ``(n, c, scale, k)``,
not of the data. :meth:`Quantizer.for_clients` picks the largest power-of-two scale that
satisfies it.

Rounding: deterministic
-----------------------
Rounding is to the nearest integer (``numpy.rint``, ties to even), not stochastic: it is
reproducible (a replayed round gives the same bits, which the unlearning replay relies on)
and needs no randomness on the client. The price is a bias of at most ``1 / (2 · scale)``
per coordinate and client, so at most ``n / (2 · scale)`` on a coordinate of the sum (with
``k = 32``, ``n = 100``, ``c = 1`` the scale is ``2^24``: ~3e-6). Clipping, in contrast,
changes the update: choose ``c`` above the largest coordinate you expect, or clip updates by
norm before.

Weighted averages (FedAvg) are the caller's business: send ``w_u · x_u`` and, as one more
coordinate, ``w_u``, and divide the two sums; ``c`` must then bound the weighted values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from horizontal.secagg.errors import QuantizationError, RingOverflowError
from horizontal.secagg.masks import RING_BITS, ring_dtype


@dataclass(frozen=True)
class Quantizer:
    """Clip to ``[-clip, clip]``, multiply by ``scale``, round, embed into Z_{2^bits}."""

    clip: float = 1.0
    scale: float = 2.0**16
    bits: int = 32

    def __post_init__(self):
        if self.bits not in RING_BITS or isinstance(self.bits, bool):
            raise QuantizationError(f"bits must be one of {RING_BITS}, got {self.bits!r}")
        for what, v in (("clip", self.clip), ("scale", self.scale)):
            if not (isinstance(v, int | float) and not isinstance(v, bool)
                    and math.isfinite(v) and v > 0):
                raise QuantizationError(f"{what} must be a finite positive number, got {v!r}")
        if self.max_level < 1:
            raise QuantizationError(
                f"clip * scale = {self.clip * self.scale} rounds to 0: every value would "
                "quantize to 0; raise the scale")

    @property
    def max_level(self) -> int:
        """``L``: the largest ``|q|`` a clipped value can quantize to."""
        return int(np.rint(np.float64(self.clip) * np.float64(self.scale)))

    def capacity(self) -> int:
        """The largest number of clients whose sum cannot overflow: ``n · L < 2^(k-1)``."""
        return (2 ** (self.bits - 1) - 1) // self.max_level

    def check(self, n_clients: int) -> None:
        """Raise :class:`RingOverflowError` unless ``n_clients · L < 2^(k-1)``."""
        if not isinstance(n_clients, int) or isinstance(n_clients, bool) or n_clients < 1:
            raise QuantizationError(f"n_clients must be a positive integer, got {n_clients!r}")
        if n_clients * self.max_level >= 2 ** (self.bits - 1):
            raise RingOverflowError(
                f"{n_clients} clients x max |q| {self.max_level} (clip {self.clip} x scale "
                f"{self.scale}) >= 2^{self.bits - 1}: the sum could wrap around Z_2^{self.bits}. "
                f"Lower the scale or the clip, use bits=64, or stay at or below "
                f"{self.capacity()} clients"
            )

    @classmethod
    def for_clients(cls, n_clients: int, clip: float = 1.0, bits: int = 32) -> Quantizer:
        """The largest power-of-two scale for which ``n_clients`` cannot overflow."""
        if not isinstance(n_clients, int) or isinstance(n_clients, bool) or n_clients < 1:
            raise QuantizationError(f"n_clients must be a positive integer, got {n_clients!r}")
        if bits not in RING_BITS:
            raise QuantizationError(f"bits must be one of {RING_BITS}, got {bits!r}")
        limit = (2 ** (bits - 1) - 1) // n_clients  # the largest allowed L
        if limit < 1:
            raise RingOverflowError(f"{n_clients} clients do not fit in Z_2^{bits} at all")
        # The largest e with round(clip * 2^e) <= limit; float64 keeps 53 bits, so stay
        # within them (beyond, the grid is coarser than the float anyway).
        e = math.floor(math.log2(limit / clip))
        while e > -1074 and int(np.rint(clip * 2.0**e)) > limit:
            e -= 1
        q = cls(clip=clip, scale=2.0**e, bits=bits)
        q.check(n_clients)
        return q

    def quantize(self, x, n_clients: int) -> np.ndarray:
        """``x`` (floats) as ring elements; checks the overflow bound for ``n_clients`` first.

        Raises :class:`RingOverflowError` (bound) or :class:`QuantizationError` (NaN/inf).
        """
        self.check(n_clients)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise QuantizationError(f"an update is a 1-D vector, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise QuantizationError("the update contains NaN or infinite values")
        q = np.rint(np.clip(x, -self.clip, self.clip) * self.scale).astype(np.int64)
        if self.bits == 32:
            return q.astype(np.int32).view(np.uint32)  # |q| < 2^31: exact two's complement
        return q.view(np.uint64)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """Signed integers of a ring vector (two's complement)."""
        total = np.asarray(total)
        if total.dtype != ring_dtype(self.bits):
            raise QuantizationError(f"expected a {ring_dtype(self.bits)} ring vector, got "
                                    f"{total.dtype}")
        return total.view(np.int32 if self.bits == 32 else np.int64)

    def dequantize(self, total: np.ndarray) -> np.ndarray:
        """The float sum of the quantized updates that were summed into ``total``."""
        return self.decode(total).astype(np.float64) / self.scale
