"""The round-based split trainer and its checkpoint contract (:mod:`vfl.core.rounds`).

One round is one mini-batch step. In round ``r`` every party takes the rows that
:class:`~vfl.core.keyed.BatchSchedule` assigns to ``r`` (a pure function of the public seed,
``r`` and the aligned ids) and the protocol runs:

1. coordinator -> passive ``train.forward``; passive -> active ``train.embedding``;
2. coordinator -> active ``train.step``; active -> passive ``train.cut_gradient`` and
   active -> coordinator ``train.round_done``; passive -> coordinator ``train.ack``.

Checkpoint contract. After round ``r`` completes, ``on_round_end(record)`` is called with
a :class:`RoundRecord` holding ``r``, every party's :class:`~vfl.vertical.parties.PartyState`
after ``r`` (fresh copies, safe to keep), and per party the tuple of ids whose rows round
``r`` used. The state after ``r`` depends only on the seed, the state after ``r - 1`` and
those rows, so ``fit(resume_from=record)`` continues at ``r + 1`` and ends bitwise equal to
an uninterrupted run. States are collected by party-local calls; in a deployment each party
runs the callback on its own side.
"""

from __future__ import annotations

import time

import numpy as np

from vfl.core.errors import ConfigError, ProtocolError
from vfl.core.keyed import SlicePlan
from vfl.core.progress import progress_bar
from vfl.core.rounds import (
    CheckpointCallback,
    RoundRecord,
    SetupOnce,
    TrainHistory,
    check_record,
    prepare_fit,
)
from vfl.vertical.config import TrainConfig
from vfl.vertical.federation import Federation
from vfl.vertical.source_layer import plaintext_view

#: Message kinds whose handlers answer only the coordinator (storing an embedding at the
#: active party, applying an update at a passive). A wave of only these lets the next phase
#: ride along (:meth:`~vfl.core.coordinator.Coordinator.pipeline`): on a networked engine a
#: round's backward step and the next round's forward request reach a passive in one bundle.
FINAL_KINDS = frozenset(
    {
        "train.embedding",
        "train.enc_embedding",
        "train.cut_gradient",
        "train.enc_update",
        "train.masked_gradient_plain",
        "predict.embedding",
        "predict.enc_embedding",
    }
)

#: Fewer aligned rows than this cannot give a model and a held-out metric worth reporting.
MIN_ALIGNED_ROWS = 10


class SplitTrainer(SetupOnce):
    """Drives split training through the coordinator; never touches a party's data."""

    def __init__(
        self, federation: Federation, config: TrainConfig, *, slices: SlicePlan | None = None
    ):
        self.federation = federation
        self.config = config
        self.coordinator = federation.coordinator
        self._setup_done = False
        self.n_train = 0
        # Optional: training rows added in slices / arriving over time (SISA, arrival waves).
        self.slices = slices
        self._sliced_rounds: int | None = None
        self.phase_starts: list[int] = [0]

    @classmethod
    def from_tables(
        cls,
        tables,
        active: str,
        config: TrainConfig,
        *,
        policy=None,
        slices: SlicePlan | None = None,
        progress: bool = False,
    ) -> SplitTrainer:
        """The vertical counterpart of ``FederatedTrainer(tables, config)``: one party per
        table (``active`` holds the labels), aligned by PSI, and a trainer over them.
        ``policy`` is every party's own :class:`~vfl.vertical.config.SecurityPolicy`."""
        federation = Federation.from_tables(tables, active, policy=policy)
        federation.align(progress=progress)
        return cls(federation, config, slices=slices)

    def setup_result(self) -> tuple:
        """What setup agreed (split sizes, slice schedule): lets a trainer over the same,
        already set-up federation skip setup (:meth:`adopt_setup`)."""
        return (self.n_train, self.n_test, self._sliced_rounds, list(self.phase_starts))

    def adopt_setup(self, result: tuple) -> None:
        """Take a :meth:`setup_result` of this federation's parties as this trainer's own."""
        self.n_train, self.n_test, self._sliced_rounds, starts = result
        self.phase_starts = list(starts)
        self._setup_done = True

    def forget_setup(self) -> None:
        """Make the next :meth:`ensure_setup` run setup again."""
        self._setup_done = False

    def setup(self) -> None:
        fed, c = self.federation, self.coordinator
        self.config.check_parties(fed.active, fed.passives)
        if not self.config.is_portable:
            # Python objects (module factories, Optax transformations) cannot cross the
            # wire: in one process each party is given the config object itself, as its
            # operator would configure it (party-local); the message carries the JSON,
            # which names them, and each party checks the two agree.
            for party in fed.parties.values():
                party.local_config = self.config
        base = {"config": self.config.to_json(), "active": fed.active, "passives": fed.passives}
        if self.slices is not None:
            base["slices"] = self.slices.to_json()
        # The active party answers first: under the paillier protocol its reply carries the
        # public key, which the coordinator relays to the passives (public).
        (ready,) = c.exchange([c.request(fed.active, "train.setup", base)])
        extra = {"public_key": ready.payload["public_key"]} if "public_key" in ready.payload else {}
        replies = [ready] + c.exchange(
            [c.request(name, "train.setup", base | extra) for name in fed.passives]
        )
        counts = {(m.payload["n_train"], m.payload["n_test"]) for m in replies}
        if len(counts) != 1:
            raise ProtocolError(f"parties disagree on the train/test split sizes: {counts}")
        self.n_train, self.n_test = counts.pop()
        if self.slices is not None:
            plans = {(m.payload["n_rounds"], tuple(m.payload["phase_starts"])) for m in replies}
            if len(plans) != 1:
                raise ProtocolError(f"parties disagree on the slice schedule: {plans}")
            self._sliced_rounds, starts = plans.pop()
            self.phase_starts = list(starts)
        if self.n_train == 0:
            raise ProtocolError("no training rows after the split; lower test_fraction")
        aligned = self.n_train + self.n_test
        if aligned < MIN_ALIGNED_ROWS:
            raise ConfigError(
                f"only {aligned} aligned rows: too few to train and evaluate a model (at least "
                f"{MIN_ALIGNED_ROWS}); check the identifier columns or align more patients"
            )
        if self.config.test_fraction > 0 and self.n_test == 0:
            # Metrics on zero rows are NaN: refuse instead of reporting them.
            raise ConfigError(
                f"only {self.n_train + self.n_test} aligned rows and none held out for testing "
                f"at test_fraction={self.config.test_fraction}; align more patients, or set "
                "test_fraction=0 and evaluate on the training split"
            )
        layouts = {m.sender: m.payload["layout"] for m in replies if "layout" in m.payload}
        if layouts:
            # Public control: what the key holder will decrypt from each passive, fixed
            # once at setup (it refuses anything else later).
            c.exchange([c.request(fed.active, "train.layout", {"passives": layouts})])
        self._setup_done = True

    @property
    def n_rounds(self) -> int:
        if self._sliced_rounds is not None:
            return self._sliced_rounds
        spe = max(1, -(-self.n_train // self.config.batch_size))
        return self.config.epochs * spe

    @property
    def steps_per_epoch(self) -> int:
        return max(1, -(-self.n_train // self.config.batch_size))

    def round_phases(self, r: int) -> list[list]:
        """Round ``r``'s two phases: the passives' forward requests, then the active party's
        step (which answers the passives with their update and the coordinator with the
        loss)."""
        fed, c = self.federation, self.coordinator
        return [
            [c.request(p, "train.forward", round=r) for p in fed.passives],
            [c.request(fed.active, "train.step", round=r)],
        ]

    def run_rounds(self, rounds, on_done=None) -> dict[int, float]:
        """Run ``rounds`` (consecutive) as one pipeline; per round its loss. ``on_done(r,
        loss)`` is called as each round completes."""
        fed = self.federation
        rounds = list(rounds)
        phases = [phase for r in rounds for phase in self.round_phases(r)]
        losses: dict[int, float] = {}
        acks: dict[int, set] = {r: set() for r in rounds}

        def seen(m) -> None:
            if m.kind == "train.round_done" and m.round in acks:
                if m.round in losses:
                    raise ProtocolError(f"round {m.round} was reported done twice")
                losses[m.round] = float(m.payload["loss"])
            elif m.kind == "train.ack" and m.round in acks:
                acks[m.round].add(m.sender)
            else:
                return
            if m.round in losses and acks[m.round] == set(fed.passives) and on_done:
                on_done(m.round, losses[m.round])

        self.coordinator.pipeline(phases, final_kinds=FINAL_KINDS, on_back=seen)
        for r in rounds:
            if r not in losses or acks[r] != set(fed.passives):
                raise ProtocolError(f"round {r} did not complete at every party")
        return losses

    def run_round(self, r: int) -> float:
        return self.run_rounds([r])[r]

    def snapshot(self, r: int, loss: float) -> RoundRecord:
        fed = self.federation
        return RoundRecord(
            round=r,
            epoch=r // self.steps_per_epoch,
            states={n: fed.parties[n].snapshot() for n in fed.names},
            ids_used={n: fed.parties[n].used_ids(r) for n in fed.names},
            loss=loss,
            config_digest=self.config.digest(),
        )

    def setup_ids(self) -> dict[str, tuple[str, ...]]:
        """Per party, the ids whose rows influenced setup (each party's scaler fit);
        party-local calls, like :meth:`snapshot`."""
        fed = self.federation
        return {n: fed.parties[n].setup_ids() for n in fed.names}

    def restore(self, record: RoundRecord) -> None:
        check_record(record, self.config.digest(), self.federation.names)
        for name in self.federation.names:
            self.federation.parties[name].restore(record.states[name])

    def fit(
        self,
        *,
        on_round_end: CheckpointCallback | None = None,
        resume_from: RoundRecord | None = None,
        stop_after: int | None = None,
        eval_every_epoch: bool = False,
        progress: bool = True,
        description: str = "training",
    ) -> TrainHistory:
        """Train for ``config.epochs`` epochs (or until round ``stop_after``, inclusive)."""
        start = prepare_fit(self, resume_from)
        history = TrainHistory()
        t0 = time.perf_counter()
        last = self.n_rounds - 1 if stop_after is None else min(stop_after, self.n_rounds - 1)
        per_round = on_round_end is not None or eval_every_epoch
        with progress_bar(description, total=self.n_rounds, enabled=progress) as bar:
            bar.advance(start)
            if not per_round:
                # Nothing is observed between rounds: the whole run is one pipeline, so a
                # networked engine sends one bundle per party per round.
                for r, loss in sorted(
                    self.run_rounds(range(start, last + 1), lambda r, _: bar.advance(1)).items()
                ):
                    history.record({"round": r, "loss": loss})
            for r in range(start, last + 1) if per_round else ():
                loss = self.run_round(r)
                history.record({"round": r, "loss": loss})
                if on_round_end is not None:
                    on_round_end(self.snapshot(r, loss))
                if eval_every_epoch and (r + 1) % self.steps_per_epoch == 0:
                    metrics = self.evaluate("test")["metrics"]
                    epoch_loss = float(np.mean(history.loss[-self.steps_per_epoch :]))
                    history.epoch_metrics.append(
                        {
                            "epoch": (r + 1) // self.steps_per_epoch,
                            "round": r,
                            "loss": epoch_loss,
                            **metrics,
                        }
                    )
                bar.advance(1)
        history.rounds = last + 1 - start
        history.seconds = time.perf_counter() - t0
        return history

    def evaluate(self, split: str = "test", *, with_scores: bool = False) -> dict:
        if split not in ("test", "train"):
            raise ConfigError(f"split must be 'test' or 'train', got {split!r}")
        if self._setup_done and (self.n_test if split == "test" else self.n_train) == 0:
            raise ConfigError(
                f"the {split} split has no rows (test_fraction={self.config.test_fraction}); "
                "evaluate another split"
            )
        fed, c = self.federation, self.coordinator
        (reply,) = c.pipeline(
            [
                [c.request(p, "predict.forward", {"split": split}) for p in fed.passives],
                [c.request(fed.active, "eval.run", {"split": split, "with_scores": with_scores})],
            ],
            final_kinds=FINAL_KINDS,
        ).back
        out = dict(reply.payload)
        if with_scores:
            out["scores"] = np.asarray(out["scores"])
            out["labels"] = np.asarray(out["labels"])
        return out

    def parameters(self, *, decrypt: bool = False) -> dict[str, dict]:
        """Per party, its trained parameters as nested dicts of numpy arrays (party-local
        reads, like :meth:`snapshot`): the active party's ``{"bottom": ..., "top": ...}``,
        a passive's bottom (``{"linear": {"kernel": W}}`` for a linear source layer).

        Under ``paillier`` no party holds a passive's source layer in plaintext: the
        passive holds a random share plus ciphertexts under the active party's key
        (``{"source": {...}}``, see :mod:`vfl.vertical.source_layer`), and the active party
        holds the key. ``decrypt=True`` (tests and auditors only, in a simulation: it
        combines the key holder's state with the passives') returns those layers decrypted
        as ``{"linear": {"kernel": W}}``, like a plain passive's, through
        :func:`~vfl.vertical.source_layer.plaintext_view`.
        """
        fed = self.federation
        out = {n: fed.parties[n].parameters() for n in fed.names}
        held = [n for n in fed.passives if getattr(fed.parties[n], "source", None) is not None]
        if decrypt and held:
            states = {n: {"params": fed.parties[n].snapshot().params} for n in fed.names}
            views = plaintext_view(states)
            for name in held:
                view = views[name]["params"]
                if "W" in view:  # primal: W = U + V
                    out[name] = {"linear": {"kernel": view["W"]}}
                elif "P" in view:  # dual: W = W0 + X^T P on the party's training rows
                    x = np.asarray(fed.parties[name].x_train, dtype=np.float64)
                    out[name] = {"linear": {"kernel": view["W0"] + x.T @ view["P"]}}
        return out

    def predict(self, ids) -> np.ndarray:
        """Scores for ``ids`` (rows every party holds); only embeddings cross."""
        fed, c = self.federation, self.coordinator
        ids = [str(i) for i in ids]
        (reply,) = c.pipeline(
            [
                [c.request(p, "predict.forward", {"ids": ids}) for p in fed.passives],
                [c.request(fed.active, "predict.run", {"ids": ids})],
            ],
            final_kinds=FINAL_KINDS,
        ).back
        return np.asarray(reply.payload["scores"])
