"""The four rounds of SecAgg / SecAgg+ as pure functions over small frozen state objects.

Threat model (Bonawitz et al. 2017; Bell et al. 2020, §3): the server is semi-honest --
it runs these functions faithfully but tries to learn individual updates from what it
sees -- and may collude with up to ``t - 1`` of any client's share holders; clients may drop
out at any moment. The server learns ``sum_{u in U3} x_u`` for the set ``U3`` of clients
whose masked input arrived, and nothing else about any honest ``x_u``.

Rounds (``n`` clients, graph and ``t`` from :mod:`horizontal.secagg.graph`; ``N(u)`` are u's
neighbours, ``holders(u) = {u} ∪ N(u)``)

0. **advertise keys** -- :func:`client_advertise`: each client makes two fresh X25519 pairs
   (``c``, ``s``) and sends the public halves. :func:`server_collect_keys`: ``U1`` = who
   answered; each client gets the keys of its neighbours in ``U1``.
1. **share keys** -- :func:`client_share_keys`: ``u`` draws the self-mask seed ``b_u``,
   Shamir-shares ``b_u`` and ``s_u^SK`` t-of-``|holders(u) ∩ U1|``, keeps its own share, and
   encrypts each neighbour's pair under the ``c`` key agreed with it.
   :func:`server_collect_shares`: ``U2`` = who answered; each client gets the ciphertexts
   addressed to it by neighbours in ``U2``.
2. **masked input** -- :func:`client_masked_input`: ``u`` decrypts its shares, then sends
   ``y_u = x_u + PRG(b_u) + sum_{v in N(u) ∩ U2} ±PRG(s_uv) mod 2^k``.
   :func:`server_collect_masked`: ``U3`` = whose ``y`` arrived, fixed from now on (a late
   ``y`` is never accepted); each survivor is asked, for each neighbour, for *either* the
   ``b`` share (neighbour in ``U3``) *or* the ``s`` share (neighbour in ``U2 \\ U3``).
3. **unmasking** -- :func:`client_unmask`: a client answers one such request per round, and
   refuses one naming a client as both survivor and dropped.
   :func:`server_unmask`: rebuilds ``b_u`` for ``u in U3`` and ``s_u^SK`` for ``u in U2 \\ U3``
   (checked against ``s_u^PK``), removes the self-masks and the dropped clients' pairwise
   masks, and returns the sum.

Never both masks of one client: a client in ``U3`` has its ``y_u`` in the sum, protected only
by ``PRG(b_u)`` once its pairwise masks are known, and by its pairwise masks once ``b_u`` is
known. The server therefore fixes ``U3`` before asking anything, asks per client for one
kind only (:func:`check_unmask_plan`), and refuses responses that carry the other kind
(:class:`~horizontal.secagg.errors.MaskReconstructionError`); honest clients answer only once.

Dropouts: before round 1 a dropped client is simply left out; between rounds 1 and 2 its
shares were never delivered and no one masks with it; after sending shares but no ``y``
(``U2 \\ U3``) its ``s`` is rebuilt; after sending ``y`` but before unmasking its ``b`` is
rebuilt from its neighbours. :class:`~horizontal.secagg.errors.TooManyDropoutsError` is
raised, and nothing returned, when fewer than ``t`` clients are left at any stage (more than
``n - t`` dropped) or any needed secret has fewer than ``t`` live holders.

Messages are plain dicts of ``bytes``, ``int``, ``str``, lists and numpy arrays, so they
travel as :class:`vfl.core.messages.Message` payloads through :mod:`vfl.core.wire` unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from horizontal.secagg import masks, shamir
from horizontal.secagg.errors import (
    KeyAgreementError,
    MaskReconstructionError,
    SecAggProtocolError,
    ShareDecryptionError,
    TooManyDropoutsError,
)
from horizontal.secagg.graph import SecAggGraph
from horizontal.secagg.keys import (
    KEY_BYTES,
    ClientKeys,
    Context,
    decrypt_share,
    encrypt_share,
    mask_seeds,
    public_from_private,
    share_keys,
)
from horizontal.secagg.quantize import Quantizer

_PLAINTEXT_BYTES = 2 * shamir.SHARE_WIRE_BYTES


def _empty() -> Mapping:
    return MappingProxyType({})


# -- the public setup --------------------------------------------------------------------------
@dataclass(frozen=True)
class SecAggSetup:
    """What the server announces and every party agrees on before round 0.

    ``quantizer`` set: clients pass float updates and the server's result is decoded to
    floats; the overflow bound is checked here for all ``n`` clients, before any key exists.
    ``quantizer`` None: clients pass ring vectors (``uint32``/``uint64``) directly.
    """

    graph: SecAggGraph
    length: int
    bits: int = 32
    round: int = 0
    session: str = ""
    quantizer: Quantizer | None = None

    def __post_init__(self):
        masks.ring_dtype(self.bits)
        if not isinstance(self.length, int) or isinstance(self.length, bool) or self.length < 1:
            raise SecAggProtocolError(f"vector length must be a positive integer, got "
                                      f"{self.length!r}")
        if not isinstance(self.round, int) or isinstance(self.round, bool) or self.round < 0:
            raise SecAggProtocolError(f"round must be a non-negative integer, got {self.round!r}")
        if not isinstance(self.session, str):
            raise SecAggProtocolError("session must be a string")
        if self.quantizer is not None:
            if self.quantizer.bits != self.bits:
                raise SecAggProtocolError(
                    f"quantizer works in Z_2^{self.quantizer.bits} but the setup in "
                    f"Z_2^{self.bits}")
            self.quantizer.check(self.graph.n)  # RingOverflowError before anything is masked

    @property
    def n(self) -> int:
        return self.graph.n

    @property
    def t(self) -> int:
        return self.graph.t

    @property
    def context(self) -> Context:
        return Context(self.session, self.round)

    @property
    def dtype(self) -> np.dtype:
        return masks.ring_dtype(self.bits)

    def to_payload(self) -> dict:
        q = self.quantizer
        return {
            "graph": self.graph.to_payload(), "length": self.length, "bits": self.bits,
            "round": self.round, "session": self.session,
            "quantizer": None if q is None else {"clip": float(q.clip), "scale": float(q.scale)},
        }

    @classmethod
    def from_payload(cls, payload: Mapping) -> SecAggSetup:
        try:
            q = payload["quantizer"]
            bits = payload["bits"]
            return cls(
                graph=SecAggGraph.from_payload(payload["graph"]), length=payload["length"],
                bits=bits, round=payload["round"], session=payload["session"],
                quantizer=None if q is None else Quantizer(q["clip"], q["scale"], bits),
            )
        except (KeyError, TypeError) as exc:
            raise SecAggProtocolError(f"malformed secure-aggregation setup: {exc!r}") from None


# -- payload checks ----------------------------------------------------------------------------
def _mapping(payload, key: str, what: str) -> Mapping:
    value = payload.get(key) if isinstance(payload, Mapping) else None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise SecAggProtocolError(f"{what}: expected a dict under {key!r}")
    return value


def _names(payload, key: str, what: str) -> list[str]:
    value = payload.get(key) if isinstance(payload, Mapping) else None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SecAggProtocolError(f"{what}: expected a list of names under {key!r}")
    if len(set(value)) != len(value):
        raise SecAggProtocolError(f"{what}: repeated names under {key!r}")
    return list(value)


def _public_keys(entry, who: str) -> tuple[bytes, bytes]:
    if not isinstance(entry, Mapping):
        raise SecAggProtocolError(f"keys of {who!r}: expected a dict with 'c_pk' and 's_pk'")
    c, s = entry.get("c_pk"), entry.get("s_pk")
    for what, key in (("c_pk", c), ("s_pk", s)):
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise KeyAgreementError(f"{what} of {who!r} must be {KEY_BYTES} bytes")
    return c, s


def _check_distinct(keys: Mapping[str, tuple[bytes, bytes]]) -> None:
    """Bonawitz et al.'s check: all advertised public keys differ (a copied key would let
    one client impersonate another's masks)."""
    flat = [k for pair in keys.values() for k in pair]
    if len(set(flat)) != len(flat):
        raise KeyAgreementError("two advertised public keys are equal; keys must be fresh")


def _too_few(stage: str, alive: int, n: int, t: int) -> TooManyDropoutsError:
    return TooManyDropoutsError(
        f"{stage}: only {alive} of {n} clients left, fewer than the threshold t={t} "
        f"(more than n - t = {n - t} dropped); the round is aborted and nothing is revealed"
    )


# -- client side --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientState:
    """A client's private state through one aggregation (never sent anywhere)."""

    setup: SecAggSetup
    name: str
    keys: ClientKeys
    stage: str = "advertised"
    # neighbours in U1: (c_pk, s_pk)
    peer_keys: Mapping[str, tuple[bytes, bytes]] = field(default_factory=_empty)
    b: bytes | None = None  # self-mask seed
    own_shares: tuple[shamir.Share, shamir.Share] | None = None  # (of b_u, of s_u^SK)
    # shares (of b_v, of s_v^SK) held for neighbours v in U2
    held: Mapping[str, tuple[shamir.Share, shamir.Share]] = field(default_factory=_empty)
    mask_peers: tuple[str, ...] = ()  # neighbours in U2, masked with in round 2
    # keys of the shares addressed to me, per neighbour in U1 (derived in round 1)
    recv_keys: Mapping[str, bytes] = field(default_factory=_empty, repr=False)

    def __repr__(self) -> str:
        return f"ClientState(name={self.name!r}, stage={self.stage!r})"


def _expect(state: ClientState, stage: str, what: str) -> None:
    if state.stage != stage:
        raise SecAggProtocolError(
            f"{state.name}: {what} is not allowed at stage {state.stage!r} (expected {stage!r})")


def client_advertise(setup: SecAggSetup, name: str) -> tuple[ClientState, dict]:
    """Round 0: fresh key pairs; the payload is ``{"c_pk": bytes, "s_pk": bytes}``."""
    if name not in setup.graph.neighbours:
        raise SecAggProtocolError(f"{name!r} is not a client of this aggregation")
    keys = ClientKeys.generate()
    return ClientState(setup=setup, name=name, keys=keys), keys.public()


def client_share_keys(state: ClientState, payload: Mapping) -> tuple[ClientState, dict]:
    """Round 1. ``payload = {"keys": {neighbour: {"c_pk", "s_pk"}}}`` (neighbours in U1);
    returns ``{"shares": {neighbour: encrypted pair of shares}}``."""
    _expect(state, "advertised", "sharing keys")
    setup, me = state.setup, state.name
    raw = _mapping(payload, "keys", f"{me}: round-1 keys")
    neighbours = set(setup.graph.neighbours[me])
    strangers = sorted(set(raw) - neighbours)
    if strangers:
        raise SecAggProtocolError(f"{me}: keys of non-neighbours {strangers} were forwarded")
    peer_keys = {v: _public_keys(raw[v], v) for v in sorted(raw)}
    _check_distinct({**peer_keys, me: (state.keys.c.public, state.keys.s.public)})
    holders = sorted({me, *peer_keys})
    if len(holders) < setup.t:
        raise TooManyDropoutsError(
            f"{me}: only {len(holders)} holders for my shares (me and {len(peer_keys)} live "
            f"neighbours), fewer than t={setup.t}")
    b = os.urandom(shamir.SECRET_BYTES)
    b_shares, s_shares = shamir.split_many([b, state.keys.s.private], setup.t, len(holders))
    # one agreement per neighbour gives both directions: me -> v now, v -> me in round 2
    keys = share_keys(state.keys.c.private, {v: peer_keys[v][0] for v in peer_keys}, me,
                      setup.context)
    out, own = {}, None
    for holder, bs, ss in zip(holders, b_shares, s_shares, strict=True):
        if holder == me:
            own = (bs, ss)
            continue
        out[holder] = encrypt_share(keys[holder][0], bs.to_bytes() + ss.to_bytes(), me, holder,
                                    setup.context)
    new = replace(state, stage="shared", peer_keys=MappingProxyType(peer_keys), b=b,
                  own_shares=own,
                  recv_keys=MappingProxyType({v: pair[1] for v, pair in keys.items()}))
    return new, {"shares": out}


def _vector(state: ClientState, update) -> np.ndarray:
    setup = state.setup
    if setup.quantizer is not None:
        x = setup.quantizer.quantize(update, setup.n)  # RingOverflowError before masking
    else:
        x = np.asarray(update)
        if x.dtype != setup.dtype:
            raise SecAggProtocolError(
                f"{state.name}: without a quantizer the update must be a {setup.dtype} ring "
                f"vector, got {x.dtype}")
    if x.shape != (setup.length,):
        raise SecAggProtocolError(
            f"{state.name}: update has shape {x.shape}, the setup says ({setup.length},)")
    return x


def client_masked_input(state: ClientState, payload: Mapping, update) -> tuple[ClientState, dict]:
    """Round 2. ``payload = {"shares": {neighbour: ciphertext}}`` (neighbours in U2);
    returns ``{"masked": y_u}`` (a ring vector). Tampered ciphertexts raise
    :class:`ShareDecryptionError`; the update is quantized (and the overflow bound checked)
    before any mask is computed."""
    _expect(state, "shared", "sending the masked input")
    setup, me = state.setup, state.name
    x = _vector(state, update)
    raw = _mapping(payload, "shares", f"{me}: round-2 shares")
    unknown = sorted(set(raw) - set(state.peer_keys))
    if unknown:
        raise SecAggProtocolError(f"{me}: shares from clients I have no keys of: {unknown}")
    held = {}
    for v in sorted(raw):
        plain = decrypt_share(state.recv_keys[v], raw[v], v, me, setup.context)
        if len(plain) != _PLAINTEXT_BYTES:
            raise ShareDecryptionError(f"{me}: share plaintext from {v!r} has a wrong length")
        bs = shamir.Share.from_bytes(plain[: shamir.SHARE_WIRE_BYTES])
        ss = shamir.Share.from_bytes(plain[shamir.SHARE_WIRE_BYTES:])
        if bs.index != ss.index:
            raise ShareDecryptionError(f"{me}: share indices from {v!r} disagree")
        held[v] = (bs, ss)
    peers = tuple(sorted(held))
    if len(peers) + 1 < setup.t:
        raise TooManyDropoutsError(
            f"{me}: only {len(peers)} neighbours shared keys; with me that is fewer than "
            f"t={setup.t}")
    y = x.copy()
    masks.add_self_mask(y, state.b)
    seeds = mask_seeds(state.keys.s.private, {v: state.peer_keys[v][1] for v in peers}, me,
                       setup.context)
    for v in peers:
        masks.add_pairwise_mask(y, me, v, seeds[v])
    new = replace(state, stage="masked", held=MappingProxyType(held), mask_peers=peers)
    return new, {"masked": y}


def client_unmask(state: ClientState, payload: Mapping) -> tuple[ClientState, dict]:
    """Round 3. ``payload = {"survivors": [...], "dropped": [...]}``; returns
    ``{"b_shares": {name: bytes}, "s_shares": {name: bytes}}``. Answered once per
    aggregation; a name in both lists, a live client (me) called dropped, or a name I hold
    no share of is refused with :class:`MaskReconstructionError` /
    :class:`SecAggProtocolError`."""
    _expect(state, "masked", "unmasking")
    me = state.name
    survivors = _names(payload, "survivors", f"{me}: unmask request")
    dropped = _names(payload, "dropped", f"{me}: unmask request")
    both = sorted(set(survivors) & set(dropped))
    if both:
        raise MaskReconstructionError(
            f"{me}: the server asks for both masks of {both}; refusing to answer")
    if me in dropped:
        raise MaskReconstructionError(f"{me}: the server calls me dropped; refusing to answer")
    unknown = sorted((set(survivors) - {me} - set(state.held)) | (set(dropped) - set(state.held)))
    if unknown:
        raise SecAggProtocolError(f"{me}: asked for shares I do not hold: {unknown}")
    b_out = {u: state.held[u][0].to_bytes() for u in survivors if u != me}
    if me in survivors:
        b_out[me] = state.own_shares[0].to_bytes()
    s_out = {u: state.held[u][1].to_bytes() for u in dropped}
    return replace(state, stage="done"), {"b_shares": b_out, "s_shares": s_out}


# -- server side --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerState:
    """The server's view through one aggregation."""

    setup: SecAggSetup
    stage: str = "keys"
    # U1: (c_pk, s_pk)
    public_keys: Mapping[str, tuple[bytes, bytes]] = field(default_factory=_empty)
    u2: tuple[str, ...] = ()
    u3: tuple[str, ...] = ()
    masked_sum: np.ndarray | None = field(default=None, repr=False, compare=False)
    plan: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=_empty)


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The unmasked sum over ``included`` (= U3), in the ring and, with a quantizer, as floats.

    ``revealed`` records which secret was rebuilt for whom (``"b"`` or ``"s"``): never both.
    """

    total: np.ndarray
    included: tuple[str, ...]
    dropped: tuple[str, ...]
    revealed: Mapping[str, str]
    values: np.ndarray | None = None


def _stage(state: ServerState, stage: str, what: str) -> None:
    if state.stage != stage:
        raise SecAggProtocolError(f"server: {what} at stage {state.stage!r} (expected {stage!r})")


def _known(senders, allowed, what: str) -> None:
    bad = sorted(set(senders) - set(allowed))
    if bad:
        raise SecAggProtocolError(f"server: {what} from clients not expected here: {bad}")


def server_start(setup: SecAggSetup) -> ServerState:
    return ServerState(setup=setup)


def server_collect_keys(state: ServerState, adverts: Mapping[str, Mapping]
                        ) -> tuple[ServerState, dict[str, dict]]:
    """End of round 0: ``adverts = {client: {"c_pk", "s_pk"}}`` from those who answered.
    Returns the round-1 payload per client in U1."""
    _stage(state, "keys", "collecting keys")
    setup, g = state.setup, state.setup.graph
    _known(adverts, g.names, "keys")
    keys = {u: _public_keys(adverts[u], u) for u in sorted(adverts)}
    _check_distinct(keys)
    u1 = set(keys)
    if len(u1) < setup.t:
        raise _too_few("round 0 (advertise keys)", len(u1), setup.n, setup.t)
    for u in sorted(u1):
        live = [v for v in g.holders(u) if v in u1]
        if len(live) < setup.t:
            raise TooManyDropoutsError(
                f"round 0: {u} has only {len(live)} live share holders, fewer than "
                f"t={setup.t}; its secrets could never be rebuilt")
    out = {
        u: {"keys": {v: {"c_pk": keys[v][0], "s_pk": keys[v][1]}
                     for v in g.neighbours[u] if v in u1}}
        for u in sorted(u1)
    }
    return replace(state, stage="shares", public_keys=MappingProxyType(keys)), out


def server_collect_shares(state: ServerState, shares: Mapping[str, Mapping]
                          ) -> tuple[ServerState, dict[str, dict]]:
    """End of round 1: ``shares = {sender: {"shares": {receiver: ciphertext}}}``.
    Returns the round-2 payload per client in U2 (the ciphertexts addressed to it)."""
    _stage(state, "shares", "collecting shares")
    setup, g = state.setup, state.setup.graph
    u1 = set(state.public_keys)
    _known(shares, u1, "shares")
    for u in shares:
        receivers = set(_mapping(shares[u], "shares", f"server: shares of {u}"))
        expected = {v for v in g.neighbours[u] if v in u1}
        if receivers != expected:
            raise SecAggProtocolError(
                f"server: {u} sent shares to {sorted(receivers)}, expected {sorted(expected)}")
        if not all(isinstance(c, bytes) for c in shares[u]["shares"].values()):
            raise SecAggProtocolError(f"server: ciphertexts of {u} must be bytes")
    u2 = set(shares)
    if len(u2) < setup.t:
        raise _too_few("round 1 (share keys)", len(u2), setup.n, setup.t)
    for u in sorted(u2):
        live = [v for v in g.holders(u) if v in u2]
        if len(live) < setup.t:
            raise TooManyDropoutsError(
                f"round 1: {u} has only {len(live)} live share holders, fewer than t={setup.t}")
    out = {
        v: {"shares": {u: shares[u]["shares"][v] for u in g.neighbours[v] if u in u2}}
        for v in sorted(u2)
    }
    return replace(state, stage="masked", u2=tuple(sorted(u2))), out


def check_unmask_plan(plan: Mapping[str, Mapping[str, list]]) -> None:
    """Refuse a request pattern that would reveal both masks of any client: a client may be
    named a survivor (its ``b`` shares asked) or dropped (its ``s`` shares asked) across the
    whole plan, never both."""
    asked_b = {u for req in plan.values() for u in req.get("survivors", ())}
    asked_s = {u for req in plan.values() for u in req.get("dropped", ())}
    both = sorted(asked_b & asked_s)
    if both:
        raise MaskReconstructionError(
            f"server: the unmask plan asks for both the self-mask and the pairwise-mask shares "
            f"of {both}; that would expose their updates")


def server_collect_masked(state: ServerState, masked: Mapping[str, Mapping]
                          ) -> tuple[ServerState, dict[str, dict]]:
    """End of round 2: ``masked = {client: {"masked": y}}``. Fixes U3 and returns the
    round-3 request per client in U3: ``{"survivors": [...], "dropped": [...]}``."""
    _stage(state, "masked", "collecting masked inputs")
    setup, g = state.setup, state.setup.graph
    u2 = set(state.u2)
    _known(masked, u2, "masked inputs")
    ys = []
    for u in sorted(masked):
        y = masked[u].get("masked") if isinstance(masked[u], Mapping) else None
        if not isinstance(y, np.ndarray) or y.dtype != setup.dtype or y.shape != (setup.length,):
            raise SecAggProtocolError(
                f"server: masked input of {u} must be a {setup.dtype} vector of length "
                f"{setup.length}")
        ys.append(y)
    u3 = set(masked)
    if len(u3) < setup.t:
        raise _too_few("round 2 (masked input)", len(u3), setup.n, setup.t)
    gone = u2 - u3
    # Every needed secret must have t potential holders among those who can still answer.
    for u in sorted(u2):
        live = [v for v in g.holders(u) if v in u3]
        if len(live) < setup.t:
            kind = "self-mask seed" if u in u3 else "mask key"
            raise TooManyDropoutsError(
                f"round 2: the {kind} of {u} has only {len(live)} live holders, fewer than "
                f"t={setup.t}")
    plan = {
        v: {"survivors": tuple(u for u in g.holders(v) if u in u3),
            "dropped": tuple(u for u in g.neighbours[v] if u in gone)}
        for v in sorted(u3)
    }
    check_unmask_plan(plan)
    total = masks.ring_sum(ys, setup.length, setup.bits)
    new = replace(state, stage="unmask", u3=tuple(sorted(u3)), masked_sum=total,
                  plan=MappingProxyType(plan))
    return new, {v: {"survivors": list(r["survivors"]), "dropped": list(r["dropped"])}
                 for v, r in plan.items()}


def _shares_from(resp, key: str, who: str) -> Mapping[str, bytes]:
    shares = _mapping(resp, key, f"server: unmask response of {who}")
    if not all(isinstance(s, bytes) for s in shares.values()):
        raise SecAggProtocolError(f"server: shares of {who} must be bytes")
    return shares


def server_unmask(state: ServerState, responses: Mapping[str, Mapping]) -> AggregateResult:
    """End of round 3: ``responses = {client: {"b_shares": {...}, "s_shares": {...}}}`` from
    clients in U3. Returns the sum over U3, or raises (and returns nothing)."""
    _stage(state, "unmask", "unmasking")
    setup, g = state.setup, state.setup.graph
    u2, u3 = set(state.u2), set(state.u3)
    gone = u2 - u3
    _known(responses, u3, "unmask responses")
    if len(responses) < setup.t:
        raise _too_few("round 3 (unmasking)", len(responses), setup.n, setup.t)
    b_parts: dict[str, list[shamir.Share]] = {u: [] for u in u3}
    s_parts: dict[str, list[shamir.Share]] = {u: [] for u in gone}
    for v in sorted(responses):
        asked = state.plan[v]
        b_sh = _shares_from(responses[v], "b_shares", v)
        s_sh = _shares_from(responses[v], "s_shares", v)
        for kind, got, allowed in (("b", b_sh, asked["survivors"]),
                                   ("s", s_sh, asked["dropped"])):
            extra = sorted(set(got) - set(allowed))
            if extra:
                raise MaskReconstructionError(
                    f"server: {v} sent {kind} shares of {extra}, which were not asked for; "
                    "refusing to hold both masks of a client")
        for u, data in b_sh.items():
            b_parts[u].append(shamir.Share.from_bytes(data))
        for u, data in s_sh.items():
            s_parts[u].append(shamir.Share.from_bytes(data))
    short = sorted([u for u, p in b_parts.items() if len(p) < setup.t]
                   + [u for u, p in s_parts.items() if len(p) < setup.t])
    if short:
        raise TooManyDropoutsError(
            f"round 3: fewer than t={setup.t} shares arrived to rebuild the masks of {short}")
    revealed: dict[str, str] = {}

    def reveal(u: str, kind: str) -> None:
        if revealed.setdefault(u, kind) != kind:
            raise MaskReconstructionError(f"server: both masks of {u} would be rebuilt")

    total = state.masked_sum.copy()
    b_names, s_names = sorted(b_parts), sorted(s_parts)
    for u in b_names:
        reveal(u, "b")
    for u in s_names:
        reveal(u, "s")
    # all secrets at once: those rebuilt from the same share indices share one interpolation
    secrets = shamir.reconstruct_many([b_parts[u] for u in b_names]
                                      + [s_parts[u] for u in s_names], setup.t)
    for b in secrets[:len(b_names)]:
        masks.add_self_mask(total, b, sign=-1)
    for u, s_sk in zip(s_names, secrets[len(b_names):], strict=True):
        if public_from_private(s_sk) != state.public_keys[u][1]:
            raise SecAggProtocolError(
                f"server: the mask key rebuilt for {u} does not match its public key "
                "(a holder sent a wrong share)")
        # each v in U3 added its pairwise mask with u; u's own term never arrived
        live = [v for v in g.neighbours[u] if v in u3]
        seeds = mask_seeds(s_sk, {v: state.public_keys[v][1] for v in live}, u, setup.context)
        for v in live:
            masks.add_pairwise_mask(total, v, u, seeds[v], sign=-1)
    values = None if setup.quantizer is None else setup.quantizer.dequantize(total)
    return AggregateResult(
        total=total, included=tuple(sorted(u3)),
        dropped=tuple(sorted(set(g.names) - u3)), revealed=MappingProxyType(revealed),
        values=values,
    )


# -- a reference driver (in memory, no transport) ------------------------------------------------
STAGES = ("advertise", "share", "masked", "unmask")


def simulate(setup: SecAggSetup, updates: Mapping[str, object],
             dropouts: Mapping[str, int] | None = None) -> AggregateResult:
    """Run the four rounds in memory. ``dropouts[name] = s`` makes ``name`` go silent at
    stage ``s`` (0: never advertises, 1: no shares, 2: no masked input, 3: no unmask
    answer); the round's wiring into messages follows exactly these calls."""
    dropouts = dict(dropouts or {})
    bad = sorted(u for u, s in dropouts.items() if u not in setup.graph.neighbours
                 or not isinstance(s, int) or not 0 <= s < len(STAGES))
    if bad:
        raise SecAggProtocolError(f"simulate: bad dropout entries for {bad}")

    def alive(stage: int) -> list[str]:
        return [u for u in setup.graph.names if dropouts.get(u, math.inf) > stage]

    server = server_start(setup)
    clients, adverts = {}, {}
    for u in alive(0):
        clients[u], adverts[u] = client_advertise(setup, u)
    server, to_clients = server_collect_keys(server, adverts)
    sent = {}
    for u in alive(1):
        clients[u], sent[u] = client_share_keys(clients[u], to_clients[u])
    server, to_clients = server_collect_shares(server, sent)
    sent = {}
    for u in alive(2):
        clients[u], sent[u] = client_masked_input(clients[u], to_clients[u], updates[u])
    server, to_clients = server_collect_masked(server, sent)
    sent = {}
    for u in alive(3):
        clients[u], sent[u] = client_unmask(clients[u], to_clients[u])
    return server_unmask(server, sent)
