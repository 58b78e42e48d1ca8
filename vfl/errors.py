"""Exceptions raised by the vertical engine.

Every bad input gets its own class, and every message says what the user should do.
All of them derive from :class:`VFLError`, so callers can catch the family at once.
"""

from __future__ import annotations


class VFLError(Exception):
    """Base class of every error the framework raises on purpose."""


# --- party data -----------------------------------------------------------------------------
class PartyDataError(VFLError, ValueError):
    """A party's table is not usable as given."""


class MissingIdError(PartyDataError):
    """Some rows have no identifier."""


class DuplicateIdError(PartyDataError):
    """Two or more rows share an identifier."""


class MissingValuesError(PartyDataError):
    """NaN values were found and no imputation policy was given."""


class NonNumericColumnError(PartyDataError):
    """A feature column is not numeric."""


class LabelAtPassivePartyError(PartyDataError):
    """A passive party was given a label column; only the active party may hold labels."""


class SchemaMismatchError(PartyDataError):
    """The columns at prediction time differ from the columns seen at training time."""


class MissingColumnError(PartyDataError):
    """A column named in the configuration is not in the table."""


# --- alignment ------------------------------------------------------------------------------
class AlignmentError(VFLError):
    """Private set intersection could not produce an agreed row order."""


class EmptyIntersectionError(AlignmentError):
    """The parties share no patient identifiers."""


class PartyDropoutError(AlignmentError):
    """A party stopped answering during a protocol."""


class AlignmentMismatchError(AlignmentError):
    """Parties disagree on the aligned rows (different digests)."""


# --- transport and protocol -----------------------------------------------------------------
class TransportError(VFLError):
    """A message could not be delivered or decoded."""


class UnknownPartyError(TransportError):
    """A message names a receiver that is not registered on the transport."""


class PartyUnavailableError(TransportError):
    """The receiver is registered but offline."""


class ProtocolError(VFLError):
    """A party received a message it cannot accept at this point of the protocol."""


class ReplayedMessageError(ProtocolError):
    """A message carries a round number from the past."""


class PayloadShapeError(ProtocolError, ValueError):
    """A payload array has the wrong shape."""


# --- training -------------------------------------------------------------------------------
class ConfigError(VFLError, ValueError):
    """A training or scenario setting is invalid."""


class CheckpointError(VFLError):
    """A checkpoint cannot be restored into these parties."""
