"""The issue's bars on real clinical data (slow): ``paillier`` trains the same model as
plain split learning on ACTG 320 and GSE7390, and the aggregate-inversion attack recovers
every label from ``paillier-masked-gradient`` on GSE7390 but nothing under ``paillier``."""

import dataclasses

import pytest

from scenarios.vertical_runs import audit_passives
from tests.conftest import insecure_policy
from tests.test_source_layer_protocol import assert_same_model
from vfl.attacks.label_leakage import capture_received
from vfl.core.tasks import Task
from vfl.datasets import load_actg320, load_gse7390
from vfl.vertical.config import SecurityPolicy, TrainConfig
from vfl.vertical.federation import Federation
from vfl.vertical.models import ModelConfig
from vfl.vertical.trainer import SplitTrainer

pytestmark = pytest.mark.slow

CONFIG = TrainConfig(Task("binary"), ModelConfig("linear", "mlp", embed_dim=2, top_hidden=(4,)),
                     epochs=2, batch_size=64, learning_rate=0.2, optimizer="momentum", seed=0,
                     key_bits=512, insecure_test_key=True, test_fraction=0.35)


def federation(dataset, policy=None, *, views=False):
    fed = Federation.from_dataset(dataset, policy=policy or insecure_policy())
    fed.align()
    captured = {p: capture_received(fed.transport, p) for p in fed.passives} if views else None
    return fed, captured


def fit(dataset, config, policy=None):
    fed, views = federation(dataset, policy, views=True)
    trainer = SplitTrainer(fed, config)
    trainer.fit(progress=False)
    return fed, trainer, views


@pytest.mark.parametrize("loader", [load_actg320, load_gse7390], ids=["actg320", "gse7390"])
def test_paillier_equals_plain_on_real_data(loader):
    dataset = loader(seed=0)
    fa, ta, _ = fit(dataset, dataclasses.replace(CONFIG, protocol="plain"))
    fb, tb, views = fit(dataset, CONFIG)
    assert_same_model(fa, ta, fb, tb)
    for name, rep in audit_passives(fb, views).items():
        assert rep.inversion_auc <= 0.6, (name, rep.inversion_auc)


def test_aggregate_inversion_breaks_the_masked_protocol_on_gse7390():
    """The genomics lab (76 genes, MLP bottom 76-16-8: 1,368 parameters >= 64 x 8) solves
    its aggregate gradient for every per-sample gradient. Production refuses this
    configuration; the audit policy lets it run to measure the attack."""
    dataset = load_gse7390(seed=0)
    config = TrainConfig(Task("binary"), ModelConfig("mlp", "mlp", hidden=(16,), embed_dim=8,
                                                     top_hidden=(8,)),
                         epochs=1, batch_size=64, learning_rate=0.05, optimizer="sgd", seed=0,
                         protocol="paillier-masked-gradient", key_bits=512,
                         insecure_test_key=True, test_fraction=0.35)
    audit_policy = SecurityPolicy(min_key_bits=512, allow_insecure_test_key=True,
                                  allow_invertible_masked_gradient=True)
    fed, _, views = fit(dataset, config, audit_policy)
    (report,) = audit_passives(fed, views).values()
    assert report.inversion_auc == pytest.approx(1.0, abs=1e-9)
