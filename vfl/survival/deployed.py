"""The vertical Cox fit deployed across machines (:mod:`vfl.deploy`, ``vfl deploy node --mode
cox`` and the ServerApp's ``cox`` job).

The node side (:func:`make_party`) reads everything from the organization's own command
line: its data file, id column, the outcome columns ``time,event`` (the hospital only) and
its security policy. The coordinator side (:func:`run_job`) is the same code as in one
process: PSI, then :class:`~vfl.survival.federated.VerticalCox` over the transport, then
the held-out evaluation. Each party then writes its own released model to its own disk
(``deploy.save``): its columns, coefficients per original unit, their covariance and its
scaler; the hospital adds the Breslow baseline hazard.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from vfl.core import wire
from vfl.core.errors import ConfigError, ProtocolError
from vfl.core.fileio import atomic_write
from vfl.core.rounds import erase_for_job
from vfl.core.table import PartyTable
from vfl.survival.config import CoxConfig
from vfl.survival.federated import VerticalCox
from vfl.survival.parties import CoxActiveParty, CoxPassiveParty
from vfl.vertical.deployed import policy_from

#: The file a party writes its released model to, in its own output directory.
MODEL_FILE = "cox_model.msgpack"


def make_party(options: dict):
    """The Cox party a node serves, and how it saves its model (``deploy.save``)."""
    table = PartyTable.from_file(options["data"], options["id_column"],
                                 options.get("label_column"))
    cls = CoxActiveParty if table.has_labels else CoxPassiveParty
    return cls(options["party"], table, policy=policy_from(options)), save_model


def save_model(party, out_dir: Path) -> dict:
    """Write the party's released model to its own disk; say where and its digest."""
    if getattr(party, "beta", None) is None:
        raise ProtocolError(f"{party.name!r} has no released Cox model to save yet")
    scale = np.asarray(party.scaler.scale, dtype=np.float64)
    tree = {"party": party.name, "columns": list(party.table.columns),
            "coef": np.asarray(party.beta) / scale, "coef_std": np.asarray(party.beta),
            "mean": np.asarray(party.scaler.mean, dtype=np.float64), "scale": scale}
    baseline = getattr(party, "baseline", None)
    if baseline is not None:
        tree["baseline"] = {"times": np.asarray(baseline.times),
                            "cumulative_hazard": np.asarray(baseline.cumulative_hazard)}
    data = wire.dumps(tree)
    path = Path(out_dir) / MODEL_FILE
    atomic_write(path, data)
    return {"file": str(path), "sha256": hashlib.sha256(data).hexdigest()}


def load_model(path: str | Path) -> dict:
    """A model file :func:`save_model` wrote, as a tree."""
    return wire.loads(Path(path).read_bytes())


def run_job(transport, config: dict, log=print) -> dict:
    """PSI, the vertical Cox fit and its held-out evaluation over ``transport``.

    ``config``: ``parties`` (the hospital first, or named as ``active``), ``train`` (a
    :class:`~vfl.survival.config.CoxConfig` as JSON), optional ``evaluate`` (splits,
    default ``["test"]`` when the config holds patients out) and ``erase`` (patient ids
    every party deletes before alignment: an exact erasure, fitted again through the
    deployment)."""
    parties = list(config["parties"])
    active = config.get("active", parties[0])
    if active not in parties:
        raise ConfigError(f"active party {active!r} is not among the parties {parties}")
    cox = CoxConfig.from_json(config.get("train", {}))
    fed = VerticalCox.over(transport, active, [p for p in parties if p != active], cox)
    erased = erase_for_job(fed.coordinator, parties, config, log)
    log(f"aligning {len(parties)} parties (PSI)")
    aligned = fed.align().size
    log(f"{aligned} patients aligned; fitting ({cox.protocol})")
    fit = fed.fit(progress=False)
    for h in fit.history:
        log(f"round {h['round'] + 1}: loss {h['loss']:.6f}, ranks {h.get('ranks')}")
    splits = config.get("evaluate", ["test"] if cox.test_fraction > 0 else ["train"])
    metrics = {}
    for split in splits:
        m = fed.evaluate(split)
        metrics[split] = {k: v for k, v in m.items() if k != "eta"}
        log(f"{split}: C-index {m['c_index']}")
    return {"aligned": int(aligned), "rounds": fit.rounds,
            "neg_log_likelihood": fit.neg_log_likelihood, "coefficients": fit.table(),
            "metrics": metrics, "erased": erased, "sizes": fed.sizes}
