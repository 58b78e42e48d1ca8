"""A hospital in a horizontal federation: its rows never leave it.

The client holds its rows, labels, scaler, personal head (FedPer), error-feedback residual
and SCAFFOLD control; it is reachable only through :meth:`handle`. What it tells others:

* ``setup.stats`` -> server: per-column count, sum and sum of squares of its training rows
  (``plaintext-by-design``: aggregate moments, so the federation standardizes with the
  pooled mean and standard deviation, exactly what a centralized analyst would use), and
  its training row count ``n_train``, which bounds the example counts of its updates;
* ``setup.ready`` -> coordinator: its training and test row counts (``public``: the
  simulation sizes its compiled program from them);
* ``fit.update`` -> server: its model delta (raw or compressed), example count, steps done
  and loss (``plaintext-by-design`` and label-dependent: an update is a function of the
  labels and can leak them to the server, Zhu et al. 2019). Never sent under secure
  aggregation (``FedConfig.secure_aggregation``): the update then only enters SecAgg+ as
  ``x_u``, and the server receives public keys, ciphertexts, the masked ``y_u`` and mask
  shares (:mod:`horizontal.secure_rounds`); a client that will not take part tells the
  coordinator ``fit.withheld`` (``public``: why);
* ``eval.metrics`` -> coordinator: metrics on its own held-out rows, and scores with labels
  only when the operator asks for a pooled evaluation (``plaintext-by-design``).
* ``data.erased`` -> coordinator: after the coordinator relayed an erasure request
  (``data.erase``), how many of its rows it deleted, how many it has left and a digest of the
  ids it still holds (``public``).

Local training is submitted to the shared :class:`~horizontal.simulation.LocalExecutor`
(the simulation's stand-in for the client's device) when ``fit`` arrives and collected on
``fit.collect``; the update is encoded by the client itself, so its bytes are real.

Differential privacy (``FedConfig.dp``, :mod:`horizontal.dp`): at record level every local
step is DP-SGD on a Poisson (or fixed-size) batch drawn with the hospital's own secret
(:attr:`HospitalClient.dp_secret`: party-local, never sent or checkpointed), and the client
refuses at setup, before reading its features or labels, a plan whose epsilon exceeds the
budget; at client level it clips its update to the bound the server sends and reports
whether it had to (adaptive clipping). Under DP the update carries no training loss (it is
not privatized: ``loss`` is NaN) and, at record level, the public example count
``local_epochs x n_train`` (scaled by the steps done) instead of the rows drawn.
"""

from __future__ import annotations

import jax
import numpy as np

from horizontal.client_update import compiled_predict
from horizontal.compression import ErrorFeedback
from horizontal.config import FedConfig
from horizontal.dp.dpsgd import dp_row_hashes, fixed_size_batches, noise_key, poisson_batches
from horizontal.dp.fedavg import clip_client_update, secure_client_vector
from horizontal.dp.ledger import (
    PrivacyLedger,
    RecordPlan,
    client_plan,
    fresh_secret,
    record_plan,
    secret_text,
    simulation_secret,
)
from horizontal.errors import ClientSchemaError, FedConfigError
from horizontal.flat_model import FlatModel
from horizontal.privacy_policy import PrivacyAccount, PrivacyPolicy
from horizontal.secure_rounds import SecureClient
from horizontal.simulation import LocalExecutor, LocalJob
from vfl.core.errors import PayloadShapeError, ProtocolError, UnexpectedSenderError
from vfl.core.keyed import id_hashes, ids_digest, local_batches, split_test, steps_per_epoch
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.party import Party, handles
from vfl.core.rounds import ERASE, ERASED, PartyState, erase_ids, erasure_ack
from vfl.core.table import PartyTable

SERVER = "server"


class HospitalClient(SecureClient, Party):
    """Only its server may send it setup, the scaler, the global model, the secure
    aggregation's relayed keys, ciphertexts and unmask requests, and evaluation or
    fine-tuning requests; only the coordinator asks it to collect or to delete rows
    (:attr:`SENDERS`, checked in :meth:`handle` before any handler runs)."""

    SENDERS = {
        "setup": "server",
        "setup.scaler": "server",
        "fit": "server",
        "evaluate": "server",
        "finetune": "server",
        "secagg.keys": "server",
        "secagg.ciphertexts": "server",
        "secagg.unmask": "server",
        "fit.collect": "coordinator",
        ERASE: "coordinator",
    }

    def __init__(self, name: str, table: PartyTable, executor: LocalExecutor,
                 server: str = SERVER, *, dp_secret: str | bytes | None = None,
                 policy: PrivacyPolicy | None = None, privacy_account=None):
        super().__init__(name)
        # The operator's own privacy minimum (never from the wire) and the epsilon this
        # hospital has spent on its rows, by its own account (horizontal.privacy_policy),
        # kept in ``privacy_account`` (a file on its own disk) when given.
        self.privacy = PrivacyAccount.at(policy if policy is not None else PrivacyPolicy(),
                                         privacy_account)
        # Differential privacy samples rows and draws noise with a secret only this
        # hospital holds (party-local config: never in a message or a checkpoint). Its
        # operator may pin one; otherwise it is os.urandom (horizontal.dp.ledger).
        self.dp_secret = fresh_secret() if dp_secret is None else secret_text(dp_secret)
        self.dp_secret_pinned = dp_secret is not None
        self.dp_plan: RecordPlan | None = None
        if not table.has_labels:
            raise FedConfigError(
                f"client {name!r} has no label column; every hospital in a horizontal "
                "federation needs its own labels (build its table with labels=...)"
            )
        self.table = table
        self.executor = executor
        self.server = server
        self.config: FedConfig | None = None

    def handle(self, message: Message) -> list[Message]:
        role = self.SENDERS.get(message.kind)
        if role is None and message.kind in self._handlers:
            raise UnexpectedSenderError(
                f"client {self.name!r} has no sender rule for {message.kind!r} messages; add "
                "the kind to HospitalClient.SENDERS"
            )
        expected = {"server": self.server, "coordinator": COORDINATOR}.get(role)
        if expected is not None and message.sender != expected:
            raise UnexpectedSenderError(
                f"client {self.name!r} got {message.kind!r} from {message.sender!r}; only "
                f"{expected!r} may send it. The message is ignored."
            )
        return super().handle(message)

    def send(self, receiver, kind, label, payload=None, round=None, label_dependent=False):
        # Every ``setup.stats`` declares all of this client's training rows (``n_train``),
        # also when its moments cover a subset (SISA slices): the server bounds the example
        # count of each later update by ``local_epochs * n_train``.
        if kind == "setup.stats" and "n_train" not in (payload or {}):
            payload = dict(payload or {}, n_train=int(len(self.train_ids)))
        return super().send(receiver, kind, label, payload, round, label_dependent)

    # -- erasure ----------------------------------------------------------------------------
    @handles(ERASE)
    def on_erase(self, msg: Message) -> list[Message]:
        """Delete this hospital's rows of the ids the coordinator names (an erasure request)
        and say how many (``data.erased``). A client already set up keeps its training view
        (and the server its moments) until the federation is set up again."""
        before = self.table.n_rows
        self.table = self.table.without(erase_ids(msg))
        ack = erasure_ack(before - self.table.n_rows, self.table.ids)
        return [self.send(COORDINATOR, ERASED, Label.PUBLIC, ack)]

    # -- setup ------------------------------------------------------------------------------
    @handles("setup")
    def on_setup(self, msg: Message) -> list[Message]:
        config = FedConfig.from_json(msg.payload.get("config"))
        columns = msg.payload.get("columns")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise ProtocolError(
                f"client {self.name!r} got a setup without a list of column names"
            )
        columns = tuple(columns)
        if self.table.columns != columns:
            lost = [c for c in columns if c not in self.table.columns]
            extra = [c for c in self.table.columns if c not in columns]
            raise ClientSchemaError(
                f"client {self.name!r} has columns {list(self.table.columns)}, the federation "
                f"agreed on {list(columns)} (missing {lost}, unexpected {extra}"
                f"{', order differs' if not lost and not extra else ''}). Export exactly the "
                "agreed columns in that order, then rejoin."
            )
        test = split_test(self.table.ids, config.seed, config.test_fraction)
        if test.all():
            raise FedConfigError(
                f"client {self.name!r} has no training rows after the held-out split "
                f"({len(test)} rows, test_fraction {config.test_fraction}); lower "
                "test_fraction or leave this client out"
            )
        # A setup below this hospital's own privacy policy, or a record-level DP plan over
        # the budget, is refused here, before any feature or label is read (the plan needs
        # only the count of training rows).
        plan = self.privacy_plan(config)
        self.privacy.open(config, plan, self.name)
        if plan is not None:
            PrivacyLedger(config.dp).check_plans({self.name: plan}, config.rounds)
        labels = config.task.check_labels(self.table.labels)
        self.config = config
        self.train_ids = self.table.ids[~test]
        self.test_ids = self.table.ids[test]
        self._raw_train = self.table.features[~test]
        self._raw_test = self.table.features[test]
        self.y_train, self.y_test = labels[~test], labels[test]
        self.row_hashes = id_hashes(self.train_ids, config.seed)
        self.completed_round = -1
        self.reset_rounds(None)
        stats = {
            "n": int(len(self.train_ids)),
            "sum": self._raw_train.sum(axis=0),
            "sumsq": (self._raw_train**2).sum(axis=0),
        }
        if not (np.isfinite(stats["sum"]).all() and np.isfinite(stats["sumsq"]).all()):
            raise FedConfigError(
                f"client {self.name!r}: the column sums of its rows overflow float64 (values "
                "of magnitude ~1e150 or more); rescale those columns before joining"
            )
        return [self.send(self.server, "setup.stats", Label.PLAINTEXT_BY_DESIGN, stats)]

    @handles("setup.scaler")
    def on_scaler(self, msg: Message) -> list[Message]:
        c = self.config
        d = self._raw_train.shape[1]
        try:
            mean = np.asarray(msg.payload["mean"], dtype=np.float64)
            scale = np.asarray(msg.payload["scale"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            mean = scale = np.zeros(0)
        if mean.shape != (d,) or scale.shape != (d,):
            raise PayloadShapeError(
                f"client {self.name!r} got a scaler of shapes {mean.shape}/{scale.shape}, "
                f"expected ({d},) each; server and client disagree on the schema"
            )
        if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise PayloadShapeError(
                f"client {self.name!r} got a scaler with NaN/Inf values or non-positive "
                "scales; it would erase its features. Setup must be redone."
            )
        self.x_train = ((self._raw_train - mean) / scale).astype(np.float32)
        self.x_test = ((self._raw_test - mean) / scale).astype(np.float32)
        d = self.x_train.shape[1]
        self.model = FlatModel(d, c.hidden, c.task.n_outputs, c.seed)
        self.spec = (d, tuple(c.hidden), c.task.n_outputs, c.task.kind, c.task.n_classes,
                     c.client_optimizer, float(c.client_lr))
        self.dp_plan = self.privacy_plan(c)
        if self.dp_plan is not None:  # record level: DP-SGD local steps
            self.spec += (("dp-sgd", float(c.dp.clip_norm), float(c.dp.noise_multiplier)),)
            self._dp_rows = dp_row_hashes(self.train_ids, self.dp_secret)
        p = self.model.size
        head = self.model.head_mask
        self.shared = np.flatnonzero(~head) if c.personalization == "fedper" else np.arange(p)
        self.personal_head = self.model.init[head].copy() if c.personalization == "fedper" else None
        self.ef = ErrorFeedback(len(self.shared))
        self.c_i = np.zeros(p, np.float32) if c.algorithm == "scaffold" else None
        self.finetuned: np.ndarray | None = None
        self._pending: dict | None = None
        self._used: dict[int, np.ndarray] = {}
        self._all_digest = ids_digest(self._sorted_ids(np.arange(len(self.train_ids))))
        steps = c.local_epochs * steps_per_epoch(len(self.train_ids), c.batch_size)
        if self.dp_plan is not None:
            steps = self.dp_plan.steps_per_round
        ready = {"n_train": int(len(self.train_ids)), "n_test": int(len(self.test_ids)),
                 "steps": int(steps)}
        return [self.send(COORDINATOR, "setup.ready", Label.PUBLIC, ready)]

    # -- a training round ---------------------------------------------------------------------
    def _start_vector(self, global_w: np.ndarray) -> np.ndarray:
        try:
            w = np.array(global_w, dtype=np.float32, copy=True)
        except (TypeError, ValueError):
            w = np.zeros(0, np.float32)
        if w.shape != (self.model.size,):
            raise ProtocolError(
                f"client {self.name!r} got a global model of shape {w.shape}, expected "
                f"({self.model.size},); server and client disagree on the architecture"
            )
        if not np.isfinite(w).all():
            raise ProtocolError(
                f"client {self.name!r} got a global model with NaN/Inf parameters; it does "
                "not train on it"
            )
        if self.personal_head is not None:
            w[self.model.head_mask] = self.personal_head
        return w

    @handles("fit")
    def on_fit(self, msg: Message) -> list[Message]:
        c, r = self.config, msg.round
        start = self._start_vector(msg.payload["global"])
        if self.dp_plan is not None:  # within what this hospital planned and accounted for
            self.privacy.charge_round(r, self.name)
        if c.secure_aggregation is not None:  # this round's SecAgg+ setup, before training
            self.secure_join(msg)
        if self.dp_plan is not None:
            pos, bmask = self._dp_batches(r)
        else:
            pos, bmask = local_batches(self.row_hashes, c.seed, r, self.name, c.local_epochs,
                                       c.batch_size)
        full = len(pos)
        done = c.systems.steps_done(c.seed, r, self.name, full)
        control = None
        corr = np.zeros_like(start)
        if self.c_i is not None:
            control = np.asarray(msg.payload["control"], dtype=np.float32)
            corr = control - self.c_i
        ticket = None
        if done > 0:
            active = np.arange(full) < done
            job = LocalJob(self.spec, start, start, corr, float(c.mu), self.x_train,
                           self.y_train, pos, bmask, active, *self._dp_job(r))
            ticket = self.executor.submit(job)
        self._pending = {"round": r, "ticket": ticket, "start": start, "pos": pos,
                         "bmask": bmask, "done": done, "full": full, "control": control,
                         "clip_norm": msg.payload.get("clip_norm")}
        return []

    # -- differential privacy (party-local) -------------------------------------------------
    def use_simulation_secret(self, seed: int) -> None:
        """**In-memory simulation only**: take the DP secret derived from the public seed
        and this client's name (:func:`~horizontal.dp.ledger.simulation_secret`), so two
        simulated runs with one seed are bitwise equal; a pinned secret is kept."""
        if not self.dp_secret_pinned:
            self.dp_secret = simulation_secret(seed, self.name)

    def privacy_plan(self, config: FedConfig | None = None) -> RecordPlan | None:
        """This hospital's record-level DP plan (:func:`~horizontal.dp.ledger.record_plan`)
        from the count of its training rows (its ids and the public split; never its
        features or labels); None without record-level DP."""
        c = config or self.config
        if c is None or c.dp is None or c.dp.level != "record":
            return None
        n_train = int((~split_test(self.table.ids, c.seed, c.test_fraction)).sum())
        return record_plan(c.dp, n_train, batch_size=c.batch_size, local_epochs=c.local_epochs)

    def _dp_batches(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Round ``r``'s DP-SGD batches, drawn with this hospital's secret."""
        plan = self.dp_plan
        if plan.sampling == "fixed":
            return fixed_size_batches(self._dp_rows, self.dp_secret, r, self.name,
                                      plan.steps_per_round, plan.width)
        return poisson_batches(self._dp_rows, self.dp_secret, r, self.name, plan.steps_per_round,
                               plan.sampling_probability, capacity=plan.width)

    def _dp_job(self, r: int) -> tuple:
        """The noise key (this hospital's secret and the round) and the expected batch size
        of a DP-SGD job; nothing without record-level DP."""
        if self.dp_plan is None:
            return ()
        key = jax.random.key_data(noise_key(self.dp_secret, "dp-sgd", r, self.name))
        return np.asarray(key, np.uint32), float(self.dp_plan.expected_batch_size)

    def _client_level_share(self, clipped: np.ndarray, bound, r: int) -> np.ndarray:
        """Under secure aggregation: the clipped update plus this client's share
        ``N(0, (σC)^2 / m)`` of the round's noise, ``m`` the cohort (the clients whose
        shares make up the noise; :func:`horizontal.dp.fedavg.secure_client_vector`)."""
        m = int(self._secure.setup.n)
        plan = client_plan(self.config.dp, m, m, secure=True)
        return secure_client_vector(clipped, secret=self.dp_secret, round=r, client=self.name,
                                    plan=plan, clip_norm=float(bound), adaptive=False)

    def _clip_for_client_level(self, shared: np.ndarray, bound, r: int):
        """Client-level DP: the update clipped to the round's bound (sent by the server)
        and the unclipped indicator."""
        if isinstance(bound, bool) or not isinstance(bound, int | float | np.floating) or not (
            np.isfinite(bound) and bound > 0
        ):
            raise ProtocolError(
                f"client {self.name!r} got no valid clip bound with the round {r} model "
                f"({bound!r}); client-level DP needs a finite positive one"
            )
        return clip_client_update(shared, float(bound))

    @handles("fit.collect")
    def on_collect(self, msg: Message) -> list[Message]:
        c, r, p = self.config, msg.round, self._pending
        if p is None or p["round"] != r:
            raise ProtocolError(f"client {self.name!r} has no local work for round {r}")
        self._pending = None
        if p["ticket"] is None:  # missed the deadline: nothing to send
            return [self.send(COORDINATOR, "fit.missed", Label.PUBLIC, {"steps": 0}, round=r)]
        w_new, loss = self.executor.result(p["ticket"])
        done, pos, bmask = p["done"], p["pos"], p["bmask"]
        delta = w_new - p["start"]
        if self.personal_head is not None:
            self.personal_head = w_new[self.model.head_mask].copy()
        shared, unclipped = delta[self.shared], None
        if c.dp is not None and c.dp.level == "client":
            shared, unclipped = self._clip_for_client_level(shared, p["clip_norm"], r)
        update = self.ef.compress(shared, c.compression, enabled=c.error_feedback,
                                  seed_parts=(c.seed, r, self.name),
                                  topk_fraction=c.topk_fraction)
        if done == p["full"] and self.dp_plan is None:
            used = np.arange(len(self.train_ids))  # every local epoch covers every row
        else:  # a straggler's steps, or the rows DP-SGD's batches drew
            used = np.unique(pos[:done][bmask[:done] > 0])
        # The common case (every row used) reuses the digest computed at setup; ids are
        # materialized only when a checkpoint asks for them (used_ids).
        digest = self._all_digest if len(used) == len(self.train_ids) else ids_digest(
            self._sorted_ids(used))
        examples = int(bmask[:done].sum())
        if self.dp_plan is not None:  # the rows drawn are private; this count is public
            examples = max(1, round(c.local_epochs * len(self.train_ids) * done / p["full"]))
        if c.secure_aggregation is not None:  # only the cohort's sum will reach the server
            self._used[r] = used
            self.completed_round = r
            if c.dp is not None and c.dp.level == "client":
                # distributed noise: this client's share is added before masking, so the
                # server never sees a noiseless sum; every client at weight 1
                shared = self._client_level_share(shared, p["clip_norm"], r)
                examples = int(c.secure_aggregation.max_weight)
            return self.secure_advertise(r, shared, examples,
                                         float(loss) if c.dp is None else 0.0,  # DP: not sent
                                         partial=done < p["full"])
        payload = {
            "update": update,
            "num_examples": examples,
            "steps": int(done),
            "full_steps": int(p["full"]),
            # under DP the local loss is not privatized, so it is not released
            "loss": float(loss) if c.dp is None else float("nan"),
            "ids_digest": digest,
        }
        if unclipped is not None and c.dp.clip == "adaptive":
            payload["unclipped"] = int(unclipped)
        if self.c_i is not None:
            # SCAFFOLD option II: c_i+ = c_i - c + (x - y_i) / (K lr)
            c_new = self.c_i - p["control"] + (p["start"] - w_new) / (done * c.client_lr)
            payload["delta_c"] = (c_new - self.c_i).astype(np.float32)
            self.c_i = c_new.astype(np.float32)
        self._used[r] = used
        self.completed_round = r
        return [self.send(self.server, "fit.update", Label.PLAINTEXT_BY_DESIGN, payload,
                          round=r, label_dependent=True)]

    # -- evaluation and personalization -------------------------------------------------------
    def _model_for(self, payload) -> np.ndarray:
        which = payload.get("model", "global")
        if which == "finetuned":
            if self.finetuned is None:
                raise ProtocolError(f"client {self.name!r} has not fine-tuned a model yet")
            return self.finetuned
        w = np.asarray(payload["global"], dtype=np.float32)
        return self._start_vector(w) if which == "personal" else w

    @handles("evaluate")
    def on_evaluate(self, msg: Message) -> list[Message]:
        w = self._model_for(msg.payload)
        split = msg.payload.get("split", "test")
        self.privacy.policy.check_evaluate(split, bool(msg.payload.get("with_scores")),
                                           self.name)
        x, y = (self.x_test, self.y_test) if split == "test" else (self.x_train, self.y_train)
        task = self.config.task
        scores = np.asarray(compiled_predict(self.model.key, task.kind, task.n_classes)(w, x))
        out = {"metrics": task.evaluate(scores, y), "n": int(len(y))}
        if msg.payload.get("with_scores"):
            out["scores"], out["labels"] = scores, y
        return [self.send(COORDINATOR, "eval.metrics", Label.PLAINTEXT_BY_DESIGN, out,
                          label_dependent=True)]

    @handles("finetune")
    def on_finetune(self, msg: Message) -> list[Message]:
        """Local fine-tuning of the received model on this client's rows only; the result
        stays here (``model="finetuned"`` in ``evaluate``)."""
        c = self.config
        start = self._start_vector(msg.payload["global"])
        epochs = int(msg.payload.get("epochs", 1))
        lr = float(msg.payload.get("lr", c.client_lr))
        pos, bmask = local_batches(self.row_hashes, c.seed, "finetune", self.name, epochs,
                                   c.batch_size)
        spec = self.spec[:6] + (lr,)  # plain SGD: the fine-tuned model stays here
        job = LocalJob(spec, start, start, np.zeros_like(start), 0.0, self.x_train,
                       self.y_train, pos, bmask, np.ones(len(pos), bool))
        self.finetuned, loss = self.executor.run_now(job)
        return [self.send(COORDINATOR, "finetune.done", Label.PUBLIC, {"loss": loss})]

    # -- checkpoint (party-local) -----------------------------------------------------------
    def used_ids(self, round: int) -> tuple[str, ...]:
        """Ids (sorted) of the rows this client's update of ``round`` used; empty if it sat
        out."""
        used = self._used.get(round)
        return () if used is None else self._sorted_ids(used)

    def _sorted_ids(self, positions) -> tuple[str, ...]:
        return tuple(sorted(str(i) for i in self.train_ids[positions]))

    def setup_ids(self) -> tuple[str, ...]:
        """Ids whose rows influenced setup (the pooled scaler's moments)."""
        return tuple(str(i) for i in self.train_ids)

    def snapshot(self) -> PartyState:
        extra = {"ef": self.ef.residual.copy()}
        if self.c_i is not None:
            extra["c_i"] = self.c_i.copy()
        params = {}
        if self.personal_head is not None:
            params["personal_head"] = self.personal_head.copy()
        return PartyState(self.name, self.completed_round, params, [],
                          np.zeros(2, np.uint32), self.config.digest(), extra)

    def restore(self, state: PartyState) -> None:
        if state.config_digest != self.config.digest():
            raise ProtocolError(f"checkpoint of {self.name!r} was taken under another config")
        self.ef.residual = np.asarray(state.extra["ef"], np.float32).copy()
        if self.c_i is not None:
            self.c_i = np.asarray(state.extra["c_i"], np.float32).copy()
        if self.personal_head is not None:
            self.personal_head = np.asarray(state.params["personal_head"], np.float32).copy()
        self.completed_round = state.round
        self._pending = None
        self._secure = None  # a secure aggregation's keys never outlive their round
        self._used = {k: v for k, v in self._used.items() if k <= state.round}
        self.reset_rounds(state.round)
