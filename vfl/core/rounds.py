"""The round contract both trainers keep, and the one shape of a round's state.

Both trainers (vertical split learning and horizontal FedAvg) are deterministic and
round-based: the state after round ``r`` is a pure function of the seed, the state after
round ``r - 1`` and the rows round ``r`` used (every batch and client sample comes from
:mod:`vfl.core.keyed`). So a replay without some patients, from a checkpoint they did not
influence, ends equal to a retrain without them: the property exact unlearning rests on.

One state, three views:

* :class:`PartyState`: what one party or client needs to continue after a round (its
  parameters, optimizer state, RNG key, and anything else it keeps in ``extra``). Each party
  produces and restores its own, party-locally.
* :class:`RoundRecord`: what a trainer reports after round ``r`` (every participant's state
  and the ids whose rows it used); ``fit(resume_from=record)`` continues at ``r + 1``.
* :class:`Checkpoint`: the same record as plain trees, what the unlearning store writes;
  :func:`to_checkpoint` / :func:`from_checkpoint` convert, losslessly.

:class:`CheckpointedTrainer` and :class:`TrainerAdapter` are the protocol the unlearning
package uses to reach a trainer: it never subclasses a trainer or reads a private attribute.

An erasure is a message: the coordinator asks every party holding a patient's rows to delete
them (``data.erase``, :func:`request_erasure`) and each party answers ``data.erased``
(:func:`erasure_ack`: how many rows it deleted, how many it has left and a digest of the ids
it still holds). No code outside a party filters its table.

This module imports neither JAX nor any other part of the project, so the unlearning
package can use it without loading a trainer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vfl.core.errors import CheckpointError, ProtocolError
from vfl.core.keyed import ids_digest, split_test

#: Checkpoint ``meta`` keys a horizontal record adds to the shared ones.
_FED_META = ("participants", "dropped", "skipped")


@dataclass
class PartyState:
    """Everything a party needs to continue training after a round (checkpoint content)."""

    party: str
    round: int  # last completed round, -1 before training
    params: dict[str, Any]  # nested dict of numpy arrays
    opt_state: list[np.ndarray]  # optax state leaves, in the party's own tree order
    rng: np.ndarray  # the party's base PRNG key data
    config_digest: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundRecord:
    """After round ``round``: every participant's state and the ids each one used."""

    round: int
    epoch: int
    states: dict[str, PartyState]
    ids_used: dict[str, tuple[str, ...]]
    loss: float
    config_digest: str


@dataclass
class FedRoundRecord(RoundRecord):
    """A horizontal round: :class:`RoundRecord` (``epoch`` = ``round``) plus who took part."""

    participants: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    rejected: dict[str, str] = field(default_factory=dict)
    skipped: bool = False


@dataclass
class TrainHistory(Sequence):
    """What both trainers' ``fit`` return: a sequence of per-round summaries (a dict with at
    least ``round`` and ``loss``; a horizontal round adds who took part, bytes and seconds),
    plus the per-round losses, per-epoch metrics, rounds run and seconds."""

    loss: list[float] = field(default_factory=list)
    epoch_metrics: list[dict] = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0
    summaries: list[dict] = field(default_factory=list)
    stopped: str | None = None  # why fit stopped before its last round (a privacy budget)

    def record(self, summary: dict) -> None:
        """Add one round's summary (and its loss)."""
        self.summaries.append(summary)
        self.loss.append(summary["loss"])

    def __getitem__(self, index):
        return self.summaries[index]

    def __len__(self) -> int:
        return len(self.summaries)


@dataclass
class Checkpoint:
    """A round record as plain trees: what a trainer hands the unlearning store."""

    model: str
    round: int
    states: dict[str, dict]  # party/client -> state tree
    ids_used: dict[str, tuple[str, ...]] = field(default_factory=dict)
    loss: float = float("nan")
    meta: dict = field(default_factory=dict)


CheckpointCallback = Callable[[RoundRecord], None]


# -- state <-> tree ------------------------------------------------------------------------
def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _keys_to_int(tree):
    # msgpack keeps dict keys as strings; a Flax parameter tree may use int keys (layers).
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _keys_to_int(v)
                for k, v in tree.items()}
    return tree


def _as_list(x) -> list:
    if isinstance(x, dict):  # msgpack may return lists as {"0": ...}
        return [x[k] for k in sorted(x, key=int)]
    return list(x)


def state_tree(st: PartyState) -> dict:
    """A :class:`PartyState` as a tree of numpy arrays and plain values (``extra`` only when
    the party keeps anything there)."""
    tree = {
        "party": st.party,
        "round": int(st.round),
        "params": st.params,  # already numpy arrays (or ciphertext bytes), party-made copies
        "opt_state": [np.asarray(x) for x in st.opt_state],
        "rng": np.asarray(st.rng),
        "config_digest": st.config_digest,
    }
    if st.extra:
        tree["extra"] = _plain(st.extra)
    return tree


def party_state(tree: dict) -> PartyState:
    """The inverse of :func:`state_tree`."""
    return PartyState(
        tree["party"], int(tree["round"]), _keys_to_int(dict(tree.get("params") or {})),
        [np.asarray(x) for x in _as_list(tree.get("opt_state") or [])],
        np.asarray(tree["rng"]), tree["config_digest"], dict(tree.get("extra") or {}),
    )


def to_checkpoint(model: str, record: RoundRecord) -> Checkpoint:
    """A round record as the store keeps it."""
    meta = {"epoch": record.epoch, "config_digest": record.config_digest}
    if isinstance(record, FedRoundRecord):
        meta |= {"participants": list(record.participants), "dropped": list(record.dropped),
                 "skipped": bool(record.skipped)}
    return Checkpoint(
        model, record.round,
        {n: state_tree(s) for n, s in record.states.items()},
        {n: tuple(str(i) for i in ids) for n, ids in record.ids_used.items()},
        record.loss, meta,
    )


def from_checkpoint(ckpt: Checkpoint, *, digest_of: str | None = None) -> RoundRecord:
    """The round record of a stored checkpoint (a :class:`FedRoundRecord` when the
    checkpoint came from a horizontal round). ``digest_of`` names the participant whose
    config digest stands for the run (default: the first)."""
    states = {n: party_state(t) for n, t in ckpt.states.items()}
    owner = states[digest_of] if digest_of is not None else next(iter(states.values()))
    if any(k in ckpt.meta for k in _FED_META):
        return FedRoundRecord(
            round=ckpt.round, epoch=int(ckpt.meta.get("epoch", ckpt.round)), states=states,
            ids_used={}, loss=ckpt.loss, config_digest=owner.config_digest,
            participants=tuple(ckpt.meta.get("participants", ())),
            dropped=tuple(ckpt.meta.get("dropped", ())),
            skipped=bool(ckpt.meta.get("skipped", False)),
        )
    return RoundRecord(ckpt.round, int(ckpt.meta.get("epoch", 0)), states, {}, ckpt.loss,
                       owner.config_digest)


# -- the shared start of fit ---------------------------------------------------------------
def check_record(record: RoundRecord, config_digest: str, names: Iterable[str]) -> None:
    """Refuse to resume from a record of another config or missing a participant's state."""
    if record.config_digest != config_digest:
        raise CheckpointError(
            "the checkpoint was taken under a different training config; resume with the "
            "config it was trained with"
        )
    missing = set(names) - set(record.states)
    if missing:
        raise CheckpointError(f"the checkpoint has no state for {sorted(missing)}")


def prepare_fit(trainer: CheckpointedTrainer, resume_from: RoundRecord | None) -> int:
    """Set up ``trainer`` if needed, restore ``resume_from`` if given, and return the first
    round to run (the shared start of both trainers' ``fit``)."""
    trainer.ensure_setup()
    if resume_from is None:
        return 0
    trainer.restore(resume_from)
    return resume_from.round + 1


# -- erasure messages ----------------------------------------------------------------------
#: coordinator -> party: delete your rows of these ids (public payload ``ids``: a list of
#: ``str``, the ids of the request that the party holds).
ERASE = "data.erase"
#: party -> coordinator: the deletion is done (public payload: :func:`erasure_ack`).
ERASED = "data.erased"


def erasure_ack(deleted: int, remaining_ids) -> dict:
    """The ``data.erased`` payload of a party: rows it deleted, rows it has left and the
    digest (:func:`vfl.core.keyed.ids_digest`) of the sorted ids it still holds."""
    ids = sorted(str(i) for i in remaining_ids)
    return {"deleted": int(deleted), "rows_left": len(ids), "ids_digest": ids_digest(ids)}


def erase_ids(msg) -> list[str]:
    """The ids of a ``data.erase`` message, or a refusal naming the field."""
    ids = msg.payload.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ProtocolError(
            f"{msg.kind!r} from {msg.sender!r} has no valid 'ids' field (expected a list of "
            "id strings); the message is rejected"
        )
    return ids


def request_erasure(coordinator, held: dict[str, list[str]]) -> dict[str, dict]:
    """Ask each party of ``held`` to delete its rows of ``held[party]``: one ``data.erase``
    per party through ``coordinator`` (a :class:`vfl.core.coordinator.Coordinator`), whose
    transcript then shows the exchange. Returns ``{party: its data.erased payload}``;
    a party that does not confirm raises :class:`~vfl.core.errors.ProtocolError`."""
    asked = {p: sorted(str(i) for i in ids) for p, ids in held.items() if len(ids)}
    if not asked:
        return {}
    back = coordinator.exchange([coordinator.request(p, ERASE, {"ids": ids})
                                 for p, ids in asked.items()])
    acks = {m.sender: dict(m.payload) for m in back if m.kind == ERASED}
    missing = sorted(set(asked) - set(acks))
    if missing:
        raise ProtocolError(f"parties {missing} did not confirm deleting their rows")
    return acks


def erase_for_job(coordinator, parties, config: dict, log=print) -> dict:
    """A deployed job's ``erase`` (patient ids in its config): every party's node deletes
    its rows of them and acknowledges (:func:`request_erasure`; every party learns the
    pseudonymous ids asked for), logged; the job then retrains through the same deployment,
    an exact erasure. ``{}`` when the config asks for none."""
    if not config.get("erase"):
        return {}
    ids = [str(i) for i in config["erase"]]
    acks = request_erasure(coordinator, {p: ids for p in parties})
    log("erased at " + ", ".join(f"{p} ({a['deleted']} rows)" for p, a in acks.items()))
    return acks


class SetupOnce(ABC):
    """What both trainers share about setup: it runs once, and :meth:`ensure_setup` runs it
    only when it has not run (``setup`` itself sets ``_setup_done``)."""

    _setup_done = False

    @abstractmethod
    def setup(self) -> None:
        """Set every participant up for this trainer's config (sets ``_setup_done``)."""

    @property
    def is_set_up(self) -> bool:
        """Whether every participant has been set up for this trainer's config."""
        return self._setup_done

    def ensure_setup(self) -> None:
        """Run setup unless that is already done."""
        if not self._setup_done:
            self.setup()


# -- the protocol unlearning uses ----------------------------------------------------------
@runtime_checkable
class CheckpointedTrainer(Protocol):
    """A deterministic, round-based trainer (one model, or one SISA shard)."""

    n_rounds: int
    phase_starts: list[int]

    @property
    def is_set_up(self) -> bool: ...

    def setup(self) -> None: ...

    def ensure_setup(self) -> None: ...

    def setup_ids(self) -> dict[str, tuple[str, ...]]: ...

    def restore(self, record: RoundRecord) -> None: ...

    def predict(self, ids) -> np.ndarray: ...


class TrainerAdapter(Protocol):
    """Rebuilds a run's trainers from its manifest (minus erased patients) and converts
    between the trainer's round records and store checkpoints. The unlearning package finds
    an adapter by the dotted name in the run manifest and calls only these methods."""

    mode: str

    def models(self) -> list[str]: ...

    def trainer(self, model: str) -> CheckpointedTrainer: ...

    def fit(self, model: str, trainer: CheckpointedTrainer,
            on_checkpoint: Callable[[Checkpoint], None] | None,
            resume: Checkpoint | None) -> None: ...

    def load(self, model: str, trainer: CheckpointedTrainer, ckpt: Checkpoint) -> None: ...

    def final_state(self, trainer: CheckpointedTrainer) -> dict[str, dict]: ...

    def holders(self, pid: str) -> list[str]: ...

    def scores(self, trainers: dict[str, CheckpointedTrainer], ids) -> np.ndarray: ...

    def labels(self, ids) -> np.ndarray: ...

    def split_ids(self) -> dict[str, list[str]]: ...

    def erase_at_parties(self, pids) -> dict[str, dict]: ...

    def comparable_state(self, states: dict[str, dict]) -> dict[str, dict]: ...

    @classmethod
    def align(cls, spec: dict, *, progress: bool = False) -> list[str]: ...


class ClientRemovalAdapter(TrainerAdapter, Protocol):
    """An adapter that can also remove a whole client approximately (a hospital leaving a
    horizontal federation: :class:`horizontal.checkpointing.HorizontalAdapter`). The
    erasure service serves a client removal only through these methods and refuses it
    when the run's adapter lacks them."""

    def check_client_removal(self, run, client: str) -> list[str]: ...

    def delete_client_update_log(self, run, client: str, model: str = "main") -> None: ...

    def remove_client(self, run, model: str, *, every: int, calibration_fraction: float,
                      between: str, meta: dict) -> dict: ...

    def local_steps(self, trainer: CheckpointedTrainer) -> int: ...

    def global_params(self, trainer: CheckpointedTrainer) -> np.ndarray: ...


#: The methods of :class:`ClientRemovalAdapter` beyond :class:`TrainerAdapter`.
CLIENT_REMOVAL_METHODS = ("check_client_removal", "delete_client_update_log", "remove_client",
                          "local_steps", "global_params")


class AdapterBase(ABC):
    """What every adapter shares: who holds a patient, the erasure exchange with the
    parties (:meth:`erase_at_parties`, over the parties an adapter builds in
    :meth:`holding_parties`, minus its ``erased`` ids), SISA score averaging, and the
    keyed-hash train/test split of :func:`vfl.core.keyed.split_test` over the adapter's
    ``aligned`` / ``original_aligned`` ids under its ``config.seed`` and
    ``config.test_fraction``."""

    _id_sets: dict[str, set[str]] | None = None
    _erased_held: dict[str, list[str]] | None = None
    erasure_transcript = None  # the transcript of the last erase_at_parties

    def _held_ids(self) -> dict[str, set[str]]:
        # the id sets are built once per adapter (the full tables never change)
        if self._id_sets is None:
            self._id_sets = {n: set(map(str, t.ids)) for n, t in self.full_tables.items()}
        return self._id_sets

    def holders(self, pid: str) -> list[str]:
        return sorted(n for n, ids in self._held_ids().items() if str(pid) in ids)

    def held_by(self, ids) -> dict[str, list[str]]:
        """For every party holding some of ``ids``: those ids, sorted (id bookkeeping over
        the loaded tables' ids; no row is read)."""
        ids = sorted({str(i) for i in ids})
        out = {}
        for name, mine in self._held_ids().items():
            held = [i for i in ids if i in mine]
            if held:
                out[name] = held
        return out

    def erased_held(self) -> dict[str, list[str]]:
        """:meth:`held_by` of every patient erased from the run so far (once per adapter):
        what each party is asked to delete when it is built from its full table."""
        if self._erased_held is None:
            self._erased_held = self.held_by(self.erased)
        return self._erased_held

    @abstractmethod
    def holding_parties(self):
        """``(coordinator, {name: party})``: one party per full table, as loaded, on one
        transport (each adapter builds its own kind of party)."""

    def erase_at_parties(self, pids) -> dict[str, dict]:
        """An erasure's data deletion: every party holding rows of ``pids`` is asked to
        delete them (``data.erase``) and answers ``data.erased``; returns ``{party: its
        data.erased payload}``. The parties are built from their full tables and first
        delete, the same way, what the run's earlier erasures took (their data as it is
        now). :attr:`erasure_transcript` then holds the messages."""
        pids = {str(p) for p in pids}
        coordinator, _parties = self.holding_parties()
        request_erasure(coordinator, self.held_by({str(p) for p in self.erased} - pids))
        acks = request_erasure(coordinator, self.held_by(pids))
        self.erasure_transcript = coordinator.transport.transcript
        return acks

    def comparable_state(self, states: dict[str, dict]) -> dict[str, dict]:
        """The view of :meth:`final_state` two runs must agree on to the bit (an adapter
        whose states hold encrypted or randomly shared values decrypts them here)."""
        return states

    def scores(self, trainers: dict, ids) -> np.ndarray:
        """Averaged scores of the models (SISA: mean over shards)."""
        ids = [str(i) for i in ids]
        return np.mean([np.asarray(t.predict(ids)) for t in trainers.values()], axis=0)

    def training_ids(self, pids) -> list[str]:
        """Those of ``pids`` that were training rows before their erasure."""
        known = set(self.original_aligned)
        pids = [str(p) for p in pids if str(p) in known]
        if not pids:
            return []
        test = split_test(
            np.asarray(pids, dtype=object), self.config.seed, self.config.test_fraction
        )
        return [p for p, t in zip(pids, test) if not t]

    def split_ids(self) -> dict[str, list[str]]:
        """Training (per the current data) and never-seen test ids over all models."""
        ids = np.asarray(self.aligned, dtype=object)
        test = split_test(ids, self.config.seed, self.config.test_fraction)
        return {"train": list(ids[~test]), "test": list(ids[test])}
