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

import math
import re
from dataclasses import dataclass

import msgpack
import numpy as np

from vfl.core.errors import TransportError, WireFormatError

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


# -- decoding untrusted bytes ------------------------------------------------------------------
# Every size read from the wire is checked against the bytes actually present before anything
# is allocated or looped over, so decoding costs O(len(data)) whatever the bytes claim.
MAX_DEPTH = 64  # nesting of lists/dicts in a payload (real payloads use fewer than 10)
MAX_NDIM = 32  # numpy's own limit is 64
MAX_DIM = 2**40  # a single array dimension (only reachable by zero-size arrays)
MAX_BIGINT_BYTES = 1 << 20  # one big integer (a 4096-bit Paillier ciphertext mod n^2: 1 KiB)
MAX_BIGINT_WIDTH = 1 << 20  # bytes per BigIntArray element
_DTYPE_RE = re.compile(r"[<>|=]?[biufc][0-9]{1,2}")
_LEAVES = (str, bytes, int, float, bool, type(None), np.ndarray, BigIntArray)
_SCALARS = frozenset(_LEAVES)
_CONTAINERS = frozenset((list, dict))


def _header(data: bytes, what: str, fields: str) -> tuple[list, int]:
    """The msgpack array at the start of an extension body, and where the body starts."""
    n = max(len(data), 1)
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=n, max_str_len=n, max_bin_len=n,
        max_array_len=n, max_map_len=n, max_ext_len=n,
    )
    try:
        unpacker.feed(data)
        head = unpacker.unpack()
        offset = unpacker.tell()
    except msgpack.OutOfData:
        raise WireFormatError(f"{what} header: truncated ({len(data)} bytes)") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireFormatError(f"{what} header: not valid msgpack ({exc})") from None
    if not isinstance(head, list) or len(head) != 2:
        raise WireFormatError(
            f"{what} header: expected a 2-item list [{fields}], got {_describe(head)}"
        )
    return head, offset


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _decode_ndarray(data: bytes) -> np.ndarray:
    (dtype_str, shape), offset = _header(data, "ndarray", "dtype, shape")
    if not isinstance(dtype_str, str) or not _DTYPE_RE.fullmatch(dtype_str):
        raise WireFormatError(
            f"ndarray dtype: {_describe(dtype_str)} is not a numeric or bool dtype string "
            "such as '<f8'"
        )
    try:
        dtype = np.dtype(dtype_str)
    except (TypeError, ValueError):
        raise WireFormatError(f"ndarray dtype: {dtype_str!r} is not a numpy dtype") from None
    if dtype.kind not in "biufc" or dtype.itemsize < 1 or dtype.fields or dtype.subdtype:
        raise WireFormatError(f"ndarray dtype: {dtype_str!r} is not a numeric or bool dtype")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise WireFormatError(
            f"ndarray shape: expected a list of at most {MAX_NDIM} sizes, got "
            f"{_describe(shape)}"
        )
    if not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise WireFormatError(
            f"ndarray shape: {shape!r} has a size that is not a whole number in "
            f"[0, {MAX_DIM}]"
        )
    count = math.prod(shape)
    body = len(data) - offset
    if count * dtype.itemsize != body:
        raise WireFormatError(
            f"ndarray shape/bytes: shape {tuple(shape)} of {dtype_str} needs "
            f"{count * dtype.itemsize} bytes, {body} are present"
        )
    try:
        return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).copy()
    except ValueError as exc:
        raise WireFormatError(f"ndarray shape: {tuple(shape)} is not usable ({exc})") from None


def _decode_bigint_array(data: bytes) -> BigIntArray:
    (width, count), offset = _header(data, "BigIntArray", "width, count")
    if not _is_int(width) or not 1 <= width <= MAX_BIGINT_WIDTH:
        raise WireFormatError(
            f"BigIntArray width: {_describe(width)} is not a byte width in "
            f"[1, {MAX_BIGINT_WIDTH}]"
        )
    body = len(data) - offset
    if not _is_int(count) or count < 0 or count * width != body:
        raise WireFormatError(
            f"BigIntArray count: {_describe(count)} values of {width} bytes do not match the "
            f"{body} bytes present"
        )
    view = memoryview(data)[offset:]
    vals = tuple(
        int.from_bytes(view[i : i + width], "big") for i in range(0, body, width)
    )
    return BigIntArray(vals, width)


def _ext_hook(code: int, data: bytes):
    if code == _EXT_NDARRAY:
        return _decode_ndarray(data)
    if code == _EXT_BIGINT:
        if len(data) > MAX_BIGINT_BYTES:
            raise WireFormatError(
                f"big integer: {len(data)} bytes is over the {MAX_BIGINT_BYTES}-byte limit"
            )
        return int.from_bytes(data, "big", signed=True)
    if code == _EXT_BIGINT_ARRAY:
        return _decode_bigint_array(data)
    raise WireFormatError(
        f"extension code: {code} is not one of ndarray ({_EXT_NDARRAY}), big integer "
        f"({_EXT_BIGINT}) or BigIntArray ({_EXT_BIGINT_ARRAY})"
    )


def _describe(value) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _check_tree(obj) -> None:
    """Reject nesting deeper than :data:`MAX_DEPTH` and values of unsupported types
    (e.g. msgpack's own Timestamp extension). Iterative, so the depth of the bytes cannot
    exhaust Python's stack; one type lookup per value."""
    if type(obj) not in _CONTAINERS:
        if not isinstance(obj, _LEAVES):
            raise WireFormatError(f"value: a {type(obj).__name__} is not a supported type")
        return
    stack = [(obj, 0)]
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise WireFormatError(f"nesting: lists/dicts nested deeper than {MAX_DEPTH} levels")
        for v in value.values() if type(value) is dict else value:
            t = type(v)
            if t in _SCALARS:
                continue
            if t in _CONTAINERS:
                stack.append((v, depth + 1))
            elif not isinstance(v, _LEAVES):
                raise WireFormatError(f"value: a {t.__name__} is not a supported type")


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
    """Decode bytes produced by :func:`dumps`.

    Hostile bytes raise :class:`~vfl.core.errors.WireFormatError` naming what is wrong, in time
    linear in ``len(data)``: msgpack's own length limits are set to the input length (a
    container cannot hold more items than there are bytes), and every size inside an
    extension is checked against the bytes present before anything is allocated.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireFormatError(f"message bytes: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    n = max(len(data), 1)
    try:
        obj = msgpack.unpackb(
            data, ext_hook=_ext_hook, raw=False, strict_map_key=True, max_str_len=n,
            max_bin_len=n, max_array_len=n, max_map_len=max(n // 2, 1), max_ext_len=n,
        )
    except WireFormatError:
        raise
    except msgpack.ExtraData as exc:
        raise WireFormatError(
            f"message bytes: {len(exc.extra)} extra bytes after the end of the message"
        ) from None
    except msgpack.StackError:
        raise WireFormatError(
            "nesting: lists/dicts nested too deeply for the decoder's stack"
        ) from None
    except msgpack.FormatError:
        raise WireFormatError("message bytes: a byte that starts no msgpack value") from None
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"string: not valid UTF-8 ({exc.reason})") from None
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        text = str(exc)
        if "incomplete input" in text:
            text = f"truncated ({len(data)} bytes end inside a value)"
        raise WireFormatError(f"message bytes: {text}") from None
    _check_tree(obj)
    return obj
