"""Loki, Double Sparsity, SnapKV and DSA in the reference (sparq_ref): dense at full budget, fetched sets as each
method defines them (checked against a computation by hand), and the offline calibration they share (DSA: its
indexer, distilled from the dense attention)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sparq_sim.simulator import strategies as reg  # noqa: E402
from sparq_sim.sparq_ref import attention as A  # noqa: E402
from sparq_sim.sparq_ref import calibration as C  # noqa: E402
from sparq_sim.sparq_ref.calibration import KeyStats  # noqa: E402
from test_ref_attention import rand, random_basis, random_channels, random_indexer  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# dense at full budget


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 3), Hkv=st.integers(1, 3), g=st.integers(1, 3), S=st.integers(1, 40),
       d=st.sampled_from([4, 8, 16]), seed=st.integers(0, 10_000))
def test_full_budget_is_dense(B, Hkv, g, S, d, seed):
    q, K, V = rand(B, Hkv * g, Hkv, S, d, seed)
    yd, _ = A.dense_attention(q, K, V)
    yl, fl = A.loki_attention(q, K, V, r=d, k=S, basis=random_basis(Hkv, d, seed))
    yds, fds = A.double_sparsity_attention(q, K, V, r=d, k=S, channels=random_channels(Hkv, d, seed))
    keep = A.snapkv_select(torch.rand(B, Hkv, 4, S), torch.ones(B, S, dtype=torch.bool), torch.full((B,), S),
                           torch.full((B,), min(S, 4)), reg.SNAPKV_KERNEL)
    ys, fs = A.snapkv_attention(q, K, V, keep=keep)
    ya, fa = A.dsa_attention(q, K, V, k=S, **random_indexer(B, S, d, seed))
    for y, f in ((yl, fl), (yds, fds), (ys, fs), (ya, fa)):
        torch.testing.assert_close(y, yd, rtol=1e-4, atol=1e-5)
        assert f.rows.all()


# ---------------------------------------------------------------------------------------------------------------
# the fetched sets, by hand (one KV head, one query head: no GQA sum)


def test_loki_picks_the_top_k_of_scores_in_the_leading_components():
    q, K, V = rand(1, 1, 1, 40, 8, seed=3)
    P = random_basis(1, 8, 7)
    r, k = 3, 6
    _, f = A.loki_attention(q, K, V, r=r, k=k, basis=P)
    approx = (q[0, 0] @ P[0][:, :r]) @ (K[0, 0] @ P[0][:, :r]).T          # q P_r . (K P_r)
    assert f.positions(0, 0) == sorted(torch.topk(approx, k).indices.tolist())
    assert f.components[0, 0].tolist() == [0, 1, 2]


def test_loki_with_keys_in_an_r_dim_subspace_finds_the_exact_top_k():
    # keys of rank 2 plus their mean: PCA's first 2 components span them, so the approximate ranking is exact
    g = torch.Generator().manual_seed(0)
    d, S = 8, 64
    U = torch.linalg.qr(torch.randn(d, 2, generator=g)).Q
    K = (torch.randn(S, 2, generator=g) @ U.T + 0.5).view(1, 1, S, d)
    stats = KeyStats()
    stats.add(0, torch.randn(1, 1, S, d, generator=g), K, torch.ones(1, S, dtype=torch.bool))
    cal = stats.finish("test")
    q = torch.randn(1, 1, d, generator=g)
    _, f = A.loki_attention(q, K, K, r=2, k=5, basis=cal.basis[0])
    exact = (q[0, 0] @ K[0, 0].T)
    assert f.positions(0, 0) == sorted(torch.topk(exact, 5).indices.tolist())
    assert float(cal.variance[0][0, 2:].sum()) < 1e-9 * float(cal.variance[0][0, :2].sum())


def test_double_sparsity_scores_with_its_label_channels():
    q, K, V = rand(1, 1, 1, 40, 8, seed=5)
    ch = torch.tensor([[6, 1, 3, 0, 2, 4, 5, 7]])
    _, f = A.double_sparsity_attention(q, K, V, r=3, k=7, channels=ch)
    approx = q[0, 0, [6, 1, 3]] @ K[0, 0][:, [6, 1, 3]].T
    assert f.positions(0, 0) == sorted(torch.topk(approx, 7).indices.tolist())
    assert sorted(f.components[0, 0].tolist()) == [1, 3, 6]


def test_gqa_one_set_per_kv_head_from_group_sums():
    q, K, V = rand(1, 4, 1, 30, 8, seed=9)
    P = random_basis(1, 8, 1)
    _, f = A.loki_attention(q, K, V, r=2, k=5, basis=P)
    qr, Kr = q[0] @ P[0][:, :2], K[0, 0] @ P[0][:, :2]
    s = torch.softmax((qr @ Kr.T) / np.sqrt(8), -1).sum(0)                # summed over the 4 query heads
    assert f.positions(0, 0) == sorted(torch.topk(s, 5).indices.tolist())
    assert f.rows.shape == (1, 1, 30)


def test_snapkv_keeps_the_window_and_the_pooled_top_votes():
    S, w, k = 40, 4, 13
    votes = torch.zeros(1, 1, w, S)
    votes[0, 0, :, 10] = 5.0                       # a strong vote: pooling spreads it over 10 +- 3
    votes[0, 0, :, 25] = 1.0
    votes[0, 0, :, 38] = 9.0                       # inside the window: kept anyway, never counted twice
    keep = A.snapkv_select(votes, torch.ones(1, S, dtype=torch.bool), torch.tensor([k]), torch.tensor([w]), 7)
    kept = torch.nonzero(keep[0, 0]).flatten().tolist()
    assert kept[-w:] == [36, 37, 38, 39] and len(kept) == k
    assert set(range(7, 14)) <= set(kept[:-w])     # the pooled neighbourhood of 10 (7 positions), then 25's
    assert set(kept[:-w]) - set(range(7, 14)) <= set(range(22, 29))


def test_snapkv_keeps_every_token_generated_after_the_prompt():
    q, K, V = rand(1, 3, 1, 50, 8, seed=2)
    S0 = 40
    keep = torch.zeros(1, 1, S0, dtype=torch.bool)
    keep[0, 0, [3, 17, 38, 39]] = True
    _, f = A.snapkv_attention(q, K, V, keep=keep)
    assert f.positions(0, 0) == [3, 17, 38, 39] + list(range(S0, 50))
    y, _ = A.dense_attention(q, K[:, :, f.positions(0, 0)], V[:, :, f.positions(0, 0)])
    torch.testing.assert_close(A.snapkv_attention(q, K, V, keep=keep)[0], y, rtol=1e-5, atol=1e-6)


def test_snapkv_left_padding_is_never_kept():
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, :9] = False
    votes = torch.rand(2, 1, 4, 30, generator=torch.Generator().manual_seed(0))
    keep = A.snapkv_select(votes, valid, torch.tensor([12, 12]), torch.tensor([4, 4]), 7)
    assert not keep[1, 0, :9].any() and int(keep[1].sum()) == 12 and int(keep[0].sum()) == 12


def test_dsa_attends_the_top_k_of_the_indexer_scores_with_every_head():
    B, Hkv, g, S, d, k = 2, 3, 2, 50, 8, 7
    q, K, V = rand(B, Hkv * g, Hkv, S, d, seed=11)
    ix = random_indexer(B, S, 4, seed=12, heads=3)
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[1, :6] = False                                          # left padding: never chosen
    y, f = A.dsa_attention(q, K, V, k=k, valid=valid, **ix)
    for b in range(B):
        # I_s = sum_j w_j ReLU(q_j . k_s), written out
        score = [sum(float(ix["index_w"][b, j]) * max(0.0, float(ix["index_q"][b, j] @ ix["index_keys"][b, s]))
                     for j in range(3)) for s in range(S)]
        order = sorted((s for s in range(S) if valid[b, s]), key=lambda s: -score[s])
        want = sorted(order[:k])
        for h in range(Hkv):                                      # one set for every KV head
            assert f.positions(b, h) == want
        # exact attention on those rows, per query head
        for h in range(Hkv * g):
            kv = h // g
            logits = (K[b, kv, want] @ q[b, h]) / d ** 0.5
            torch.testing.assert_close(y[b, h], torch.softmax(logits, 0) @ V[b, kv, want], rtol=1e-5, atol=1e-5)
    assert f.extra["index_dim"] == 4 and f.seq_len.tolist() == [50, 44]


def test_dsa_counts_its_indexer_cache_once_per_layer():
    q, K, V = rand(1, 4, 2, 30, 8, seed=2)
    _, f = A.dsa_attention(q, K, V, k=5, **random_indexer(1, 30, 6, seed=3))
    t = A.elements_touched(f, 8)
    assert t["index_keys_read"].tolist() == [[30 * 6, 0]] and t["index_key_write"].tolist() == [[6, 0]]
    assert t["k_rows"].tolist() == [[5 * 8, 5 * 8]] and t["kv_append"].tolist() == [[16, 16]]


def test_fp8_roundtrip_keeps_e4m3_precision_per_token():
    x = torch.tensor([[448.0, -1.0, 0.5, 3.0], [1e-3, 2e-3, -4e-3, 0.0]])
    y = C.fp8_roundtrip(x)
    assert y[0].tolist() == [448.0, -1.0, 0.5, 3.0]               # representable at scale 1
    torch.testing.assert_close(y[1], x[1], rtol=2 ** -3, atol=0)  # 3 mantissa bits, its own scale per row
    assert float(y[1].abs().max()) == pytest.approx(4e-3, rel=1e-6)   # the row's amax maps to 448 exactly


def test_indexer_distillation_lowers_the_kl_and_is_deterministic():
    g = torch.Generator().manual_seed(9)
    n, H, Hkv, T, d = 2, 4, 2, 24, 8
    q = torch.randn(n, H, T, d, generator=g) * 2
    k = torch.randn(n, Hkv, T, d, generator=g) * 2
    runs = [C._distill_layer(q, k, None, 2, 8, 40, 3e-3, torch.Generator().manual_seed(0)) for _ in range(2)]
    (ix, before, after), (ix2, _, after2) = runs
    assert after < 0.8 * before and after == after2
    assert all(torch.equal(a, b) for a, b in zip(ix.parameters(), ix2.parameters()))
    # the KL it reports is the indexer's against the heads' mean attention, by hand
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    p = torch.softmax((q.view(n, Hkv, 2, T, d) @ k.unsqueeze(2).transpose(-1, -2) / d ** 0.5)
                      .masked_fill(~causal, float("-inf")), -1).mean((1, 2))
    qi, w = ix.queries(q.permute(0, 2, 1, 3))
    s_ = torch.log_softmax(C.Indexer.scores(qi, w, ix.keys(k)).masked_fill(~causal, float("-inf")), -1)
    kl = (p * (torch.log(p.clamp_min(1e-30)) - s_).masked_fill(~causal, 0)).sum(-1).mean()
    assert float(kl) == pytest.approx(after, rel=1e-5)
    # on a sample of the queries (drawn once from the last three quarters of the positions): as deterministic
    a, b = (C._distill_layer(q, k, None, 2, 8, 40, 3e-3, torch.Generator().manual_seed(0), queries=10)
            for _ in range(2))
    assert a[2] == b[2] and a[2] < a[1]


# ---------------------------------------------------------------------------------------------------------------
# calibration


def test_calibration_is_pca_of_the_keys_and_qk_channel_importance():
    g = torch.Generator().manual_seed(4)
    B, H, Hkv, T, d = 2, 4, 2, 30, 8
    q = torch.randn(B, H, T, d, generator=g)
    K = torch.randn(B, Hkv, T, d, generator=g) * torch.linspace(0.2, 3, d)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :5] = False                                   # padding is left out of the sums
    stats = KeyStats()
    stats.add(3, q[:, :, :12], K[:, :, :12], valid[:, :12])  # two calls add up
    stats.add(3, q[:, :, 12:], K[:, :, 12:], valid[:, 12:])
    cal = stats.finish("t")
    for h in range(Hkv):
        X = torch.cat([K[0, h], K[1, h, 5:]]).double()
        evals, evecs = torch.linalg.eigh(torch.cov(X.T, correction=0))
        torch.testing.assert_close(cal.variance[3][h], evals.flip(0).float(), rtol=1e-4, atol=1e-5)
        # same subspace per component (eigenvectors up to sign)
        dots = (cal.basis[3][h].double() * evecs.flip(1)).sum(0).abs()
        torch.testing.assert_close(dots, torch.ones(d, dtype=torch.float64), rtol=1e-4, atol=1e-4)
        qg = torch.cat([q[0, 2 * h:2 * h + 2], q[1, 2 * h:2 * h + 2, 5:]], 1).abs().sum(0)   # the group's heads
        imp = (qg * torch.cat([K[0, h], K[1, h, 5:]]).abs()).sum(0)
        assert cal.channels[3][h].tolist() == torch.argsort(imp, descending=True, stable=True).tolist()
    assert cal.tokens == 2 * T - 5
    d_ = cal.describe("double-sparsity", 3)
    assert d_["channels"]["3"] == cal.channels[3][:, :3].tolist()
