"""Paillier keys: generation, precomputation and lossless conversion to and from ``phe``.

The engine uses the standard Paillier scheme with generator ``g = n + 1`` (the choice of
python-paillier), so ``g^m = 1 + m*n (mod n^2)`` needs no exponentiation and our ciphertexts
and ``phe``'s are interchangeable.

Key generation draws primes from :mod:`secrets` (the OS CSPRNG) and tests them with GMP's
``next_prime``/``is_prime`` (Miller-Rabin + BPSW). The :mod:`random` module is never used.
The default is 2048-bit ``n`` (about 112-bit security, NIST SP 800-57); shorter keys raise
:class:`InsecureKeyError` unless ``insecure_test_key=True``, a flag meant for tests only.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

import gmpy2
from gmpy2 import mpz
from phe import paillier

from vfl.crypto.errors import InsecureKeyError

#: Smallest modulus length accepted without ``insecure_test_key=True``.
MIN_SECURE_KEY_BITS = 2048
#: Smallest modulus length accepted at all (even in tests, below this the codec has no room).
MIN_TEST_KEY_BITS = 256


def _check_key_bits(key_bits: int, insecure_test_key: bool) -> None:
    if key_bits < MIN_TEST_KEY_BITS:
        raise InsecureKeyError(
            f"a {key_bits}-bit Paillier modulus is too small to be useful even in tests; "
            f"use at least {MIN_TEST_KEY_BITS} bits (and {MIN_SECURE_KEY_BITS} outside tests)"
        )
    if key_bits < MIN_SECURE_KEY_BITS and not insecure_test_key:
        raise InsecureKeyError(
            f"a {key_bits}-bit Paillier modulus is insecure; use key_bits >= "
            f"{MIN_SECURE_KEY_BITS}, or pass insecure_test_key=True in tests only"
        )


def fingerprint_of(n: int) -> bytes:
    """16-byte identifier of a public key (SHA-256 of the modulus, domain-separated)."""
    n = int(n)
    return hashlib.sha256(
        b"vfl-paillier-pk\x00" + n.to_bytes((n.bit_length() + 7) // 8, "big")
    ).digest()[:16]


@dataclass(frozen=True, eq=False)
class PublicKey:
    """A Paillier public key ``n`` (generator ``n + 1``) with precomputed values.

    ``max_int = n // 3 - 1`` is the signed plaintext bound, exactly as python-paillier
    defines ``PaillierPublicKey.max_int``: a residue ``x`` decodes to ``x`` when
    ``x <= max_int`` and to ``x - n`` when ``x >= n - max_int``; anything in between (a band
    of about ``n / 3`` residues) means an overflow happened. Both libraries therefore accept,
    decode and reject exactly the same plaintexts.
    """

    n: mpz
    nsquare: mpz = field(init=False)
    max_int: mpz = field(init=False)
    fingerprint: bytes = field(init=False)

    def __post_init__(self):
        n = mpz(self.n)
        if n < 3 or n % 2 == 0:
            raise ValueError("a Paillier modulus must be an odd integer >= 3")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "nsquare", n * n)
        object.__setattr__(self, "max_int", n // 3 - 1)  # as phe.PaillierPublicKey
        object.__setattr__(self, "fingerprint", fingerprint_of(n))

    @property
    def key_bits(self) -> int:
        return int(self.n.bit_length())

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed width of one serialized ciphertext: the byte length of ``n^2``."""
        return (int(self.nsquare.bit_length()) + 7) // 8

    def __eq__(self, other) -> bool:
        return isinstance(other, PublicKey) and self.n == other.n

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"PublicKey(bits={self.key_bits}, fingerprint={self.fingerprint.hex()})"

    # --- interop ---------------------------------------------------------------------------
    def to_phe(self) -> paillier.PaillierPublicKey:
        """The same key as a python-paillier object."""
        return paillier.PaillierPublicKey(int(self.n))

    @classmethod
    def from_phe(
        cls, pk: paillier.PaillierPublicKey, *, insecure_test_key: bool = False
    ) -> PublicKey:
        _check_key_bits(int(pk.n).bit_length(), insecure_test_key)
        return cls(mpz(pk.n))

    def to_bytes(self) -> bytes:
        """Big-endian ``n`` (what a transport ships to let others encrypt)."""
        return int(self.n).to_bytes((self.key_bits + 7) // 8, "big")

    @classmethod
    def from_bytes(cls, data: bytes, *, insecure_test_key: bool = False) -> PublicKey:
        n = int.from_bytes(data, "big")
        _check_key_bits(n.bit_length(), insecure_test_key)
        return cls(mpz(n))


@dataclass(frozen=True, eq=False, repr=False)
class PrivateKey:
    """A Paillier private key (primes ``p < q``) with CRT decryption constants.

    Decryption follows Paillier (1999), section 7: compute ``m mod p`` and ``m mod q`` with
    exponentiations modulo ``p^2`` and ``q^2`` (half-size moduli and exponents, about 4x
    cheaper than one exponentiation mod ``n^2``), then recombine with the CRT.
    """

    public_key: PublicKey
    p: mpz
    q: mpz
    psquare: mpz = field(init=False)
    qsquare: mpz = field(init=False)
    hp: mpz = field(init=False)
    hq: mpz = field(init=False)
    p_inv_q: mpz = field(init=False)

    def __post_init__(self):
        p, q = mpz(self.p), mpz(self.q)
        if p > q:
            p, q = q, p
        if p == q or p * q != self.public_key.n:
            raise ValueError("p and q must be two distinct primes whose product is the public n")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "psquare", p * p)
        object.__setattr__(self, "qsquare", q * q)
        g = self.public_key.n + 1
        # hp = L_p(g^(p-1) mod p^2)^-1 mod p, with L_p(x) = (x - 1) / p.
        object.__setattr__(self, "hp", gmpy2.invert((gmpy2.powmod(g, p - 1, p * p) - 1) // p, p))
        object.__setattr__(self, "hq", gmpy2.invert((gmpy2.powmod(g, q - 1, q * q) - 1) // q, q))
        object.__setattr__(self, "p_inv_q", gmpy2.invert(p, q))

    def __repr__(self) -> str:  # never print the primes
        pub = self.public_key
        return f"PrivateKey(bits={pub.key_bits}, fingerprint={pub.fingerprint.hex()})"

    def crt_params(self) -> tuple:
        """The values a worker process needs to decrypt (picklable mpz tuple)."""
        return (self.p, self.q, self.psquare, self.qsquare, self.hp, self.hq, self.p_inv_q)

    def to_phe(self) -> paillier.PaillierPrivateKey:
        return paillier.PaillierPrivateKey(self.public_key.to_phe(), int(self.p), int(self.q))

    @classmethod
    def from_phe(
        cls, sk: paillier.PaillierPrivateKey, *, insecure_test_key: bool = False
    ) -> PrivateKey:
        pub = PublicKey.from_phe(sk.public_key, insecure_test_key=insecure_test_key)
        return cls(pub, mpz(sk.p), mpz(sk.q))


def _random_prime(bits: int) -> mpz:
    while True:
        # Top two bits set so that p*q has exactly 2*bits bits; bottom bit set (odd).
        candidate = mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)) | 1
        p = gmpy2.next_prime(candidate)
        if p.bit_length() == bits and gmpy2.is_prime(p, 50):
            return p


def generate_keypair(
    key_bits: int = MIN_SECURE_KEY_BITS, *, insecure_test_key: bool = False
) -> tuple[PublicKey, PrivateKey]:
    """Generate a Paillier key pair with an ``key_bits``-bit modulus.

    Raises :class:`InsecureKeyError` for ``key_bits < 2048`` unless ``insecure_test_key`` is
    set (tests only). Primes have equal length, so ``gcd(n, (p-1)(q-1)) = 1`` holds.
    """
    key_bits = int(key_bits)
    _check_key_bits(key_bits, insecure_test_key)
    if key_bits % 2:
        raise ValueError("key_bits must be even (two primes of key_bits/2 bits each)")
    half = key_bits // 2
    while True:
        p, q = _random_prime(half), _random_prime(half)
        if p != q and (p * q).bit_length() == key_bits:
            break
    pub = PublicKey(p * q)
    return pub, PrivateKey(pub, p, q)


def crt_decrypt(params: tuple, ciphertexts) -> list:
    """Raw Paillier decryption of many ciphertexts with CRT; returns residues mod n.

    ``params`` is :meth:`PrivateKey.crt_params` (plain mpz values, so worker processes can
    receive it). ``m_p = L_p(c^(p-1) mod p^2) * hp mod p`` (and likewise mod q), recombined
    as ``m = m_p + p * ((m_q - m_p) * p^-1 mod q)``.
    """
    p, q, p2, q2, hp, hq, p_inv_q = params
    pm1, qm1 = p - 1, q - 1
    powmod = gmpy2.powmod
    out = []
    for c in ciphertexts:
        mp = (powmod(c % p2, pm1, p2) - 1) // p * hp % p
        mq = (powmod(c % q2, qm1, q2) - 1) // q * hq % q
        out.append(mp + (mq - mp) * p_inv_q % q * p)
    return out
