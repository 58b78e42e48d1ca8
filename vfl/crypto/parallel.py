"""A process pool for the engine's heavy loops (encryption randomness, decryption, matvec).

gmpy2 arithmetic holds the GIL, so parallelism needs processes. :class:`WorkerPool` wraps a
``concurrent.futures.ProcessPoolExecutor`` (``os.cpu_count()`` workers by default) created
lazily on first parallel use and reused afterwards. Work smaller than ``min_items`` runs
serially in the caller: process start-up and pickling cost milliseconds, one encryption
costs about one.

Workers start with the ``forkserver`` method where available (``spawn`` otherwise): forking a
process that runs JAX threads can deadlock. Tasks carry only plain values (``mpz`` pickles,
ints, numpy arrays); workers cache per-key fixed-base tables (opt-in DJN randomness only:
the default uniform obfuscators need none) so that a table is built once per worker, not
once per task. Randomness inside workers comes from :mod:`secrets` (the OS CSPRNG), so no
generator state is shared or duplicated between processes.

As with any ``spawn``/``forkserver`` pool, a script that triggers parallel work must guard
its entry point with ``if __name__ == "__main__":``. If the pool breaks (a worker dies, or
the guard is missing), the engine warns once and continues serially: results never depend
on the pool.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import gmpy2

from vfl.crypto.fixedbase import FixedBaseTable
from vfl.crypto.keys import crt_decrypt
from vfl.crypto.multiexp import matvec

DEFAULT_MIN_ITEMS = 32


class WorkerPool:
    """Process pool with a serial fallback for small work.

    ``max_workers``: number of processes (default ``os.cpu_count()``); ``1`` means always
    serial. ``min_items``: below this many items (ciphertexts, or matrix entries / 64 for
    matvec) work runs in the calling process.
    """

    def __init__(self, max_workers: int | None = None, *, min_items: int = DEFAULT_MIN_ITEMS):
        self.max_workers = int(max_workers or os.cpu_count() or 1)
        if self.max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self.min_items = int(min_items)
        self._executor: ProcessPoolExecutor | None = None

    def parallel_for(self, items: int) -> int:
        """How many chunks to split ``items`` of work into (1 = serial)."""
        if self.max_workers <= 1 or items < max(self.min_items, 2):
            return 1
        return min(self.max_workers, items)

    def _get(self) -> ProcessPoolExecutor:
        if self._executor is None:
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
            self._executor = ProcessPoolExecutor(max_workers=self.max_workers, mp_context=ctx)
        return self._executor

    def map(self, fn, tasks: list) -> list:
        """Run ``fn(*task)`` for each task; in processes when there is more than one task."""
        if len(tasks) <= 1 or self.max_workers <= 1:
            return [fn(*t) for t in tasks]
        try:
            futures = [self._get().submit(fn, *t) for t in tasks]
            return [f.result() for f in futures]
        except (BrokenProcessPool, RuntimeError, OSError) as exc:
            warnings.warn(
                f"Paillier worker pool failed ({exc.__class__.__name__}); continuing serially. "
                "Guard the script's entry point with `if __name__ == '__main__':`",
                RuntimeWarning,
                stacklevel=3,
            )
            self.shutdown()
            self.max_workers = 1
            return [fn(*t) for t in tasks]

    def warm_up(self) -> None:
        """Start the worker processes now (so that timings exclude start-up)."""
        if self.max_workers > 1:
            list(self._get().map(_noop, range(self.max_workers)))

    def shutdown(self) -> None:
        if self._executor is not None:
            try:
                self._executor.shutdown(wait=True, cancel_futures=True)
            finally:
                self._executor = None


def _noop(_):
    return None


_DEFAULT: WorkerPool | None = None


def default_pool() -> WorkerPool:
    """The shared pool used when an engine call gets ``pool=None``."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = WorkerPool()
    return _DEFAULT


def set_default_workers(
    max_workers: int | None, *, min_items: int = DEFAULT_MIN_ITEMS
) -> WorkerPool:
    """Replace the default pool (e.g. ``set_default_workers(1)`` to force serial work)."""
    global _DEFAULT
    if _DEFAULT is not None:
        _DEFAULT.shutdown()
    _DEFAULT = WorkerPool(max_workers, min_items=min_items)
    return _DEFAULT


def resolve_pool(pool) -> WorkerPool:
    if pool is None:
        return default_pool()
    if isinstance(pool, WorkerPool):
        return pool
    if isinstance(pool, int):
        return WorkerPool(pool)
    raise TypeError("pool must be a WorkerPool, an int (number of workers) or None")


@atexit.register
def _shutdown_default():
    if _DEFAULT is not None:
        _DEFAULT.shutdown()


def split(seq, parts: int) -> list:
    """Split a sequence into ``parts`` contiguous chunks of near-equal size."""
    n = len(seq)
    parts = max(1, min(parts, n)) if n else 1
    bounds = [n * k // parts for k in range(parts + 1)]
    return [seq[bounds[k] : bounds[k + 1]] for k in range(parts)]


# --- worker-side tasks ---------------------------------------------------------------------
_TABLES: dict = {}


def cached_table(base, modulus, exp_bits: int, window: int) -> FixedBaseTable:
    key = (int(base), int(modulus), exp_bits, window)
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= 4:  # a party rarely holds more than a couple of keys
            _TABLES.pop(next(iter(_TABLES)))
        table = _TABLES[key] = FixedBaseTable(base, modulus, exp_bits, window)
    return table


def task_obfuscators(base, modulus, exp_bits: int, window: int, count: int) -> list:
    """``count`` values ``base ** a`` with fresh uniform ``a < 2**exp_bits`` from secrets
    (the opt-in DJN obfuscators of :class:`~vfl.crypto.randomness.RandomnessPool`)."""
    import secrets

    table = cached_table(base, modulus, exp_bits, window)
    return [table.pow(secrets.randbits(exp_bits)) for _ in range(count)]


def crt_obfuscators(params: tuple, count: int) -> list:
    """``count`` DJN obfuscators ``h_n ** a mod n^2`` computed with the factorization of ``n``.

    ``params = (base_p, p^2, p - 1, base_q, q^2, q - 1, exp_bits, window, (p^2)^-1 mod q^2)``
    with ``base_p = h_n mod p^2`` (likewise for ``q``). ``a`` is drawn exactly as in the public
    path (uniform below ``2**exp_bits``, from :mod:`secrets`); since ``h_n mod p^2`` lies in
    the subgroup of order ``p - 1``, ``h_n ** a = base_p ** (a mod (p - 1)) (mod p^2)``, so
    each side is a half-length exponent modulo a half-size modulus, and the CRT recombines
    the *same value* the public computation would give.
    """
    import secrets

    base_p, p2, pm1, base_q, q2, qm1, exp_bits, window, p2_inv = params
    tp = cached_table(base_p, p2, int(pm1.bit_length()), window)
    tq = cached_table(base_q, q2, int(qm1.bit_length()), window)
    out = []
    for _ in range(count):
        a = secrets.randbits(exp_bits)
        xp = tp.pow(a % pm1)
        xq = tq.pow(a % qm1)
        out.append(xp + (xq - xp) * p2_inv % q2 * p2)
    return out


def task_obfuscators_crt(params: tuple, count: int) -> list:
    return crt_obfuscators(params, count)


def uniform_obfuscators(n, count: int) -> list:
    """``count`` obfuscators ``r^n mod n^2`` with ``r`` uniform in ``Z*_n`` (public key only).

    ``r`` is drawn with :func:`secrets.randbelow` below ``n`` and kept only when
    ``gcd(r, n) = 1`` (rejection sampling: exactly uniform over the units), so the output is
    exactly uniform over the ``n``-th residues (``r -> r^n mod n^2`` is a bijection from
    ``Z*_n`` onto them).
    """
    import secrets

    n = gmpy2.mpz(n)
    n2, bound = n * n, int(n)
    out = []
    while len(out) < count:
        r = gmpy2.mpz(secrets.randbelow(bound))
        if gmpy2.gcd(r, n) == 1:
            out.append(gmpy2.powmod(r, n, n2))
    return out


def nth_residue_lift(params: tuple, s_p, s_q):
    """The unique ``n``-th residue ``x mod n^2`` with ``x = s (mod n)``, where ``s`` is given
    by ``s_p = s mod p`` and ``s_q = s mod q`` (both non-zero). Needs the factorization.

    ``params = (p, q, p^2, q^2, (p^2)^-1 mod q^2)``. Modulo ``p^2`` the ``n``-th residues are
    the subgroup of order ``p - 1``, and its element congruent to ``s_p`` modulo ``p`` is
    ``s_p^p mod p^2`` (``s_p^p = s_p (mod p)`` by Fermat, and ``(s_p^p)^(p-1) = 1 (mod p^2)``);
    likewise modulo ``q^2``; the CRT recombines. Reduction modulo ``n`` is a bijection from
    the ``n``-th residues onto ``Z*_n`` (its kernel ``{1 + kn}`` has order ``n``, coprime to
    ``phi(n)``), so for the public obfuscator ``y = r^n mod n^2`` we get exactly
    ``nth_residue_lift(y mod p, y mod q) == y``.
    """
    p, q, p2, q2, p2_inv = params
    xp = gmpy2.powmod(s_p, p, p2)
    xq = gmpy2.powmod(s_q, q, q2)
    return xp + (xq - xp) * p2_inv % q2 * p2


def crt_uniform_obfuscators(params: tuple, count: int) -> list:
    """``count`` uniform ``n``-th residues computed by the key holder (``params`` as in
    :func:`nth_residue_lift`).

    ``s_p`` and ``s_q`` are uniform in ``[1, p)`` and ``[1, q)`` (:mod:`secrets`), i.e. ``s``
    is uniform in ``Z*_n``; lifting is a bijection, so the output has *exactly* the
    distribution of :func:`uniform_obfuscators` (a uniform ``n``-th residue), at the cost of
    two exponentiations with half-length exponents (``p``, ``q``) modulo half-size moduli.
    """
    import secrets

    p, q = params[0], params[1]
    pm1, qm1 = int(p) - 1, int(q) - 1
    return [
        nth_residue_lift(
            params,
            gmpy2.mpz(secrets.randbelow(pm1) + 1),
            gmpy2.mpz(secrets.randbelow(qm1) + 1),
        )
        for _ in range(count)
    ]


def task_obfuscators_uniform(n, count: int) -> list:
    return uniform_obfuscators(n, count)


def task_obfuscators_uniform_crt(params: tuple, count: int) -> list:
    return crt_uniform_obfuscators(params, count)


def task_decrypt(params: tuple, ciphertexts: list) -> list:
    return crt_decrypt(params, ciphertexts)


def task_matvec(method: str, matrix, bases: list, modulus, param) -> list:
    return matvec(method, matrix, bases, modulus, param)


def pack_horner(chunks: list, slot_bits: int, modulus) -> list:
    """Per chunk ``[c_0, ..., c_k]``: ``prod_j c_j ** (2 ** (j * slot_bits))`` by Horner's
    rule (``slot_bits`` squarings per slot inside one ``powmod``)."""
    step = gmpy2.mpz(1) << slot_bits
    out = []
    for chunk in chunks:
        acc = chunk[-1]
        for c in reversed(chunk[:-1]):
            acc = gmpy2.powmod(acc, step, modulus) * c % modulus
        out.append(acc)
    return out


def task_pack(chunks: list, slot_bits: int, modulus) -> list:
    return pack_horner(chunks, slot_bits, modulus)
