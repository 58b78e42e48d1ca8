"""The coordinator: routes messages, never holds keys or confidential plaintext.

It drives a protocol by sending requests and routing each reply to its receiver until only
replies addressed to the coordinator remain. In a Flower deployment the coordinator is the
ServerApp and the same routing runs over Flower messages.
"""

from __future__ import annotations

from collections import deque

from vfl.core.errors import PartyDropoutError, PartyUnavailableError
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.transport import InMemoryTransport


class Coordinator:
    name = COORDINATOR

    def __init__(self, transport: InMemoryTransport) -> None:
        self.transport = transport

    def request(self, receiver: str, kind: str, payload=None, round: int | None = None):
        return Message(COORDINATOR, receiver, kind, Label.PUBLIC, payload or {}, round)

    def exchange(self, messages: list[Message]) -> list[Message]:
        """Deliver ``messages``; route party-to-party replies; return coordinator-bound ones."""
        queue = deque(messages)
        back: list[Message] = []
        while queue:
            msg = queue.popleft()
            if msg.receiver == COORDINATOR:
                back.append(self.transport.send_to_coordinator(msg))
                continue
            try:
                queue.extend(self.transport.deliver(msg))
            except PartyUnavailableError as exc:
                raise PartyDropoutError(
                    f"party {msg.receiver!r} dropped out during {msg.kind!r}: {exc}. "
                    "Nothing was committed; restart the protocol when it is back, or leave it out."
                ) from exc
        return back

    def broadcast(self, receivers, kind: str, payload=None, round: int | None = None):
        return self.exchange([self.request(r, kind, payload, round) for r in receivers])
