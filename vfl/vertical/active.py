"""The active party: labels and the top model, and the Paillier key under the encrypted
protocols. See :mod:`vfl.vertical.parties` for what it sends and receives."""

from __future__ import annotations

import jax
import numpy as np

from vfl.core.errors import (
    CheckpointError,
    InvertibleConfigurationError,
    PayloadShapeError,
    ProtocolError,
)
from vfl.core.keyed import ids_digest
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.optim import make_optimizer
from vfl.core.party import handles
from vfl.core.table import PartyTable
from vfl.vertical.config import SecurityPolicy
from vfl.vertical.jitted import top_functions
from vfl.vertical.masked_gradient import (
    ActiveKeyring,
)
from vfl.vertical.models import ModelHandle, make_bottom, make_top
from vfl.vertical.source_layer import (
    DualCoefficients,
    decrypt_embedding,
    encrypt_update,
    private_key_from_tree,
    private_key_to_tree,
    update_rows_everywhere,
)
from vfl.vertical.training_party import MASKED, TrainingParty, pad_rows


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
        config = self._received_config(msg.payload["config"])
        self._setup_common(config, msg.payload.get("slices"))
        task = config.task
        self.passives: list[str] = list(msg.payload["passives"])
        self.y_train = task.check_labels(self.train_rows.labels)
        k_bottom, k_top = jax.random.split(self.key)
        self.bottom = ModelHandle(
            make_bottom(config.model, self.table.n_features, task.n_outputs, k_bottom,
                        party=self.name)
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
            config.decay_biases,
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
    def parameters(self) -> dict:
        """Party-local: this party's trained bottom and top model, as nested dicts of numpy
        arrays (no key material and no dual coefficients)."""
        if self.config is None:
            raise ProtocolError(f"{self.name!r} has not been set up for training")
        return {
            "bottom": self.bottom.export(self.params[0]),
            "top": self.top.export(self.params[1]),
        }

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
