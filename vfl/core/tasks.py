"""Learning tasks: loss, output width, prediction transform and metrics.

Losses are Optax's; they are averaged over the real rows of a batch (``mask`` removes the
padding rows that keep every batch the same shape, so each step compiles once).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vfl.core import metrics
from vfl.core.errors import (
    ConfigError,
    LabelValueError,
    NonFiniteLabelError,
    NonIntegerClassLabelError,
)

TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class Task:
    kind: str
    n_classes: int | None = None

    def __post_init__(self):
        if self.kind not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.kind!r}")
        if self.kind == "multiclass" and (self.n_classes is None or self.n_classes < 2):
            raise ConfigError("a multiclass task needs n_classes >= 2")

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.kind == "multiclass" else 1

    def loss(self, logits, labels, mask):
        """Mean loss over real rows; ``logits`` (B, n_outputs), ``labels`` (B,)."""
        if self.kind == "binary":
            per_row = optax.sigmoid_binary_cross_entropy(logits[:, 0], labels.astype(logits.dtype))
        elif self.kind == "multiclass":
            per_row = optax.softmax_cross_entropy_with_integer_labels(
                logits, labels.astype(jnp.int32)
            )
        else:
            per_row = 0.5 * optax.squared_error(logits[:, 0], labels.astype(logits.dtype))
        return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    def predict(self, logits):
        """Probabilities of the positive class / class probabilities / values."""
        if self.kind == "binary":
            return jax.nn.sigmoid(logits[:, 0])
        if self.kind == "multiclass":
            return jax.nn.softmax(logits, axis=-1)
        return logits[:, 0]

    def check_labels(self, labels: np.ndarray) -> np.ndarray:
        """Labels as the loss expects them; values that do not fit the task raise a
        :class:`~vfl.core.errors.LabelValueError` (never a silent cast)."""
        labels = np.asarray(labels)
        if labels.dtype == bool:
            labels = labels.astype(np.int32)
        if labels.dtype == object and all(
            isinstance(v, int | float | np.number) for v in labels.ravel()
        ):  # e.g. a pandas nullable integer column
            labels = labels.astype(np.float64)
        if labels.dtype.kind not in "iuf":
            raise LabelValueError(
                f"labels have dtype {labels.dtype}; a {self.kind} task needs numeric labels. "
                "Encode the classes as 0..k-1 (or 0/1) first."
            )
        if labels.dtype.kind == "f" and not np.isfinite(labels).all():
            bad = int((~np.isfinite(labels)).sum())
            raise NonFiniteLabelError(
                f"{bad} labels are NaN or infinite; drop or fix those rows before training"
            )
        if self.kind == "binary":
            values = set(np.unique(labels).tolist())
            if not values <= {0, 1}:
                raise LabelValueError(
                    f"binary labels must be 0/1, got values {sorted(values)[:5]}"
                )
            return labels.astype(np.float32)
        if self.kind == "multiclass":
            if len(labels) and labels.dtype.kind == "f":
                frac = labels != np.round(labels)
                if frac.any():
                    raise NonIntegerClassLabelError(
                        f"{int(frac.sum())} class labels are not whole numbers (e.g. "
                        f"{float(labels[frac][0])!r}); class labels must be the integers "
                        f"0..{self.n_classes - 1}. Re-encode them; they are never rounded."
                    )
            if len(labels) and (labels.min() < 0 or labels.max() >= self.n_classes):
                raise LabelValueError(f"class labels must be in [0, {self.n_classes})")
            return labels.astype(np.int32)
        with np.errstate(over="ignore"):
            out = labels.astype(np.float32)
        if not np.isfinite(out).all():
            raise NonFiniteLabelError(
                f"regression labels up to {float(np.abs(labels).max()):.3g} overflow float32; "
                "rescale the target (other units, or a log) before training"
            )
        return out

    def evaluate(self, scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        scores, labels = np.asarray(scores), np.asarray(labels)
        if self.kind == "binary":
            return {
                "auc": metrics.roc_auc(labels, scores),
                "accuracy": metrics.accuracy(labels, (scores >= 0.5).astype(int)),
                "log_loss": metrics.log_loss(labels, scores),
            }
        if self.kind == "multiclass":
            return {
                "accuracy": metrics.accuracy(labels, scores.argmax(axis=1)),
                "log_loss": metrics.log_loss(labels, scores),
                "auc": metrics.roc_auc_ovr(labels, scores),
            }
        return {"rmse": metrics.rmse(labels, scores)}
