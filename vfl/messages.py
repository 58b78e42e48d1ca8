"""Typed messages: the only thing that crosses a party boundary.

A message has a sender, a receiver, a kind, a round and a payload, and a label that says
what the payload is *to its receiver* (DESIGN section 2):

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

from vfl import serialization
from vfl.errors import TransportError

COORDINATOR = "coordinator"


class Label(StrEnum):
    PUBLIC = "public"
    CIPHERTEXT = "ciphertext"
    MASKED = "masked"
    PLAINTEXT_BY_DESIGN = "plaintext-by-design"


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
        obj = serialization.loads(data)
        try:
            sender, receiver, kind, label, rnd, dep = obj["h"]
            return cls(sender, receiver, kind, Label(label), obj["p"], rnd, bool(dep))
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError(f"malformed message header: {exc}") from exc
