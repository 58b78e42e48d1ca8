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

from vfl import metrics
from vfl.errors import ConfigError

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
        labels = np.asarray(labels)
        if self.kind == "binary":
            values = set(np.unique(labels).tolist())
            if not values <= {0, 1}:
                raise ConfigError(f"binary labels must be 0/1, got values {sorted(values)[:5]}")
            return labels.astype(np.float32)
        if self.kind == "multiclass":
            if labels.min() < 0 or labels.max() >= self.n_classes:
                raise ConfigError(f"class labels must be in [0, {self.n_classes})")
            return labels.astype(np.int32)
        return labels.astype(np.float32)

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
