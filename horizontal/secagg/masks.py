"""Masks: 32-byte seeds expanded into uniform vectors of the ring Z_{2^k}, k in {32, 64}.

A client sends ``y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv)  (mod 2^k)``. Each mask is the
ChaCha20 keystream (RFC 8439, from ``cryptography``/OpenSSL) under the seed, read as
little-endian ``k``-bit words. That is the whole reason the server's view is uniform: a
one-time pad over the ring is perfectly hiding when the pad is uniform, and a PRG output is
computationally indistinguishable from uniform. Every ``k`` keystream bits make exactly one
ring element, so there is no modular bias. numpy's generators (PCG64, MT19937) are not
cryptographic: their state is recoverable from outputs, so they are never used here.

Each seed keys exactly one stream per purpose (a distinct 96-bit nonce per purpose, block
counter from 0), so no keystream is ever reused; ChaCha20's 32-bit block counter bounds one
mask to 2^32 blocks of 64 bytes (far beyond any model).

Pairwise masks carry a sign by name order (Bonawitz et al. 2017): of the pair ``(u, v)``,
the client whose name sorts first *adds* ``PRG(s_uv)`` and the other *subtracts* it, so
the pair cancels in the sum when both survive. Arithmetic is numpy's unsigned wraparound,
which is exactly arithmetic mod 2^k.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from horizontal.secagg.errors import QuantizationError

RING_BITS = (32, 64)
SEED_BYTES = 32
_COUNTER0 = (0).to_bytes(4, "little")
_NONCE_SELF = b"self-mask\x00\x00\x00"
_NONCE_PAIR = b"pair-mask\x00\x00\x00"


def ring_dtype(bits: int) -> np.dtype:
    """``uint32`` or ``uint64`` (native byte order) for Z_{2^bits}."""
    if bits not in RING_BITS or isinstance(bits, bool):
        raise QuantizationError(f"ring bits must be one of {RING_BITS}, got {bits!r}")
    return np.dtype(np.uint32 if bits == 32 else np.uint64)


def expand_seed(seed: bytes, length: int, bits: int, *, nonce: bytes = _NONCE_SELF) -> np.ndarray:
    """``length`` uniform elements of Z_{2^bits}: the ChaCha20 keystream under ``seed``."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"mask length must be a non-negative integer, got {length!r}")
    dtype = ring_dtype(bits)
    if len(nonce) != 12:
        raise ValueError("a ChaCha20 nonce is 12 bytes here")
    return _keystream(seed, length, dtype, nonce).astype(dtype, copy=True)


def _keystream(seed: bytes, length: int, dtype: np.dtype, nonce: bytes) -> np.ndarray:
    """The keystream as a read-only little-endian view (no copy)."""
    encryptor = Cipher(algorithms.ChaCha20(seed, _COUNTER0 + nonce), mode=None).encryptor()
    stream = encryptor.update(bytes(length * dtype.itemsize))
    # keystream words are read little-endian whatever the machine, so masks are portable
    return np.frombuffer(stream, dtype=dtype.newbyteorder("<"))


def self_mask(b: bytes, length: int, bits: int) -> np.ndarray:
    """``PRG(b_u)``: the mask only its owner adds; removed once ``b_u`` is rebuilt."""
    return expand_seed(b, length, bits, nonce=_NONCE_SELF)


def pairwise_mask(me: str, peer: str, seed: bytes, length: int, bits: int) -> np.ndarray:
    """``±PRG(s_uv)`` as ``me`` adds it: ``+`` if ``me < peer`` (name order), else ``-``."""
    if me == peer:
        raise ValueError("a client has no pairwise mask with itself")
    pad = expand_seed(seed, length, bits, nonce=_NONCE_PAIR)
    return pad if me < peer else ring_neg(pad)


def add_self_mask(total: np.ndarray, b: bytes, *, sign: int = 1) -> None:
    """``total += sign * PRG(b_u)`` in place (``sign`` is +1 or -1): :func:`self_mask`
    without materializing it."""
    _add(total, b, _NONCE_SELF, sign)


def add_pairwise_mask(total: np.ndarray, me: str, peer: str, seed: bytes, *,
                      sign: int = 1) -> None:
    """``total += sign * pairwise_mask(me, peer, seed, ...)`` in place."""
    if me == peer:
        raise ValueError("a client has no pairwise mask with itself")
    _add(total, seed, _NONCE_PAIR, sign if me < peer else -sign)


def _add(total: np.ndarray, seed: bytes, nonce: bytes, sign: int) -> None:
    if not isinstance(total, np.ndarray) or total.ndim != 1 or total.dtype not in (
            np.dtype(np.uint32), np.dtype(np.uint64)):
        raise ValueError("masks are added to a 1-D uint32/uint64 ring vector")
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes")
    if sign not in (1, -1):
        raise ValueError("sign must be +1 or -1")
    pad = _keystream(seed, len(total), total.dtype, nonce)
    if sign == 1:
        np.add(total, pad, out=total, casting="unsafe")  # pad may be the '<' spelling
    else:
        np.subtract(total, pad, out=total, casting="unsafe")


def ring_neg(x: np.ndarray) -> np.ndarray:
    """``-x mod 2^k``."""
    return np.zeros_like(x) - x


def ring_sum(vectors, length: int, bits: int) -> np.ndarray:
    """``sum(vectors) mod 2^k`` (an empty sum is the zero vector)."""
    total = np.zeros(length, dtype=ring_dtype(bits))
    for v in vectors:
        total += v
    return total
