"""The federation server: holds the global model and the server optimizer state.

It samples the clients of a round, sends them the global model (``public``: every member
may know it), validates each update *before* storing it (shape, finiteness, example count
at most ``local_epochs`` times the training rows the client declared at setup; a bad update
raises a specific :class:`~horizontal.errors.BadUpdateError` naming the client and leaves
the server untouched), refuses non-finite or impossible setup statistics, accepts each
message kind only from its allowed sender (:attr:`FedServer.SENDERS`), and on
``round.aggregate`` combines the stored updates with the configured aggregator and takes
one server-optimizer step. The new global model is committed in one assignment at the
end, so a failure anywhere in a round leaves the previous global model intact.

Under secure aggregation (``FedConfig.secure_aggregation``) the server never holds one
client's update: it relays the SecAgg+ keys and ciphertexts of the round's cohort, sums the
masked inputs and, on ``round.aggregate``, unmasks the sum and divides it
(:mod:`horizontal.secure_rounds`); a plaintext ``fit.update`` is refused. Per-update
validation is then the clients' own (each clips into the ring and withholds a non-finite
update), and too many dropouts abort the round before anything is committed.

Client-level differential privacy (``FedConfig.dp.level == "client"``, DP-FedAvg,
:mod:`horizontal.dp.fedavg`): the server sends the round's clip bound with the global model,
clips every update to it again, and replaces the aggregator by the noisy mean (sum plus
``N(0, (σC)^2)``, divided by the expected number of clients), with noise keyed by its own
secret (:attr:`FedServer.dp_secret`, party-local); under adaptive clipping it moves the bound
by the noisy fraction of unclipped updates the clients report.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from horizontal.compression import decode
from horizontal.config import FedConfig
from horizontal.dp.clipping import AdaptiveClipState, adaptive_clipping
from horizontal.dp.fedavg import central_noisy_mean, clip_count_key
from horizontal.dp.ledger import (
    ClientPlan,
    client_plan,
    fresh_secret,
    secret_text,
    secure_min_survivors,
    simulation_secret,
)
from horizontal.errors import (
    EmptyRoundError,
    InflatedExampleCountError,
    InvalidExampleCountError,
    InvalidSetupStatsError,
    NonFiniteUpdateError,
    PooledScalerError,
    UpdateShapeError,
)
from horizontal.flat_model import FlatModel
from horizontal.secagg import SecAggProtocolError, TooManyDropoutsError
from horizontal.secure_rounds import SecureServer
from horizontal.strategies import aggregate, server_optimizer
from vfl.core.errors import ProtocolError, UnexpectedSenderError
from vfl.core.keyed import sample_clients
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.party import Party, handles
from vfl.core.rounds import PartyState

SERVER = "server"
# Most training rows one client may declare at setup (about 10^12): counts stay exact in
# float64 weights, and no declaration can be absurd.
MAX_CLIENT_ROWS = 2**40


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _is_real(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )


class FedServer(SecureServer, Party):
    """Only the coordinator may drive the server (setup, rounds, secure-aggregation stages,
    evaluation requests); only invited clients may send ``setup.stats`` and only members
    ``fit.update`` or the ``secagg.*`` inputs, these only from the round's cohort
    (:attr:`SENDERS`, checked in :meth:`handle` before any handler runs)."""

    SENDERS = {
        "setup": "coordinator",
        "setup.finish": "coordinator",
        "round.start": "coordinator",
        "round.retry": "coordinator",
        "round.aggregate": "coordinator",
        "eval.request": "coordinator",
        "finetune.request": "coordinator",
        "setup.stats": "invited",
        "fit.update": "member",
        "secagg.collect_keys": "coordinator",
        "secagg.collect_shares": "coordinator",
        "secagg.collect_masked": "coordinator",
        "secagg.advertise": "member",
        "secagg.shares": "member",
        "secagg.masked": "member",
        "secagg.reveal": "member",
    }

    def __init__(self, name: str = SERVER, *, dp_secret: str | bytes | None = None):
        super().__init__(name)
        self.config: FedConfig | None = None
        self.invited: list[str] = []
        self.members: list[str] = []
        self._rows: dict[str, int] = {}
        # Client-level DP noise comes from a secret only the server holds (party-local:
        # never sent or checkpointed); os.urandom unless pinned (horizontal.dp.ledger).
        self.dp_secret = fresh_secret() if dp_secret is None else secret_text(dp_secret)
        self.dp_secret_pinned = dp_secret is not None
        self.dp_plan: ClientPlan | None = None
        self.dp_clip = None
        self._adaptive = None

    def use_simulation_secret(self, seed: int) -> None:
        """**In-memory simulation only**: the DP secret derived from the public seed
        (:func:`~horizontal.dp.ledger.simulation_secret`) for bitwise reproducible runs; a
        pinned secret is kept."""
        if not self.dp_secret_pinned:
            self.dp_secret = simulation_secret(seed, self.name)

    def handle(self, message: Message) -> list[Message]:
        self._check_sender(message)
        declared = self._declared_rows(message) if message.kind == "setup.stats" else None
        replies = super().handle(message)
        if declared is not None:  # recorded only once the statistics were accepted
            self._rows[message.sender] = declared
        return replies

    def _check_sender(self, msg: Message) -> None:
        role = self.SENDERS.get(msg.kind)
        allowed = {"coordinator": (COORDINATOR,), "invited": self.invited,
                   "member": self.members}.get(role)
        if allowed is None and msg.kind in self._handlers:
            raise UnexpectedSenderError(
                f"server {self.name!r} has no sender rule for {msg.kind!r} messages; add "
                "the kind to FedServer.SENDERS"
            )
        if allowed is not None and msg.sender not in allowed:
            who = {"coordinator": "the coordinator", "invited": "an invited client",
                   "member": "a member client"}[role]
            raise UnexpectedSenderError(
                f"server {self.name!r} got {msg.kind!r} from {msg.sender!r}; only {who} "
                "may send it. The message is ignored."
            )

    def _declared_rows(self, msg: Message) -> int:
        """The training rows a client declares with its setup statistics (``n_train``;
        ``n`` if absent): its updates may not claim more than ``local_epochs`` times this."""
        p = msg.payload
        n, rows = p.get("n"), p.get("n_train", p.get("n"))
        if not _is_int(n) or not _is_int(rows) or not (
            max(int(n), 1) <= int(rows) <= MAX_CLIENT_ROWS
        ):
            raise InvalidSetupStatsError(
                msg.sender, f"client {msg.sender!r} declared {rows!r} training rows and "
                f"{n!r} rows in its statistics; expected whole numbers with "
                f"1 <= rows <= {MAX_CLIENT_ROWS} and statistics rows <= training rows. It "
                "is left out of the federation."
            )
        return int(rows)

    # -- setup ------------------------------------------------------------------------------
    @handles("setup")
    def on_setup(self, msg: Message) -> list[Message]:
        self.config = FedConfig.from_json(msg.payload["config"])
        self.columns = list(msg.payload["columns"])
        self.invited = list(msg.payload["clients"])
        self.members = []
        self._rows = {}
        self._stats: dict[str, dict] = {}
        self.completed_round = -1
        self.reset_rounds(None)
        out = {"config": msg.payload["config"], "columns": self.columns}
        return [self.send(c, "setup", Label.PUBLIC, out) for c in self.invited]

    @handles("setup.stats")
    def on_stats(self, msg: Message) -> list[Message]:
        p, who = msg.payload, msg.sender
        d = len(self.columns)
        try:
            s, ss = np.asarray(p["sum"], np.float64), np.asarray(p["sumsq"], np.float64)
        except (KeyError, TypeError, ValueError):
            s = ss = np.zeros(0)
        n = p.get("n")
        if s.shape != (d,) or ss.shape != (d,) or not _is_int(n) or n < 1:
            raise UpdateShapeError(
                who, f"setup statistics from {who!r} do not match the {d}-column schema or "
                "report no rows"
            )
        n = int(n)
        if not (np.isfinite(s).all() and np.isfinite(ss).all()):
            raise InvalidSetupStatsError(
                who, f"setup statistics from {who!r} hold NaN or Inf column sums; the "
                "pooled scaler would be poisoned. The client is left out; check its rows "
                "for huge or infinite values."
            )
        # Cauchy-Schwarz: sum^2 <= n * sumsq for any real rows (with rounding slack).
        if (ss < 0).any() or (s**2 > n * ss * (1 + 1e-6) + 1e-9).any():
            raise InvalidSetupStatsError(
                who, f"setup statistics from {who!r} are impossible for {n} real rows "
                "(negative sum of squares, or a sum too large for it); the client is left "
                "out of the federation"
            )
        self._stats[who] = {"n": n, "sum": s, "sumsq": ss}
        return []

    @handles("setup.finish")
    def on_finish(self, msg: Message) -> list[Message]:
        if not self._stats:
            raise EmptyRoundError("no client completed setup; check the clients' schemas")
        c = self.config
        self.members = sorted(self._stats)
        if c.secure_aggregation is not None:  # refused before any round: a clear error
            self.secure_check_setup()
        n = sum(v["n"] for v in self._stats.values())
        with np.errstate(over="ignore", invalid="ignore"):
            mean = sum(v["sum"] for v in self._stats.values()) / n
            var = sum(v["sumsq"] for v in self._stats.values()) / n - mean**2
        if not (np.isfinite(mean).all() and np.isfinite(var).all()):
            cols = [c for j, c in enumerate(self.columns)
                    if not (np.isfinite(mean[j]) and np.isfinite(var[j]))]
            raise PooledScalerError(
                f"the pooled statistics of columns {cols} overflow float64 (values of "
                "magnitude ~1e150 or more at some client); rescale those columns at every "
                "client and set up again"
            )
        std = np.sqrt(np.maximum(var, 0.0))
        scale = np.where(std > 1e-12, std, 1.0)
        self.model = FlatModel(len(self.columns), c.hidden, c.task.n_outputs, c.seed)
        head = self.model.head_mask
        self.shared = np.flatnonzero(~head) if c.personalization == "fedper" else np.arange(
            self.model.size
        )
        self.w = self.model.init.copy()
        self.tx = server_optimizer(c.server_optimizer, c.effective_server_lr)
        self.opt_state = self.tx.init(jnp.asarray(self.w))
        self._step = jax.jit(self._server_step)
        self.control = np.zeros(self.model.size, np.float32) if c.algorithm == "scaffold" else None
        self._inbox: dict[str, dict] = {}
        self._sampled: set[str] = set()
        self._round: int | None = None
        self._dp_setup()
        out = [self.send(m, "setup.scaler", Label.PUBLIC, {"mean": mean, "scale": scale})
               for m in self.members]
        done = {"members": self.members, "n_params": self.model.size}
        return out + [self.send(COORDINATOR, "setup.done", Label.PUBLIC, done)]

    # -- client-level differential privacy ------------------------------------------------------
    def _dp_setup(self) -> None:
        c = self.config
        self.dp_plan, self.dp_clip, self._adaptive = None, None, None
        if c.dp is None or c.dp.level != "client":
            return
        m = c.sample_size(len(self.members))
        secure = getattr(c, "secure_aggregation", None) is not None
        self.dp_plan = client_plan(c.dp, len(self.members), m, secure=secure,
                                   surviving=secure_min_survivors(c, m))
        if c.dp.clip == "adaptive":
            self._adaptive = adaptive_clipping(
                expected_clients=m, initial_clip_norm=c.dp.clip_norm,
                target_unclipped_quantile=c.dp.target_unclipped_quantile,
                learning_rate=c.dp.clip_learning_rate,
                clipped_count_stddev=self.dp_plan.clipped_count_stddev)
            self.dp_clip = np.float32(self._adaptive.init().clip_norm)
        else:
            self.dp_clip = np.float32(c.dp.clip_norm)

    def _dp_check_shares(self, r: int) -> None:
        """Under secure aggregation the noise arrives in shares, one per masked input: a
        sum of fewer inputs than the accounting assumed is not unmasked."""
        s = self._secure
        arrived = len(s.state.u3) if s is not None and s.state is not None else 0
        if arrived < self.dp_plan.min_clients:
            self._secure = None
            raise TooManyDropoutsError(
                f"round {r}: only {arrived} masked inputs arrived, each carrying a share of "
                f"the DP noise; the privacy accounting assumes at least "
                f"{self.dp_plan.min_clients} (dp.min_clients / the secure threshold), so the "
                "sum is not unmasked")

    def _dp_mean(self, updates: np.ndarray, r: int) -> np.ndarray:
        """DP-FedAvg's noisy mean of the round's updates (each clipped again here)."""
        return central_noisy_mean(updates, clip_norm=float(self.dp_clip), plan=self.dp_plan,
                                  secret=self.dp_secret, round=r)

    def _dp_next_clip(self, names: list[str], r: int):
        """Adaptive clipping: the next round's bound from the noisy unclipped fraction of
        this round's reports (the bound is unchanged under fixed clipping)."""
        if self._adaptive is None:
            return self.dp_clip
        flags = np.array([self._inbox[k]["unclipped"] for k in names], np.float32)
        state, _ = self._adaptive.update(flags, AdaptiveClipState(jnp.float32(self.dp_clip)),
                                         clip_count_key(self.dp_secret, r))
        return np.float32(state.clip_norm)

    def _server_step(self, w, opt_state, delta):
        updates, opt_state = self.tx.update(-delta, opt_state, w)
        return optax.apply_updates(w, updates), opt_state

    # -- rounds -------------------------------------------------------------------------------
    def _fit_messages(self, r: int, attempt: int, exclude) -> list[Message]:
        m = self.config.sample_size(len(self.members))
        chosen = sample_clients(self.members, self.config.seed, r, m, attempt, exclude)
        if self._round != r:
            self._round, self._inbox, self._sampled = r, {}, set()
        self._sampled |= set(chosen)
        payload = {"global": self.w}
        if self.control is not None:
            payload["control"] = self.control
        if self.dp_plan is not None:  # client-level DP: the round's clip bound (public)
            payload["clip_norm"] = float(self.dp_clip)
        if self.config.secure_aggregation is not None:  # the cohort of this aggregation
            payload |= self.secure_open(r, attempt, chosen)
        return [self.send(c, "fit", Label.PUBLIC, payload, round=r) for c in chosen]

    @handles("round.start")
    def on_round_start(self, msg: Message) -> list[Message]:
        return self._fit_messages(msg.round, 0, ())

    @handles("round.retry")
    def on_round_retry(self, msg: Message) -> list[Message]:
        """Re-sample a round whose clients all failed (``round`` travels in the payload
        because the header round of a retry repeats the original one)."""
        p = msg.payload
        r, attempt, exclude = p.get("round"), p.get("attempt"), p.get("exclude")
        if not (_is_int(r) and _is_int(attempt) and attempt >= 0 and isinstance(exclude, list)
                and all(isinstance(e, str) for e in exclude)):
            raise ProtocolError("a round retry needs an integer round and attempt and a list "
                                "of client names to exclude")
        if r != self._round:
            raise ProtocolError(f"retry for round {r}, but the open round is {self._round}")
        return self._fit_messages(int(r), int(attempt), exclude)

    @handles("fit.update")
    def on_update(self, msg: Message) -> list[Message]:
        """Validate, then store. Raises before storing anything if the update is bad."""
        client, r, p = msg.sender, msg.round, msg.payload
        if self.config.secure_aggregation is not None:
            raise SecAggProtocolError(
                f"{client!r} sent a plaintext update, but this federation aggregates "
                "securely: only the sum of the round's masked inputs may reach the server. "
                "The update is refused and not stored")
        if r != self._round or client not in self._sampled:
            raise ProtocolError(f"{client!r} sent an update for round {r}, which it was not "
                                "asked for")
        n = p.get("num_examples")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InvalidExampleCountError(
                client, f"client {client!r} reported {n!r} examples in round {r}; an update "
                "must come from a positive whole number of examples. Its update is not used."
            )
        bound = self.config.local_epochs * self._rows.get(client, 0)
        if n > bound:
            raise InflatedExampleCountError(
                client, f"client {client!r} reported {n} examples in round {r}, but it "
                f"declared {self._rows.get(client, 0)} training rows at setup and does "
                f"{self.config.local_epochs} local epochs (at most {bound} examples); its "
                "update would be over-weighted and is not used"
            )
        steps, full, loss = p.get("steps", 0), p.get("full_steps", 0), p.get("loss", np.nan)
        if not (_is_int(steps) and _is_int(full) and min(steps, full) >= 0
                and _is_real(loss)):
            raise UpdateShapeError(
                client, f"update from client {client!r} in round {r} has malformed steps "
                f"({steps!r}), full_steps ({full!r}) or loss ({loss!r}); expected counts "
                "and a number. It is not used."
            )
        delta = decode(p.get("update", {}), len(self.shared), client)
        if not np.isfinite(delta).all():
            bad = int((~np.isfinite(delta)).sum())
            raise NonFiniteUpdateError(
                client, f"update from client {client!r} in round {r} has {bad} NaN/Inf "
                "values (diverged local training? lower client_lr); it is not used"
            )
        entry = {"delta": delta, "n": n, "loss": float(loss), "partial": int(steps) < int(full)}
        if self._adaptive is not None:
            flag = p.get("unclipped")
            if not _is_int(flag) or flag not in (0, 1):
                raise UpdateShapeError(
                    client, f"update from client {client!r} in round {r} has no unclipped "
                    f"indicator 0 or 1 ({flag!r}); adaptive clipping needs one. It is not used."
                )
            entry["unclipped"] = int(flag)
        if self.control is not None:
            try:
                dc = np.asarray(p.get("delta_c", []), dtype=np.float32)
            except (TypeError, ValueError):
                dc = np.zeros(0, np.float32)
            if dc.shape != (self.model.size,) or not np.isfinite(dc).all():
                raise UpdateShapeError(
                    client, f"SCAFFOLD control delta from {client!r} has shape {dc.shape} or "
                    f"non-finite values; expected ({self.model.size},) finite values"
                )
            entry["delta_c"] = dc
        usable = not (entry["partial"] and self.config.straggler_policy == "drop")
        if usable:
            self._inbox[client] = entry
        return [self.send(COORDINATOR, "fit.accepted", Label.PUBLIC,
                          {"client": client, "usable": usable, "partial": entry["partial"]},
                          round=r)]

    @handles("round.aggregate")
    def on_aggregate(self, msg: Message) -> list[Message]:
        r, c = msg.round, self.config
        secure = None
        clip = self.dp_clip  # client-level DP: the next round's clip bound
        if c.secure_aggregation is not None:  # only the cohort's sum exists here (SecAgg+)
            if self.dp_plan is not None:  # never unmask a sum with too few noise shares
                self._dp_check_shares(r)
            names, agg, examples, loss, secure = self.secure_sum(r)
            if self.dp_plan is not None:  # client-level DP: the clients' noise is in the sum,
                # each at weight 1; divide by the expected clients, not by those that arrived
                agg = agg * (len(names) / self.dp_plan.clients_per_round)
            if c.dp is not None:  # not privatized: not released (the clients send 0)
                loss = float("nan")
        else:
            if r != self._round or not self._inbox:
                raise EmptyRoundError(f"round {r} has no usable update to aggregate")
            names = sorted(self._inbox)
            updates = np.stack([self._inbox[k]["delta"] for k in names])
            weights = np.array([self._inbox[k]["n"] for k in names], dtype=np.float64)
            if self.dp_plan is not None:  # client-level DP: clipped, noisy, unweighted mean
                agg = self._dp_mean(updates, r)
                clip = self._dp_next_clip(names, r)
            else:
                agg = aggregate(c.aggregator, updates, weights, trim_fraction=c.trim_fraction,
                                krum_f=c.krum_f)
            losses = np.array([self._inbox[k]["loss"] for k in names])
            examples = int(weights.sum())
            loss = float(np.sum(losses * weights) / weights.sum())
        full = np.zeros(self.model.size, np.float32)
        full[self.shared] = agg.astype(np.float32)
        w, opt_state = self._step(jnp.asarray(self.w), self.opt_state, jnp.asarray(full))
        w = np.asarray(w)
        if not np.isfinite(w).all():
            raise EmptyRoundError(
                f"round {r}: the server step produced non-finite parameters (server_lr too "
                "large?); the global model was kept"
            )
        control = self.control
        if control is not None:
            dc = np.mean([self._inbox[k]["delta_c"] for k in names], axis=0)
            control = (control + len(names) / len(self.members) * dc).astype(np.float32)
        # Commit: nothing above mutated the server's state.
        self.w, self.opt_state, self.control = w, opt_state, control
        self.dp_clip = clip
        if secure is not None:
            self.secure_result = secure
        self.completed_round = r
        self._inbox = {}
        done = {"round": r, "clients": names, "examples": examples, "loss": loss}
        return [self.send(COORDINATOR, "round.done", Label.PLAINTEXT_BY_DESIGN, done, round=r)]

    # -- evaluation and personalization requests ----------------------------------------------
    @handles("eval.request")
    def on_eval_request(self, msg: Message) -> list[Message]:
        targets = msg.payload.get("clients") or self.members
        payload = {k: v for k, v in msg.payload.items() if k != "clients"} | {"global": self.w}
        return [self.send(t, "evaluate", Label.PUBLIC, payload) for t in targets]

    @handles("finetune.request")
    def on_finetune_request(self, msg: Message) -> list[Message]:
        payload = dict(msg.payload) | {"global": self.w}
        return [self.send(t, "finetune", Label.PUBLIC, payload) for t in self.members]

    # -- checkpoint (party-local) -----------------------------------------------------------
    def global_params(self) -> np.ndarray:
        return self.w.copy()

    def parameters(self) -> dict:
        """The global model as the module's parameters (nested dicts of numpy arrays)."""
        return self.model.tree(self.w)

    def snapshot(self) -> PartyState:
        leaves = [np.asarray(x) for x in jax.tree.leaves(self.opt_state)]
        extra = {"members": list(self.members)}
        if self.control is not None:
            extra["control"] = self.control.copy()
        if self.dp_clip is not None:
            extra["dp_clip"] = np.asarray(self.dp_clip, np.float32)
        return PartyState(self.name, self.completed_round, {"global": self.w.copy()}, leaves,
                          np.zeros(2, np.uint32), self.config.digest(), extra)

    def restore(self, state: PartyState) -> None:
        if state.config_digest != self.config.digest():
            raise ProtocolError("server checkpoint was taken under another config")
        treedef = jax.tree.structure(self.opt_state)
        self.opt_state = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in state.opt_state])
        self.w = np.asarray(state.params["global"], np.float32).copy()
        if self.control is not None:
            self.control = np.asarray(state.extra["control"], np.float32).copy()
        if self.dp_clip is not None:
            self.dp_clip = np.float32(np.asarray(state.extra["dp_clip"]))
        self.completed_round = state.round
        self._inbox, self._sampled, self._round = {}, set(), None
        self._secure = None
        self.reset_rounds(state.round)
