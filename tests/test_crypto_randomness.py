"""Tests of the Paillier obfuscators (vfl.crypto.randomness): uniform n-th residues by default.

Facts used (``n = p q``, ``gcd(n, phi(n)) = 1``):

* the ``n``-th residues mod ``n^2`` are the units with ``x^phi(n) = 1``; an obfuscator is one
  iff ``c = (1 + 0*n) * x`` decrypts to 0;
* reduction mod ``n`` is a bijection from the ``n``-th residues onto ``Z*_n``, so the key
  holder's CRT lift of ``y mod n`` for a public obfuscator ``y = r^n`` is ``y`` itself;
* Legendre symbols: for ``y = r^n`` with ``n`` odd, ``(y | p) = (r | p)`` and
  ``(y | q) = (r | q)``, and ``r`` uniform in ``Z*_n`` makes the pair uniform over the four
  sign combinations. For DJN's ``y = h_n^a`` with ``h = -x^2``,
  ``(y | p) = (-1 | p)^a`` and ``(y | q) = (-1 | q)^a`` both depend on ``a mod 2`` only: at
  most two of the four combinations ever occur (a projection the key holder can compute).
"""

from __future__ import annotations

import secrets

import gmpy2
import pytest

import vfl.crypto as vc
from vfl.crypto import parallel
from vfl.crypto import randomness as rmod

#: Draws per distribution check: a uniform source misses one of 4 Legendre pairs with
#: probability <= 4 * (3/4)**96 < 1e-11, one of 3 cubic characters with <= 3 * (2/3)**96.
DRAWS = 96


pytestmark = pytest.mark.usefixtures("serial_default_pool")


@pytest.fixture(scope="module")
def keys():
    return vc.generate_keypair(512, insecure_test_key=True)


@pytest.fixture(scope="module")
def key_3_divides_p_minus_1():
    """A 256-bit test key whose ``p - 1`` has the small odd prime factor 3."""
    while True:
        pk, sk = vc.generate_keypair(256, insecure_test_key=True)
        if (sk.p - 1) % 3 == 0:
            return pk, sk


def _paths(pk, sk):
    return {
        "public": vc.RandomnessPool(pk),
        "key_holder_crt": vc.RandomnessPool(pk, private_key=sk),
    }


def _legendre_pair(y, sk):
    return (gmpy2.legendre(y % sk.p, sk.p), gmpy2.legendre(y % sk.q, sk.q))


def test_default_is_uniform_and_djn_is_explicit_opt_in(keys):
    pk, sk = keys
    rp = vc.RandomnessPool(pk)
    assert rp.method == "uniform" and not rp.uses_crt and rp.exp_bits is None
    assert vc.RandomnessPool(pk, private_key=sk).uses_crt
    short = vc.RandomnessPool(pk, short_exponent=True)
    assert short.method == "djn" and short.exp_bits == rmod.SHORT_EXPONENT_BITS
    full = vc.RandomnessPool(pk, method="djn")
    assert full.exp_bits == pk.key_bits + rmod.FULL_EXPONENT_SLACK_BITS
    with pytest.raises(ValueError, match="method='djn' only"):
        vc.RandomnessPool(pk, method="uniform", short_exponent=True)
    with pytest.raises(ValueError, match="method='djn' only"):
        vc.RandomnessPool(pk, window=8)
    with pytest.raises(ValueError, match="unknown randomness method"):
        vc.RandomnessPool(pk, method="fast")
    _, other_sk = vc.generate_keypair(512, insecure_test_key=True)
    with pytest.raises(vc.WrongKeyError):
        vc.RandomnessPool(pk, private_key=other_sk)


@pytest.mark.parametrize("path", ["public", "key_holder_crt"])
def test_uniform_obfuscators_are_nth_residue_units(keys, path):
    """(a) Each obfuscator is a unit mod n^2 and an n-th residue: (1 + 0*n) * y decrypts to 0."""
    pk, sk = keys
    ys = _paths(pk, sk)[path].draw(20)
    n, n2 = pk.n, pk.nsquare
    lam = (sk.p - 1) * (sk.q - 1)
    assert len(set(ys)) == 20
    for y in ys:
        assert 0 < y < n2 and gmpy2.gcd(y, n) == 1
        assert gmpy2.powmod(y, lam, n2) == 1  # order divides phi(n): an n-th residue
    enc = vc.EncryptedArray.from_ciphertexts(ys, (20,), pk)  # validates: units mod n^2
    assert vc.decrypt_array(sk, enc).tolist() == [0] * 20
    phe_sk = sk.to_phe()
    assert all(phe_sk.raw_decrypt(int(y)) == 0 for y in ys)
    # a non-residue (a generic unit) is rejected by the same check: the test can fail
    assert phe_sk.raw_decrypt(int(n + 2)) != 0


def test_key_holder_lift_is_the_public_distribution(keys):
    """(b) The CRT lift of y mod n, for a public obfuscator y = r^n, is exactly y.

    So the key holder's output for s = CRT(s_p, s_q) uniform in Z*_n is the public output
    for the r with r^n = s (mod n): the same uniform distribution over the n-th residues.
    """
    pk, sk = keys
    n, n2 = pk.n, pk.nsquare
    params = vc.RandomnessPool(pk, private_key=sk)._crt
    for _ in range(20):
        y = parallel.uniform_obfuscators(n, 1)[0]
        assert parallel.nth_residue_lift(params, y % sk.p, y % sk.q) == y
        s = gmpy2.mpz(secrets.randbelow(int(n)))
        if gmpy2.gcd(s, n) != 1:
            continue
        x = parallel.nth_residue_lift(params, s % sk.p, s % sk.q)
        assert x % n == s and gmpy2.powmod(x, (sk.p - 1) * (sk.q - 1), n2) == 1
    # round trips through both paths, and phe decrypts the key holder's ciphertexts
    vals = [0, 5, -(2**200), int(pk.max_int)]
    for rp in _paths(pk, sk).values():
        enc = vc.encrypt_array(pk, vals, randomness=rp)
        assert vc.decrypt_array(sk, enc).tolist() == vals
        assert [sk.to_phe().decrypt(x) for x in enc.to_phe()] == vals
        assert vc.decrypt_array(sk, vc.rerandomize(enc, randomness=rp)).tolist() == vals


def test_sampling_is_uniform_over_units(keys, monkeypatch):
    """Public path: r from secrets.randbelow(n), non-units rejected (gcd check). Key holder:
    s_p from randbelow(p - 1) + 1 and s_q from randbelow(q - 1) + 1, i.e. all of Z*_p, Z*_q."""
    pk, sk = keys
    n, n2 = pk.n, pk.nsquare
    draws = iter([0, int(sk.p), 3 * int(sk.q), 5])
    bounds = []

    def fake_randbelow(bound):
        bounds.append(bound)
        return next(draws)

    monkeypatch.setattr(secrets, "randbelow", fake_randbelow)
    assert parallel.uniform_obfuscators(n, 1) == [gmpy2.powmod(5, n, n2)]
    assert bounds == [int(n)] * 4
    bounds.clear()
    draws = iter([0, int(sk.q) - 2])
    params = vc.RandomnessPool(pk, private_key=sk)._crt
    (x,) = parallel.crt_uniform_obfuscators(params, 1)
    assert bounds == [int(sk.p) - 1, int(sk.q) - 1]
    assert x % sk.p == 1 and x % sk.q == sk.q - 1  # s_p = 0 + 1, s_q = (q - 2) + 1


def test_obfuscators_cover_all_legendre_classes_unlike_djn(keys):
    """(c) Uniform obfuscators hit all four (y|p), (y|q) sign pairs; DJN's h_n^a never more
    than two: the key holder sees that projection of every DJN obfuscator."""
    pk, sk = keys
    for path, rp in _paths(pk, sk).items():
        pairs = {_legendre_pair(y, sk) for y in rp.draw(DRAWS)}
        assert pairs == {(1, 1), (1, -1), (-1, 1), (-1, -1)}, path
    allowed = {(1, 1), (gmpy2.legendre(-1, sk.p), gmpy2.legendre(-1, sk.q))}
    for kwargs in (
        {"method": "djn"},
        {"short_exponent": True},
        {"method": "djn", "private_key": sk},
    ):
        djn = vc.RandomnessPool(pk, **kwargs)
        pairs = {_legendre_pair(y, sk) for y in djn.draw(DRAWS)}
        assert pairs <= allowed and len(pairs) <= 2, kwargs


def test_obfuscators_cover_the_order_3_subgroup_mod_p(key_3_divides_p_minus_1):
    """(c) With 3 | p - 1, the cubic character y^((p-1)/3) mod p of a uniform obfuscator
    takes all three values (it is that of r^n, and r -> r^n permutes Z*_p). For DJN it is
    chi(h_n)^a: stuck at 1 whenever h is a cube mod p (probability 1/3 per pool)."""
    pk, sk = key_3_divides_p_minus_1
    p, e = sk.p, (sk.p - 1) // 3
    for path, rp in _paths(pk, sk).items():
        chars = {gmpy2.powmod(y % p, e, p) for y in rp.draw(DRAWS)}
        assert len(chars) == 3, path
    djn = vc.RandomnessPool(pk, method="djn")
    base = gmpy2.powmod(djn._h_n % p, e, p)
    chars = {gmpy2.powmod(y % p, e, p) for y in djn.draw(DRAWS)}
    assert chars <= {gmpy2.mpz(1), base, base * base % p}
    if base == 1:
        assert chars == {1}


def test_precomputed_obfuscators_are_handed_out_once(keys):
    pk, sk = keys
    for rp in _paths(pk, sk).values():
        rp.precompute(5)
        assert rp.available == 5
        first = rp.draw(3)
        assert rp.available == 2
        rest = rp.draw(4)  # the 2 precomputed ones, then 2 computed now
        assert rp.available == 0 and len(set(first + rest)) == 7
        rp.precompute(2)
        rp.clear()
        assert rp.available == 0


def test_uniform_precompute_in_worker_pool(keys):
    pk, sk = keys
    pool = vc.WorkerPool(2, min_items=1)
    try:
        for rp in (
            vc.RandomnessPool(pk, pool=pool),
            vc.RandomnessPool(pk, private_key=sk, pool=pool),
        ):
            assert len(rp._chunks(pool, 6)) == 2  # really split across the workers
            rp.precompute(6)
            ys = rp.draw(6)
            assert len(set(ys)) == 6
            enc = vc.EncryptedArray.from_ciphertexts(ys, (6,), pk)
            assert vc.decrypt_array(sk, enc).tolist() == [0] * 6
    finally:
        pool.shutdown()
