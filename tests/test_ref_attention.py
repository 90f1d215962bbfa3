"""Reference decode attention (sparq_ref.attention) on small hand-made tensors: outputs, fetched sets, traffic."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sparq_sim.simulator import strategies as reg  # noqa: E402
from sparq_sim.simulator.units import DTYPE_BYTES  # noqa: E402
from sparq_sim.sparq_ref import attention as A  # noqa: E402


def rand(B=2, H=6, Hkv=2, S=48, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, d, generator=g), torch.randn(B, Hkv, S, d, generator=g),
            torch.randn(B, Hkv, S, d, generator=g))


def random_basis(Hkv, d, seed=0):
    """An orthonormal basis per KV head (Loki's PCA basis stands in)."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(Hkv, d, d, generator=g)).Q


def random_indexer(B, S, d_i, seed=0, heads=3):
    """DSA's indexer inputs for one decode step: queries [B, H_I, d_I], weights [B, H_I], keys [B, S, d_I]."""
    g = torch.Generator().manual_seed(seed)
    return dict(index_q=torch.randn(B, heads, d_i, generator=g), index_w=torch.rand(B, heads, generator=g),
                index_keys=torch.randn(B, S, d_i, generator=g))


def random_channels(Hkv, d, seed=0):
    """A channel order per KV head [Hkv, d] (Double Sparsity's calibrated order stands in)."""
    return torch.stack([torch.randperm(d, generator=torch.Generator().manual_seed(seed + h)) for h in range(Hkv)])


def positions(f, b=0, h=0):
    return f.positions(b, h)


# ---------------------------------------------------------------------------------------------------------------
# SparQ


def test_sparq_full_r_and_k_equals_dense():
    q, K, V = rand()
    yd, _ = A.dense_attention(q, K, V)
    for reallocate in (True, False):
        ys, f = A.sparq_attention(q, K, V, r=16, k=48, local_window=4, reallocate=reallocate)
        torch.testing.assert_close(ys, yd, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(f.alpha, torch.ones_like(f.alpha), rtol=1e-5, atol=1e-5)
        assert f.rows.all()


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), Hkv=st.integers(1, 3), g=st.integers(1, 4), S=st.integers(1, 40),
       d=st.sampled_from([4, 8, 16]), seed=st.integers(0, 10_000))
def test_sparq_equals_dense_property(B, Hkv, g, S, d, seed):
    q, K, V = rand(B, Hkv * g, Hkv, S, d, seed)
    yd, _ = A.dense_attention(q, K, V)
    ys, _ = A.sparq_attention(q, K, V, r=d, k=S, local_window=min(S, 2))
    torch.testing.assert_close(ys, yd, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(S=st.integers(8, 64), r=st.integers(1, 16), kfrac=st.floats(0.05, 1.0), lfrac=st.floats(0, 1),
       seed=st.integers(0, 10_000))
def test_sparq_fetched_set_invariants(S, r, kfrac, lfrac, seed):
    q, K, V = rand(2, 6, 2, S, 16, seed)
    k = max(1, int(S * kfrac))
    lw = int(k * lfrac)
    _, f = A.sparq_attention(q, K, V, r=r, k=k, local_window=lw)
    assert f.rows.shape == (2, 2, S)
    assert (f.rows.sum(-1) == k).all()                      # k positions per (sequence, KV head)
    if lw:
        assert f.rows[..., S - lw:].all()                   # the local window is always in
    assert f.components.shape == (2, 2, r)
    assert all(len(set(c.tolist())) == r for c in f.components.reshape(-1, r))
    assert ((f.alpha >= 0) & (f.alpha <= 1 + 1e-5)).all()


def test_sparq_matches_algorithm_1_single_head():
    """One head, no GQA: each quantity of Algorithm 1 written out by hand."""
    q, K, V = rand(1, 1, 1, 32, 8, seed=3)
    r, k, l = 3, 6, 2
    qq, KK, VV = q[0, 0], K[0, 0], V[0, 0]
    i1 = torch.topk(qq.abs(), r).indices
    tau = math.sqrt(8 * qq[i1].abs().sum() / qq.abs().sum())
    s_hat = torch.softmax(qq[i1] @ KK[:, i1].T / tau, -1)
    m = torch.zeros(32)
    m[-l:] = 1
    i2 = torch.topk(s_hat + m, k).indices
    alpha = s_hat[i2].sum()
    s = torch.softmax(qq @ KK[i2].T / math.sqrt(8), -1)
    v_bar = VV.mean(0)
    y = alpha * (s @ VV[i2]) + (1 - alpha) * v_bar
    ys, f = A.sparq_attention(q, K, V, r=r, k=k, local_window=l)
    torch.testing.assert_close(ys[0, 0], y, rtol=1e-5, atol=1e-6)
    assert sorted(f.components[0, 0].tolist()) == sorted(i1.tolist())
    assert positions(f) == sorted(i2.tolist())
    assert f.alpha[0, 0].item() == pytest.approx(alpha.item(), rel=1e-5)


def test_sparq_gqa_sums_over_the_group():
    """Two query heads share a KV head: top-r uses |q| summed over both, so one set serves the group."""
    d, S = 8, 16
    q = torch.zeros(1, 2, d)
    q[0, 0, 1] = 5.0     # head 0 cares about component 1
    q[0, 1, 6] = 4.0     # head 1 about component 6
    q[0, 0, 3] = 0.5
    q[0, 1, 3] = 0.5     # component 3: small in each head, sum 1.0 -> third
    _, K, V = rand(1, 2, 1, S, d)
    _, f = A.sparq_attention(q, K, V, r=2, k=4, local_window=1)
    assert sorted(f.components[0, 0].tolist()) == [1, 6]
    _, f3 = A.sparq_attention(q, K, V, r=3, k=4, local_window=1)
    assert sorted(f3.components[0, 0].tolist()) == [1, 3, 6]
    assert f.rows.shape == (1, 1, S) and f.alpha.shape == (1, 2)  # one set per KV head, alpha per query head


def test_gqa_one_set_per_kv_head_for_every_strategy():
    q, K, V = rand(2, 9, 3, 64, 16)
    for name, (_, f) in run_all(q, K, V, k=16).items():
        assert f.rows.shape == (2, 3, 64), name


def test_sparq_running_mean_is_used():
    q, K, V = rand(1, 2, 1, 20, 8)
    vm = torch.full((1, 1, 8), 100.0)
    y1, f = A.sparq_attention(q, K, V, r=2, k=4, local_window=1, v_mean=vm)
    y2, _ = A.sparq_attention(q, K, V, r=2, k=4, local_window=1, v_mean=vm, reallocate=False)
    a = f.alpha[0].view(2, 1)
    torch.testing.assert_close(y1[0], a * y2[0] + (1 - a) * 100.0, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# the baselines


def run_all(q, K, V, k, valid=None):
    st_h2o = A.H2OState.empty(q.shape[0], K.shape[1], q.device)
    return {
        "dense": A.dense_attention(q, K, V, valid=valid),
        "sparq": A.sparq_attention(q, K, V, r=4, k=k, local_window=k // 4, valid=valid),
        "h2o": A.h2o_attention(q, K, V, k=k, local_window=k // 2, state=st_h2o, valid=valid),
        "flexgen": A.flexgen_attention(q, K, V, k=k, valid=valid),
        "lm-infinite": A.lm_infinite_attention(q, K, V, k=k, local_window=k - 4, sinks=4, valid=valid),
        "quest": A.quest_attention(q, K, V, k=16 * max(1, k // 16), page_size=16, valid=valid),
    }


def test_lm_infinite_is_sinks_plus_window():
    q, K, V = rand(S=40)
    _, f = A.lm_infinite_attention(q, K, V, k=10, local_window=6, sinks=4)
    for b in range(2):
        for h in range(2):
            assert positions(f, b, h) == [0, 1, 2, 3, 34, 35, 36, 37, 38, 39]


def test_h2o_keeps_window_and_heavy_hitters_and_evicts_for_good():
    q, K, V = rand(1, 2, 1, 20, 8)
    state = A.H2OState(torch.zeros(1, 1, 19), torch.ones(1, 1, 19, dtype=torch.bool))
    state.scores[0, 0, [2, 7, 11]] = torch.tensor([5.0, 4.0, 3.0])   # heavy hitters
    state.scores[0, 0, 18] = 0.0                                     # in the window anyway
    _, f = A.h2o_attention(q, K, V, k=7, local_window=4, state=state)
    assert positions(f) == [2, 7, 11, 16, 17, 18, 19]
    assert f.rows.sum() == 7
    # next step: position 2 has the smallest score among the evictable, the cache stays at 7 tokens
    state.scores[0, 0, 2] = -1.0
    q2, K2, V2 = rand(1, 2, 1, 21, 8, seed=1)
    _, f2 = A.h2o_attention(q2, K2, V2, k=7, local_window=4, state=state)
    got = positions(f2)
    assert len(got) == 7 and 2 not in got and got[-4:] == [17, 18, 19, 20]
    # an evicted position never returns, even with a large score
    state.scores[0, 0, 2] = 1e6
    q3, K3, V3 = rand(1, 2, 1, 22, 8, seed=2)
    _, f3 = A.h2o_attention(q3, K3, V3, k=7, local_window=4, state=state)
    assert 2 not in positions(f3)


def test_h2o_statistics_accumulate_attention():
    q, K, V = rand(1, 2, 1, 10, 8)
    state = A.H2OState.empty(1, 1, "cpu")
    _, f = A.h2o_attention(q, K, V, k=10, local_window=2, state=state)
    p = A.dense_probs(q, K).sum(2)                                   # summed over the 2 query heads
    torch.testing.assert_close(state.scores, p, rtol=1e-5, atol=1e-6)


def test_h2o_prefill_scores_are_causal_column_sums():
    g = torch.Generator().manual_seed(0)
    qa = torch.randn(1, 2, 6, 4, generator=g)
    K = torch.randn(1, 1, 6, 4, generator=g)
    sc = A.h2o_prefill_scores(qa, K, chunk=4)
    logits = qa[0] @ K[0, 0].T / 2.0
    logits = logits.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    ref = torch.softmax(logits, -1).sum((0, 1))
    torch.testing.assert_close(sc[0, 0], ref, rtol=1e-5, atol=1e-6)
    assert sc.sum().item() == pytest.approx(12.0, rel=1e-5)         # every query row sums to 1


def test_flexgen_top_k_of_exact_scores_and_newest():
    q, K, V = rand(1, 3, 1, 30, 8)
    y, f = A.flexgen_attention(q, K, V, k=5)
    p = A.dense_probs(q, K)[0, 0]                                     # [3, 30]
    top = torch.topk(p.sum(0)[:-1], 4).indices.tolist()
    assert positions(f) == sorted(top + [29])
    rows = torch.tensor(positions(f))
    ref = p[:, rows] @ V[0, 0, rows]                                  # not renormalised, as FlexGen
    torch.testing.assert_close(y[0], ref, rtol=1e-5, atol=1e-6)


def test_quest_selects_whole_pages_by_upper_bound():
    P, S, d = 4, 24, 4
    q = torch.zeros(1, 1, d)
    q[0, 0, 0] = 1.0
    K = torch.zeros(1, 1, S, d)
    K[0, 0, 9, 0] = 10.0                    # page 2 (positions 8-11) has the largest bound
    K[0, 0, 13, 0] = 5.0                    # page 3 next
    V = torch.randn(1, 1, S, d)
    _, f = A.quest_attention(q, K, V, k=12, page_size=P)
    # 3 pages: the newest (20-23, always) plus the two best bounds
    assert positions(f) == list(range(8, 16)) + list(range(20, 24))
    assert f.pages.tolist() == [6]
    kmin, kmax, page, n = A.quest_page_bounds(K, torch.ones(1, S, dtype=torch.bool), P)
    assert kmax[0, 0, 2, 0] == 10 and kmin[0, 0, 2, 0] == 0 and n.tolist() == [6]


def test_quest_partial_last_page():
    q, K, V = rand(1, 2, 1, 21, 8)
    _, f = A.quest_attention(q, K, V, k=8, page_size=4)
    got = positions(f)
    assert 20 in got and len(got) == 5      # one full page + the newest page holding one token
    assert f.pages.tolist() == [6]


def test_padding_is_never_fetched_and_matches_unpadded():
    q, K, V = rand(2, 6, 2, 40, 16)
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, :9] = False
    padded = run_all(q, K, V, k=16, valid=valid)
    alone = run_all(q[1:], K[1:, :, 9:], V[1:, :, 9:], k=16)
    for name in padded:
        y, f = padded[name]
        assert not f.rows[1, :, :9].any(), name
        assert f.seq_len.tolist() == [40, 31]
        ya, fa = alone[name]
        assert [f.positions(1, h, 9) for h in range(2)] == [fa.positions(0, h) for h in range(2)], name
        torch.testing.assert_close(y[1:], ya, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# traffic: what the reference touched == the simulator's formula (one source of truth)


@settings(max_examples=30, deadline=None)
@given(strategy=st.sampled_from(reg.STRATEGY_NAMES), pages=st.integers(2, 12), compression=st.sampled_from([1, 2, 4, 8]),
       d=st.sampled_from([8, 16, 32]), dtype=st.sampled_from(["fp16", "bf16", "fp32"]))
def test_bytes_touched_equal_formula(strategy, pages, compression, d, dtype):
    S = 16 * pages                                                    # whole Quest pages: no partial last page
    B, Hkv, g = 2, 2, 3
    q, K, V = rand(B, Hkv * g, Hkv, S, d, seed=pages)
    p = reg.resolve_params(strategy, np.array([S]), d, compression)
    kw = dict(k=int(p["k"][0]))
    if strategy == "dense":
        _, f = A.dense_attention(q, K, V)
    elif strategy == "sparq":
        _, f = A.sparq_attention(q, K, V, r=int(p["r"][0]), local_window=int(p["local_window"][0]), **kw)
    elif strategy == "h2o":
        state = A.H2OState(torch.rand(B, Hkv, S - 1), torch.ones(B, Hkv, S - 1, dtype=torch.bool))
        _, f = A.h2o_attention(q, K, V, local_window=int(p["local_window"][0]), state=state, **kw)
    elif strategy == "flexgen":
        _, f = A.flexgen_attention(q, K, V, **kw)
    elif strategy == "lm-infinite":
        _, f = A.lm_infinite_attention(q, K, V, local_window=int(p["local_window"][0]), sinks=int(p["sinks"][0]), **kw)
    elif strategy == "quest":
        _, f = A.quest_attention(q, K, V, page_size=int(p["page_size"][0]), **kw)
    elif strategy == "loki":
        _, f = A.loki_attention(q, K, V, r=int(p["r"][0]), basis=random_basis(Hkv, d, pages), **kw)
    elif strategy == "double-sparsity":
        _, f = A.double_sparsity_attention(q, K, V, r=int(p["r"][0]), channels=random_channels(Hkv, d, pages), **kw)
    elif strategy == "dsa":
        _, f = A.dsa_attention(q, K, V, **random_indexer(B, S, int(p["index_dim"][0]), pages), **kw)
    else:
        assert strategy == "snapkv"
        votes = torch.rand(B, Hkv, reg.SNAPKV_WINDOW, S, generator=torch.Generator().manual_seed(pages))
        ones = torch.ones(B, S, dtype=torch.bool)
        keep = A.snapkv_select(votes, ones, torch.full((B,), kw["k"]),
                               torch.full((B,), int(p["local_window"][0])), reg.SNAPKV_KERNEL)
        _, f = A.snapkv_attention(q, K, V, keep=keep)
    touched = A.elements_touched(f, d)
    comps = reg.traffic_components(strategy, np.array([S]), d, p)
    formula = {name: float(np.asarray(e).reshape(-1)[0]) for name, _, e in comps}
    assert set(touched) == set(formula)
    per_layer = {name for name, kind, _ in comps if kind in reg.PER_LAYER_KINDS}   # DSA's indexer cache
    for name, t in touched.items():
        if name in per_layer:   # the layer's, once: on KV head 0
            assert (t[:, 0] == formula[name]).all() and (t[:, 1:] == 0).all(), (name, t, formula[name])
        else:
            assert (t == formula[name]).all(), (name, t, formula[name])
    nbytes = DTYPE_BYTES[dtype]
    got = float(A.total_elements(f, d).sum()) * nbytes
    want = float(reg.elements_moved(strategy, np.array([S]), d, p, kv_heads=Hkv)[0]) * B * Hkv * nbytes
    assert got == want
