"""Horizontal clients cannot inflate their weight, poison setup, or speak for others."""

import numpy as np
import pytest
from test_horizontal_helpers import make_hospitals

from horizontal import FedConfig, FederatedTrainer, HospitalClient
from horizontal.errors import (
    FedConfigError,
    InflatedExampleCountError,
    InvalidExampleCountError,
    InvalidSetupStatsError,
    UpdateShapeError,
)
from horizontal.server import MAX_CLIENT_ROWS
from vfl.core.errors import PayloadShapeError, ProtocolError, UnexpectedSenderError
from vfl.core.messages import COORDINATOR, Label, Message

SMALL = dict(hidden=(4,), rounds=1, batch_size=16, client_lr=0.1)
SIZES = (120, 80, 200, 60)  # hospital_3 has 60 rows


def inflating(claim, push=5.0):
    """hospital_3 (60 rows) sends an update of ``push`` everywhere, claiming ``claim``
    examples (or ``claim(n_train)``)."""

    class Inflating(HospitalClient):
        def on_collect(self, msg):
            replies = super().on_collect(msg)
            if self.name != "hospital_3":
                return replies
            p = dict(replies[0].payload)
            p["update"] = {"scheme": "none", "v": np.full_like(p["update"]["v"], push)}
            p["num_examples"] = claim(len(self.train_ids)) if callable(claim) else claim
            return [self.send("server", "fit.update", replies[0].label, p, round=msg.round,
                              label_dependent=True)]

    return Inflating


def test_a_60_row_client_claiming_1e9_examples_is_refused():
    """Before: weight 1e9 against ~300 honest examples, the global model became its update."""
    tables = make_hospitals(sizes=SIZES)
    strict = FederatedTrainer(tables, FedConfig(**SMALL, on_bad_update="raise"),
                              client_factory=inflating(10**9))
    strict.setup()
    before = strict.global_params()
    n_train = len(strict.clients["hospital_3"].train_ids)
    assert n_train < 60
    with pytest.raises(InflatedExampleCountError,
                       match=f"hospital_3.*1000000000.*declared {n_train} training rows"):
        strict.run_round(0)
    np.testing.assert_array_equal(strict.global_params(), before)
    assert issubclass(InflatedExampleCountError, InvalidExampleCountError)

    dropped = FederatedTrainer(tables, FedConfig(**SMALL), client_factory=inflating(10**9))
    dropped.setup()
    w0 = dropped.global_params()
    summary = dropped.fit(progress=False)[0]
    assert set(summary["rejected"]) == {"hospital_3"}
    assert "hospital_3" not in summary["clients"]
    # the honest clients' mean step is small; the liar's 5.0 everywhere is not in it
    assert np.abs(dropped.global_params() - w0).max() < 1.0


def test_an_honest_count_at_the_bound_is_accepted():
    """The bound is local_epochs * declared rows: a client doing 2 epochs over its training
    rows may report twice their number, its real count, and not one more."""
    tables = make_hospitals(sizes=SIZES)
    t = FederatedTrainer(tables, FedConfig(**dict(SMALL, local_epochs=2)),
                         client_factory=inflating(lambda n: 2 * n, push=0.01))
    summary = t.fit(progress=False)[0]
    assert summary["rejected"] == {} and "hospital_3" in summary["clients"]
    t = FederatedTrainer(tables, FedConfig(**dict(SMALL, local_epochs=2)),
                         client_factory=inflating(lambda n: 2 * n + 1, push=0.01))
    assert set(t.fit(progress=False)[0]["rejected"]) == {"hospital_3"}


def poisoning(change):
    """hospital_1 (80 rows) changes its setup statistics with ``change(stats)``."""

    class Poisoning(HospitalClient):
        def on_setup(self, msg):
            (out,) = super().on_setup(msg)
            if self.name != "hospital_1":
                return [out]
            p = dict(out.payload)
            change(p)
            return [self.send(out.receiver, out.kind, out.label, p)]

    return Poisoning


def _nan_sum(p):
    p["sum"] = np.where(np.arange(len(p["sum"])) == 0, np.nan, p["sum"])


def _inf_sumsq(p):
    p["sumsq"] = np.full_like(p["sumsq"], np.inf)


def _negative_sumsq(p):
    p["sumsq"] = -np.abs(p["sumsq"]) - 1.0


def _impossible_sum(p):  # sum^2 > n * sumsq cannot happen for real rows
    p["sum"] = p["sum"] + 1e6


def _huge_rows(p):
    p["n_train"] = MAX_CLIENT_ROWS + 1


def _fewer_rows_than_moments(p):
    p["n_train"] = p["n"] - 1


def _float_count(p):
    p["n"] = float(p["n"])


@pytest.mark.parametrize("change,error,text", [
    (_nan_sum, InvalidSetupStatsError, "NaN or Inf"),
    (_inf_sumsq, InvalidSetupStatsError, "NaN or Inf"),
    (_negative_sumsq, InvalidSetupStatsError, "impossible"),
    (_impossible_sum, InvalidSetupStatsError, "impossible"),
    (_huge_rows, InvalidSetupStatsError, "training rows"),
    (_fewer_rows_than_moments, InvalidSetupStatsError, "training rows"),
    (_float_count, InvalidSetupStatsError, "training rows"),
])
def test_poisoned_setup_statistics_are_refused(change, error, text):
    """Before: a NaN sum made the pooled mean NaN and every client's features NaN."""
    tables = make_hospitals(sizes=SIZES)
    strict = FederatedTrainer(tables, FedConfig(**SMALL, on_bad_update="raise"),
                              client_factory=poisoning(change))
    with pytest.raises(error, match=f"hospital_1.*{text}|{text}.*hospital_1"):
        strict.setup()
    lenient = FederatedTrainer(tables, FedConfig(**SMALL), client_factory=poisoning(change))
    lenient.setup()
    assert set(lenient.excluded) == {"hospital_1"}
    assert lenient.members == ["hospital_0", "hospital_2", "hospital_3"]
    for name in lenient.members:
        assert np.isfinite(lenient.clients[name].x_train).all()
    assert np.isfinite(lenient.fit(progress=False)[0]["loss"])


# -- who may send what -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    t = FederatedTrainer(make_hospitals(sizes=SIZES), FedConfig(**SMALL))
    t.fit(progress=False)
    return t


@pytest.mark.parametrize("sender,kind", [
    ("hospital_1", "setup"),  # a peer posing as the server
    (COORDINATOR, "setup"),
    ("hospital_1", "setup.scaler"),
    ("hospital_1", "fit"),
    ("hospital_1", "evaluate"),
    ("hospital_1", "finetune"),
    ("server", "fit.collect"),
])
def test_clients_only_accept_messages_from_their_server_or_the_coordinator(
        trained, sender, kind):
    client = trained.clients["hospital_0"]
    x_before = client.x_train.copy()
    payload = {"config": trained.config.to_json(), "columns": list(client.table.columns),
               "mean": np.zeros(5), "scale": np.ones(5), "global": trained.global_params()}
    msg = Message(sender, "hospital_0", kind, Label.PUBLIC, payload, round=99)
    with pytest.raises(UnexpectedSenderError, match=f"{kind}.*{sender}.*only"):
        client.handle(msg)
    np.testing.assert_array_equal(client.x_train, x_before)


@pytest.mark.parametrize("sender,kind", [
    ("hospital_0", "setup"),
    ("hospital_0", "setup.finish"),
    ("hospital_0", "round.start"),
    ("hospital_0", "round.retry"),
    ("hospital_0", "round.aggregate"),
    ("hospital_0", "eval.request"),
    ("hospital_0", "finetune.request"),
    ("mallory", "setup.stats"),  # not invited
    ("mallory", "fit.update"),  # not a member
    (COORDINATOR, "fit.update"),
])
def test_the_server_checks_who_sent_each_message(trained, sender, kind):
    before = trained.global_params()
    msg = Message(sender, "server", kind, Label.PUBLIC, {"n": 1, "num_examples": 1}, round=99)
    with pytest.raises(UnexpectedSenderError, match=f"{kind}.*{sender}"):
        trained.server.handle(msg)
    np.testing.assert_array_equal(trained.global_params(), before)
    assert trained.server.members == ["hospital_0", "hospital_1", "hospital_2", "hospital_3"]


def test_a_client_refuses_a_poisoned_scaler_or_model(trained):
    client = trained.clients["hospital_0"]
    for bad in ({"mean": np.full(5, np.nan), "scale": np.ones(5)},
                {"mean": np.zeros(5), "scale": np.zeros(5)},
                {"mean": np.zeros(3), "scale": np.ones(3)}):
        with pytest.raises(PayloadShapeError):
            client.handle(Message("server", "hospital_0", "setup.scaler", Label.PUBLIC, bad))
    w = trained.global_params()
    w[0] = np.inf
    with pytest.raises(ProtocolError, match="NaN/Inf"):
        client.handle(Message("server", "hospital_0", "fit", Label.PUBLIC, {"global": w},
                              round=50))


def malformed_update(field, value):
    class Malformed(HospitalClient):
        def on_collect(self, msg):
            replies = super().on_collect(msg)
            if self.name != "hospital_2":
                return replies
            p = dict(replies[0].payload) | {field: value}
            return [self.send("server", "fit.update", replies[0].label, p, round=msg.round)]

    return Malformed


@pytest.mark.parametrize("field,value", [("steps", "7"), ("full_steps", -1), ("loss", "low"),
                                         ("steps", True)])
def test_malformed_update_fields_are_refused_by_name(field, value):
    """Before: ``float("low")`` or ``int("7")`` raised a bare ValueError or passed."""
    t = FederatedTrainer(make_hospitals(sizes=SIZES),
                         FedConfig(**SMALL, on_bad_update="raise"),
                         client_factory=malformed_update(field, value))
    t.setup()
    with pytest.raises(UpdateShapeError, match="hospital_2"):
        t.run_round(0)


@pytest.mark.parametrize("change", [
    lambda j: j.pop("task"),
    lambda j: j.update(hidden="16"),
    lambda j: j.update(rounds="5"),
    lambda j: j.update(client_lr=float("nan")),
    lambda j: j.update(local_epochs=1.5),
    lambda j: j.update(surprise=1),
    lambda j: j["systems"].pop("deadline"),
])
def test_malformed_setup_configs_raise_fed_config_error(change):
    obj = FedConfig(**SMALL).to_json()
    change(obj)
    with pytest.raises(FedConfigError):
        FedConfig.from_json(obj)


def test_nan_settings_are_refused():
    with pytest.raises(FedConfigError, match="client_lr"):
        FedConfig(client_lr=float("nan"))
    with pytest.raises(FedConfigError, match="fraction"):
        FedConfig(fraction=float("nan"))
