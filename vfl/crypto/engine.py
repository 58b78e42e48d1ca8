"""Array-level Paillier operations: encrypt, decrypt, add, scalar multiply, sum, matvec, pack.

All operations act on :class:`EncryptedArray` and integer arrays (object arrays of Python
ints, or numpy integer arrays); real tensors go through :class:`FixedPointCodec` first.

Costs at 2048 bits (one core, gmpy2): a modular multiplication mod ``n^2`` is ~6 us.

* ``encrypt_array``: ``(1 + m*n) * r^n``; the ``1 + m*n`` needs no exponentiation
  (``g = n + 1``) and ``r^n`` comes from a :class:`RandomnessPool`: by default a uniformly
  random ``n``-th residue, ~12 ms with the public key or ~3.5 ms for the key holder (CRT),
  precomputable in bulk and across processes (the opt-in DJN fixed-base tables are cheaper
  but only for the key holder's own encryptions, see :mod:`vfl.crypto.randomness`);
* ``decrypt_array``: CRT decryption (two exponentiations modulo ``p^2`` and ``q^2``);
* ``plain_matmul_encrypted``: ``[[M @ v]]`` by simultaneous multi-exponentiation
  (Pippenger buckets or Straus with shared joint tables, chosen by operation count);
* ``pack_encrypted``/``decrypt_packed``: many values per decryption.

Threat model notes: ciphertexts received from another party are validated on arrival
(:meth:`EncryptedArray.from_bytes`); before a party returns a ciphertext derived from another
party's ciphertexts (e.g. a masked gradient) it should :func:`rerandomize` it or add a fresh
encryption of its mask, so the decryptor cannot relate the result's randomness to the
randomness it chose for the inputs. The key holder can extract and analyse the obfuscator
of every ciphertext it decrypts, so these fresh obfuscators are the default *uniform*
``n``-th residues (:mod:`vfl.crypto.randomness` explains why the DJN ones do not suffice).
"""

from __future__ import annotations

import builtins

import gmpy2
import numpy as np
from gmpy2 import mpz

from vfl.crypto.ciphertext import EncryptedArray
from vfl.crypto.codec import as_int_array, check_fits, from_residues
from vfl.crypto.errors import (
    FixedPointOverflowError,
    ScaleMismatchError,
    ShapeMismatchError,
    WrongKeyError,
)
from vfl.crypto.keys import PrivateKey, PublicKey, crt_decrypt
from vfl.crypto.multiexp import METHODS, choose_method
from vfl.crypto.multiexp import matvec as _matvec_kernel
from vfl.crypto.packing import PackingLayout
from vfl.crypto.parallel import (
    pack_horner,
    resolve_pool,
    split,
    task_decrypt,
    task_matvec,
    task_pack,
)
from vfl.crypto.randomness import RandomnessPool

_DEFAULT_RANDOMNESS: dict[bytes, RandomnessPool] = {}
#: Pool work items one CRT decryption counts as (an item ~ one CRT obfuscator).
DECRYPT_WORK_ITEMS = 8


def default_randomness(public_key: PublicKey) -> RandomnessPool:
    """The per-key :class:`RandomnessPool` used when none is passed: uniform ``n``-th
    residues with the public key only (safe for any party, under any party's key)."""
    rp = _DEFAULT_RANDOMNESS.get(public_key.fingerprint)
    if rp is None:
        if len(_DEFAULT_RANDOMNESS) >= 4:
            _DEFAULT_RANDOMNESS.pop(next(iter(_DEFAULT_RANDOMNESS)))
        rp = _DEFAULT_RANDOMNESS[public_key.fingerprint] = RandomnessPool(public_key)
    return rp


def _check_public_key(public_key) -> PublicKey:
    if not isinstance(public_key, PublicKey):
        raise TypeError(
            "expected a vfl.crypto.PublicKey; convert a phe key with PublicKey.from_phe"
        )
    return public_key


def _check_same_key(a: EncryptedArray, b: EncryptedArray) -> None:
    if a.fingerprint != b.fingerprint:
        raise WrongKeyError(
            f"operands are under different keys ({a.fingerprint.hex()} vs "
            f"{b.fingerprint.hex()}); homomorphic operations need one key"
        )


def _check_enc(enc) -> EncryptedArray:
    if not isinstance(enc, EncryptedArray):
        raise TypeError(
            "expected an EncryptedArray (see encrypt_array / EncryptedArray.from_bytes)"
        )
    return enc


def _broadcast_ints(values, shape, what: str) -> np.ndarray:
    ints = as_int_array(values)
    try:
        return np.broadcast_to(ints, shape)
    except ValueError as exc:
        raise ShapeMismatchError(
            f"{what} of shape {ints.shape} cannot be broadcast to the ciphertext shape {shape}"
        ) from exc


# --- encryption / decryption ---------------------------------------------------------------
def encrypt_array(
    public_key: PublicKey,
    values,
    *,
    scale_bits: int = 0,
    randomness: RandomnessPool | None = None,
    pool=None,
) -> EncryptedArray:
    """Encrypt an integer array (signed, ``|v| <= max_int = n // 3 - 1``) into an
    :class:`EncryptedArray`.

    ``scale_bits`` records the fixed-point scale of ``values`` (``FixedPointCodec.frac_bits``).
    ``randomness`` supplies obfuscators (default: a per-key pool of uniform ``n``-th
    residues); precompute them with ``randomness.precompute(k)`` to take their cost off the
    critical path. The key holder encrypting under its own key may pass
    ``RandomnessPool(pk, private_key=sk)`` (same distribution, CRT, ~3.4x cheaper).
    """
    pub = _check_public_key(public_key)
    ints = as_int_array(values)
    check_fits(ints, pub, "plaintext")
    rp = randomness if randomness is not None else default_randomness(pub)
    if rp.public_key != pub:
        raise WrongKeyError("the RandomnessPool belongs to another public key")
    n, n2 = pub.n, pub.nsquare
    flat = ints.reshape(-1).tolist()
    obf = rp.draw(len(flat), pool=pool)
    # g = n + 1  =>  g^m = 1 + m*n (mod n^2); negative m enters as n - |m|.
    cts = [(1 + (m % n) * n) * r % n2 for m, r in zip(flat, obf)]
    return EncryptedArray(cts, ints.shape, pub, scale_bits)


def decrypt_array(private_key: PrivateKey, enc: EncryptedArray, *, pool=None) -> np.ndarray:
    """Decrypt to signed integers (object array of Python ints, same shape).

    Raises :class:`WrongKeyError` if ``enc`` is under another key and
    :class:`FixedPointOverflowError` if a plaintext lies in the overflow band.
    """
    if not isinstance(private_key, PrivateKey):
        raise TypeError("expected a vfl.crypto.PrivateKey; convert a phe key with from_phe")
    enc = _check_enc(enc)
    enc.check_key(private_key.public_key)
    residues = _decrypt_residues(private_key, enc.values, pool)
    return from_residues(
        np.array(residues, dtype=object).reshape(enc.shape), private_key.public_key
    )


def _decrypt_residues(private_key: PrivateKey, values: list, pool) -> list:
    params = private_key.crt_params()
    wp = resolve_pool(pool)
    # A CRT decryption (two 1024-bit exponentiations) costs several times an obfuscator,
    # the pool's unit of work, so even a few packed ciphertexts are worth spreading.
    parts = wp.parallel_for(len(values) * DECRYPT_WORK_ITEMS)
    if parts == 1:
        return crt_decrypt(params, values)
    out = []
    for chunk in wp.map(task_decrypt, [(params, c) for c in split(values, parts)]):
        out.extend(chunk)
    return out


def decrypt_real(private_key: PrivateKey, enc: EncryptedArray, *, pool=None) -> np.ndarray:
    """Decrypt and divide by ``2**enc.scale_bits``: a float64 array."""
    ints = decrypt_array(private_key, enc, pool=pool)
    s = enc.scale_bits
    flat = [int(v) / (1 << s) if s >= 0 else float(int(v) << -s) for v in ints.reshape(-1)]
    return np.array(flat, dtype=np.float64).reshape(enc.shape)


def rerandomize(
    enc: EncryptedArray, *, randomness: RandomnessPool | None = None, pool=None
) -> EncryptedArray:
    """Multiply every ciphertext by a fresh ``r^n``: same plaintexts, fresh randomness.

    The default obfuscators are uniform ``n``-th residues, so the key holder, who can strip
    and analyse the result's randomness, learns nothing about the input's. Never pass a
    ``method="djn"`` pool here when ``enc`` is under another party's key.
    """
    enc = _check_enc(enc)
    rp = randomness if randomness is not None else default_randomness(enc.public_key)
    if rp.public_key != enc.public_key:
        raise WrongKeyError("the RandomnessPool belongs to another public key")
    n2 = enc.public_key.nsquare
    obf = rp.draw(enc.size, pool=pool)
    return enc.with_values([c * r % n2 for c, r in zip(enc.values, obf)])


# --- elementwise homomorphic operations ----------------------------------------------------
def add(a: EncryptedArray, b: EncryptedArray) -> EncryptedArray:
    """``[[a + b]]`` elementwise (same key, shape and scale)."""
    a, b = _check_enc(a), _check_enc(b)
    _check_same_key(a, b)
    if a.shape != b.shape:
        raise ShapeMismatchError(f"cannot add encrypted arrays of shapes {a.shape} and {b.shape}")
    if a.scale_bits != b.scale_bits:
        raise ScaleMismatchError(
            f"cannot add scale 2^-{a.scale_bits} to scale 2^-{b.scale_bits}; rescale one "
            "operand with mul_scalar(enc, 2**k, scale_bits=k) first"
        )
    n2 = a.public_key.nsquare
    return a.with_values([x * y % n2 for x, y in zip(a.values, b.values)])


def add_plain(enc: EncryptedArray, values, *, scale_bits: int | None = None) -> EncryptedArray:
    """``[[a + k]]`` for a plaintext integer array ``k`` (broadcast to ``enc.shape``).

    No fresh randomness is added: call :func:`rerandomize` before sending the result to the
    key holder if its randomness must not be linkable to the inputs.
    """
    enc = _check_enc(enc)
    if scale_bits is not None and int(scale_bits) != enc.scale_bits:
        raise ScaleMismatchError(
            f"plaintext scale 2^-{scale_bits} differs from ciphertext scale 2^-{enc.scale_bits}"
        )
    ints = _broadcast_ints(values, enc.shape, "plaintext")
    pub = enc.public_key
    check_fits(ints, pub, "plaintext")
    n, n2 = pub.n, pub.nsquare
    return enc.with_values(
        [c * (1 + (k % n) * n) % n2 for c, k in zip(enc.values, ints.reshape(-1).tolist())]
    )


def mul_scalar(enc: EncryptedArray, values, *, scale_bits: int = 0) -> EncryptedArray:
    """``[[a * k]]`` elementwise for plaintext integers ``k`` (broadcast to ``enc.shape``).

    The result's scale is ``enc.scale_bits + scale_bits``. Negative ``k`` use the inverse
    ciphertext so the exponent stays ``|k|`` bits long.
    """
    enc = _check_enc(enc)
    ints = _broadcast_ints(values, enc.shape, "scalar")
    pub = enc.public_key
    check_fits(ints, pub, "scalar")
    n2 = pub.nsquare
    out = [
        gmpy2.powmod(c, k, n2) if k else mpz(1)
        for c, k in zip(enc.values, ints.reshape(-1).tolist())
    ]
    return enc.with_values(out, scale_bits=enc.scale_bits + int(scale_bits))


def sum(enc: EncryptedArray, axis: int | None = None) -> EncryptedArray:  # noqa: A001
    """``[[sum(a)]]`` over all elements (``axis=None``, a 0-d array) or along ``axis``."""
    enc = _check_enc(enc)
    n2 = enc.public_key.nsquare
    if axis is None:
        acc = mpz(1)
        for c in enc.values:
            acc = acc * c % n2
        return enc.with_values([acc], shape=())
    idx = np.moveaxis(np.arange(enc.size).reshape(enc.shape), int(axis), -1)
    out = []
    for row in idx.reshape(-1, idx.shape[-1]):
        acc = mpz(1)
        for i in row.tolist():
            acc = acc * enc.values[i] % n2
        out.append(acc)
    return enc.with_values(out, shape=idx.shape[:-1])


# --- plaintext matrix times encrypted vector -----------------------------------------------
def plain_matmul_encrypted(
    matrix,
    enc_vector: EncryptedArray,
    *,
    matrix_scale_bits: int = 0,
    vector_bound: int | None = None,
    method: str = "auto",
    pool=None,
) -> EncryptedArray:
    """``[[M @ v]]`` for a plaintext integer matrix ``M`` of shape ``(out, n)`` and an
    encrypted vector ``v`` of length ``n``: shape ``(out,)``, scale
    ``v.scale_bits + matrix_scale_bits``.

    For the vertical protocol's ``J^T [[delta]]`` pass ``M = J^T`` (parameters x samples).
    ``vector_bound`` (max ``|v_i|``, public) enables an overflow check before any work:
    ``max_j sum_i |M_ji| * vector_bound`` must not exceed ``max_int = n // 3 - 1``.
    ``method``: ``"auto"`` (by operation count), ``"pippenger"``, ``"straus_shared"`` or
    ``"naive"`` (one ``powmod`` per entry, for reference). Work is split by columns across
    the process ``pool``; partial products are multiplied together.
    """
    enc = _check_enc(enc_vector)
    if enc.ndim != 1:
        raise ShapeMismatchError(
            f"the encrypted vector must be 1-d, got shape {enc.shape}; flatten it with .ravel()"
        )
    m = as_int_array(matrix)
    if m.ndim != 2 or m.shape[1] != enc.shape[0]:
        raise ShapeMismatchError(
            f"matrix of shape {m.shape} cannot multiply an encrypted vector of length "
            f"{enc.shape[0]}; expected shape (out, {enc.shape[0]})"
        )
    pub = enc.public_key
    check_fits(m, pub, "matrix entry")
    if vector_bound is not None:
        row_sums = [builtins.sum(abs(int(x)) for x in row) for row in m]
        worst = max(row_sums, default=0) * int(vector_bound)
        if worst > pub.max_int:
            raise FixedPointOverflowError(
                f"M @ v may reach 2^{worst.bit_length()}, beyond the plaintext bound "
                f"2^{int(pub.max_int.bit_length())}; use fewer fractional bits or a smaller batch"
            )
    rows, n = m.shape
    bits = max((abs(int(x)).bit_length() for x in m.reshape(-1)), default=0)
    if method == "auto":
        method = choose_method(rows, n, bits)
    elif method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use 'auto' or one of {METHODS}")
    n2 = pub.nsquare
    try:
        m_arg = m.astype(np.int64) if bits <= 62 else m
    except OverflowError:  # pragma: no cover - guarded by bits
        m_arg = m
    wp = resolve_pool(pool)
    # Enough work per chunk to pay for the round trip: at least ~64 bases per worker.
    parts = wp.parallel_for((rows * n * max(bits, 1)) // 2048) if n >= 128 else 1
    parts = min(parts, max(1, n // 64))
    if parts == 1:
        result = _matvec_kernel(method, m_arg, enc.values, n2)
    else:
        cols = split(list(range(n)), parts)
        tasks = [
            (method, m_arg[:, c[0] : c[-1] + 1], enc.values[c[0] : c[-1] + 1], n2, None)
            for c in cols
        ]
        partials = wp.map(task_matvec, tasks)
        result = partials[0]
        for part in partials[1:]:
            result = [x * y % n2 for x, y in zip(result, part)]
    return EncryptedArray(result, (rows,), pub, enc.scale_bits + int(matrix_scale_bits))


# --- packing -------------------------------------------------------------------------------
def pack_encrypted(enc: EncryptedArray, layout: PackingLayout, *, pool=None) -> EncryptedArray:
    """Pack ciphertexts homomorphically: ``[[sum_j (v_j + offset) * 2**(j*slot_bits)]]``.

    The caller guarantees ``|v_j| < 2**layout.magnitude_bits`` (e.g. masked values with a
    known mask width); :func:`decrypt_packed` reports overflow of the top slot. Horner's rule
    costs ``slot_bits`` squarings per slot, far less than the decryptions it saves. Each
    packed ciphertext is independent, so they are spread over the process ``pool`` when
    there are at least two and enough squarings to pay for the round trip.
    """
    enc = _check_enc(enc)
    pub = enc.public_key
    s, w = layout.slots_per_plaintext(pub), layout.slot_bits
    n, n2 = pub.n, pub.nsquare
    vals = enc.values
    chunks = [vals[start : start + s] for start in range(0, len(vals), s)]
    wp = resolve_pool(pool)
    # work in pool items (~ one obfuscator, ~128 squarings mod n^2 each)
    parts = min(len(chunks), wp.parallel_for(len(vals) * w // 128))
    if parts == 1:
        horner = pack_horner(chunks, w, n2)
    else:
        horner = []
        for part in wp.map(task_pack, [(c, w, n2) for c in split(chunks, parts)]):
            horner.extend(part)
    out = []
    for chunk, acc in zip(chunks, horner, strict=True):
        offsets = builtins.sum(layout.offset << (w * j) for j in range(len(chunk)))
        out.append(acc * (1 + offsets % n * n) % n2)
    return EncryptedArray(out, (len(out),), pub, enc.scale_bits)


def pack_masked(
    enc: EncryptedArray,
    mask,
    layout: PackingLayout,
    *,
    randomness: RandomnessPool | None = None,
    pool=None,
) -> EncryptedArray:
    """``pack([[v + R]])``: pack ``enc`` and add the packed mask ``R`` as a fresh encryption.

    Packing first and masking the packed ciphertexts costs one encryption per *packed*
    ciphertext instead of one per value (e.g. 2 instead of 30), and the fresh encryption
    still re-randomizes what the key holder receives (with a uniform ``n``-th residue by
    default; a ``method="djn"`` pool must not be used here). ``mask`` holds non-negative ints
    (:func:`draw_mask`); every slot then decrypts to ``v_j + R_j`` and must fit
    ``layout.magnitude_bits``.
    """
    enc = _check_enc(enc)
    pub = enc.public_key
    flat = [int(r) for r in as_int_array(mask).reshape(-1)]
    if len(flat) != enc.size:
        raise ShapeMismatchError(f"{len(flat)} mask values for {enc.size} ciphertexts")
    if any(r < 0 for r in flat):
        raise ValueError("mask values must be non-negative (use draw_mask)")
    packed = pack_encrypted(enc, layout, pool=pool)
    s, w = layout.slots_per_plaintext(pub), layout.slot_bits
    rows = [
        builtins.sum(r << (w * j) for j, r in enumerate(flat[i : i + s]))
        for i in range(0, len(flat), s)
    ]
    enc_mask = encrypt_array(
        pub, rows, scale_bits=enc.scale_bits, randomness=randomness, pool=1
    )
    return add(packed, enc_mask)


def decrypt_packed(
    private_key: PrivateKey,
    packed: EncryptedArray,
    layout: PackingLayout,
    count: int,
    *,
    terms: int = 1,
    pool=None,
) -> np.ndarray:
    """Decrypt packed ciphertexts and unpack ``count`` signed ints (object array)."""
    packed = _check_enc(packed)
    packed.check_key(private_key.public_key)
    residues = _decrypt_residues(private_key, packed.values, pool)
    plain = from_residues(np.array(residues, dtype=object), private_key.public_key)
    return layout.unpack(plain.tolist(), count, private_key.public_key, terms=terms)
