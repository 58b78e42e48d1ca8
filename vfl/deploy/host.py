"""The party host: one organization's long-lived party, reached through a local socket.

Flower starts a fresh ClientApp process for every message it delivers, so a party cannot
live inside a ClientApp: its keys, rows, parameters and optimizer state (and JAX's compiled
programs, and the Paillier key tables) would be rebuilt for every message. The party lives
here instead, in one process on the organization's own machine, next to its SuperNode. The
ClientApp (:mod:`vfl.deploy.clientapp`) is a forwarder: it hands each bundle it receives to
this process over a Unix socket and returns the outcomes.

The socket is the host's only way in. It is created in a directory only its owner can enter
(mode 0700), so only the organization's own processes (its SuperNode's ClientApps) can reach
it. Everything that crosses it is bytes: bundles in, outcomes out
(:mod:`vfl.deploy.envelope`).

What the host adds around the party, and nothing else:

* ``deploy.hello`` (coordinator): the party's name and its X25519 public key;
* ``deploy.keys`` (coordinator): the other parties' public keys, pinned for the run (a key
  the operator pinned beforehand, ``--peer-key NAME=HEX``, must match, or the run stops with
  :class:`~vfl.core.sealing.KeyPinningError`);
* sealing: every party-to-party message it sends is sealed for its receiver, every one it
  receives must be sealed by its claimed sender (which is what authenticates the sender);
* ``deploy.save`` (coordinator): the party writes its own trained parameters to its own
  output directory (the model stays with the party);
* ``deploy.profile`` (coordinator): where this host's time went (public: seconds decoding
  bundles, opening and sealing payloads, in the party's handlers, encoding outcomes).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from vfl.core.errors import ConfigError, ProtocolError, TransportError, UnexpectedSenderError
from vfl.core.fileio import atomic_write
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.sealing import KeyPinningError, PinnedKeys, SealingKey
from vfl.deploy.envelope import (
    decode_bundle,
    encode_outcomes,
    is_party_to_party,
    open_sealed,
    seal,
)

HELLO, KEYS, SAVE, PROFILE = "deploy.hello", "deploy.keys", "deploy.save", "deploy.profile"
#: The receiver of a ``deploy.hello``: the coordinator does not yet know who a node is.
ANY = "<any node>"
_FRAME = struct.Struct(">Q")
#: A bundle larger than this is refused before it is read (a runaway or hostile peer).
MAX_FRAME_BYTES = 1 << 31


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_FRAME.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> bytes:
    head = _recv_exact(sock, _FRAME.size)
    (size,) = _FRAME.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise TransportError(f"a frame of {size} bytes exceeds the {MAX_FRAME_BYTES} limit")
    return _recv_exact(sock, size)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise TransportError("the party host closed the connection mid-frame")
        buf += chunk
    return bytes(buf)


class PartyHost:
    """One party, its sealing key and the keys it pinned; handles bundles."""

    def __init__(
        self,
        party,
        *,
        out_dir: str | Path | None = None,
        peer_keys: dict[str, bytes] | None = None,
        save: Callable[[object, Path], dict] | None = None,
    ):
        self.party = party
        self.name = party.name
        self.key = SealingKey(party.name)
        self.pinned = PinnedKeys()
        self.pinned.pin(self.name, self.key.public_bytes)
        # Keys the operator pinned out of band: the coordinator cannot substitute them.
        self.expected = dict(peer_keys or {})
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._save = save
        self._lock = threading.Lock()  # one bundle at a time: the party is not thread-safe
        self.profile = {"bundles": 0, "decode": 0.0, "open": 0.0, "handle": 0.0, "seal": 0.0,
                        "encode": 0.0}

    # -- one bundle ------------------------------------------------------------------------
    def handle_bundle(self, data: bytes) -> bytes:
        with self._lock:
            t0 = time.perf_counter()
            messages = decode_bundle(data)
            t1 = time.perf_counter()
            outcomes = [self._outcome(m) for m in messages]
            t2 = time.perf_counter()
            out = encode_outcomes(outcomes)
            prof = self.profile
            prof["bundles"] += 1
            prof["decode"] += t1 - t0
            prof["encode"] += time.perf_counter() - t2
            return out

    def _outcome(self, message: Message) -> list[Message] | Exception:
        try:
            if message.receiver != self.name and not (
                message.kind == HELLO and message.receiver == ANY
            ):
                raise ProtocolError(
                    f"{self.name!r} received a message for {message.receiver!r}; the engine "
                    "routed it to the wrong node"
                )
            if message.kind in (HELLO, KEYS, SAVE, PROFILE):
                return self._control(message)
            t0 = time.perf_counter()
            if is_party_to_party(message):
                message = open_sealed(message, self.key, self.pinned)
            t1 = time.perf_counter()
            replies = self.party.handle(message) or []
            t2 = time.perf_counter()
            out = [seal(r, self.key, self.pinned) if is_party_to_party(r) else r
                   for r in replies]
            prof = self.profile
            prof["open"] += t1 - t0
            prof["handle"] += t2 - t1
            prof["seal"] += time.perf_counter() - t2
            return out
        except Exception as exc:  # travels back as its class name and text
            return exc

    def _control(self, message: Message) -> list[Message]:
        if message.sender != COORDINATOR:
            raise UnexpectedSenderError(
                f"{self.name!r} refuses {message.kind!r} from {message.sender!r}: only the "
                "coordinator sets up a deployment"
            )
        if message.kind == HELLO:
            payload = {"party": self.name, "public_key": self.key.public_bytes}
        elif message.kind == KEYS:
            payload = self._pin(message.payload.get("keys"))
        elif message.kind == PROFILE:
            payload = dict(self.profile)
        else:
            payload = self._save_parameters()
        return [Message(self.name, COORDINATOR, message.kind, Label.PUBLIC, payload)]

    def _pin(self, keys) -> dict:
        if not isinstance(keys, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in keys.items()
        ):
            raise ProtocolError("deploy.keys needs a map of party name to public key bytes")
        if keys.get(self.name) != self.key.public_bytes:
            raise ProtocolError(
                f"the coordinator's key directory does not hold {self.name!r}'s own key; it "
                "was altered on the way"
            )
        for name, expected in self.expected.items():
            if name in keys and keys[name] != expected:
                raise KeyPinningError(
                    f"{name!r}'s public key from the coordinator ({keys[name].hex()[:16]}...) "
                    f"is not the one this operator pinned ({expected.hex()[:16]}...); "
                    "refusing to run"
                )
        for name, public in keys.items():
            self.pinned.pin(name, public)
        return {"pinned": sorted(keys)}

    def _save_parameters(self) -> dict:
        if self.out_dir is None or self._save is None:
            raise ConfigError(f"{self.name!r} was started without an output directory")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self._save(self.party, self.out_dir)

    # -- the socket ------------------------------------------------------------------------
    def serve(self, path: str | Path, ready: threading.Event | None = None,
              stop: threading.Event | None = None) -> None:
        """Serve bundles on the Unix socket ``path`` until ``stop`` is set."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        if path.exists():
            path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        os.chmod(path, 0o600)
        server.listen(8)
        server.settimeout(0.2)
        if ready is not None:
            ready.set()
        try:
            while stop is None or not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(None)
                    try:
                        send_frame(conn, self.handle_bundle(recv_frame(conn)))
                    except (TransportError, OSError) as exc:
                        # A forwarder that died mid-frame: nothing was handled.
                        print(f"[{self.name}] dropped a connection: {exc}", flush=True)
        finally:
            server.close()
            path.unlink(missing_ok=True)


def forward(path: str | Path, bundle: bytes, timeout: float | None = None) -> bytes:
    """Hand ``bundle`` to the host at ``path`` and return its outcomes (the ClientApp)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise TransportError(
            f"no party host is listening on {path}: start this organization's node with "
            f"`vfl deploy node` before its SuperNode takes messages ({exc})"
        ) from exc
    with sock:
        send_frame(sock, bundle)
        return recv_frame(sock)


def resolve(registry: dict[str, str], name: str, what: str):
    """The function ``registry[name]`` names (``module:function``); only names the registry
    lists, never one that came over the wire (:data:`vfl.deploy.serverapp.JOBS`,
    :data:`vfl.deploy.node.FACTORIES`)."""
    try:
        ref = registry[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; known: {sorted(registry)}") from None
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True).encode())
