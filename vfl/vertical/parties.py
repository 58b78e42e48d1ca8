"""The two roles of vertical training: the active party (labels, top model) and passive
parties (features only).

Each party keeps its rows, scaler, parameters and optimizer state to itself. What it tells
anyone else leaves through a returned :class:`~vfl.core.messages.Message`, labelled:

* passive -> active ``train.embedding``: the cut-layer embedding of the batch
  (``plaintext-by-design``, the documented leak of every split model);
* active -> passive ``train.cut_gradient`` in the ``plain`` protocol: dL/dh for the batch
  (``plaintext-by-design`` and label-dependent: the norm/direction of these gradients reveal
  labels, Li et al. 2021);
* under ``paillier`` (the default, :mod:`vfl.vertical.source_layer`): passive -> active
  ``train.enc_embedding`` (packed ciphertexts the active decrypts: the embedding, as in every
  split model) and active -> passive ``train.enc_update`` (``[[dP]]``, ciphertext under the
  active party's key). A passive receives nothing else but public control;
* under ``paillier-masked-gradient`` (opt-in, :mod:`vfl.vertical.masked_gradient`):
  ``train.enc_cut_gradient`` / ``train.masked_gradient`` / ``train.masked_gradient_plain``;
  the passive learns its own batch-aggregate gradient (refused where that is invertible);
* everything to and from the coordinator: public control, counts and the losses/metrics the
  active party chooses to report (the coordinator runs on the active party's side).

Threat model (README "Threat model"): semi-honest parties by default. Every handler checks
who sent the message (:meth:`TrainingParty._expect`): setup and every request come from the
coordinator only, gradients/updates from the active party only, embeddings from this run's
passives only; security settings are checked against the party's own
:class:`~vfl.vertical.config.SecurityPolicy`, never taken from the wire.

The checkpoint methods (:meth:`snapshot`, :meth:`restore`) are party-local: in a
deployment each party writes its own checkpoint to its own disk.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from vfl.core.errors import (
    CheckpointError,
    ConfigError,
    InvertibleConfigurationError,
    LabelAtPassivePartyError,
    PayloadShapeError,
    ProtocolError,
)
from vfl.core.keyed import BatchSchedule, SlicedSchedule, SlicePlan, ids_digest, split_test
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.optim import make_optimizer
from vfl.core.party import handles
from vfl.core.rounds import PartyState
from vfl.core.table import PartyTable, Standardizer
from vfl.crypto import EncryptedArray, PublicKey
from vfl.psi.protocol import PSIParticipant
from vfl.vertical.config import SecurityPolicy, TrainConfig
from vfl.vertical.jitted import bottom_functions, top_functions
from vfl.vertical.masked_gradient import (
    MIN_ENCRYPTED_BATCH,
    ActiveKeyring,
    PassiveSealer,
)
from vfl.vertical.models import ModelHandle, make_bottom, make_top
from vfl.vertical.source_layer import (
    DualCoefficients,
    EncryptedSourceLayer,
    choose_form,
    decrypt_embedding,
    encrypt_update,
    feature_ints,
    private_key_from_tree,
    private_key_to_tree,
    quantize_features,
    update_rows_everywhere,
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
            raise ProtocolError(
                f"{self.name!r} refuses {msg.kind!r} from {msg.sender!r}: only "
                f"{sorted(senders)} may send it in this protocol"
            )

    # -- alignment -------------------------------------------------------------------------
    def on_aligned(self, aligned_ids: np.ndarray) -> None:
        self.aligned_ids = np.asarray(aligned_ids, dtype=object)

    def set_alignment(self, aligned_ids) -> None:
        """Local shortcut for a one-party run (baselines), where there is nothing to align."""
        self.on_aligned(np.asarray(aligned_ids, dtype=object))

    # -- setup -----------------------------------------------------------------------------
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
                                 config.weight_decay)
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


class PassiveParty(TrainingParty):
    """A feature holder without labels (the lab, the pharmacy)."""

    def __init__(self, name: str, table: PartyTable, *, policy: SecurityPolicy | None = None):
        if table.has_labels:
            raise LabelAtPassivePartyError(
                f"passive party {name!r} was given the label column {table.label_name!r}. "
                "Only the active party may hold labels: drop the column from this table "
                "(table.without_labels()) or make this party the active one."
            )
        super().__init__(name, table, policy=policy)

    def _optimizer_name(self, config: TrainConfig) -> str:
        return config.passive_optimizer_name

    def _width(self) -> int:
        return self.config.model.embedding_width(self.config.task.n_outputs)

    @handles("train.setup")
    def on_setup(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        config = TrainConfig.from_json(msg.payload["config"])
        self._setup_common(config, msg.payload.get("slices"))
        self.active = msg.payload["active"]
        module = make_bottom(config.model, self.table.n_features, config.task.n_outputs, self.key)
        self.bottom = ModelHandle(module)
        self._pending: tuple[int, np.ndarray, np.ndarray, int] | None = None
        self._sealer = None
        self.source: EncryptedSourceLayer | None = None
        ready = self._ready_payload()
        if config.protocol == "paillier":
            # The source layer is held jointly: a plaintext share here, the rest as
            # ciphertexts under the active party's key. No optimizer state lives here: the
            # active party runs it on dual coefficients (vfl.vertical.source_layer).
            public_key = self._public_key(msg.payload.get("public_key"), config)
            form = choose_form(config.source_form, len(self.train_rows.ids), self.x_train.shape[1])
            self.source = EncryptedSourceLayer(
                public_key, feature_ints(self.x_train), self._width(), form
            )
            self.source.initialize(np.asarray(self.bottom.params["linear"]["kernel"][...]))
            self.params, self.opt_state = None, ()
            ready["layout"] = {"form": form}
            return [self.send(COORDINATOR, "train.ready", Label.PUBLIC, ready)]
        self.params = self.bottom.params
        self.opt_state = self.tx.init(self.params)
        c = config
        fns = bottom_functions(
            self.bottom.graphdef, c.passive_optimizer_name, c.learning_rate, c.weight_decay
        )
        self._forward, self._backward = fns.forward, fns.backward
        if config.protocol == MASKED:
            n_params = sum(int(np.size(x)) for x in jax.tree.leaves(self.params))
            invertible = n_params >= config.batch_size * self._width()
            if invertible and not self.policy.allow_invertible_masked_gradient:
                raise InvertibleConfigurationError(
                    f"under {MASKED} {self.name!r} would learn its batch-aggregate gradient "
                    f"J^T delta with {n_params} parameters >= batch rows x width = "
                    f"{config.batch_size} x {self._width()}: least squares returns every "
                    "per-sample gradient (and so the labels). Use protocol='paillier', "
                    "where no passive sees a gradient"
                )
            # The plaintext Jacobian of the bottom model on the party's own rows; the
            # encrypted product J^T [[delta]] is done by the Paillier engine.
            self._jacobian, self._step_with = fns.jacobian, fns.step_with
            self._sealer = PassiveSealer(self._public_key(msg.payload.get("public_key"), config))
            self._pending_mask = None
            self.learned_aggregates: dict[int, np.ndarray] = {}
            self._round_inputs: dict[int, tuple] = {}
            ready["layout"] = {"params": n_params}
        return [self.send(COORDINATOR, "train.ready", Label.PUBLIC, ready)]

    def _public_key(self, data, config: TrainConfig) -> PublicKey:
        """The active party's key, accepted only at the length this party's own policy
        allows (never because the wire config says insecure_test_key)."""
        if not isinstance(data, bytes | bytearray):
            raise ProtocolError(f"{self.name!r} got no public key in train.setup")
        key = PublicKey.from_bytes(
            bytes(data), insecure_test_key=self.policy.allow_insecure_test_key
        )
        self.policy.check_key_bits(key.key_bits, self.name)
        return key

    @handles("train.forward")
    def on_forward(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        r = msg.round
        pos, x, mask, digest = self._batch(r)
        self._pending = (r, x, mask, len(pos))
        if self.source is not None:
            packed = self.source.embed(feature_ints(x[: len(pos)]))
            return [
                self.send(
                    self.active,
                    "train.enc_embedding",
                    Label.PLAINTEXT_BY_DESIGN,  # the active party decrypts it: the embedding
                    {"ct": packed.to_bytes(), "batch_digest": digest},
                    round=r,
                    label_dependent=True,  # W was trained on labels; the active holds them
                )
            ]
        h = np.asarray(self._forward(self.params, x))[: len(pos)]
        return [
            self.send(
                self.active,
                "train.embedding",
                Label.PLAINTEXT_BY_DESIGN,
                {"h": h, "batch_digest": digest},
                round=r,
            )
        ]

    def _pending_for(self, msg: Message):
        if self._pending is None or self._pending[0] != msg.round:
            raise ProtocolError(
                f"{self.name!r} got {msg.kind!r} for round {msg.round} without a forward pass"
            )
        return self._pending

    def _finish_round(self, r: int) -> list[Message]:
        self._pending = None
        self.completed_round = r
        return [self.send(COORDINATOR, "train.ack", Label.PUBLIC, {}, round=r)]

    @handles("train.enc_update")
    def on_enc_update(self, msg: Message) -> list[Message]:
        """``[[dP]]`` in; the source layer is updated under encryption; nothing decrypted."""
        self._expect(msg, self.active)
        if self.source is None:
            raise ProtocolError(f"{self.name!r} is not running the paillier protocol")
        r, _, _, n_real = self._pending_for(msg)
        c = self.config
        if update_rows_everywhere(c.passive_optimizer_name, c.weight_decay):
            positions = np.arange(len(self.train_rows.ids))
        else:
            positions = self.schedule.positions(r)
        enc = EncryptedArray.from_bytes(self._field(msg, "ct"), self.source.public_key)
        self.source.apply_update(positions, enc)
        return self._finish_round(r)

    @handles("train.cut_gradient")
    def on_cut_gradient(self, msg: Message) -> list[Message]:
        self._expect(msg, self.active)
        if self.config.protocol != "plain":
            raise ProtocolError(
                f"{self.name!r} runs {self.config.protocol!r}: plaintext cut-layer gradients "
                "are refused"
            )
        r, x, mask, n_real = self._pending_for(msg)
        g = np.asarray(msg.payload["g"], dtype=np.float32)
        width = self._width()
        if g.shape != (n_real, width):
            raise PayloadShapeError(
                f"{self.name!r} expected a cut-layer gradient of shape {(n_real, width)} from "
                f"{msg.sender!r} in round {r}, got {g.shape}; the round is rejected and no "
                "parameter changed"
            )
        if not np.isfinite(g).all():
            raise PayloadShapeError(f"gradient from {msg.sender!r} in round {r} is not finite")
        padded = np.zeros((len(mask), width), dtype=np.float32)
        padded[:n_real] = g
        params, opt_state = self._backward(self.params, self.opt_state, x, padded)
        self._check_finite(params, r)
        self.params, self.opt_state = params, opt_state
        return self._finish_round(r)

    def _check_finite(self, params, r: int) -> None:
        if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params)):
            raise PayloadShapeError(
                f"the update of round {r} would make {self.name!r}'s parameters non-finite; "
                "the round is rejected and no parameter changed (lower the learning rate)"
            )

    @handles("train.enc_cut_gradient")
    def on_enc_cut_gradient(self, msg: Message) -> list[Message]:
        """[[delta]] in; [[J^T delta + R]] out (``paillier-masked-gradient``)."""
        self._expect(msg, self.active)
        if self._sealer is None:
            raise ProtocolError(f"{self.name!r} is not running the {MASKED} protocol")
        r, x, _, n_real = self._pending_for(msg)
        width = self._width()
        enc_delta = self._sealer.parse_delta(self._field(msg, "ct"), n_real, width)
        jac = np.asarray(self._jacobian(self.params, x), dtype=np.float64)
        jac = jac.reshape(len(x), width, -1)[:n_real].reshape(n_real * width, -1)
        packed, pending = self._sealer.masked_gradient(jac.T, enc_delta)
        self._pending_mask = (r, pending)
        # Party-local: what this party knows about its own round (for the leakage audit).
        self._round_inputs[r] = (x, self.params, n_real)
        return [
            self.send(
                self.active,
                "train.masked_gradient",
                Label.MASKED,
                {"ct": packed, "count": pending.count, "terms": n_real * width},
                round=r,
                label_dependent=True,
            )
        ]

    @handles("train.masked_gradient_plain")
    def on_masked_gradient_plain(self, msg: Message) -> list[Message]:
        """g + R in, R removed here: the aggregate batch gradient, then the party's own step."""
        self._expect(msg, self.active)
        r, _, _, _ = self._pending_for(msg)
        if self._sealer is None or self._pending_mask is None or self._pending_mask[0] != r:
            raise ProtocolError(f"{self.name!r} has no mask for round {r}")
        grads = PassiveSealer.unmask(list(msg.payload["values"]), self._pending_mask[1])
        if not np.isfinite(grads).all():
            raise PayloadShapeError(f"unmasked gradient of round {r} is not finite")
        params, opt_state = self._step_with(
            self.params, self.opt_state, jnp.asarray(grads, dtype=jnp.float32)
        )
        self._check_finite(params, r)
        self.params, self.opt_state = params, opt_state
        # Party-local record of the one label-dependent plaintext this party learns (its
        # batch-aggregate gradient), so the leakage audit can attack exactly that.
        self.learned_aggregates[r] = grads
        self._pending_mask = None
        return self._finish_round(r)

    def inversion_observations(self):
        """What this party can attack with, from its own knowledge: per round of
        ``paillier-masked-gradient``, its batch ids, its Jacobian transposed (it computed it)
        and the aggregate gradient it unmasked (``(ids, J^T, g)``)."""
        for r, g in sorted(getattr(self, "learned_aggregates", {}).items()):
            x, params, n_real = self._round_inputs[r]
            jac = np.asarray(self._jacobian(params, x), dtype=np.float64)
            jac = jac.reshape(len(x), self._width(), -1)[:n_real].reshape(
                n_real * self._width(), -1
            )
            yield self.schedule.round_ids(r), jac.T, g

    @handles("predict.forward")
    def on_predict(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        if self.source is not None and "ids" in msg.payload and self._scoring is None:
            # The jointly held model scores aligned real rows only: the active party could
            # otherwise ask for rows of its choosing.
            aligned = set(str(i) for i in self.aligned_ids)
            unknown = [i for i in msg.payload["ids"] if str(i) not in aligned]
            if unknown:
                raise ProtocolError(
                    f"{self.name!r} scores only aligned rows under paillier; "
                    f"{len(unknown)} requested ids are not in the intersection"
                )
        ids, x = self._scoring_features(msg.payload)
        if self.source is not None:
            packed = self.source.embed(feature_ints(x))
            return [
                self.send(
                    self.active,
                    "predict.enc_embedding",
                    Label.PLAINTEXT_BY_DESIGN,
                    {"ct": packed.to_bytes(), "ids_digest": ids_digest(ids)},
                    label_dependent=True,
                )
            ]
        h = np.asarray(self._forward(self.params, pad_rows(x)))[: len(x)]
        return [
            self.send(
                self.active,
                "predict.embedding",
                Label.PLAINTEXT_BY_DESIGN,
                {"h": h, "ids_digest": ids_digest(ids)},
            )
        ]

    def embedding_spread(self) -> float:
        if self.source is not None:
            raise ProtocolError(
                f"{self.name!r} holds its source layer encrypted under paillier; its "
                "embeddings are visible only to the active party"
            )
        return super().embedding_spread()

    def _export_params(self) -> dict:
        if self.source is not None:
            return {"source": self.source.export()}
        return self.bottom.export(self.params)

    def _load_params(self, pure: dict):
        if self.source is not None:
            tree = pure["source"]
            key = PublicKey.from_bytes(
                bytes(tree["public_key"]), insecure_test_key=self.policy.allow_insecure_test_key
            )
            self.policy.check_key_bits(key.key_bits, self.name)
            if key != self.source.public_key:
                self.source = EncryptedSourceLayer(
                    key, self.source.x_train, self.source.width, self.source.form
                )
            self.source.load(tree)
            return None
        return self.bottom.load(pure)

    def _clear_round_state(self) -> None:
        self._pending = None
        if self._sealer is not None:
            self._pending_mask = None


class ActiveParty(TrainingParty):
    """The label holder (the hospital): its own bottom model plus the top model."""

    def __init__(self, name: str, table: PartyTable, *, policy: SecurityPolicy | None = None):
        super().__init__(name, table, policy=policy)
        self.record_view = False  # set by an auditor in simulations
        self.embedding_log: dict[str, list] = {}
        if not table.has_labels:
            raise ProtocolError(
                f"active party {name!r} needs the label column; build its table with "
                "label_column=..."
            )

    @handles("train.setup")
    def on_setup(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        config = TrainConfig.from_json(msg.payload["config"])
        self._setup_common(config, msg.payload.get("slices"))
        task = config.task
        self.passives: list[str] = list(msg.payload["passives"])
        self.y_train = task.check_labels(self.train_rows.labels)
        k_bottom, k_top = jax.random.split(self.key)
        self.bottom = ModelHandle(
            make_bottom(config.model, self.table.n_features, task.n_outputs, k_bottom)
        )
        self.top = ModelHandle(
            make_top(config.model, 1 + len(self.passives), task.n_outputs, k_top)
        )
        self.params = (self.bottom.params, self.top.params)
        self.opt_state = self.tx.init(self.params)
        fns = top_functions(
            self.bottom.graphdef,
            self.top.graphdef,
            task,
            config.optimizer,
            config.learning_rate,
            config.weight_decay,
        )
        self._step, self._predict = fns.step, fns.predict
        self._inbox: dict[str, np.ndarray] = {}
        self._inbox_round: int | None = None
        self._predict_inbox: dict[str, tuple] = {}
        ready = self._ready_payload()
        self._keyring = None
        self._duals: dict[str, DualCoefficients] = {}
        self._layouts: dict[str, dict] | None = None
        if config.protocol in ("paillier", MASKED):
            self.policy.check_key_bits(config.key_bits, self.name)
            # A short key needs both the run's config and this party's own policy to say so.
            self._keyring = ActiveKeyring(
                config.key_bits,
                insecure_test_key=config.insecure_test_key
                and self.policy.allow_insecure_test_key,
            )
            self._terms: dict[tuple[int, str], int] = {}
            ready["public_key"] = self._keyring.public_key_bytes()
        if config.protocol == "paillier":
            self._make_duals()
        return [self.send(COORDINATOR, "train.ready", Label.PUBLIC, ready)]

    def _make_duals(self) -> None:
        c = self.config
        tx = make_optimizer(c.passive_optimizer_name, c.learning_rate, c.weight_decay)
        everywhere = update_rows_everywhere(c.passive_optimizer_name, c.weight_decay)
        n = len(self.train_rows.ids)
        self._duals = {
            p: DualCoefficients(n, self._width(), tx, everywhere=everywhere)
            for p in self.passives
        }

    @handles("train.layout")
    def on_layout(self, msg: Message) -> list[Message]:
        """Public control from the coordinator, once, at setup: per passive, what this party
        will decrypt from it (paillier: the storage form, which fixes the embedding's scale
        and slot layout; masked gradient: the gradient's length)."""
        self._expect(msg, COORDINATOR)
        protocol = self.config.protocol if self.config is not None else None
        if protocol not in ("paillier", MASKED):
            raise ProtocolError("a decryption layout is only part of the encrypted protocols")
        if self._layouts is not None:
            raise ProtocolError("the decryption layout was already fixed at setup")
        layouts = {p: dict(v) for p, v in dict(msg.payload["passives"]).items()}
        if set(layouts) != set(self.passives):
            raise ProtocolError(f"layout for {sorted(layouts)} but passives are {self.passives}")
        width = self._width()
        for p, lay in layouts.items():
            if protocol == "paillier" and lay.get("form") not in ("primal", "dual"):
                raise ProtocolError(f"no valid source form for {p!r}: {lay}")
            if protocol == MASKED:
                n = lay.get("params")
                if not isinstance(n, int) or n < 1:
                    raise ProtocolError(f"no valid gradient length for {p!r}: {lay}")
                invertible = n >= self.config.batch_size * width
                if invertible and not self.policy.allow_invertible_masked_gradient:
                    raise InvertibleConfigurationError(
                        f"{p!r} has {n} parameters >= batch rows x width = "
                        f"{self.config.batch_size} x {width}: under {MASKED} it could invert "
                        "its aggregate gradient into per-sample gradients. Use "
                        "protocol='paillier'"
                    )
        self._layouts = layouts
        return []

    def _width(self) -> int:
        return self.config.model.embedding_width(self.config.task.n_outputs)

    def _check_batch(self, msg: Message):
        r = msg.round
        self._expect(msg, *self.passives)
        pos, _, _, digest = self._batch(r)
        if self._field(msg, "batch_digest", str) != digest:
            raise ProtocolError(
                f"{msg.sender!r} used different rows in round {r}; the parties' aligned ids "
                "or seeds disagree. Re-run alignment and setup."
            )
        return pos

    def _store_embedding(self, msg: Message, h: np.ndarray) -> list[Message]:
        r = msg.round
        if self._inbox_round != r:
            self._inbox, self._inbox_round = {}, r
        self._inbox[msg.sender] = h
        return []

    @handles("train.embedding")
    def on_embedding(self, msg: Message) -> list[Message]:
        pos = self._check_batch(msg)
        if self.config.protocol == "paillier":
            raise ProtocolError(
                f"under 'paillier' embeddings arrive encrypted; a plaintext embedding from "
                f"{msg.sender!r} is refused"
            )
        h = np.asarray(msg.payload["h"], dtype=np.float32)
        if h.shape != (len(pos), self._width()):
            raise PayloadShapeError(
                f"embedding from {msg.sender!r} in round {msg.round} has shape {h.shape}, "
                f"expected {(len(pos), self._width())}; the round is rejected"
            )
        return self._store_embedding(msg, h)

    def _decrypt_embedding(self, sender: str, data, rows: int) -> np.ndarray:
        if self._layouts is None:
            raise ProtocolError("the passives' source forms were not fixed at setup")
        return decrypt_embedding(
            self._keyring.private_key, data, rows, self._width(), self._layouts[sender]["form"]
        )

    @handles("train.enc_embedding")
    def on_enc_embedding(self, msg: Message) -> list[Message]:
        pos = self._check_batch(msg)
        if self.config.protocol != "paillier":
            raise ProtocolError(f"{msg.kind!r} is part of the paillier protocol only")
        return self._store_embedding(
            msg, self._decrypt_embedding(msg.sender, self._field(msg, "ct"), len(pos))
        )

    @handles("train.step")
    def on_step(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        r = msg.round
        missing = [p for p in self.passives if self._inbox_round != r or p not in self._inbox]
        if missing:
            raise ProtocolError(f"round {r}: no embedding yet from {missing}")
        pos, x, mask, _ = self._batch(r)
        b = self.config.batch_size
        y = np.zeros((b,), dtype=self.y_train.dtype)
        y[: len(pos)] = self.y_train[pos]
        hs = []
        for p in self.passives:
            h = np.zeros((b, self._width()), dtype=np.float32)
            h[: len(pos)] = self._inbox[p]
            hs.append(h)
        params, opt_state, loss, g_hs = self._step(self.params, self.opt_state, x, y, mask, hs)
        deltas = [np.asarray(g)[: len(pos)] for g in g_hs]
        if self.record_view:
            # Party-local record of what this party saw of each passive (the audit's Gram
            # recovery attack runs on exactly this, plus its own deltas).
            for p, d in zip(self.passives, deltas):
                self.embedding_log.setdefault(p, []).append((r, pos, self._inbox[p], d))
        protocol = self.config.protocol
        if protocol == "plain":
            out = [
                self.send(
                    p,
                    "train.cut_gradient",
                    Label.PLAINTEXT_BY_DESIGN,
                    {"g": d},
                    round=r,
                    label_dependent=True,
                )
                for p, d in zip(self.passives, deltas)
            ]
        elif protocol == "paillier":
            out = self._encrypted_updates(r, pos, deltas)
        else:
            out = self._encrypted_deltas(r, deltas)
        self.params, self.opt_state = params, opt_state
        self._inbox, self._inbox_round = {}, None
        self.completed_round = r
        out.append(
            self.send(
                COORDINATOR,
                "train.round_done",
                Label.PLAINTEXT_BY_DESIGN,
                {"loss": float(loss)},
                round=r,
                label_dependent=True,
            )
        )
        return out

    def _encrypted_updates(self, r: int, pos, deltas: list[np.ndarray]) -> list[Message]:
        """The passives' optimizer step in dual coordinates, sent as ``[[dP]]``."""
        out = []
        for p, d in zip(self.passives, deltas):
            _, diff = self._duals[p].step(pos, d)
            ct = encrypt_update(self._keyring.public_key, diff, self._keyring.randomness)
            out.append(
                self.send(
                    p, "train.enc_update", Label.CIPHERTEXT, {"ct": ct}, round=r,
                    label_dependent=True,
                )
            )
        return out

    def _encrypted_deltas(self, r: int, deltas: list[np.ndarray]) -> list[Message]:
        """[[dL/dh_k]] under the active party's own key, one message per passive. With a
        ``sum`` top every passive gets the same delta, so it is encrypted once."""
        out, cache = [], []
        for p, d in zip(self.passives, deltas):
            ct = next((c for dd, c in cache if np.array_equal(dd, d)), None)
            if ct is None:
                ct = self._keyring.encrypt_delta(d)
                cache.append((d, ct))
            self._terms[(r, p)] = d.size
            out.append(
                self.send(
                    p,
                    "train.enc_cut_gradient",
                    Label.CIPHERTEXT,
                    {"ct": ct},
                    round=r,
                    label_dependent=True,
                )
            )
        return out

    @handles("train.masked_gradient")
    def on_masked_gradient(self, msg: Message) -> list[Message]:
        """Decrypt a passive's masked aggregate; what the active learns is g + R."""
        self._expect(msg, *self.passives)
        terms = self._terms.get((msg.round, msg.sender)) if self._keyring else None
        if terms is None or self.config.protocol != MASKED:
            raise ProtocolError(
                f"unexpected masked gradient from {msg.sender!r} for round {msg.round}"
            )
        if msg.payload.get("terms") != terms:
            raise PayloadShapeError(
                f"{msg.sender!r} summed {msg.payload.get('terms')} terms, expected {terms}"
            )
        # The count is fixed at setup (the passive's parameter count), never taken from the
        # message: a passive cannot have more values decrypted than its gradient has.
        count = self._layouts[msg.sender]["params"]
        if int(msg.payload["count"]) != count:
            raise PayloadShapeError(
                f"{msg.sender!r} asked to decrypt {msg.payload['count']} values; the layout "
                f"fixed at setup is {count} gradient values. The round is rejected"
            )
        values = self._keyring.decrypt_masked(self._field(msg, "ct"), count, terms)
        del self._terms[(msg.round, msg.sender)]
        return [
            self.send(
                msg.sender,
                "train.masked_gradient_plain",
                Label.MASKED,
                {"values": values},
                round=msg.round,
                label_dependent=True,
            )
        ]

    @handles("predict.embedding")
    def on_predict_embedding(self, msg: Message) -> list[Message]:
        self._expect(msg, *self.passives)
        if self.config.protocol == "paillier":
            raise ProtocolError("under 'paillier' embeddings arrive encrypted")
        self._predict_inbox[msg.sender] = (
            np.asarray(msg.payload["h"], dtype=np.float32),
            self._field(msg, "ids_digest", str),
        )
        return []

    @handles("predict.enc_embedding")
    def on_predict_enc_embedding(self, msg: Message) -> list[Message]:
        self._expect(msg, *self.passives)
        if self.config.protocol != "paillier":
            raise ProtocolError(f"{msg.kind!r} is part of the paillier protocol only")
        # Decrypted in _scores, once the number of rows being scored is known here.
        self._predict_inbox[msg.sender] = (
            self._field(msg, "ct"),
            self._field(msg, "ids_digest", str),
        )
        return []

    def _scores(self, payload) -> tuple[np.ndarray, np.ndarray]:
        ids, x = self._scoring_features(payload)
        hs = []
        for p in self.passives:
            if p not in self._predict_inbox:
                raise ProtocolError(f"no prediction embedding from {p!r}")
            h, digest = self._predict_inbox.pop(p)
            if digest != ids_digest(ids):
                raise PayloadShapeError(
                    f"prediction embedding from {p!r} does not match the {len(ids)} rows "
                    "being scored"
                )
            if isinstance(h, bytes):
                h = self._decrypt_embedding(p, h, len(ids))
            if h.shape != (len(ids), self._width()):
                raise PayloadShapeError(
                    f"prediction embedding from {p!r} does not match the {len(ids)} rows "
                    "being scored"
                )
            hs.append(h)
        padded = [pad_rows(h) for h in hs]
        return ids, np.asarray(self._predict(self.params, pad_rows(x), padded))[: len(x)]

    @handles("predict.run")
    def on_predict_run(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        ids, scores = self._scores(msg.payload)
        return [
            self.send(
                COORDINATOR,
                "predict.scores",
                Label.PLAINTEXT_BY_DESIGN,
                {"ids": list(ids), "scores": scores},
                label_dependent=True,
            )
        ]

    @handles("eval.run")
    def on_eval(self, msg: Message) -> list[Message]:
        """Metrics on a split, computed where the labels are; only aggregates leave."""
        self._expect(msg, COORDINATOR)
        ids, scores = self._scores(msg.payload)
        rows = self.test_rows if msg.payload.get("split") == "test" else self.train_rows
        labels = self.config.task.check_labels(rows.labels)
        result = self.config.task.evaluate(scores, labels)
        payload = {"metrics": result, "n": len(ids)}
        if msg.payload.get("with_scores"):
            # The operator of the active party asked for its own scores and labels for plots.
            payload["scores"], payload["labels"] = scores, labels
        return [
            self.send(
                COORDINATOR,
                "eval.metrics",
                Label.PLAINTEXT_BY_DESIGN,
                payload,
                label_dependent=True,
            )
        ]

    # -- checkpoint (party-local) ----------------------------------------------------------
    def _export_params(self) -> dict:
        out = {
            "bottom": self.bottom.export(self.params[0]),
            "top": self.top.export(self.params[1]),
        }
        if self._duals:
            # Label data and the private key: this checkpoint stays on the active's disk.
            out["dual"] = {p: d.export() for p, d in self._duals.items()}
            out["key"] = private_key_to_tree(self._keyring.private_key)
        return out

    def _load_params(self, pure: dict):
        if self._duals:
            if "dual" not in pure or "key" not in pure:
                raise CheckpointError("the checkpoint holds no paillier source-layer state")
            for p, d in self._duals.items():
                d.load(pure["dual"][p])
            sk = private_key_from_tree(
                pure["key"], insecure_test_key=self.policy.allow_insecure_test_key
            )
            if sk.public_key != self._keyring.public_key:
                self._keyring = ActiveKeyring.from_private_key(sk)
        return (self.bottom.load(pure["bottom"]), self.top.load(pure["top"]))

    def _clear_round_state(self) -> None:
        self._inbox, self._inbox_round = {}, None
        self._predict_inbox = {}
        if self._keyring is not None:
            self._terms = {}
