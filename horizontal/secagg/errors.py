"""Exceptions of the secure-aggregation building blocks (:mod:`horizontal.secagg`).

Every refusal has its own class so a caller can tell a configuration that can never work
(:class:`InfeasibleParametersError`) from a round that lost too many clients
(:class:`TooManyDropoutsError`), a message that was tampered with
(:class:`ShareDecryptionError`) or a request that would unmask a client
(:class:`MaskReconstructionError`). All derive from :class:`SecAggError`, itself a
:class:`vfl.core.errors.VFLError`, and none of them is raised after a partial result was
handed out: a function either returns its whole result or raises.
"""

from __future__ import annotations

from vfl.core.errors import ConfigError, ProtocolError, VFLError


class SecAggError(VFLError):
    """Base class of every secure-aggregation error."""


class InfeasibleParametersError(SecAggError, ConfigError):
    """No communication graph and threshold meet the asked dropout and corruption fractions
    (or an explicit degree/threshold is out of range)."""


class SecretSharingError(SecAggError, ValueError):
    """A secret or a set of Shamir shares is malformed (wrong length, duplicate index)."""


class NotEnoughSharesError(SecretSharingError):
    """Fewer than ``t`` shares were given: reconstruction is refused rather than returning
    a wrong secret (Lagrange interpolation through too few points is silently wrong)."""


class KeyAgreementError(SecAggError, ValueError):
    """A public key is malformed, repeated, or yields a degenerate X25519 shared secret."""


class ShareDecryptionError(SecAggError):
    """An encrypted share does not authenticate: it was altered, or is replayed under another
    sender, receiver, session or round."""


class QuantizationError(SecAggError, ValueError):
    """A quantization setting or an update is unusable (non-finite values, wrong bits)."""


class RingOverflowError(QuantizationError):
    """``n`` clients times the largest quantized magnitude does not fit in the signed half of
    the ring, so the sum could wrap around. Raised before anything is masked."""


class TooManyDropoutsError(SecAggError):
    """Too many clients dropped out: fewer than ``t`` remain, or some secret that must be
    reconstructed has fewer than ``t`` live share holders. Nothing is returned."""


class MaskReconstructionError(SecAggError):
    """A request would reveal both masks of one client (its self-mask seed ``b_u`` *and* its
    pairwise-mask key ``s_u``), which would expose that client's update. Refused."""


class SecAggProtocolError(SecAggError, ProtocolError):
    """A secure-aggregation message is malformed or arrives at the wrong stage."""
