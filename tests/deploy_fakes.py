"""An in-process stand-in for Flower's ``Grid``, for fast tests of the deployment code.

:class:`FakeGrid` gives :class:`~vfl.deploy.transport.FlowerTransport` what Flower's Grid
gives it (node ids, ``create_message``, ``push_messages``, ``pull_messages``) and delivers
each bundle to a real :class:`~vfl.deploy.host.PartyHost` over its real Unix socket, through
the same ``forward`` the ClientApp uses. Everything but Flower's own processes and polling
is exercised: envelopes, sealing, key pinning, pipelining, node pinning, errors. The slow
tests (``test_deploy_flower.py``) run the real SuperLink and SuperNodes.
"""

from __future__ import annotations

import itertools
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from vfl.deploy.host import PartyHost, forward

RECORD, BUNDLE, OUTCOMES = "vfl", "bundle", "outcomes"


@dataclass
class _Meta:
    message_id: str = ""
    reply_to_message_id: str = ""
    src_node_id: int = 0
    dst_node_id: int = 0


@dataclass
class _Error:
    reason: str


@dataclass
class FakeMessage:
    content: dict
    metadata: _Meta = field(default_factory=_Meta)
    error: _Error | None = None

    def has_error(self) -> bool:
        return self.error is not None


class FakeGrid:
    """Nodes are party hosts on Unix sockets; a node can be stopped or made to misbehave."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.sockets: dict[int, Path] = {}
        self.hosts: dict[int, PartyHost] = {}
        self._stops: dict[int, threading.Event] = {}
        self._inbox: dict[str, FakeMessage] = {}
        self.silent: set[int] = set()  # nodes that take messages but never answer
        self.stopped: set[int] = set()
        self.reply_as: dict[int, int] = {}  # node -> node id its replies claim to come from
        self.pushed: list[tuple[int, bytes]] = []
        self._dir = Path(tempfile.mkdtemp(prefix="vfl-fakegrid-"))

    def add(self, host: PartyHost) -> int:
        node = 1000 + len(self.hosts)
        path = self._dir / f"n{node}" / "party.sock"
        ready, stop = threading.Event(), threading.Event()
        threading.Thread(target=host.serve, args=(path, ready, stop), daemon=True).start()
        assert ready.wait(10)
        self.sockets[node], self.hosts[node], self._stops[node] = path, host, stop
        return node

    def stop(self, node: int) -> None:
        """The node's machine goes away: it leaves the grid and its host stops. As Flower's
        SuperLink does, messages to it are then answered with an error from node 1."""
        self._stops[node].set()
        self.sockets.pop(node)
        self.stopped.add(node)

    def close(self) -> None:
        for ev in self._stops.values():
            ev.set()

    # -- what FlowerTransport uses ---------------------------------------------------------
    def get_node_ids(self):
        return list(self.sockets)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        bundle = bytes(content[RECORD][BUNDLE])
        return FakeMessage({RECORD: {BUNDLE: bundle}}, _Meta(dst_node_id=dst_node_id))

    def push_messages(self, messages):
        ids = []
        for m in messages:
            mid = f"m{next(self._ids)}"
            m.metadata.message_id = mid
            self._inbox[mid] = m
            self.pushed.append((m.metadata.dst_node_id, m.content[RECORD][BUNDLE]))
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        out = []
        for mid in list(message_ids):
            m = self._inbox.get(mid)
            if m is None:
                continue
            node = m.metadata.dst_node_id
            if node in self.stopped:
                del self._inbox[mid]
                meta = _Meta(reply_to_message_id=mid, src_node_id=1)
                out.append(FakeMessage({}, meta, _Error("the node is no longer connected")))
                continue
            if node not in self.sockets or node in self.silent:
                continue  # no answer (the transport's timeout or liveness check decides)
            del self._inbox[mid]
            meta = _Meta(reply_to_message_id=mid, src_node_id=self.reply_as.get(node, node))
            try:
                outcomes = forward(self.sockets[node], m.content[RECORD][BUNDLE], timeout=600)
            except Exception as exc:  # the ClientApp raised: Flower answers with an error
                out.append(FakeMessage({}, meta, _Error(f"{type(exc).__name__}: {exc}")))
                continue
            out.append(FakeMessage({RECORD: {OUTCOMES: outcomes}}, meta))
        return out
