"""Tests of the array-level Paillier engine (vfl.crypto).

Keys are 512/1024 bits behind ``insecure_test_key=True`` to stay fast; one small test uses
the default 2048 bits.
"""

from __future__ import annotations

import math
import pathlib
import secrets
import warnings

import gmpy2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phe import paillier
from phe.encoding import EncodedNumber

import vfl.crypto as vc
from vfl.crypto import codec as codec_mod
from vfl.crypto.multiexp import METHODS

FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


pytestmark = pytest.mark.usefixtures("serial_default_pool")


@pytest.fixture(scope="module")
def keys():
    return vc.generate_keypair(1024, insecure_test_key=True)


@pytest.fixture(scope="module")
def small_keys():
    return vc.generate_keypair(512, insecure_test_key=True)


@pytest.fixture(scope="module")
def other_keys():
    return vc.generate_keypair(512, insecure_test_key=True)


@pytest.fixture(scope="module")
def rand_small(small_keys):
    return vc.RandomnessPool(small_keys[0])  # the default: uniform n-th residues


def signed_ints(bits):
    return st.integers(min_value=-(2**bits), max_value=2**bits)


# --- keys ----------------------------------------------------------------------------------
def test_short_key_without_flag_raises():
    with pytest.raises(vc.InsecureKeyError, match="insecure_test_key=True"):
        vc.generate_keypair(1024)
    phe_pk, _ = paillier.generate_paillier_keypair(n_length=1024)
    with pytest.raises(vc.InsecureKeyError):
        vc.PublicKey.from_phe(phe_pk)
    assert vc.PublicKey.from_phe(phe_pk, insecure_test_key=True).n == phe_pk.n


def test_phe_key_conversion_is_lossless(keys):
    pk, sk = keys
    phe_sk = sk.to_phe()
    assert phe_sk.public_key.n == pk.n
    back = vc.PrivateKey.from_phe(phe_sk, insecure_test_key=True)
    assert (back.p, back.q, back.public_key) == (sk.p, sk.q, pk)
    assert vc.PublicKey.from_bytes(pk.to_bytes(), insecure_test_key=True) == pk
    assert "p=" not in repr(sk) and str(int(sk.p)) not in repr(sk)


def test_default_2048_bit_key_roundtrip():
    pk, sk = vc.generate_keypair()
    assert pk.key_bits == 2048 and pk.ciphertext_bytes == 512
    enc = vc.encrypt_array(pk, [3, -7, 2**100])  # default uniform randomness
    assert list(vc.decrypt_array(sk, enc)) == [3, -7, 2**100]
    g = vc.plain_matmul_encrypted([[1, -2, 0], [5, 5, 0]], enc)
    assert list(vc.decrypt_array(sk, g)) == [17, -20]
    assert sk.to_phe().decrypt(enc.to_phe()[1]) == -7


def test_max_int_is_phe_bound_and_decoding_agrees_with_phe(small_keys):
    pk, sk = small_keys
    phe_pk, phe_sk = pk.to_phe(), sk.to_phe()
    n, mi = int(pk.n), int(pk.max_int)
    assert mi == n // 3 - 1 == phe_pk.max_int
    # every residue around both edges of the overflow band decodes as phe decodes it
    for r in (0, 1, mi - 1, mi, mi + 1, n // 3, n - mi - 2, n - mi - 1, n - mi, n - 1):
        try:
            theirs = EncodedNumber(phe_pk, r, 0).decode()
        except OverflowError:
            theirs = None
        try:
            ours = int(vc.from_residues([r], pk)[0])
        except vc.FixedPointOverflowError:
            ours = None
        assert ours == theirs, r
    enc = vc.encrypt_array(pk, [mi, -mi])
    assert [phe_sk.decrypt(x) for x in enc.to_phe()] == [mi, -mi]
    assert vc.decrypt_array(sk, enc).tolist() == [mi, -mi]
    with pytest.raises(vc.FixedPointOverflowError):
        vc.encrypt_array(pk, [-(mi + 1)])


# --- encryption ----------------------------------------------------------------------------
@FAST
@given(data=st.lists(signed_ints(300), min_size=0, max_size=12), two_d=st.booleans())
def test_encrypt_decrypt_roundtrip(keys, data, two_d):
    pk, sk = keys
    arr = np.array(data, dtype=object)
    if two_d and len(data) % 2 == 0 and data:
        arr = arr.reshape(2, -1)
    enc = vc.encrypt_array(pk, arr)
    assert enc.shape == arr.shape
    out = vc.decrypt_array(sk, enc)
    assert out.shape == arr.shape and out.tolist() == arr.tolist()


def test_every_randomness_method_roundtrips(small_keys):
    pk, sk = small_keys
    vals = [0, 1, -1, 12345, -(2**100)]
    configs = [
        {},  # uniform, public key
        {"private_key": sk},  # uniform, key holder (CRT)
        {"method": "djn"},
        {"short_exponent": True},
        {"method": "djn", "private_key": sk},
    ]
    for kwargs in configs:
        rp = vc.RandomnessPool(pk, **kwargs)
        rp.precompute(3)
        assert rp.available == 3
        enc = vc.encrypt_array(pk, vals, randomness=rp)
        assert rp.available == 0
        assert list(vc.decrypt_array(sk, enc)) == vals
    assert len(set(vc.encrypt_array(pk, [5, 5, 5]).values)) == 3  # probabilistic encryption


def test_numpy_int_arrays_and_type_errors(small_keys, rand_small):
    pk, sk = small_keys
    enc = vc.encrypt_array(pk, np.array([[1, -2], [3, 4]], dtype=np.int64), randomness=rand_small)
    assert vc.decrypt_array(sk, enc).tolist() == [[1, -2], [3, 4]]
    with pytest.raises(TypeError, match="FixedPointCodec"):
        vc.encrypt_array(pk, np.array([0.5, 1.0]))
    with pytest.raises(TypeError):
        vc.encrypt_array(pk, [1, "x"])
    with pytest.raises(vc.FixedPointOverflowError):
        vc.encrypt_array(pk, [int(pk.max_int) + 1])


def test_rerandomize_keeps_plaintext(small_keys, rand_small):
    pk, sk = small_keys
    enc = vc.encrypt_array(pk, [4, -9], randomness=rand_small)
    again = vc.rerandomize(enc, randomness=rand_small)
    assert all(a != b for a, b in zip(enc.values, again.values))
    assert list(vc.decrypt_array(sk, again)) == [4, -9]


# --- phe interoperability ------------------------------------------------------------------
def test_our_ciphertexts_decrypt_with_phe(keys):
    pk, sk = keys
    phe_sk = sk.to_phe()
    vals = [0, 17, -17, 2**200, -(2**200)]
    enc = vc.encrypt_array(pk, vals)
    assert [phe_sk.decrypt(x) for x in enc.to_phe()] == vals
    # a fixed-point scale not divisible by 4 maps losslessly onto phe's base-16 exponent
    codec = vc.FixedPointCodec(frac_bits=6)
    x = np.array([1.5, -0.015625, 3.0])
    enc = vc.encrypt_array(pk, codec.encode(x), scale_bits=6)
    nums = enc.to_phe()
    assert all(num.exponent == -2 for num in nums)
    assert [phe_sk.decrypt(num) for num in nums] == pytest.approx(x.tolist(), abs=0)
    # and homomorphic results computed by us stay phe-decryptable
    g = vc.plain_matmul_encrypted([[2, -3, 1]], vc.encrypt_array(pk, [5, 6, -7]))
    assert phe_sk.decrypt(g.to_phe()[0]) == 2 * 5 - 3 * 6 - 7


def test_phe_ciphertexts_decrypt_with_ours(keys):
    pk, sk = keys
    phe_pk = pk.to_phe()
    ints = [3, -4, 2**150]
    enc = vc.EncryptedArray.from_phe([phe_pk.encrypt(v) for v in ints], pk)
    assert enc.scale_bits == 0 and list(vc.decrypt_array(sk, enc)) == ints
    reals = [3.25, -0.5, 1e-3]
    enc = vc.EncryptedArray.from_phe([phe_pk.encrypt(v, precision=2**-40) for v in reals], pk)
    assert enc.scale_bits % 4 == 0
    assert vc.decrypt_real(sk, enc) == pytest.approx(reals, abs=2**-40)
    # phe arithmetic and ours agree
    a, b = phe_pk.encrypt(10), phe_pk.encrypt(-3)
    mixed = vc.add(vc.EncryptedArray.from_phe([a * 4]), vc.EncryptedArray.from_phe([b]))
    assert list(vc.decrypt_array(sk, mixed)) == [37]


# --- homomorphic operations ----------------------------------------------------------------
@FAST
@given(st.data())
def test_add_add_plain_mul_scalar_exact(small_keys, rand_small, data):
    pk, sk = small_keys
    n = data.draw(st.integers(1, 6))
    a = data.draw(st.lists(signed_ints(60), min_size=n, max_size=n))
    b = data.draw(st.lists(signed_ints(60), min_size=n, max_size=n))
    k = data.draw(st.lists(signed_ints(40), min_size=n, max_size=n))
    ea = vc.encrypt_array(pk, a, randomness=rand_small)
    eb = vc.encrypt_array(pk, b, randomness=rand_small)
    assert list(vc.decrypt_array(sk, vc.add(ea, eb))) == [x + y for x, y in zip(a, b)]
    assert list(vc.decrypt_array(sk, vc.add_plain(ea, b))) == [x + y for x, y in zip(a, b)]
    assert list(vc.decrypt_array(sk, vc.mul_scalar(ea, k))) == [x * y for x, y in zip(a, k)]
    assert list(vc.decrypt_array(sk, vc.mul_scalar(ea, -3))) == [-3 * x for x in a]
    assert vc.decrypt_array(sk, vc.sum(ea)).tolist() == sum(a)


def test_sum_along_axis_and_scales(small_keys, rand_small):
    pk, sk = small_keys
    m = np.arange(-6, 6).reshape(3, 4)
    enc = vc.encrypt_array(pk, m, randomness=rand_small, scale_bits=8)
    assert vc.decrypt_array(sk, vc.sum(enc, axis=0)).tolist() == m.sum(axis=0).tolist()
    assert vc.decrypt_array(sk, vc.sum(enc, axis=1)).tolist() == m.sum(axis=1).tolist()
    prod = vc.mul_scalar(enc, 3, scale_bits=4)
    assert prod.scale_bits == 12
    with pytest.raises(vc.ScaleMismatchError):
        vc.add(enc, prod)
    with pytest.raises(vc.ShapeMismatchError):
        vc.add(enc, enc.reshape(4, 3))
    with pytest.raises(vc.ShapeMismatchError):
        vc.add_plain(enc, [1, 2, 3])


@FAST
@given(st.data())
def test_matvec_matches_integers_and_naive_pow(small_keys, rand_small, data):
    pk, sk = small_keys
    rows = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(1, 10))
    ebits = data.draw(st.sampled_from([1, 8, 40, 61, 70]))
    m = np.array(
        data.draw(
            st.lists(
                st.lists(signed_ints(ebits), min_size=n, max_size=n), min_size=rows, max_size=rows
            )
        ),
        dtype=object,
    )
    v = data.draw(st.lists(signed_ints(30), min_size=n, max_size=n))
    enc = vc.encrypt_array(pk, v, randomness=rand_small)
    expected = [sum(int(a) * b for a, b in zip(row, v)) for row in m]
    # reference: one pow per element, straight from the definition
    n2 = pk.nsquare
    reference = []
    for row in m:
        acc = gmpy2.mpz(1)
        for c, e in zip(enc.values, row):
            acc = acc * gmpy2.powmod(c, int(e), n2) % n2
        reference.append(acc)
    for method in (*METHODS, "auto"):
        out = vc.plain_matmul_encrypted(m, enc, method=method)
        assert out.shape == (rows,)
        assert out.values == reference, method  # identical ciphertexts, not just plaintexts
        assert list(vc.decrypt_array(sk, out)) == expected


def test_matvec_validation(small_keys, rand_small):
    pk, _ = small_keys
    enc = vc.encrypt_array(pk, [1, 2, 3], randomness=rand_small)
    with pytest.raises(vc.ShapeMismatchError):
        vc.plain_matmul_encrypted([[1, 2]], enc)
    with pytest.raises(vc.ShapeMismatchError):
        vc.plain_matmul_encrypted([[1, 2, 3]], enc.reshape(3, 1))
    with pytest.raises(ValueError, match="unknown method"):
        vc.plain_matmul_encrypted([[1, 2, 3]], enc, method="fft")
    with pytest.raises(vc.FixedPointOverflowError):
        vc.plain_matmul_encrypted([[2**400, 1, 1]], enc, vector_bound=2**200)
    out = vc.plain_matmul_encrypted([[1, 1, 1]], enc, vector_bound=3, matrix_scale_bits=5)
    assert out.scale_bits == 5


def test_parallel_pool_matches_serial(keys):
    pk, sk = keys
    pool = vc.WorkerPool(2, min_items=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a serial fallback would warn
        _run_parallel(pool, pk, sk)


def _run_parallel(pool, pk, sk):
    try:
        vals = [secrets.randbits(50) - 2**49 for _ in range(140)]
        rp = vc.RandomnessPool(pk, pool=pool)  # uniform obfuscators, in the workers
        enc = vc.encrypt_array(pk, vals, randomness=rp, pool=pool)
        assert list(vc.decrypt_array(sk, enc, pool=pool)) == vals
        djn = vc.RandomnessPool(pk, short_exponent=True, pool=pool)  # opt-in DJN tables
        assert list(vc.decrypt_array(sk, vc.rerandomize(enc, randomness=djn))) == vals
        m = np.array([[secrets.randbits(20) - 2**19 for _ in range(140)] for _ in range(3)])
        par = vc.plain_matmul_encrypted(m, enc, pool=pool)
        assert par.values == vc.plain_matmul_encrypted(m, enc, pool=1).values
    finally:
        pool.shutdown()


# --- fixed-point codec ---------------------------------------------------------------------
@FAST
@given(x=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8), frac_bits=st.integers(0, 48))
def test_codec_roundtrip_within_resolution(keys, x, frac_bits):
    pk, sk = keys
    codec = vc.FixedPointCodec(frac_bits=frac_bits)
    ints = codec.encode(x, pk)
    assert np.all(np.abs(codec.decode(ints) - np.array(x)) <= 2.0**-frac_bits)
    enc = vc.encrypt_array(pk, ints, scale_bits=frac_bits)
    assert np.all(np.abs(vc.decrypt_real(sk, enc) - np.array(x)) <= 2.0**-frac_bits)


def test_codec_and_bound_overflow(small_keys, rand_small):
    pk, sk = small_keys
    codec = vc.FixedPointCodec(frac_bits=32)
    with pytest.raises(vc.FixedPointOverflowError, match="fractional bits"):
        codec.encode([2.0**500], pk)
    with pytest.raises(vc.FixedPointOverflowError):
        codec.encode([float("nan")])
    with pytest.raises(vc.FixedPointOverflowError):
        vc.FixedPointCodec(8, max_abs_value=10.0).encode([11.0])
    bits = int(pk.max_int.bit_length())
    with pytest.raises(vc.FixedPointOverflowError):
        vc.check_product_bound(2 ** (bits // 2), 2 ** (bits // 2), 64, pk)
    assert vc.check_product_bound(2**40, 2**40, 256, pk) == 2**88
    with pytest.raises(vc.FixedPointOverflowError):
        vc.check_sum_bound(pk.max_int, 2, pk)
    # a homomorphic result in the overflow band is reported, not silently wrapped
    enc = vc.encrypt_array(pk, [int(pk.max_int)], randomness=rand_small)
    with pytest.raises(vc.FixedPointOverflowError, match="overflow band"):
        vc.decrypt_array(sk, vc.mul_scalar(enc, 2))


# --- packing -------------------------------------------------------------------------------
@FAST
@given(st.data())
def test_packing_roundtrip(keys, data):
    pk, _ = keys
    mag = data.draw(st.integers(1, 120))
    layout = vc.PackingLayout(magnitude_bits=mag)
    lim = 2**mag - 1
    vals = data.draw(st.lists(st.integers(-lim, lim), min_size=0, max_size=40))
    packed = layout.pack(vals, pk)
    assert len(packed) == layout.packed_count(len(vals), pk)
    assert all(0 <= p <= pk.max_int for p in packed)
    assert list(layout.unpack(packed, len(vals), pk)) == vals


def test_packed_encrypted_exchange(keys):
    pk, sk = keys
    layout = vc.PackingLayout(magnitude_bits=60, headroom_bits=1)
    vals = [secrets.randbits(60) * (-1) ** i for i in range(40)]
    vals = [max(min(v, 2**60 - 1), -(2**60) + 1) for v in vals]
    enc = vc.encrypt_array(pk, vals)
    packed = vc.pack_encrypted(enc, layout)
    assert packed.size == layout.packed_count(40, pk) < 40
    assert list(vc.decrypt_packed(sk, packed, layout, 40)) == vals
    twice = vc.add(packed, packed)  # headroom_bits=1 allows one addition
    assert list(vc.decrypt_packed(sk, twice, layout, 40, terms=2)) == [2 * v for v in vals]
    with pytest.raises(vc.FixedPointOverflowError):
        layout.unpack([0], 1, pk, terms=3)
    with pytest.raises(vc.FixedPointOverflowError, match="magnitude bits"):
        layout.pack([2**60], pk)
    with pytest.raises(vc.FixedPointOverflowError):
        vc.PackingLayout(magnitude_bits=2000).slots_per_plaintext(pk)


def test_full_exchange_step_with_masks_and_packing(keys):
    """encrypt delta, J^T [[delta]], mask, pack, decrypt, unmask == J^T delta exactly."""
    pk, sk = keys
    codec = vc.FixedPointCodec(frac_bits=16)
    rng = np.random.default_rng(0)  # test data only, not crypto randomness
    delta, jt = rng.normal(size=24), rng.normal(size=(5, 24))
    d_int, j_int = codec.encode(delta, pk), codec.encode(jt, pk)
    bound = vc.check_product_bound(vc.codec.max_abs(j_int), vc.codec.max_abs(d_int), 24, pk)
    enc = vc.encrypt_array(pk, d_int, scale_bits=16)
    g = vc.plain_matmul_encrypted(j_int, enc, matrix_scale_bits=16)
    mask = vc.draw_mask(g.shape, bound.bit_length())
    masked = vc.add(g, vc.encrypt_array(pk, mask, scale_bits=g.scale_bits))
    layout = vc.PackingLayout(magnitude_bits=bound.bit_length() + vc.STAT_SLACK_BITS + 1)
    plain = vc.decrypt_packed(sk, vc.pack_encrypted(masked, layout), layout, g.size)
    got = plain - mask
    assert got.tolist() == [sum(int(a) * int(b) for a, b in zip(r, d_int)) for r in j_int]
    assert np.allclose(codec.decode(got, scale_bits=32), jt @ delta, atol=1e-3)


# --- validation and keys -------------------------------------------------------------------
def test_serialization_roundtrip(small_keys, rand_small):
    pk, sk = small_keys
    enc = vc.encrypt_array(pk, np.arange(-3, 3).reshape(2, 3), randomness=rand_small, scale_bits=-4)
    data = enc.to_bytes()
    assert len(data) > 6 * pk.ciphertext_bytes
    back = vc.EncryptedArray.from_bytes(data, pk)
    assert (back.shape, back.scale_bits, back.values) == (enc.shape, -4, enc.values)


@pytest.mark.parametrize("kind", ["zero", "n_squared", "too_big", "shares_factor"])
def test_tampered_ciphertexts_are_rejected(small_keys, rand_small, kind):
    pk, sk = small_keys
    enc = vc.encrypt_array(pk, [1, 2, 3], randomness=rand_small)
    bad = {
        "zero": 0,
        "n_squared": int(pk.nsquare),
        "too_big": int(pk.nsquare) + 12345,
        "shares_factor": int(sk.p) * 7,
    }[kind]
    width = pk.ciphertext_bytes
    data = bytearray(enc.to_bytes())
    if bad.bit_length() <= 8 * width:
        data[len(data) - 2 * width : len(data) - width] = bad.to_bytes(width, "big")
        with pytest.raises(vc.InvalidCiphertextError, match="ciphertext 1"):
            vc.EncryptedArray.from_bytes(bytes(data), pk)
    with pytest.raises(vc.InvalidCiphertextError, match="ciphertext 1"):
        vc.EncryptedArray.from_ciphertexts([enc.values[0], bad, enc.values[2]], (3,), pk)


def test_malformed_messages_are_rejected(small_keys, rand_small):
    pk, _ = small_keys
    data = vc.encrypt_array(pk, [1, 2], randomness=rand_small).to_bytes()
    for broken in (b"", b"XXXX" + data[4:], data[:-1], data + b"\x00"):
        with pytest.raises(vc.InvalidCiphertextError):
            vc.EncryptedArray.from_bytes(broken, pk)


def test_wrong_key_is_detected(small_keys, other_keys, rand_small):
    pk, sk = small_keys
    pk2, sk2 = other_keys
    enc = vc.encrypt_array(pk, [1, 2], randomness=rand_small)
    with pytest.raises(vc.WrongKeyError, match="another party's key"):
        vc.EncryptedArray.from_bytes(enc.to_bytes(), pk2)
    with pytest.raises(vc.WrongKeyError):
        vc.decrypt_array(sk2, enc)
    with pytest.raises(vc.WrongKeyError):
        vc.add(enc, vc.encrypt_array(pk2, [1, 2]))
    with pytest.raises(vc.WrongKeyError):
        vc.encrypt_array(pk2, [1], randomness=rand_small)


# --- masks and randomness sources ----------------------------------------------------------
def test_masks_have_documented_width_and_come_from_secrets(monkeypatch):
    masks = vc.draw_mask((50, 4), 24)
    assert masks.shape == (50, 4)
    widths = [int(m).bit_length() for m in masks.reshape(-1)]
    assert max(widths) <= 24 + 40 and max(widths) >= 24 + 40 - 8
    assert all(int(m) >= 0 for m in masks.reshape(-1))
    with pytest.raises(ValueError, match="at least 40"):
        vc.draw_mask(3, 10, slack_bits=20)
    calls = []

    def spy(k):
        calls.append(k)
        return 1

    monkeypatch.setattr(codec_mod.secrets, "randbits", spy)
    assert vc.draw_mask(3, 10).tolist() == [1, 1, 1]
    assert calls == [50, 50, 50]


def test_no_insecure_randomness_in_crypto_code():
    root = pathlib.Path(vc.__file__).parent
    for path in root.glob("*.py"):
        src = path.read_text()
        assert "import random" not in src and "from random" not in src, path
        assert "np.random" not in src and "numpy.random" not in src, path


def test_mask_slack_gives_statistical_hiding_bound():
    # |v| < 2**bits and R uniform below 2**(bits + 40): SD(v + R, R) <= |v| / 2**(bits + 40)
    bits = 30
    worst = (2**bits - 1) / 2 ** (bits + vc.STAT_SLACK_BITS)
    assert worst < 2**-40 and math.log2(1 / worst) > 39.99


def test_exchange_at_2048_bits_with_full_randomness_and_pool():
    """The default configuration end to end: 2048-bit key, full-length exponents, pool."""
    pk, sk = vc.generate_keypair()
    pool = vc.WorkerPool(2, min_items=8)
    try:
        delta = [secrets.randbits(32) - 2**31 for _ in range(64)]
        jt = np.array([[secrets.randbits(40) - 2**39 for _ in range(64)] for _ in range(10)])
        enc = vc.EncryptedArray.from_bytes(vc.encrypt_array(pk, delta, pool=pool).to_bytes(), pk)
        g = vc.plain_matmul_encrypted(jt, enc, pool=pool, vector_bound=2**31)
        mask = vc.draw_mask(g.shape, 80)
        masked = vc.add(g, vc.encrypt_array(pk, mask, pool=pool))
        layout = vc.PackingLayout(magnitude_bits=80 + vc.STAT_SLACK_BITS + 1)
        packed = vc.pack_encrypted(masked, layout)
        got = vc.decrypt_packed(sk, packed, layout, g.size, pool=pool) - mask
        assert got.tolist() == [sum(int(a) * b for a, b in zip(r, delta)) for r in jt]
    finally:
        pool.shutdown()


def test_key_holder_crt_randomness_equals_public_computation(keys, monkeypatch):
    """DJN's CRT path (private key) computes exactly h_n ** a mod n^2 for the same a."""
    pk, sk = keys
    rp = vc.RandomnessPool(pk, method="djn", private_key=sk)
    assert rp.uses_crt and not vc.RandomnessPool(pk, method="djn").uses_crt
    a = secrets.randbits(rp.exp_bits)
    monkeypatch.setattr(secrets, "randbits", lambda k: a)
    assert rp.draw(2) == [gmpy2.powmod(rp._h_n, a, pk.nsquare)] * 2
    monkeypatch.undo()
    rp.precompute(3)
    vals = [0, 7, -(2**90), 2**200]
    enc = vc.encrypt_array(pk, vals, randomness=rp)
    assert rp.available == 0 and list(vc.decrypt_array(sk, enc)) == vals
    phe_sk = sk.to_phe()
    assert [phe_sk.decrypt(x) for x in enc.to_phe()] == vals
    _, other_sk = vc.generate_keypair(512, insecure_test_key=True)
    with pytest.raises(vc.WrongKeyError):
        vc.RandomnessPool(pk, private_key=other_sk)


def test_key_holder_crt_randomness_in_worker_pool(keys):
    pk, sk = keys
    pool = vc.WorkerPool(2, min_items=4)
    try:
        rp = vc.RandomnessPool(pk, private_key=sk, pool=pool)  # uniform, CRT
        assert rp.method == "uniform" and rp.uses_crt
        rp.precompute(16)
        vals = list(range(-8, 8))
        enc = vc.encrypt_array(pk, vals, randomness=rp)
        assert list(vc.decrypt_array(sk, enc)) == vals
        assert len(set(enc.values)) == 16
    finally:
        pool.shutdown()
