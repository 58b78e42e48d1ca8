"""The parties of a vertical Cox fit: the hospital (times and events) and the passives.

Every message, who sends it, and what it carries (``label_dependent`` marks values computed
from the hospital's times and events)::

    kind                  sender -> receiver        label                 payload
    cox.setup             coordinator -> party      public                CoxConfig, active,
                                                                          public key (passives)
    cox.ready             party -> coordinator      public                row counts, columns
    cox.layout            coordinator -> hospital   public                each passive's columns
    cox.forward           coordinator -> passive    public                (round)
    cox.embedding         passive -> hospital       plaintext-by-design   h_k = X_k beta_k
                                                                          (paillier: packed
                                                                          [[h_k]])
    cox.step              coordinator -> hospital   public                (round)
    cox.update            hospital -> passive       ciphertext (paillier) dual change [[dP]]
                                                  / plaintext-by-design (plain)
    cox.status            hospital -> coordinator   plaintext-by-design   loss, ranks, converged
    cox.finish            coordinator -> hospital   public
    cox.release           coordinator -> hospital   public
    cox.release_factor    hospital -> passive       ciphertext (paillier) [[C]], C = E L Q
    cox.unmask            passive -> hospital       masked                [[Z + R1, V + R2]]
    cox.unmasked          hospital -> passive       masked                Z + R1, V + R2
    cox.coefficients      party -> coordinator      plaintext-by-design   coefficients and
                                                                          their covariance
    cox.predict           coordinator -> passive    public                split
    cox.predict_embedding passive -> hospital       plaintext-by-design   X_split beta_k
    cox.evaluate          coordinator -> hospital   public                split
    cox.metrics           hospital -> coordinator   plaintext-by-design   C-index, Brier score,
                                                                          survival curves

The passive's coefficients live as in :mod:`vfl.vertical.source_layer`'s primal form: a
plaintext share ``U`` and ``[[V]]`` under the hospital's key (``paillier``), or the integer
``W`` itself (``plain``); both update ``W`` by ``X^T dP`` in exact integer arithmetic at the
same fixed point, so the two protocols compute bitwise the same fit.

Release. The fitted coefficients are the product of a Cox analysis (hazard ratios), so the
fit ends by revealing them: each passive learns its own ``beta_k`` and covariance block
through one masked decryption (the hospital decrypts ``V + R`` and ``Z + R``, uniformly
masked), and reports them; the hospital reports its own. Nothing else label-dependent ever
reaches a passive in the clear under ``paillier``.
"""

from __future__ import annotations

import numpy as np

from vfl.core.errors import PayloadShapeError, ProtocolError
from vfl.core.keyed import split_test
from vfl.core.messages import COORDINATOR, Label, Message
from vfl.core.party import handles
from vfl.core.table import PartyTable, Standardizer
from vfl.crypto import (
    EncryptedArray,
    FixedPointOverflowError,
    PackingLayout,
    PublicKey,
    decrypt_packed,
    draw_mask,
    encrypt_array,
    pack_masked,
)
from vfl.survival.config import CoxConfig
from vfl.survival.cox import breslow_baseline, risk_sets, survival_function
from vfl.survival.errors import (
    BrierTimesError,
    CensoringSupportError,
    CollinearFeaturesError,
    CoxConvergenceError,
)
from vfl.survival.labels import check_features, survival_labels
from vfl.survival.metrics import brier_times, c_index, integrated_brier
from vfl.survival.subspace import Directions, SubspaceNewton
from vfl.vertical.config import SecurityPolicy
from vfl.vertical.masked_gradient import ActiveKeyring
from vfl.vertical.source_layer import (
    COEF_BOUND,
    COEF_FRAC_BITS,
    EncryptedSourceLayer,
    decrypt_embedding,
    encrypt_update,
    encrypted_matmul,
    feature_ints,
    int_matmul,
    quantize_features,
    to_object,
)
from vfl.vertical.training_party import TrainingParty

#: ``W`` at ``2**-60``, ``h`` at ``2**-80`` (the primal source layer's fixed point)
WEIGHT_BITS = 60
EMBED_BITS = 80
#: Released values (``V`` and ``Z``, at ``2**-60``) are below ``2**(60 + RELEASE_BOUND_BITS)``:
#: a standardized coefficient or its standard error beyond 2^16 means the fit diverged.
RELEASE_BOUND_BITS = 16
_RELEASE_LAYOUT = PackingLayout(magnitude_bits=WEIGHT_BITS + RELEASE_BOUND_BITS + 42)


def _train_test(party: TrainingParty, config: CoxConfig):
    aligned = party.table.rows(party.aligned_ids)
    test = split_test(aligned.ids, config.seed, config.test_fraction)
    return aligned.rows(aligned.ids[~test]), aligned.rows(aligned.ids[test])


def _unclipped(scaler: Standardizer, features: np.ndarray) -> Standardizer:
    """Standardize, but widen a column's scale where a value would pass the fixed-point clip
    (|x| < 16): a rare indicator (3 patients of 1151 in ACTG's txgrp level 4) sits 20
    standard deviations out, and clipping it would change the model. A Cox fit does not
    depend on the columns' scales (coefficients are reported per original unit)."""
    spread = np.abs(np.asarray(features, dtype=np.float64) - scaler.mean).max(axis=0,
                                                                              initial=0.0)
    return Standardizer(scaler.mean, np.maximum(scaler.scale, spread / 15.0))


def quantize_dual(change: np.ndarray) -> np.ndarray:
    """A dual change as int64 at ``2**-40``, refused beyond the public bound."""
    change = np.asarray(change, dtype=np.float64)
    if not np.isfinite(change).all() or np.abs(change).max(initial=0.0) >= COEF_BOUND:
        raise FixedPointOverflowError(
            f"a dual change left the public bound 2^{int(np.log2(COEF_BOUND))}: the fit "
            "diverged. Check the covariates for separation")
    return np.rint(change * float(1 << COEF_FRAC_BITS)).astype(np.int64)


class _CoxParty(TrainingParty):
    """Setup shared by both sides: the keyed split, own-column checks, scaling."""

    #: whether this role holds the outcome (times and events): the hospital only
    HOLDS_OUTCOME = False

    def __init__(self, name: str, table: PartyTable, *, policy: SecurityPolicy | None = None):
        if table.has_labels != self.HOLDS_OUTCOME:
            raise ProtocolError(
                f"the hospital {name!r} needs the (time, event) outcome; build its table with "
                "the survival labels" if self.HOLDS_OUTCOME else
                f"passive party {name!r} was given the outcome column {table.label_name!r}; "
                "only the hospital may hold times and events (table.without_labels())")
        super().__init__(name, table, policy=policy)

    def _setup_rows(self, msg: Message) -> CoxConfig:
        self._expect(msg, COORDINATOR)
        config = CoxConfig.from_json(msg.payload.get("config"))
        self.policy.check(config, self.name)  # protocol and key length: own policy only
        if self.aligned_ids is None:
            raise ProtocolError(f"{self.name!r} cannot set up a Cox fit before alignment")
        self.config = config
        self.train_rows, self.test_rows = _train_test(self, config)
        if len(self.train_rows.ids) < 2:
            raise ProtocolError(f"{self.name!r} has fewer than 2 training rows after the split")
        # Each party refuses its own dependent or constant columns (it alone can see them).
        try:
            check_features(self.train_rows.features, list(self.table.columns))
        except CollinearFeaturesError as exc:
            raise CollinearFeaturesError(f"{self.name!r}: {exc}") from None
        self.scaler = _unclipped(Standardizer.fit(self.train_rows.features),
                                 self.train_rows.features)
        # The same 2^-20 grid as every vertical protocol: plain and paillier see identical
        # inputs, so they compute bitwise the same fit.
        self.x_train = quantize_features(self.scaler.transform(self.train_rows.features))
        self.beta: np.ndarray | None = None  # standardized coefficients, once released
        self.completed_round = -1
        self.reset_rounds(None)  # a new fit (e.g. after an erasure) starts at round 0
        return config

    def _ready(self) -> dict:
        return {"n_train": int(len(self.train_rows.ids)), "n_test": int(len(self.test_rows.ids)),
                "columns": list(self.table.columns)}

    def _features(self, split: str) -> np.ndarray:
        if split not in ("train", "test"):
            raise ProtocolError(f"split must be 'train' or 'test', got {split!r}")
        rows = self.train_rows if split == "train" else self.test_rows
        return quantize_features(self.scaler.transform(rows.features)).astype(np.float64)

    def _report(self, beta_std: np.ndarray, cov_std: np.ndarray) -> Message:
        """Coefficients per unit of the party's own columns (``beta_std / scale``)."""
        self.beta = np.asarray(beta_std, dtype=np.float64)
        scale = np.asarray(self.scaler.scale, dtype=np.float64)
        payload = {
            "columns": list(self.table.columns),
            "coef": self.beta / scale,
            "cov": np.asarray(cov_std) / np.outer(scale, scale),
            "coef_std": self.beta,
        }
        return self.send(COORDINATOR, "cox.coefficients", Label.PLAINTEXT_BY_DESIGN, payload,
                         label_dependent=True)


class CoxPassiveParty(_CoxParty):
    """A feature holder without times or events (the lab, the pharmacy)."""

    @handles("cox.setup")
    def on_setup(self, msg: Message) -> list[Message]:
        config = self._setup_rows(msg)
        self.active = self._field(msg, "active", str)
        self._x_int = feature_ints(self.x_train)
        d = self._x_int.shape[1]
        self.source = None
        self.w_int = np.zeros((d, 1), dtype=object)
        self.w_int[...] = 0
        if config.protocol == "paillier":
            key = self._field(msg, "public_key", bytes)
            public_key = PublicKey.from_bytes(
                bytes(key), insecure_test_key=self.policy.allow_insecure_test_key)
            self.policy.check_key_bits(public_key.key_bits, self.name)
            self.source = EncryptedSourceLayer(public_key, self._x_int, 1, "primal")
            self.source.initialize(np.zeros((d, 1)))
        self._masks = None
        return [self.send(COORDINATOR, "cox.ready", Label.PUBLIC,
                          self._ready() | {"n_features": int(d)})]

    def _embedding(self, r: int) -> Message:
        if self.source is not None:
            packed = self.source.embed(self._x_int)
            payload = {"ct": packed.to_bytes()}
        else:
            h = to_object(self._x_int) @ self.w_int  # exact: W outgrows int64
            payload = {"h": np.array([int(v) for v in h.reshape(-1)], dtype=np.float64)
                       / float(2**EMBED_BITS)}
        return self.send(self.active, "cox.embedding", Label.PLAINTEXT_BY_DESIGN, payload,
                         round=r, label_dependent=True)

    @handles("cox.forward")
    def on_forward(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        return [self._embedding(msg.round)]

    @handles("cox.update")
    def on_update(self, msg: Message) -> list[Message]:
        """``W += X^T dP`` (under encryption with paillier), then the new embedding."""
        self._expect(msg, self.active)
        n = len(self._x_int)
        if self.source is not None:
            enc = EncryptedArray.from_bytes(self._field(msg, "ct"), self.source.public_key)
            self.source.apply_update(np.arange(n), enc)
        else:
            dp = np.asarray(msg.payload.get("dp"))
            if dp.shape != (n, 1) or dp.dtype != np.int64:
                raise PayloadShapeError(
                    f"{self.name!r} expected a dual change of {n} int64 values, got "
                    f"{dp.dtype} {dp.shape}; the round is rejected")
            self.w_int = self.w_int + int_matmul(np.ascontiguousarray(self._x_int.T), dp)
        self.completed_round = msg.round
        return [self._embedding(msg.round)]

    @handles("cox.release_factor")
    def on_release_factor(self, msg: Message) -> list[Message]:
        """``Z = X^T C`` (its covariance factor) and, under paillier, ``V``: masked for the
        hospital to decrypt (plain: computed here directly)."""
        self._expect(msg, self.active)
        d = self._x_int.shape[1]
        xt = np.ascontiguousarray(self._x_int.T)
        shift = msg.payload.get("shift", 0)
        if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift <= 256:
            raise PayloadShapeError(f"{self.name!r} got a release scale {shift!r}")
        self._shift = shift
        if self.source is None:
            c = np.asarray(msg.payload.get("c"))
            if c.shape != (len(self._x_int), d) or c.dtype != np.int64:
                raise PayloadShapeError(f"{self.name!r} expected a release factor of shape "
                                        f"{(len(self._x_int), d)}, got {c.shape}")
            z = int_matmul(xt, c)
            return [self._release(self.w_int.reshape(-1), z.reshape(-1))]
        pub = self.source.public_key
        enc_c = EncryptedArray.from_bytes(self._field(msg, "ct"), pub)
        if enc_c.shape != (len(self._x_int), d) or enc_c.scale_bits != COEF_FRAC_BITS:
            raise PayloadShapeError(f"{self.name!r} expected [[C]] of shape "
                                    f"{(len(self._x_int), d)}, got {enc_c.shape}")
        enc_z = encrypted_matmul(xt, enc_c, None)  # (d, d) at 2^-60
        values = list(self.source.state.values) + list(enc_z.values)  # [[V]] then [[Z]]
        enc = EncryptedArray(values, (d + d * d,), pub, WEIGHT_BITS)
        self._masks = draw_mask(d + d * d, WEIGHT_BITS + RELEASE_BOUND_BITS)
        packed = pack_masked(enc, self._masks, _RELEASE_LAYOUT)
        return [self.send(self.active, "cox.unmask", Label.MASKED, {"ct": packed.to_bytes()})]

    @handles("cox.unmasked")
    def on_unmasked(self, msg: Message) -> list[Message]:
        self._expect(msg, self.active)
        if self._masks is None:
            raise ProtocolError(f"{self.name!r} asked for no decryption")
        d = self._x_int.shape[1]
        values = msg.payload.get("values")
        if not isinstance(values, list) or len(values) != d + d * d:
            raise PayloadShapeError(f"{self.name!r} expected {d + d * d} unmasked values")
        plain = [int(v) - int(m) for v, m in zip(values, self._masks)]
        self._masks = None
        v = np.array(plain[:d], dtype=object)
        share = to_object(self.source.share.reshape(-1))
        return [self._release(v + share, np.array(plain[d:], dtype=object))]

    def _release(self, w_int, z_int) -> Message:
        d = self._x_int.shape[1]
        beta = np.array([int(v) for v in w_int], dtype=np.float64) / float(2**WEIGHT_BITS)
        z = np.array([int(v) for v in z_int], dtype=np.float64).reshape(d, d)
        z *= float(2**self._shift) / float(2**WEIGHT_BITS)
        return self._report(beta, z @ z.T)

    @handles("cox.predict")
    def on_predict(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        if self.beta is None:
            raise ProtocolError(f"{self.name!r} has no released coefficients yet")
        split = self._field(msg, "split", str)
        h = self._features(split) @ self.beta
        return [self.send(self.active, "cox.predict_embedding", Label.PLAINTEXT_BY_DESIGN,
                          {"h": h, "split": split}, label_dependent=True)]


class CoxActiveParty(_CoxParty):
    """The hospital: its own covariates, every patient's follow-up time and event, and the
    Paillier key. It runs the optimizer (:class:`~vfl.survival.subspace.SubspaceNewton`)."""

    HOLDS_OUTCOME = True

    @handles("cox.setup")
    def on_setup(self, msg: Message) -> list[Message]:
        config = self._setup_rows(msg)
        self.time, self.event = survival_labels(self.train_rows.labels)
        self.test_time, self.test_event = (survival_labels(self.test_rows.labels)
                                           if len(self.test_rows.ids) else (None, None))
        self.risk = risk_sets(self.time, self.event, config.ties)
        self.passives: list[str] = []
        self.optimizer: SubspaceNewton | None = None
        self._keyring = None
        self._inbox: dict[str, np.ndarray] = {}
        self._predict: dict[str, np.ndarray] = {}
        self._release_counts: dict[str, int] = {}  # what each passive's unmask may hold
        ready = self._ready()
        if config.protocol == "paillier":
            self.policy.check_key_bits(config.key_bits, self.name)
            self._keyring = ActiveKeyring(
                config.key_bits,
                insecure_test_key=config.insecure_test_key and self.policy.allow_insecure_test_key)
            ready["public_key"] = self._keyring.public_key_bytes()
        return [self.send(COORDINATOR, "cox.ready", Label.PUBLIC, ready)]

    @handles("cox.layout")
    def on_layout(self, msg: Message) -> list[Message]:
        """Public control, once: each passive's column count and names (what this party
        will decrypt from it, and the rank its directions must reach)."""
        self._expect(msg, COORDINATOR)
        if self.optimizer is not None:
            raise ProtocolError("the Cox layout was already fixed at setup")
        layout = msg.payload.get("passives")
        if not isinstance(layout, dict) or not layout:
            raise ProtocolError("a Cox layout names at least one passive party")
        n = len(self.train_rows.ids)
        passives = {}
        for name, lay in layout.items():
            cols = lay.get("columns") if isinstance(lay, dict) else None
            if not isinstance(cols, list) or not cols:
                raise ProtocolError(f"no column list for passive {name!r}")
            passives[str(name)] = Directions.empty(n, len(cols), cols)
        self.passives = list(passives)
        self.optimizer = SubspaceNewton(
            self.risk, self.x_train.astype(np.float64), tuple(self.table.columns), passives,
            seed=self.config.seed, tol=self.config.tol)
        return []

    # -- training rounds ------------------------------------------------------------------------
    @handles("cox.embedding")
    def on_embedding(self, msg: Message) -> list[Message]:
        self._expect(msg, *self.passives)
        n = len(self.train_rows.ids)
        if self._keyring is not None:
            h = decrypt_embedding(self._keyring.private_key, self._field(msg, "ct"), n, 1,
                                  "primal", dtype=np.float64).reshape(-1)
        else:
            h = np.asarray(msg.payload.get("h"), dtype=np.float64)
            if h.shape != (n,):
                raise PayloadShapeError(f"embedding from {msg.sender!r} has shape {h.shape}, "
                                        f"expected ({n},); the round is rejected")
        self._inbox[msg.sender] = h
        return []

    def _embeddings(self) -> dict[str, np.ndarray]:
        missing = [p for p in self.passives if p not in self._inbox]
        if missing:
            raise ProtocolError(f"no embedding from {missing} this round")
        out, self._inbox = self._inbox, {}
        return out

    @handles("cox.step")
    def on_step(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        opt, r = self.optimizer, msg.round
        if opt is None:
            raise ProtocolError("cox.step before the layout was fixed")
        if opt.rounds >= self.config.max_rounds:
            raise CoxConvergenceError(
                f"the vertical Cox fit did not converge in {self.config.max_rounds} rounds "
                "(max_rounds); raise max_rounds or check the covariates")
        changes = opt.step(self._embeddings())
        out = []
        for name, change in changes.items():
            dp = quantize_dual(change).reshape(-1, 1)
            opt.record_sent(name, dp.reshape(-1) / float(1 << COEF_FRAC_BITS))
            if self._keyring is not None:
                ct = encrypt_update(self._keyring.public_key, dp, self._keyring.randomness)
                out.append(self.send(name, "cox.update", Label.CIPHERTEXT, {"ct": ct},
                                     round=r, label_dependent=True))
            else:
                out.append(self.send(name, "cox.update", Label.PLAINTEXT_BY_DESIGN, {"dp": dp},
                                     round=r, label_dependent=True))
        status = {"loss": float(opt.loss), "converged": bool(opt.converged),
                  "ranks": {n: d.rank for n, d in opt.passives.items()},
                  "newton_iterations": int(opt.newton_iterations)}
        return out + [self.send(COORDINATOR, "cox.status", Label.PLAINTEXT_BY_DESIGN, status,
                                round=r, label_dependent=True)]

    @handles("cox.finish")
    def on_finish(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        if self.optimizer is None or not self.optimizer.converged:
            raise ProtocolError("cox.finish before the fit converged")
        loss = self.optimizer.finish(self._embeddings())
        self.eta_train = self.optimizer.eta()
        self.baseline = breslow_baseline(self.time, self.event, self.eta_train)
        return [self.send(COORDINATOR, "cox.status", Label.PLAINTEXT_BY_DESIGN,
                          {"loss": float(loss), "converged": True, "final": True},
                          label_dependent=True)]

    # -- release --------------------------------------------------------------------------------
    @handles("cox.release")
    def on_release(self, msg: Message) -> list[Message]:
        """The covariance factors to the passives, and this party's own coefficients."""
        self._expect(msg, COORDINATOR)
        opt = self.optimizer
        own_cov, blocks = opt.covariance()
        out = []
        for name in self.passives:
            factor = opt.release_factor(name, blocks[name])
            # Large standard errors (nearly collinear columns) make a large factor: send it
            # scaled by a power of two (public: the passive learns its covariance anyway).
            peak = float(np.abs(factor).max(initial=0.0))
            shift = max(0, int(np.ceil(np.log2(peak))) + 2 - int(np.log2(COEF_BOUND))) if (
                peak > 0) else 0
            c = quantize_dual(factor / float(2**shift))
            d = c.shape[1]
            self._release_counts[name] = d + d * d
            if self._keyring is not None:
                enc = encrypt_array(self._keyring.public_key, to_object(c),
                                    scale_bits=COEF_FRAC_BITS,
                                    randomness=self._keyring.randomness)
                out.append(self.send(name, "cox.release_factor", Label.CIPHERTEXT,
                                     {"ct": enc.to_bytes(), "shift": shift},
                                     label_dependent=True))
            else:
                out.append(self.send(name, "cox.release_factor", Label.PLAINTEXT_BY_DESIGN,
                                     {"c": c, "shift": shift}, label_dependent=True))
        return out + [self._report(opt.beta_own, own_cov)]

    @handles("cox.unmask")
    def on_unmask(self, msg: Message) -> list[Message]:
        """Decrypt exactly the masked count fixed for this passive (its ``V`` and ``Z``)."""
        self._expect(msg, *self.passives)
        count = self._release_counts.pop(msg.sender, None)
        if count is None or self._keyring is None:
            raise ProtocolError(f"no release is pending for {msg.sender!r}")
        sk = self._keyring.private_key
        enc = EncryptedArray.from_bytes(self._field(msg, "ct"), sk.public_key)
        expected = _RELEASE_LAYOUT.packed_count(count, sk.public_key)
        if enc.shape != (expected,):
            raise PayloadShapeError(
                f"expected {expected} packed ciphertexts from {msg.sender!r}, got {enc.shape}; "
                "the key holder decrypts only the count fixed at setup")
        values = decrypt_packed(sk, enc, _RELEASE_LAYOUT, count)
        # V + R and Z + R: the passive's own released values under its uniform masks
        return [self.send(msg.sender, "cox.unmasked", Label.MASKED,
                          {"values": [int(v) for v in values]}, label_dependent=True)]

    # -- evaluation -----------------------------------------------------------------------------
    @handles("cox.predict_embedding")
    def on_predict_embedding(self, msg: Message) -> list[Message]:
        self._expect(msg, *self.passives)
        split = self._field(msg, "split", str)
        rows = self.train_rows if split == "train" else self.test_rows
        h = np.asarray(msg.payload.get("h"), dtype=np.float64)
        if h.shape != (len(rows.ids),):
            raise PayloadShapeError(f"prediction from {msg.sender!r} has shape {h.shape}")
        self._predict[msg.sender] = h
        return []

    @handles("cox.evaluate")
    def on_evaluate(self, msg: Message) -> list[Message]:
        self._expect(msg, COORDINATOR)
        split = self._field(msg, "split", str)
        missing = [p for p in self.passives if p not in self._predict]
        if missing:
            raise ProtocolError(f"no prediction from {missing}")
        eta = self._features(split) @ np.asarray(self.beta)
        for p in self.passives:
            eta = eta + self._predict.pop(p)
        time, event = (self.time, self.event) if split == "train" else (
            self.test_time, self.test_event)
        out = {"split": split, "n": int(len(eta)), "eta": eta,
               **evaluate_cox(self.time, self.event, self.baseline, time, event, eta)}
        return [self.send(COORDINATOR, "cox.metrics", Label.PLAINTEXT_BY_DESIGN, out,
                          label_dependent=True)]


def evaluate_cox(train_time, train_event, baseline, time, event, eta) -> dict:
    """C-index and integrated Brier score of linear predictors ``eta`` on (time, event),
    with survival curves from the training rows' Breslow baseline. Either is ``None`` where
    it is not defined (no event among the rows; no time grid inside both follow-ups, or
    test patients followed past the training rows' censoring support), with the reason."""
    out = {"c_index": None, "integrated_brier": None}
    if not event.any():
        out["note"] = "no event among these rows: C-index and Brier score are undefined"
        return out
    out["c_index"] = float(c_index(time, event, eta))
    grid = brier_times(train_time, time)
    if grid is None or not len(grid):
        out["note"] = "no time inside both follow-ups: the Brier score is undefined"
        return out
    try:
        surv = survival_function(baseline, eta, grid)
        out["integrated_brier"] = integrated_brier(train_time, train_event, time, event, surv,
                                                   grid)
    except (CensoringSupportError, BrierTimesError) as exc:
        out["note"] = f"integrated Brier score undefined here: {exc}"
    return out
