"""One vertical experiment: align, train the split model, and compare it with the active
party alone and with a centralized model on pooled data (the upper bound).

All three use the same trainer, model family, seed, split and schedule, so the comparison
isolates what the other parties' columns add. The centralized model is a simulation-only
baseline: it pools columns that in reality never leave their parties.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from vfl.attacks.label_leakage import (
    INVERSION_MEANING,
    LeakageReport,
    aggregate_inversion_auc,
    audit_label_leakage,
    capture_received,
    ciphertext_inversion_auc,
    gram_recovery_error,
)
from vfl.core.metrics import roc_curve
from vfl.core.optim import make_optimizer
from vfl.core.table import PartyTable
from vfl.vertical.config import SecurityPolicy, TrainConfig
from vfl.vertical.federation import Federation
from vfl.vertical.source_layer import update_rows_everywhere
from vfl.vertical.trainer import CheckpointCallback, SplitTrainer, TrainHistory


@dataclass
class ModelResult:
    metrics: dict[str, float]
    history: TrainHistory
    scores: np.ndarray
    labels: np.ndarray
    seconds: float

    def roc(self) -> tuple[np.ndarray, np.ndarray, float]:
        fpr, tpr = roc_curve(self.labels, self.scores)
        return fpr, tpr, self.metrics.get("auc", float("nan"))


@dataclass
class VerticalRun:
    federation: Federation
    trainer: SplitTrainer
    aligned_rows: int
    align_seconds: float
    results: dict[str, ModelResult] = field(default_factory=dict)
    plain: SplitTrainer | None = None  # the plain-protocol twin of an encrypted run
    audits: dict[str, dict[str, LeakageReport]] = field(default_factory=dict)
    #: per protocol and passive: relative error of the active party's Gram recovery
    gram: dict[str, dict[str, float]] = field(default_factory=dict)


def train_and_evaluate(
    trainer: SplitTrainer,
    *,
    progress: bool,
    description: str,
    on_round_end: CheckpointCallback | None = None,
) -> ModelResult:
    t0 = time.perf_counter()
    history = trainer.fit(
        eval_every_epoch=True,
        progress=progress,
        description=description,
        on_round_end=on_round_end,
    )
    ev = trainer.evaluate("test", with_scores=True)
    return ModelResult(ev["metrics"], history, ev["scores"], ev["labels"], time.perf_counter() - t0)


def pooled_table(tables: dict[str, PartyTable], active: str, ids) -> PartyTable:
    """All parties' columns side by side on ``ids`` (simulation-only baseline)."""
    ids = list(ids)
    parts = [tables[active].rows(ids)] + [tables[n].rows(ids) for n in tables if n != active]
    names = [active] + [n for n in tables if n != active]
    columns = tuple(f"{n}:{c}" for n, t in zip(names, parts) for c in t.columns)
    features = np.concatenate([t.features for t in parts], axis=1)
    return PartyTable(parts[0].ids, features, columns, parts[0].labels, parts[0].label_name)


def single_party_trainer(table: PartyTable, name: str, ids, config: TrainConfig) -> SplitTrainer:
    # One party: nothing crosses a boundary, so there is nothing to encrypt.
    config = dataclasses.replace(config, protocol="plain")
    fed = Federation.from_tables({name: table}, name)
    fed.set_alignment(ids)
    return SplitTrainer(fed, config)


def run_vertical_comparison(
    tables: dict[str, PartyTable],
    active: str,
    config: TrainConfig,
    *,
    progress: bool = True,
    baselines: bool = True,
    compare_plain: bool = True,
    on_round_end: CheckpointCallback | None = None,
    audit: bool = True,
    policy: SecurityPolicy | None = None,
) -> VerticalRun:
    # Every party's operator pins the protocol and key length the run was configured with.
    policy = policy if policy is not None else SecurityPolicy.pinned(config)
    fed = Federation.from_tables(tables, active, policy=policy)
    t0 = time.perf_counter()
    alignment = fed.align(progress=progress)
    align_seconds = time.perf_counter() - t0
    trainer = SplitTrainer(fed, config)
    run = VerticalRun(fed, trainer, alignment.size, align_seconds)
    views = {p: capture_received(fed.transport, p) for p in fed.passives}
    fed.parties[active].record_view = audit
    run.results["vfl"] = train_and_evaluate(
        trainer, progress=progress, description="vertical", on_round_end=on_round_end
    )
    if audit:
        run.audits[config.protocol] = audit_passives(fed, views)
        run.gram[config.protocol] = audit_active(fed)
    if config.protocol != "plain" and compare_plain:
        # The same model under plain split learning, for the equality check and the audit.
        plain_config = dataclasses.replace(config, protocol="plain")
        plain_fed = Federation.from_tables(
            tables, active, policy=SecurityPolicy.pinned(plain_config)
        )
        plain_fed.reuse_alignment(fed)
        run.plain = SplitTrainer(plain_fed, plain_config)
        plain_views = {p: capture_received(plain_fed.transport, p) for p in plain_fed.passives}
        plain_fed.parties[active].record_view = audit
        run.results["vfl_plain"] = train_and_evaluate(
            run.plain, progress=progress, description="vertical (plain)"
        )
        if audit:
            run.audits["plain"] = audit_passives(plain_fed, plain_views)
            run.gram["plain"] = audit_active(plain_fed)
    if baselines:
        # The hospital knows the aligned ids (it took part in PSI); the baselines use the same
        # rows, the same hash-derived split and the same schedule.
        ids = fed.parties[active].aligned_ids
        local = single_party_trainer(tables[active], active, ids, config)
        run.results["local_only"] = train_and_evaluate(
            local, progress=progress, description=f"{active} only"
        )
        central = single_party_trainer(pooled_table(tables, active, ids), active, ids, config)
        run.results["centralized"] = train_and_evaluate(
            central, progress=progress, description="centralized"
        )
    return run


def audit_passives(fed: Federation, views: dict[str, list]) -> dict[str, LeakageReport]:
    """Label-inference attacks on exactly what each passive party received.

    The ground-truth labels are the auditor's (simulation) view; each passive's batch ids,
    features, Jacobians, keys and unmasked aggregates are its own local knowledge. Every
    report carries the aggregate-inversion AUC (least squares of what it received against
    what it knows), whatever the protocol.
    """
    active = fed.parties[fed.active]
    labels = dict(zip(active.train_rows.ids, active.train_rows.labels.tolist()))
    reports = {}
    for name, received in views.items():
        party = fed.parties[name]
        report = audit_label_leakage(
            received,
            party.schedule.round_ids,
            labels,
            party=name,
            aggregate_gradients=getattr(party, "learned_aggregates", None),
        )
        config = party.config
        width = config.model.embedding_width(config.task.n_outputs)
        if config.protocol == "plain":
            inversion = report.direction_auc  # per-sample gradients: the system is identity
        elif config.protocol == "paillier":
            everywhere = update_rows_everywhere(config.passive_optimizer_name, config.weight_decay)
            all_ids = list(party.train_rows.ids)

            def rows_of(r, party=party, everywhere=everywhere, all_ids=all_ids):
                return all_ids if everywhere else party.schedule.round_ids(r)

            inversion = ciphertext_inversion_auc(
                received, rows_of, labels, party.source.public_key
            )
        else:
            inversion = aggregate_inversion_auc(party.inversion_observations(), labels, width)
        report.inversion_auc = inversion
        report.inversion_meaning = INVERSION_MEANING
        reports[name] = report
    return reports


def audit_active(fed: Federation) -> dict[str, float]:
    """Gram recovery: the relative error with which the active party recovers each
    passive's ``X X^T`` (training rows) from the embeddings it saw and its own deltas."""
    active = fed.parties[fed.active]
    config = active.config
    tx = make_optimizer(config.passive_optimizer_name, config.learning_rate, config.weight_decay)
    everywhere = update_rows_everywhere(config.passive_optimizer_name, config.weight_decay)
    width = config.model.embedding_width(config.task.n_outputs)
    out = {}
    for name in fed.passives:
        passive = fed.parties[name]
        out[name] = gram_recovery_error(
            active.embedding_log.get(name, []), passive.x_train, len(passive.train_rows.ids),
            width, tx, everywhere=everywhere,
        )
    return out


AUDIT_COLUMNS = [
    "protocol",
    "party",
    "what it received",
    "norm AUC",
    "direction AUC",
    "inversion AUC",
    "Gram error (active)",
]


def _na(x):
    return "n/a" if x is None or (isinstance(x, float) and x != x) else x


def audit_rows(run: VerticalRun) -> list[list]:
    """Per protocol and passive: the label attacks on what the passive received, and how
    well the active party recovers that passive's Gram matrix from what it received."""
    return [
        [
            protocol,
            name,
            r.protocol_view,
            _na(r.norm_auc),
            _na(r.direction_auc),
            _na(r.inversion_auc),
            _na(run.gram.get(protocol, {}).get(name)),
        ]
        for protocol, reports in sorted(run.audits.items(), key=lambda kv: kv[0] != "plain")
        for name, r in reports.items()
    ]


def leakage_json(run: VerticalRun) -> dict:
    """``{protocol: {passive: report + gram_recovery_error}}`` for a scenario's JSON."""
    return {
        protocol: {
            name: rep.to_json()
            | {"gram_recovery_error": _na(run.gram.get(protocol, {}).get(name))}
            for name, rep in reports.items()
        }
        for protocol, reports in run.audits.items()
    }


def party_summary(run: VerticalRun, tables: dict[str, PartyTable]) -> dict[str, dict]:
    traffic = run.federation.transcript.bytes_by_party()
    return {
        name: {
            "rows": tables[name].n_rows,
            "features": tables[name].n_features,
            "bytes_sent": traffic.get(name, {}).get("sent", 0),
            "bytes_received": traffic.get(name, {}).get("received", 0),
        }
        for name in run.federation.names
    }


def metrics_summary(run: VerticalRun) -> dict[str, dict[str, float]]:
    return {name: dict(res.metrics) for name, res in run.results.items()}


def saw_rows(run: VerticalRun) -> list[list]:
    """The "what each party saw" table as rows for printing and markdown."""
    return [
        [
            r["party"],
            r["from"],
            r["kind"],
            r["label"],
            "yes" if r["label_dependent"] else "no",
            r["messages"],
            r["bytes"],
        ]
        for r in run.federation.transcript.what_each_party_saw()
    ]


def saw_compact_rows(run: VerticalRun, public_hidden: bool = True) -> list[list]:
    """Per receiver and label: which kinds of message arrived (the printed table)."""
    return [
        [
            r["party"],
            r["label"],
            "yes" if r["label_dependent"] else "no",
            ", ".join(_short_kinds(r["kinds"])),
            r["messages"],
            r["bytes"],
        ]
        for r in run.federation.transcript.received_by_label()
        if r["label"] != "public" or not public_hidden
    ]


def _short_kinds(kinds: list[str]) -> list[str]:
    prefixes = sorted({k.split(".")[0] for k in kinds})
    out = []
    for p in prefixes:
        members = [k for k in kinds if k.split(".")[0] == p]
        out.append(members[0] if len(members) == 1 else f"{p}.* ({len(members)} kinds)")
    return out


SAW_COMPACT_COLUMNS = ["receiver", "label", "label-dep.", "kinds", "messages", "bytes"]

SAW_COLUMNS = ["receiver", "from", "kind", "label", "label-dependent", "messages", "bytes"]


PROTOCOLS = ["paillier", "paillier-masked-gradient", "plain"]


def add_protocol_argument(parser, note: str = "") -> None:
    """The ``--protocol`` option every vertical scenario takes."""
    parser.add_argument(
        "--protocol",
        default="paillier",
        choices=PROTOCOLS,
        help="vertical protocol (default: paillier, the federated source layer" + note + ")",
    )
