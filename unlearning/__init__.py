"""Machine unlearning for vfl: checkpoint store, lineage, audit log, erasure requests.

Modules: :mod:`~unlearning.store` (content-addressed checkpoints), :mod:`~unlearning.lineage`
(networkx lineage graph), :mod:`~unlearning.audit_log` (hash-chained, signed JSON lines),
:mod:`~unlearning.keys` (each party's signing key), :mod:`~unlearning.locking` (one lock
per run directory), :mod:`~unlearning.run` (run directories), :mod:`~unlearning.requests`
(erasure lifecycle),
:mod:`~unlearning.methods` (exact replay, SISA, approximate), :mod:`~unlearning.verification`
and :mod:`~unlearning.certificate`. Trainers plug in through :mod:`~unlearning.contract`.
"""
