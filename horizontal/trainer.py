"""The coordinator side of horizontal training, and its checkpoint contract.

Round ``r``:

1. the simulated world marks the clients that are unreachable this round
   (:class:`~horizontal.systems.SystemsConfig`: seeded dropouts, offline windows);
   clients away in round ``r`` rejoin when they are reachable again;
2. coordinator -> server ``round.start``; server -> sampled clients ``fit`` (the global
   model, ``public``). An unreachable client is recorded as dropped;
3. the executor runs every submitted local job (one vectorized program, or a loop);
4. coordinator -> reached clients ``fit.collect``; client -> server ``fit.update``. The
   server validates each update; a bad one raises a specific error naming the client and,
   under ``on_bad_update="drop"``, the round continues without it;
5. if no usable update arrived: ``on_empty_round`` skips the round (the global model is
   unchanged), retries with clients not yet tried, or raises;
6. coordinator -> server ``round.aggregate``; the server commits one new global model.

Under secure aggregation (``FedConfig.secure_aggregation``) a client answers
``fit.collect`` by advertising SecAgg+ keys instead of sending its update, and between 4
and 6 the coordinator closes the protocol's stages (``secagg.collect_keys``,
``secagg.collect_shares``, ``secagg.collect_masked``; :mod:`horizontal.secure_rounds`);
``round.aggregate`` unmasks the sum. Too many dropouts at any stage abort the round before
anything is committed and count as an empty round for ``on_empty_round``
(:class:`~horizontal.errors.SecureRoundAbortedError` under ``"raise"``; under ``"retry"``
a fresh aggregation with clients not yet tried).

Checkpoint contract (:mod:`vfl.core.rounds`), as in :mod:`vfl.vertical.trainer`: after round ``r``,
``on_round_end(record)`` receives a :class:`FedRoundRecord` with every party's
:class:`~vfl.core.rounds.PartyState` and, per client, the ids of the rows its update used.
The state after ``r`` depends only on the seed, the state after ``r - 1`` and those rows
(batches, samples, dropouts and quantization noise all come from keyed hashes), so
``fit(resume_from=record)`` continues at ``r + 1`` and ends bitwise equal to an
uninterrupted run.

Differential privacy (``FedConfig.dp``): the trainer keeps the run's privacy account
(:class:`~horizontal.dp.ledger.PrivacyLedger`, from public numbers only). Before setup sends
anything it refuses a plan over the budget (client level: from the config and the invited
hospitals; record level: from each hospital's count of training rows, which each hospital
also checks itself before reading a row); before every round it charges the round
tentatively and stops the run if that would exceed the budget
(:class:`~horizontal.dp.errors.BudgetExhaustedError`: ``run_round`` raises it, ``fit``
stops and says why in ``history.stopped``); after the round it keeps the charges of the
hospitals that trained (record level) or of the federation (client level). Every summary
carries ``"privacy"`` (:meth:`FederatedTrainer.privacy_spent`), and the ledger travels in
the checkpoint (with the server's state), so a resumed run goes on spending from where it
was.
"""

from __future__ import annotations

import time

import numpy as np

from horizontal.client import HospitalClient
from horizontal.config import FedConfig
from horizontal.dp.errors import BudgetExhaustedError
from horizontal.dp.ledger import (
    FEDERATION,
    PrivacyLedger,
    client_plan,
    record_plan,
    secure_min_survivors,
)
from horizontal.errors import (
    AllClientsDroppedError,
    BadUpdateError,
    ClientSchemaError,
    EmptyRoundError,
    NonFiniteUpdateError,
    SecureRoundAbortedError,
)
from horizontal.secagg import TooManyDropoutsError
from horizontal.secure_rounds import CLIENT_KINDS, STEPS, WITHHELD
from horizontal.server import SERVER, FedServer
from horizontal.simulation import LocalExecutor
from vfl.core import metrics as vfl_metrics
from vfl.core.coordinator import Coordinator, FailurePolicy, Routed
from vfl.core.messages import Message
from vfl.core.progress import progress_bar
from vfl.core.rounds import FedRoundRecord, SetupOnce, TrainHistory, check_record, prepare_fit
from vfl.core.table import PartyTable
from vfl.core.transport import InMemoryTransport


def _blame(message: Message, error: Exception) -> str:
    # a bad update is the client's that sent it, even when the server refuses it
    return error.client if isinstance(error, BadUpdateError) else message.receiver


class FederatedTrainer(SetupOnce):
    """Builds a server and one :class:`HospitalClient` per table and drives rounds.

    ``mode`` picks the executor (``"vectorized"`` or ``"loop"``). The trainer never reads a
    client's rows; it only routes messages and makes party-local checkpoint calls
    (:meth:`snapshot`, :meth:`restore`), as :class:`vfl.vertical.trainer.SplitTrainer` does.
    """

    def __init__(self, tables: dict[str, PartyTable], config: FedConfig, *,
                 mode: str = "vectorized", columns=None, transport=None,
                 max_chunk_bytes: int = 256 * 2**20, client_factory=None,
                 server_factory=None):
        if not tables:
            raise EmptyRoundError("a federation needs at least one client table")
        self._start(config, transport if transport is not None else InMemoryTransport(),
                    LocalExecutor(mode, max_chunk_bytes=max_chunk_bytes), server_factory,
                    columns if columns is not None else next(iter(tables.values())).columns)
        # ``client_factory(name, table, executor)`` and ``server_factory(name)`` let tests,
        # studies and the unlearning adapters plug in other behaviour (e.g. a Byzantine
        # client for the robust aggregators, slices for SISA).
        make = client_factory or HospitalClient
        self.clients = {n: make(n, t, self.executor) for n, t in tables.items()}
        for client in self.clients.values():
            self.transport.register(client)
        self.invited = sorted(self.clients)
        # In-memory simulation: each party's DP secret is derived from the seed and its name
        # so runs are reproducible (horizontal.dp.ledger; a pinned secret is kept). A
        # deployment (``over``) never does this: its parties draw theirs from os.urandom.
        for party in [self.server, *self.clients.values()]:
            use = getattr(party, "use_simulation_secret", None)
            if use is not None:
                use(config.seed)

    @classmethod
    def over(cls, transport, clients: list[str], config: FedConfig, *, columns,
             server_factory=None) -> FederatedTrainer:
        """A federation whose clients live elsewhere (a deployment: each hospital on its own
        node), reached only through ``transport``; the server is built here and registered
        on it (``transport.register``), as in one process. ``columns`` is the agreed schema.
        Party-local reads of the clients (:meth:`snapshot`, :meth:`restore`,
        :meth:`setup_ids`) are not available here; each client keeps its own state."""
        if not clients:
            raise EmptyRoundError("a federation needs at least one client")
        trainer = cls.__new__(cls)
        # No local training runs here: the executor only receives the shape hints.
        trainer._start(config, transport, LocalExecutor("loop"), server_factory, columns)
        trainer.clients = {}
        trainer.invited = sorted(clients)
        trainer.remote = True
        return trainer

    def _start(self, config, transport, executor, server_factory, columns) -> None:
        self.config = config
        self.transport = transport
        self.coordinator = Coordinator(self.transport)
        self.executor = executor
        self.server = (server_factory or FedServer)(SERVER)
        self.transport.register(self.server)
        self.columns = list(columns)
        self.members: list[str] = []
        self.excluded: dict[str, str] = {}
        self.sizes: dict[str, dict] = {}
        self.completed_round = -1
        self.remote = False  # clients on other machines (over()): fit and collect fused
        self._setup_done = False
        self.privacy: PrivacyLedger | None = None
        self.planned_privacy: dict[str, float] = {}
        self.privacy_stop: BudgetExhaustedError | None = None

    # -- routing ------------------------------------------------------------------------------
    def _failure_policy(self) -> FailurePolicy:
        """Drop-outs are recorded, never fatal; a refused update or schema is recorded
        against its client unless the config says ``on_bad_update="raise"``."""
        refusals = () if self.config.on_bad_update == "raise" else (
            BadUpdateError, ClientSchemaError)
        return FailurePolicy("record", refusals, _blame)

    def _fit_and_collect(self, start: Message, r: int) -> tuple[Routed, Routed]:
        """Ask the server to start round ``r`` (it sends ``fit`` to its cohort), then collect
        the updates of the clients it reached. In one process the vectorized executor trains
        every client between the two (``flush``). With remote clients (:meth:`over`) each
        hospital trains on its own node when ``fit`` arrives, so ``fit.collect`` rides in the
        same bundle (``fit`` answers nobody: a final kind): one network round trip per
        hospital per round, and each client receives exactly the same messages in order."""
        if not self.remote:
            fits = self._route([start])
            reached = [n for n, kind in fits.delivered if kind == "fit"]
            self.executor.flush()
            return fits, self._route([self._request(n, "fit.collect", round=r) for n in reached])
        both = self.coordinator.pipeline(
            [[start], lambda wave: [self._request(m.receiver, "fit.collect", round=r)
                                    for m in wave if m.kind == "fit"]],
            final_kinds={"fit"}, policy=self._failure_policy(),
        )
        fits = Routed(delivered=[d for d in both.delivered if d[1] != "fit.collect"],
                      dropped=list(dict.fromkeys(both.dropped)))
        coll = Routed(back=both.back, rejected=both.rejected,
                      delivered=[d for d in both.delivered if d[1] == "fit.collect"])
        return fits, coll

    def _request(self, receiver, kind, payload=None, round=None) -> Message:
        return self.coordinator.request(receiver, kind, payload, round)

    def _route(self, messages) -> Routed:
        """Deliver messages and their replies through the coordinator's routing loop."""
        return self.coordinator.route(messages, self._failure_policy())

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        self._privacy_preflight()  # before any message: no hospital has read a row yet
        payload = {"config": self.config.to_json(), "columns": self.columns,
                   "clients": self.invited}
        routed = self._route([self._request(SERVER, "setup", payload)])
        self.excluded = {k: str(v) for k, v in routed.rejected.items()}
        back = self._route([self._request(SERVER, "setup.finish")]).back
        (done,) = [m for m in back if m.kind == "setup.done"]
        self.members = list(done.payload["members"])
        ready = {m.sender: m.payload for m in back if m.kind == "setup.ready"}
        self.sizes = ready
        n_rows = max(v["n_train"] for v in ready.values())
        n_steps = max(v["steps"] for v in ready.values())
        self.executor.configure(n_rows, n_steps, self.config.sample_size(len(self.members)))
        self.n_params = int(done.payload["n_params"])
        self._privacy_start()
        self._setup_done = True

    # -- differential privacy -------------------------------------------------------------------
    def _client_plan(self, n_clients: int):
        c, m = self.config, self.config.sample_size(n_clients)
        secure = getattr(c, "secure_aggregation", None) is not None
        return client_plan(c.dp, n_clients, m, secure=secure,
                           surviving=secure_min_survivors(c, m))

    def _privacy_preflight(self) -> None:
        """Refuse a DP plan over the budget before setup sends anything: client level from
        the config and the invited hospitals; record level from each local hospital's count
        of training rows (a party-local read of its ids; a deployed hospital checks its own
        plan when setup reaches it, before reading a feature or a label)."""
        c = self.config
        self.privacy = None if c.dp is None else PrivacyLedger(c.dp)
        self.privacy_stop = None
        if c.dp is None:
            return
        if c.dp.level == "client":
            plans = {FEDERATION: self._client_plan(len(self.invited))}
        else:
            plans = {n: cl.privacy_plan(c) for n, cl in sorted(self.clients.items())
                     if getattr(cl, "privacy_plan", None) is not None}
        self.privacy.check_plans({n: p for n, p in plans.items() if p is not None}, c.rounds)

    def _privacy_start(self) -> None:
        """Open the accounts from the public counts of setup (``setup.ready``)."""
        c = self.config
        if self.privacy is None:
            return
        if c.dp.level == "client":
            plans = {FEDERATION: self._client_plan(len(self.members))}
        else:
            plans = {n: record_plan(c.dp, self.sizes[n]["n_train"], batch_size=c.batch_size,
                                    local_epochs=c.local_epochs) for n in self.members}
        self.planned_privacy = self.privacy.start(plans, c.rounds)

    def privacy_spent(self) -> dict | None:
        """What the run has spent so far (None without DP): ``epsilon`` (overall: the
        largest over the hospitals, since each patient is at one hospital; at client level
        the federation's), ``per_hospital`` (record level: each hospital's own; client
        level: the federation's for every member), ``delta``, ``accountant``, ``budget``,
        ``level``, the charged ``steps`` per account and ``planned`` (the epsilon of every
        planned round, per account)."""
        if self.privacy is None:
            return None
        spent = self.privacy.spent()
        per = spent.pop("per_party")
        if self.config.dp.level == "client":
            per = {n: per.get(FEDERATION, 0.0) for n in self.members}
        return spent | {"per_hospital": per, "planned": dict(self.planned_privacy)}

    # -- one round ----------------------------------------------------------------------------
    def _set_world(self, r: int) -> None:
        systems, seed = self.config.systems, self.config.seed
        for name in self.members:
            self.transport.set_offline(name, systems.is_offline(seed, r, name))

    def run_round(self, r: int) -> dict:
        c = self.config
        t0 = time.perf_counter()
        tentative = None
        if self.privacy is not None:  # BudgetExhaustedError before anything is released
            accounts = [FEDERATION] if c.dp.level == "client" else self.members
            tentative = self.privacy.precheck(accounts)
        trained: set[str] = set()
        self._set_world(r)
        tried: set[str] = set()
        dropped: list[str] = []
        rejected: dict[str, str] = {}
        missed: list[str] = []
        usable = 0
        secure, done, aborted = c.secure_aggregation is not None, None, None
        for attempt in range(c.max_retries + 1 if c.on_empty_round == "retry" else 1):
            if attempt == 0:
                start = self._request(SERVER, "round.start", round=r)
            else:
                start = self._request(SERVER, "round.retry",
                                      {"round": r, "attempt": attempt, "exclude": sorted(tried)})
            try:
                fits, coll = self._fit_and_collect(start, r)
            except TooManyDropoutsError as exc:  # secure: too few clients left to retry with
                aborted = str(exc)
                break
            dropped += fits.dropped
            reached = [n for n, kind in fits.delivered if kind == "fit"]
            tried |= set(reached) | set(fits.dropped)
            trained |= set(reached)
            dropped += [n for n in coll.dropped if n not in fits.dropped]
            rejected |= {k: str(v) for k, v in coll.rejected.items()}
            missed += [m.sender for m in coll.back if m.kind == "fit.missed"]
            usable = sum(1 for m in coll.back if m.kind == "fit.accepted" and m.payload["usable"])
            if secure:
                rejected |= self._withheld(coll.back)
                done, aborted = self._secure_aggregate(r, dropped)
                usable = int(done is not None)
            if usable or len(tried) >= len(self.members):
                break
        summary = {"round": r, "dropped": sorted(dropped), "rejected": rejected,
                   "missed_deadline": sorted(missed), "skipped": False, "clients": [],
                   "loss": float("nan")}
        if usable == 0:
            if c.on_empty_round == "raise":
                cls = (SecureRoundAbortedError if aborted else AllClientsDroppedError
                       if not rejected else EmptyRoundError)
                raise cls(
                    f"round {r}: no usable update (dropped {sorted(dropped)}, rejected "
                    f"{sorted(rejected)}, missed the deadline {sorted(missed)}"
                    + (f"; secure aggregation aborted: {aborted}" if aborted else "")
                    + "); the global model is unchanged. Use on_empty_round='skip' or "
                    "'retry' to go on."
                )
            summary["skipped"] = True
            if aborted:
                summary["aborted"] = aborted
        else:
            if done is None:
                (done,) = [m for m in self._route(
                    [self._request(SERVER, "round.aggregate", round=r)]).back
                    if m.kind == "round.done"]
            summary["clients"] = list(done.payload["clients"])
            summary["loss"] = float(done.payload["loss"])
            summary["examples"] = int(done.payload["examples"])
        summary["bytes_up"] = self.bytes_up(r)
        if self.privacy is not None:
            # Record level: every hospital that was asked to train and reached, whether or
            # not its update arrived (conservative); client level: a round that released
            # a model.
            if c.dp.level == "client":
                charged = [] if summary["skipped"] else [FEDERATION]
            else:
                charged = sorted(trained)
            self.privacy.commit(tentative, charged)
            summary["privacy"] = self.privacy_spent()
        summary["seconds"] = time.perf_counter() - t0
        self.completed_round = r
        return summary

    # -- secure aggregation ------------------------------------------------------------------------
    def _secure_aggregate(self, r: int, dropped: list[str]):
        """SecAgg+ once the cohort advertised its keys (on ``fit.collect``): close each stage
        (:data:`~horizontal.secure_rounds.STEPS`; who did not answer by then is a dropout of
        that stage), then ``round.aggregate``: the server unmasks the sum and commits.
        Returns ``(round.done, None)``, or ``(None, why)`` when too many clients dropped
        out (nothing was unmasked or committed)."""
        try:
            for step in STEPS:
                dropped += self._route([self._request(SERVER, step, {"round": r})]).dropped
            back = self._route([self._request(SERVER, "round.aggregate", round=r)]).back
        except TooManyDropoutsError as exc:
            return None, str(exc)
        (done,) = [m for m in back if m.kind == "round.done"]
        return done, None

    def _withheld(self, back: list[Message]) -> dict[str, str]:
        """Clients that kept their update out of a secure round, and why; a non-finite one
        raises under ``on_bad_update="raise"`` as the server's refusal would."""
        withheld = [m for m in back if m.kind == WITHHELD]
        for m in withheld:
            if m.payload.get("bad") and self.config.on_bad_update == "raise":
                raise NonFiniteUpdateError(
                    m.sender, f"client {m.sender!r} withheld its update: "
                    f"{m.payload.get('reason')}")
        return {m.sender: str(m.payload.get("reason")) for m in withheld}

    # -- bytes ----------------------------------------------------------------------------------
    def bytes_up(self, r: int) -> int:
        """Bytes of the serialized updates the clients sent in round ``r`` (under secure
        aggregation: everything they sent the server for it, keys to mask shares)."""
        return sum(e.bytes for e in self.transport.transcript.entries
                   if e.round == r and (e.kind == "fit.update" or e.kind in CLIENT_KINDS))

    def bytes_per_client(self, r: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.transport.transcript.entries:
            if e.round == r and (e.kind == "fit.update" or e.kind in CLIENT_KINDS):
                out[e.sender] = out.get(e.sender, 0) + e.bytes
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def snapshot(self, summary: dict) -> FedRoundRecord:
        r = summary["round"]
        states = {SERVER: self.server.snapshot()}
        if self.privacy is not None:  # the coordinator's account, kept with the server's state
            states[SERVER].extra["privacy"] = self.privacy.to_tree()
        states |= {n: self.clients[n].snapshot() for n in self.members}
        return FedRoundRecord(
            round=r, epoch=r, states=states,
            ids_used={n: self.clients[n].used_ids(r) for n in self.members},
            loss=summary["loss"], config_digest=self.config.digest(),
            participants=tuple(summary["clients"]), dropped=tuple(summary["dropped"]),
            rejected=dict(summary["rejected"]), skipped=summary["skipped"],
        )

    def setup_ids(self) -> dict[str, tuple[str, ...]]:
        return {n: self.clients[n].setup_ids() for n in self.members}

    def restore(self, record: FedRoundRecord) -> None:
        check_record(record, self.config.digest(), {SERVER} | set(self.members))
        self.server.restore(record.states[SERVER])
        if self.privacy is not None:
            self.privacy.restore(record.states[SERVER].extra.get("privacy"))
        for n in self.members:
            self.clients[n].restore(record.states[n])
        self.completed_round = record.round

    # -- training ------------------------------------------------------------------------------
    def fit(self, *, on_round_end=None, resume_from: FedRoundRecord | None = None,
            stop_after: int | None = None, eval_every: int = 0, progress: bool = True,
            description: str = "federated training") -> TrainHistory:
        """Run rounds up to ``config.rounds`` (or ``stop_after``, inclusive); the history is
        the sequence of round summaries."""
        start = prepare_fit(self, resume_from)
        t0 = time.perf_counter()
        last = self.config.rounds - 1 if stop_after is None else min(
            stop_after, self.config.rounds - 1)
        history = TrainHistory()
        with progress_bar(description, total=self.config.rounds, enabled=progress) as bar:
            bar.advance(start)
            for r in range(start, last + 1):
                try:
                    summary = self.run_round(r)
                except BudgetExhaustedError as exc:  # the model of round r - 1 is the last
                    self.privacy_stop = exc
                    history.stopped = f"privacy budget: {exc}"
                    last = r - 1
                    break
                if on_round_end is not None:
                    on_round_end(self.snapshot(summary))
                if eval_every and ((r + 1) % eval_every == 0 or r == last):
                    summary["eval"] = self.evaluate()["pooled"]
                history.record(summary)
                bar.advance(1)
        history.rounds = last + 1 - start
        history.seconds = time.perf_counter() - t0
        return history

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, model: str = "global", split: str = "test", clients=None) -> dict:
        """Per-client metrics on each client's own held-out rows, and pooled metrics over the
        union (the clients return scores and labels for this operator's view only)."""
        payload = {"model": model, "split": split, "with_scores": True}
        if clients:
            payload["clients"] = list(clients)
        routed = self._route([self._request(SERVER, "eval.request", payload)])
        replies = sorted((m for m in routed.back if m.kind == "eval.metrics"),
                         key=lambda m: m.sender)
        per_client = {m.sender: m.payload["metrics"] for m in replies}
        scores = np.concatenate([np.asarray(m.payload["scores"]) for m in replies])
        labels = np.concatenate([np.asarray(m.payload["labels"]) for m in replies])
        task = self.config.task
        pooled = task.evaluate(scores, labels)
        return {"pooled": pooled, "per_client": per_client,
                "n": {m.sender: m.payload["n"] for m in replies},
                "roc": vfl_metrics.roc_curve(labels, scores) if task.kind == "binary" else None}

    def finetune(self, epochs: int = 1, lr: float | None = None) -> None:
        payload = {"epochs": epochs} | ({"lr": lr} if lr is not None else {})
        self._route([self._request(SERVER, "finetune.request", payload)])

    def global_params(self) -> np.ndarray:
        """The operator's copy of the global model (the server publishes it)."""
        return self.server.global_params()

    def parameters(self) -> dict:
        """The trained global model as nested dicts of numpy arrays, in the layout of the
        Flax module (``{"layers": {...}, "out": {"kernel", "bias"}}``; ``hidden=()``:
        just ``out``). :meth:`global_params` is the same model as one flat vector. Under
        FedPer each client's personal head stays with the client."""
        return self.server.parameters()
