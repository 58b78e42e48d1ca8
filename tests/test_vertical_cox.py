"""The vertical Cox model (vfl.survival.federated): the fit over three parties equals
scikit-survival's centralized fit, plain and encrypted compute bitwise the same model, what a
passive receives under paillier carries no label in the clear, collinear columns across
parties are refused, and an erasure equals a retrain."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("sksurv")

from sksurv.datasets import load_aids, load_whas500  # noqa: E402
from sksurv.linear_model import CoxPHSurvivalAnalysis  # noqa: E402

from vfl.core.errors import ConfigError, SecurityPolicyError  # noqa: E402
from vfl.core.messages import Label  # noqa: E402
from vfl.core.table import PartyTable  # noqa: E402
from vfl.survival.config import CoxConfig  # noqa: E402
from vfl.survival.cox import fit_cox, standard_errors  # noqa: E402
from vfl.survival.errors import (  # noqa: E402
    CollinearFeaturesError,
    NegativeTimeError,
    NoEventsError,
)
from vfl.survival.federated import VerticalCox  # noqa: E402
from vfl.vertical.config import SecurityPolicy  # noqa: E402

TEST_KEY = SecurityPolicy(allow_insecure_test_key=True, min_key_bits=1024)


def _tables(x, columns_by_party, time, event, *, ids=None, drop=()):
    ids = np.array(ids if ids is not None else [f"p{i:04d}" for i in range(len(time))])
    keep = ~np.isin(ids, list(drop))
    labels = np.column_stack([time, event.astype(float)])[keep]
    out = {}
    for k, (party, cols) in enumerate(columns_by_party.items()):
        out[party] = PartyTable.from_numpy(
            ids[keep], x[cols].astype(float).to_numpy()[keep], cols,
            labels=labels if k == 0 else None, label_name="time,event" if k == 0 else None)
    return out


@pytest.fixture(scope="module")
def whas500():
    x, y = load_whas500()
    parties = {"hospital": ["age"], "clinic": ["bmi"], "lab": ["sysbp"]}
    return x, y, parties, y["lenfol"], y["fstat"]


@pytest.fixture(scope="module")
def actg():
    x, y = load_aids(endpoint="aids")
    x = x.copy()
    for col in ("sex", "hemophil", "strat2", "tx"):
        x[col] = (x[col].astype(object) == "1").astype(float)
    for col in ("ivdrug", "karnof", "raceth"):
        x[col] = x[col].astype(float)
    # The treatment groups 2 and 4 are exactly the indinavir arm: this column duplicates tx
    # (the shipped integer txgrp differs from tx + 1 for 3 patients in groups 3 and 4).
    x["txgrp_arm"] = x["txgrp"].astype(object).isin(["2", "4"]).astype(float)
    parties = {"hospital": ["age", "karnof", "sex", "ivdrug"], "lab": ["cd4"],
               "pharmacy": ["tx", "priorzdv"]}
    return x, y, parties, y["time"], y["censor"]


def _fit(data, config, **kw):
    x, _, parties, time, event = data
    fed = VerticalCox(_tables(x, parties, time, event, **kw), "hospital", config,
                      policy=TEST_KEY)
    return fed, fed.fit(progress=False)


def _sksurv(data, columns):
    x, y, *_ = data
    return CoxPHSurvivalAnalysis(ties="breslow").fit(x[columns].astype(float), y).coef_


PLAIN = CoxConfig(protocol="plain", test_fraction=0.0)
ENCRYPTED = CoxConfig(protocol="paillier", key_bits=1024, insecure_test_key=True,
                      test_fraction=0.0)


def test_whas500_vertical_fit_equals_scikit_survival_plain_and_encrypted(whas500):
    columns = [c for cols in whas500[2].values() for c in cols]
    expected = _sksurv(whas500, columns)
    _, plain = _fit(whas500, PLAIN)
    _, encrypted = _fit(whas500, ENCRYPTED)
    assert [c.column for c in plain.coefficients] == columns
    np.testing.assert_allclose(plain.coef(), expected, atol=1e-5, rtol=0)
    print("WHAS500 max |vertical - sksurv|:", np.abs(plain.coef() - expected).max())
    # Both protocols run the same integer arithmetic: the same model, bitwise.
    assert plain.coef().tobytes() == encrypted.coef().tobytes()
    assert [c.se for c in plain.coefficients] == [c.se for c in encrypted.coefficients]
    assert plain.rounds == encrypted.rounds <= 3  # one direction per party: exact in 2 rounds
    # Standard errors: the inverse observed information of the pooled fit.
    x, _, _, time, event = whas500
    central = fit_cox(x[columns].astype(float).to_numpy(), time, event)
    np.testing.assert_allclose([c.se for c in plain.coefficients],
                               standard_errors(central.information), rtol=1e-6)


def test_actg320_well_posed_covariates_equal_scikit_survival(actg):
    columns = [c for cols in actg[2].values() for c in cols]
    expected = _sksurv(actg, columns)
    fed, fit = _fit(actg, PLAIN)
    np.testing.assert_allclose(fit.coef(), expected, atol=1e-5, rtol=0)
    # at most max_k d_k + 1 rounds (the hospital's own columns need none)
    assert fit.rounds <= 3
    x, _, _, time, event = actg
    central = fit_cox(x[columns].astype(float).to_numpy(), time, event)
    np.testing.assert_allclose([c.se for c in fit.coefficients],
                               standard_errors(central.information), rtol=1e-6)


@pytest.mark.slow
def test_actg320_encrypted_equals_plain_bitwise(actg):
    _, plain = _fit(actg, PLAIN)
    fed, encrypted = _fit(actg, ENCRYPTED)
    assert plain.coef().tobytes() == encrypted.coef().tobytes()
    # What a passive received: ciphertexts, public control and masked values, nothing else.
    for passive in ("lab", "pharmacy"):
        labels = {e.label for e in fed.transcript.received_by(passive)
                  if e.kind.startswith("cox.")}
        assert labels <= {str(Label.PUBLIC), str(Label.CIPHERTEXT), str(Label.MASKED)}, labels


def test_passive_receives_no_label_dependent_plaintext_under_paillier(whas500):
    fed, _ = _fit(whas500, ENCRYPTED)
    for passive in ("clinic", "lab"):
        got = fed.transcript.received_by(passive)
        kinds = {e.kind for e in got if e.label_dependent}
        assert kinds == {"cox.update", "cox.release_factor", "cox.unmasked"}
        assert all(e.label == str(Label.CIPHERTEXT) for e in got
                   if e.label_dependent and e.kind != "cox.unmasked")
        # the one plaintext it gets from the hospital is its own release under its masks
        assert {e.label for e in got if e.kind == "cox.unmasked"} == {str(Label.MASKED)}


def test_collinear_columns_across_parties_are_refused(actg):
    x, y, _, time, event = actg
    split = {"hospital": ["age", "txgrp_arm"], "lab": ["cd4"], "pharmacy": ["tx", "priorzdv"]}
    fed = VerticalCox(_tables(x, split, time, event), "hospital", PLAIN)
    with pytest.raises(CollinearFeaturesError, match="txgrp_arm.*pharmacy"):
        fed.fit(progress=False)


def test_collinear_columns_within_a_party_are_refused_at_its_setup(actg):
    x, y, _, time, event = actg
    split = {"hospital": ["age"], "pharmacy": ["tx", "txgrp_arm", "priorzdv"]}
    fed = VerticalCox(_tables(x, split, time, event), "hospital", PLAIN)
    with pytest.raises(CollinearFeaturesError, match="'pharmacy'.*txgrp"):
        fed.fit(progress=False)


def test_bad_outcomes_get_their_own_errors(whas500):
    x, _, parties, time, event = whas500
    bad_time = np.array(time, dtype=float)
    bad_time[3] = -1.0
    with pytest.raises(NegativeTimeError):
        VerticalCox(_tables(x, parties, bad_time, event), "hospital", PLAIN).fit(progress=False)
    with pytest.raises(NoEventsError):
        VerticalCox(_tables(x, parties, time, np.zeros(len(time), bool)), "hospital",
                    PLAIN).fit(progress=False)


def test_configs_and_policies_are_checked():
    with pytest.raises(ConfigError, match="paillier' or 'plain"):
        CoxConfig(protocol="paillier-masked-gradient")
    with pytest.raises(ConfigError, match="ties"):
        CoxConfig(ties="exact")
    with pytest.raises(ConfigError, match="unknown Cox setting"):
        CoxConfig.from_json({"protocl": "plain"})


def test_a_passive_policy_refuses_the_plain_protocol(whas500):
    x, _, parties, time, event = whas500
    fed = VerticalCox(_tables(x, parties, time, event), "hospital", PLAIN,
                      policy=SecurityPolicy(protocols=("paillier",)))
    with pytest.raises(SecurityPolicyError, match="plain"):
        fed.fit(progress=False)


def test_erasure_equals_a_retrain_without_those_patients(whas500):
    x, _, parties, time, event = whas500
    gone = [f"p{i:04d}" for i in (3, 17, 42, 99, 250)]
    config = CoxConfig(protocol="plain", test_fraction=0.2)
    fed = VerticalCox(_tables(x, parties, time, event), "hospital", config)
    before = fed.fit(progress=False)
    acks = fed.erase(gone)
    assert all(a["deleted"] == len(gone) for a in acks.values())
    fresh = VerticalCox(_tables(x, parties, time, event, drop=gone), "hospital", config)
    after = fresh.fit(progress=False)
    assert fed.fitted.coef().tobytes() == after.coef().tobytes()
    assert fed.fitted.coef().tobytes() != before.coef().tobytes()
    assert fed.evaluate()["c_index"] == fresh.evaluate()["c_index"]


def test_held_out_c_index_equals_the_centralized_model(whas500):
    x, y, parties, time, event = whas500
    config = CoxConfig(protocol="plain", test_fraction=0.25, seed=3)
    fed = VerticalCox(_tables(x, parties, time, event), "hospital", config)
    fit = fed.fit(progress=False)
    metrics = fed.evaluate("test")
    assert 0.6 < metrics["c_index"] < 0.9
    hospital = fed.parties["hospital"]
    test_ids = hospital.test_rows.ids
    index = np.array([int(i[1:]) for i in test_ids])
    columns = [c for cols in parties.values() for c in cols]
    eta = x[columns].astype(float).to_numpy()[index] @ fit.coef()
    from vfl.survival.metrics import c_index

    central = c_index(time[index], event[index], eta)
    assert abs(metrics["c_index"] - central) < 1e-6


@settings(max_examples=8, deadline=None)
@given(n=st.integers(60, 160), widths=st.lists(st.integers(1, 3), min_size=2, max_size=3),
       ties=st.sampled_from(["breslow", "efron"]), seed=st.integers(0, 2**16))
def test_vertical_fit_equals_the_pooled_newton_fit_for_random_splits(n, widths, ties, seed):
    """Any split of a design over 2-3 parties (1-3 columns each), with tied times and
    censoring: the vertical fit is the pooled maximum partial likelihood."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    d = sum(widths)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 5, size=d) + rng.normal(size=d)
    beta = rng.normal(scale=0.4, size=d)
    time = np.ceil(rng.exponential(np.exp(-(x - x.mean(0)) / x.std(0) @ beta)) * 20)
    event = rng.random(n) < 0.7
    cols = [f"c{j}" for j in range(d)]
    frame = pd.DataFrame(x, columns=cols)
    parties, start = {}, 0
    for k, w in enumerate(widths):
        parties[["hospital", "lab", "pharmacy"][k]] = cols[start:start + w]
        start += w
    config = CoxConfig(protocol="plain", test_fraction=0.0, ties=ties)
    fit = VerticalCox(_tables(frame, parties, time, event), "hospital", config).fit(
        progress=False)
    central = fit_cox(x, time, event, ties=ties)
    np.testing.assert_allclose(fit.coef(), central.coef, atol=1e-6, rtol=1e-6)
    assert fit.rounds <= max(widths[1:]) + 2


def test_label_attack_on_what_a_passive_received(whas500):
    """The direction attack (one known positive) on every cox.update a passive received:
    the plain protocol hands it s * dL/deta per patient (the event flag falls out); under
    paillier the same attack on the ciphertexts is at chance."""
    from vfl.attacks.label_leakage import capture_received, full_batch_update_auc

    x, _, parties, time, event = whas500
    aucs = {}
    for config in (PLAIN, ENCRYPTED):
        fed = VerticalCox(_tables(x, parties, time, event), "hospital", config, policy=TEST_KEY)
        got = capture_received(fed.transport, "lab")
        fed.fit(progress=False)
        hospital = fed.parties["hospital"]
        rows = list(hospital.train_rows.ids)
        labels = dict(zip(rows, hospital.event.astype(int)))
        key = hospital._keyring.public_key if hospital._keyring is not None else None
        aucs[config.protocol] = full_batch_update_auc(got, rows, labels, kind="cox.update",
                                                      public_key=key)
    print("label attack AUC on the lab's cox.update:", aucs)
    assert aucs["plain"] > 0.9
    assert 0.4 < aucs["paillier"] < 0.6
