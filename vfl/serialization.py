"""Bytes on the wire: msgpack with extension types for numpy arrays and big integers.

Every message is encoded with this module even in memory, so a simulation cannot share
Python objects across a party boundary by accident, and so byte counts are the real ones.
msgpack is used because it is small, fast, language-neutral and well kept; pickle is never
used on received bytes (unpickling executes code chosen by the sender).

Supported payload values: ``None``, ``bool``, ``int`` of any size (Paillier ciphertexts are
~4096-bit integers), ``float``, ``str``, ``bytes``, lists/tuples, dicts with string keys,
``numpy.ndarray`` of numeric/bool dtype, ``gmpy2.mpz`` (sent as int), and :class:`BigIntArray`
(a vector of non-negative big integers packed at a fixed width, the shape ciphertext
vectors travel in).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np

from vfl.errors import TransportError

_EXT_NDARRAY = 1
_EXT_BIGINT = 2
_EXT_BIGINT_ARRAY = 3
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True)
class BigIntArray:
    """A 1-D vector of non-negative integers of arbitrary size, packed at one byte width.

    Packing at a fixed width (the width of the largest value, usually ``len(n**2)``) means
    the encoded size depends only on the count and the modulus, never on the values.
    """

    values: tuple[int, ...]
    width: int

    @classmethod
    def of(cls, values, width: int | None = None) -> BigIntArray:
        vals = tuple(int(v) for v in values)
        if any(v < 0 for v in vals):
            raise TransportError("BigIntArray holds non-negative integers only")
        need = max((v.bit_length() + 7) // 8 for v in vals) if vals else 1
        w = need if width is None else int(width)
        if w < need:
            raise TransportError(f"BigIntArray width {w} bytes is too small for {need}-byte values")
        return cls(vals, max(w, 1))

    def __len__(self) -> int:
        return len(self.values)


def _default(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype == object or obj.dtype.kind not in "biufc":
            raise TransportError(
                f"cannot serialize a numpy array of dtype {obj.dtype}; send numeric arrays, "
                "or convert big integers to a BigIntArray"
            )
        arr = np.ascontiguousarray(obj)
        header = msgpack.packb([arr.dtype.str, list(obj.shape)])
        return msgpack.ExtType(_EXT_NDARRAY, header + arr.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, BigIntArray):
        head = msgpack.packb([obj.width, len(obj.values)])
        body = b"".join(v.to_bytes(obj.width, "big") for v in obj.values)
        return msgpack.ExtType(_EXT_BIGINT_ARRAY, head + body)
    if type(obj).__name__ == "mpz":  # gmpy2.mpz without importing gmpy2 here
        obj = int(obj)
    if isinstance(obj, int):
        nbytes = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(_EXT_BIGINT, obj.to_bytes(nbytes, "big", signed=True))
    if isinstance(obj, tuple):
        return list(obj)
    raise TransportError(f"cannot serialize a value of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes):
    if code == _EXT_NDARRAY:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        dtype, shape = unpacker.unpack()
        offset = unpacker.tell()
        arr = np.frombuffer(data, dtype=np.dtype(dtype), offset=offset)
        return arr.reshape(shape).copy()
    if code == _EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == _EXT_BIGINT_ARRAY:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(data)
        width, count = unpacker.unpack()
        offset = unpacker.tell()
        body = data[offset:]
        if len(body) != width * count:
            raise TransportError("truncated BigIntArray on the wire")
        vals = tuple(
            int.from_bytes(body[i * width : (i + 1) * width], "big") for i in range(count)
        )
        return BigIntArray(vals, width)
    raise TransportError(f"unknown msgpack extension code {code}")


def _prepare(obj):
    # msgpack handles ints natively only within 64 bits; route larger ones to the extension.
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int) and not (_INT64_MIN <= obj <= _UINT64_MAX):
        return _default(obj)
    if type(obj).__name__ == "mpz":
        return _prepare(int(obj))
    if isinstance(obj, dict):
        return {k: _prepare(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_prepare(v) for v in obj]
    return obj


def dumps(obj) -> bytes:
    """Encode a payload to bytes."""
    try:
        try:
            return msgpack.packb(obj, default=_default, use_bin_type=True)
        except OverflowError:
            # An int beyond 64 bits somewhere: route big ints to the extension type.
            return msgpack.packb(_prepare(obj), default=_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TransportError(f"cannot serialize payload: {exc}") from exc


def loads(data: bytes):
    """Decode bytes produced by :func:`dumps`."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise TransportError(f"cannot decode message bytes: {exc}") from exc
