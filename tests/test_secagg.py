"""SecAgg+ building blocks (horizontal.secagg): exact sums under dropouts, uniform masked
inputs, never both masks, Shamir thresholds, overflow before masking, the k/t formula."""

from __future__ import annotations

import math
from fractions import Fraction

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from horizontal.secagg import (
    InfeasibleParametersError,
    MaskReconstructionError,
    NotEnoughSharesError,
    QuantizationError,
    Quantizer,
    RingOverflowError,
    SecAggGraph,
    SecAggProtocolError,
    SecAggSetup,
    SecretSharingError,
    ShareDecryptionError,
    TooManyDropoutsError,
    build_graph,
    check_unmask_plan,
    choose_parameters,
    client_advertise,
    client_masked_input,
    client_share_keys,
    client_unmask,
    masks,
    plan_graph,
    server_collect_keys,
    server_collect_masked,
    server_collect_shares,
    server_start,
    server_unmask,
    shamir,
    simulate,
)
from horizontal.secagg import keys as sk
from horizontal.secagg.errors import KeyAgreementError, SecAggError
from vfl.core import wire
from vfl.core.errors import VFLError

NAMES12 = [f"hospital-{c}" for c in "abcdefghijkl"]


def _names(n: int) -> list[str]:
    return NAMES12[:n]


def _random_ring(rng: np.random.Generator, length: int, bits: int) -> np.ndarray:
    return rng.integers(0, 2**bits, size=length, dtype=np.uint64).astype(masks.ring_dtype(bits))


# -- an independent statement of which dropout patterns must succeed ---------------------------
def expected_outcome(g: SecAggGraph, drops: dict[str, int]) -> set[str] | None:
    """U3 when the round must succeed, None when it must raise TooManyDropoutsError."""
    t = g.t

    def alive(stage):
        return {u for u in g.names if drops.get(u, 99) > stage}

    u1, u2, u3, u4 = alive(0), alive(1), alive(2), alive(3)
    holders = {u: set(g.holders(u)) for u in g.names}
    if len(u1) < t or any(len(holders[u] & u1) < t for u in u1):
        return None
    if len(u2) < t or any(len(holders[u] & u2) < t for u in u2):
        return None
    if len(u3) < t or any(len(holders[u] & u3) < t for u in u2):
        return None
    if len(u4) < t:
        return None
    if any(len(holders[u] & u4) < t for u in u3):
        return None
    if any(len((holders[u] - {u}) & u4) < t for u in u2 - u3):
        return None
    return u3


@st.composite
def scenarios(draw):
    n = draw(st.sampled_from(range(3, 13)))
    names = _names(n)
    complete = draw(st.booleans()) or n < 5
    if complete:
        k = n - 1
    else:
        k = draw(st.integers(2, n - 2))  # odd k too: networkx's H(k, n) adds diameters
    min_degree = min(d for _, d in nx.hkn_harary_graph(k, n).degree()) if not complete else k
    t = draw(st.integers(2, min_degree))
    bits = draw(st.sampled_from([32, 64]))
    length = draw(st.integers(1, 40))
    stage = st.sampled_from([None] * 7 + [0, 1, 2, 3])
    drops = {u: s for u in names if (s := draw(stage)) is not None}
    seed = draw(st.integers(0, 2**32 - 1))
    return names, k, t, bits, length, drops, seed


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_aggregate_is_the_exact_ring_sum_under_any_dropouts(scenario):
    names, k, t, bits, length, drops, seed = scenario
    g = build_graph(names, k, t)
    setup = SecAggSetup(g, length=length, bits=bits, round=3, session="run-1")
    rng = np.random.default_rng(seed)
    updates = {u: _random_ring(rng, length, bits) for u in names}
    expected = expected_outcome(g, drops)
    if expected is None:
        with pytest.raises(TooManyDropoutsError):
            simulate(setup, updates, drops)
        return
    result = simulate(setup, updates, drops)
    assert set(result.included) == expected
    assert set(result.dropped) == set(names) - expected
    want = masks.ring_sum((updates[u] for u in expected), length, bits)
    assert result.total.dtype == masks.ring_dtype(bits)
    assert np.array_equal(result.total, want)
    # exactly one secret per client that reached round 2: b for U3, s for U2 \ U3
    u2 = {u for u in names if drops.get(u, 99) > 1}
    assert dict(result.revealed) == {u: ("b" if u in expected else "s") for u in u2}


@pytest.mark.parametrize("k", [11, 4, 3])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_dropout_stage_on_complete_and_sparse_graphs(k, stage):
    names = _names(12)
    g = build_graph(names, k, {11: 7, 4: 3, 3: 2}[k])
    setup = SecAggSetup(g, length=16, bits=32)
    rng = np.random.default_rng(stage)
    updates = {u: _random_ring(rng, 16, 32) for u in names}
    drops = {names[2]: stage, names[7]: stage}
    result = simulate(setup, updates, drops)
    survivors = [u for u in names if u not in drops or stage == 3]  # stage 3: y was sent
    assert list(result.included) == survivors
    assert np.array_equal(result.total, masks.ring_sum((updates[u] for u in survivors), 16, 32))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_more_than_n_minus_t_dropouts_raise_and_return_nothing(stage):
    names = _names(8)
    g = build_graph(names, 7, 5)  # complete graph, t = 5: at most 3 may drop
    setup = SecAggSetup(g, length=8, bits=32)
    updates = {u: np.ones(8, np.uint32) for u in names}
    simulate(setup, updates, {u: stage for u in names[:3]})  # n - t: still fine
    result = None
    with pytest.raises(TooManyDropoutsError, match="threshold|fewer than"):
        result = simulate(setup, updates, {u: stage for u in names[:4]})
    assert result is None


def test_too_many_dropouts_is_a_vfl_error():
    assert issubclass(TooManyDropoutsError, SecAggError)
    assert issubclass(SecAggError, VFLError)


# -- the server's view of one masked input --------------------------------------------------------
def _masked_view(setup: SecAggSetup, updates: dict, who: str) -> np.ndarray:
    server = server_start(setup)
    clients, sent = {}, {}
    for u in setup.graph.names:
        clients[u], sent[u] = client_advertise(setup, u)
    server, out = server_collect_keys(server, sent)
    sent = {}
    for u in setup.graph.names:
        clients[u], sent[u] = client_share_keys(clients[u], out[u])
    server, out = server_collect_shares(server, sent)
    _, msg = client_masked_input(clients[who], out[who], updates[who])
    return msg["masked"]


def _top_byte_counts(y: np.ndarray, bits: int) -> np.ndarray:
    top = (y >> np.array(bits - 8, dtype=y.dtype)).astype(np.int64)
    return np.bincount(top, minlength=256)


@pytest.mark.parametrize("bits", [32, 64])
def test_a_masked_input_is_uniform_whatever_the_update(bits):
    length = 1 << 15
    names = _names(4)
    setup = SecAggSetup(build_graph(names, 3, 2), length=length, bits=bits)
    dtype = masks.ring_dtype(bits)
    big = np.full(length, 2 ** (bits - 1) - 1, dtype=dtype)  # the largest positive value
    views = {}
    for label, update in (("zeros", np.zeros(length, dtype)), ("large", big)):
        updates = {u: update for u in names}
        y = _masked_view(setup, updates, names[0])
        counts = _top_byte_counts(y, bits)
        assert stats.chisquare(counts).pvalue > 1e-6, label
        assert stats.kstest(y.astype(np.float64) / 2.0**bits, "uniform").pvalue > 1e-6, label
        views[label] = counts
    # the two views are indistinguishable from each other, too
    assert stats.chi2_contingency(np.stack([views["zeros"], views["large"]])).pvalue > 1e-6
    # the test has power: the unmasked large update is nowhere near uniform
    assert stats.chisquare(_top_byte_counts(big, bits)).pvalue < 1e-12


# -- never both masks ---------------------------------------------------------------------------
def _run_to_unmask(n=6, k=5, t=3, drops_at_2=()):
    names = _names(n)
    setup = SecAggSetup(build_graph(names, k, t), length=4, bits=32)
    server = server_start(setup)
    clients, sent = {}, {}
    for u in names:
        clients[u], sent[u] = client_advertise(setup, u)
    server, out = server_collect_keys(server, sent)
    sent = {}
    for u in names:
        clients[u], sent[u] = client_share_keys(clients[u], out[u])
    server, out = server_collect_shares(server, sent)
    sent = {}
    for u in names:
        if u not in drops_at_2:
            clients[u], sent[u] = client_masked_input(clients[u], out[u], np.zeros(4, np.uint32))
    server, requests = server_collect_masked(server, sent)
    return names, clients, server, requests


def test_the_server_refuses_a_plan_that_reveals_both_masks():
    with pytest.raises(MaskReconstructionError):
        check_unmask_plan({"a": {"survivors": ["b"], "dropped": []},
                           "c": {"survivors": [], "dropped": ["b"]}})
    check_unmask_plan({"a": {"survivors": ["a", "b"], "dropped": ["c"]}})


def test_a_client_refuses_both_masks_and_answers_only_once():
    names, clients, _, requests = _run_to_unmask(drops_at_2=("hospital-f",))
    me, other = names[0], names[1]
    with pytest.raises(MaskReconstructionError):
        client_unmask(clients[me], {"survivors": [other], "dropped": [other]})
    with pytest.raises(MaskReconstructionError):
        client_unmask(clients[me], {"survivors": [], "dropped": [me]})
    state, _ = client_unmask(clients[me], requests[me])
    # a second request (e.g. now calling a survivor dropped) is refused outright
    with pytest.raises(SecAggProtocolError):
        client_unmask(state, {"survivors": [], "dropped": [other]})


def test_the_server_refuses_shares_it_did_not_ask_for():
    names, clients, server, requests = _run_to_unmask(drops_at_2=("hospital-f",))
    responses = {u: client_unmask(clients[u], requests[u])[1] for u in requests}
    # a (buggy or colluding) client adds its s share of a survivor: both masks of that survivor
    held = clients[names[1]].held[names[0]]
    responses[names[1]]["s_shares"][names[0]] = held[1].to_bytes()
    with pytest.raises(MaskReconstructionError):
        server_unmask(server, responses)


def test_late_masked_input_is_not_accepted_after_u3_is_fixed():
    _, _, server, _ = _run_to_unmask(drops_at_2=("hospital-f",))
    with pytest.raises(SecAggProtocolError):
        server_collect_masked(server, {"hospital-f": {"masked": np.zeros(4, np.uint32)}})


# -- Shamir ---------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), m=st.integers(1, 12), data=st.data())
def test_shamir_any_t_shares_rebuild_and_fewer_are_refused(secret, m, data):
    t = data.draw(st.integers(1, m))
    shares = shamir.split(secret, t, m)
    assert [s.index for s in shares] == list(range(1, m + 1))
    subset = data.draw(st.permutations(shares))[: data.draw(st.integers(t, m))]
    assert shamir.reconstruct(subset, t) == secret
    assert shamir.reconstruct([shamir.Share.from_bytes(s.to_bytes()) for s in subset],
                              t) == secret
    with pytest.raises(NotEnoughSharesError):
        shamir.reconstruct(subset[: t - 1], t)


def test_shamir_rejects_malformed_input():
    shares = shamir.split(bytes(32), 2, 3)
    with pytest.raises(SecretSharingError):
        shamir.reconstruct([shares[0], shares[0]], 2)
    with pytest.raises(SecretSharingError):
        shamir.split(bytes(31), 2, 3)
    with pytest.raises(SecretSharingError):
        shamir.split(bytes(32), 4, 3)
    with pytest.raises(SecretSharingError):
        shamir.Share.from_bytes(b"short")


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 30), data=st.data())
def test_shamir_is_pycryptodomes_field_both_ways_and_batches_agree(m, data):
    from Crypto.Protocol.SecretSharing import Shamir as Pycryptodome

    t = data.draw(st.integers(1, m))
    secrets = [data.draw(st.binary(min_size=32, max_size=32)) for _ in range(3)]
    batched = shamir.split_many(secrets, t, m)
    subsets = [data.draw(st.permutations(sh))[: data.draw(st.integers(t, m))] for sh in batched]
    assert shamir.reconstruct_many(subsets, t) == secrets
    for secret, subset in zip(secrets, subsets, strict=True):
        assert shamir.reconstruct(subset, t) == secret
        use = sorted(subset, key=lambda s: s.index)[:t]  # ours -> pycryptodome
        for half in (slice(0, 16), slice(16, 32)):
            assert Pycryptodome.combine([(s.index, s.value[half]) for s in use]) == secret[half]
    lo = Pycryptodome.split(t, m, secrets[0][:16])  # pycryptodome -> ours
    hi = Pycryptodome.split(t, m, secrets[0][16:])
    theirs = [shamir.Share(i, a + b) for (i, a), (_, b) in zip(lo, hi, strict=True)]
    assert shamir.reconstruct(data.draw(st.permutations(theirs))[:t], t) == secrets[0]


def test_shamir_large_indices_and_batch_checks():
    secret = bytes(range(32))
    shares = shamir.split(secret, 3, shamir.MAX_SHARES)
    assert shamir.reconstruct([shares[-1], shares[40000], shares[7]], 3) == secret
    assert shamir.reconstruct_many([], 2) == []
    good = shamir.split(secret, 2, 3)
    with pytest.raises(NotEnoughSharesError):  # one short set refuses the whole batch
        shamir.reconstruct_many([good, good[:1]], 2)
    with pytest.raises(SecretSharingError):
        shamir.split_many([secret, bytes(31)], 2, 3)


# -- keys and encrypted shares -------------------------------------------------------------------
@pytest.mark.parametrize("change", ["byte", "sender", "receiver", "round", "session", "nonce"])
def test_tampered_or_rebound_encrypted_shares_are_refused(change):
    a, b = sk.ClientKeys.generate(), sk.ClientKeys.generate()
    ctx = sk.Context("run-1", 4)
    blob = sk.encrypt_share(sk.share_key(a.c.private, b.c.public, "a", "b", ctx), b"s" * 68,
                            "a", "b", ctx)
    sender, receiver, ctx2 = "a", "b", ctx
    if change == "byte":
        blob = blob[:-1] + bytes([blob[-1] ^ 1])
    elif change == "nonce":
        blob = bytes([blob[0] ^ 1]) + blob[1:]
    elif change == "sender":
        sender = "c"
    elif change == "receiver":
        receiver = "c"
    elif change == "round":
        ctx2 = sk.Context("run-1", 5)
    else:
        ctx2 = sk.Context("run-2", 4)
    key = sk.share_key(b.c.private, a.c.public, sender, receiver, ctx2)
    with pytest.raises(ShareDecryptionError):
        sk.decrypt_share(key, blob, sender, receiver, ctx2)
    good = sk.share_key(b.c.private, a.c.public, "a", "b", ctx)
    if change not in ("byte", "nonce"):
        assert sk.decrypt_share(good, blob, "a", "b", ctx) == b"s" * 68


def test_a_tampered_share_in_transit_stops_the_receiving_client():
    names = _names(4)
    setup = SecAggSetup(build_graph(names, 3, 2), length=4, bits=32)
    server = server_start(setup)
    clients, sent = {}, {}
    for u in names:
        clients[u], sent[u] = client_advertise(setup, u)
    server, out = server_collect_keys(server, sent)
    sent = {}
    for u in names:
        clients[u], sent[u] = client_share_keys(clients[u], out[u])
    _, out = server_collect_shares(server, sent)
    victim, sender = names[0], names[1]
    blob = out[victim]["shares"][sender]
    out[victim]["shares"][sender] = blob[:20] + bytes([blob[20] ^ 0x80]) + blob[21:]
    with pytest.raises(ShareDecryptionError):
        client_masked_input(clients[victim], out[victim], np.zeros(4, np.uint32))
    # a ciphertext replayed from another sender is refused as well
    out[victim]["shares"][sender] = out[victim]["shares"][names[2]]
    with pytest.raises(ShareDecryptionError):
        client_masked_input(clients[victim], out[victim], np.zeros(4, np.uint32))


def test_key_agreement_is_symmetric_and_refuses_degenerate_keys():
    a, b = sk.ClientKeys.generate(), sk.ClientKeys.generate()
    ctx = sk.Context("s", 1)
    assert sk.mask_seed(a.s.private, b.s.public, "a", "b", ctx) == sk.mask_seed(
        b.s.private, a.s.public, "b", "a", ctx)
    assert sk.mask_seed(a.s.private, b.s.public, "a", "b", ctx) != sk.mask_seed(
        a.s.private, b.s.public, "a", "b", sk.Context("s", 2))
    assert sk.share_key(a.c.private, b.c.public, "a", "b", ctx) != sk.share_key(
        a.c.private, b.c.public, "b", "a", ctx)  # directional
    with pytest.raises(KeyAgreementError):
        sk.agree(a.s.private, bytes(32))  # a low-order point
    with pytest.raises(KeyAgreementError):
        sk.agree(a.s.private, b"short")
    assert "private" not in repr(a.s)


def test_batched_key_derivations_equal_the_single_ones():
    me, peers = sk.ClientKeys.generate(), {v: sk.ClientKeys.generate() for v in "xyz"}
    ctx = sk.Context("s", 3)
    pairs = sk.share_keys(me.c.private, {v: k.c.public for v, k in peers.items()}, "me", ctx)
    seeds = sk.mask_seeds(me.s.private, {v: k.s.public for v, k in peers.items()}, "me", ctx)
    for v, k in peers.items():
        assert pairs[v] == (sk.share_key(me.c.private, k.c.public, "me", v, ctx),
                            sk.share_key(k.c.private, me.c.public, v, "me", ctx))
        assert seeds[v] == sk.mask_seed(k.s.private, me.s.public, v, "me", ctx)
    with pytest.raises(KeyAgreementError):
        sk.agree_many(me.s.private, [peers["x"].s.public, bytes(32)])


# -- masks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [32, 64])
def test_masks_added_in_place_equal_the_materialized_ones(bits):
    rng = np.random.default_rng(1)
    x, seed = _random_ring(rng, 257, bits), bytes(range(1, 33))
    for me, peer in (("a", "b"), ("b", "a")):
        for sign in (1, -1):
            y = x.copy()
            masks.add_pairwise_mask(y, me, peer, seed, sign=sign)
            pad = masks.pairwise_mask(me, peer, seed, 257, bits)
            assert np.array_equal(y, x + pad if sign == 1 else x - pad)
    y = x.copy()
    masks.add_self_mask(y, seed, sign=-1)
    assert np.array_equal(y, x - masks.self_mask(seed, 257, bits))
    with pytest.raises(ValueError):
        masks.add_self_mask(x.astype(np.int64), seed)


def test_masks_are_deterministic_per_seed_and_pairwise_masks_cancel():
    seed = bytes(range(32))
    m1 = masks.expand_seed(seed, 100, 64)
    assert m1.dtype == np.uint64 and np.array_equal(m1, masks.expand_seed(seed, 100, 64))
    assert not np.array_equal(m1, masks.expand_seed(bytes(31) + b"\x01", 100, 64))
    assert np.array_equal(masks.expand_seed(seed, 10, 32), masks.expand_seed(seed, 100, 32)[:10])
    pair = masks.pairwise_mask("a", "b", seed, 50, 32) + masks.pairwise_mask("b", "a", seed, 50, 32)
    assert not pair.any()
    assert not np.array_equal(masks.self_mask(seed, 50, 32),
                              masks.pairwise_mask("a", "b", seed, 50, 32))


# -- quantization ---------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 50), bits=st.sampled_from([32, 64]),
       x=st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=20))
def test_quantized_sums_decode_within_the_rounding_bound(n, bits, x):
    q = Quantizer.for_clients(n, clip=1.0, bits=bits)
    x = np.array(x)
    total = masks.ring_sum([q.quantize(x, n)] * n, len(x), bits)
    exact = n * np.clip(x, -1, 1)
    assert np.all(np.abs(q.dequantize(total) - exact) <= n / (2 * q.scale) + 1e-12)


def test_ring_overflow_is_raised_before_anything_is_masked(monkeypatch):
    q = Quantizer(clip=1.0, scale=2.0**28, bits=32)  # L = 2^28: at most 7 clients
    assert q.capacity() == 7
    q.quantize(np.ones(3), 7)
    with pytest.raises(RingOverflowError):
        q.quantize(np.ones(3), 8)
    # The setup refuses it for its n clients before any key exists or any mask is computed.
    called = []
    monkeypatch.setattr(masks, "self_mask", lambda *a, **k: called.append(a))
    monkeypatch.setattr(masks, "pairwise_mask", lambda *a, **k: called.append(a))
    with pytest.raises(RingOverflowError):
        SecAggSetup(build_graph(_names(8), 7, 5), length=3, bits=32, quantizer=q)
    assert not called
    with pytest.raises(QuantizationError):
        Quantizer(clip=1.0, scale=2.0**16).quantize(np.array([np.nan]), 3)


def test_float_updates_are_aggregated_through_the_quantizer():
    names = _names(5)
    q = Quantizer.for_clients(5, clip=2.0, bits=64)
    setup = SecAggSetup(build_graph(names, 4, 3), length=6, bits=64, quantizer=q)
    rng = np.random.default_rng(7)
    updates = {u: rng.uniform(-2, 2, 6) for u in names}
    result = simulate(setup, updates, {names[4]: 3, names[1]: 2})
    want = sum(updates[u] for u in result.included)
    assert result.included == (names[0], names[2], names[3], names[4])
    assert np.allclose(result.values, want, atol=len(names) / q.scale)


# -- messages travel through the wire format unchanged ---------------------------------------------
def test_every_payload_survives_the_wire_format():
    names = _names(6)
    setup = SecAggSetup(plan_graph(names, dropout=0.2, corruption=0.1), length=10, bits=64,
                        round=2, session="run-x")
    setup = SecAggSetup.from_payload(wire.loads(wire.dumps(setup.to_payload())))
    rt = lambda payload: wire.loads(wire.dumps(payload))  # noqa: E731
    rng = np.random.default_rng(1)
    updates = {u: _random_ring(rng, 10, 64) for u in names}
    server = server_start(setup)
    clients, sent = {}, {}
    for u in names:
        clients[u], msg = client_advertise(setup, u)
        sent[u] = rt(msg)
    server, out = server_collect_keys(server, sent)
    sent = {}
    for u in names:
        clients[u], msg = client_share_keys(clients[u], rt(out[u]))
        sent[u] = rt(msg)
    server, out = server_collect_shares(server, sent)
    sent = {}
    for u in names[1:]:  # names[0] drops after sharing keys
        clients[u], msg = client_masked_input(clients[u], rt(out[u]), updates[u])
        sent[u] = rt(msg)
    server, out = server_collect_masked(server, sent)
    sent = {}
    for u in names[1:]:
        clients[u], msg = client_unmask(clients[u], rt(out[u]))
        sent[u] = rt(msg)
    result = server_unmask(server, sent)
    assert np.array_equal(result.total, masks.ring_sum((updates[u] for u in names[1:]), 10, 64))


# -- the communication graph ---------------------------------------------------------------------
def _tail(pop, marked, draws, at_least) -> Fraction:
    num = sum(math.comb(marked, j) * math.comb(pop - marked, draws - j)
              for j in range(max(at_least, 0), min(marked, draws) + 1))
    return Fraction(num, math.comb(pop, draws))


def _sparse_ok(n, k, c, d, sigma, eta):
    """The documented conditions, restated: returns t or None."""
    eps_sec, eps_cor = Fraction(1, 2**sigma), Fraction(1, 2**eta)
    t_sec = next((t for t in range(1, k + 1) if n * _tail(n - 1, c, k, t) <= eps_sec), k + 1)
    t = max(t_sec, (k + 1) // 2 + 1)
    if t > k or n * _tail(n - 1, d, k, k - t + 1) > eps_cor:
        return None
    if Fraction(n * n, 2) * Fraction(c + d, n) ** k > eps_sec:
        return None
    return t


@pytest.mark.parametrize("n,gamma,delta", [
    (3, 0.1, 0.1), (5, 0.2, 0.2), (8, 0.0, 0.3), (12, 0.1, 0.1), (12, 0.33, 0.1),
    (50, 0.05, 0.05), (100, 0.1, 0.1), (300, 0.2, 0.2), (1000, 0.1, 0.1),
])
def test_graph_parameters_follow_the_documented_formula(n, gamma, delta):
    p = choose_parameters(n, dropout=delta, corruption=gamma)
    c, d = math.ceil(gamma * n), math.ceil(delta * n)
    first = next(((k, t) for k in range(2, n - 1, 2)
                  if (t := _sparse_ok(n, k, c, d, 40, 30)) is not None), None)
    if first is not None:
        assert (p.k, p.t, p.complete) == (*first, False)
        assert p.log2_secrecy_failure <= -40 and p.log2_correctness_failure <= -30
    else:
        assert p.complete and p.k == n - 1
        assert p.t == max(c + 1, n // 2 + 1) and n - d >= p.t
    g = build_graph([f"c{i:04d}" for i in range(n)], p.k, p.t)
    nxg = g.to_networkx()
    assert nx.is_connected(nxg)
    assert {deg for _, deg in nxg.degree()} == {p.k}
    assert all(u in g.neighbours[v] for u in g.names for v in g.neighbours[u])  # symmetric


def test_small_federations_use_the_complete_graph_and_large_ones_a_sparse_one():
    assert choose_parameters(12, dropout=0.1, corruption=0.1).complete
    big = choose_parameters(1000, dropout=0.1, corruption=0.1)
    assert not big.complete and big.k < 100
    assert nx.node_connectivity(build_graph([f"c{i:02d}" for i in range(40)], 6, 4)
                                .to_networkx()) == 6


@pytest.mark.parametrize("kwargs", [
    {"n": 2}, {"n": 10, "dropout": 0.6, "corruption": 0.4}, {"n": 4, "dropout": 0.3,
                                                              "corruption": 0.0},
    {"n": 10, "dropout": 1.0}, {"n": 10, "corruption": -0.1}, {"n": 10, "sigma": 0},
])
def test_infeasible_parameters_are_refused(kwargs):
    n = kwargs.pop("n")
    with pytest.raises(InfeasibleParametersError):
        choose_parameters(n, **kwargs)


def test_explicit_graphs_are_validated():
    names = _names(6)
    for k, t in [(1, 2), (6, 2), (4, 1), (4, 5)]:
        with pytest.raises(InfeasibleParametersError):
            build_graph(names, k, t)
    with pytest.raises(InfeasibleParametersError):
        build_graph(["a", "a", "b", "c"], 2, 2)
    g = build_graph(names, 3, 2)  # odd k: networkx adds diameters
    assert {len(v) for v in g.neighbours.values()} == {3} and nx.is_connected(g.to_networkx())


def test_node_order_is_deterministic_and_seedable():
    names = _names(9)
    g1 = plan_graph(names[::-1], dropout=0.1, corruption=0.0)
    g2 = plan_graph(sorted(names), dropout=0.1, corruption=0.0)
    assert g1 == g2 and g1.order == tuple(sorted(names))
    s1 = build_graph(names, 4, 3, seed=b"\x01" * 16)
    assert s1 == build_graph(names[::-1], 4, 3, seed=b"\x01" * 16)
    assert s1.order != build_graph(names, 4, 3, seed=b"\x02" * 16).order
    assert SecAggGraph.from_payload(wire.loads(wire.dumps(s1.to_payload()))) == s1
    assert dict(SecAggGraph.from_payload(s1.to_payload()).neighbours) == dict(s1.neighbours)
