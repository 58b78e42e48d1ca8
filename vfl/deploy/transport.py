"""The :class:`~vfl.core.transport.Transport` on Flower's Message API (runs in the ServerApp).

Each party is a SuperNode; its ClientApp forwards to the organization's party host
(:mod:`vfl.deploy.host`). This transport maps our messages onto Flower's:

* a wave of :meth:`~vfl.core.coordinator.Coordinator.pipeline` becomes one Flower
  ``query`` message per receiving party (a *bundle*, :mod:`vfl.deploy.envelope`), all pushed
  at once; the replies are pulled with a short interval (Flower's own
  ``send_and_receive`` sleeps 3 s between pulls);
* at setup (:meth:`FlowerTransport.connect`) every node says which party it serves and gives
  its X25519 public key; the name of each node is then pinned for the run, and every party
  receives the key directory and pins it;
* every message that crosses is recorded in the :class:`~vfl.core.transcript.Transcript`
  with the size of its encoding as it crossed; a party-to-party message crosses sealed, and
  its entry says so (``sealed``: the coordinator cannot read its payload).

Failures map onto the framework's: a node that does not answer within ``reply_timeout``
(stopped mid-round, or its SuperNode gone from the SuperLink) raises
:class:`~vfl.core.errors.PartyUnavailableError` for its messages, which the coordinator's
:class:`~vfl.core.coordinator.FailurePolicy` turns into an abort (vertical) or a recorded
drop-out (horizontal).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

from vfl.core.errors import (
    PartyUnavailableError,
    ProtocolError,
    TransportError,
    UnknownPartyError,
)
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.transcript import Transcript, TranscriptEntry
from vfl.deploy.envelope import decode_outcomes, encode_bundle, is_party_to_party
from vfl.deploy.host import ANY, HELLO, KEYS

RECORD, BUNDLE, OUTCOMES, TIMING = "vfl", "bundle", "outcomes", "timing"
#: The node id Flower's SuperLink uses for itself (flwr.common.constant.SUPERLINK_NODE_ID).
SUPERLINK_NODE = 1


class UnknownNodeError(TransportError):
    """A reply came from a Flower node that is not one of this run's pinned parties."""


class FlowerTransport:
    """Deliver bundles of messages to parties on Flower SuperNodes, through a ``Grid``."""

    def __init__(
        self,
        grid,
        *,
        reply_timeout: float = 120.0,
        poll_interval: float = 0.02,
        transcript: Transcript | None = None,
        capture: Callable[[bytes], None] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.grid = grid
        self.reply_timeout = float(reply_timeout)
        self.poll_interval = float(poll_interval)
        self.transcript = transcript if transcript is not None else Transcript()
        self._nodes: dict[str, int] = {}  # party -> node id, pinned at connect
        self._names: dict[int, str] = {}
        self.public_keys: dict[str, bytes] = {}
        # Every byte string the coordinator received from a node (tests inspect it).
        self.capture = capture
        self.log = log
        self.round_trips = 0
        self.network_bytes = {"sent": 0, "received": 0}
        self.waits: list[float] = []  # seconds per wave, push to last reply
        # Per node and wave: [wave, pushed, clientapp process start, imports done, relay
        # entered, host answered, reply pulled] (epoch seconds): where a round trip's time goes.
        self.timings: list[list[float]] = []

    # -- setup -----------------------------------------------------------------------------
    def connect(self, parties: list[str], *, wait: float = 120.0) -> None:
        """Find the nodes serving ``parties``, pin each node's party and key, and hand every
        party the key directory."""
        deadline = time.monotonic() + wait
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < len(parties) and time.monotonic() < deadline:
            time.sleep(0.2)
            nodes = list(self.grid.get_node_ids())
        if len(nodes) < len(parties):
            raise PartyUnavailableError(
                f"{len(nodes)} SuperNode(s) connected after {wait:.0f} s, but the run needs "
                f"{len(parties)} ({parties}); start every organization's `vfl deploy node` "
                "against this SuperLink"
            )
        hello = Message(COORDINATOR, ANY, HELLO, Label.PUBLIC, {})
        answers = self._exchange({node: [hello] for node in nodes})
        seen: dict[str, int] = {}
        for node, outcome in answers.items():
            if isinstance(outcome, Exception):
                raise PartyUnavailableError(f"node {node} did not say hello: {outcome}")
            ((replies, _),) = outcome
            (reply,) = replies
            name, key = reply.payload.get("party"), reply.payload.get("public_key")
            if not isinstance(name, str) or not isinstance(key, bytes):
                raise ProtocolError(f"node {node} answered hello without a party name and key")
            if name in seen:
                raise TransportError(
                    f"nodes {seen[name]} and {node} both serve party {name!r}; stop one of them"
                )
            seen[name] = node
            if name in parties:
                self._nodes[name], self._names[node] = node, name
                self.public_keys[name] = key
        missing = [p for p in parties if p not in self._nodes]
        if missing:
            raise UnknownPartyError(
                f"no connected node serves {missing}; the nodes serve {sorted(seen)}. Check "
                "each node's --party against the run's parties"
            )
        directory = {"keys": dict(self.public_keys)}
        self.deliver_many(
            [Message(COORDINATOR, p, KEYS, Label.PUBLIC, directory) for p in parties],
            raise_errors=True,
        )
        self.log(f"connected: {', '.join(f'{p} (node {self._nodes[p]})' for p in parties)}")

    @property
    def parties(self) -> list[str]:
        return list(self._nodes)

    def node_of(self, party: str) -> int:
        try:
            return self._nodes[party]
        except KeyError:
            raise UnknownPartyError(
                f"no node serves party {party!r} in this run; known: {self.parties}"
            ) from None

    # -- the Transport protocol ------------------------------------------------------------
    def deliver(self, message: Message) -> list[Message]:
        (outcome,) = self.deliver_many([message])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def send_to_coordinator(self, message: Message) -> Message:
        self._record(message, len(message.to_bytes()))
        return message

    def deliver_many(self, messages: list[Message], *, raise_errors: bool = False) -> list:
        """One bundle per receiver, pushed at once; per message, its replies or its error."""
        by_node: dict[int, list[Message]] = defaultdict(list)
        for m in messages:
            if m.receiver == COORDINATOR:
                raise TransportError("messages to the coordinator are returned, not delivered")
            by_node[self.node_of(m.receiver)].append(m)
        answers = self._exchange(by_node)
        per_node = {node: iter(a) if isinstance(a, list) else a for node, a in answers.items()}
        out: list = []
        for m in messages:
            got = per_node[self._nodes[m.receiver]]
            if isinstance(got, Exception):
                out.append(got)
                continue
            result = next(got)
            if isinstance(result, Exception):
                out.append(result)
                continue
            replies, _ = result
            for reply in replies:
                if reply.sender != m.receiver:
                    raise UnknownNodeError(
                        f"node {self._nodes[m.receiver]} (party {m.receiver!r}) sent a message "
                        f"as {reply.sender!r}; a node speaks only for its own party"
                    )
            out.append(replies)
        if raise_errors:
            for o in out:
                if isinstance(o, Exception):
                    raise o
        return out

    def ask_all(self, kind: str, parties: list[str] | None = None) -> dict[str, dict]:
        """A deployment control request (``deploy.save``, ``deploy.profile``) to every party
        (default: all pinned), in one wave; per party its public answer, or
        ``{"unavailable": reason}`` for a party that is gone (a recorded drop-out)."""
        parties = self.parties if parties is None else list(parties)
        out: dict[str, dict] = {}
        outcomes = self.deliver_many(
            [Message(COORDINATOR, p, kind, Label.PUBLIC, {}) for p in parties]
        )
        for party, outcome in zip(parties, outcomes):
            if isinstance(outcome, PartyUnavailableError):
                out[party] = {"unavailable": str(outcome)}
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                out[party] = dict(outcome[0].payload)
        return out

    # -- Flower ----------------------------------------------------------------------------
    def _exchange(self, by_node: dict[int, list[Message]]) -> dict:
        from flwr.app import ConfigRecord, RecordDict

        t0 = time.perf_counter()
        pushed: dict[str, int] = {}
        out: dict = {}
        flower = []
        for node, msgs in by_node.items():
            for m in msgs:
                self._record(m, len(m.to_bytes()))
            bundle = encode_bundle(msgs)
            self.network_bytes["sent"] += len(bundle)
            flower.append(self.grid.create_message(
                RecordDict({RECORD: ConfigRecord({BUNDLE: bundle})}), "query", node, "vfl"
            ))
        ids = list(self.grid.push_messages(flower))
        if len(ids) != len(flower) or None in ids:
            raise TransportError(
                "the SuperLink refused some messages (too large, or malformed); see its log"
            )
        for node, mid in zip(by_node, ids):
            pushed[mid] = node
        pushed_at = time.time()
        self.round_trips += 1
        deadline = time.monotonic() + self.reply_timeout
        next_check = time.monotonic() + 1.0
        while pushed:
            for reply in self.grid.pull_messages(list(pushed)):
                mid = reply.metadata.reply_to_message_id
                node = pushed.pop(mid, None)
                if node is None:
                    raise UnknownNodeError(
                        f"a reply from node {reply.metadata.src_node_id} answers no message "
                        "this coordinator sent; refused"
                    )
                if reply.metadata.src_node_id == SUPERLINK_NODE and reply.has_error():
                    # Flower's SuperLink answers for a node that left it (stopped, or its
                    # heartbeats lapsed) with an error reply from its own id.
                    out[node] = PartyUnavailableError(
                        f"party {self._label(node)} is unavailable: {reply.error.reason}"
                    )
                    continue
                if reply.metadata.src_node_id != node:
                    raise UnknownNodeError(
                        f"node {reply.metadata.src_node_id} answered a message sent to node "
                        f"{node}; refused"
                    )
                out[node] = self._read_reply(node, reply, len(by_node[node]))
                if not reply.has_error() and TIMING in reply.content[RECORD]:
                    self.timings.append(
                        [self.round_trips, pushed_at, *map(float, reply.content[RECORD][TIMING]),
                         time.time()]
                    )
            if not pushed:
                break
            now = time.monotonic()
            if now >= deadline:
                for node in pushed.values():
                    out[node] = PartyUnavailableError(
                        f"party {self._label(node)} did not answer within "
                        f"{self.reply_timeout:.0f} s (its node stopped or lost its connection)"
                    )
                break
            if now >= next_check:
                next_check = now + 1.0
                alive = set(self.grid.get_node_ids())
                for mid, node in list(pushed.items()):
                    if node not in alive:
                        pushed.pop(mid)
                        out[node] = PartyUnavailableError(
                            f"party {self._label(node)}'s SuperNode left the SuperLink"
                        )
            time.sleep(self.poll_interval)
        self.waits.append(time.perf_counter() - t0)
        return out

    def _label(self, node: int) -> str:
        name = self._names.get(node)
        return repr(name) if name is not None else f"at node {node}"

    def _read_reply(self, node: int, reply, expected: int):
        if reply.has_error():
            return PartyUnavailableError(
                f"party {self._label(node)} could not handle its messages: "
                f"{reply.error.reason}"
            )
        try:
            data = bytes(reply.content[RECORD][OUTCOMES])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"node {node} answered without outcomes: {exc}") from exc
        self.network_bytes["received"] += len(data)
        if self.capture is not None:
            self.capture(data)
        return decode_outcomes(data, expected)

    def _record(self, message: Message, size: int) -> None:
        self.transcript.record(
            TranscriptEntry.of(message, size, sealed=is_party_to_party(message))
        )
