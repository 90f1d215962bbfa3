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
    for strategy in reg.STRATEGY_NAMES[1:]:
        rows = []
        s = hf.Session(hf.StrategyConfig(strategy, 4.0), sink=rows.append)
        out = hf.decode(m, pre, s, 5)
        assert out.steps == 4 and len(rows) == 4 * m.config.num_hidden_layers
        seq = np.concatenate([r["seq_len"] for r in rows])
        assert set(seq[np.concatenate([r["batch"] for r in rows]) == 1]) == {58, 59, 60, 61}  # padding not counted
        assert 0 < out.counts.transfer_ratio < 0.75, strategy


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
