"""Exact unlearning by replay.

For every model the patients influenced: restore the last stored checkpoint they did not
influence (from lineage: before their first round, and never past setup if their rows were
in the scaler fit), then replay the remaining rounds without their rows. Because batches
and splits are keyed hashes of (seed, round, id), the replay equals a retrain from scratch
without them (bitwise on one machine). Trainer-agnostic: it goes through the adapter.
"""

from __future__ import annotations

import time

from unlearning.lineage import Lineage
from unlearning.run import RunDir, record_model


def plan(lineage: Lineage, pids, models: list[str]) -> dict[str, dict]:
    """Per influenced model: first influence (-1 = setup) and rollback checkpoint (None =
    before round 0, a replay from scratch)."""
    first = lineage.first_influence(pids)
    return {
        m: {"first_influence": first[m], "rollback": lineage.last_uninfluenced_checkpoint(pids, m)}
        for m in models
        if m in first
    }


def replay(run: RunDir, adapter, lineage: Lineage, index: dict, location: dict) -> dict:
    """Replay every model in ``location`` (from :func:`plan`) into the staged ``index`` and
    ``lineage``; returns per model the rollback point, rounds replayed and trainer."""
    out = {}
    durable, run.store.fsync = run.store.fsync, False  # one os.sync() before the commit
    try:
        out = _replay(run, adapter, lineage, index, location)
    finally:
        run.store.fsync = durable
    return out


def _replay(run, adapter, lineage, index, location) -> dict:
    out = {}
    for model, where in location.items():
        t0 = time.perf_counter()
        rollback = where["rollback"]
        resume = None if rollback is None else run.store.load(model, rollback)
        trainer = adapter.trainer(model)
        written = record_model(run, lineage, index, adapter, model, trainer, resume, False)
        out[model] = {
            "rollback": rollback,
            "rounds_replayed": trainer.n_rounds - (0 if rollback is None else rollback + 1),
            "rounds_total": trainer.n_rounds,
            "checkpoints": written,
            "seconds": time.perf_counter() - t0,
            "trainer": trainer,
        }
    return out
