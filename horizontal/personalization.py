"""Personalization: FedPer and local fine-tuning, and their per-client evaluation.

* **FedPer** (Arivazhagan et al. 2019), ``FedConfig(personalization="fedper")``: the output
  layer ("head") of each client never leaves the client; only the shared body is sent,
  aggregated and broadcast (the server's copy of the head coordinates is unused). A
  client evaluates with the global body and its own head (``model="personal"``).
* **Local fine-tuning**: after federated training each client trains the global model a
  few more epochs on its own rows and keeps the result (``model="finetuned"``).

:func:`compare` evaluates, on each client's own held-out rows, the global model against the
personalized ones; the gain per client is what personalization buys each hospital.
"""

from __future__ import annotations

import numpy as np

from horizontal.trainer import FederatedTrainer


def compare(trainer: FederatedTrainer, *, finetune_epochs: int = 2,
            finetune_lr: float | None = None, metric: str = "auc") -> dict:
    """Per-client ``metric`` of the global, FedPer (if trained so) and fine-tuned models."""
    out: dict[str, dict[str, float]] = {}
    glob = trainer.evaluate("global")["per_client"]
    for c, m in glob.items():
        out.setdefault(c, {})["global"] = m[metric]
    if trainer.config.personalization == "fedper":
        for c, m in trainer.evaluate("personal")["per_client"].items():
            out[c]["fedper"] = m[metric]
    if finetune_epochs:
        trainer.finetune(finetune_epochs, finetune_lr)
        for c, m in trainer.evaluate("finetuned")["per_client"].items():
            out[c]["finetuned"] = m[metric]
    means = {k: float(np.nanmean([v[k] for v in out.values() if k in v]))
             for k in next(iter(out.values()))}
    return {"per_client": out, "mean": means}
