"""Transports: the :class:`Transport` protocol, and the in-memory transport, which
serializes, delivers, counts and records every message.

The transport is the privacy boundary made concrete. A party is reachable only through
:meth:`InMemoryTransport.deliver`, which encodes the message to bytes, records its header in
the :class:`~vfl.core.transcript.Transcript`, decodes a fresh copy for the receiver and returns the
receiver's replies. Nothing else of a party is ever handed to another party.

A networked engine (Flower's Message API) implements the same :class:`Transport` protocol;
the coordinator and the parties do not change.
"""

from __future__ import annotations

from typing import Protocol

from vfl.core.errors import PartyUnavailableError, TransportError, UnknownPartyError
from vfl.core.messages import COORDINATOR, Message
from vfl.core.transcript import Transcript, TranscriptEntry


class MessageHandler(Protocol):
    name: str

    def handle(self, message: Message) -> list[Message]: ...


class Transport(Protocol):
    """What the coordinator needs from an engine: deliver a message to its receiver and
    return the receiver's replies, hand back messages addressed to the coordinator, and
    record every message that crossed in a :class:`~vfl.core.transcript.Transcript`."""

    transcript: Transcript

    @property
    def parties(self) -> list[str]: ...

    def deliver(self, message: Message) -> list[Message]: ...

    def send_to_coordinator(self, message: Message) -> Message: ...


class InMemoryTransport:
    """Deliver messages between registered handlers in one process, through bytes."""

    def __init__(self, transcript: Transcript | None = None) -> None:
        self.transcript = transcript if transcript is not None else Transcript()
        self._handlers: dict[str, MessageHandler] = {}
        self._offline: set[str] = set()
        # Observers see every decoded message as its receiver does (used by the leakage
        # audit to replay exactly what a curious party received). They never alter delivery.
        self.observers: list = []

    def register(self, handler: MessageHandler) -> None:
        if handler.name == COORDINATOR:
            raise TransportError(f"'{COORDINATOR}' is reserved for the coordinator")
        if handler.name in self._handlers:
            raise TransportError(f"a party named {handler.name!r} is already registered")
        self._handlers[handler.name] = handler

    @property
    def parties(self) -> list[str]:
        return list(self._handlers)

    def set_offline(self, name: str, offline: bool = True) -> None:
        """Simulate a party that stops answering (used to test drop-out handling)."""
        if offline:
            self._offline.add(name)
        else:
            self._offline.discard(name)

    def encode(self, message: Message) -> bytes:
        data = message.to_bytes()
        self.transcript.record(TranscriptEntry.of(message, len(data)))
        return data

    def deliver(self, message: Message) -> list[Message]:
        """Send one message and return the receiver's replies (already sent by it)."""
        if message.receiver == COORDINATOR:
            raise TransportError("messages to the coordinator are returned, not delivered")
        handler = self._handlers.get(message.receiver)
        if handler is None:
            raise UnknownPartyError(
                f"no party named {message.receiver!r} is registered; known: {self.parties}"
            )
        if message.receiver in self._offline:
            raise PartyUnavailableError(f"party {message.receiver!r} is not answering")
        received = Message.from_bytes(self.encode(message))
        for observe in self.observers:
            observe(received)
        replies = handler.handle(received) or []
        for reply in replies:
            if reply.sender != handler.name:
                raise TransportError(
                    f"party {handler.name!r} tried to send a message as {reply.sender!r}"
                )
        return list(replies)

    def send_to_coordinator(self, message: Message) -> Message:
        """Messages addressed to the coordinator are encoded and counted like any other."""
        return Message.from_bytes(self.encode(message))
