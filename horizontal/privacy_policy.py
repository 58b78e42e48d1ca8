"""A hospital's own privacy minimum: set by its operator, never read from the wire.

The server's setup message carries the federation's :class:`~horizontal.config.FedConfig`,
secure aggregation and differential privacy included. Those settings are chosen by whoever
runs the server; a hospital that took them as given would train without SecAgg+ or with a
huge epsilon because a misconfigured (or curious) server said so. A
:class:`PrivacyPolicy` is the hospital-side counterpart of the vertical
:class:`~vfl.vertical.config.SecurityPolicy`: the operator of each hospital sets it (in code,
or with ``vfl deploy node --require-secure-aggregation --max-epsilon ...``), and the
hospital refuses with :class:`~horizontal.errors.PrivacyPolicyError`, *before it reads a
feature or a label*, a setup that asks for less.

What the hospital verifies itself, and why only that:

* **Secure aggregation** (``require_secure_aggregation``, ``min_corruption``): the setup
  must turn SecAgg+ on, tolerating at least ``min_corruption`` of a round's cohort colluding
  with the server. The degree ``k`` and threshold ``t`` are derived by every party from
  its own copy of those settings (:mod:`horizontal.secagg.config`), so the server cannot
  lower ``t`` behind the config it sent.
* **Differential privacy** (``max_epsilon``, ``max_delta``): only *record-level* DP counts.
  There the hospital draws its batches and adds its noise itself, with its own secret, so
  it can account for what it releases: it computes the epsilon of every round it has
  released on this data (:class:`PrivacyAccount`, all setups composed, kept on its own
  disk across restarts) plus the rounds the new setup plans, with its own accountant, at the setup's
  delta, and refuses above ``max_epsilon``. It then trains at most ``config.rounds`` rounds
  per setup, whatever the server asks. Client-level DP is refused under ``max_epsilon``:
  its noise is added by the server (or, under SecAgg+, split over all clients), which this
  hospital cannot verify.
* **Evaluation** (``release_scores``): per-patient scores with their labels leave the
  hospital only if its operator allows it; they are outside any DP guarantee, and so, under
  ``max_epsilon``, are metrics of the training rows, which are refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dp_accounting

from horizontal.dp.accounting import ACCOUNTANTS, epsilon, quiet_accountant
from horizontal.dp.ledger import RecordPlan
from horizontal.errors import FedConfigError, PrivacyPolicyError
from vfl.core.fileio import atomic_write


@dataclass(frozen=True)
class PrivacyPolicy:
    """What a hospital demands of any federation it joins (see the module docstring).

    The default demands nothing (the in-memory simulations and trusted single-operator
    deployments); a hospital joining a federation run by someone else sets at least
    ``require_secure_aggregation`` and ``max_epsilon``.
    """

    require_secure_aggregation: bool = False
    #: SecAgg+ must tolerate at least this fraction of colluding clients
    min_corruption: float = 0.0
    #: require record-level DP and keep this hospital's lifetime epsilon at or below this
    max_epsilon: float | None = None
    #: the largest delta a DP setup may ask for (with ``max_epsilon``)
    max_delta: float = 1e-5
    #: the accountant this hospital uses for its own epsilon ("rdp" or "pld")
    accountant: str = "rdp"
    #: may per-patient scores and labels leave for a pooled evaluation
    release_scores: bool = True

    def __post_init__(self):
        c = self.min_corruption
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0.0 <= c < 1.0:
            raise FedConfigError(f"policy min_corruption is a fraction in [0, 1), got {c!r}")
        e = self.max_epsilon
        if e is not None and (isinstance(e, bool) or not isinstance(e, int | float)
                              or not math.isfinite(e) or e <= 0):
            raise FedConfigError(f"policy max_epsilon must be a finite number > 0, got {e!r}")
        d = self.max_delta
        if isinstance(d, bool) or not isinstance(d, int | float) or not 0.0 < d < 1.0:
            raise FedConfigError(f"policy max_delta must be in (0, 1), got {d!r}")
        if self.accountant not in ACCOUNTANTS:
            raise FedConfigError(
                f"policy accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.min_corruption > 0 and not self.require_secure_aggregation:
            raise FedConfigError("policy min_corruption is a secure-aggregation setting; "
                                 "set require_secure_aggregation as well")

    @property
    def demands_dp(self) -> bool:
        return self.max_epsilon is not None

    def check_setup(self, config, party: str) -> None:
        """Refuse ``config`` (a :class:`~horizontal.config.FedConfig` from the wire) if it
        asks for less secure aggregation or a different kind of DP than this policy; the
        epsilon itself is checked by :meth:`PrivacyAccount.open`, which knows the plan."""
        sa = config.secure_aggregation
        if self.require_secure_aggregation and sa is None:
            raise PrivacyPolicyError(
                f"{party!r} requires secure aggregation (its own policy), but the setup has "
                "secure_aggregation off: the server would see this hospital's update. The "
                "setup is refused; ask the server's operator to set "
                "FedConfig.secure_aggregation")
        if sa is not None and float(sa.corruption) < self.min_corruption:
            raise PrivacyPolicyError(
                f"{party!r} requires SecAgg+ to tolerate a corruption fraction of at least "
                f"{self.min_corruption}, the setup asks for {sa.corruption}: fewer colluding "
                "clients would suffice to unmask an update. The setup is refused")
        if not self.demands_dp:
            return
        dp = config.dp
        if dp is None:
            raise PrivacyPolicyError(
                f"{party!r} requires record-level differential privacy with epsilon <= "
                f"{self.max_epsilon} (its own policy), but the setup has dp off. The setup "
                "is refused; ask the server's operator to set FedConfig.dp")
        if dp.level != "record":
            raise PrivacyPolicyError(
                f"{party!r} requires record-level DP (noise it adds and accounts for itself); "
                "the setup asks for client-level DP, whose noise the server (or, under "
                "SecAgg+, every client) adds and this hospital cannot verify. The setup is "
                "refused")
        if float(dp.delta) > self.max_delta:
            raise PrivacyPolicyError(
                f"{party!r} accepts delta <= {self.max_delta}, the setup asks for "
                f"{dp.delta}. The setup is refused")

    def check_evaluate(self, split: str, with_scores: bool, party: str) -> None:
        """Refuse an evaluation that would release what the policy keeps: per-patient scores
        and labels (``release_scores=False``), or, under ``max_epsilon``, metrics of the
        training rows, which DP-SGD protects and a metric computed on them would not."""
        if with_scores and not self.release_scores:
            raise PrivacyPolicyError(
                f"{party!r} does not release per-patient scores and labels (its own policy: "
                "release_scores=False); ask for metrics only (with_scores=False)")
        if self.demands_dp and split != "test":
            raise PrivacyPolicyError(
                f"{party!r} evaluates only on its held-out rows under its DP policy: metrics "
                f"of its training rows (split={split!r}) are computed from the labels DP-SGD "
                "protects, without noise")


@dataclass
class PrivacyAccount:
    """The epsilon a hospital has spent on its rows, kept by the hospital itself.

    ``released`` holds one ``(plan, rounds)`` per earlier setup (the rounds it trained
    under that plan); ``plan``/``trained`` are the current setup's. Rounds are charged when
    local DP-SGD starts, as anything trained may be released. A deployed hospital keeps the
    account in a file on its own disk (:meth:`at`; ``vfl deploy node`` uses
    ``OUT/privacy_account.json``), written atomically at every setup and every charge, so a
    restarted node goes on from what it has spent.
    """

    policy: PrivacyPolicy
    released: list[tuple[RecordPlan, int]] = field(default_factory=list)
    plan: RecordPlan | None = None
    rounds: int = 0
    trained: int = 0
    #: where the account persists (a node's own disk), or None (in memory only)
    path: Path | None = None

    # -- persistence (party-local: the hospital's own disk) -------------------------------------
    @classmethod
    def at(cls, policy: PrivacyPolicy, path: str | Path | None) -> PrivacyAccount:
        """The account kept in ``path`` (read back if the file exists), so a restarted node
        keeps spending from where it stopped; in memory when ``path`` is None."""
        account = cls(policy, path=None if path is None else Path(path))
        if account.path is not None and account.path.is_file():
            try:
                tree = json.loads(account.path.read_text())
                account.released = [(RecordPlan(**p), int(n)) for p, n in tree["released"]]
                if tree.get("plan") is not None:
                    account.plan = RecordPlan(**tree["plan"])
                account.rounds, account.trained = int(tree["rounds"]), int(tree["trained"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise PrivacyPolicyError(
                    f"the privacy account {account.path} cannot be read ({exc}); it records "
                    "the epsilon this hospital has spent, so the node does not start without "
                    "it. Restore it from a backup; delete it only if no round was released"
                ) from None
        return account

    def _save(self) -> None:
        if self.path is None:
            return
        tree = {"released": [[asdict(p), n] for p, n in self.released],
                "plan": None if self.plan is None else asdict(self.plan),
                "rounds": self.rounds, "trained": self.trained}
        atomic_write(self.path, json.dumps(tree, sort_keys=True))

    def _close(self) -> None:
        if self.plan is not None and self.trained:
            self.released.append((self.plan, self.trained))
        self.plan, self.rounds, self.trained = None, 0, 0

    def lifetime_epsilon(self, extra: tuple[RecordPlan, int] | None = None, *,
                         delta: float) -> float:
        """The epsilon of everything released so far (and ``extra``), composed."""
        parts = list(self.released)
        if self.plan is not None and self.trained:
            parts.append((self.plan, self.trained))
        if extra is not None:
            parts.append(extra)
        if not parts:
            return 0.0
        events = [plan.event(n) for plan, n in parts]
        event = events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)
        with quiet_accountant():  # the RDP accountant's notes on the orders it drops
            return epsilon(event, delta, self.policy.accountant)

    def open(self, config, plan: RecordPlan | None, party: str) -> float | None:
        """A new setup: check it against the policy and, under ``max_epsilon``, return the
        lifetime epsilon after its ``config.rounds`` rounds (or refuse). Nothing is charged
        yet; the previous setup's rounds move to ``released``."""
        self.policy.check_setup(config, party)
        if not self.policy.demands_dp:
            self._close()
            return None
        planned = self.lifetime_epsilon((plan, int(config.rounds)), delta=float(config.dp.delta))
        if planned > self.policy.max_epsilon:
            raise PrivacyPolicyError(
                f"{party!r} would reach epsilon {planned:.3f} (its own {self.policy.accountant}"
                f" account: {sum(n for _, n in self.released) + self.trained} rounds released "
                f"before, {config.rounds} planned now) over its policy's max_epsilon "
                f"{self.policy.max_epsilon}. The setup is refused; ask for fewer rounds or more "
                "noise")
        self._close()
        self.plan, self.rounds = plan, int(config.rounds)
        self._save()
        return planned

    def charge_round(self, round: int, party: str) -> None:
        """One more round of DP-SGD under the current setup, or a refusal past its plan."""
        if not self.policy.demands_dp or self.plan is None:
            return
        if self.trained >= self.rounds:
            raise PrivacyPolicyError(
                f"{party!r} has trained the {self.rounds} rounds its setup planned and its "
                f"policy accounted for; round {round} is refused (set up the federation again "
                "to plan more rounds)")
        self.trained += 1
        self._save()  # before the round trains: anything trained may be released
