"""The PSI group and its primitives: hash-to-group, secret exponents, parallel
exponentiation, element checks and the keyed digest of an aligned id list. The protocol is
described in :mod:`vfl.psi`."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import multiprocessing
import secrets
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import gmpy2
import numpy as np

from vfl.core.errors import (
    AlignmentError,
    ProtocolError,
)
from vfl.core.progress import progress_bar
from vfl.core.wire import BigIntArray

# RFC 3526, section 3: the 2048-bit MODP group (id 14), generator 2.
# p = 2^2048 - 2^1984 - 1 + 2^64 * ( [2^1918 pi] + 124476 ); a safe prime.
_RFC3526_MODP_2048 = """
    FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
    29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
    EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
    E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
    EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
    C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
    83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
    670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
    E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
    DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
    15728E5A 8AACAA68 FFFFFFFF FFFFFFFF
"""
P = gmpy2.mpz(int("".join(_RFC3526_MODP_2048.split()), 16))
Q = (P - 1) // 2  # prime order of the quadratic-residue subgroup
GROUP = "rfc3526-modp2048-qr"  # name sent in psi.start and reported in PSIResult
ELEMENT_BYTES = 256  # fixed wire width of a group element
EXPONENT_BITS = 256  # short exponents; see the module docstring for the assumption

PROGRESS_THRESHOLD = 5000  # show a progress bar only for lists larger than this
PARALLEL_MIN = 2048  # use the process pool (if workers > 1) only from this list size
CHUNK = 256  # values per exponentiation chunk (progress granularity, pool task size)

_EXPAND_BYTES = (2048 + 128) // 8  # 272 bytes before reduction mod p
_DST_ID = b"vfl/psi/v1/hash-to-group/id"
_DST_KEY_BASE = b"vfl/psi/v1/hash-to-group/key-agreement"
_DST_DIGEST_KEY = b"vfl/psi/v1/digest-key"
_DST_DIGEST = b"vfl/psi/v1/aligned-ids"
_SESSION_BYTES = 16


class PSIInputError(AlignmentError, ValueError):
    """PSI cannot start with these inputs (too few parties, a party without identifiers...)."""


@dataclass(frozen=True)
class PSIResult:
    """What the coordinator knows after a successful run (all public)."""

    size: int  # number of aligned rows
    digest: str  # keyed digest every party agreed on (differs from run to run)
    seconds: float
    group: str


# --- group arithmetic -----------------------------------------------------------------------
def _expand(dst: bytes, session: bytes, data: bytes) -> int:
    prefix = b"".join(
        (
            len(dst).to_bytes(2, "big"),
            dst,
            len(session).to_bytes(2, "big"),
            session,
            len(data).to_bytes(4, "big"),
            data,
        )
    )
    base = hashlib.sha256(prefix)
    out = bytearray()
    counter = 0
    while len(out) < _EXPAND_BYTES:
        h = base.copy()
        h.update(counter.to_bytes(4, "big"))
        out += h.digest()
        counter += 1
    return int.from_bytes(bytes(out[:_EXPAND_BYTES]), "big")


def _to_group(value: int) -> gmpy2.mpz:
    x = gmpy2.mpz(value) % P
    y = x * x % P
    if y <= 1:  # x in {0, 1, p-1}: probability ~2^-2046
        raise ProtocolError("hash to group hit a degenerate value; use another session salt")
    return y


def hash_to_group(identifier: Any, session: bytes) -> gmpy2.mpz:
    """Hash ``str(identifier)`` into the QR subgroup, domain-separated by ``session``."""
    return _to_group(_expand(_DST_ID, bytes(session), str(identifier).encode("utf-8")))


def _key_base(session: bytes) -> gmpy2.mpz:
    return _to_group(_expand(_DST_KEY_BASE, bytes(session), b""))


def _draw_exponent() -> gmpy2.mpz:
    # Uniform in [2, 2^256); q > 2^256, so it is a non-zero exponent of the subgroup.
    return gmpy2.mpz(secrets.randbelow((1 << EXPONENT_BITS) - 2) + 2)


def _secure_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` (Fisher-Yates with :mod:`secrets`)."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return np.asarray(perm, dtype=np.int64)


def _powmod_chunk(values: list, exponent, modulus) -> list:
    """``[v^exponent mod modulus for v in values]`` (module level: runs in pool workers)."""
    return list(gmpy2.powmod_base_list(list(values), gmpy2.mpz(exponent), gmpy2.mpz(modulus)))


def _pow_all(
    values: Sequence,
    exponent,
    *,
    workers: int | None = None,
    show_progress: bool = False,
    description: str = "PSI",
    parallel_min: int = PARALLEL_MIN,
) -> list:
    """Raise every value to ``exponent`` mod ``P``, in chunks, optionally in processes."""
    n = len(values)
    chunks = [list(values[i : i + CHUNK]) for i in range(0, n, CHUNK)]
    out: list = []
    enabled = show_progress and n > PROGRESS_THRESHOLD
    with progress_bar(description, n, enabled=enabled) as bar:
        if workers is not None and workers > 1 and n >= parallel_min:
            ctx = multiprocessing.get_context("spawn")  # no fork of a multithreaded process
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                results = pool.map(
                    _powmod_chunk, chunks, itertools.repeat(int(exponent)), itertools.repeat(int(P))
                )
                for res in results:
                    out.extend(res)
                    bar.advance(len(res))
        else:
            for chunk in chunks:
                out.extend(_powmod_chunk(chunk, exponent, P))
                bar.advance(len(chunk))
    return out


def _check_element(value, what: str) -> gmpy2.mpz:
    v = gmpy2.mpz(value)
    if not (1 < v < P - 1) or gmpy2.jacobi(v, P) != 1:
        raise ProtocolError(f"{what} is not an element of the PSI group; the sender is faulty")
    return v


def _check_elements(arr, what: str) -> list:
    if not isinstance(arr, BigIntArray) or arr.width != ELEMENT_BYTES:
        raise ProtocolError(f"{what}: expected a vector of {ELEMENT_BYTES}-byte group elements")
    return [_check_element(v, what) for v in arr.values]


def _wire(values) -> BigIntArray:
    return BigIntArray.of(values, width=ELEMENT_BYTES)


def _digest_key(shared: gmpy2.mpz, session: bytes) -> bytes:
    material = _DST_DIGEST_KEY + bytes(session) + int(shared).to_bytes(ELEMENT_BYTES, "big")
    return hashlib.sha256(material).digest()


def _aligned_digest(sorted_ids: Sequence, key: bytes) -> str:
    mac = hmac.new(key, _DST_DIGEST, hashlib.sha256)
    mac.update(len(sorted_ids).to_bytes(8, "big"))
    for ident in sorted_ids:
        b = str(ident).encode("utf-8")
        mac.update(len(b).to_bytes(4, "big"))
        mac.update(b)
    return mac.hexdigest()


