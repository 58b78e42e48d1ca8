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

Checkpoint contract (:mod:`vfl.core.rounds`), as in :mod:`vfl.vertical.trainer`: after round ``r``,
``on_round_end(record)`` receives a :class:`FedRoundRecord` with every party's
:class:`~vfl.core.rounds.PartyState` and, per client, the ids of the rows its update used.
The state after ``r`` depends only on the seed, the state after ``r - 1`` and those rows
(batches, samples, dropouts and quantization noise all come from keyed hashes), so
``fit(resume_from=record)`` continues at ``r + 1`` and ends bitwise equal to an
uninterrupted run.
"""

from __future__ import annotations

import time

import numpy as np

from horizontal.client import HospitalClient
from horizontal.config import FedConfig
from horizontal.errors import (
    AllClientsDroppedError,
    BadUpdateError,
    ClientSchemaError,
    EmptyRoundError,
)
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
        self._setup_done = False

    # -- routing ------------------------------------------------------------------------------
    def _failure_policy(self) -> FailurePolicy:
        """Drop-outs are recorded, never fatal; a refused update or schema is recorded
        against its client unless the config says ``on_bad_update="raise"``."""
        refusals = () if self.config.on_bad_update == "raise" else (
            BadUpdateError, ClientSchemaError)
        return FailurePolicy("record", refusals, _blame)

    def _request(self, receiver, kind, payload=None, round=None) -> Message:
        return self.coordinator.request(receiver, kind, payload, round)

    def _route(self, messages) -> Routed:
        """Deliver messages and their replies through the coordinator's routing loop."""
        return self.coordinator.route(messages, self._failure_policy())

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
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
        self._setup_done = True

    # -- one round ----------------------------------------------------------------------------
    def _set_world(self, r: int) -> None:
        systems, seed = self.config.systems, self.config.seed
        for name in self.members:
            self.transport.set_offline(name, systems.is_offline(seed, r, name))

    def run_round(self, r: int) -> dict:
        c = self.config
        t0 = time.perf_counter()
        self._set_world(r)
        tried: set[str] = set()
        dropped: list[str] = []
        rejected: dict[str, str] = {}
        missed: list[str] = []
        usable = 0
        for attempt in range(c.max_retries + 1 if c.on_empty_round == "retry" else 1):
            if attempt == 0:
                start = self._request(SERVER, "round.start", round=r)
            else:
                start = self._request(SERVER, "round.retry",
                                      {"round": r, "attempt": attempt, "exclude": sorted(tried)})
            fits = self._route([start])
            dropped += fits.dropped
            reached = [n for n, kind in fits.delivered if kind == "fit"]
            tried |= set(reached) | set(fits.dropped)
            self.executor.flush()
            coll = self._route([self._request(n, "fit.collect", round=r) for n in reached])
            dropped += coll.dropped
            rejected |= {k: str(v) for k, v in coll.rejected.items()}
            missed += [m.sender for m in coll.back if m.kind == "fit.missed"]
            usable = sum(1 for m in coll.back if m.kind == "fit.accepted" and m.payload["usable"])
            if usable or len(tried) >= len(self.members):
                break
        summary = {"round": r, "dropped": sorted(dropped), "rejected": rejected,
                   "missed_deadline": sorted(missed), "skipped": False, "clients": [],
                   "loss": float("nan")}
        if usable == 0:
            if c.on_empty_round == "raise":
                cls = AllClientsDroppedError if not rejected else EmptyRoundError
                raise cls(
                    f"round {r}: no usable update (dropped {sorted(dropped)}, rejected "
                    f"{sorted(rejected)}, missed the deadline {sorted(missed)}); the global "
                    "model is unchanged. Use on_empty_round='skip' or 'retry' to go on."
                )
            summary["skipped"] = True
        else:
            (done,) = [m for m in self._route(
                [self._request(SERVER, "round.aggregate", round=r)]).back
                if m.kind == "round.done"]
            summary["clients"] = list(done.payload["clients"])
            summary["loss"] = float(done.payload["loss"])
            summary["examples"] = int(done.payload["examples"])
        summary["bytes_up"] = self.bytes_up(r)
        summary["seconds"] = time.perf_counter() - t0
        self.completed_round = r
        return summary

    # -- bytes ----------------------------------------------------------------------------------
    def bytes_up(self, r: int) -> int:
        """Bytes of the serialized updates the clients sent in round ``r``."""
        return sum(e.bytes for e in self.transport.transcript.entries
                   if e.round == r and e.kind == "fit.update")

    def bytes_per_client(self, r: int) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.transport.transcript.entries:
            if e.round == r and e.kind == "fit.update":
                out[e.sender] = out.get(e.sender, 0) + e.bytes
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def snapshot(self, summary: dict) -> FedRoundRecord:
        r = summary["round"]
        states = {SERVER: self.server.snapshot()}
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
                summary = self.run_round(r)
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
