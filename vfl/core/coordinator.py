"""The coordinator: runs a protocol script by routing messages; never holds keys or
confidential plaintext.

It sends requests and routes each reply to its receiver until only replies addressed to the
coordinator remain: :meth:`Coordinator.route` is the one routing loop of the framework
(vertical training, PSI, horizontal rounds and erasures all use it). What happens when a
receiver cannot take a message is a :class:`FailurePolicy`: the vertical protocols abort
(nothing is committed and the run restarts), a horizontal round records the drop-out or the
refused update and goes on with the others.

The coordinator speaks to parties only through a :class:`~vfl.core.transport.Transport`,
so the same script runs on the in-memory transport and on a networked engine.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from vfl.core.errors import PartyDropoutError, PartyUnavailableError
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.transport import Transport


def _receiver(message: Message, error: Exception) -> str:
    return message.receiver


@dataclass(frozen=True)
class FailurePolicy:
    """How :meth:`Coordinator.route` treats a receiver that cannot take a message.

    ``dropouts``: ``"abort"`` raises :class:`~vfl.core.errors.PartyDropoutError` (nothing
    was committed: restart the protocol), ``"record"`` notes the party in
    :attr:`Routed.dropped` and routes on. ``refusals``: exception types a receiver may
    raise that are recorded in :attr:`Routed.rejected` (under ``blame(message, error)``)
    instead of propagating; any other exception propagates.
    """

    dropouts: str = "abort"
    refusals: tuple[type[Exception], ...] = ()
    blame: Callable[[Message, Exception], str] = _receiver

    def __post_init__(self):
        if self.dropouts not in ("abort", "record"):
            raise ValueError(f"dropouts must be 'abort' or 'record', got {self.dropouts!r}")


#: The vertical protocols' policy: any drop-out aborts the exchange.
ABORT = FailurePolicy()


@dataclass
class Routed:
    """What one :meth:`Coordinator.route` call did."""

    back: list[Message] = field(default_factory=list)  # replies addressed to the coordinator
    delivered: list[tuple[str, str]] = field(default_factory=list)  # (receiver, kind)
    dropped: list[str] = field(default_factory=list)
    rejected: dict[str, Exception] = field(default_factory=dict)


class Coordinator:
    name = COORDINATOR

    def __init__(self, transport: Transport, policy: FailurePolicy = ABORT) -> None:
        self.transport = transport
        self.policy = policy

    def request(self, receiver: str, kind: str, payload=None, round: int | None = None):
        """A public control message from the coordinator."""
        return Message(COORDINATOR, receiver, kind, Label.PUBLIC, payload or {}, round)

    def route(self, messages: list[Message], policy: FailurePolicy | None = None) -> Routed:
        """Deliver ``messages``, route party-to-party replies on, and collect the replies
        addressed to the coordinator; failures are handled by ``policy`` (default: this
        coordinator's)."""
        policy = self.policy if policy is None else policy
        out = Routed()
        queue = deque(messages)
        while queue:
            msg = queue.popleft()
            if msg.receiver == COORDINATOR:
                out.back.append(self.transport.send_to_coordinator(msg))
                continue
            try:
                replies = self.transport.deliver(msg)
            except PartyUnavailableError as exc:
                if policy.dropouts == "abort":
                    raise PartyDropoutError(
                        f"party {msg.receiver!r} dropped out during {msg.kind!r}: {exc}. "
                        "Nothing was committed; restart the protocol when it is back, or "
                        "leave it out."
                    ) from exc
                out.dropped.append(msg.receiver)
                continue
            except policy.refusals as exc:
                out.rejected[policy.blame(msg, exc)] = exc
                continue
            out.delivered.append((msg.receiver, msg.kind))
            queue.extend(replies)
        return out

    def exchange(self, messages: list[Message]) -> list[Message]:
        """Deliver ``messages``; route party-to-party replies; return coordinator-bound ones."""
        return self.route(messages).back

    def broadcast(self, receivers, kind: str, payload=None, round: int | None = None):
        return self.exchange([self.request(r, kind, payload, round) for r in receivers])
