"""Exceptions of the horizontal (FedAvg-family) engine.

Each bad input gets its own class and a message that names the client and says what to
do. All derive from :class:`vfl.core.errors.VFLError`, so callers can catch the whole family.
The server validates an update *before* it touches any state, so a rejected update never
corrupts the global model; the round policy (``FedConfig.on_bad_update`` and
``on_empty_round``) decides whether the round goes on without it, is retried or is skipped.
"""

from __future__ import annotations

from horizontal.secagg.errors import TooManyDropoutsError
from vfl.core.errors import (
    ConfigError,
    ProtocolError,
    SchemaMismatchError,
    SecurityPolicyError,
    VFLError,
)


class HorizontalError(VFLError):
    """Base class of the horizontal engine's errors."""


class FedConfigError(HorizontalError, ConfigError):
    """A federated training setting is invalid."""


class ClientSchemaError(HorizontalError, SchemaMismatchError):
    """A client's columns differ from the federation's agreed schema."""


class BadUpdateError(HorizontalError, ProtocolError):
    """A client's update cannot be aggregated (the round goes on without it, by policy)."""

    def __init__(self, client: str, message: str):
        super().__init__(message)
        self.client = client


class UpdateShapeError(BadUpdateError, ValueError):
    """An update has the wrong shape or an undecodable compressed payload."""


class NonFiniteUpdateError(BadUpdateError, ValueError):
    """An update contains NaN or Inf."""


class InvalidExampleCountError(BadUpdateError, ValueError):
    """A client reported zero or a negative number of examples."""


class NoClientsSampledError(FedConfigError):
    """The sampling fraction or count selects no client."""


class EmptyRoundError(HorizontalError):
    """No usable update arrived in a round (every client dropped out or was rejected)."""


class AllClientsDroppedError(EmptyRoundError):
    """Every sampled client dropped out of a round."""


class InflatedExampleCountError(InvalidExampleCountError):
    """A client reported more examples than its rows declared at setup allow."""


class InvalidSetupStatsError(BadUpdateError, ValueError):
    """A client's setup statistics (row counts, column sums) are malformed, non-finite or
    impossible; the client is left out of the federation."""


class PooledScalerError(HorizontalError, ValueError):
    """The clients' statistics, each valid, overflow float64 when pooled."""


class SecureRoundAbortedError(EmptyRoundError, TooManyDropoutsError):
    """Too many clients dropped out of a round's secure aggregation (more than ``n - t`` at
    some stage, or a secret with fewer than ``t`` live holders): nothing was unmasked, and
    the global model is unchanged."""


class PrivacyPolicyError(HorizontalError, SecurityPolicyError):
    """A setup, a training round or an evaluation asks a hospital for less protection than
    its operator's own :class:`~horizontal.privacy_policy.PrivacyPolicy` allows."""
