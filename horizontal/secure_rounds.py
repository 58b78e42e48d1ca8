"""SecAgg+ as messages between :class:`~horizontal.client.HospitalClient` and
:class:`~horizontal.server.FedServer`: the server learns the sum of a round's updates and
nothing about any one of them (``FedConfig.secure_aggregation``).

The rounds are :mod:`horizontal.secagg.protocol`'s, on the federation's transport. Clients
never talk to each other (as in Bonawitz et al. and as Flower requires): what a client
addresses to a neighbour travels client -> server -> neighbour, encrypted. Round ``r``:

==========================  ==============  ============  ====================================
kind                        sender          label         payload
==========================  ==============  ============  ====================================
``fit``                     server          public        global model, ``cohort``, ``attempt``
``fit.collect``             coordinator     public        (the client trains, encodes ``x_u``)
``secagg.advertise``        client          public        two fresh X25519 public keys
``secagg.collect_keys``     coordinator     public        ``{"round": r}``: U1 is who answered
``secagg.keys``             server          public        the neighbours' public keys
``secagg.shares``           client          ciphertext    Shamir shares, one ciphertext per
                                                          neighbour
``secagg.collect_shares``   coordinator     public        U2 is who answered
``secagg.ciphertexts``      server          ciphertext    the ciphertexts addressed to it
``secagg.masked``           client          masked        ``y_u = x_u + masks mod 2^bits``
``secagg.collect_masked``   coordinator     public        U3 is who answered, fixed
``secagg.unmask``           server          public        which neighbours survived / dropped
``secagg.reveal``           client          masked        a share of ``b`` per survivor, of
                                                          ``s`` per dropped neighbour
``round.aggregate``         coordinator     public        unmask the sum, one server step
==========================  ==============  ============  ====================================

The coordinator's ``secagg.collect_*`` requests close each stage: what arrived by then
decides who goes on (a client that did not answer is a dropout of that stage, exactly as in
:func:`horizontal.secagg.protocol.simulate`). A client that cannot or will not take part
(non-finite update; a partial update under ``straggler_policy="drop"``) tells the
coordinator ``fit.withheld`` instead of advertising keys.

What each party checks: the client accepts ``secagg.*`` only from its server
(``HospitalClient.SENDERS``), only for the round whose ``fit`` it holds, each once; the
server accepts ``secagg.*`` inputs only from members in the round's cohort, only at their
stage (a late masked input is refused), and the stage requests only from the coordinator.
``k``, ``t``, the ring and the fixed-point grid come from each party's own
:class:`~horizontal.secagg.config.SecAggConfig`; the wire carries only the cohort.

Keys, self-mask seeds and the order of the ring are fresh for every aggregation (the keys
and seeds from ``os.urandom``); the sum they reveal does not depend on them, so a run is
bitwise reproducible while the masks stay unpredictable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from horizontal.errors import FedConfigError
from horizontal.secagg import (
    AggregateResult,
    ClientState,
    InfeasibleParametersError,
    QuantizationError,
    SecAggError,
    SecAggProtocolError,
    SecAggSetup,
    ServerState,
    TooManyDropoutsError,
    client_advertise,
    client_masked_input,
    client_share_keys,
    client_unmask,
    server_collect_keys,
    server_collect_masked,
    server_collect_shares,
    server_start,
    server_unmask,
)
from horizontal.secagg.config import EXTRA_COORDINATES, LOSS_RANGE, SecAggConfig, layout
from horizontal.secagg.graph import MIN_CLIENTS
from horizontal.secagg.quantize import Quantizer
from vfl.core.errors import UnexpectedSenderError
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.party import handles

#: The coordinator's requests that close the first three stages, in order.
STEPS = ("secagg.collect_keys", "secagg.collect_shares", "secagg.collect_masked")
#: What a client sends its server in each stage, and the server stage that takes it.
CLIENT_KINDS = {"secagg.advertise": "keys", "secagg.shares": "shares",
                "secagg.masked": "masked", "secagg.reveal": "unmask"}
WITHHELD = "fit.withheld"


# -- what goes into the sum ------------------------------------------------------------------
def encode_input(setup: SecAggSetup, q: Quantizer, sa: SecAggConfig, delta, examples: int,
                 loss: float) -> np.ndarray:
    """A client's ``x_u`` in ``Z_2^bits`` (layout in :func:`horizontal.secagg.config.layout`):
    ``rho * delta`` and ``rho * clip * loss / LOSS_RANGE`` on the fixed-point grid, then the
    weight's grid value and the example count as integers. ``rho = examples / max_weight``
    is rounded to the grid first, so the weight multiplying the update is exactly the one
    the server divides by."""
    delta = np.asarray(delta, dtype=np.float64)
    if delta.shape != (setup.length - EXTRA_COORDINATES,):
        raise QuantizationError(f"an update of shape {delta.shape} does not fit a secure "
                                f"aggregation of {setup.length} coordinates")
    if not 1 <= examples <= sa.max_weight:
        raise QuantizationError(
            f"{examples} examples is outside [1, max_weight={sa.max_weight}]")
    grid = np.float64(q.clip) * np.float64(q.scale)
    level = int(np.rint(np.float64(examples) / sa.max_weight * grid))
    rho = level / grid
    floats = np.empty(delta.size + 1, np.float64)
    floats[:-1] = rho * delta
    # no loss (NaN: not released under DP) adds 0
    floats[-1] = rho * q.clip * min(float(loss), LOSS_RANGE) / LOSS_RANGE if np.isfinite(
        loss) else 0.0
    ring = q.quantize(floats, setup.n)  # RingOverflowError before anything is masked
    counts = np.array([level, examples], np.int64).astype(setup.dtype)
    return np.concatenate([ring, counts])


def decode_sum(setup: SecAggSetup, q: Quantizer, total: np.ndarray
               ) -> tuple[np.ndarray, int, float]:
    """The FedAvg mean delta, the example count and the weighted mean loss from the unmasked
    sum: ``clip * S_update / S_weight`` (both sums of grid integers), in float64."""
    lay = layout(setup.length)
    signed = q.decode(total).astype(np.int64)
    weight = int(signed[lay["weight"]])
    if weight <= 0:
        raise SecAggProtocolError(f"the unmasked weights sum to {weight}; nothing to average")
    mean = signed[lay["update"]].astype(np.float64) * q.clip / weight
    loss = LOSS_RANGE * float(signed[lay["loss"]]) / weight
    return mean, int(signed[lay["examples"]]), loss


def _cohort(payload, me: str) -> tuple[list[str], int]:
    cohort, attempt = payload.get("cohort"), payload.get("attempt")
    if not (isinstance(cohort, list) and all(isinstance(u, str) for u in cohort)
            and len(set(cohort)) == len(cohort) and me in cohort):
        raise SecAggProtocolError(
            f"{me}: a secure round's fit must name its cohort (distinct client names, this "
            "client among them)")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise SecAggProtocolError(f"{me}: a secure round's fit needs its attempt number")
    return sorted(cohort), attempt


def _call(owner, fn, *args):
    """A protocol step; any secure-aggregation error ends this party's part in the round."""
    try:
        return fn(*args)
    except SecAggError:
        owner._secure = None
        raise


# -- the client -------------------------------------------------------------------------------
@dataclass
class _ClientRound:
    round: int
    setup: SecAggSetup
    quantizer: Quantizer
    state: ClientState | None = None
    x: np.ndarray | None = field(default=None, repr=False)


class SecureClient:
    """HospitalClient's half of SecAgg+ (a mixin: ``self.config``, ``self.server``,
    ``self.shared``, ``self.send`` are the client's)."""

    _secure: _ClientRound | None = None

    def secure_join(self, msg: Message) -> None:
        """At ``fit``: this aggregation's setup, from the cohort on the wire and everything
        else from this client's own config (k, t, ring, grid)."""
        self._secure = None
        c = self.config
        cohort, attempt = _cohort(msg.payload, self.name)
        setup, q = c.secure_aggregation.setup(
            cohort, round=msg.round, attempt=attempt,
            length=len(self.shared) + EXTRA_COORDINATES, context=c.digest())
        self._secure = _ClientRound(msg.round, setup, q)

    def secure_input(self, setup: SecAggSetup, q: Quantizer, delta: np.ndarray,
                     examples: int, loss: float) -> np.ndarray:
        """``x_u``: what this client adds to the sum (a subclass may observe it: tests)."""
        return encode_input(setup, q, self.config.secure_aggregation, delta, examples, loss)

    def secure_advertise(self, r: int, delta: np.ndarray, examples: int, loss: float,
                         partial: bool) -> list[Message]:
        """At ``fit.collect``: encode the update (never sent as such) and advertise keys."""
        s = self._secure
        if s is None or s.round != r:
            raise SecAggProtocolError(f"{self.name}: no secure aggregation open for round {r}")
        reason, bad = None, False
        if partial and self.config.straggler_policy == "drop":
            reason = "partial update under straggler_policy='drop'"
        elif not (np.isfinite(delta).all() and (np.isfinite(loss) or self.config.dp)):
            reason = (f"update has {int((~np.isfinite(delta)).sum())} NaN/Inf values or a "
                      "non-finite loss (diverged local training? lower client_lr)")
            bad = True
        if reason is not None:
            self._secure = None
            return [self.send(COORDINATOR, WITHHELD, Label.PUBLIC,
                              {"reason": reason, "bad": bad}, round=r)]
        x = _call(self, self.secure_input, s.setup, s.quantizer, delta, examples, loss)
        s.state, keys = _call(self, client_advertise, s.setup, self.name)
        s.x = x
        return [self.send(self.server, "secagg.advertise", Label.PUBLIC, keys, round=r)]

    def _secure_open(self, msg: Message) -> _ClientRound:
        s = self._secure
        if s is None or s.state is None or s.round != msg.round:
            raise SecAggProtocolError(
                f"{self.name}: {msg.kind!r} for round {msg.round}, but this client holds no "
                "secure aggregation of that round")
        return s

    @handles("secagg.keys")
    def on_secagg_keys(self, msg: Message) -> list[Message]:
        s = self._secure_open(msg)
        s.state, out = _call(self, client_share_keys, s.state, msg.payload)
        return [self.send(self.server, "secagg.shares", Label.CIPHERTEXT, out,
                          round=msg.round)]

    @handles("secagg.ciphertexts")
    def on_secagg_ciphertexts(self, msg: Message) -> list[Message]:
        s = self._secure_open(msg)
        s.state, out = _call(self, client_masked_input, s.state, msg.payload, s.x)
        s.x = None  # masked and sent: the plain input is not kept
        return [self.send(self.server, "secagg.masked", Label.MASKED, out, round=msg.round,
                          label_dependent=True)]

    @handles("secagg.unmask")
    def on_secagg_unmask(self, msg: Message) -> list[Message]:
        s = self._secure_open(msg)
        _, out = _call(self, client_unmask, s.state, msg.payload)
        self._secure = None  # answered once; the round's keys are forgotten
        return [self.send(self.server, "secagg.reveal", Label.MASKED, out, round=msg.round)]


# -- the server -------------------------------------------------------------------------------
@dataclass
class _ServerRound:
    round: int
    attempt: int
    setup: SecAggSetup
    quantizer: Quantizer
    state: ServerState
    inbox: dict = field(default_factory=dict)


class SecureServer:
    """FedServer's half of SecAgg+ (a mixin: ``self.config``, ``self.members``,
    ``self._rows``, ``self.shared``, ``self.send`` are the server's)."""

    _secure: _ServerRound | None = None
    #: The last committed secure aggregation: the unmasked ring sum, who is in it, and which
    #: secret was rebuilt for whom (what this server legitimately learned).
    secure_result: AggregateResult | None = None

    def secure_check_setup(self) -> None:
        """At ``setup.finish``, before any round: the sampled cohort is large enough for
        SecAgg+ at the configured fractions, its sum cannot overflow, and every member's
        example count fits ``max_weight``."""
        c = self.config
        sa = c.secure_aggregation
        m = c.sample_size(len(self.members))
        if m < MIN_CLIENTS:
            raise InfeasibleParametersError(
                f"secure aggregation needs at least {MIN_CLIENTS} clients per round; this "
                f"federation samples {m} of {len(self.members)}")
        sa.check(m)
        heavy = {k: c.local_epochs * v for k, v in self._rows.items()
                 if k in self.members and c.local_epochs * v > sa.max_weight}
        if heavy:
            raise FedConfigError(
                f"under secure aggregation a client's weight is its examples / max_weight "
                f"({sa.max_weight}), at most 1, but {sorted(heavy)} may report up to "
                f"{max(heavy.values())} examples (local_epochs x training rows); set "
                f"secure_aggregation.max_weight to at least {max(heavy.values())}")

    def secure_open(self, r: int, attempt: int, cohort: list[str]) -> dict:
        """The aggregation of ``cohort`` (the ``fit`` payload's ``cohort`` and ``attempt``)."""
        self._secure = None
        c = self.config
        try:
            setup, q = c.secure_aggregation.setup(
                cohort, round=r, attempt=attempt,
                length=len(self.shared) + EXTRA_COORDINATES, context=c.digest())
        except InfeasibleParametersError as exc:
            if attempt == 0:
                raise
            raise TooManyDropoutsError(
                f"round {r}, retry {attempt}: only {len(cohort)} clients are left to try, "
                f"too few for secure aggregation ({exc})") from None
        self._secure = _ServerRound(r, attempt, setup, q, server_start(setup))
        return {"cohort": list(setup.graph.names), "attempt": attempt}

    def _secure_inbox(self, msg: Message) -> list[Message]:
        s, stage = self._secure, CLIENT_KINDS[msg.kind]
        if s is None or msg.round != s.round:
            raise SecAggProtocolError(
                f"server: {msg.kind!r} from {msg.sender!r} for round {msg.round}, but no "
                "secure aggregation of that round is open")
        if msg.sender not in s.setup.graph.neighbours:
            raise UnexpectedSenderError(
                f"server: {msg.kind!r} from {msg.sender!r}, which is not in round "
                f"{s.round}'s cohort; ignored")
        if s.state.stage != stage:
            raise SecAggProtocolError(
                f"server: {msg.kind!r} from {msg.sender!r} arrived at stage "
                f"{s.state.stage!r}; too late or too early, refused")
        if msg.sender in s.inbox:
            raise SecAggProtocolError(f"server: a second {msg.kind!r} from {msg.sender!r}")
        s.inbox[msg.sender] = msg.payload
        return []

    @handles("secagg.advertise")
    def on_secagg_advertise(self, msg: Message) -> list[Message]:
        return self._secure_inbox(msg)

    @handles("secagg.shares")
    def on_secagg_shares(self, msg: Message) -> list[Message]:
        return self._secure_inbox(msg)

    @handles("secagg.masked")
    def on_secagg_masked(self, msg: Message) -> list[Message]:
        return self._secure_inbox(msg)

    @handles("secagg.reveal")
    def on_secagg_reveal(self, msg: Message) -> list[Message]:
        return self._secure_inbox(msg)

    def _secure_step(self, msg: Message, stage: str, fn, kind: str, label: Label):
        s, r = self._secure, msg.payload.get("round")
        if s is None or r != s.round or isinstance(r, bool):
            raise SecAggProtocolError(
                f"server: {msg.kind!r} for round {r!r}, but no secure aggregation of that "
                "round is open")
        if s.state.stage != stage:
            raise SecAggProtocolError(
                f"server: {msg.kind!r} at stage {s.state.stage!r} (expected {stage!r})")
        s.state, out = _call(self, fn, s.state, s.inbox)
        s.inbox = {}
        return [self.send(u, kind, label, p, round=s.round) for u, p in out.items()]

    @handles("secagg.collect_keys")
    def on_secagg_collect_keys(self, msg: Message) -> list[Message]:
        return self._secure_step(msg, "keys", server_collect_keys, "secagg.keys",
                                 Label.PUBLIC)

    @handles("secagg.collect_shares")
    def on_secagg_collect_shares(self, msg: Message) -> list[Message]:
        return self._secure_step(msg, "shares", server_collect_shares, "secagg.ciphertexts",
                                 Label.CIPHERTEXT)

    @handles("secagg.collect_masked")
    def on_secagg_collect_masked(self, msg: Message) -> list[Message]:
        return self._secure_step(msg, "masked", server_collect_masked, "secagg.unmask",
                                 Label.PUBLIC)

    def secure_sum(self, r: int):
        """At ``round.aggregate``: unmask the sum over U3 and decode it. Returns the clients
        in the sum, the mean delta (float64), the example count, the weighted mean loss and
        the :class:`~horizontal.secagg.AggregateResult`; raises (and commits nothing) when
        the sum cannot be unmasked."""
        s = self._secure
        if s is None or s.round != r or s.state.stage != "unmask":
            raise SecAggProtocolError(
                f"server: round {r} has no secure aggregation ready to unmask")
        result = _call(self, server_unmask, s.state, s.inbox)
        self._secure = None
        mean, examples, loss = decode_sum(s.setup, s.quantizer, result.total)
        if self.config.dp is not None:  # the clients' losses are not released under DP
            loss = float("nan")
        return list(result.included), mean, examples, loss, result
