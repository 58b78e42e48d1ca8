"""SecAgg+ rounds between HospitalClient and FedServer (horizontal.secure_rounds): the
aggregate is exactly the plain sum of the clients' quantized inputs for any dropout pattern
(horizontal.secagg.protocol.simulate as the oracle), more than n - t dropouts abort the round
with the global model bitwise unchanged, the server never receives an update in the clear,
the deployed job over FlowerTransport + FakeGrid gives the in-memory model bitwise, and the
combinations that cannot work on a sum are refused at config or setup time.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from test_horizontal_helpers import make_hospitals

from horizontal import FedConfig, FederatedTrainer, HospitalClient, SystemsConfig
from horizontal.errors import FedConfigError, SecureRoundAbortedError
from horizontal.secagg import (
    InfeasibleParametersError,
    QuantizationError,
    RingOverflowError,
    SecAggProtocolError,
    TooManyDropoutsError,
    masks,
    simulate,
)
from horizontal.secagg.config import EXTRA_COORDINATES, SecAggConfig
from horizontal.secure_rounds import CLIENT_KINDS, STEPS, decode_sum
from horizontal.server import SERVER
from vfl.core.errors import UnexpectedSenderError
from vfl.core.keyed import sample_clients
from vfl.core.messages import Label, Message
from vfl.core.transport import InMemoryTransport

HOSPITALS = make_hospitals(sizes=(60, 45, 70, 50, 55, 65, 40), d=3)
NAMES = sorted(HOSPITALS)
SA = SecAggConfig()  # dropout 0.1, corruption 0.1: t = n // 2 + 1 for these cohorts
BASE = dict(hidden=(4,), rounds=2, batch_size=16, client_lr=0.1, seed=3,
            secure_aggregation=SA)
#: A client that goes silent at stage s of simulate() is offline when this reaches it.
STAGE_KIND = {0: "fit", 1: "secagg.keys", 2: "secagg.ciphertexts", 3: "secagg.unmask"}


class Dropping(InMemoryTransport):
    """In memory, with mid-round dropouts: ``plan[(round, client)] = kind`` takes the client
    offline when a message of that kind reaches it (until the next round's world)."""

    def __init__(self, plan=None):
        super().__init__()
        self.plan = dict(plan or {})

    def deliver(self, message):
        if self.plan.get((message.round, message.receiver)) == message.kind:
            self.set_offline(message.receiver)
        return super().deliver(message)


class Recording(HospitalClient):
    """Keeps, per round, the ``x_u`` it adds to the sum and the ``y_u`` it sends (the
    test's view of the client; neither is sent in the clear)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.inputs, self.masked = {}, {}

    def secure_input(self, setup, q, delta, examples, loss):
        x = super().secure_input(setup, q, delta, examples, loss)
        self.inputs[setup.round] = x.copy()
        return x

    def on_secagg_ciphertexts(self, msg):
        out = super().on_secagg_ciphertexts(msg)
        self.masked[msg.round] = out[0].payload["masked"].copy()
        return out


def _trainer(names, transport=None, **kw):
    config = FedConfig(**(BASE | kw))
    trainer = FederatedTrainer({u: HOSPITALS[u] for u in names}, config,
                               transport=transport or Dropping(), client_factory=Recording)
    trainer.ensure_setup()
    return trainer


def _setup(trainer, cohort, r=0, attempt=0):
    return trainer.config.secure_aggregation.setup(
        sorted(cohort), round=r, attempt=attempt,
        length=len(trainer.server.shared) + EXTRA_COORDINATES,
        context=trainer.config.digest())


# -- (1) the aggregate is the plain sum of the quantized inputs ----------------------------------
@st.composite
def cohorts(draw):
    """A cohort of 3 to 7 clients and the stage (0-3) at which each drops out, if it does."""
    names = NAMES[:draw(st.integers(3, 7))]
    stages = draw(st.lists(st.sampled_from((None,) * 6 + (0, 1, 2, 3)), min_size=len(names),
                           max_size=len(names)))  # each drops out with probability 0.4
    return names, {u: s for u, s in zip(names, stages) if s is not None}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(case=(NAMES[:5], {NAMES[0]: 3, NAMES[3]: 2}))  # after, and before, the masked input
@example(case=(NAMES[:7], {NAMES[1]: 3, NAMES[2]: 3, NAMES[6]: 1}))
@example(case=(NAMES[:4], {NAMES[0]: 3, NAMES[1]: 3}))  # too few left to unmask
@given(case=cohorts())
def test_a_secure_round_is_fedavg_of_the_plain_quantized_sum(case):
    names, pattern = case
    trainer = _trainer(names, Dropping({(0, u): STAGE_KIND[s] for u, s in pattern.items()}))
    w0 = trainer.global_params()
    summary = trainer.run_round(0)

    setup, q = _setup(trainer, names)
    inputs = {u: trainer.clients[u].inputs[0] for u in names if 0 in trainer.clients[u].inputs}
    assert set(inputs) == {u for u in names if pattern.get(u, 9) > 0}
    try:  # the reference driver of the building blocks, on the same inputs and dropouts
        reference = simulate(setup, inputs, pattern)
    except TooManyDropoutsError:
        event("more than n - t dropped out")
        assert summary["skipped"] and "t=" in summary["aborted"]
        assert trainer.global_params().tobytes() == w0.tobytes()
        return
    u3 = [u for u in names if pattern.get(u, 9) > 2]  # whose masked input arrived
    event(f"summed, dropouts at stages {sorted(set(pattern.values()))}")
    assert summary["clients"] == u3 == list(reference.included)
    plain = masks.ring_sum([inputs[u] for u in u3], setup.length, setup.bits)
    got = trainer.server.secure_result
    assert got.total.tobytes() == plain.tobytes() == reference.total.tobytes()
    assert set(got.revealed.values()) <= {"b", "s"}  # one secret per client, never both
    # The dequantized sum is the sum of the dequantized inputs, exactly.
    assert q.dequantize(plain).tobytes() == sum(q.dequantize(inputs[u]) for u in u3).tobytes()
    # FedAvg of those quantized inputs (server step of plain FedAvg, lr 1: w + mean).
    mean, examples, loss = decode_sum(setup, q, plain)
    assert trainer.global_params().tobytes() == (w0 + mean.astype(np.float32)).tobytes()
    assert summary["examples"] == examples and summary["loss"] == loss
    # y_u is not x_u: what left each client was masked.
    for u in u3:
        assert not np.array_equal(trainer.clients[u].masked[0], inputs[u])


def test_a_secure_round_is_plain_fedavg_within_the_quantization_step():
    secure = _trainer(NAMES[:5], rounds=1)
    s = secure.run_round(0)
    plain = FederatedTrainer({u: HOSPITALS[u] for u in NAMES[:5]},
                             FedConfig(**(BASE | {"secure_aggregation": None, "rounds": 1})))
    (p,) = plain.fit(progress=False)
    np.testing.assert_allclose(secure.global_params(), plain.global_params(), atol=2e-6)
    # The loss enters the sum weighted and scaled into [0, clip] (a diagnostic): ~1e-4.
    assert s["examples"] == p["examples"] and abs(s["loss"] - p["loss"]) < 1e-3


# -- (2) more than n - t dropouts ------------------------------------------------------------------
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_too_many_dropouts_raise_and_leave_the_global_model_bitwise_unchanged(stage):
    names = NAMES[:5]  # n = 5, t = 3: at most 2 may drop
    gone = names[:3]
    trainer = _trainer(names, Dropping({(0, u): STAGE_KIND[stage] for u in gone}),
                       on_empty_round="raise")
    w0, opt = trainer.global_params(), trainer.server.snapshot()
    with pytest.raises(SecureRoundAbortedError, match="t=3") as err:
        trainer.run_round(0)
    assert isinstance(err.value, TooManyDropoutsError)
    assert trainer.global_params().tobytes() == w0.tobytes()
    assert trainer.server.completed_round == -1
    after = trainer.server.snapshot()
    assert [x.tobytes() for x in after.opt_state] == [x.tobytes() for x in opt.opt_state]
    # The clients are back next round, with fresh keys: the round goes through.
    summary = trainer.run_round(1)
    assert summary["clients"] == names and not summary["skipped"]


def test_an_aborted_round_is_skipped_or_retried_with_other_clients():
    names = NAMES  # 7 hospitals, 3 per round (t = 2)
    first = sorted(sample_clients(names, BASE["seed"], 0, 3, 0, ()))
    plan = {(0, u): "secagg.keys" for u in first[:2]}
    skip = _trainer(names, Dropping(plan), clients_per_round=3)
    w0 = skip.global_params()
    s = skip.run_round(0)
    assert s["skipped"] and s["dropped"] == first[:2] and "round 1 (share keys)" in s["aborted"]
    assert skip.global_params().tobytes() == w0.tobytes()

    retry = _trainer(names, Dropping(plan), clients_per_round=3, on_empty_round="retry")
    s = retry.run_round(0)
    assert not s["skipped"] and set(s["clients"]).isdisjoint(first)
    assert len(s["clients"]) == 3 and retry.server.secure_result.included == tuple(s["clients"])


# -- (3) what the server receives ----------------------------------------------------------------
def test_the_server_never_receives_a_plaintext_update():
    names = NAMES[:6]
    trainer = _trainer(names, Dropping({(1, names[0]): "secagg.unmask",
                                        (1, names[1]): "secagg.ciphertexts"}))
    trainer.fit(progress=False)
    entries = trainer.transport.transcript.entries
    rounds = [e for e in entries if e.round is not None and e.sender != "coordinator"]
    assert not [e for e in entries if e.kind == "fit.update"]
    labels = {(e.kind, e.sender == SERVER, e.label) for e in rounds}
    assert labels == {
        ("fit", True, "public"),
        ("secagg.advertise", False, "public"), ("secagg.keys", True, "public"),
        ("secagg.shares", False, "ciphertext"), ("secagg.ciphertexts", True, "ciphertext"),
        ("secagg.masked", False, "masked"), ("secagg.unmask", True, "public"),
        ("secagg.reveal", False, "masked"), ("round.done", True, "plaintext-by-design"),
    }
    # From the clients the server got only the four SecAgg+ kinds in the rounds.
    to_server = {e.kind for e in rounds if e.receiver == SERVER and e.sender in names}
    assert to_server == set(CLIENT_KINDS)
    masked = [e for e in entries if e.kind == "secagg.masked"]
    assert {(e.round, e.sender) for e in masked} == {(r, u) for r in (0, 1) for u in names
                                                      if (r, u) != (1, names[1])}
    assert all(e.label_dependent for e in masked)
    # Round 1: names[0] sent y and dropped before unmasking (its b was rebuilt, it is in the
    # sum); names[1] dropped before y (its s was rebuilt, it is not).
    res = trainer.server.secure_result
    assert res.revealed[names[0]] == "b" and res.revealed[names[1]] == "s"
    assert names[0] in res.included and names[1] not in res.included


def test_secure_messages_are_checked_for_their_sender_round_and_stage():
    names = NAMES[:4]
    trainer = _trainer(names, Dropping({(0, names[0]): "secagg.ciphertexts"}))
    server, client = trainer.server, trainer.clients[names[1]]
    route, ask = trainer._route, trainer._request
    route([ask(SERVER, "round.start", round=0)])
    trainer.executor.flush()
    route([ask(u, "fit.collect", round=0) for u in names])
    for step in STEPS:
        route([ask(SERVER, step, {"round": 0})])
    y = np.zeros(len(server.shared) + EXTRA_COORDINATES, np.uint32)
    with pytest.raises(SecAggProtocolError, match="too late"):  # U3 is fixed
        server.handle(Message(names[0], SERVER, "secagg.masked", Label.MASKED,
                              {"masked": y}, round=0))
    with pytest.raises(UnexpectedSenderError):  # not a member
        server.handle(Message("mallory", SERVER, "secagg.masked", Label.MASKED,
                              {"masked": y}, round=0))
    with pytest.raises(UnexpectedSenderError):  # only the coordinator closes a stage
        server.handle(Message(names[2], SERVER, "secagg.collect_masked", Label.PUBLIC,
                              {"round": 0}))
    with pytest.raises(UnexpectedSenderError):  # only the server relays keys
        client.handle(Message(names[2], names[1], "secagg.keys", Label.PUBLIC,
                              {"keys": {}}, round=0))
    with pytest.raises(SecAggProtocolError, match="plaintext update"):
        server.handle(Message(names[2], SERVER, "fit.update", Label.PLAINTEXT_BY_DESIGN,
                              {"update": {}}, round=0))
    # The round still completes with the answers the server has.
    route([ask(SERVER, "round.aggregate", round=0)])
    assert server.secure_result.included == tuple(names[1:])


# -- (4) determinism with fresh keys ---------------------------------------------------------------
def test_two_runs_give_bitwise_the_same_model_with_different_masks():
    names = NAMES[:5]
    plan = {(0, names[4]): "secagg.unmask", (1, names[2]): "secagg.keys"}
    runs = []
    for _ in range(2):
        t = _trainer(names, Dropping(plan), personalization="fedper")
        history = t.fit(progress=False)
        runs.append((t, history))
    (a, ha), (b, hb) = runs
    assert a.global_params().tobytes() == b.global_params().tobytes()
    assert list(ha.loss) == list(hb.loss)
    for u in names:
        for r in a.clients[u].inputs:
            assert a.clients[u].inputs[r].tobytes() == b.clients[u].inputs[r].tobytes()
        for r in a.clients[u].masked:  # fresh keys and seeds: other masks every run
            assert a.clients[u].masked[r].tobytes() != b.clients[u].masked[r].tobytes()


def test_a_resumed_secure_run_ends_bitwise_equal():
    names = NAMES[:4]
    records = []
    full = _trainer(names, rounds=3)
    full.fit(progress=False, on_round_end=records.append)
    resumed = _trainer(names, rounds=3)
    resumed.fit(progress=False, resume_from=records[0])
    assert resumed.global_params().tobytes() == full.global_params().tobytes()


# -- (5) refused combinations ----------------------------------------------------------------------
@pytest.mark.parametrize("change, match", [
    ({"aggregator": "median"}, "only the sum"),
    ({"aggregator": "krum"}, "only the sum"),
    ({"aggregator": "trimmed_mean"}, "only the sum"),
    ({"compression": "int8"}, "cannot be combined with secure aggregation"),
    ({"compression": "topk"}, "cannot be combined with secure aggregation"),
    ({"algorithm": "scaffold"}, "SCAFFOLD"),
    ({"clients_per_round": 2}, "at least 3 clients"),
])
def test_combinations_that_need_single_updates_are_refused_at_config_time(change, match):
    with pytest.raises(FedConfigError, match=match):
        FedConfig(**(BASE | change))


@pytest.mark.parametrize("kw, error, match", [
    ({"bits": 16}, QuantizationError, "bits"),
    ({"dropout": 1.5}, InfeasibleParametersError, "dropout"),
    ({"dropout": 0.6, "corruption": 0.4}, InfeasibleParametersError, "below 1"),
    ({"clip": 0.0}, QuantizationError, "clip"),
    ({"max_weight": 0}, QuantizationError, "max_weight"),
    ({"scale": float("inf")}, QuantizationError, "scale"),
])
def test_bad_secure_aggregation_settings_are_refused(kw, error, match):
    with pytest.raises(error, match=match):
        SecAggConfig(**kw)


@pytest.mark.parametrize("names, sa, error, match", [
    (NAMES[:2], SA, InfeasibleParametersError, "at least 3 clients"),
    (NAMES[:5], SecAggConfig(dropout=0.5, corruption=0.1), InfeasibleParametersError,
     "cannot tolerate"),
    (NAMES[:3], SecAggConfig(scale=2.0**30), RingOverflowError, "wrap around"),
    (NAMES[:3], SecAggConfig(max_weight=20), FedConfigError, "max_weight to at least"),
    (NAMES[:3], SecAggConfig(max_weight=600_000_000), QuantizationError, "one example"),
])
def test_federations_that_cannot_aggregate_securely_fail_at_setup(names, sa, error, match):
    with pytest.raises(error, match=match):
        _trainer(names, secure_aggregation=sa)


def test_the_setting_round_trips_through_json_and_leaves_other_digests_alone():
    config = FedConfig(**(BASE | {"secure_aggregation": SecAggConfig(bits=64, clip=0.5)}))
    back = FedConfig.from_json(config.to_json())
    assert back == config and back.digest() == config.digest()
    assert "secure_aggregation" not in FedConfig(**(BASE | {"secure_aggregation": None})
                                                 ).to_json()
    with pytest.raises(FedConfigError, match="unknown secure_aggregation setting"):
        FedConfig.from_json(config.to_json() | {"secure_aggregation": {"t": 1}})


def test_a_diverged_client_withholds_its_update():
    names = NAMES[:4]
    trainer = _trainer(names, client_lr=1e30, rounds=1)
    s = trainer.run_round(0)
    assert s["rejected"] and all("NaN" in why for why in s["rejected"].values())
    assert not [e for e in trainer.transport.transcript.entries if e.kind == "fit.update"]


# -- (6) the deployed job --------------------------------------------------------------------------
def test_the_deployed_job_equals_the_in_memory_run(tmp_path):
    pytest.importorskip("flwr")
    from test_deploy_horizontal import _deployed, _in_memory, _same_run

    from horizontal import deployed

    tables = {u: HOSPITALS[u] for u in NAMES[:5]}
    files = {u: t.to_csv(tmp_path / f"{u}.csv") for u, t in tables.items()}
    loaded = {u: deployed.PartyTable.from_file(files[u], "id", "y") for u in files}
    config = FedConfig(**(BASE | {"rounds": 3, "clients_per_round": 4,
                                  "systems": SystemsConfig(dropout_rate=0.2)}))
    trainer, history, evaluation = _in_memory(loaded, config)
    result, _ = _deployed(files, loaded[NAMES[0]].columns, config, tmp_path / "run")
    _same_run(result, trainer, history, evaluation)
    assert any(s["dropped"] for s in result["summaries"])
    assert not [e for e in trainer.transport.transcript.entries if e.kind == "fit.update"]


def test_a_node_stopped_mid_run_is_a_dropout_of_the_secure_rounds(tmp_path):
    pytest.importorskip("flwr")
    from test_deploy_horizontal import _deployed, _in_memory, _same_run

    from horizontal import deployed

    tables = {u: HOSPITALS[u] for u in NAMES[:4]}
    files = {u: t.to_csv(tmp_path / f"{u}.csv") for u, t in tables.items()}
    loaded = {u: deployed.PartyTable.from_file(files[u], "id", "y") for u in files}
    config = FedConfig(**(BASE | {"rounds": 3}))
    gone = NAMES[2]
    trainer, history, evaluation = _in_memory(loaded, config, down_after=(gone, 0))
    result, _ = _deployed(files, loaded[NAMES[0]].columns, config, tmp_path / "run",
                          stop_after=(gone, 0), reply_timeout=0.5)
    _same_run(result, trainer, history, evaluation)
    assert [s["dropped"] for s in result["summaries"]] == [[], [gone], [gone]]
    assert [len(s["participants"]) for s in result["summaries"]] == [4, 3, 3]
