"""Leakage audit: label attacks on what each passive party received, and Gram recovery by
the active party.

Reference: Oscar Li, Jiankai Sun, Xin Yang, Weihao Gao, Hongyi Zhang, Junyuan Xie, Virginia
Smith, Chong Wang, "Label Leakage and Protection in Two-party Split Learning", ICLR 2022,
arXiv:2102.08504. In binary split learning with an imbalanced label, the cut-layer gradient
``dL/dh`` of a sample is ``(sigmoid(z) - y) * dz/dh``: positives (the rare class) get
gradients of larger norm, and gradients of positives point one way while those of negatives
point the other. Two attacks need nothing but the gradients a passive party receives:

* **norm scoring**: score each sample by ``||g||_2``; report the ROC AUC of that score for
  the positive (minority) class (:func:`norm_scoring_auc`);
* **direction scoring**: the attacker knows one positive example; score every other sample
  by the cosine similarity of its gradient with that example's gradient
  (:func:`direction_scoring_auc`).

AUC 0.5 means the score says nothing about the label; 1.0 means it separates the classes.

The audit replays exactly what a party received: :func:`capture_received` attaches an
observer to :class:`~vfl.core.transport.InMemoryTransport` that keeps every decoded message whose
receiver is that party, and :func:`audit_label_leakage` runs the attacks on them:

* ``plain`` protocol: the passive receives ``train.cut_gradient`` with the per-sample
  gradients ``g`` of shape ``(rows_in_batch, width)``, rows in the order of the round's batch
  ids. *Every* received gradient is used (all rounds, all epochs), each labelled with the
  label of its row id: the paper attacks one epoch's gradients, using all epochs gives the
  attacker more samples and is at least as informative about the per-row leak.
* ``paillier-masked-gradient``: the passive receives ``train.enc_cut_gradient``
  (ciphertexts) and ``train.masked_gradient_plain`` (its own batch-aggregate gradient, still
  masked by the mask it chose, which it removes itself). No per-sample values: norm and
  direction are not run (NaN, with the reason). What it learns is its aggregate gradient
  ``g = J^T delta``, and it knows ``J``: :func:`aggregate_inversion_auc` solves for
  ``delta`` by least squares (exact once it has rows x width parameters) and scores the
  recovered rows; the batch-level norm score (``batch_norm_auc``) is kept as well.
* ``paillier`` (the federated source layer): the passive receives only ``train.enc_update``
  ciphertexts and public control. :func:`ciphertext_inversion_auc` runs the same inversion
  on them (the per-row ciphertexts are positional, so the system is the identity).
* against the active party, :func:`gram_recovery_error` measures how well it recovers a
  passive's ``X X^T`` from the embeddings it decrypts (the same under ``plain`` and
  ``paillier``).

Every number here is an attack's result; nothing is assumed to be 0.5.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from vfl.core.messages import Message
from vfl.core.metrics import roc_auc
from vfl.crypto import EncryptedArray
from vfl.vertical.source_layer import DualCoefficients

PLAIN_GRADIENT_KIND = "train.cut_gradient"
ENCRYPTED_GRADIENT_KIND = "train.enc_cut_gradient"
MASKED_AGGREGATE_KIND = "train.masked_gradient_plain"
SOURCE_UPDATE_KIND = "train.enc_update"

VIEW_PLAIN = "per-sample plaintext gradients"
VIEW_ENCRYPTED = "ciphertexts + masked aggregate"
VIEW_NONE = "no training gradients received"
VIEW_SOURCE_LAYER = "ciphertexts only (source-layer updates)"

BATCH_NORM_MEANING = (
    "AUC of the L2 norm of the passive party's unmasked aggregate batch gradient for "
    "predicting whether the batch holds more positives than the median batch"
)


# --- the two attacks -------------------------------------------------------------------------
def _check_inputs(grads, labels) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(grads, dtype=np.float64)
    if g.ndim == 1:
        g = g[:, None]
    if g.ndim != 2:
        raise ValueError(f"gradients must have shape (n_samples, width), got {g.shape}")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {y.shape}")
    if len(y) != len(g):
        raise ValueError(
            f"got {len(g)} gradients but {len(y)} labels; each gradient needs its row's label"
        )
    if not np.isfinite(g).all():
        raise ValueError("gradients contain NaN or infinity")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(f"labels must be binary 0/1 (positive = 1), got values {sorted(values)}")
    y = y.astype(bool)
    if not y.any():
        raise ValueError("no positive labels: the attacks score the positive (minority) class")
    if y.all():
        raise ValueError("no negative labels: an AUC needs both classes")
    return g, y


def norm_scoring_auc(grads, labels) -> float:
    """ROC AUC of ``||g_i||_2`` as a score for ``labels[i] == 1`` (Li et al., norm attack).

    ``grads``: shape ``(n, e)`` (or ``(n,)``); ``labels``: ``n`` binary labels.
    """
    g, y = _check_inputs(grads, labels)
    return roc_auc(y, np.linalg.norm(g, axis=1))


def direction_scoring_auc(grads, labels, *, reference_index: int | None = None) -> float:
    """ROC AUC of the cosine similarity with one known positive's gradient (Li et al.).

    The attacker is assumed to know the label of one positive example,
    ``reference_index`` (default: the first positive). That example is excluded from the
    scored set. Zero gradients get similarity 0.
    """
    g, y = _check_inputs(grads, labels)
    if reference_index is None:
        ref = int(np.flatnonzero(y)[0])
    else:
        ref = int(reference_index)
        if not -len(y) <= ref < len(y):
            raise ValueError(f"reference_index {ref} is out of range for {len(y)} samples")
        ref %= len(y)
        if not y[ref]:
            raise ValueError(
                f"reference_index {ref} is a negative example; the attack uses a known positive"
            )
    r = g[ref]
    r_norm = np.linalg.norm(r)
    if r_norm == 0:
        raise ValueError("the reference gradient is zero: cosine similarity is undefined")
    keep = np.ones(len(y), dtype=bool)
    keep[ref] = False
    rest, y_rest = g[keep], y[keep]
    if not y_rest.any() or y_rest.all():
        raise ValueError(
            "after removing the reference example only one class is left; an AUC needs both"
        )
    norms = np.linalg.norm(rest, axis=1)
    cos = np.divide(rest @ r, norms * r_norm, out=np.zeros(len(rest)), where=norms > 0)
    return roc_auc(y_rest, cos)


# --- capturing what a party received ---------------------------------------------------------
@dataclass
class PassiveView:
    """Every decoded message a party received, in delivery order (a transport observer)."""

    party: str
    messages: list[Message] = field(default_factory=list)

    def __call__(self, message: Message) -> None:
        if message.receiver == self.party:
            self.messages.append(message)

    def attach(self, transport) -> PassiveView:
        transport.observers.append(self)
        return self

    def detach(self, transport) -> None:
        transport.observers[:] = [o for o in transport.observers if o is not self]


def capture_received(transport, party_name: str) -> list[Message]:
    """Start recording what ``party_name`` receives through ``transport``.

    Returns the (live) list the messages are appended to, as the receiver decoded them.
    """
    if not isinstance(party_name, str) or not party_name:
        raise ValueError("party_name must be a non-empty party name")
    return PassiveView(party_name).attach(transport).messages


# --- the audit -------------------------------------------------------------------------------
@dataclass
class LeakageReport:
    """What label-inference attacks achieve on one party's received messages."""

    party: str
    protocol_view: str
    n_samples: int
    norm_auc: float
    direction_auc: float
    reason: str
    n_rounds: int = 0
    batch_norm_auc: float | None = None
    batch_norm_meaning: str | None = None
    #: aggregate inversion (least squares of what it received against its own features or
    #: Jacobian), the attack that matters for the encrypted protocols
    inversion_auc: float | None = None
    inversion_meaning: str | None = None

    def to_json(self) -> dict:
        """A JSON-serializable dict (NaN AUCs become ``None``)."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float) and math.isnan(v):
                out[k] = None
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def _label_of(labels: Mapping[str, int], row_id: str) -> int:
    try:
        return int(labels[row_id])
    except KeyError:
        raise ValueError(
            f"no label for row id {row_id!r}; pass the active party's labels"
        ) from None


def audit_label_leakage(
    received: Sequence[Message],
    batch_ids: Callable[[int], Sequence[str]],
    labels: Mapping[str, int],
    *,
    party: str | None = None,
    aggregate_gradients: Mapping[int, np.ndarray] | None = None,
) -> LeakageReport:
    """Run the norm and direction attacks on the messages one party received.

    ``received``: the party's messages (from :func:`capture_received`); ``batch_ids(r)``:
    the row ids of round ``r``'s batch, in batch order; ``labels``: id -> 0/1 (the ground
    truth, known to the auditor, not to the attacker). ``party`` defaults to the receiver of
    the messages. ``aggregate_gradients`` (round -> the passive's unmasked batch gradient)
    enables the batch-level score in the encrypted protocol; a passive computes these itself.
    """
    received = list(received)
    receivers = {m.receiver for m in received}
    if party is None:
        if len(receivers) > 1:
            raise ValueError(f"messages for several parties {sorted(receivers)}; pass party=")
        party = next(iter(receivers), "unknown")
    received = [m for m in received if m.receiver == party]
    plain = [m for m in received if m.kind == PLAIN_GRADIENT_KIND]
    encrypted = [m for m in received if m.kind in (ENCRYPTED_GRADIENT_KIND, MASKED_AGGREGATE_KIND)]
    if plain and encrypted:
        raise ValueError("the messages mix the plain and the paillier protocol; audit one run")
    updates = [m for m in received if m.kind == SOURCE_UPDATE_KIND]
    if plain:
        return _audit_plain(party, plain, batch_ids, labels)
    if encrypted:
        return _audit_encrypted(party, encrypted, batch_ids, labels, aggregate_gradients)
    if updates:
        return LeakageReport(
            party=party,
            protocol_view=VIEW_SOURCE_LAYER,
            n_samples=0,
            norm_auc=float("nan"),
            direction_auc=float("nan"),
            reason=(
                f"the party received {len(updates)} source-layer updates, all ciphertexts "
                "under the active party's key, and no plaintext gradient; the inversion "
                "attack on the ciphertexts is in inversion_auc"
            ),
            n_rounds=len(updates),
        )
    return LeakageReport(
        party=party,
        protocol_view=VIEW_NONE,
        n_samples=0,
        norm_auc=0.5,
        direction_auc=0.5,
        reason="the party received no training gradients: nothing to attack",
    )


def _audit_plain(party, messages, batch_ids, labels) -> LeakageReport:
    grads, ys = [], []
    for m in messages:
        if m.round is None:
            raise ValueError(f"a {m.kind!r} message has no round: its rows are unknown")
        g = np.asarray(m.payload["g"], dtype=np.float64)
        ids = list(batch_ids(m.round))
        if g.ndim != 2 or len(ids) != g.shape[0]:
            raise ValueError(
                f"round {m.round}: {g.shape[0] if g.ndim else 0} gradient rows but "
                f"{len(ids)} batch ids"
            )
        grads.append(g)
        ys.extend(_label_of(labels, i) for i in ids)
    g = np.concatenate(grads, axis=0)
    y = np.asarray(ys)
    return LeakageReport(
        party=party,
        protocol_view=VIEW_PLAIN,
        n_samples=len(y),
        norm_auc=norm_scoring_auc(g, y),
        direction_auc=direction_scoring_auc(g, y),
        reason=(
            f"the party received {len(y)} per-sample cut-layer gradients in plaintext "
            f"({len(messages)} rounds; every received gradient scored, labelled by its row "
            "id); norm and direction scoring as in Li et al. 2021"
        ),
        n_rounds=len(messages),
    )


def _audit_encrypted(party, messages, batch_ids, labels, aggregates) -> LeakageReport:
    rounds = sorted({m.round for m in messages if m.round is not None})
    n_samples = sum(len(batch_ids(r)) for r in rounds)
    reason = (
        "no per-sample plaintext gradient reached the party: the cut-layer gradients arrived "
        "encrypted under the active party's key; the plaintext it learns is its own "
        "aggregate gradient per batch, attacked by least squares in inversion_auc "
        "(norm/direction need per-sample values and are not run)"
    )
    batch_auc = None
    if aggregates:
        scores, counts = [], []
        for r in rounds:
            if r in aggregates:
                scores.append(float(np.linalg.norm(np.asarray(aggregates[r], dtype=np.float64))))
                counts.append(sum(_label_of(labels, i) for i in batch_ids(r)))
        if len(scores) >= 2:
            counts = np.asarray(counts)
            above = counts > np.median(counts)
            if above.any() and not above.all():
                batch_auc = roc_auc(above, np.asarray(scores))
        if batch_auc is None:
            reason += "; too few batches (or no spread in positives) for a batch-level score"
        else:
            reason += f"; batch-level score over {len(scores)} batches in batch_norm_auc"
    return LeakageReport(
        party=party,
        protocol_view=VIEW_ENCRYPTED,
        n_samples=n_samples,
        norm_auc=float("nan"),
        direction_auc=float("nan"),
        reason=reason,
        n_rounds=len(rounds),
        batch_norm_auc=batch_auc,
        batch_norm_meaning=BATCH_NORM_MEANING if batch_auc is not None else None,
    )


# --- attacks on aggregates and on the active party's view (the paillier protocols) ---------
INVERSION_MEANING = (
    "direction-attack AUC (one known positive) on per-sample values recovered by least "
    "squares from everything the passive received, against its own features/Jacobian, "
    "across all rounds"
)


def aggregate_inversion_auc(observations, labels: Mapping[str, int], width: int) -> float:
    """Aggregate inversion: per round the attacker knows a linear map ``A`` (its own
    Jacobian transposed, ``params x (rows * width)``) and the vector ``b`` it received
    (its batch-aggregate gradient, ``A @ delta``). Least squares (minimum norm) returns
    ``delta`` exactly whenever ``A`` has full column rank, i.e. when the party has at least
    rows x width parameters. The recovered per-sample rows are scored with the direction
    attack. ``observations``: iterable of ``(row_ids, A, b)``.
    """
    rows, ys = [], []
    for ids, a, b in observations:
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64).reshape(-1)
        delta, *_ = np.linalg.lstsq(a, b, rcond=None)
        rows.append(delta.reshape(len(ids), width))
        ys.extend(_label_of(labels, i) for i in ids)
    if not rows:
        return float("nan")
    return direction_scoring_auc(np.concatenate(rows), np.asarray(ys))


def ciphertext_values(data: bytes, public_key) -> np.ndarray:
    """Received ciphertext bytes as numbers the attacker can score: each ciphertext's top
    53 bits as a float in ``[0, 1)``, centred (what a party that treats the bytes as data
    sees)."""
    enc = EncryptedArray.from_bytes(data, public_key)
    bits = int(public_key.nsquare.bit_length())
    flat = [int(c) >> max(bits - 53, 0) for c in enc.values]
    return (np.asarray(flat, dtype=np.float64) / float(1 << 53) - 0.5).reshape(enc.shape)


def ciphertext_inversion_auc(
    received: Sequence[Message], rows_of: Callable[[int], Sequence[str]],
    labels: Mapping[str, int], public_key,
) -> float:
    """The inversion attack run on what a ``paillier`` passive receives: its per-row
    ``[[dP]]`` are positional (row ``k`` of the update belongs to the ``k``-th updated row),
    so the attacker's least-squares system is the identity and each row's ciphertext
    values are scored directly."""
    vecs, ys = [], []
    for m in received:
        if m.kind != "train.enc_update":
            continue
        v = ciphertext_values(m.payload["ct"], public_key)
        ids = list(rows_of(m.round))
        vecs.append(v.reshape(len(ids), -1))
        ys.extend(_label_of(labels, i) for i in ids)
    if not vecs:
        return float("nan")
    return direction_scoring_auc(np.concatenate(vecs), np.asarray(ys))


def full_batch_update_auc(received: Sequence[Message], rows: Sequence[str],
                          labels: Mapping[str, int], *, kind: str, public_key=None) -> float:
    """The direction attack on full-batch per-patient updates (the vertical Cox fit's
    ``cox.update``: one value per training row, in the aligned order ``rows``): every
    ``kind`` message a party received is one column of an ``(n, messages)`` matrix, plaintext
    (``dp``) as sent, ciphertexts (``ct``, under ``public_key``) as
    :func:`ciphertext_values` reads them; the rows are scored against one known positive."""
    cols = []
    for m in received:
        if m.kind != kind:
            continue
        if "ct" in m.payload:
            v = ciphertext_values(m.payload["ct"], public_key)
        else:
            v = np.asarray(m.payload["dp"], dtype=np.float64)
        cols.append(np.asarray(v, dtype=np.float64).reshape(len(rows), -1))
    if not cols:
        return float("nan")
    ys = np.asarray([_label_of(labels, i) for i in rows])
    return direction_scoring_auc(np.concatenate(cols, axis=1), ys)


def gram_recovery_error(
    log: Sequence[tuple], features: np.ndarray, n_train: int, width: int, tx,
    *, everywhere: bool,
) -> float:
    """What the active party learns of a passive's features from the embeddings it
    decrypts: ``X X^T`` over training rows.

    With a linear source layer, ``h_i(r) = x_i W0 + x_i X^T P(r)`` and the active party
    knows ``P(r)`` (it runs the passive's optimizer on its own deltas; under ``plain`` it
    can replay it the same way). Each row seen in two rounds gives ``width`` equations
    ``K_i (P(r2) - P(r1)) = h_i(r2) - h_i(r1)`` for the row ``K_i`` of the Gram matrix;
    least squares over all of a row's appearances recovers it. Returns the relative
    Frobenius error of the recovered Gram matrix over rows seen at least twice (1.0 means
    nothing recovered). ``log``: ``(round, positions, h, delta)`` in round order.
    """
    dual = DualCoefficients(n_train, width, tx, everywhere=everywhere)
    seen: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for _, positions, h, delta in log:
        p_before = np.asarray(dual.p, dtype=np.float64)
        for k, pos in enumerate(np.asarray(positions).tolist()):
            seen.setdefault(pos, []).append((p_before, np.asarray(h[k], dtype=np.float64)))
        dual.step(np.asarray(positions), np.asarray(delta))
    x = np.asarray(features, dtype=np.float64)
    err_num = err_den = 0.0
    for pos, obs in seen.items():
        if len(obs) < 2:
            continue
        a = np.concatenate([(p2 - p1).T for (p1, _), (p2, _) in zip(obs, obs[1:])])
        b = np.concatenate([h2 - h1 for (_, h1), (_, h2) in zip(obs, obs[1:])])
        k_hat, *_ = np.linalg.lstsq(a, b, rcond=None)
        k_true = x @ x[pos]
        err_num += float(np.sum((k_hat - k_true) ** 2))
        err_den += float(np.sum(k_true**2))
    return float(np.sqrt(err_num / err_den)) if err_den else float("nan")
