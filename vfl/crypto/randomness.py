"""Bulk Paillier randomness: the obfuscators ``r^n mod n^2``.

Encrypting ``m`` is ``c = (1 + m*n) * r^n mod n^2``. The product ``1 + m*n`` is free; the cost
is the obfuscator ``r^n``. :func:`~vfl.crypto.encrypt_array`, :func:`~vfl.crypto.rerandomize`
and :func:`~vfl.crypto.pack_masked` take them from a :class:`RandomnessPool`.

Default: a uniformly random ``n``-th residue (``method="uniform"``)
-----------------------------------------------------------------------
Each obfuscator is ``r^n mod n^2`` for a fresh ``r`` uniform in ``Z*_n`` (drawn with
:mod:`secrets`, rejected unless ``gcd(r, n) = 1``), i.e. *exactly* uniform over the group
of ``n``-th residues. Two computations of that same distribution:

* **public key** (any party): ``powmod(r, n, n^2)``, a full-length exponent modulo a
  4096-bit number at 2048 bits;
* **key holder** (``private_key=``, a party encrypting under its *own* key): ``s`` uniform in
  ``Z*_n`` (``s mod p``, ``s mod q`` drawn directly) is lifted to the unique ``n``-th
  residue congruent to ``s`` modulo ``n``: ``s^p mod p^2`` and ``s^q mod q^2`` recombined
  with the CRT (:func:`~vfl.crypto.parallel.nth_residue_lift`). Reduction mod ``n`` is a
  bijection from the ``n``-th residues onto ``Z*_n``, so this is the same uniform
  distribution; for any public obfuscator ``y`` the lift of ``y mod n`` is ``y`` itself.
  Cost: two half-length exponents modulo half-size moduli. The primes never leave the
  process except to the party's own workers.

Why uniform, and not a fixed-base DJN table. The key holder can strip the obfuscator from
every ciphertext it receives (it decrypts ``m`` and computes ``c * (1 - m*n)``, even ``r``
itself), and since it knows ``p`` and ``q`` it can take discrete logarithms in every
small-order subgroup of ``Z*_{p^2}`` and ``Z*_{q^2}`` (Pohlig-Hellman, for small primes
``l | (p-1)(q-1)``), so against it only the *exact* distribution of an obfuscator counts,
not computational assumptions. A passive party that re-randomizes ``J^T [[delta]]`` (whose
own randomness ``prod_i r_i^(M_ji)`` the key holder can compute, having made
``[[delta]]``) or adds a fresh encryption of a mask must therefore multiply in a *uniform*
``n``-th residue: the randomness the key holder then sees is a one-time pad in that group,
so beyond the plaintext it learns nothing about ``M`` or about the passive party's
randomness, information-theoretically.

Opt-in: Damgard-Jurik-Nielsen fixed-base randomness (``method="djn"``)
-----------------------------------------------------------------------
Following Damgard, Jurik and Nielsen ("A generalization of Paillier's public-key system with
applications to electronic voting", IJIS 2010, section 4) a pool fixes a secret
``h = -x^2 mod n`` and precomputes ``h_n = h^n mod n^2``; an obfuscator is ``h_n^a`` for a
fresh ``a``, from a fixed-base table (:class:`FixedBaseTable`: one multiplication per window
digit, no squarings). Full-length ``a`` (``key_bits + 64`` bits) by default, or
``short_exponent=True``: ``a`` of ``SHORT_EXPONENT_BITS`` = 256 bits.

Its values are *not* uniform ``n``-th residues: they all lie in the cyclic group generated
by ``h_n``, always a proper subgroup (the ``n``-th residues are isomorphic to ``Z*_n``,
which is not cyclic), and with ordinary (non-safe) primes ``p - 1`` has many small prime
factors ``l``. For each, the key holder computes the projection ``(h_n^a)^((p-1)/l)`` of an
obfuscator onto the order-``l`` subgroup mod ``p``. Where ``h`` is not an ``l``-th power
mod ``p`` that reveals ``a mod l``; where it is, that component of *every* obfuscator of the
pool is 1, so nothing masks that component of the ciphertext being re-randomized (for
``l = 2`` this is certain when ``p = 1 mod 4``, ``-x^2`` being a square; in general the
Legendre symbols of ``h_n^a`` mod ``p`` and mod ``q`` both depend on ``a mod 2`` alone,
whereas for a uniform ``r^n`` they are independent and uniform). With short exponents a key
holder that chose ``p - 1`` smooth recovers ``a`` outright (Pohlig-Hellman and the CRT).
Security of DJN therefore rests on DCR *plus* the assumption that nobody who can
factor ``n`` ever sees the obfuscators (and, for short exponents, the short-exponent
indistinguishability assumption of DJN). **It must not be used by a party that encrypts or
re-randomizes under another party's key**; it is acceptable only for the key holder
encrypting under its own key (``private_key=`` then selects the CRT form of the same
values, which are identical to the public computation for the same ``h`` and ``a``).

Costs per obfuscator at 2048 bits, one core, gmpy2 (``precompute(100)`` on a serial pool,
best of three runs on a shared 2-core machine, so +-20%; :data:`MEASURED_COST_MS`):

=============================================  =========  ===============================
obfuscator                                     ms each    one-off setup
=============================================  =========  ===============================
uniform, public key (``powmod(r, n, n^2)``)    12.0       none
uniform, key holder (CRT lift)                 3.5        none (3.4x cheaper than public)
DJN full-length, public table                  2.2        0.25 s, ~20 MB table
DJN full-length, key holder CRT tables         0.7        0.14 s
DJN short exponent, public table               0.21       0.05 s
DJN short exponent, key holder CRT tables      0.17       0.14 s
=============================================  =========  ===============================

So the default costs a passive party ~5x the old full-length DJN default per obfuscator;
precompute them off the critical path, and note that :func:`~vfl.crypto.pack_masked` needs
only one per *packed* ciphertext.

A :class:`RandomnessPool` precomputes obfuscators in bulk (:meth:`RandomnessPool.precompute`,
spread over the process pool): they do not depend on the plaintext, so online encryption
costs one modular multiplication per value. Each obfuscator is handed out once and then
dropped.
"""

from __future__ import annotations

import secrets
from collections import deque

import gmpy2
from gmpy2 import mpz

from vfl.crypto.errors import WrongKeyError
from vfl.crypto.fixedbase import FixedBaseTable
from vfl.crypto.keys import PrivateKey, PublicKey
from vfl.crypto.parallel import (
    WorkerPool,
    crt_obfuscators,
    crt_uniform_obfuscators,
    resolve_pool,
    split,
    task_obfuscators,
    task_obfuscators_crt,
    task_obfuscators_uniform,
    task_obfuscators_uniform_crt,
    uniform_obfuscators,
)

#: Obfuscator methods: ``"uniform"`` (default, exactly uniform ``n``-th residues) and
#: ``"djn"`` (opt-in fixed-base ``h_n^a``; see the module docstring for its extra assumption).
METHODS = ("uniform", "djn")
#: Length of ``a`` in the DJN short-exponent mode (2 x 128-bit security, after DJN).
SHORT_EXPONENT_BITS = 256
#: Extra bits of ``a`` beyond the key length in the DJN full-length mode.
FULL_EXPONENT_SLACK_BITS = 64
#: Pool work items per obfuscator (the pool's unit is about one DJN CRT obfuscator; a CRT
#: decryption counts 8). A uniform CRT obfuscator costs as much as a CRT decryption (two
#: half-size exponentiations with half-length exponents), a public one about 3x more.
WORK_ITEMS = {"uniform": 24, "uniform_crt": 8, "djn": 1, "djn_crt": 1}
#: Measured milliseconds per obfuscator at 2048 bits (one core; see the module docstring).
MEASURED_COST_MS = {
    "uniform_public": 12.0,
    "uniform_key_holder_crt": 3.5,
    "djn_full_public": 2.2,
    "djn_full_key_holder_crt": 0.7,
    "djn_short_public": 0.21,
    "djn_short_key_holder_crt": 0.17,
}


def _random_unit(n: mpz) -> mpz:
    while True:
        x = mpz(secrets.randbelow(int(n) - 2) + 2)
        if gmpy2.gcd(x, n) == 1:
            return x


class RandomnessPool:
    """Source of Paillier obfuscators (``n``-th residues mod ``n^2``) for one public key.

    ``method="uniform"`` (the default) gives exactly uniform ``n``-th residues ``r^n``; with
    ``private_key`` (the key holder, encrypting under its own key) they are computed by the
    CRT, same distribution, about 3.4x cheaper. Use it whenever the ciphertexts go to, or
    derive from, another party's key.

    ``method="djn"`` selects the opt-in Damgard-Jurik-Nielsen fixed-base obfuscators
    ``h_n^a``, full-length ``a`` by default or 256-bit ``a`` with ``short_exponent=True``
    (which implies ``method="djn"``). They are confined to the subgroup generated by ``h_n``,
    which a holder of the factorization can see (module docstring): **never use them to
    encrypt or re-randomize under another party's key.** ``window`` sets the DJN table's
    digit width (default 7 bits, 8 for short exponents and the CRT tables).

    ``pool`` parallelizes :meth:`precompute` and large :meth:`draw` calls.
    """

    def __init__(
        self,
        public_key: PublicKey,
        *,
        method: str | None = None,
        short_exponent: bool = False,
        window: int | None = None,
        pool: WorkerPool | int | None = None,
        private_key: PrivateKey | None = None,
    ):
        self.public_key = public_key
        if private_key is not None and private_key.public_key != public_key:
            raise WrongKeyError("the private key does not match the RandomnessPool's public key")
        self.short_exponent = bool(short_exponent)
        if method is None:
            method = "djn" if self.short_exponent else "uniform"
        if method not in METHODS:
            raise ValueError(f"unknown randomness method {method!r}; use one of {METHODS}")
        if method == "uniform" and (self.short_exponent or window is not None):
            raise ValueError(
                "short_exponent and window apply to the opt-in method='djn' only; the default "
                "uniform obfuscators need neither"
            )
        self.method = method
        n, n2 = public_key.n, public_key.nsquare
        self._pool = pool
        self._store: deque = deque()
        self._table: FixedBaseTable | None = None
        self._crt: tuple | None = None
        self._h_n: mpz | None = None
        self.exp_bits: int | None = None
        self.window: int | None = None
        if method == "uniform":
            if private_key is not None:
                p, q = private_key.p, private_key.q
                p2, q2 = private_key.psquare, private_key.qsquare
                self._crt = (p, q, p2, q2, gmpy2.invert(p2, q2))
            return
        if self.short_exponent:
            self.exp_bits = SHORT_EXPONENT_BITS
        else:
            self.exp_bits = public_key.key_bits + FULL_EXPONENT_SLACK_BITS
        self.window = int(window or (8 if self.short_exponent else 7))
        x = _random_unit(n)
        h = (-(x * x)) % n  # DJN: h = -x^2 mod n
        self._h_n = gmpy2.powmod(h, n, n2)
        if private_key is not None:
            p2, q2 = private_key.psquare, private_key.qsquare
            self._crt = (
                self._h_n % p2,
                p2,
                private_key.p - 1,
                self._h_n % q2,
                q2,
                private_key.q - 1,
                self.exp_bits,
                int(window or 8),
                gmpy2.invert(p2, q2),
            )

    @property
    def uses_crt(self) -> bool:
        """True when obfuscators are computed with the private key (key holder only)."""
        return self._crt is not None

    @property
    def available(self) -> int:
        """Number of precomputed obfuscators ready to use."""
        return len(self._store)

    def _local_table(self) -> FixedBaseTable:
        if self._table is None:
            self._table = FixedBaseTable(
                self._h_n, self.public_key.nsquare, self.exp_bits, self.window
            )
        return self._table

    def _chunks(self, wp: WorkerPool, count: int) -> list[int]:
        """Chunk sizes for ``count`` obfuscators (one chunk = serial)."""
        kind = self.method + ("_crt" if self._crt is not None else "")
        parts = wp.parallel_for(count * WORK_ITEMS[kind])
        if parts == 1:
            return [count]
        return [len(c) for c in split(range(count), parts)]

    def _generate(self, count: int, pool) -> list:
        if count <= 0:
            return []
        wp = resolve_pool(self._pool if pool is None else pool)
        sizes = self._chunks(wp, count)
        if self.method == "uniform":
            if self._crt is not None:
                fn, serial, arg = task_obfuscators_uniform_crt, crt_uniform_obfuscators, self._crt
            else:
                fn, serial, arg = task_obfuscators_uniform, uniform_obfuscators, self.public_key.n
            if len(sizes) == 1:
                return serial(arg, count)
            tasks = [(arg, s) for s in sizes]
        elif self._crt is not None:
            if len(sizes) == 1:
                return crt_obfuscators(self._crt, count)
            fn, tasks = task_obfuscators_crt, [(self._crt, s) for s in sizes]
        else:
            if len(sizes) == 1:
                table = self._local_table()
                return [table.pow(secrets.randbits(self.exp_bits)) for _ in range(count)]
            n2 = self.public_key.nsquare
            fn = task_obfuscators
            tasks = [(self._h_n, n2, self.exp_bits, self.window, s) for s in sizes]
        out = []
        for chunk in wp.map(fn, tasks):
            out.extend(chunk)
        return out

    def precompute(self, count: int, *, pool=None) -> None:
        """Compute ``count`` more obfuscators now (e.g. while waiting for the network), in
        parallel over the process pool when there are enough."""
        self._store.extend(self._generate(int(count), pool))

    def clear(self) -> None:
        """Drop every precomputed obfuscator (they are secret: never reuse or persist them)."""
        self._store.clear()

    def draw(self, count: int, *, pool=None) -> list:
        """``count`` fresh obfuscators: precomputed ones first (each handed out once and
        dropped from the pool), the rest computed now."""
        count = int(count)
        take = min(count, len(self._store))
        out = [self._store.popleft() for _ in range(take)]
        out.extend(self._generate(count - take, pool))
        return out
