"""The Paillier-encrypted gradient exchange of the opt-in ``paillier-masked-gradient`` protocol.

Backpropagation is linear in the incoming gradient, so a passive party can compute its
parameter gradient without seeing the cut-layer gradient::

    active:   [[delta]]      = Enc_pk(encode(dL/dh))                      -> passive  (ciphertext)
    passive:  [[g]]          = J^T [[delta]]         (J: its own Jacobian, computed by JAX)
              packed [[g + R]] = pack([[g]]) * Enc_pk(pack(R))  (fresh mask R, ``secrets``)
                                                                          -> active   (masked)
    active:   g + R          = Dec_sk(packed)                             -> passive  (masked)
    passive:  g              = (g + R) - R, then its own Optax step

Fixed point. One public scale per tensor: ``delta`` at ``DELTA_FRAC_BITS``, the Jacobian at
``JACOBIAN_FRAC_BITS``, so ``g`` is at their sum; no per-value exponent travels. The
magnitude bounds ``DELTA_BOUND`` and ``JACOBIAN_BOUND`` are public protocol constants: a
value beyond them raises :class:`~vfl.crypto.FixedPointOverflowError` instead of wrapping
around the plaintext space, and the mask width is derived from them (not from the data),
so the packing layout the active party sees reveals nothing about the passive's rows.

Masking. ``R`` is uniform with ``STAT_SLACK_BITS`` (40) bits more than the public bound on
``|g|``, so ``g + R`` is within statistical distance ``2**-40`` of ``R`` alone. ``R`` is
packed and added as one *fresh* encryption per packed ciphertext, which also re-randomizes
what the key holder gets back (otherwise it could relate the result to the randomness it
chose for ``[[delta]]``).

Minimum batch. The passive party learns its own aggregate gradient per batch. With one
row the sign of a logistic gradient is the label, so batches smaller than
``MIN_ENCRYPTED_BATCH`` rows are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfl.core.errors import PayloadShapeError
from vfl.crypto import (
    STAT_SLACK_BITS,
    EncryptedArray,
    FixedPointCodec,
    FixedPointOverflowError,
    PackingLayout,
    PrivateKey,
    PublicKey,
    RandomnessPool,
    decrypt_packed,
    draw_mask,
    encrypt_array,
    generate_keypair,
    pack_masked,
    plain_matmul_encrypted,
)

DELTA_FRAC_BITS = 32
# The Jacobian's bits are the exponents of the encrypted matvec, whose cost is linear in
# them; 2^-20 keeps the rounding of g below 2^-21 * sum|delta| (measured: parameters within
# ~1e-7 of plain for linear bottoms, ~6e-7 for MLPs after a full run; 2^-16 gave 1e-6 and
# 8e-6, 2^-24 float32 rounding), for 14% fewer multiplications than 2^-24.
JACOBIAN_FRAC_BITS = 20
DELTA_BOUND = 2.0**4  # |dL/dh| per row; a mean loss gives at most ~1/B per row
JACOBIAN_BOUND = 2.0**12  # |dh/dtheta| entries; standardized features and small MLPs
MIN_ENCRYPTED_BATCH = 8

_DELTA = FixedPointCodec(DELTA_FRAC_BITS, max_abs_value=DELTA_BOUND)
_JACOBIAN = FixedPointCodec(JACOBIAN_FRAC_BITS, max_abs_value=JACOBIAN_BOUND)


def gradient_bits(terms: int) -> int:
    """Public bound on ``|g|`` in bits, at scale ``DELTA_FRAC_BITS + JACOBIAN_FRAC_BITS``,
    for a sum of ``terms`` products (``|g| <= terms * max|J| * max|delta|``)."""
    return (
        int(terms).bit_length() + _DELTA.bits_for(DELTA_BOUND) + _JACOBIAN.bits_for(JACOBIAN_BOUND)
    )


def layout_for(terms: int) -> PackingLayout:
    """Slots for masked gradients: ``|g + R| < 2**(gradient_bits + slack + 1)``."""
    return PackingLayout(magnitude_bits=gradient_bits(terms) + STAT_SLACK_BITS + 1)


class ActiveKeyring:
    """The active party's Paillier key pair: it encrypts cut-layer gradients under its own
    key and decrypts the passives' masked aggregates. The private key never leaves it."""

    def __init__(self, key_bits: int = 2048, *, insecure_test_key: bool = False,
                 private_key: PrivateKey | None = None):
        if private_key is None:
            self.public_key, self._private_key = generate_keypair(
                key_bits, insecure_test_key=insecure_test_key
            )
        else:
            self.public_key, self._private_key = private_key.public_key, private_key
        # The key holder's own encryptions use DJN fixed-base obfuscators, computed mod p^2
        # and q^2 (CRT): 0.7 ms instead of 3.5 ms for a uniform r^n. The subgroup structure
        # of DJN's h only helps someone who knows p and q, i.e. this party itself; a party
        # re-randomizing under *another* party's key always uses uniform r^n.
        self._randomness = RandomnessPool(
            self.public_key, private_key=self._private_key, method="djn"
        )

    @classmethod
    def from_private_key(cls, private_key: PrivateKey) -> ActiveKeyring:
        """The key pair restored from the party's own checkpoint."""
        return cls(private_key=private_key)

    @property
    def randomness(self) -> RandomnessPool:  # party-local use only
        return self._randomness

    @property
    def private_key(self) -> PrivateKey:  # party-local use only
        return self._private_key

    def public_key_bytes(self) -> bytes:
        return self.public_key.to_bytes()

    def encrypt_delta(self, delta: np.ndarray) -> bytes:
        """``[[delta]]`` for a (rows, width) cut-layer gradient, flattened row-major."""
        ints = _DELTA.encode(np.asarray(delta, dtype=np.float64).reshape(-1), self.public_key)
        enc = encrypt_array(
            self.public_key, ints, scale_bits=DELTA_FRAC_BITS, randomness=self._randomness
        )
        return enc.to_bytes()

    def decrypt_masked(self, packed: bytes, count: int, terms: int) -> list[int]:
        """Decrypt a passive's packed ``[[g + R]]``; the result is still masked by ``R``."""
        enc = EncryptedArray.from_bytes(packed, self.public_key)
        layout = layout_for(terms)
        expected = layout.packed_count(count, self.public_key)
        if enc.shape != (expected,):
            raise PayloadShapeError(
                f"expected {expected} packed ciphertexts for {count} gradient values, got "
                f"{enc.shape}; the round is rejected"
            )
        return [int(v) for v in decrypt_packed(self._private_key, enc, layout, count)]


@dataclass
class PendingMask:
    mask: np.ndarray  # object array of ints
    count: int


class PassiveSealer:
    """A passive party's side: encrypted ``J^T [[delta]]``, masking and unmasking."""

    def __init__(self, public_key: PublicKey | bytes, *, insecure_test_key: bool = False):
        if not isinstance(public_key, PublicKey):
            public_key = PublicKey.from_bytes(public_key, insecure_test_key=insecure_test_key)
        self.public_key = public_key
        self._randomness = RandomnessPool(self.public_key)

    def parse_delta(self, data: bytes, rows: int, width: int) -> EncryptedArray:
        """Validate received ciphertexts (range, unit, key, shape) before any work."""
        enc = EncryptedArray.from_bytes(data, self.public_key)
        if enc.shape != (rows * width,) or enc.scale_bits != DELTA_FRAC_BITS:
            raise PayloadShapeError(
                f"expected {rows * width} encrypted gradient values at scale 2^-"
                f"{DELTA_FRAC_BITS}, got shape {enc.shape} at 2^-{enc.scale_bits}; the round "
                "is rejected and no parameter changed"
            )
        return enc

    def masked_gradient(self, jacobian_t: np.ndarray, enc_delta: EncryptedArray):
        """``pack([[J^T delta + R]])`` and the mask ``R`` to keep.

        ``jacobian_t`` has shape (params, rows * width) in the order of ``enc_delta``.
        """
        m = _JACOBIAN.encode(np.asarray(jacobian_t, dtype=np.float64))
        terms = enc_delta.shape[0]
        vector_bound = 1 << _DELTA.bits_for(DELTA_BOUND)
        g = plain_matmul_encrypted(
            m, enc_delta, matrix_scale_bits=JACOBIAN_FRAC_BITS, vector_bound=vector_bound
        )
        mask = draw_mask(g.shape, gradient_bits(terms))
        packed = pack_masked(g, mask, layout_for(terms), randomness=self._randomness)
        return packed.to_bytes(), PendingMask(mask, g.size)

    @staticmethod
    def unmask(values, pending: PendingMask) -> np.ndarray:
        if len(values) != pending.count:
            raise PayloadShapeError(
                f"expected {pending.count} masked gradient values, got {len(values)}"
            )
        g = [int(v) - int(r) for v, r in zip(values, pending.mask)]
        limit = 1 << (_DELTA.bits_for(DELTA_BOUND) + _JACOBIAN.bits_for(JACOBIAN_BOUND) + 64)
        if any(abs(x) > limit for x in g):
            raise FixedPointOverflowError(
                "an unmasked gradient is far outside its public bound: the active party "
                "returned values that do not match this round's mask"
            )
        return _DELTA.decode(g, scale_bits=DELTA_FRAC_BITS + JACOBIAN_FRAC_BITS)


def check_batch_rows(rows: int) -> None:
    if rows < MIN_ENCRYPTED_BATCH:
        raise PayloadShapeError(
            f"a batch of {rows} rows is below the encrypted protocol's minimum of "
            f"{MIN_ENCRYPTED_BATCH}: its aggregate gradient would nearly reveal labels"
        )
