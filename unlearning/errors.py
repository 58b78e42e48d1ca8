"""Exceptions of the unlearning package; each message says what to do next."""

from __future__ import annotations

# The errors a trainer adapter raises live with the round contract in vfl.core.
from vfl.core.errors import (
    MethodUnavailableError,
    RunDirError,
    UnknownClientError,
    UnlearningError,
)


class CheckpointMissingError(UnlearningError):
    """A checkpoint the index names is not on disk."""


class CheckpointCorruptedError(UnlearningError):
    """A checkpoint file's SHA-256 does not match the manifest."""


class UnknownPatientError(UnlearningError):
    """The patient id is not held by any party of the run."""


class AuditLogError(UnlearningError):
    """The audit log cannot be read or appended to."""


class AuditTamperError(AuditLogError):
    """Verification found an edited, deleted, inserted or reordered entry."""


class ErasureInterrupted(UnlearningError):
    """An erasure stopped part-way (a simulated crash in tests); reopen the run and call
    ``ErasureService.recover()`` (``vfl erase`` does this) to finish it."""


class ShadowAttackError(UnlearningError):
    """The shadow-model membership attack cannot run: too few never-seen rows for the
    shadows and the probes, labels that are not classes, or bad attack settings."""


class RunLockedError(RunDirError):
    """Another operator holds the run directory's lock (a command that changes the run is
    already running); wait for it or try again later."""


class RunInconsistentError(RunDirError):
    """The run directory's deletion registry, store, lineage or log disagree in a way only
    tampering (or a restore from mismatched copies) explains; nothing is changed."""


class UnknownPartyNameError(UnlearningError, ValueError):
    """A request names a receiving party (``--party``) that is not a party of the run."""


__all__ = [
    "AuditLogError",
    "AuditTamperError",
    "CheckpointCorruptedError",
    "CheckpointMissingError",
    "ErasureInterrupted",
    "MethodUnavailableError",
    "RunDirError",
    "RunInconsistentError",
    "RunLockedError",
    "ShadowAttackError",
    "UnknownClientError",
    "UnknownPartyNameError",
    "UnknownPatientError",
    "UnlearningError",
]
