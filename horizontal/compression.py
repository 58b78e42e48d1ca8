"""Update compression with error feedback: stochastic uniform quantization and top-k.

A client compresses ``v = delta + e`` (its update plus the residual ``e`` it failed to send
earlier) and keeps ``e <- v - decode(encode(v))`` (error feedback, Seide et al. 2014;
Karimireddy et al. 2019), so what is dropped in one round is sent later and the
compressed method converges like the uncompressed one.

* ``int8`` / ``int4``: stochastic uniform quantization to ``2^(b-1) - 1`` levels per sign
  with one float32 scale (``max |v|``) per update; rounding up with probability equal to
  the fractional part makes the quantizer unbiased. int4 packs two values per byte.
  The rounding noise comes from a keyed hash of (seed, round, client), never from a
  stateful generator, so a replay reproduces it.
* ``topk``: the ``ceil(fraction * P)`` largest-magnitude coordinates as (int32 index,
  float32 value) pairs.

Payloads are plain dicts of numpy arrays: they are serialized with the message, so the
transcript counts the real compressed bytes.
"""

from __future__ import annotations

import math

import numpy as np

from horizontal.errors import UpdateShapeError
from vfl.core.keyed import keyed_hash

SCHEMES = ("none", "int8", "int4", "topk")


def encode(v: np.ndarray, scheme: str, *, seed_parts=(), topk_fraction: float = 0.1) -> dict:
    v = np.asarray(v, dtype=np.float32)
    if scheme == "none":
        return {"scheme": "none", "v": v}
    if scheme in ("int8", "int4"):
        levels = 127 if scheme == "int8" else 7
        top = float(np.max(np.abs(v))) if v.size else 0.0
        scale = np.float32(top / levels)
        if not scale > 0:  # all zeros, or so tiny that float32 underflows to 0
            scale = np.float32(1.0)
        rng = np.random.default_rng(keyed_hash("quantize", *seed_parts))
        scaled = v / scale
        q = np.floor(scaled + rng.random(v.shape, dtype=np.float32))
        q = np.clip(q, -levels, levels).astype(np.int8)
        if scheme == "int8":
            return {"scheme": "int8", "scale": float(scale), "q": q}
        nib = (q.astype(np.int16) + 8).astype(np.uint8)  # 1..15
        if nib.size % 2:
            nib = np.append(nib, np.uint8(8))
        packed = (nib[0::2] << 4) | nib[1::2]
        return {"scheme": "int4", "scale": float(scale), "q": packed, "n": int(v.size)}
    if scheme == "topk":
        k = max(1, math.ceil(topk_fraction * v.size))
        idx = np.argpartition(-np.abs(v), k - 1)[:k]
        idx = np.sort(idx).astype(np.int32)
        return {"scheme": "topk", "idx": idx, "val": v[idx], "n": int(v.size)}
    raise UpdateShapeError("?", f"unknown compression scheme {scheme!r}; use one of {SCHEMES}")


def decode(payload: dict, size: int, client: str = "?") -> np.ndarray:
    """The dense float32 vector of a payload; raises :class:`UpdateShapeError` (naming the
    client) for any payload that does not decode to exactly ``size`` values."""
    try:
        scheme = payload["scheme"]
        if scheme == "none":
            out = np.asarray(payload["v"], dtype=np.float32)
        elif scheme == "int8":
            out = np.asarray(payload["q"]).astype(np.float32) * np.float32(payload["scale"])
        elif scheme == "int4":
            packed = np.asarray(payload["q"], dtype=np.uint8)
            nib = np.empty(2 * packed.size, dtype=np.int16)
            nib[0::2], nib[1::2] = packed >> 4, packed & 0x0F
            n = int(payload["n"])
            out = (nib[:n] - 8).astype(np.float32) * np.float32(payload["scale"])
        elif scheme == "topk":
            n = int(payload["n"])
            if n != size:
                raise ValueError(f"top-k payload for {n} values")
            idx = np.asarray(payload["idx"], dtype=np.int64)
            val = np.asarray(payload["val"], dtype=np.float32)
            if idx.shape != val.shape or (idx.size and (idx.min() < 0 or idx.max() >= size)):
                raise ValueError("top-k indices out of range or not matching the values")
            out = np.zeros(size, dtype=np.float32)
            out[idx] = val
        else:
            raise ValueError(f"unknown scheme {scheme!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateShapeError(
            client, f"update from {client!r} cannot be decoded: {exc}; the client must send "
            f"a {SCHEMES} payload of {size} values"
        ) from None
    if out.shape != (size,):
        raise UpdateShapeError(
            client, f"update from {client!r} has shape {out.shape}, expected ({size},): the "
            "client's model differs from the federation's; rebuild it from the setup config"
        )
    return out


class ErrorFeedback:
    """A client's residual of what compression has not yet transmitted."""

    def __init__(self, size: int):
        self.residual = np.zeros(size, dtype=np.float32)

    def compress(self, delta, scheme, *, enabled=True, seed_parts=(), topk_fraction=0.1):
        v = np.asarray(delta, dtype=np.float32) + (self.residual if enabled else 0.0)
        payload = encode(v, scheme, seed_parts=seed_parts, topk_fraction=topk_fraction)
        if enabled and scheme != "none":
            self.residual = (v - decode(payload, v.size)).astype(np.float32)
        return payload
