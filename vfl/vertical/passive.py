"""The passive party: features only, no labels. See :mod:`vfl.vertical.parties` for what it
sends and receives under each protocol."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vfl.core.errors import (
    InvertibleConfigurationError,
    LabelAtPassivePartyError,
    PayloadShapeError,
    ProtocolError,
)
from vfl.core.keyed import ids_digest
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.party import handles
from vfl.core.table import PartyTable
from vfl.crypto import EncryptedArray, PublicKey
from vfl.vertical.config import SecurityPolicy, TrainConfig
from vfl.vertical.jitted import bottom_functions
from vfl.vertical.masked_gradient import (
    PassiveSealer,
)
from vfl.vertical.models import ModelHandle, make_bottom
from vfl.vertical.source_layer import (
    EncryptedSourceLayer,
    choose_form,
    feature_ints,
    update_rows_everywhere,
)
from vfl.vertical.training_party import MASKED, TrainingParty, pad_rows


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
        config = self._received_config(msg.payload["config"])
        self._setup_common(config, msg.payload.get("slices"))
        self.active = msg.payload["active"]
        config.check_passive_bottom(self.name)
        module = make_bottom(config.model, self.table.n_features, config.task.n_outputs,
                             self.key, party=self.name)
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
            self.bottom.graphdef, c.passive_optimizer_name, c.learning_rate, c.weight_decay,
            c.decay_biases,
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

    def parameters(self) -> dict:
        """Party-local: this party's trained bottom model as nested dicts of numpy arrays.
        Under ``paillier`` the source layer is held jointly: what this party has is its
        random share and ciphertexts under the active party's key (``{"source": ...}``);
        it cannot decrypt them (see :meth:`SplitTrainer.parameters
        <vfl.vertical.trainer.SplitTrainer.parameters>`)."""
        if self.config is None:
            raise ProtocolError(f"{self.name!r} has not been set up for training")
        return self._export_params()

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


