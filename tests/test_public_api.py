"""The public API: top-level imports, user-supplied Flax NNX modules and Optax optimizers,
weight decay that leaves biases alone, trained parameters, and configs that hold Python
objects (described in JSON, refused when read back)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import vfl
from tests.conftest import aligned_federation, make_vertical_tables
from vfl import ModelConfig, SplitTrainer, Task, TrainConfig
from vfl.core.errors import ConfigError, UnsupportedAtPassiveError
from vfl.core.optim import make_optimizer, register_optimizer
from vfl.vertical.models import ModelHandle, register_model


class TinyNet(nnx.Module):
    """A user's bottom model: one tanh hidden layer."""

    def __init__(self, d_in, d_out, *, rngs):
        self.hidden = nnx.Linear(d_in, 4, rngs=rngs)
        self.out = nnx.Linear(4, d_out, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def tiny_top(d_in, d_out, *, rngs):
    """A user's top model, as a factory function."""
    return nnx.Linear(d_in, d_out, rngs=rngs)


def two_party_tables():
    return make_vertical_tables(n=90, seed=3, widths=(3, 4))


def fit(config, *, policy="test"):
    fed = aligned_federation(two_party_tables(), policy=policy)
    trainer = SplitTrainer(fed, config)
    trainer.setup()
    before = trainer.parameters()
    history = trainer.fit(progress=False)
    return fed, trainer, before, history


def changed(a, b) -> bool:
    return any(
        not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


# -- public API -----------------------------------------------------------------------------
def test_top_level_imports():
    from vfl import (  # noqa: F401
        DATASETS,
        Federation,
        Label,
        Message,
        PartyTable,
        SecurityPolicy,
        TrainHistory,
        Transcript,
        errors,
        load_dataset,
    )

    assert vfl.errors.ConfigError is ConfigError
    assert vfl.make_optimizer is make_optimizer
    assert isinstance(vfl.__version__, str)
    assert set(vfl.__all__) >= {
        "PartyTable", "Federation", "TrainConfig", "SecurityPolicy", "SplitTrainer",
        "TrainHistory", "load_dataset", "Transcript", "Label", "Message", "make_optimizer",
        "errors", "__version__",
    }
    assert all(hasattr(vfl, name) for name in vfl.__all__)
    assert "actg320" in DATASETS

    import horizontal

    for name in ("FedConfig", "FederatedTrainer", "HospitalClient", "FedServer",
                 "SystemsConfig", "iid", "dirichlet_label_skew", "quantity_skew", "natural",
                 "partition", "errors", "FedConfigError"):
        assert name in horizontal.__all__ and hasattr(horizontal, name), name
    assert horizontal.errors.FedConfigError is horizontal.FedConfigError


# -- user modules and optimizers ------------------------------------------------------------
def test_custom_nnx_bottoms_and_top_train_under_plain():
    config = TrainConfig(
        Task("binary"), ModelConfig(bottom=TinyNet, top=tiny_top, embed_dim=3), epochs=2,
        batch_size=32, learning_rate=0.1, protocol="plain",
    )
    fed, trainer, before, history = fit(config)
    assert len(history.loss) == trainer.n_rounds and np.isfinite(history.loss).all()
    after = trainer.parameters()
    assert set(after["hospital"]["bottom"]) == {"hidden", "out"}
    assert set(after["lab"]) == {"hidden", "out"}
    assert after["lab"]["out"]["kernel"].shape == (4, 3)
    assert after["hospital"]["top"]["body"]["kernel"].shape == (6, 1)
    for name in fed.names:
        assert changed(before[name], after[name]), name
    assert 0.0 <= trainer.evaluate()["metrics"]["auc"] <= 1.0


def test_optax_chain_optimizer_trains_end_to_end():
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05))
    config = TrainConfig(
        Task("binary"), ModelConfig("mlp", "linear", hidden=(4,), embed_dim=2), epochs=2,
        batch_size=32, optimizer=tx, protocol="plain",
    )
    fed, trainer, before, history = fit(config)
    assert np.isfinite(history.loss).all()
    after = trainer.parameters()
    assert all(changed(before[n], after[n]) for n in fed.names)
    # the transformation is described in the JSON (and so in the digest), never rebuilt
    assert config.to_json()["optimizer"].startswith("custom:")
    assert not config.is_portable


@pytest.mark.parametrize("form", ["primal", "dual"])
def test_custom_active_bottom_and_optimizer_under_paillier(form, serial_default_pool):
    config = TrainConfig(
        Task("binary"), ModelConfig(bottom={"hospital": TinyNet}, top="linear", embed_dim=2),
        epochs=1, batch_size=32, learning_rate=0.2,
        optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.2)),
        passive_optimizer="sgd", key_bits=512, insecure_test_key=True, source_form=form,
    )
    fed, trainer, before, history = fit(config)
    assert np.isfinite(history.loss).all()
    after = trainer.parameters()
    assert set(after["hospital"]["bottom"]) == {"hidden", "out"}
    assert changed(before["hospital"], after["hospital"])
    # the passive holds its source layer as a share plus ciphertexts, never in plaintext
    assert set(after["lab"]) == {"source"}
    decrypted = trainer.parameters(decrypt=True)
    w = decrypted["lab"]["linear"]["kernel"]
    assert w.shape == (4, 2) and np.abs(w).sum() > 0
    # the same run in plaintext learns the same source layer (the protocol is exact up to
    # its fixed-point grid)
    _, plain, _, _ = fit(dataclasses.replace(config, protocol="plain"))
    np.testing.assert_allclose(w, plain.parameters()["lab"]["linear"]["kernel"], atol=1e-4)
    assert 0.0 <= trainer.evaluate()["metrics"]["auc"] <= 1.0


def test_custom_passive_bottom_is_refused_under_paillier():
    with pytest.raises(UnsupportedAtPassiveError, match="linear"):
        TrainConfig(Task("binary"), ModelConfig(bottom=TinyNet, top="linear"),
                    key_bits=512, insecure_test_key=True)
    config = TrainConfig(
        Task("binary"), ModelConfig(bottom={"lab": TinyNet}, top="linear"), key_bits=512,
        insecure_test_key=True,
    )
    fed = aligned_federation(two_party_tables())
    sent = len(fed.transcript.entries)
    with pytest.raises(UnsupportedAtPassiveError, match="'lab'"):
        SplitTrainer(fed, config).setup()
    assert len(fed.transcript.entries) == sent  # refused before any setup message
    with pytest.raises(UnsupportedAtPassiveError, match="lab"):
        config.check_passive_bottom("lab")  # each passive runs the same check at setup
    with pytest.raises(ConfigError, match="not parties"):
        dataclasses.replace(config, model=ModelConfig(bottom={"nurse": TinyNet})).check_parties(
            "hospital", ["lab"]
        )
    # the passives' optimizer runs on dual coefficients: it must stay sgd or momentum
    with pytest.raises(UnsupportedAtPassiveError, match="passive_optimizer"):
        TrainConfig(Task("binary"), optimizer=optax.adam(0.1), key_bits=512,
                    insecure_test_key=True)


def test_module_instances_and_bad_modules_are_refused():
    with pytest.raises(ConfigError, match="factory"):
        ModelConfig(bottom=TinyNet(2, 1, rngs=nnx.Rngs(0)))
    with pytest.raises(ConfigError, match="one of"):
        ModelConfig(bottom="transformer")

    from vfl.vertical.models import make_bottom

    wrong = ModelConfig(bottom=lambda d_in, d_out, *, rngs: nnx.Linear(d_in, 5, rngs=rngs),
                        top="linear", embed_dim=2)
    with pytest.raises(ConfigError, match="expected"):
        make_bottom(wrong, 3, 1, jax.random.key(0))


# -- weight decay ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_weight_decay_can_leave_biases_unpenalized(name):
    module = TinyNet(3, 2, rngs=nnx.Rngs(params=0))
    params = jax.tree.map(lambda a: a + 0.7, ModelHandle(module).params)  # no zero bias
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = make_optimizer(name, 0.1, weight_decay=0.5, decay_biases=False)
    updates, _ = tx.update(zero, tx.init(params), params)
    flat = {jax.tree_util.keystr(p): np.asarray(u)
            for p, u in jax.tree_util.tree_leaves_with_path(updates)}
    biases = [k for k in flat if "bias" in k]
    kernels = [k for k in flat if "kernel" in k]
    assert biases and kernels
    for k in biases:  # the penalty never reaches a bias: a zero gradient stays zero
        assert not flat[k].any(), k
    for k in kernels:
        assert flat[k].any(), k
    # the default still decays every parameter, biases included (today's behaviour)
    tx = make_optimizer(name, 0.1, weight_decay=0.5)
    updates, _ = tx.update(zero, tx.init(params), params)
    nonzero_bias = [np.asarray(u).any() for p, u in jax.tree_util.tree_leaves_with_path(updates)
                    if "bias" in jax.tree_util.keystr(p)]
    assert nonzero_bias and all(nonzero_bias)


def test_weight_decay_is_coupled_l2_except_adamw():
    w = {"kernel": jnp.array([[2.0, -4.0]])}
    g = {"kernel": jnp.array([[0.5, 0.5]])}
    sgd = make_optimizer("sgd", 0.1, weight_decay=0.5)
    u, _ = sgd.update(g, sgd.init(w), w)
    # coupled: the gradient of loss + wd/2 ||w||^2, scaled by the learning rate
    np.testing.assert_allclose(u["kernel"], -0.1 * (g["kernel"] + 0.5 * w["kernel"]),
                               rtol=1e-6)
    adamw = make_optimizer("adamw", 0.1, weight_decay=0.5)
    adam = make_optimizer("adam", 0.1)
    ua, _ = adamw.update(g, adamw.init(w), w)
    ub, _ = adam.update(g, adam.init(w), w)
    # decoupled: the decay is added after Adam's scaling
    np.testing.assert_allclose(ua["kernel"], ub["kernel"] - 0.1 * 0.5 * w["kernel"], rtol=1e-6)


def test_decay_biases_in_config_json_only_when_off():
    base = TrainConfig(Task("binary"), weight_decay=0.1, protocol="plain")
    off = dataclasses.replace(base, decay_biases=False)
    assert "decay_biases" not in base.to_json()
    assert off.to_json()["decay_biases"] is False
    assert base.digest() != off.digest()
    assert TrainConfig.from_json(json.loads(json.dumps(off.to_json()))) == off
    assert TrainConfig.from_json(base.to_json()) == base


def test_decay_biases_off_trains_and_changes_only_the_penalty():
    model = ModelConfig("mlp", "linear", hidden=(4,), embed_dim=2)
    kw = dict(epochs=1, batch_size=32, learning_rate=0.1, weight_decay=0.5, protocol="plain")
    _, on, _, _ = fit(TrainConfig(Task("binary"), model, **kw))
    _, off, _, h = fit(TrainConfig(Task("binary"), model, decay_biases=False, **kw))
    assert np.isfinite(h.loss).all()
    a, b = on.parameters()["lab"], off.parameters()["lab"]
    assert not np.array_equal(a["out"]["bias"], b["out"]["bias"])


# -- the one optimizer factory --------------------------------------------------------------
def test_horizontal_optimizers_are_bitwise_the_direct_optax_ones():
    from horizontal.client_update import client_optimizer
    from horizontal.strategies import server_optimizer

    direct = {
        "fedavg": optax.sgd(0.3),
        "fedavgm": optax.sgd(0.3, momentum=0.9),
        "fedadam": optax.adam(0.3, b1=0.9, b2=0.99, eps=1e-3),
        "fedyogi": optax.yogi(0.3, b1=0.9, b2=0.99, eps=1e-3),
        "fedadagrad": optax.adagrad(0.3, initial_accumulator_value=0.0, eps=1e-3),
        "client:sgd": optax.sgd(0.3),
        "client:momentum": optax.sgd(0.3, momentum=0.9),
    }
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=7), jnp.float32)
    grads = [jnp.asarray(rng.normal(size=7), jnp.float32) for _ in range(3)]
    for name, ref in direct.items():
        ours = (client_optimizer(name.split(":")[1], 0.3) if name.startswith("client:")
                else server_optimizer(name, 0.3))
        s1, s2 = ours.init(w), ref.init(w)
        for g in grads:
            u1, s1 = ours.update(g, s1, w)
            u2, s2 = ref.update(g, s2, w)
            assert np.array_equal(np.asarray(u1), np.asarray(u2)), name


def test_make_optimizer_accepts_a_transformation():
    tx = optax.chain(optax.clip(1.0), optax.sgd(0.1))
    assert make_optimizer(tx, 0.05) is tx
    with pytest.raises(ConfigError, match="used as given"):
        make_optimizer(tx, 0.05, b1=0.9)
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        make_optimizer("lion", 0.1)


# -- configs in JSON ------------------------------------------------------------------------
def test_python_objects_are_described_in_json_and_refused_when_read():
    config = TrainConfig(Task("binary"), ModelConfig(bottom={"hospital": TinyNet}),
                         optimizer=optax.adam(0.1), passive_optimizer="sgd", protocol="plain")
    obj = json.loads(json.dumps(config.to_json()))
    assert obj["model"]["bottom"] == {"hospital": f"custom:{__name__}.TinyNet"}
    assert obj["optimizer"].startswith("custom:")
    assert len(config.digest()) == 64
    with pytest.raises(ConfigError, match="register_model"):
        TrainConfig.from_json(obj)
    obj["model"]["bottom"] = "linear"
    with pytest.raises(ConfigError, match="register_optimizer"):
        TrainConfig.from_json(obj)


def test_registered_names_round_trip_through_json():
    register_model("test_tiny_net", TinyNet)
    register_optimizer("test_clipped_sgd",
                       lambda lr: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(lr)))
    config = TrainConfig(Task("binary"), ModelConfig("test_tiny_net", "linear", embed_dim=2),
                         epochs=1, batch_size=32, optimizer="test_clipped_sgd",
                         protocol="plain")
    assert config.is_portable
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    _, trainer, before, history = fit(config)
    assert np.isfinite(history.loss).all()
    assert set(trainer.parameters()["lab"]) == {"hidden", "out"}
    with pytest.raises(ConfigError, match="built-in"):
        register_model("mlp", TinyNet)


# -- trained parameters ---------------------------------------------------------------------
def test_parameters_are_the_trained_ones():
    config = TrainConfig(Task("binary"), epochs=1, batch_size=32, learning_rate=0.1,
                         protocol="plain")
    fed, trainer, before, _ = fit(config)
    params = trainer.parameters()
    assert set(params) == {"hospital", "lab"}
    for name in fed.names:
        snap = fed.parties[name].snapshot().params
        assert not changed(params[name], snap)
        assert changed(before[name], params[name])
    assert params["lab"]["linear"]["kernel"].shape == (4, 1)
    assert params["hospital"]["top"]["bias"].shape == (1,)


def test_federated_trainer_parameters_are_the_global_model():
    from horizontal import FedConfig, FederatedTrainer, iid
    from horizontal import partition as part

    rng = np.random.default_rng(0)
    ids = np.array([f"p{i}" for i in range(80)], dtype=object)
    x = rng.normal(size=(80, 3))
    y = (x[:, 0] > 0).astype(int)
    parts = iid(ids, 2, seed=0)
    tables = part.tables(ids, x, y, ["a", "b", "c"], parts)
    trainer = FederatedTrainer(tables, FedConfig(hidden=(4,), rounds=2, batch_size=16))
    trainer.fit(progress=False)
    params = trainer.parameters()
    assert params["layers"][0]["kernel"].shape == (3, 4)
    assert params["out"]["kernel"].shape == (4, 1)
    flat = np.concatenate([np.ravel(v) for v in jax.tree.leaves(params)])
    assert np.array_equal(np.sort(flat), np.sort(trainer.global_params()))


def test_split_trainer_from_tables_matches_the_federation_route():
    """``SplitTrainer.from_tables`` (the shape of ``FederatedTrainer(tables, config)``)
    trains the same model as building, aligning and training the federation by hand."""
    from vfl import Federation, ModelConfig, SplitTrainer, Task, TrainConfig, load_dataset

    data = load_dataset("breast_cancer", seed=0)
    config = TrainConfig(Task("binary"), ModelConfig("linear", "sum"), epochs=1,
                         batch_size=64, learning_rate=0.1, protocol="plain")
    short = SplitTrainer.from_tables(data.tables, data.active, config)
    short.fit(progress=False)
    fed = Federation.from_dataset(data)
    fed.align()
    long = SplitTrainer(fed, config)
    long.fit(progress=False)
    a, b = short.parameters(), long.parameters()
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
