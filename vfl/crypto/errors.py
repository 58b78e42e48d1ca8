"""Exceptions raised by the Paillier engine.

Each failure mode has its own class and every message says what to do about it. All of them
derive from :class:`CryptoError`, itself a :class:`vfl.core.errors.VFLError`, so a caller can catch
the whole family at once. Errors about bad *values* also derive from :class:`ValueError`.
"""

from __future__ import annotations

from vfl.core.errors import VFLError


class CryptoError(VFLError):
    """Base class of every error the Paillier engine raises on purpose."""


class InsecureKeyError(CryptoError, ValueError):
    """A key shorter than the secure minimum (2048 bits) was requested without the test flag."""


class InvalidCiphertextError(CryptoError, ValueError):
    """A received ciphertext is not an element of Z*_{n^2} (out of range or not a unit)."""


class WrongKeyError(CryptoError, ValueError):
    """Ciphertexts were produced under a different public key than the one used on them."""


class FixedPointOverflowError(CryptoError, OverflowError):
    """A value (or a bound on a sum or product) does not fit in the signed plaintext space."""


class ShapeMismatchError(CryptoError, ValueError):
    """Array operands have incompatible shapes."""


class ScaleMismatchError(CryptoError, ValueError):
    """Operands that are added carry different fixed-point scales."""
