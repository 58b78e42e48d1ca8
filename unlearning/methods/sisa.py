"""SISA for federated settings (Bourtoule et al. 2021, adapted).

Patients are hashed into S shards (:func:`vfl.core.keyed.shard_of`); each shard has
its own model (vertical: every party keeps S bottom models, one federation per shard;
horizontal: S sub-federations over the same clients, each client training on its own rows
of the shard, :class:`horizontal.checkpointing.HorizontalAdapter`). Within a shard data is
added in slices (``vfl.core.keyed.SlicePlan``), with a checkpoint at each slice boundary;
predictions are the average of the shard models. Serving an erasure is an exact replay
(:mod:`unlearning.methods.exact`) that touches only the patient's shard, from the boundary
before the patient's slice (from scratch if the patient is in slice 0, which fitted the
shard's scalers).

``epochs_per_slice`` is per phase: vertical epochs, or horizontal federated rounds (default:
the training config's ``epochs`` / ``rounds``, so S slices train S times as many rounds).
A horizontal SISA run keeps no per-client update logs (approximate client removal needs a
single model: remove a client from a SISA run by erasing its patients instead).
"""

from __future__ import annotations


def sisa_spec(spec: dict, shards: int, slices: int = 1, epochs_per_slice: int | None = None,
              *, every: int = 0) -> dict:
    """A run manifest for a SISA ensemble (vertical or horizontal ``spec``): checkpoints at
    slice boundaries (and every ``every`` rounds) plus each shard's final round."""
    if shards < 1 or slices < 1:
        raise ValueError(f"SISA needs shards >= 1 and slices >= 1, got {shards}, {slices}")
    out = {k: v for k, v in spec.items() if k not in ("arrival",)}
    out["sisa"] = {"shards": shards, "slices": slices, "epochs_per_slice": epochs_per_slice}
    out["retention"] = {"every": every, "slice_boundaries": True}
    return out


def is_sisa(spec: dict) -> bool:
    return int((spec.get("sisa") or {}).get("shards", 1)) > 1 or int(
        (spec.get("sisa") or {}).get("slices", 1)
    ) > 1
