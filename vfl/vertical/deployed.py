"""Vertical training deployed across machines: the party each node builds, and the job the
coordinator runs in Flower's ServerApp (:mod:`vfl.deploy`).

The node side (:func:`make_party`) reads everything from the organization's own command
line: its data file, id column, label column (only the active party has one) and security
policy. The coordinator side (:func:`run_job`) is the same code as in one process: PSI
(:func:`~vfl.psi.run_psi`), then :class:`~vfl.vertical.trainer.SplitTrainer` over a
:meth:`Federation.over <vfl.vertical.federation.Federation.over>` the transport, then
evaluation. Each party then saves its own state on its own machine (``deploy.save``).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from vfl.core import wire
from vfl.core.errors import ConfigError
from vfl.core.fileio import atomic_write
from vfl.core.rounds import erase_for_job, state_tree
from vfl.core.table import PartyTable
from vfl.psi import run_psi
from vfl.vertical.config import PROTOCOLS, SecurityPolicy, TrainConfig
from vfl.vertical.federation import Federation
from vfl.vertical.parties import ActiveParty, PassiveParty
from vfl.vertical.trainer import SplitTrainer

#: Name of the file a party writes its state to, in its own output directory.
STATE_FILE = "state.msgpack"


def policy_from(options: dict) -> SecurityPolicy:
    protocols = options.get("protocols")
    return SecurityPolicy(
        protocols=tuple(p.strip() for p in protocols.split(",")) if protocols else PROTOCOLS,
        min_key_bits=int(options.get("min_key_bits") or 2048),
        allow_insecure_test_key=bool(options.get("allow_insecure_test_key")),
    )


def make_party(options: dict):
    """The party a node serves, and how it saves its state (``deploy.save``)."""
    table = PartyTable.from_file(options["data"], options["id_column"],
                                 options.get("label_column"))
    policy = policy_from(options)
    name = options["party"]
    party = (ActiveParty if table.has_labels else PassiveParty)(name, table, policy=policy)
    return party, save_state


def save_state(party, out_dir: Path) -> dict:
    """Write the party's state (parameters, optimizer state; the key holder's includes its
    private key: its own) to its own disk; say where and its digest."""
    data = wire.dumps(_str_keys(state_tree(party.snapshot())))
    path = Path(out_dir) / STATE_FILE
    atomic_write(path, data)
    return {"file": str(path), "sha256": hashlib.sha256(data).hexdigest()}


def _str_keys(tree):
    # Flax trees may key layers by int; the wire format keeps map keys as strings.
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_str_keys(v) for v in tree]
    return tree


def load_state(path: str | Path) -> dict:
    """A state file :func:`save_state` wrote, as a tree (for auditors and tests)."""
    return wire.loads(Path(path).read_bytes())


def transport_waves(transport) -> int:
    """Waves the transport has sent so far (0 for a transport that does not count them)."""
    return int(getattr(transport, "round_trips", 0))


def run_job(transport, config: dict, log=print) -> dict:
    """PSI, training and evaluation over ``transport``; the parties save their states.

    ``config``: ``parties`` (active first or ``active`` named), ``train`` (a
    :class:`TrainConfig` as JSON), optional ``evaluate`` (splits, default ``["test"]``) and
    ``predict`` (patient ids to score after training) and ``erase`` (patient ids every
    party deletes before alignment: an exact erasure replayed
    as a retrain through the deployment; every party learns the pseudonymous ids asked
    for, including parties that do not hold them)."""
    parties = list(config["parties"])
    active = config.get("active", parties[0])
    if active not in parties:
        raise ConfigError(f"active party {active!r} is not among the parties {parties}")
    train = TrainConfig.from_json(config["train"])
    if not train.is_portable:
        raise ConfigError(
            "a deployed run needs a training config that JSON can carry (named models and "
            "optimizers); register custom modules with register_model/register_optimizer"
        )
    fed = Federation.over(transport, active, [p for p in parties if p != active])
    # The replay after an erasure is an exact retrain, from alignment on.
    erased = erase_for_job(fed.coordinator, parties, config, log)
    log(f"aligning {len(parties)} parties by PSI")
    alignment = run_psi(fed.coordinator, fed.names)
    log(f"aligned {alignment.size} patients ({transport_waves(transport)} round trips so far)")
    fed.alignment = alignment
    trainer = SplitTrainer(fed, train)
    trainer.ensure_setup()
    n = trainer.n_rounds
    log(f"training: {n} rounds, protocol {train.protocol} ({transport_waves(transport)} round "
        "trips so far)")
    every = max(1, n // 10)
    finished: list[float] = []

    def done(r: int, loss: float) -> None:
        finished.append(time.perf_counter())
        if (r + 1) % every == 0 or r + 1 == n:
            log(f"round {r + 1}/{n}: loss {loss:.5f}")

    t0, first_wave = time.perf_counter(), transport_waves(transport)
    losses = trainer.run_rounds(range(n), on_done=done)
    train_seconds = time.perf_counter() - t0
    train_waves = [first_wave + 1, transport_waves(transport)]
    log(f"trained ({transport_waves(transport)} round trips so far)")
    metrics = {}
    for split in config.get("evaluate", ["test"]):
        metrics[split] = trainer.evaluate(split)["metrics"]
        log(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()
                                     if isinstance(v, float)))
    predictions = None
    if config.get("predict"):
        # Scores for patients every party holds; only embeddings cross (sealed), and the
        # scores come back to the coordinator, as in one process.
        ids = [str(i) for i in config["predict"]]
        predictions = {"ids": ids, "scores": trainer.predict(ids).tolist()}
        log(f"scored {len(ids)} patients")
    return {
        "train_seconds": train_seconds,
        # When each round finished (seconds from the start of training) and which network
        # waves carried training: what the deployment benchmark reads.
        "round_finished": [t - t0 for t in finished],
        "train_waves": train_waves,
        "erased": erased,
        "aligned": int(alignment.size),
        "rounds": n,
        "losses": [losses[r] for r in range(n)],
        "metrics": metrics,
        "predictions": predictions,
    }
