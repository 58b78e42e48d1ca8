"""Horizontal training deployed across machines: the client each node builds, and the job
the coordinator runs in Flower's ServerApp (:mod:`vfl.deploy`).

The node side (:func:`make_client`) reads everything from the hospital's own command line:
its data file, id column and label column. Its local training runs on its own machine (a
:class:`~horizontal.simulation.LocalExecutor` of its own, in ``loop`` mode: one compiled
program per client, as a device would run it).

The coordinator side (:func:`run_job`) is the same code as in one process: the
:class:`~horizontal.server.FedServer` and :class:`~horizontal.trainer.FederatedTrainer`
(:meth:`FederatedTrainer.over <horizontal.trainer.FederatedTrainer.over>` the transport).
The server lives in the ServerApp, next to the coordinator, and speaks to the clients
through the engine as the coordinator: a deployed client's server *is* the coordinator
(``HospitalClient(..., server=COORDINATOR)``), so what they exchange crosses unsealed, and
the ServerApp, which holds the server, reads it, as the server does in one process.
:class:`ServerSide` makes that invisible to the server and the trainer: it delivers messages
for the server here and relays the clients' messages for the server (``setup.stats``,
``fit.update``, and under secure aggregation the ``secagg.*`` inputs) to it under its name.
Every message, its order per party, the sampling, drop-outs and refusals are those of the
in-memory run, so the global model is bitwise the same (with secure aggregation too: the
masks cancel exactly, whatever keys each node drew).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from horizontal.client import HospitalClient
from horizontal.config import FedConfig
from horizontal.privacy_policy import PrivacyPolicy
from horizontal.server import SERVER, FedServer
from horizontal.simulation import LocalExecutor
from horizontal.trainer import FederatedTrainer
from vfl.core import wire
from vfl.core.coordinator import Coordinator
from vfl.core.errors import (
    ConfigError,
    PartyUnavailableError,
    TransportError,
)
from vfl.core.fileio import atomic_write
from vfl.core.messages import COORDINATOR, Message
from vfl.core.rounds import erase_for_job, state_tree
from vfl.core.table import PartyTable
from vfl.core.transcript import TranscriptEntry

#: Name of the file a client writes its state to, in its own output directory.
STATE_FILE = "client_state.msgpack"
#: What a client sends its server (to the coordinator, on the wire), by kind.
TO_SERVER = frozenset(k for k, role in FedServer.SENDERS.items() if role != "coordinator")


# -- the node ---------------------------------------------------------------------------------
#: The hospital's privacy account (horizontal.privacy_policy.PrivacyAccount), in its --out.
PRIVACY_ACCOUNT_FILE = "privacy_account.json"


def privacy_policy(options: dict) -> PrivacyPolicy:
    """The hospital's own privacy minimum from its node's command line (never the wire)."""
    return PrivacyPolicy(
        require_secure_aggregation=bool(options.get("require_secure_aggregation")),
        min_corruption=float(options.get("min_corruption") or 0.0),
        max_epsilon=options.get("max_epsilon"),
        max_delta=float(options.get("max_delta") or 1e-5),
        accountant=options.get("dp_accountant") or "rdp",
        release_scores=not options.get("no_release_scores"),
    )


def make_client(options: dict):
    """The client a node serves, and how it saves its state (``deploy.save``)."""
    if not options.get("label_column"):
        raise ConfigError(
            f"hospital {options['party']!r}: give --label-column; every hospital in a "
            "horizontal federation trains on its own labels"
        )
    table = PartyTable.from_file(options["data"], options["id_column"],
                                 options["label_column"])
    # Differential privacy samples and noises with a secret only this hospital holds: from
    # os.urandom, unless its operator pins one (--dp-secret-file, never sent anywhere).
    secret_file = options.get("dp_secret_file")
    if secret_file and not Path(secret_file).is_file():
        raise ConfigError(f"--dp-secret-file {secret_file}: no such file")
    secret = Path(secret_file).read_text().strip() if secret_file else None
    # The epsilon this hospital has spent persists on its own disk across node restarts.
    account = Path(options["out"]) / PRIVACY_ACCOUNT_FILE if options.get("out") else None
    client = HospitalClient(options["party"], table, LocalExecutor("loop"), server=COORDINATOR,
                            dp_secret=secret, policy=privacy_policy(options),
                            privacy_account=account)
    return client, save_state


def save_state(client, out_dir: Path) -> dict:
    """Write what the client keeps between runs (its personal head under FedPer, SCAFFOLD
    control variate, error-feedback residual) to its own disk; say where and its digest."""
    if client.config is None or not hasattr(client, "ef"):
        return {}  # never set up: nothing to keep
    data = wire.dumps(state_tree(client.snapshot()))
    path = Path(out_dir) / STATE_FILE
    atomic_write(path, data)
    return {"file": str(path), "sha256": hashlib.sha256(data).hexdigest()}


def load_state(path: str | Path) -> dict:
    """A state file :func:`save_state` wrote, as a tree (for auditors and tests)."""
    return wire.loads(Path(path).read_bytes())


# -- the ServerApp ----------------------------------------------------------------------------
class ServerSide:
    """The trainer's transport in the ServerApp: the server (registered here) handles its
    messages in this process; the clients are behind ``remote`` (a
    :class:`~vfl.deploy.transport.FlowerTransport`), and the server's messages reach them
    as the coordinator's. ``set_offline`` is the simulated world's
    (:class:`~horizontal.systems.SystemsConfig`), as on the in-memory transport."""

    def __init__(self, remote) -> None:
        self.remote = remote
        self.transcript = remote.transcript
        self._local: dict = {}
        self._offline: set[str] = set()

    def register(self, handler) -> None:
        if handler.name == COORDINATOR or handler.name in self.parties:
            raise TransportError(f"a party named {handler.name!r} is already reachable")
        self._local[handler.name] = handler

    @property
    def parties(self) -> list[str]:
        return [*self._local, *self.remote.parties]

    def set_offline(self, name: str, offline: bool = True) -> None:
        if offline:
            self._offline.add(name)
        else:
            self._offline.discard(name)

    def send_to_coordinator(self, message: Message) -> Message:
        return self.remote.send_to_coordinator(message)

    def deliver(self, message: Message) -> list[Message]:
        (outcome,) = self.deliver_many([message])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def deliver_many(self, messages: list[Message], *, raise_errors: bool = False) -> list:
        """Per message, its receiver's replies or the error it raised; the clients' messages
        go out in one engine wave, the server's are handled here in order."""
        out: list = [None] * len(messages)
        away: list[tuple[int, Message]] = []
        for i, m in enumerate(messages):
            if m.receiver in self._offline:
                out[i] = PartyUnavailableError(f"party {m.receiver!r} is not answering")
            elif m.receiver in self._local:
                out[i] = self._handle_here(m)
            else:
                away.append((i, self._outbound(m)))
        if away:
            answers = self.remote.deliver_many([m for _, m in away])
            for (i, _), answer in zip(away, answers):
                out[i] = answer if isinstance(answer, Exception) else [
                    self._inbound(r) for r in answer]
        if raise_errors:
            for o in out:
                if isinstance(o, Exception):
                    raise o
        return out

    def _handle_here(self, message: Message):
        handler = self._local[message.receiver]
        data = message.to_bytes()
        self.transcript.record(TranscriptEntry.of(message, len(data)))
        try:
            replies = handler.handle(Message.from_bytes(data)) or []
        except Exception as exc:  # the coordinator's policy decides (record or raise)
            return exc
        for reply in replies:
            if reply.sender != handler.name:
                raise TransportError(f"{handler.name!r} tried to send a message as "
                                     f"{reply.sender!r}")
        return list(replies)

    def _outbound(self, m: Message) -> Message:
        if m.sender not in self._local:
            return m
        return Message(COORDINATOR, m.receiver, m.kind, m.label, m.payload, m.round,
                       m.label_dependent)

    def _inbound(self, m: Message) -> Message:
        if m.receiver != COORDINATOR or m.kind not in TO_SERVER:
            return m
        return Message(m.sender, SERVER, m.kind, m.label, m.payload, m.round,
                       m.label_dependent)


def _round_summary(s: dict) -> dict:
    out = {"round": s["round"], "participants": list(s["clients"]),
           "dropped": list(s["dropped"]), "rejected": dict(s["rejected"]),
           "missed_deadline": list(s["missed_deadline"]), "skipped": bool(s["skipped"]),
           "loss": s["loss"], "bytes_up": s["bytes_up"], "seconds": s["seconds"]}
    if "examples" in s:
        out["examples"] = s["examples"]
    if "aborted" in s:  # secure aggregation: too many dropouts, nothing unmasked
        out["aborted"] = s["aborted"]
    return out


def run_job(transport, config: dict, log=print) -> dict:
    """Setup, the rounds and evaluation over ``transport``; the clients save their states.

    ``config``: ``parties`` (the clients), ``train`` (a :class:`FedConfig` as JSON),
    ``columns`` (the feature columns every hospital agreed on, in order), optional
    ``evaluate`` (splits, default ``["test"]``), ``save`` (default true: each client
    writes its state to its own ``--out``) and ``erase`` (patient ids every hospital deletes
    before setup: an exact erasure replayed as a retrain through the deployment)."""
    clients = list(config["parties"])
    columns = config.get("columns")
    if not isinstance(columns, list) or not columns or not all(
        isinstance(c, str) for c in columns
    ):
        raise ConfigError(
            "a horizontal job needs 'columns': the feature columns every hospital agreed on, "
            "in order (its data file's columns without the id and the label)"
        )
    fed = FedConfig.from_json(config["train"])
    side = ServerSide(transport)
    erased = erase_for_job(Coordinator(transport), clients, config, log)
    trainer = FederatedTrainer.over(side, clients, fed, columns=columns)
    log(f"setting up {len(clients)} clients")
    trainer.ensure_setup()
    if trainer.excluded:
        log("left out at setup: " + "; ".join(f"{k}: {v}" for k, v in
                                               sorted(trainer.excluded.items())))
    n = fed.rounds
    log(f"training: {n} rounds, {fed.sample_size(len(trainer.members))} of "
        f"{len(trainer.members)} clients per round")
    rounds, finished = [], []
    t0, first_wave = time.perf_counter(), int(getattr(transport, "round_trips", 0))
    for r in range(n):
        s = _round_summary(trainer.run_round(r))
        finished.append(time.perf_counter() - t0)
        rounds.append(s)
        note = "skipped (no usable update)" if s["skipped"] else (
            f"{len(s['participants'])} clients, loss {s['loss']:.5f}")
        if "aborted" in s:
            note += f"; secure aggregation aborted: {s['aborted']}"
        if s["dropped"]:
            note += f", dropped {s['dropped']}"
        if s["rejected"]:
            note += f", rejected {sorted(s['rejected'])}"
        log(f"round {r + 1}/{n}: {note}")
    train_waves = [first_wave + 1, int(getattr(transport, "round_trips", 0))]
    metrics = {}
    for split in config.get("evaluate", ["test"]):
        ev = trainer.evaluate(split=split)
        metrics[split] = {"pooled": ev["pooled"], "per_client": ev["per_client"], "n": ev["n"]}
        log(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev["pooled"].items()
                                     if isinstance(v, float)))
    w = trainer.global_params()
    return {
        "rounds": n,
        "members": list(trainer.members),
        "excluded": dict(trainer.excluded),
        "erased": erased,
        "summaries": rounds,
        # When each round finished (seconds from the start of training) and which network
        # waves carried training: what the deployment benchmark reads.
        "round_finished": finished,
        "train_waves": train_waves,
        "losses": [s["loss"] for s in rounds],
        "metrics": metrics,
        "global_sha256": hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest(),
        "global_params": [float(v) for v in w],
    }
