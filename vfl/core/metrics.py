"""Evaluation metrics in numpy (no scikit-learn needed at run time)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic (ties get half credit)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (for plots)."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, y = np.asarray(scores)[order], labels[order]
    distinct = np.r_[np.where(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr


def roc_auc_ovr(labels, probs) -> float:
    """Macro one-vs-rest AUC for multi-class probabilities."""
    labels = np.asarray(labels)
    aucs = [roc_auc(labels == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def accuracy(labels, predictions) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def log_loss(labels, probs, eps: float = 1e-7) -> float:
    probs = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    labels = np.asarray(labels)
    if probs.ndim == 1:
        return float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))
    return float(-np.mean(np.log(probs[np.arange(len(labels)), labels.astype(int)])))


def rmse(labels, predictions) -> float:
    diff = np.asarray(labels, dtype=np.float64) - np.asarray(predictions, dtype=np.float64)
    return float(np.sqrt(np.mean(diff**2)))


def auc(pos, neg) -> float:
    """P(score(pos) > score(neg)) + 0.5 P(tie) (Mann-Whitney)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
