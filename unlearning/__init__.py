"""Machine unlearning for vfl: checkpoint store, lineage, audit log, erasure requests.

The public API, loaded lazily (``import unlearning`` loads no trainer and no JAX; a name is
imported when it is first used)::

    from unlearning import ErasureRequest, ErasureService, RunDir, train_run

    run = train_run("runs/demo", spec)          # checkpoints, lineage, signed audit log
    cert = ErasureService(run).submit(ErasureRequest("patient-17"))

Names: :class:`ErasureService`, :class:`ErasureRequest`, :class:`ClientRemovalRequest`
(:mod:`unlearning.service`), :class:`RunDir` and :func:`train_run` (:mod:`unlearning.run`),
:class:`AuditLog` (:mod:`unlearning.audit_log`), :class:`CheckpointStore` and
:class:`Checkpoint` (:mod:`unlearning.store`), :class:`Lineage` (:mod:`unlearning.lineage`)
and the errors of :mod:`unlearning.errors`.

Modules: :mod:`~unlearning.store` (content-addressed checkpoints), :mod:`~unlearning.lineage`
(networkx lineage graph), :mod:`~unlearning.audit_log` (hash-chained, signed JSON lines),
:mod:`~unlearning.keys` (each party's signing key), :mod:`~unlearning.locking` (one lock
per run directory), :mod:`~unlearning.run` (run directories), :mod:`~unlearning.service`
(erasure requests and their lifecycle), :mod:`~unlearning.methods` (exact replay, SISA),
:mod:`~unlearning.verification` and :mod:`~unlearning.certificate`. Trainers plug in
through :mod:`~unlearning.contract`: the run manifest names an adapter speaking
:class:`vfl.core.rounds.TrainerAdapter`, imported when a run is opened.
"""

from __future__ import annotations

import importlib

from unlearning.errors import __all__ as _ERRORS

#: public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "ErasureService": "unlearning.service",
    "ErasureRequest": "unlearning.service",
    "ClientRemovalRequest": "unlearning.service",
    "RunDir": "unlearning.run",
    "train_run": "unlearning.run",
    "AuditLog": "unlearning.audit_log",
    "CheckpointStore": "unlearning.store",
    "Checkpoint": "unlearning.store",
    "Lineage": "unlearning.lineage",
} | {name: "unlearning.errors" for name in _ERRORS}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'unlearning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
