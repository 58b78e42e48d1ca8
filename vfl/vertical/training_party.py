"""What the active and the passive parties share: alignment (PSI), the keyed train/test
split, scaling, the batch schedule, the checkpoint methods and the sender checks."""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

from vfl.core.errors import (
    CheckpointError,
    ConfigError,
    PayloadShapeError,
    ProtocolError,
    UnexpectedSenderError,
)
from vfl.core.keyed import BatchSchedule, SlicedSchedule, SlicePlan, ids_digest, split_test
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.optim import make_optimizer
from vfl.core.party import handles
from vfl.core.rounds import ERASE, ERASED, PartyState, erase_ids, erasure_ack
from vfl.core.table import PartyTable, Standardizer
from vfl.psi.participant import PSIParticipant
from vfl.vertical.config import SecurityPolicy, TrainConfig
from vfl.vertical.masked_gradient import (
    MIN_ENCRYPTED_BATCH,
)
from vfl.vertical.source_layer import (
    quantize_features,
)

MASKED = "paillier-masked-gradient"


def pad_rows(x: np.ndarray, minimum: int = 64) -> np.ndarray:
    """Zero-pad rows up to a power of two, so scoring any number of rows compiles a handful
    of programs instead of one per row count (rows are independent; callers slice back)."""
    n = len(x)
    size = max(minimum, 1 << max(n - 1, 0).bit_length())
    out = np.zeros((size, *x.shape[1:]), dtype=x.dtype)
    out[:n] = x
    return out


def party_key(seed: int, name: str):
    """The party's own PRNG key, derived from the public seed and its name."""
    salt = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    return jax.random.fold_in(jax.random.key(seed), salt)


class TrainingParty(PSIParticipant):
    """What active and passive parties share: alignment, split, scaling, schedule."""

    #: Party-local: a training config holding Python objects (module factories, Optax
    #: transformations), which JSON cannot carry. A ``train.setup`` whose config serializes
    #: to exactly this one's JSON uses this object; set by the party's operator (in one
    #: process, :meth:`SplitTrainer.setup <vfl.vertical.trainer.SplitTrainer.setup>` does).
    local_config: TrainConfig | None = None

    def __init__(self, name: str, table: PartyTable, *, policy: SecurityPolicy | None = None):
        super().__init__(name, ids=table.ids)
        self.table = table
        # The party's own security settings: a setup message is checked against them.
        self.policy = policy if policy is not None else SecurityPolicy()
        self.aligned_ids: np.ndarray | None = None
        self.config: TrainConfig | None = None
        self._scoring: PartyTable | None = None

    @staticmethod
    def _field(msg: Message, name: str, kind: type = bytes):
        """A payload field of the expected type, or a refusal naming it (hostile peers)."""
        value = msg.payload.get(name)
        if not isinstance(value, kind):
            raise PayloadShapeError(
                f"{msg.kind!r} from {msg.sender!r} has no valid {name!r} field (expected "
                f"{kind.__name__}, got {type(value).__name__}); the message is rejected"
            )
        return value

    def _expect(self, msg: Message, *senders: str) -> None:
        """Threat model: only the listed senders may send this kind of message."""
        if msg.sender not in senders:
            raise UnexpectedSenderError(
                f"{self.name!r} refuses {msg.kind!r} from {msg.sender!r}: only "
                f"{sorted(senders)} may send it in this protocol"
            )

    # -- erasure ---------------------------------------------------------------------------
    @handles(ERASE)
    def on_erase(self, msg: Message) -> list[Message]:
        """The coordinator relays an erasure request: delete this party's rows of the ids
        named, from its table, its aligned ids and its scoring table, and say how many
        (``data.erased``). A party already set up keeps its training view until it is set up
        again."""
        if msg.sender != COORDINATOR:
            raise UnexpectedSenderError(
                f"{self.name!r} refuses {msg.kind!r} from {msg.sender!r}: only the "
                f"coordinator ({COORDINATOR!r}) may ask a party to delete rows"
            )
        gone = set(erase_ids(msg))
        before = self.table.n_rows
        self.table = self.table.without(gone)
        if self.aligned_ids is not None:
            keep = [str(i) not in gone for i in self.aligned_ids]
            if not all(keep):
                self.aligned_ids = self.aligned_ids[np.asarray(keep, dtype=bool)]
        if self._scoring is not None:
            self._scoring = self._scoring.without(gone)
        ack = erasure_ack(before - self.table.n_rows, self.table.ids)
        return [self.send(COORDINATOR, ERASED, Label.PUBLIC, ack)]

    def psi_ids(self) -> np.ndarray:
        """The ids this party offers to PSI: those of its table (without erased rows)."""
        return np.asarray(self.table.ids, dtype=object).copy()

    # -- alignment -------------------------------------------------------------------------
    def on_aligned(self, aligned_ids: np.ndarray) -> None:
        self.aligned_ids = np.asarray(aligned_ids, dtype=object)

    def set_alignment(self, aligned_ids) -> None:
        """Local shortcut for a one-party run (baselines), where there is nothing to align."""
        self.on_aligned(np.asarray(aligned_ids, dtype=object))

    # -- setup -----------------------------------------------------------------------------
    def _received_config(self, obj: dict) -> TrainConfig:
        """The config of a ``train.setup``: from its JSON, or this party's own
        :attr:`local_config` when that one holds Python objects and describes the same
        config (same JSON)."""
        local = self.local_config
        if local is not None and not local.is_portable and json.dumps(
            local.to_json(), sort_keys=True
        ) == json.dumps(obj, sort_keys=True):
            return local
        return TrainConfig.from_json(obj)

    def _setup_common(self, config: TrainConfig, slices: dict | None = None) -> None:
        if self.aligned_ids is None:
            raise ProtocolError(f"{self.name!r} cannot set up training before alignment")
        self.policy.check(config, self.name)
        self.config = config
        aligned = self.table.rows(self.aligned_ids)
        test = split_test(aligned.ids, config.seed, config.test_fraction)
        self.train_rows = aligned.rows(aligned.ids[~test])
        self.test_rows = aligned.rows(aligned.ids[test])
        self.slice_plan = None if slices is None else SlicePlan.from_json(slices)
        if self.slice_plan is None:
            self._setup_rows = self.train_rows.ids
            self.scaler = Standardizer.fit(self.train_rows.features)
            self.schedule = BatchSchedule(
                self.train_rows.ids, config.seed, config.batch_size, config.epochs
            )
        else:
            # Data added in slices / arriving over time: the scaler sees only the rows
            # present at setup (slice 0); later slices join the schedule phase by phase.
            plan = self.slice_plan
            slice_idx = plan.slice_of(self.train_rows.ids, config.seed)
            first = slice_idx == 0
            if not first.any():
                raise ConfigError(
                    f"{self.name!r} has no training rows in slice 0 (the rows present at "
                    "setup); use fewer slices or admit some rows at setup"
                )
            self._setup_rows = self.train_rows.ids[first]
            self.scaler = Standardizer.fit(self.train_rows.features[first])
            self.schedule = SlicedSchedule(
                self.train_rows.ids,
                slice_idx,
                plan.slices,
                config.seed,
                config.batch_size,
                plan.epochs_per_slice or config.epochs,
            )
        # Every protocol trains on the same fixed-point grid (clipped, 2^-20), so plain and
        # encrypted runs see identical inputs.
        self.x_train = quantize_features(self.scaler.transform(self.train_rows.features))
        if config.protocol == MASKED:
            n, b = len(self.train_rows.ids), config.batch_size
            if (
                n < MIN_ENCRYPTED_BATCH
                or 0 < n % b < MIN_ENCRYPTED_BATCH
                or (b < MIN_ENCRYPTED_BATCH)
            ):
                raise ConfigError(
                    f"the {MASKED} protocol needs every batch to have at least "
                    f"{MIN_ENCRYPTED_BATCH} rows (a passive party learns each batch's aggregate "
                    f"gradient); {n} training rows in batches of {b} leave a last batch of "
                    f"{n % b}. Choose another batch_size."
                )
        self.key = party_key(config.seed, self.name)
        self.tx = make_optimizer(self._optimizer_name(config), config.learning_rate,
                                 config.weight_decay, decay_biases=config.decay_biases)
        self.completed_round = -1
        self.reset_rounds(None)

    def _optimizer_name(self, config: TrainConfig) -> str:
        return config.optimizer

    def setup_ids(self) -> tuple[str, ...]:
        """Party-local: the ids whose rows influenced setup (the scaler's fit)."""
        return tuple(str(i) for i in self._setup_rows)

    def _ready_payload(self) -> dict:
        out = {"n_train": len(self.train_rows.ids), "n_test": len(self.test_rows.ids)}
        if self.slice_plan is not None:
            out["n_rounds"] = self.schedule.n_rounds
            out["phase_starts"] = list(self.schedule.phase_starts)
        return out

    def _batch(self, round: int):
        """Padded feature batch, row mask, real row count and batch digest for ``round``."""
        pos = self.schedule.positions(round)
        b = self.config.batch_size
        x = np.zeros((b, self.x_train.shape[1]), dtype=np.float32)
        x[: len(pos)] = self.x_train[pos]
        mask = np.zeros((b,), dtype=np.float32)
        mask[: len(pos)] = 1.0
        return pos, x, mask, ids_digest(self.train_rows.ids[pos])

    def _scoring_features(self, payload) -> tuple[np.ndarray, np.ndarray]:
        split = payload.get("split")
        if split == "test":
            rows = self.test_rows
        elif split == "train":
            rows = self.train_rows
        else:
            source = self._scoring if self._scoring is not None else self.table
            rows = source.rows(list(payload["ids"]))
        return rows.ids, quantize_features(self.scaler.transform(rows.features))

    def embedding_spread(self) -> float:
        """Local diagnostic: standard deviation of this party's embedding on its training
        rows, i.e. how much its bottom model moves the top model's input."""
        bottom = self.params[0] if isinstance(self.params, tuple) else self.params
        return float(np.std(np.asarray(self.bottom.apply(bottom, self.x_train))))

    def load_scoring_table(self, table: PartyTable) -> None:
        """Local: new rows to score later. Their columns must equal the training columns."""
        table.check_schema(self.table.columns)
        self._scoring = table

    # -- checkpoint (party-local) ----------------------------------------------------------
    def used_ids(self, round: int) -> tuple[str, ...]:
        return tuple(self.schedule.round_ids(round))

    def snapshot(self) -> PartyState:
        """This party's state after its last completed round (a checkpoint's content)."""
        return PartyState(
            self.name,
            self.completed_round,
            self._export_params(),
            self._opt_leaves(self.opt_state),
            np.asarray(jax.random.key_data(self.key)),
            self.config.digest(),
        )

    def restore(self, state: PartyState) -> None:
        """Continue from ``state``: parameters, optimizer state, replay history."""
        self._check_restorable(state)
        params = self._load_params(state.params)
        opt_state = self._opt_from_leaves(self.opt_state, state.opt_state)
        self.params, self.opt_state = params, opt_state
        self.completed_round = state.round
        self._clear_round_state()
        self.reset_rounds(state.round)

    def _check_restorable(self, state: PartyState) -> None:
        if state.party != self.name:
            raise CheckpointError(f"checkpoint of {state.party!r} cannot restore {self.name!r}")
        if self.config is None or state.config_digest != self.config.digest():
            raise CheckpointError(
                f"checkpoint for {self.name!r} was taken under another training config; "
                "set up training with the same config before restoring"
            )

    def _opt_leaves(self, opt_state) -> list[np.ndarray]:
        return [np.asarray(x) for x in jax.tree.leaves(opt_state)]

    def _opt_from_leaves(self, template, leaves):
        treedef = jax.tree.structure(template)
        if treedef.num_leaves != len(leaves):
            raise CheckpointError("optimizer state in the checkpoint has the wrong structure")
        return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in leaves])


