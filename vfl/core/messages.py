"""Typed messages: the only thing that crosses a party boundary.

A message has a sender, a receiver, a kind, a round and a payload, and a label that says
what the payload is *to its receiver* (docs/ARCHITECTURE.md, 'Privacy boundary'):

``public``
    Control data or values every party may know (round numbers, public keys, sizes).
``ciphertext``
    Encrypted under a key the receiver does not hold.
``masked``
    Hidden by randomness the receiver does not know (additive masks, DH blinding).
``plaintext-by-design``
    A leak the protocol accepts and documents (a cut-layer embedding in split learning,
    the PSI output, a plaintext cut-layer gradient in the ``plain`` protocol).

``label_dependent`` is set by the sender when the payload is a function of the training
labels; the leakage audit and the tests use it to show that passive parties never receive a
label-dependent value in the clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vfl.core import wire as serialization
from vfl.core.errors import WireFormatError

COORDINATOR = "coordinator"


class Label(StrEnum):
    PUBLIC = "public"
    CIPHERTEXT = "ciphertext"
    MASKED = "masked"
    PLAINTEXT_BY_DESIGN = "plaintext-by-design"


_LABELS = frozenset(label.value for label in Label)
_ROUND_MIN, _ROUND_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class Message:
    sender: str
    receiver: str
    kind: str
    label: Label
    payload: dict[str, Any] = field(default_factory=dict)
    round: int | None = None
    label_dependent: bool = False

    def to_bytes(self) -> bytes:
        return serialization.dumps(
            {
                "h": [
                    self.sender,
                    self.receiver,
                    self.kind,
                    str(self.label),
                    self.round,
                    self.label_dependent,
                ],
                "p": self.payload,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Message:
        """Decode and validate a message; any malformed field raises
        :class:`~vfl.core.errors.WireFormatError` naming it."""
        obj = serialization.loads(data)
        if not isinstance(obj, dict) or set(obj) != {"h", "p"}:
            keys = sorted(map(str, obj)) if isinstance(obj, dict) else None
            raise WireFormatError(
                "message: expected a map with keys 'h' (header) and 'p' (payload), got "
                + (f"keys {keys}" if keys is not None else type(obj).__name__)
            )
        head, payload = obj["h"], obj["p"]
        if not isinstance(head, list) or len(head) != 6:
            raise WireFormatError(
                "message header: expected a list [sender, receiver, kind, label, round, "
                f"label_dependent], got {type(head).__name__}"
                + (f" of length {len(head)}" if isinstance(head, list) else "")
            )
        sender, receiver, kind, label, rnd, dep = head
        for name, value in (("sender", sender), ("receiver", receiver), ("kind", kind)):
            if not isinstance(value, str):
                raise WireFormatError(
                    f"message {name}: expected a string, got {type(value).__name__}"
                )
        if not isinstance(label, str) or label not in _LABELS:
            raise WireFormatError(
                f"message label: {label!r} is not one of {sorted(_LABELS)}"
            )
        if rnd is not None and (
            not isinstance(rnd, int) or isinstance(rnd, bool) or not _ROUND_MIN <= rnd <= _ROUND_MAX
        ):
            raise WireFormatError(
                f"message round: expected a 64-bit integer or None, got {type(rnd).__name__}"
            )
        if not isinstance(dep, bool):
            raise WireFormatError(
                f"message label_dependent: expected a bool, got {type(dep).__name__}"
            )
        if not isinstance(payload, dict):
            raise WireFormatError(
                f"message payload: expected a map, got {type(payload).__name__}"
            )
        bad = [k for k in payload if not isinstance(k, str)]
        if bad:
            raise WireFormatError(f"message payload: keys must be strings, got {bad[:3]!r}")
        return cls(sender, receiver, kind, Label(label), payload, rnd, dep)
