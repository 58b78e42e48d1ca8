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

from vfl.core.errors import PartyDropoutError, PartyUnavailableError, ProtocolError
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
        return self.pipeline([messages], policy=policy)

    def pipeline(
        self,
        phases: list,
        *,
        final_kinds: frozenset[str] | set[str] = frozenset(),
        policy: FailurePolicy | None = None,
        on_back: Callable[[Message], None] | None = None,
    ) -> Routed:
        """Route several protocol phases as if :meth:`route` were called on each in turn,
        in fewer network round trips.

        Messages travel in *waves*: every message of a wave is handed to the transport at
        once (a networked transport sends one bundle per receiver), and the replies form the
        next wave. A wave is the breadth-first order of :meth:`route`'s queue, so each party
        receives its messages in the same order as from sequential routing, and a party's
        state depends only on the messages it receives.

        ``final_kinds`` are message kinds whose handlers answer only the coordinator (a
        passive applying its update, the active party storing an embedding): when a wave
        holds only such messages, nothing that follows from it can reach a party, so the next
        phase's messages join the same wave. That is what lets one message carry a round's
        backward step and the next round's forward request. A final kind whose handler
        answers a party breaks that assumption and raises :class:`ProtocolError`.
        ``on_back`` sees each coordinator-bound reply as it arrives (progress).

        A phase may also be a function of the wave it is about to join (``[]`` when it starts
        a wave), returning its messages: a phase whose receivers are known only once the
        previous phase has run (a horizontal round collects updates from exactly the clients
        the server asked to train)."""
        policy = self.policy if policy is None else policy
        out = Routed()
        pending = deque(phases)

        def take(wave: list[Message]) -> list[Message]:
            phase = pending.popleft()
            return list(phase(list(wave)) if callable(phase) else phase)

        wave: list[Message] = []
        while wave or pending:
            if not wave:
                wave = take([])
            while pending and all(
                m.receiver == COORDINATOR or m.kind in final_kinds for m in wave
            ):
                wave = wave + take(wave)
            batch = []
            for msg in wave:
                if msg.receiver == COORDINATOR:
                    self._back(msg, out, on_back)
                else:
                    batch.append(msg)
            wave = []
            for msg, outcome in zip(batch, self._deliver(batch, policy)):
                if isinstance(outcome, PartyUnavailableError):
                    if policy.dropouts == "abort":
                        raise PartyDropoutError(
                            f"party {msg.receiver!r} dropped out during {msg.kind!r}: "
                            f"{outcome}. Nothing was committed; restart the protocol when it "
                            "is back, or leave it out."
                        ) from outcome
                    out.dropped.append(msg.receiver)
                    continue
                if isinstance(outcome, Exception):
                    if isinstance(outcome, policy.refusals):
                        out.rejected[policy.blame(msg, outcome)] = outcome
                        continue
                    raise outcome
                if msg.kind in final_kinds and any(r.receiver != COORDINATOR for r in outcome):
                    raise ProtocolError(
                        f"{msg.kind!r} was declared final (its handler answers only the "
                        f"coordinator) but {msg.receiver!r} answered a party; route it "
                        "without pipelining"
                    )
                out.delivered.append((msg.receiver, msg.kind))
                wave.extend(outcome)
        return out

    def _back(self, msg: Message, out: Routed, on_back) -> None:
        received = self.transport.send_to_coordinator(msg)
        out.back.append(received)
        if on_back is not None:
            on_back(received)

    def _deliver(self, batch: list[Message], policy: FailurePolicy) -> list:
        """Per message, the receiver's replies or the exception it raised. A transport with
        ``deliver_many`` (a networked engine) gets the whole wave at once; otherwise messages
        are delivered one by one and an exception the policy does not handle stops the wave
        where it happened."""
        if not batch:
            return []
        deliver_many = getattr(self.transport, "deliver_many", None)
        if deliver_many is not None:
            return deliver_many(batch)
        outcomes: list = []
        for msg in batch:
            try:
                outcomes.append(self.transport.deliver(msg))
            except (PartyUnavailableError, *policy.refusals) as exc:
                outcomes.append(exc)
                if isinstance(exc, PartyUnavailableError) and policy.dropouts == "abort":
                    break  # nothing after an aborting drop-out is delivered
        return outcomes

    def exchange(self, messages: list[Message]) -> list[Message]:
        """Deliver ``messages``; route party-to-party replies; return coordinator-bound ones."""
        return self.route(messages).back

    def broadcast(self, receivers, kind: str, payload=None, round: int | None = None):
        return self.exchange([self.request(r, kind, payload, round) for r in receivers])
