"""The vectorized simulation engine: all sampled clients' local training in one program.

In a deployment every client runs :func:`horizontal.client_update.make_local_train` on its own
hardware. In the in-memory simulation the clients hand their local job (their own arrays
and the global model they received) to one shared :class:`LocalExecutor`, the stand-in for
their devices. The server still talks to every client through serialized messages: the
executor only batches the arithmetic, and each client encodes its own update afterwards,
so byte counts and the transcript are exactly those of the per-client protocol.

``mode="vectorized"`` pads every client's rows to ``n_rows`` and its steps to ``n_steps``
(with masks, so padding never changes a result) and runs ``jit(vmap(train))`` over chunks of
``chunk`` clients (dummy clients with no active step fill the last chunk). With the shape
hints set from the public client sizes (:meth:`configure`), every round of a run has the
same shapes and compiles once. Chunks bound memory (``chunk`` is capped so a chunk's
inputs stay under ``max_chunk_bytes``) and use every core (chunks are dispatched
asynchronously and run concurrently). A client's result does not depend on which chunk or
slot it lands in: the vmapped program computes each slot independently.

``mode="loop"`` runs ``jit(train)`` per client, in turn, as a non-vectorized engine would.
Both produce the same parameters within float tolerance (``tests/test_horizontal.py``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from horizontal.client_update import compiled
from horizontal.errors import FedConfigError

MODES = ("vectorized", "loop")


@dataclass
class LocalJob:
    spec: tuple
    w_start: np.ndarray  # (P,)
    anchor: np.ndarray  # (P,)
    corr: np.ndarray  # (P,)
    mu: float
    x: np.ndarray  # (n, d)
    y: np.ndarray  # (n,)
    pos: np.ndarray  # (S, B) int32
    bmask: np.ndarray  # (S, B) float32
    active: np.ndarray  # (S,) bool
    # record-level DP (a spec ending in ("dp-sgd", clip, sigma)): the round's noise key as
    # uint32[2] key data, from the client's own secret, and the expected batch size
    key: np.ndarray | None = None
    expected_batch: float = 0.0


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


def _width(job: LocalJob) -> int:
    """The batch width a job runs at: its own, or for record-level DP (each client has its
    own Poisson capacity) rounded up to a multiple of 64, so clients share one program."""
    w = job.pos.shape[1]
    return _round_up(w, 64) if len(job.spec) > 7 else w


def _dp_args(job: LocalJob) -> tuple:
    """The two extra arguments of a record-level DP program (none otherwise)."""
    if len(job.spec) <= 7:
        return ()
    if job.key is None or not job.expected_batch > 0:
        raise FedConfigError("a record-level DP job needs its noise key and expected batch size")
    return np.asarray(job.key, np.uint32).reshape(2), np.float32(job.expected_batch)


class LocalExecutor:
    def __init__(self, mode: str = "vectorized", *, max_chunk_bytes: int = 256 * 2**20,
                 parallel: int | None = None):
        if mode not in MODES:
            raise FedConfigError(f"executor mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.max_chunk_bytes = max_chunk_bytes
        self.parallel = max(1, parallel or os.cpu_count() or 1)
        self.n_rows = 0
        self.n_steps = 0
        self.chunk = 1
        self._jobs: list[LocalJob] = []
        self._pending: list[int] = []
        self._results: dict[int, tuple[np.ndarray, float] | None] = {}
        self._next_ticket = 0
        self.programs_run = 0  # compiled-program invocations (one per chunk or per client)
        self.seconds = 0.0  # wall time spent in local training (benchmarks)

    def configure(self, n_rows: int, n_steps: int, clients_per_round: int) -> None:
        """Shape hints from public sizes, so every round reuses one compiled program.

        A round's clients are cut into ``parallel`` equal chunks (one per core; XLA runs
        each small-matrix program on one thread, so concurrent chunks use the machine)."""
        self.n_rows = _round_up(n_rows, 64)
        self.n_steps = _round_up(n_steps, 8)
        self.chunk = max(1, -(-max(1, clients_per_round) // self.parallel))

    # -- the client-facing interface ----------------------------------------------------
    def submit(self, job: LocalJob) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        if self.mode == "loop":
            t0 = time.perf_counter()
            self._results[ticket] = self._run_one(job)
            self.seconds += time.perf_counter() - t0
        else:
            self._jobs.append(job)
            self._pending.append(ticket)
            self._results[ticket] = None  # filled by flush()
        return ticket

    def run_now(self, job: LocalJob) -> tuple[np.ndarray, float]:
        """Run one job immediately (local fine-tuning, one-off work)."""
        return self._run_one(job)

    def result(self, ticket: int) -> tuple[np.ndarray, float]:
        out = self._results.pop(ticket, None)
        if out is None:
            raise FedConfigError(
                f"local job {ticket} has no result; the engine must flush() between the "
                "fit requests and the collection of updates"
            )
        return out

    def flush(self) -> None:
        """Run every pending job (vectorized mode); a no-op in loop mode."""
        if not self._jobs:
            return
        t0 = time.perf_counter()
        jobs, tickets = self._jobs, self._pending
        self._jobs, self._pending = [], []
        by_spec: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            by_spec.setdefault(job.spec, []).append(i)
        for spec, idx in by_spec.items():
            outs = self._run_vectorized(spec, [jobs[i] for i in idx])
            for i, out in zip(idx, outs):
                self._results[tickets[i]] = out
        self.seconds += time.perf_counter() - t0

    # -- engines ------------------------------------------------------------------------
    def _run_one(self, job: LocalJob, pad: bool = True):
        """One client through ``jit(train)``. Padded to the same shape hints as the vectorized
        path, so a loop over clients of unequal size also compiles once."""
        single, _ = compiled(job.spec)
        x, y, pos, bmask, active = job.x, job.y, job.pos, job.bmask, job.active
        if pad and self.n_rows:
            n_pad = max(self.n_rows, _round_up(len(y), 64))
            s_pad = max(self.n_steps, _round_up(len(active), 8))
            x = np.zeros((n_pad, x.shape[1]), np.float32)
            x[: len(y)] = job.x
            y = np.zeros((n_pad,), job.y.dtype)
            y[: len(job.y)] = job.y
            s, w, wb = len(active), _width(job), pos.shape[1]
            pos = np.zeros((s_pad, w), np.int32)
            pos[:s, :wb] = job.pos
            bmask = np.zeros((s_pad, w), np.float32)
            bmask[:s, :wb] = job.bmask
            active = np.zeros((s_pad,), bool)
            active[:s] = job.active
        w, loss = single(job.w_start, job.anchor, job.corr, np.float32(job.mu), x, y, pos,
                         bmask, active, *_dp_args(job))
        self.programs_run += 1
        return np.asarray(w), float(loss)

    def _run_vectorized(self, spec, jobs: list[LocalJob]):
        _, batched = compiled(spec)
        n_pad = max(self.n_rows, _round_up(max(len(j.y) for j in jobs), 64))
        s_pad = max(self.n_steps, _round_up(max(len(j.active) for j in jobs), 8))
        # Batch widths may differ (record-level DP: each client's Poisson capacity); padding
        # columns have mask 0 and contribute exact zeros.
        d, p = jobs[0].x.shape[1], len(jobs[0].w_start)
        b = max(_width(j) for j in jobs)
        dp = len(spec) > 7
        per_client = 4 * (n_pad * (d + 1) + s_pad * b * 2 + s_pad + 3 * p
                          + (b * p if dp else 0))  # DP: one step's per-example gradients
        chunk = max(1, min(self.chunk or len(jobs), self.max_chunk_bytes // per_client))
        pending = []
        for start in range(0, len(jobs), chunk):
            part = jobs[start : start + chunk]
            k = chunk
            w0 = np.zeros((k, p), np.float32)
            anchor = np.zeros((k, p), np.float32)
            corr = np.zeros((k, p), np.float32)
            mu = np.zeros((k,), np.float32)
            x = np.zeros((k, n_pad, d), np.float32)
            y = np.zeros((k, n_pad), part[0].y.dtype)
            pos = np.zeros((k, s_pad, b), np.int32)
            bmask = np.zeros((k, s_pad, b), np.float32)
            active = np.zeros((k, s_pad), bool)
            keys = np.zeros((k, 2), np.uint32)
            expected = np.ones((k,), np.float32)
            for i, j in enumerate(part):
                n, s, wb = len(j.y), len(j.active), j.pos.shape[1]
                w0[i], anchor[i], corr[i], mu[i] = j.w_start, j.anchor, j.corr, j.mu
                x[i, :n], y[i, :n] = j.x, j.y
                pos[i, :s, :wb], bmask[i, :s, :wb], active[i, :s] = j.pos, j.bmask, j.active
                if dp:
                    keys[i], expected[i] = _dp_args(j)
            extra = (keys, expected) if dp else ()
            # Dispatch without waiting: JAX runs the chunks concurrently, one per core.
            pending.append((len(part), batched(w0, anchor, corr, mu, x, y, pos, bmask, active,
                                               *extra)))
            self.programs_run += 1
        out = []
        for n_real, (w, loss) in pending:
            w, loss = np.asarray(w), np.asarray(loss)
            out.extend((w[i], float(loss[i])) for i in range(n_real))
        return out
