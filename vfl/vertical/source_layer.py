"""The federated source layer: the ``paillier`` protocol, in which no party sees a gradient.

Why. A passive party that learns its own batch gradient ``g = J^T delta`` knows ``J`` (it
computed it), so once its parameter count reaches batch rows x embedding width, least
squares returns ``delta``, whose sign is the label. Masking ``g`` from the key holder does
not help: the passive itself must never hold a label-dependent plaintext. After BlindFL
(Fu et al., SIGMOD 2022) and FATE's SSHE-LR (``encrypted_reveal_in_host``), a passive's
source layer is linear and held jointly:

``W_k = U_k + V_k``
    ``U_k``: a random plaintext share at the passive (drawn with ``secrets``);
    ``[[V_k]]``: ciphertexts under the *active* party's Paillier key, stored at the passive.
    ``W_k``, ``V_k`` and ``[[V_k]]`` never reach the active party or the coordinator.

Forward (passive -> active, :meth:`EncryptedSourceLayer.embed`)
    ``[[h]] = X U + X [[V]]``, packed several values per ciphertext and re-randomized with a
    fresh uniform ``r^n`` per packed ciphertext, so the key holder cannot relate the result
    to the randomness it chose for its own ciphertexts. The active party decrypts ``h``, the
    embedding every split model reveals (with a linear source layer it reveals
    ``X_k X_k^T`` over training rows, exactly as plain split learning with SGD does).

Backward (active -> passive, :meth:`EncryptedSourceLayer.apply_update`)
    The active party runs the passive's optimizer in the *dual* coordinates
    (:class:`DualCoefficients`): ``W = W0 + X^T P`` with one row of ``P`` per training row.
    For SGD, ``P`` changes only on the batch rows (``-eta * delta``); momentum and weight
    decay are linear too and change every row seen so far, all computed by Optax on ``P`` in
    plaintext at the label holder. It sends ``[[dP]]`` for the rows the layout fixes; the
    passive updates ``[[V]] += X_rows^T [[dP]]`` (primal storage) or ``[[P]] += [[dP]]``
    (dual storage, ``h = X W0 + (X X^T)[[P]]``) entirely under encryption. Nothing is
    decrypted for the passive, ever.

What each protocol reveals to whom (measured by :mod:`vfl.attacks.label_leakage`; README "Vertical
protocols")::

    protocol                  passive receives             active receives from a passive
    plain                     dL/dh per sample (leaks)     h (reveals X X^T)
    paillier-masked-gradient  [[delta]], its own J^T delta h, J^T delta + R (masked)
                              (invertible: refused)
    paillier (this module)    [[dP]] ciphertexts only      h (reveals X X^T, as plain)

Storage forms. ``primal`` stores ``[[V]]`` (``d x w`` ciphertexts) and costs ``O(B d w)``
exponentiations per forward; ``dual`` stores ``[[P]]`` (``N x w``) and costs ``O(B N w)``.
``auto`` picks ``dual`` when the party is wider than the training set (``N < d``: 20,000
genes, 200 patients).

Fixed point. Scales never grow: features at ``2**-20`` (clipped to ``|x| < 16``; every
protocol trains on these same quantized inputs), ``dP`` and ``P`` at ``2**-40``, ``U`` and
``V`` at ``2**-60``, ``h`` at ``2**-80`` (primal) or ``2**-60`` (dual, with ``X X^T`` rounded
to ``2**-20``). Overflow is detected by the active party: ``|dP|`` is checked before
encryption and every decoded ``h`` against the public bound ``2**EMBED_BOUND_BITS``.
"""

from __future__ import annotations

import secrets

import jax
import jax.numpy as jnp
import numpy as np
import optax
from gmpy2 import mpz

from vfl.core.errors import ConfigError, PayloadShapeError
from vfl.crypto import (
    EncryptedArray,
    FixedPointOverflowError,
    PackingLayout,
    PrivateKey,
    PublicKey,
    RandomnessPool,
    add,
    add_plain,
    decrypt_array,
    decrypt_packed,
    encrypt_array,
    pack_encrypted,
    plain_matmul_encrypted,
    rerandomize,
)
from vfl.vertical.config import SOURCE_FORMS

FEATURE_FRAC_BITS = 20
#: Standardized features are clipped to this magnitude (public): float32 holds every value
#: of the ``2**-20`` grid below 16 exactly, so plain and encrypted runs see the same inputs.
FEATURE_CLIP = 16.0 - 2.0**-FEATURE_FRAC_BITS
COEF_FRAC_BITS = 40
COEF_BOUND = 2.0**8  # |dP| per entry: a learning rate times a per-row loss gradient
WEIGHT_FRAC_BITS = 60
GRAM_FRAC_BITS = 20  # dual form: X_b X^T rounded to 2^-20
EMBED_BOUND_BITS = 40  # |h| < 2^40 (public bound, checked by the active party)
#: Slot headroom above the bound: a wrapped slot lands far outside the bound.
EMBED_SLOT_MARGIN_BITS = 8



def quantize_features(x: np.ndarray) -> np.ndarray:
    """Clip to ``|x| <= FEATURE_CLIP`` and round to the ``2**-20`` grid (float32, exact)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -FEATURE_CLIP, FEATURE_CLIP)
    scale = float(1 << FEATURE_FRAC_BITS)
    return (np.rint(x * scale) / scale).astype(np.float32)


def feature_ints(xq: np.ndarray) -> np.ndarray:
    """Quantized features as int64 at scale ``2**FEATURE_FRAC_BITS``."""
    return np.rint(np.asarray(xq, dtype=np.float64) * (1 << FEATURE_FRAC_BITS)).astype(np.int64)


def choose_form(requested: str, n_train: int, n_features: int) -> str:
    if requested not in SOURCE_FORMS:
        raise ConfigError(f"source_form must be one of {SOURCE_FORMS}, got {requested!r}")
    if requested != "auto":
        return requested
    return "dual" if n_train < n_features else "primal"


def update_rows_everywhere(optimizer: str, weight_decay: float) -> bool:
    """Whether a round's ``dP`` touches every training row (momentum, weight decay) or only
    the batch rows (plain SGD). Both sides derive the layout from the public config."""
    return optimizer != "sgd" or weight_decay > 0


def embedding_scale(form: str) -> int:
    """``h`` is at ``2**-(20 + 60)`` (X V) in the primal form, ``2**-(20 + 40)`` (X X^T P) in
    the dual one."""
    if form == "primal":
        return FEATURE_FRAC_BITS + WEIGHT_FRAC_BITS
    return GRAM_FRAC_BITS + COEF_FRAC_BITS


def embedding_layout(form: str) -> PackingLayout:
    """Slots for packed embeddings: ``|h| < 2**(scale + bound + margin)`` (129-bit slots,
    15 per 2048-bit plaintext, in the primal form)."""
    return PackingLayout(
        magnitude_bits=embedding_scale(form) + EMBED_BOUND_BITS + EMBED_SLOT_MARGIN_BITS
    )


def to_object(a) -> np.ndarray:
    """An int array as an object array of Python ints (exact big-integer arithmetic)."""
    flat = np.empty(int(np.size(a)), dtype=object)
    flat[:] = [int(v) for v in np.asarray(a).reshape(-1)]
    return flat.reshape(np.shape(a))


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer product of int64 ``a`` (|a| < 2^25) and int64 ``b`` (|b| < 2^62), by
    splitting ``b`` into 20-bit limbs so every int64 partial sum is exact (below 2^17 inner
    terms; wider parties take Python-int arithmetic)."""
    b = np.asarray(b, dtype=np.int64)
    if a.shape[1] >= 1 << 17:
        return to_object(a) @ to_object(b)
    sign = np.sign(b)
    mag = np.abs(b)
    out = np.zeros((a.shape[0], b.shape[1]), dtype=object)
    shift = 0
    while mag.any():
        limb = (mag & ((1 << 20) - 1)) * sign
        part = a.astype(np.int64) @ limb  # |a| 2^25 * 2^20 * rows < 2^63 for rows < 2^17
        out = out + to_object(part) * (1 << shift)
        mag >>= 20
        shift += 20
    return out


def _columns(enc: EncryptedArray) -> list[EncryptedArray]:
    rows, width = enc.shape
    return [
        EncryptedArray(enc.values[j::width], (rows,), enc.public_key, enc.scale_bits)
        for j in range(width)
    ]


def _interleave(cols: list[EncryptedArray], scale_bits: int) -> EncryptedArray:
    rows, width = cols[0].shape[0], len(cols)
    values = [cols[j].values[i] for i in range(rows) for j in range(width)]
    return EncryptedArray(values, (rows, width), cols[0].public_key, scale_bits)


def encrypted_matmul(x_int: np.ndarray, enc: EncryptedArray, pool) -> EncryptedArray:
    """``[[X @ E]]`` for a plaintext int matrix ``X`` (r x n) and ciphertexts ``E`` (n x w)."""
    cols = [
        plain_matmul_encrypted(x_int, col, matrix_scale_bits=0, pool=pool)
        for col in _columns(enc)
    ]
    return _interleave(cols, enc.scale_bits)


class EncryptedSourceLayer:
    """A passive party's linear source layer under the active party's key (its private
    state: ``U``, ``[[V]]`` or ``[[P]]``, its own features)."""

    def __init__(
        self,
        public_key: PublicKey,
        x_train_int: np.ndarray,
        width: int,
        form: str,
        *,
        randomness: RandomnessPool | None = None,
        pool=None,
    ):
        if form not in ("primal", "dual"):
            raise ConfigError(f"form must be 'primal' or 'dual', got {form!r}")
        self.public_key = public_key
        self.x_train = np.asarray(x_train_int, dtype=np.int64)
        self.n_train, self.n_features = self.x_train.shape
        self.width = int(width)
        self.form = form
        self.layout = embedding_layout(form)
        self._randomness = randomness or RandomnessPool(public_key)
        self._pool = pool
        self.state: EncryptedArray | None = None
        # U (primal, at 2^-60) or W0 (dual, at 2^-40), int64
        self.share: np.ndarray | None = None

    # -- initial state ---------------------------------------------------------------------
    def initialize(self, w0: np.ndarray) -> None:
        """Start from the passive's own initial weights ``W0`` (d x w, plaintext here).
        Primal: a uniform share ``|U| < 1`` and ``[[V]] = [[W0 - U]]``; dual: ``W0`` kept
        (at ``2**-40``) and ``[[P]] = [[0]]``."""
        d, w = self.n_features, self.width
        w0 = np.asarray(w0, dtype=np.float64).reshape(d, w)
        if self.form == "primal":
            bound = 1 << WEIGHT_FRAC_BITS
            u = np.array(
                [secrets.randbelow(2 * bound) - bound for _ in range(d * w)], dtype=np.int64
            ).reshape(d, w)
            w0_int = to_object(np.rint(w0 * 2.0**WEIGHT_FRAC_BITS).astype(np.int64))
            self.share = u
            self.state = encrypt_array(
                self.public_key, w0_int - to_object(u), scale_bits=WEIGHT_FRAC_BITS,
                randomness=self._randomness, pool=self._pool,
            )
        else:
            self.share = np.rint(w0 * 2.0**COEF_FRAC_BITS).astype(np.int64)
            zeros = np.zeros((self.n_train, w), dtype=object)
            zeros[...] = 0
            self.state = encrypt_array(
                self.public_key, zeros, scale_bits=COEF_FRAC_BITS,
                randomness=self._randomness, pool=self._pool,
            )

    # -- forward ---------------------------------------------------------------------------
    def embed(self, x_int: np.ndarray) -> EncryptedArray:
        """Packed, re-randomized ``[[h]]`` for the rows ``x_int`` (int64 at 2^-20)."""
        x_int = np.asarray(x_int, dtype=np.int64)
        if self.form == "primal":
            h = encrypted_matmul(x_int, self.state, self._pool)
            h = add_plain(h, int_matmul(x_int, self.share))
            scale = FEATURE_FRAC_BITS + WEIGHT_FRAC_BITS
        else:
            gram = x_int.astype(np.float64) @ self.x_train.T.astype(np.float64)
            # x_int x_int^T is at 2^-40; round it to 2^-20 (exponent length drives the cost)
            gram_int = np.rint(gram / float(1 << (2 * FEATURE_FRAC_BITS - GRAM_FRAC_BITS)))
            h = encrypted_matmul(gram_int.astype(np.int64), self.state, self._pool)
            scale = GRAM_FRAC_BITS + COEF_FRAC_BITS
            # + X W0 (at 2^-20 x 2^-40 = 2^-60, the dual embedding's scale)
            if self.share.any():
                h = add_plain(h, int_matmul(x_int, self.share))
        h = h.with_values(h.values, scale_bits=scale).ravel()
        packed = pack_encrypted(h, self.layout, pool=self._pool)
        # A fresh uniform r^n per packed ciphertext: the key holder chose the randomness of
        # every [[dP]] that went into [[V]]; without this it could test candidate features.
        return rerandomize(packed, randomness=self._randomness, pool=self._pool)

    # -- backward --------------------------------------------------------------------------
    def apply_update(self, positions: np.ndarray, enc_update: EncryptedArray) -> None:
        """``[[V]] += X_rows^T [[dP]]`` (primal) or ``[[P_rows]] += [[dP]]`` (dual)."""
        rows = len(positions)
        if enc_update.shape != (rows, self.width) or enc_update.scale_bits != COEF_FRAC_BITS:
            raise PayloadShapeError(
                f"expected an encrypted update of shape {(rows, self.width)} at scale "
                f"2^-{COEF_FRAC_BITS}, got {enc_update.shape} at 2^-{enc_update.scale_bits}; "
                "the round is rejected and no parameter changed"
            )
        if self.form == "primal":
            x_rows_t = np.ascontiguousarray(self.x_train[positions].T)
            delta = encrypted_matmul(x_rows_t, enc_update, self._pool)
            delta = delta.with_values(delta.values, scale_bits=WEIGHT_FRAC_BITS)
            self.state = add(self.state, delta)
        else:
            n2 = self.public_key.nsquare
            values = list(self.state.values)
            w = self.width
            for k, pos in enumerate(np.asarray(positions).tolist()):
                for j in range(w):
                    values[pos * w + j] = values[pos * w + j] * enc_update.values[k * w + j] % n2
            self.state = self.state.with_values(values)

    # -- checkpoint (party-local) ------------------------------------------------------------
    def export(self) -> dict:
        return {
            "form": self.form,
            "share": np.asarray(self.share, dtype=np.int64),
            "state": self.state.to_bytes(),
            "public_key": self.public_key.to_bytes(),
        }

    def load(self, tree: dict) -> None:
        if tree["form"] != self.form:
            raise ConfigError(
                f"the checkpoint stores a {tree['form']!r} source layer, this run uses "
                f"{self.form!r}; restore with the same source_form"
            )
        state = EncryptedArray.from_bytes(bytes(tree["state"]), self.public_key)
        expected = (self.n_features if self.form == "primal" else self.n_train, self.width)
        if state.shape != expected:
            raise PayloadShapeError(
                f"checkpointed source layer has shape {state.shape}, expected {expected}"
            )
        self.state = state
        self.share = np.asarray(tree["share"], dtype=np.int64).reshape(
            self.n_features, self.width
        )


def decrypt_embedding(
    private_key: PrivateKey, data: bytes, rows: int, width: int, form: str, *, pool=None,
    dtype=np.float32,
) -> np.ndarray:
    """The active party's side of the forward pass: decrypt exactly ``rows x width`` packed
    values at the layout fixed at setup, and check the public bound. ``dtype``: float32 for
    the split models; the Cox optimizer takes float64 (its Newton steps use the exact
    differences of embeddings)."""
    layout = embedding_layout(form)
    enc = EncryptedArray.from_bytes(data, private_key.public_key)
    count = rows * width
    expected = layout.packed_count(count, private_key.public_key)
    if enc.shape != (expected,) or enc.scale_bits != embedding_scale(form):
        raise PayloadShapeError(
            f"expected {expected} packed ciphertexts for {count} embedding values at scale "
            f"2^-{embedding_scale(form)}, got shape {enc.shape} at 2^-{enc.scale_bits}; the key "
            "holder decrypts only the count and layout fixed at setup, so the round is rejected"
        )
    ints = decrypt_packed(private_key, enc, layout, count, pool=pool)
    bound = 1 << (embedding_scale(form) + EMBED_BOUND_BITS)
    if any(abs(int(v)) >= bound for v in ints):
        raise FixedPointOverflowError(
            f"a decrypted embedding exceeds the public bound 2^{EMBED_BOUND_BITS}: the source "
            "layer overflowed (or a party sent a malformed ciphertext). The run is aborted; "
            "lower the learning rate or check the features"
        )
    s = embedding_scale(form)
    flat = np.array([int(v) / float(1 << s) for v in ints])
    return flat.reshape(rows, width).astype(dtype)


class DualCoefficients:
    """The active party's plaintext bookkeeping of one passive's optimizer, in dual
    coordinates: ``W = W0 + X^T P`` with one row of ``P`` per training row. Label data (it is
    built from ``delta``), so it never leaves the active party."""

    def __init__(self, n_train: int, width: int, tx, *, everywhere: bool):
        self.p = jnp.zeros((n_train, width), dtype=jnp.float32)
        self.tx = tx
        self.opt_state = tx.init(self.p)
        self.quantized = np.zeros((n_train, width), dtype=np.int64)
        self.everywhere = everywhere

    def step(self, positions: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the gradient ``G`` (``delta`` on the batch rows, zero elsewhere); return the
        rows whose coefficients the passive must update and ``dP`` there (int64 at
        ``2**-COEF_FRAC_BITS``)."""
        grad = jnp.zeros_like(self.p).at[jnp.asarray(positions)].set(jnp.asarray(delta))
        updates, self.opt_state = self.tx.update(grad, self.opt_state, self.p)
        self.p = optax.apply_updates(self.p, updates)
        p64 = np.asarray(self.p, dtype=np.float64)
        if not np.isfinite(p64).all() or np.abs(p64).max(initial=0.0) >= COEF_BOUND:
            raise FixedPointOverflowError(
                f"a source-layer coefficient left the public bound 2^{int(np.log2(COEF_BOUND))} "
                "(the optimizer diverged); the run is aborted. Lower the learning rate"
            )
        q = np.rint(p64 * float(1 << COEF_FRAC_BITS)).astype(np.int64)
        rows = np.arange(len(q)) if self.everywhere else np.asarray(positions)
        diff = q[rows] - self.quantized[rows]
        if not self.everywhere:
            others = np.ones(len(q), dtype=bool)
            others[rows] = False
            if (q[others] != self.quantized[others]).any():  # pragma: no cover - invariant
                raise FixedPointOverflowError("SGD changed coefficients outside the batch")
        self.quantized = q
        return rows, diff

    def export(self) -> dict:
        leaves = jax.tree.leaves(self.opt_state)
        return {
            "p": np.asarray(self.p),
            "quantized": self.quantized,
            "opt": {f"l{i}": np.asarray(x) for i, x in enumerate(leaves)},
        }

    def load(self, tree: dict) -> None:
        self.p = jnp.asarray(tree["p"])
        self.quantized = np.asarray(tree["quantized"], dtype=np.int64)
        treedef = jax.tree.structure(self.opt_state)
        opt = tree["opt"]
        leaves = [jnp.asarray(opt[f"l{i}"]) for i in range(treedef.num_leaves)]
        self.opt_state = jax.tree.unflatten(treedef, leaves)


def encrypt_update(public_key: PublicKey, diff: np.ndarray, randomness) -> bytes:
    """``[[dP]]`` (rows x width) at ``2**-COEF_FRAC_BITS`` under the active party's key."""
    return encrypt_array(
        public_key, to_object(diff), scale_bits=COEF_FRAC_BITS, randomness=randomness
    ).to_bytes()


def private_key_to_tree(sk: PrivateKey) -> dict:
    """Party-local checkpoint of the key pair (the active party's own disk only)."""
    def b(x):
        return int(x).to_bytes((int(x).bit_length() + 7) // 8, "big")

    return {"n": b(sk.public_key.n), "p": b(sk.p), "q": b(sk.q)}


def private_key_from_tree(tree: dict, *, insecure_test_key: bool = False) -> PrivateKey:
    pub = PublicKey.from_bytes(bytes(tree["n"]), insecure_test_key=insecure_test_key)
    return PrivateKey(
        pub, mpz(int.from_bytes(bytes(tree["p"]), "big")),
        mpz(int.from_bytes(bytes(tree["q"]), "big")),
    )


def plaintext_view(states: dict[str, dict]) -> dict[str, dict]:
    """Auditor/test view of every party's checkpointed state with the ``paillier`` source
    layers decrypted (with the active party's key, found in its own state): what two runs
    must agree on. Primal: ``W = U + V`` (the random share ``U`` differs between runs);
    dual: ``W0`` and ``P``. Key material is dropped. Plain states pass through unchanged.
    Never called by a protocol message: in a deployment no single party holds all of this.
    """
    key_tree = next(
        (s["params"]["key"] for s in states.values() if isinstance(s.get("params"), dict)
         and "key" in s["params"]),
        None,
    )
    if key_tree is None:
        return states
    sk = private_key_from_tree(key_tree, insecure_test_key=True)
    out = {}
    for name, st in states.items():
        params = st.get("params")
        if isinstance(params, dict) and "source" in params:
            src = params["source"]
            enc = EncryptedArray.from_bytes(bytes(src["state"]), sk.public_key)
            ints = decrypt_array(sk, enc)
            share = np.asarray(src["share"], dtype=np.int64).astype(object)
            if src["form"] == "primal":
                w = ints.reshape(share.shape) + share
                view = {"W": np.array([int(v) for v in w.reshape(-1)], dtype=np.float64).reshape(
                    share.shape) / 2.0**WEIGHT_FRAC_BITS}
            else:
                view = {
                    "W0": np.asarray(src["share"], dtype=np.float64) / 2.0**COEF_FRAC_BITS,
                    "P": np.array([int(v) for v in ints.reshape(-1)], dtype=np.float64).reshape(
                        enc.shape) / 2.0**COEF_FRAC_BITS,
                }
            out[name] = dict(st) | {"params": view}
        elif isinstance(params, dict) and "key" in params:
            out[name] = dict(st) | {"params": {k: v for k, v in params.items() if k != "key"}}
        else:
            out[name] = st
    return out
