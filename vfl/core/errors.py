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


class UnsupportedAtPassiveError(ConfigError):
    """A passive party's model or optimizer cannot run under the chosen protocol (an MLP
    bottom or Adam under ``paillier``)."""


class InvertibleConfigurationError(ConfigError):
    """The ``paillier-masked-gradient`` protocol would let a passive invert its aggregate
    gradient into per-sample gradients (parameters >= batch rows x embedding width)."""


class SecurityPolicyError(ConfigError):
    """A setup message asks for security settings the party's own policy does not allow."""


class CheckpointError(VFLError):
    """A checkpoint cannot be restored into these parties."""


# --- hardening: hostile wire bytes, silent data problems, message senders -----------------
# (appended by the wire/data/horizontal hardening work; other sections may follow)
class WireFormatError(TransportError):
    """Received bytes are not a well-formed message; the message names the bad field."""


class UnexpectedSenderError(ProtocolError):
    """A message came from a party that may not send that kind of message."""


class FeatureMagnitudeError(PartyDataError):
    """Feature values are too large to standardize in float64 (squares would overflow)."""


class LabelAsFeatureError(PartyDataError):
    """The label column is also listed as a feature (the model would see the answer)."""


class IdAsFeatureError(PartyDataError):
    """The identifier column is also listed as a feature."""


class DuplicateColumnError(PartyDataError):
    """Two feature columns have the same name."""


class DataFileError(PartyDataError):
    """A CSV or Parquet file cannot be read (missing, unreadable or malformed)."""


class EmptyDataFileError(DataFileError):
    """A CSV or Parquet file has no columns or no rows."""


class LabelValueError(ConfigError, PartyDataError):
    """Label values do not fit the task (also a ConfigError: the task says what fits)."""


class NonFiniteLabelError(LabelValueError):
    """A label is infinite."""


class NonIntegerClassLabelError(LabelValueError):
    """A class label of a binary/multiclass task is not a whole number."""


# -- the checkpoint contract (raised by trainer adapters and the unlearning package) -------
class UnlearningError(VFLError):
    """Base class of every unlearning error."""


class RunDirError(UnlearningError):
    """The run directory or its manifest is missing, incomplete or of an unknown format."""


class MethodUnavailableError(UnlearningError):
    """The requested unlearning method does not apply to this run."""


class UnknownClientError(UnlearningError):
    """The client named by a removal request is not (or no longer) in the run."""
