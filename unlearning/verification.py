"""Verification figures attached to every certificate.

* Membership inference (loss-threshold attack, Yeom et al. 2018): the attack scores each
  row by minus its loss. ``mia_auc_erased`` is the AUC separating the erased rows from a
  reference sample of never-seen (held-out) rows; ``mia_auc_unseen`` is the same AUC for an
  equally sized probe of *other* never-seen rows (what an erased row should look like).
  Both should be near 0.5; a bootstrap CI is given for their difference.
* Agreement with a retrain from scratch without the patients: maximum absolute parameter
  difference, prediction agreement and AUC difference on the test rows.
* Jia et al. 2023: forget / retain / test accuracy, MIA efficacy (share of erased rows a
  threshold attack fitted on retained-vs-test calls non-members) and run time.

The erased rows' features are used in memory only, by their holders, for the duration of
the request (they are already gone from every training table) and never written.
"""

from __future__ import annotations

import numpy as np

from unlearning.store import CheckpointStore
from vfl.core.metrics import auc

EPS = 1e-7


def bce(scores, labels) -> np.ndarray:
    p = np.clip(np.asarray(scores, float).reshape(len(labels), -1)[:, -1], EPS, 1 - EPS)
    y = np.asarray(labels, float)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def accuracy(scores, labels) -> float:
    if len(labels) == 0:
        return float("nan")
    p = np.asarray(scores, float).reshape(len(labels), -1)[:, -1]
    return float(np.mean((p >= 0.5).astype(int) == np.asarray(labels).astype(int)))


def heldout_figures(adapter, trainers: dict, ids) -> dict:
    """Test AUC and accuracy of the (averaged) models on ``ids``."""
    ids = list(ids)
    scores = np.asarray(adapter.scores(trainers, ids)).reshape(len(ids), -1)[:, -1]
    y = adapter.labels(ids)
    return {"test_auc": auc(scores[y == 1], scores[y == 0]),
            "test_accuracy": accuracy(scores, y)}


def flatten_state(tree) -> list[np.ndarray]:
    out = []
    if isinstance(tree, dict):
        for k in sorted(tree, key=str):
            out += flatten_state(tree[k])
    elif isinstance(tree, list | tuple):
        for x in tree:
            out += flatten_state(x)
    elif isinstance(tree, np.ndarray | np.generic):
        out.append(np.asarray(tree))
    return out


def comparable(adapter, states: dict[str, dict]) -> dict[str, dict]:
    """``states`` as two runs must agree on them: the adapter's ``comparable_state`` (the
    vertical adapter decrypts encrypted source layers; the ciphertexts, random shares and
    keys of two runs differ, the model does not)."""
    view = getattr(adapter, "comparable_state", None)
    return states if view is None else view(states)


def max_param_diff(a: dict[str, dict], b: dict[str, dict]) -> float:
    """Max |a - b| over every party's parameters and optimizer state (pass states through
    :func:`comparable` first when they may hold encrypted values)."""
    worst = 0.0
    for party in a:
        la = flatten_state({"p": a[party]["params"], "o": a[party]["opt_state"]})
        lb = flatten_state({"p": b[party]["params"], "o": b[party]["opt_state"]})
        if len(la) != len(lb):
            return float("inf")
        for x, y in zip(la, lb):
            if x.shape != y.shape:
                return float("inf")
            if x.size:
                worst = max(worst, float(np.max(np.abs(x.astype(float) - y.astype(float)))))
    return worst


def class_auc(pos, neg, y_pos, y_neg) -> float:
    """AUC within each label class, weighted by the positives' class counts (a class-aware
    attack: it compares a row only with rows of the same label)."""
    total, weight = 0.0, 0
    for c in np.unique(y_pos):
        a = auc(pos[y_pos == c], neg[y_neg == c])
        if a == a:
            n = int(np.sum(y_pos == c))
            total, weight = total + n * a, weight + n
    return total / weight if weight else float("nan")


def mia(losses_erased, losses_unseen, rng: np.random.Generator, labels_erased=None,
        labels_unseen=None, n_boot: int = 200, n_splits: int = 20) -> dict:
    """Loss-threshold MIA (class-aware). The never-seen rows are split at random into a
    reference half and a probe half, ``n_splits`` times: ``mia_auc_erased`` is the mean AUC
    of erased rows against the reference half, ``mia_auc_unseen`` the mean AUC of the probe
    half against it (the value a never-seen row gets). Bootstrap CI of the difference."""
    unseen = np.asarray(losses_unseen, float)
    er = np.asarray(losses_erased, float)
    y_un = np.zeros(len(unseen)) if labels_unseen is None else np.asarray(labels_unseen)
    y_er = np.zeros(len(er)) if labels_erased is None else np.asarray(labels_erased)
    half = len(unseen) // 2
    splits = [rng.permutation(len(unseen)) for _ in range(n_splits)]

    def pair(e_idx, split_list):
        a_e, a_p = [], []
        for perm in split_list:
            ref, probe = perm[:half], perm[half:]
            a_e.append(class_auc(-er[e_idx], -unseen[ref], y_er[e_idx], y_un[ref]))
            a_p.append(class_auc(-unseen[probe], -unseen[ref], y_un[probe], y_un[ref]))
        return float(np.mean(a_e)), float(np.mean(a_p))

    if not len(er):
        nan = float("nan")
        return {"mia_auc_erased": nan, "mia_auc_unseen": nan, "mia_auc_diff_ci95": [nan, nan],
                "n_erased": 0, "n_unseen": int(len(unseen))}
    a_er, a_un = pair(np.arange(len(er)), splits)
    diffs = []
    for _ in range(n_boot):
        e = rng.integers(0, len(er), len(er))
        perm = rng.permutation(len(unseen))
        x, y = pair(e, [perm])
        diffs.append(x - y)
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    return {"mia_auc_erased": a_er, "mia_auc_unseen": a_un,
            "mia_auc_diff_ci95": [float(lo), float(hi)], "n_erased": int(len(er)),
            "n_unseen": int(len(unseen))}


def mia_efficacy(loss_retain, loss_test, loss_erased) -> float:
    """Jia et al.: share of erased rows called non-members by a loss threshold fitted to
    separate retained (members) from test (non-members) rows."""
    if len(loss_erased) == 0:
        return float("nan")
    cands = np.unique(np.concatenate([loss_retain, loss_test]))
    best, thr = -1.0, float(np.median(loss_test))
    for t in cands[:: max(1, len(cands) // 200)]:
        bal = 0.5 * (np.mean(loss_retain <= t) + np.mean(loss_test > t))
        if bal > best:
            best, thr = bal, t
    return float(np.mean(np.asarray(loss_erased) > thr))


def figures(adapter, trainers: dict, erased: list[str], *, seed: int = 0,
            retrain: dict | None = None, seconds: float | None = None) -> dict:
    """Verification figures for ``trainers`` (the unlearned models), optionally against
    ``retrain`` ({"trainers", "seconds"}) from scratch. ``erased``: the rows to attack
    (the certificate passes every row erased from the run so far: one row alone gives no
    AUC, and the unlearned model must forget all of them)."""
    rng = np.random.default_rng(seed)
    split = adapter.split_ids()
    train, test = split["train"], split["test"]
    erased_train = adapter.training_ids(erased)
    sc = {k: adapter.scores(trainers, ids) if ids else np.zeros((0, 1))
          for k, ids in (("train", train), ("test", test), ("erased", erased_train))}
    lab = {k: adapter.labels(ids) if ids else np.zeros(0)
           for k, ids in (("train", train), ("test", test), ("erased", erased_train))}
    loss = {k: bce(sc[k], lab[k]) if len(lab[k]) else np.zeros(0) for k in sc}
    out = mia(loss["erased"], loss["test"], rng, lab["erased"], lab["test"])
    out |= {
        "forget_accuracy": accuracy(sc["erased"], lab["erased"]),
        "retain_accuracy": accuracy(sc["train"], lab["train"]),
        "test_accuracy": accuracy(sc["test"], lab["test"]),
        "test_auc": auc(sc["test"].reshape(len(test), -1)[:, -1][lab["test"] == 1],
                        sc["test"].reshape(len(test), -1)[:, -1][lab["test"] == 0]),
        "mia_efficacy": mia_efficacy(loss["train"], loss["test"], loss["erased"]),
        "mia_auc_retained": auc(-loss["train"], -loss["test"]),
        "erased_training_rows": len(erased_train),
        "run_time_seconds": seconds,
    }
    if retrain is not None:
        rt = retrain["trainers"]
        diffs = [max_param_diff(comparable(adapter, adapter.final_state(trainers[m])),
                                comparable(adapter, adapter.final_state(rt[m])))
                 for m in rt]
        s_rt = adapter.scores(rt, test)
        p_u = sc["test"].reshape(len(test), -1)[:, -1]
        p_r = np.asarray(s_rt).reshape(len(test), -1)[:, -1]
        y = lab["test"]
        out |= {
            "max_abs_param_diff_vs_retrain": max(diffs) if diffs else 0.0,
            "prediction_agreement": float(np.mean((p_u >= 0.5) == (p_r >= 0.5))),
            "max_abs_score_diff": float(np.max(np.abs(p_u - p_r))) if len(p_u) else 0.0,
            "auc_diff_vs_retrain": out["test_auc"] - auc(p_r[y == 1], p_r[y == 0]),
            "retrain_seconds": retrain["seconds"],
        }
    return out


def checkpoints_free_of(store: CheckpointStore, lineage, pids) -> list[str]:
    """Checkpoints on disk that the patients influenced (must be empty after erasure):
    via lineage, and every indexed blob's hash checked."""
    bad = [f"hash: {p}" for p in store.verify()]
    inf = lineage.influenced(pids)
    for model, rounds in inf["checkpoints"].items():
        bad += [f"lineage: {model}@{r}" for r in rounds]
    return bad
