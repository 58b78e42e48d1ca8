"""What crosses a networked engine: bundles of messages, sealed party-to-party payloads,
and remote errors.

A **bundle** is the list of messages one party receives in one wave of
:meth:`~vfl.core.coordinator.Coordinator.pipeline`, in order, as one engine message: the
party handles them one by one and answers with one **outcome** per message (its replies, or
the error it raised). One bundle per party per wave is what keeps a training round at one
network round trip per party.

A **sealed** message is a party-to-party message whose payload was encrypted by its sender
for its receiver (:mod:`vfl.core.sealing`): the routers (the coordinator, Flower's ServerApp
and SuperLink) see the header (sender, receiver, kind, round, label) and the length, never the
payload. The header is the AEAD's associated data, so a router that changes any header field,
replays the payload in another round or sends it to another party makes it fail to open.

An error a party raised travels back as its class name and message and is raised again at
the coordinator as the same :class:`~vfl.core.errors.VFLError` subclass (looked up among the
classes already loaded, never imported by a name that came over the wire), so a horizontal
round still records a refused update and a vertical round still aborts on a protocol error.
"""

from __future__ import annotations

from vfl.core import wire
from vfl.core.errors import TransportError, VFLError, WireFormatError
from vfl.core.messages import COORDINATOR, Message
from vfl.core.sealing import PinnedKeys, SealingKey

#: The one payload key of a sealed message.
SEALED = "sealed"


class RemotePartyError(VFLError):
    """A party raised an error this process does not know by name; its message says what."""


def encode_bundle(messages: list[Message]) -> bytes:
    return wire.dumps([m.to_bytes() for m in messages])


def decode_bundle(data: bytes) -> list[Message]:
    items = wire.loads(data)
    if not isinstance(items, list) or not all(isinstance(b, bytes) for b in items):
        raise WireFormatError("bundle: expected a list of encoded messages")
    return [Message.from_bytes(b) for b in items]


def encode_outcomes(outcomes: list[list[Message] | Exception]) -> bytes:
    """Per message of a bundle: ``["ok", [reply bytes...]]`` or ``["error", class, text]``."""
    out = []
    for item in outcomes:
        if isinstance(item, Exception):
            out.append(["error", type(item).__name__, str(item)])
        else:
            out.append(["ok", [m.to_bytes() for m in item]])
    return wire.dumps(out)


def decode_outcomes(data: bytes, expected: int) -> list:
    """Outcomes of a bundle of ``expected`` messages: ``(replies, reply sizes)`` or the
    error re-raised as its own class."""
    items = wire.loads(data)
    if not isinstance(items, list) or len(items) != expected:
        raise WireFormatError(
            f"outcomes: expected a list of {expected} entries, got "
            f"{len(items) if isinstance(items, list) else type(items).__name__}"
        )
    out: list = []
    for item in items:
        if isinstance(item, list) and len(item) == 2 and item[0] == "ok":
            if not isinstance(item[1], list) or not all(isinstance(b, bytes) for b in item[1]):
                raise WireFormatError("outcomes: replies must be encoded messages")
            out.append(([Message.from_bytes(b) for b in item[1]], [len(b) for b in item[1]]))
        elif isinstance(item, list) and len(item) == 3 and item[0] == "error":
            out.append(remote_error(str(item[1]), str(item[2])))
        else:
            raise WireFormatError("outcomes: each entry is ['ok', replies] or ['error', ...]")
    return out


def _subclasses(cls: type) -> list[type]:
    seen, todo = [], [cls]
    while todo:
        c = todo.pop()
        seen.append(c)
        todo.extend(c.__subclasses__())
    return seen


def remote_error(name: str, text: str) -> Exception:
    """The exception a party raised, as the same class when it is a loaded
    :class:`VFLError` subclass (by name only: nothing is imported from the wire)."""
    for cls in _subclasses(VFLError):
        if cls.__name__ == name:
            try:
                return cls(text)
            except TypeError:  # a subclass with another constructor
                break
    return RemotePartyError(f"{name}: {text}")


def is_party_to_party(message: Message) -> bool:
    return message.sender != COORDINATOR and message.receiver != COORDINATOR


def _aad_kind(message: Message) -> str:
    # The label and label_dependent flag are header fields the receiver acts on: bind them.
    return f"{message.kind}|{message.label}|{int(message.label_dependent)}"


def seal(message: Message, key: SealingKey, pinned: PinnedKeys) -> Message:
    """``message`` (from ``key``'s party) with its payload sealed for its receiver."""
    if message.sender != key.name:
        raise TransportError(f"{key.name!r} cannot seal a message from {message.sender!r}")
    body = key.seal(
        message.receiver, pinned[message.receiver], _aad_kind(message), message.round,
        wire.dumps(message.payload),
    )
    return Message(
        message.sender, message.receiver, message.kind, message.label, {SEALED: body},
        message.round, message.label_dependent,
    )


def open_sealed(message: Message, key: SealingKey, pinned: PinnedKeys) -> Message:
    """The message as its sender wrote it; a party-to-party message that is not sealed, or
    that does not open with the sender's pinned key, is refused."""
    if set(message.payload) != {SEALED} or not isinstance(message.payload[SEALED], bytes):
        raise TransportError(
            f"{message.kind!r} from {message.sender!r} to {key.name!r} is not sealed; a "
            "party-to-party payload must be sealed end to end, so it is refused"
        )
    plain = key.open(
        message.sender, pinned[message.sender], _aad_kind(message), message.round,
        message.payload[SEALED],
    )
    payload = wire.loads(plain)
    if not isinstance(payload, dict):
        raise WireFormatError("a sealed payload must decode to a map")
    return Message(
        message.sender, message.receiver, message.kind, message.label, payload, message.round,
        message.label_dependent,
    )
