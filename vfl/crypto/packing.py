"""Packing several signed fixed-point integers into one Paillier plaintext.

A plaintext of about ``key_bits`` bits can carry many small values side by side: slot ``j``
holds ``v_j + offset`` at bit position ``j * slot_bits``. Fewer ciphertexts means fewer bytes
on the wire and, above all, fewer decryptions (each costs two half-size exponentiations).

Slot width rule
---------------
For values with ``|v| < 2**magnitude_bits``:

* ``offset = 2**magnitude_bits`` makes every stored value non-negative and below
  ``2**(magnitude_bits + 1)``;
* ``headroom_bits`` extra bits let up to ``2**headroom_bits`` packed plaintexts (or packed
  ciphertexts, homomorphically) be added without a carry crossing into the next slot;
* ``guard_bits`` (default 1) stay zero in every valid slot: a value that left its range
  (packed homomorphically, so never range-checked at packing time) sets them, and
  :meth:`PackingLayout.unpack` reports the overflow instead of returning a wrapped value;
* ``slot_bits = magnitude_bits + 1 + headroom_bits + guard_bits``;
* ``slots_per_plaintext = (bit_length(max_int) - 1) // slot_bits`` with
  ``max_int = n // 3 - 1``, so a packed value stays below ``2**(bit_length(max_int) - 1)
  <= max_int`` and decodes as a non-negative plaintext.

When ``terms`` packed values were summed, :meth:`PackingLayout.unpack` removes
``terms * offset`` from each slot. Packing is only allowed where the protocol lets the
decryptor see every slot (e.g. masked gradients: every slot is masked for that reader).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfl.crypto.codec import as_int_array
from vfl.crypto.errors import FixedPointOverflowError


@dataclass(frozen=True)
class PackingLayout:
    """Slot layout for values ``|v| < 2**magnitude_bits`` with room for ``2**headroom_bits``
    additions. See the module docstring for the rule."""

    magnitude_bits: int
    headroom_bits: int = 0
    guard_bits: int = 1

    def __post_init__(self):
        if int(self.magnitude_bits) < 1 or int(self.headroom_bits) < 0:
            raise ValueError("magnitude_bits must be >= 1 and headroom_bits >= 0")
        if int(self.guard_bits) < 0:
            raise ValueError("guard_bits must be >= 0")

    @property
    def slot_bits(self) -> int:
        return int(self.magnitude_bits) + 1 + int(self.headroom_bits) + int(self.guard_bits)

    @property
    def offset(self) -> int:
        return 1 << int(self.magnitude_bits)

    def slots_per_plaintext(self, public_key) -> int:
        slots = (int(public_key.max_int.bit_length()) - 1) // self.slot_bits
        if slots < 1:
            raise FixedPointOverflowError(
                f"a {self.slot_bits}-bit slot does not fit this key's plaintext space; use "
                "fewer magnitude or headroom bits, or a longer key"
            )
        return slots

    def packed_count(self, count: int, public_key) -> int:
        """Number of plaintexts needed for ``count`` values."""
        s = self.slots_per_plaintext(public_key)
        return -(-int(count) // s)

    def _check(self, ints) -> None:
        limit = 1 << int(self.magnitude_bits)
        for i, v in enumerate(ints):
            if not -limit < v < limit:
                raise FixedPointOverflowError(
                    f"value {i} needs more than {self.magnitude_bits} magnitude bits; widen "
                    "the layout (PackingLayout(magnitude_bits=...)) or clip the values"
                )

    def pack(self, values, public_key) -> list[int]:
        """Signed ints -> list of non-negative packed plaintexts (each ``<= max_int``)."""
        ints = [int(v) for v in as_int_array(values).reshape(-1)]
        self._check(ints)
        s, w, off = self.slots_per_plaintext(public_key), self.slot_bits, self.offset
        out = []
        for start in range(0, len(ints), s):
            acc = 0
            for j, v in enumerate(ints[start : start + s]):
                acc |= (v + off) << (w * j)
            out.append(acc)
        return out

    def unpack(self, packed, count: int, public_key, *, terms: int = 1) -> np.ndarray:
        """Packed plaintexts -> ``count`` signed ints (object array).

        ``terms`` is how many packed values were added together (at most
        ``2**headroom_bits``).
        """
        terms = int(terms)
        if not 1 <= terms <= (1 << int(self.headroom_bits)):
            raise FixedPointOverflowError(
                f"{terms} packed terms exceed the layout's headroom of "
                f"2^{self.headroom_bits}; add headroom bits"
            )
        s, w = self.slots_per_plaintext(public_key), self.slot_bits
        mask = (1 << w) - 1
        shift_off = terms * self.offset
        packed = [int(p) for p in packed]
        if len(packed) != self.packed_count(count, public_key):
            raise ValueError(f"{len(packed)} packed plaintexts cannot hold exactly {count} values")
        # the largest raw slot value ``terms`` in-range values can sum to
        ceiling = terms * (1 << (int(self.magnitude_bits) + 1)) if self.guard_bits else None
        out = np.empty(int(count), dtype=object)
        k = 0
        for p in packed:
            if p < 0 or p.bit_length() > s * w:
                raise FixedPointOverflowError(
                    "a packed plaintext exceeds its slots: a slot overflowed; use a wider "
                    "layout (more magnitude or headroom bits)"
                )
            for _ in range(min(s, int(count) - k)):
                raw = p & mask
                if ceiling is not None and raw >= ceiling:
                    raise FixedPointOverflowError(
                        f"packed slot {k} overflowed its {self.magnitude_bits} magnitude bits "
                        "(its guard bits are set); the values left the layout's range: widen "
                        "the layout or bound the values"
                    )
                out[k] = raw - shift_off
                p >>= w
                k += 1
        return out
