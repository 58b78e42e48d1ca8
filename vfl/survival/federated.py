"""``VerticalCox``: a Cox proportional-hazards model over parties that hold different
columns of the same patients, fitted without pooling rows.

The hospital (active party) holds follow-up times and events and its own covariates; the
other parties hold covariates only. Patients are aligned by private set intersection, and
the fit is the maximum partial likelihood of the pooled design, reached by Newton's method
in the span of the explored directions (:mod:`vfl.survival.subspace`): at most
``max_k d_k + 1`` protocol rounds, each one message to and from every passive. Under the
default ``paillier`` protocol a passive receives only ciphertexts until the fitted
coefficients are released at the end (:mod:`vfl.survival.parties`).

Optimizer choice, plain and encrypted alike: the risk sets make every exact gradient
full-batch, so mini-batches would be an approximation (not offered); gradient descent would
need hundreds of encrypted rounds. The subspace Newton reaches the maximum partial
likelihood (the Newton decrement below ``tol**2`` relative to the loss) after the explored
directions span every party's coefficients, and both protocols compute it with the same
integer arithmetic, so their coefficients agree bitwise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from vfl.core.coordinator import Coordinator
from vfl.core.errors import ConfigError, ProtocolError
from vfl.core.progress import progress_bar
from vfl.core.rounds import request_erasure
from vfl.core.table import PartyTable
from vfl.core.transport import InMemoryTransport
from vfl.psi import PSIResult
from vfl.survival.config import CoxConfig
from vfl.survival.errors import CoxConvergenceError
from vfl.survival.parties import CoxActiveParty, CoxPassiveParty
from vfl.vertical.config import SecurityPolicy
from vfl.vertical.federation import AlignedParties

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Coefficient:
    """One covariate's fitted log hazard ratio, per unit of its party's column."""

    party: str
    column: str
    coef: float
    se: float

    @property
    def hazard_ratio(self) -> float:
        return float(np.exp(self.coef))

    @property
    def ci(self) -> tuple[float, float]:
        """The Wald 95% confidence interval of the hazard ratio."""
        return (float(np.exp(self.coef - Z95 * self.se)), float(np.exp(self.coef + Z95 * self.se)))

    @property
    def p_value(self) -> float:
        """The Wald test's two-sided p-value."""
        return float(math.erfc(abs(self.coef / self.se) / math.sqrt(2))) if self.se > 0 else 0.0

    def to_json(self) -> dict:
        lo, hi = self.ci
        return {"party": self.party, "column": self.column, "coef": self.coef, "se": self.se,
                "hazard_ratio": self.hazard_ratio, "ci_low": lo, "ci_high": hi,
                "p_value": self.p_value}


@dataclass
class VerticalCoxFit:
    """What the coordinator receives from a fit (the released model and its history)."""

    coefficients: list[Coefficient]
    neg_log_likelihood: float
    rounds: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0

    def coef(self, party: str | None = None) -> np.ndarray:
        return np.array([c.coef for c in self.coefficients if party in (None, c.party)])

    def get(self, column: str, party: str | None = None) -> Coefficient:
        for c in self.coefficients:
            if c.column == column and party in (None, c.party):
                return c
        raise KeyError(f"no coefficient for {column!r}")

    def table(self) -> list[dict]:
        return [c.to_json() for c in self.coefficients]


def _bytes(transcript) -> int:
    return int(sum(e.bytes for e in transcript))


class VerticalCox(AlignedParties):
    """A vertical Cox fit in one process: parties on an in-memory transport plus a
    coordinator (the same party objects a deployment runs; every message is serialized)."""

    def __init__(self, tables: Mapping[str, PartyTable], active: str,
                 config: CoxConfig | None = None, *, policy: SecurityPolicy | None = None,
                 transport=None):
        if active not in tables:
            raise ConfigError(f"the hospital {active!r} has no table; parties: {list(tables)}")
        if len(tables) < 2:
            raise ConfigError("a vertical Cox fit needs the hospital and at least one other "
                              "party; for a single party use vfl.survival.fit_cox")
        self.config = config or CoxConfig()
        self.transport = transport or InMemoryTransport()
        self.coordinator = Coordinator(self.transport)
        self.parties = {active: CoxActiveParty(active, tables[active], policy=policy)}
        for name, table in tables.items():
            if name != active:
                self.parties[name] = CoxPassiveParty(name, table, policy=policy)
        for party in self.parties.values():
            self.transport.register(party)
        self.active = active
        self.passives = [n for n in tables if n != active]
        self.alignment: PSIResult | None = None
        self.fitted: VerticalCoxFit | None = None

    @classmethod
    def over(cls, transport, active: str, passives: list[str],
             config: CoxConfig | None = None) -> VerticalCox:
        """A fit whose parties live elsewhere (a deployment: each on its own node), reached
        only through ``transport``; each party saves its own model."""
        fed = cls.__new__(cls)
        fed.config = config or CoxConfig()
        fed.transport = transport
        fed.coordinator = Coordinator(transport)
        fed.parties = {}
        fed.active, fed.passives = active, list(passives)
        fed.alignment = None
        fed.fitted = None
        return fed

    @classmethod
    def from_dataset(cls, dataset, config: CoxConfig | None = None, **kw) -> VerticalCox:
        if dataset.task != "survival":
            raise ConfigError(
                f"data set {dataset.name!r} has a {dataset.task!r} label; load it with "
                "label='survival' for a Cox model")
        return cls(dataset.tables, dataset.active, config, **kw)

    # -- protocol ---------------------------------------------------------------------------
    def setup(self) -> dict:
        c = self.coordinator
        base = {"config": self.config.to_json(), "active": self.active}
        (ready,) = c.exchange([c.request(self.active, "cox.setup", base)])
        extra = {"public_key": ready.payload["public_key"]} if "public_key" in ready.payload else {}
        replies = c.exchange([c.request(p, "cox.setup", base | extra) for p in self.passives])
        counts = {(m.payload["n_train"], m.payload["n_test"]) for m in [ready, *replies]}
        if len(counts) != 1:
            raise ProtocolError(f"parties disagree on the train/test split sizes: {counts}")
        layout = {m.sender: {"columns": list(m.payload["columns"])} for m in replies}
        c.exchange([c.request(self.active, "cox.layout", {"passives": layout})])
        self.columns = {ready.sender: list(ready.payload["columns"])} | {
            m.sender: list(m.payload["columns"]) for m in replies}
        n_train, n_test = counts.pop()
        return {"n_train": n_train, "n_test": n_test}

    def fit(self, *, progress: bool = True) -> VerticalCoxFit:
        """Align (if not done), set up, run rounds until the hospital's Newton has
        converged over every party's coefficients, and release the coefficients."""
        t0 = time.perf_counter()
        bytes0 = _bytes(self.transcript)
        if self.alignment is None:
            self.align(progress=progress)
        self.sizes = self.setup()
        c = self.coordinator
        c.exchange([c.request(p, "cox.forward", round=0) for p in self.passives])
        history = []
        with progress_bar("vertical Cox", self.config.max_rounds, progress) as bar:
            for r in range(self.config.max_rounds):
                # round 0 was the first forward pass; step r answers with round r + 1
                back = c.exchange([c.request(self.active, "cox.step", round=r + 1)])
                (status,) = [m for m in back if m.kind == "cox.status"]
                history.append({"round": r} | dict(status.payload))
                bar.advance()
                if status.payload["converged"]:
                    break
            else:
                raise CoxConvergenceError(
                    f"no convergence in {self.config.max_rounds} rounds; raise max_rounds")
        (final,) = c.exchange([c.request(self.active, "cox.finish")])
        back = c.exchange([c.request(self.active, "cox.release")])
        reports = {m.sender: m.payload for m in back if m.kind == "cox.coefficients"}
        missing = sorted(set(self.names) - set(reports))
        if missing:
            raise ProtocolError(f"no coefficients released by {missing}")
        coefficients = []
        for name in self.names:
            rep = reports[name]
            se = np.sqrt(np.clip(np.diag(np.asarray(rep["cov"], dtype=np.float64)), 0, None))
            for col, b, s in zip(rep["columns"], rep["coef"], se):
                coefficients.append(Coefficient(name, str(col), float(b), float(s)))
        self.fitted = VerticalCoxFit(coefficients, float(final.payload["loss"]), len(history),
                                     history, seconds=time.perf_counter() - t0,
                                     bytes=_bytes(self.transcript) - bytes0)
        return self.fitted

    def evaluate(self, split: str = "test") -> dict:
        """C-index and integrated Brier score on ``split`` (held-out patients by default),
        computed at the hospital from every party's released linear predictor."""
        if self.fitted is None:
            raise ProtocolError("fit the model before evaluating it")
        c = self.coordinator
        c.exchange([c.request(p, "cox.predict", {"split": split}) for p in self.passives])
        (metrics,) = c.exchange([c.request(self.active, "cox.evaluate", {"split": split})])
        return dict(metrics.payload)

    def erase(self, ids, *, progress: bool = False) -> dict:
        """An erasure request: every party deletes its rows of ``ids``; the model is then
        fitted again on the remaining patients (an exact erasure: the result equals a fit
        that never saw them)."""
        ids = [str(i) for i in ids]
        acks = request_erasure(self.coordinator, {p: ids for p in self.names})
        # Each party drops the erased ids from its own aligned ids (data.erase): the rest is
        # the intersection of the remaining tables, so PSI need not run again.
        self.fitted = None
        self.fit(progress=progress)
        return acks
