"""A hospital's own privacy policy (horizontal.privacy_policy): the server's setup cannot
turn secure aggregation off, weaken it, or ask for more epsilon than the hospital's operator
allows. Every refusal comes before the hospital reads a feature or a label."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_horizontal_helpers import RecordingTable, make_hospitals

from horizontal import FedConfig, FederatedTrainer, HospitalClient, PrivacyPolicy, SecAggConfig
from horizontal.deployed import privacy_policy
from horizontal.dp import accounting
from horizontal.dp.config import DPConfig
from horizontal.dp.ledger import record_plan
from horizontal.errors import FedConfigError, PrivacyPolicyError
from horizontal.simulation import LocalExecutor
from vfl.core.errors import SecurityPolicyError
from vfl.core.keyed import split_test
from vfl.core.messages import COORDINATOR, Label, Message

SMALL = dict(hidden=(4,), batch_size=16, client_lr=0.1)
SECURE = SecAggConfig(dropout=0.1, corruption=0.2)
NAMES = ("hospital_0", "hospital_1", "hospital_2")


def _federation(policy: PrivacyPolicy, config: FedConfig, sizes=(80, 60, 70)):
    raw = make_hospitals(sizes=sizes)
    tables = {n: RecordingTable(t) for n, t in raw.items()}
    trainer = FederatedTrainer(
        tables, config,
        client_factory=lambda n, t, e: HospitalClient(n, t, e, policy=policy))
    return trainer, tables


def _refused(policy, config, match):
    trainer, tables = _federation(policy, config)
    with pytest.raises(PrivacyPolicyError, match=match) as err:
        trainer.fit(progress=False)
    assert all(t.reads == [] for t in tables.values())  # refused before any data was read
    assert all(c.config is None for c in trainer.clients.values())
    return err.value


def _epsilon(config: FedConfig, n_rows: int, rounds: int) -> float:
    n_train = int((~split_test(np.array([f"h0-{i:04d}" for i in range(n_rows)]), config.seed,
                               config.test_fraction)).sum())
    plan = record_plan(config.dp, n_train, batch_size=config.batch_size,
                       local_epochs=config.local_epochs)
    return accounting.epsilon(plan.event(rounds), config.dp.delta)


# -- secure aggregation ------------------------------------------------------------------------
def test_hospital_refuses_a_federation_without_secure_aggregation():
    err = _refused(PrivacyPolicy(require_secure_aggregation=True),
                   FedConfig(**SMALL, rounds=2), "requires secure aggregation")
    assert isinstance(err, SecurityPolicyError)  # one family with the vertical policy


def test_hospital_refuses_secure_aggregation_weaker_than_its_minimum():
    policy = PrivacyPolicy(require_secure_aggregation=True, min_corruption=0.3)
    _refused(policy, FedConfig(**SMALL, rounds=2, secure_aggregation=SECURE),
             "corruption fraction of at least 0.3")


def test_hospital_trains_when_the_setup_meets_its_policy():
    policy = PrivacyPolicy(require_secure_aggregation=True, min_corruption=0.2)
    config = FedConfig(**SMALL, rounds=2, secure_aggregation=SECURE)
    trainer, _ = _federation(policy, config)
    guarded = trainer.fit(progress=False)
    plain = FederatedTrainer(make_hospitals(sizes=(80, 60, 70)), config).fit(progress=False)
    assert [r["loss"] for r in guarded] == [r["loss"] for r in plain]  # it only checks


@settings(max_examples=40, deadline=None)
@given(require=st.booleans(), minimum=st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3]),
       secure=st.booleans(), corruption=st.sampled_from([0.0, 0.1, 0.2, 0.4]))
def test_setup_is_accepted_exactly_when_it_meets_the_policy(require, minimum, secure,
                                                            corruption):
    if minimum > 0 and not require:
        with pytest.raises(FedConfigError, match="require_secure_aggregation"):
            PrivacyPolicy(min_corruption=minimum)
        return
    policy = PrivacyPolicy(require_secure_aggregation=require, min_corruption=minimum)
    sa = SecAggConfig(dropout=0.1, corruption=corruption) if secure else None
    config = FedConfig(**SMALL, secure_aggregation=sa)
    meets = (sa is not None or not require) and (sa is None or corruption >= minimum)
    if meets:
        policy.check_setup(config, "h")
    else:
        with pytest.raises(PrivacyPolicyError):
            policy.check_setup(config, "h")


# -- differential privacy ----------------------------------------------------------------------
def test_hospital_requiring_dp_refuses_no_dp_client_level_and_a_large_delta():
    policy = PrivacyPolicy(max_epsilon=5.0)
    _refused(policy, FedConfig(**SMALL, rounds=2), "dp off")
    _refused(policy, FedConfig(**SMALL, rounds=2, dp=DPConfig(level="client")),
             "client-level DP")
    _refused(policy, FedConfig(**SMALL, rounds=2, dp=DPConfig(delta=1e-3)), "delta")


def test_hospital_checks_epsilon_with_its_own_account_not_the_wire_budget():
    """The server's config has no budget at all (epsilon=None): the hospital still computes
    the plan's epsilon itself and refuses above its own maximum."""
    config = FedConfig(**SMALL, rounds=6, dp=DPConfig(noise_multiplier=0.8, epsilon=None))
    planned = _epsilon(config, 80, 6)
    err = _refused(PrivacyPolicy(max_epsilon=0.9 * planned), config, "max_epsilon")
    assert f"{planned:.3f}" in str(err)


def test_lifetime_epsilon_composes_setups_and_rounds_stay_within_the_plan():
    config = FedConfig(**SMALL, rounds=2, test_fraction=0.0,
                       dp=DPConfig(noise_multiplier=1.2))
    one = _epsilon(config, 80, 2)
    policy = PrivacyPolicy(max_epsilon=1.05 * one)  # room for one run, not two
    table = RecordingTable(make_hospitals(sizes=(80,))["hospital_0"])
    client = HospitalClient("hospital_0", table, LocalExecutor("loop"), policy=policy)
    setup = Message("server", "hospital_0", "setup", Label.PUBLIC,
                    {"config": config.to_json(), "columns": list(table.columns)})
    client.handle(setup)
    scaler = Message("server", "hospital_0", "setup.scaler", Label.PUBLIC,
                     {"mean": np.zeros(5), "scale": np.ones(5)})
    client.handle(scaler)
    w = np.zeros(client.model.size, np.float32)
    for r in range(2):
        client.handle(Message("server", "hospital_0", "fit", Label.PUBLIC, {"global": w},
                              round=r))
        client.handle(Message(COORDINATOR, "hospital_0", "fit.collect", Label.PUBLIC, {},
                              round=r))
    # A third round is past what the setup planned (and the hospital accounted for).
    with pytest.raises(PrivacyPolicyError, match="round 2 is refused"):
        client.handle(Message("server", "hospital_0", "fit", Label.PUBLIC, {"global": w},
                              round=2))
    # Setting up again does not reset the account: two runs compose past the maximum.
    reads = len(table.reads)
    with pytest.raises(PrivacyPolicyError, match="2 rounds released before"):
        client.handle(setup)
    assert len(table.reads) == reads
    assert client.privacy.lifetime_epsilon(delta=1e-5) == pytest.approx(one, rel=1e-9)


def test_evaluation_under_the_policy():
    config = FedConfig(**SMALL, rounds=1, dp=DPConfig(noise_multiplier=1.0))
    policy = PrivacyPolicy(max_epsilon=50.0, release_scores=False)
    trainer, _ = _federation(policy, config)
    trainer.fit(progress=False)
    client = trainer.clients["hospital_0"]
    w = np.asarray(trainer.server.w, np.float32)
    ok = client.handle(Message("server", "hospital_0", "evaluate", Label.PUBLIC,
                               {"global": w}))
    assert "scores" not in ok[0].payload
    with pytest.raises(PrivacyPolicyError, match="release_scores=False"):
        client.handle(Message("server", "hospital_0", "evaluate", Label.PUBLIC,
                              {"global": w, "with_scores": True}))
    with pytest.raises(PrivacyPolicyError, match="held-out rows"):
        client.handle(Message("server", "hospital_0", "evaluate", Label.PUBLIC,
                              {"global": w, "split": "train"}))


# -- the policy itself and the node's command line ----------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(min_corruption=1.0, require_secure_aggregation=True), "min_corruption"),
    (dict(max_epsilon=0.0), "max_epsilon"),
    (dict(max_epsilon=float("inf")), "max_epsilon"),
    (dict(max_delta=0.0), "max_delta"),
    (dict(accountant="moments"), "accountant"),
])
def test_bad_policy_settings_are_refused(kw, match):
    with pytest.raises(FedConfigError, match=match):
        PrivacyPolicy(**kw)


def test_node_command_line_builds_the_policy():
    from vfl.deploy.node import build_parser

    args = build_parser().parse_args([
        "--mode", "horizontal", "--party", "h", "--data", "h.csv", "--id-column", "id",
        "--label-column", "y", "--require-secure-aggregation", "--min-corruption", "0.2",
        "--max-epsilon", "3", "--max-delta", "1e-6", "--dp-accountant", "pld",
        "--no-release-scores"])
    assert privacy_policy(vars(args)) == PrivacyPolicy(
        require_secure_aggregation=True, min_corruption=0.2, max_epsilon=3.0, max_delta=1e-6,
        accountant="pld", release_scores=False)
    default = build_parser().parse_args(["--party", "h", "--data", "h.csv", "--id-column", "id"])
    assert privacy_policy(vars(default)) == PrivacyPolicy()
    assert dataclasses.asdict(PrivacyPolicy())["release_scores"] is True


def test_the_account_survives_a_node_restart(tmp_path):
    """A deployed hospital keeps its account on its own disk: a restarted node (a new
    client over the same file) goes on from what it has spent; a damaged file stops it."""
    config = FedConfig(**SMALL, rounds=2, test_fraction=0.0, dp=DPConfig(noise_multiplier=1.2))
    one = _epsilon(config, 80, 2)
    policy = PrivacyPolicy(max_epsilon=1.05 * one)
    path = tmp_path / "hospital_0" / "privacy_account.json"
    table = make_hospitals(sizes=(80,))["hospital_0"]
    setup = Message("server", "hospital_0", "setup", Label.PUBLIC,
                    {"config": config.to_json(), "columns": list(table.columns)})
    client = HospitalClient("hospital_0", table, LocalExecutor("loop"), policy=policy,
                            privacy_account=path)
    client.handle(setup)
    client.handle(Message("server", "hospital_0", "setup.scaler", Label.PUBLIC,
                          {"mean": np.zeros(5), "scale": np.ones(5)}))
    w = np.zeros(client.model.size, np.float32)
    for r in range(2):
        client.handle(Message("server", "hospital_0", "fit", Label.PUBLIC, {"global": w},
                              round=r))
    restarted = HospitalClient("hospital_0", table, LocalExecutor("loop"), policy=policy,
                               privacy_account=path)
    assert restarted.privacy.lifetime_epsilon(delta=1e-5) == pytest.approx(one, rel=1e-9)
    with pytest.raises(PrivacyPolicyError, match="2 rounds released before"):
        restarted.handle(setup)
    path.write_text("{not json")
    with pytest.raises(PrivacyPolicyError, match="cannot be read"):
        HospitalClient("hospital_0", table, LocalExecutor("loop"), policy=policy,
                       privacy_account=path)
