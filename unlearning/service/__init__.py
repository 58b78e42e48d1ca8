"""The erasure service: requests, their lifecycle, recovery and certificates.

:class:`ErasureService` serves two kinds of request, dispatched by type:

* :class:`ErasureRequest` (:mod:`unlearning.service.patient`): patients erased exactly
  (``method="exact"``: replay without them; ``"sisa"``: replay of their shard);
* :class:`ClientRemovalRequest` (:mod:`unlearning.service.client_removal`): a whole client
  leaves a horizontal federation, removed approximately (``method="approx"``).

Both go through the steps of :mod:`unlearning.service.base` (received, located, data deleted
at every holder, unlearned, committed, purged, verified, certified), each an audit-log entry,
with a journal for crash recovery (:meth:`ErasureService.recover`), under the run
directory's lock.
"""

from __future__ import annotations

from unlearning.errors import MethodUnavailableError, UnknownClientError
from unlearning.service.base import REPAIRABLE, STEPS, Journal, RequestKind, ServiceBase
from unlearning.service.client_removal import (
    APPROX_GUARANTEE,
    ClientRemoval,
    ClientRemovalRequest,
)
from unlearning.service.patient import (
    METHODS,
    PATIENT_METHODS,
    ErasureRequest,
    PatientErasure,
)


class ErasureService(ServiceBase):
    """Serves erasure requests on one run directory (``submit``, ``submit_many``,
    ``recover``; ``session`` holds the run's lock around several calls).

    ``retrain``: verify against a retrain from scratch; ``crash_at``: a step after which to
    stop (tests); ``on_step(step, info)``: called after every step; ``lock_timeout``: None
    waits for the run's lock, 0 refuses at once, else seconds (``on_wait`` is told)."""

    KINDS = (PatientErasure, ClientRemoval)

    def submit(self, request: ErasureRequest | ClientRemovalRequest) -> dict:
        """Serve ``request`` to the end and return its certificate (a repeated request
        returns the earlier one; an interrupted one is finished)."""
        return super().submit(request)

    def submit_many(self, requests: list[ErasureRequest]) -> dict:
        """Serve requests of one method together (one replay per influenced model)."""
        if any(isinstance(r, ClientRemovalRequest) for r in requests):
            raise MethodUnavailableError("submit client removals one at a time with submit()")
        methods = {r.method for r in requests}
        if len(methods) != 1:
            raise MethodUnavailableError("a batch must use one method")
        merged = ErasureRequest(
            tuple(p for r in requests for p in r.patients),
            party=requests[0].party,
            reason="; ".join(sorted({r.reason for r in requests})),
            method=methods.pop(),
        )
        return self.submit(merged)


__all__ = [
    "APPROX_GUARANTEE",
    "METHODS",
    "PATIENT_METHODS",
    "REPAIRABLE",
    "STEPS",
    "ClientRemovalRequest",
    "ErasureRequest",
    "ErasureService",
    "Journal",
    "RequestKind",
    "UnknownClientError",
]
