"""Shadow-model membership inference (Shokri et al. 2017) for unlearning verification.

The loss-threshold attack in :mod:`unlearning.verification` asks "is this row's loss lower
than a never-seen row's?". A shadow-model attack *learns* what membership looks like in the
model's output: it trains models like the target on rows whose membership it knows, then
fits an attack classifier on their outputs (member / non-member) and applies it to the
target's outputs.

Attacker's assumed knowledge (stated because the figures mean nothing without it):

* the training procedure: the run manifest (model family, hyper-parameters, federation
  layout, arrival waves, SISA shards). The shadows are trained by the *same* adapter and
  trainer as the target, only the seed and the training rows differ. This is the strong,
  white-box-procedure attacker an auditor should assume, not a weaker outsider;
* black-box access to the target's output (its score) for any row, and the row's label;
* a sample from the population, disjoint from the target's training set: a share
  (``attacker_fraction``) of the run's never-seen (held-out) rows.

The attacker does *not* know which rows the target trained on, and never trains on a probe
row. The probes are: the erased rows (training rows before their erasure), the rest of the
never-seen rows (the reference and the probe of what "never seen" looks like) and the rows
still in training (the members, a sanity check that the attack finds anything at all).

Procedure (deterministic given ``seed``):

1. split the never-seen rows at random into the attacker's pool and the evaluation rows;
2. for each of K shadows, shuffle the pool and split it into halves: "shadow-in" (the shadow
   trains on exactly these: an adapter built with every other row erased and
   ``test_fraction=0``) and "shadow-out";
3. attack features from a model's output for a row and its label: the predicted probability
   of the true label, its log (minus the loss) and the entropy of the prediction;
4. attack model: a small L2-regularized logistic regression per label class (Shokri et al.
   train one per class), fitted on shadow-in (member) vs shadow-out rows of every shadow;
   a class with too few rows falls back to one model fitted on all classes;
5. apply it to the target model's outputs. ``auc_erased`` / ``auc_unseen`` are built exactly
   as the loss-threshold figures (:func:`unlearning.verification.mia`: class-aware AUC
   against a reference half of the evaluation rows, averaged over random halvings, with a
   bootstrap CI of the difference) with the attack's membership score in place of minus
   the loss; ``auc_members`` is the class-aware AUC of the retained training rows against
   all evaluation rows.

Caveat: the shadows train on about ``attacker_fraction / 2`` of the never-seen rows, far
fewer than the target's training rows, with the same number of epochs (so fewer steps).
Their generalization gap differs from the target's; the attack's *ranking* (all an AUC
reads) transfers, its calibration does not, so only AUCs are reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from unlearning.errors import ShadowAttackError
from unlearning.verification import class_auc, mia

EPS = 1e-7
MIN_SHADOW_ROWS = 10  # per shadow side (in / out): fewer and the shadow learns nothing
MIN_EVAL_ROWS = 10  # never-seen rows kept for the probes (reference + probe halves)
MIN_CLASS_ROWS = 5  # per class and side, for a per-class attack model


# -- attack features ---------------------------------------------------------------------------
def class_probabilities(scores, n_rows: int) -> np.ndarray:
    """(n, C) probabilities. One score column is P(label 1) of a binary task (as
    :func:`unlearning.verification.bce` reads it); several are class probabilities."""
    s = np.asarray(scores, float).reshape(n_rows, -1)
    if s.shape[1] == 1:
        s = np.column_stack([1.0 - s[:, 0], s[:, 0]])
    return np.clip(s, EPS, 1.0 - EPS)


def integer_labels(labels) -> np.ndarray:
    y = np.asarray(labels)
    if y.size and not np.all(np.equal(np.mod(y.astype(float), 1), 0)):
        raise ShadowAttackError(
            "the shadow-model attack needs class labels (a binary or multiclass task); "
            "these labels are not integers"
        )
    return y.astype(int)


def attack_features(scores, labels) -> np.ndarray:
    """Per row: P(true label), log P(true label) (= minus the loss) and the prediction's
    entropy. The log spreads out the confident end where members sit; entropy sees
    confidence regardless of correctness."""
    y = integer_labels(labels)
    probs = class_probabilities(scores, len(y))
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ShadowAttackError(
            f"labels run over {sorted(set(y.tolist()))[:5]} but the model outputs "
            f"{probs.shape[1]} classes"
        )
    p_true = probs[np.arange(len(y)), y]
    entropy = -np.sum(probs * np.log(probs), axis=1)
    return np.column_stack([p_true, np.log(p_true), entropy])


# -- attack model ------------------------------------------------------------------------------
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> np.ndarray:
    """Weights (bias first) of an L2-regularized logistic regression by Newton's method:
    3 features, a few hundred rows, so exact and deterministic beats an optimizer loop.
    The bias is not penalized."""
    xb = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(xb.shape[1])
    penalty = np.full(xb.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) / len(y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb / len(y) + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


@dataclass(frozen=True)
class AttackModel:
    mean: np.ndarray  # feature standardization, from the shadows' rows
    scale: np.ndarray
    overall: np.ndarray  # weights fitted on every class together (fallback)
    per_class: dict[int, np.ndarray]

    def membership_scores(self, features: np.ndarray, labels) -> np.ndarray:
        """Attack logit per row: higher means "more member-like"."""
        y = integer_labels(labels)
        x = np.column_stack([np.ones(len(y)), (features - self.mean) / self.scale])
        out = np.empty(len(y))
        for c in np.unique(y):
            rows = y == c
            out[rows] = x[rows] @ self.per_class.get(int(c), self.overall)
        return out


def fit_attack(features: np.ndarray, member: np.ndarray, labels) -> AttackModel:
    """Per-class logistic attack models on shadow rows (``member`` 1 = shadow-in)."""
    y = integer_labels(labels)
    mean = features.mean(axis=0)
    scale = np.where(features.std(axis=0) > 1e-12, features.std(axis=0), 1.0)
    z = (features - mean) / scale
    per_class = {}
    for c in np.unique(y):
        rows = y == c
        n_in, n_out = int(member[rows].sum()), int((1 - member[rows]).sum())
        if min(n_in, n_out) >= MIN_CLASS_ROWS:
            per_class[int(c)] = fit_logistic(z[rows], member[rows])
    return AttackModel(mean, scale, fit_logistic(z, member), per_class)


# -- shadows -----------------------------------------------------------------------------------
def check_sizes(n_unseen: int, shadow_models: int, attacker_fraction: float) -> tuple[int, int]:
    """(attacker pool rows, evaluation rows), or a :class:`ShadowAttackError` saying what
    to change."""
    if shadow_models < 1:
        raise ShadowAttackError(f"shadow_models must be >= 1, got {shadow_models}")
    if not 0.0 < attacker_fraction < 1.0:
        raise ShadowAttackError(
            f"attacker_fraction must be in (0, 1), got {attacker_fraction}: the attacker's "
            "pool and the evaluation rows both come from the never-seen rows"
        )
    n_pool = int(round(attacker_fraction * n_unseen))
    n_eval = n_unseen - n_pool
    if n_pool // 2 < MIN_SHADOW_ROWS or n_eval < MIN_EVAL_ROWS:
        need = max(int(np.ceil(2 * MIN_SHADOW_ROWS / attacker_fraction)),
                   int(np.ceil(MIN_EVAL_ROWS / (1.0 - attacker_fraction))))
        raise ShadowAttackError(
            f"too few never-seen rows for the shadow-model attack: {n_unseen} give the "
            f"attacker {n_pool} (each shadow needs {MIN_SHADOW_ROWS} in and "
            f"{MIN_SHADOW_ROWS} out) and leave {n_eval} for the probes (need "
            f"{MIN_EVAL_ROWS}); at attacker_fraction={attacker_fraction} it needs at least "
            f"{need}. Hold out more rows (a larger test_fraction) or change attacker_fraction"
        )
    return n_pool, n_eval


def shadow_adapter(adapter, train_ids, seed: int):
    """An adapter of the same run whose trainers train on exactly ``train_ids``: every
    other row counts as erased (the registered adapter contract), nothing is held out,
    and the shadow gets its own seed (initialization and batch order)."""
    spec = dict(adapter.spec)
    spec["config"] = {**spec["config"], "seed": int(seed), "test_fraction": 0.0}
    every_row = {str(i) for t in adapter.full_tables.values() for i in t.ids}
    return type(adapter)(spec, adapter.original_aligned,
                           every_row - {str(i) for i in train_ids})


def train_shadow(adapter, train_ids, seed: int):
    """(shadow adapter, its trained trainers), through the run's own trainer."""
    shadow = shadow_adapter(adapter, train_ids, seed)
    trainers = {}
    for model in shadow.models():
        trainers[model] = shadow.trainer(model)
        shadow.fit(model, trainers[model], None, None)
    return shadow, trainers


def shadow_rows(adapter, pool: list[str], shadow_models: int, rng: np.random.Generator):
    """Attack training data: features, membership and labels of every shadow's in and out
    rows, each shadow on its own random halving of the pool."""
    feats, member, labels = [], [], []
    half = len(pool) // 2
    for _ in range(shadow_models):
        perm = rng.permutation(len(pool))
        shadow_in = [pool[i] for i in perm[:half]]
        shadow_out = [pool[i] for i in perm[half: 2 * half]]
        shadow, trainers = train_shadow(adapter, shadow_in, int(rng.integers(2**31 - 1)))
        for ids, is_member in ((shadow_in, 1.0), (shadow_out, 0.0)):
            y = adapter.labels(ids)
            feats.append(attack_features(shadow.scores(trainers, ids), y))
            member.append(np.full(len(ids), is_member))
            labels.append(y)
    return np.concatenate(feats), np.concatenate(member), np.concatenate(labels)


# -- the attack --------------------------------------------------------------------------------
def shadow_attack(adapter, trainers: dict, erased, *, shadow_models: int = 4,
                  attacker_fraction: float = 0.5, seed: int = 0, n_splits: int = 20,
                  n_boot: int = 200) -> dict:
    """Shadow-model MIA on the target ``trainers`` (the unlearned models of ``adapter``).

    ``erased``: the erased patient ids (those that were training rows are attacked).
    Returns ``auc_erased`` and ``auc_unseen`` (both ~0.5 when the erasure worked),
    ``auc_diff_ci95``, ``auc_members`` (retained training rows; > 0.5 means the attack
    finds membership in this model at all), ``auc_shadow`` (the attack on its own shadow
    rows, in-sample) and the row counts."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    split = adapter.split_ids()
    unseen = sorted(str(i) for i in split["test"])
    n_pool, _ = check_sizes(len(unseen), shadow_models, attacker_fraction)
    perm = rng.permutation(len(unseen))
    pool = [unseen[i] for i in perm[:n_pool]]
    evaluation = [unseen[i] for i in perm[n_pool:]]
    erased_rows = adapter.training_ids(erased)
    gone = set(erased_rows)
    members = [str(i) for i in split["train"] if str(i) not in gone]

    feats, member, shadow_labels = shadow_rows(adapter, pool, shadow_models, rng)
    attack = fit_attack(feats, member, shadow_labels)
    shadow_scores = attack.membership_scores(feats, shadow_labels)
    in_rows = member == 1

    def target_scores(ids):
        if not ids:
            return np.zeros(0), np.zeros(0, int)
        y = adapter.labels(ids)
        return attack.membership_scores(attack_features(adapter.scores(trainers, ids), y),
                                        y), integer_labels(y)

    s_er, y_er = target_scores(erased_rows)
    s_ev, y_ev = target_scores(evaluation)
    s_mem, y_mem = target_scores(members)
    # verification.mia ranks rows by minus their loss; passing minus the membership score
    # as the "loss" gives the identical construction for the shadow attack's scores.
    figs = mia(-s_er, -s_ev, rng, y_er, y_ev, n_boot=n_boot, n_splits=n_splits)
    return {
        "auc_erased": figs["mia_auc_erased"],
        "auc_unseen": figs["mia_auc_unseen"],
        "auc_diff_ci95": figs["mia_auc_diff_ci95"],
        "auc_members": class_auc(s_mem, s_ev, y_mem, y_ev),
        "auc_shadow": class_auc(shadow_scores[in_rows], shadow_scores[~in_rows],
                                shadow_labels[in_rows], shadow_labels[~in_rows]),
        "shadow_models": shadow_models,
        "attacker_rows": n_pool,
        "shadow_train_rows": n_pool // 2,
        "n_erased": len(erased_rows),
        "n_unseen_eval": len(evaluation),
        "n_members": len(members),
        "seconds": time.perf_counter() - t0,
    }


def attack_run(run, erased, **kwargs) -> dict:
    """:func:`shadow_attack` on a run directory's published (unlearned) models."""
    adapter, trainers = run.final_trainers()
    return shadow_attack(adapter, trainers, erased, **kwargs)
