"""The party: private state plus exactly one way in, :meth:`Party.handle`.

Subclasses declare handlers with the :func:`handles` decorator. Nothing outside a party
reads its attributes in protocol code; everything it tells others it returns as messages.
"""

from __future__ import annotations

from collections.abc import Callable

from vfl.core.errors import ProtocolError, ReplayedMessageError
from vfl.core.messages import Message


def handles(kind: str) -> Callable:
    """Mark a method as the handler of one message kind."""

    def mark(fn):
        fn._handles = kind
        return fn

    return mark


class Party:
    """Base class of every protocol participant that holds private state."""

    def __init__(self, name: str) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("a party needs a non-empty string name")
        self.name = name
        # Replay protection: per (sender, kind) the last round accepted. A message whose
        # round is not newer is rejected before any state changes.
        self._last_round: dict[tuple[str, str], int] = {}
        self._handlers: dict[str, Callable] = {}
        for cls in reversed(type(self).__mro__):
            for attr, fn in vars(cls).items():
                kind = getattr(fn, "_handles", None)
                if kind is not None:
                    self._handlers[kind] = getattr(self, attr)

    def handle(self, message: Message) -> list[Message]:
        if message.receiver != self.name:
            raise ProtocolError(f"{self.name!r} received a message for {message.receiver!r}")
        handler = self._handlers.get(message.kind)
        if handler is None:
            raise ProtocolError(
                f"party {self.name!r} ({type(self).__name__}) does not handle "
                f"{message.kind!r} messages"
            )
        if message.round is not None:
            key = (message.sender, message.kind)
            last = self._last_round.get(key)
            if last is not None and message.round <= last:
                raise ReplayedMessageError(
                    f"{self.name!r} got {message.kind!r} for round {message.round} from "
                    f"{message.sender!r} after round {last}; replayed or reordered messages "
                    "are rejected. Resume from a checkpoint to re-run earlier rounds."
                )
        replies = handler(message) or []
        # Record the round only after the handler succeeded, so a rejected message leaves
        # the party exactly as it was.
        if message.round is not None:
            self._last_round[(message.sender, message.kind)] = message.round
        return replies

    def reset_rounds(self, last_round: int | None) -> None:
        """Forget replay history after restoring a checkpoint taken at ``last_round``."""
        if last_round is None:
            self._last_round.clear()
        else:
            self._last_round = {k: last_round for k in self._last_round}

    def send(
        self, receiver: str, kind: str, label, payload=None, round=None, label_dependent=False
    ):
        return Message(self.name, receiver, kind, label, payload or {}, round, label_dependent)
