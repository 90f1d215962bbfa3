"""The transformers integration on tiny randomly initialised models of several architectures (no download, fast)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sparq_sim.simulator import strategies as reg  # noqa: E402
from sparq_sim.sparq_ref import hf  # noqa: E402
from sparq_sim.sparq_ref.calibration import calibrate_on, fp8_roundtrip  # noqa: E402

COMMON = dict(vocab_size=97, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
              max_position_embeddings=256)
CONFIGS = {
    "llama-gqa": ("LlamaConfig", dict(num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=1)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=None)),
    "gpt-neox": ("GPTNeoXConfig", dict()),
}


def tiny(name):
    cls, extra = CONFIGS[name]
    cfg = getattr(transformers, cls)(**COMMON, **extra)
    torch.manual_seed(0)
    m = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    hf.install(m)
    return m


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 70), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :13] = 0                                   # left padding
    ids[1, :13] = 0
    return ids, mask


@pytest.mark.parametrize("arch", CONFIGS)
def test_dense_matches_sdpa_and_every_strategy_runs(arch):
    m = tiny(arch)
    ids, mask = batch()
    m.set_attn_implementation("sdpa")
    ref = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    hf.install(m)
    pre = hf.prefill(m, ids, mask, max_new_tokens=6)
    res = hf.decode(m, pre, hf.Session(hf.StrategyConfig("dense")), 5)
    assert res.tokens.tolist() == ref[:, ids.shape[1]:].tolist()
    cal = calibrate_on(m, ids[:, 13:], indexer=True)
    for strategy in reg.STRATEGY_NAMES[1:]:
        rows = []
        s = hf.Session(hf.StrategyConfig(strategy, 4.0), sink=rows.append, calibration=cal)
        out = hf.decode(m, pre, s, 5)
        assert out.steps == 4 and len(rows) == 4 * m.config.num_hidden_layers
        seq = np.concatenate([r["seq_len"] for r in rows])
        assert set(seq[np.concatenate([r["batch"] for r in rows]) == 1]) == {58, 59, 60, 61}  # padding not counted
        # DSA's indexer keys (16 wide, the head width) come on top of its 1/4: with one KV head, half of it again
        assert 0 < out.counts.transfer_ratio < (1.0 if strategy == "dsa" else 0.75), strategy


def test_gqa_sets_are_per_kv_head():
    m = tiny("llama-gqa")
    ids, mask = batch()
    pre = hf.prefill(m, ids, mask, max_new_tokens=3)
    rows = []
    hf.decode(m, pre, hf.Session(hf.StrategyConfig("sparq", 4.0), sink=rows.append), 2)
    assert all(len(r["positions"]) == 2 * 2 for r in rows)      # batch 2 x 2 KV heads, not 4 query heads
    assert all(len(c) == 4 for r in rows for c in r["components"])  # r = d_h / 4 = 16 / 4


def test_sparq_full_budget_reproduces_dense_in_a_model():
    m = tiny("qwen2")
    ids, mask = batch()
    pre = hf.prefill(m, ids[:1], mask[:1], max_new_tokens=3)
    # k = S at the first decode step (S = 71); the second step would need k = 72
    full = hf.decode(m, pre, hf.Session(hf.StrategyConfig("sparq", 1.0, r=16, k=71, local_window=1)), 2)
    dense = hf.decode(m, pre, hf.Session(hf.StrategyConfig("dense")), 2)
    assert full.tokens.tolist() == dense.tokens.tolist()
    torch.testing.assert_close(full.logprobs, dense.logprobs, rtol=1e-4, atol=1e-4)


def test_h2o_state_is_kept_per_sequence_and_layer():
    m = tiny("llama-gqa")
    ids, mask = batch()
    pre = hf.prefill(m, ids, mask, max_new_tokens=8)
    assert set(pre.h2o_scores) == {0, 1, 2}
    assert pre.h2o_scores[0].shape == (2, 2, 70)
    # every prompt query row sums to 1 over the keys: the statistics add up to (real queries) x (query heads per KV head)
    torch.testing.assert_close(pre.h2o_scores[0].sum(-1), torch.tensor([[140.0, 140.0], [114.0, 114.0]]))
    s = hf.Session(hf.StrategyConfig("h2o", 4.0, k=20, local_window=5))
    hf.decode(m, pre, s, 7)
    for layer in range(3):
        st = s.layers[layer].h2o
        assert st.alive.shape == (2, 2, 76) and (st.alive.sum(-1) == 20).all()
        assert not st.alive[1, :, :13].any()


def test_prefill_statistics_without_padding_match_the_padded_batch():
    """With no padding transformers passes no mask; the prefill's queries then sit at the start of the preallocated
    cache, not at its end: H2O's statistics and SnapKV's votes of a lone sequence equal those it gets left-padded in a
    batch (an earlier version let them see the cache's unfilled tail)."""
    m = tiny("llama-gqa")
    ids, mask = batch()
    alone = hf.prefill(m, ids[1:, 13:], mask[1:, 13:], max_new_tokens=8)
    padded = hf.prefill(m, ids, mask, max_new_tokens=8)
    for layer in range(3):
        torch.testing.assert_close(alone.h2o_scores[layer][0], padded.h2o_scores[layer][1, :, 13:], rtol=1e-4,
                                   atol=1e-5)
        torch.testing.assert_close(alone.snapkv_votes[layer][0], padded.snapkv_votes[layer][1, :, :, 13:],
                                   rtol=1e-4, atol=1e-5)


def test_snapkv_selects_once_and_keeps_what_it_generates():
    m = tiny("llama-gqa")
    ids, mask = batch()
    pre = hf.prefill(m, ids, mask, max_new_tokens=8)
    rows = []
    s = hf.Session(hf.StrategyConfig("snapkv", 4.0), sink=rows.append)
    hf.decode(m, pre, s, 6)
    by_layer = {}
    for r in rows:
        by_layer.setdefault(int(r["layer"][0]), []).append(r)
    for layer, steps in by_layer.items():
        first = steps[0]
        for i, (b, h) in enumerate(zip(first["batch"], first["kv_head"])):
            prompt = 70 - (13 if b == 1 else 0)
            p0 = set(first["positions"][i].tolist())
            par = reg.resolve_params("snapkv", np.array([prompt]), 16, 4.0)
            budget, window = int(par["k"][0]), int(par["local_window"][0])
            assert (budget, window) == ((18, 9) if b == 0 else (14, 7))   # k = S / 4, window min(32, k / 2)
            assert len([p for p in p0 if p < prompt]) == budget
            assert set(range(prompt - window, prompt)) <= p0
            for t, later in enumerate(steps[1:], 1):
                pt = set(later["positions"][i].tolist())
                assert pt == p0 | set(range(prompt + 1, prompt + 1 + t))   # the kept set, then every new token
                assert int(later["k"][i]) == len(pt)
    assert s.counts.transfer_ratio < 0.5


def test_calibrated_strategies_trace_their_components():
    m = tiny("llama-gqa")
    ids, mask = batch()
    cal = calibrate_on(m, ids[:, 13:])
    pre = hf.prefill(m, ids, mask, max_new_tokens=3)
    for strategy in ("loki", "double-sparsity"):
        rows = []
        hf.decode(m, pre, hf.Session(hf.StrategyConfig(strategy, 4.0), sink=rows.append, calibration=cal), 2)
        for r in rows:
            layer = int(r["layer"][0])
            for i, h in enumerate(r["kv_head"]):
                want = (list(range(4)) if strategy == "loki" else sorted(cal.channels[layer][h, :4].tolist()))
                assert r["components"][i].tolist() == want
    with pytest.raises(ValueError, match="calibration"):
        hf.Session(hf.StrategyConfig("loki", 4.0))
    with pytest.raises(ValueError, match="calibration"):   # key statistics without the trained indexer
        hf.Session(hf.StrategyConfig("dsa", 4.0), calibration=cal)


def test_dsa_decodes_with_its_trained_indexer_and_shares_one_set():
    m = tiny("llama-gqa")
    ids, mask = batch()
    cal = calibrate_on(m, ids[:, 13:], indexer=True)
    assert sorted(cal.indexer) == [0, 1, 2] and cal.indexer_info["index_dim"] == 16
    info = cal.indexer_info
    assert info["index_heads"] == 2 and info["kl_end_nats"] < info["kl_start_nats"]
    pre = hf.prefill(m, ids, mask, max_new_tokens=4)
    rows = []
    s = hf.Session(hf.StrategyConfig("dsa", 4.0), sink=rows.append, calibration=cal)
    hf.decode(m, pre, s, 3)
    for r in rows:
        for b in (0, 1):
            sets = [r["positions"][i].tolist() for i in range(len(r["batch"])) if r["batch"][i] == b]
            assert len(sets) == 2 and sets[0] == sets[1]                  # one set for both KV heads
            assert len(sets[0]) == int(r["k"][list(r["batch"]).index(b)])
    # the session's indexer cache follows the KV cache token by token: one FP8 key per position
    st = s.layers[0]
    assert st.index_keys.shape == (2, ids.shape[1] + 2, 16)
    K = pre.cache.layers[0].keys   # the prompt's keys, as the prefill cached them, give the same FP8 indexer keys
    T = ids.shape[1]
    torch.testing.assert_close(st.index_keys[:, :T], fp8_roundtrip(cal.indexer[0].keys(K[:, :, :T])))
