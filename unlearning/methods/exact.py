"""Exact unlearning by replay.

For every model the patients influenced: restore the last stored checkpoint they did not
influence (from lineage: before their first round, and never past setup if their rows were
in the scaler fit), then replay the remaining rounds without their rows. Because batches
and splits are keyed hashes of (seed, round, id), the replay equals a retrain from scratch
without them (bitwise on one machine). Trainer-agnostic: it goes through the adapter.

A rollback checkpoint that is corrupted or missing does not stop the request: its objects
are moved to ``store/quarantine/`` and the replay starts from the latest earlier stored
checkpoint that reads back intact (also uninfluenced), or from round 0. The result is the
same model (only slower); the model's entry says so (``warning``, ``rollback_planned``),
and so do the audit log and the certificate.
"""

from __future__ import annotations

import time

from unlearning.errors import CheckpointCorruptedError, CheckpointMissingError
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


def resume_point(run: RunDir, model: str, planned: int | None, index: dict):
    """``(round, checkpoint, warning)``: the planned rollback checkpoint of ``model``, or,
    when it is corrupted or missing, the latest earlier one that reads back intact, or
    ``(None, None, warning)`` (replay from round 0). Bad objects are quarantined."""
    if planned is None:
        return None, None, None
    bad_rounds = []
    for r in sorted((r for r in run.store.rounds(model, index) if r <= planned), reverse=True):
        bad = run.store.bad_objects(model, r, index)
        if not bad:
            try:
                ckpt = run.store.load(model, r)
            except (CheckpointCorruptedError, CheckpointMissingError):
                bad_rounds.append(r)
                continue
            if not bad_rounds:
                return r, ckpt, None
            return r, ckpt, (
                f"rollback checkpoint {model}@{planned} could not be read back (corrupted or "
                f"missing: rounds {bad_rounds}); replayed from the earlier checkpoint "
                f"{model}@{r} instead (bad objects moved to store/quarantine)")
        for d in bad:
            run.store.quarantine(d)
        bad_rounds.append(r)
    return None, None, (
        f"rollback checkpoint {model}@{planned} could not be read back (corrupted or missing: "
        f"rounds {bad_rounds}) and no earlier checkpoint is intact; replayed from round 0 "
        "(bad objects moved to store/quarantine)")


def _replay(run, adapter, lineage, index, location) -> dict:
    out = {}
    for model, where in location.items():
        t0 = time.perf_counter()
        planned = where["rollback"]
        rollback, resume, warning = resume_point(run, model, planned, index)
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
        if warning is not None:
            out[model] |= {"rollback_planned": planned, "warning": warning}
    return out
