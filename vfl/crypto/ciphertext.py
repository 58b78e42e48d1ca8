"""``EncryptedArray``: an n-d array of Paillier ciphertexts under one key at one scale.

The array holds a flat list of ``gmpy2.mpz`` in C order, its shape, the public key, and
``scale_bits`` (the plaintext ``m`` represents ``m * 2**-scale_bits``). It is tagged with the
key's fingerprint so operations on ciphertexts from different keys fail loudly
(:class:`WrongKeyError`) instead of producing garbage.

Wire format (``to_bytes``), all big-endian::

    b"VPE1" | fingerprint (16 B) | scale_bits (int32) | ndim (uint8) | shape (ndim x uint64)
    | width (uint32) | ciphertexts (count x width bytes)

``width`` is the byte length of ``n^2``, so the size of a message depends only on the shape
and the key, never on the values. ``from_bytes`` checks every ciphertext for ``0 < c < n^2``
and ``gcd(c, n) = 1`` (a unit of ``Z_{n^2}``), reporting the first bad index.
"""

from __future__ import annotations

import math
import struct

import gmpy2
from gmpy2 import mpz
from phe import paillier

from vfl.crypto.errors import InvalidCiphertextError, ShapeMismatchError, WrongKeyError
from vfl.crypto.keys import PublicKey

_MAGIC = b"VPE1"
_HEAD = struct.Struct(">4s16siB")


def validate_ciphertexts(values, public_key: PublicKey) -> list:
    """Return ``values`` as mpz after checking each is a unit of ``Z_{n^2}``.

    The unit test is batched: ``c`` is a unit mod ``n^2`` iff ``gcd(c, n) = 1``, and a
    product of residues mod ``n`` is coprime to ``n`` iff every factor is (``p`` and ``q``
    are prime). So one ``gcd`` of the product mod ``n`` (a 2048-bit multiplication per
    ciphertext) replaces a 4096-bit ``gcd`` per ciphertext; only when the product fails are
    the ciphertexts checked one by one, to name the first bad index.
    """
    n, n2 = public_key.n, public_key.nsquare
    out = []
    prod = mpz(1)
    for i, c in enumerate(values):
        try:
            c = mpz(c)
        except (TypeError, ValueError) as exc:
            raise InvalidCiphertextError(
                f"ciphertext {i} is not an integer ({type(c).__name__}); reject the message"
            ) from exc
        if not 0 < c < n2:
            raise InvalidCiphertextError(
                f"ciphertext {i} is out of range (must satisfy 0 < c < n^2); the message was "
                "corrupted or forged: reject it and ask the sender to resend"
            )
        prod = prod * c % n
        out.append(c)
    if gmpy2.gcd(prod, n) != 1:
        for i, c in enumerate(out):
            if gmpy2.gcd(c, n) != 1:
                raise InvalidCiphertextError(
                    f"ciphertext {i} shares a factor with n (not a unit mod n^2); the message "
                    "is malformed or malicious: reject it and do not decrypt"
                )
    return out


def _check_shape(shape) -> tuple[int, ...]:
    shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ShapeMismatchError(f"negative dimension in shape {shape}")
    return shape


class EncryptedArray:
    """Paillier ciphertexts with shape, key and fixed-point scale.

    Build one with :func:`vfl.crypto.encrypt_array`, :meth:`from_bytes`, :meth:`from_phe` or
    :meth:`from_ciphertexts` (which validates); the plain constructor trusts its input.
    """

    __slots__ = ("values", "shape", "public_key", "scale_bits")

    def __init__(self, values, shape, public_key: PublicKey, scale_bits: int = 0):
        shape = _check_shape(shape)
        values = list(values)
        if len(values) != math.prod(shape):
            raise ShapeMismatchError(f"{len(values)} ciphertexts cannot have shape {shape}")
        self.values = values
        self.shape = shape
        self.public_key = public_key
        self.scale_bits = int(scale_bits)

    # --- basic array protocol ------------------------------------------------------------
    @property
    def fingerprint(self) -> bytes:
        return self.public_key.fingerprint

    @property
    def size(self) -> int:
        return len(self.values)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d EncryptedArray")
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"EncryptedArray(shape={self.shape}, scale_bits={self.scale_bits}, "
            f"key={self.fingerprint.hex()})"
        )

    def reshape(self, *shape) -> EncryptedArray:
        if len(shape) == 1 and not isinstance(shape[0], int):
            shape = tuple(shape[0])
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        return EncryptedArray(self.values, shape, self.public_key, self.scale_bits)

    def ravel(self) -> EncryptedArray:
        return self.reshape(self.size)

    def take(self, indices) -> EncryptedArray:
        """Elements at flat ``indices`` as a 1-d array."""
        idx = [int(i) for i in indices]
        return EncryptedArray(
            [self.values[i] for i in idx], (len(idx),), self.public_key, self.scale_bits
        )

    def with_values(self, values, shape=None, scale_bits=None) -> EncryptedArray:
        return EncryptedArray(
            values,
            self.shape if shape is None else shape,
            self.public_key,
            self.scale_bits if scale_bits is None else scale_bits,
        )

    def check_key(self, public_key: PublicKey) -> None:
        if self.fingerprint != public_key.fingerprint:
            raise WrongKeyError(
                f"ciphertexts are under key {self.fingerprint.hex()} but key "
                f"{public_key.fingerprint.hex()} was used; decrypt with the matching private "
                "key or re-encrypt under this key"
            )

    # --- construction with validation ----------------------------------------------------
    @classmethod
    def from_ciphertexts(cls, values, shape, public_key: PublicKey, scale_bits: int = 0):
        """Wrap raw integers after validating every one (range and unit checks)."""
        return cls(validate_ciphertexts(values, public_key), shape, public_key, scale_bits)

    # --- wire format ---------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        width = self.public_key.ciphertext_bytes
        head = _HEAD.pack(_MAGIC, self.fingerprint, self.scale_bits, self.ndim)
        dims = struct.pack(f">{self.ndim}Q", *self.shape) + struct.pack(">I", width)
        return head + dims + b"".join(int(c).to_bytes(width, "big") for c in self.values)

    @classmethod
    def from_bytes(cls, data: bytes, public_key: PublicKey) -> EncryptedArray:
        """Parse and validate bytes from :meth:`to_bytes`.

        Raises :class:`WrongKeyError` when tagged with another key and
        :class:`InvalidCiphertextError` for a malformed message or any bad ciphertext.
        """
        data = bytes(data)
        if len(data) < _HEAD.size or data[:4] != _MAGIC:
            raise InvalidCiphertextError(
                "not an EncryptedArray message (bad header); check the sender's encoder"
            )
        _, fp, scale_bits, ndim = _HEAD.unpack_from(data)
        if fp != public_key.fingerprint:
            raise WrongKeyError(
                f"received ciphertexts under key {fp.hex()}, expected "
                f"{public_key.fingerprint.hex()}; the sender used another party's key"
            )
        off = _HEAD.size
        if len(data) < off + 8 * ndim + 4:
            raise InvalidCiphertextError("truncated EncryptedArray header; ask for a resend")
        shape = struct.unpack_from(f">{ndim}Q", data, off)
        off += 8 * ndim
        (width,) = struct.unpack_from(">I", data, off)
        off += 4
        if width != public_key.ciphertext_bytes:
            raise InvalidCiphertextError(
                f"ciphertext width {width} bytes does not match this key "
                f"({public_key.ciphertext_bytes}); reject the message"
            )
        count = math.prod(shape)
        if len(data) - off != count * width:
            raise InvalidCiphertextError(
                f"expected {count} ciphertexts of {width} bytes, got {len(data) - off} bytes; "
                "the message was truncated or padded: ask for a resend"
            )
        raw = (
            int.from_bytes(data[off + i * width : off + (i + 1) * width], "big")
            for i in range(count)
        )
        return cls(validate_ciphertexts(raw, public_key), shape, public_key, scale_bits)

    # --- python-paillier interop ---------------------------------------------------------
    def to_phe(self, phe_public_key: paillier.PaillierPublicKey | None = None) -> list:
        """Flat list of ``phe.EncryptedNumber`` decrypting to the same real values.

        phe represents ``mantissa * 16**exponent``; our ``m * 2**-scale_bits`` maps to
        ``exponent = -ceil(scale_bits / 4)`` after multiplying the ciphertext by
        ``2**((-scale_bits) mod 4)`` (homomorphically, exact), so nothing is lost.
        """
        pk = phe_public_key if phe_public_key is not None else self.public_key.to_phe()
        if int(pk.n) != int(self.public_key.n):
            raise WrongKeyError("the phe public key differs from the array's key")
        shift = (-self.scale_bits) % 4
        exponent = -((self.scale_bits + shift) // 4)
        n2 = self.public_key.nsquare
        factor = mpz(1) << shift
        vals = self.values if shift == 0 else [gmpy2.powmod(c, factor, n2) for c in self.values]
        return [paillier.EncryptedNumber(pk, int(c), exponent) for c in vals]

    @classmethod
    def from_phe(cls, numbers, public_key: PublicKey | None = None, shape=None) -> EncryptedArray:
        """Wrap ``phe.EncryptedNumber``s (validated) at one common scale.

        Numbers with different exponents are first brought to the smallest one with phe's
        own ``decrease_exponent_to`` (exact). ``scale_bits = -4 * exponent``.
        """
        numbers = list(numbers)
        if public_key is None:
            if not numbers:
                raise ShapeMismatchError("cannot infer the key of an empty list; pass public_key")
            public_key = PublicKey(mpz(numbers[0].public_key.n))
        for i, x in enumerate(numbers):
            if not isinstance(x, paillier.EncryptedNumber):
                raise InvalidCiphertextError(f"element {i} is not a phe.EncryptedNumber")
            if int(x.public_key.n) != int(public_key.n):
                raise WrongKeyError(
                    f"phe number {i} is under another public key; use the matching key"
                )
        exponent = min((x.exponent for x in numbers), default=0)
        numbers = [
            x if x.exponent == exponent else x.decrease_exponent_to(exponent) for x in numbers
        ]
        shape = (len(numbers),) if shape is None else shape
        vals = validate_ciphertexts((x.ciphertext(be_secure=False) for x in numbers), public_key)
        return cls(vals, shape, public_key, -4 * exponent)
