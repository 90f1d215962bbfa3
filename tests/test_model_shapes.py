"""The shapes of today's models (issue 12): mixture of experts, multi-head latent attention, local and global layers.
Bytes are computed here by hand from each model's config values (written out, not taken from the simulator)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import sparq_sim
from sparq_sim.simulator.ledger import experts_read
from sparq_sim.simulator.models import BUILTIN, load_model_spec, replace

BF16 = 2.0


def _row(df, strategy):
    return df[df["strategy"] == strategy].iloc[0]


def _predict(**kw):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sparq_sim.predict(hardware="h100", dtype="bf16", **kw)


# --- parameter counts against the published totals ------------------------------------------------------------------

@pytest.mark.parametrize("name, total, active", [
    ("mixtral-8x7b", 46.7e9, 12.9e9),      # Mistral AI: 46.7B total, 12.9B active
    ("mixtral-8x22b", 141e9, 39e9),        # 141B total, 39B active
    ("qwen3-30b-a3b", 30.5e9, 3.3e9),      # Qwen3 report: 30.5B total, 3.3B activated
    ("deepseek-v3", 671e9, 37e9),          # DeepSeek-V3 report: 671B total, 37B activated (MTP module apart)
    ("llama3.1-405b", 405e9, 405e9),
    ("gemma2-9b", 9.24e9, 9.24e9),
    ("qwen2.5-7b", 7.61e9, 7.61e9),
    ("phi3-mini", 3.8e9, 3.8e9),
])
def test_parameter_counts_match_the_published_totals(name, total, active):
    m = BUILTIN[name]
    assert m.n_params == pytest.approx(total, rel=0.015)
    assert m.active_params == pytest.approx(active, rel=0.03)


# --- mixture of experts ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("E, k, T", [(8, 2, 1), (8, 2, 3), (128, 8, 16), (256, 8, 64), (8, 8, 5)])
def test_distinct_experts_read_is_the_expectation_over_uniform_routing(E, k, T):
    m = replace(BUILTIN["mixtral-8x7b"], n_experts=E, experts_per_token=k)
    # independent route: an expert is missed by one token with probability C(E-1, k) / C(E, k)
    miss = math.comb(E - 1, k) / math.comb(E, k)
    assert float(experts_read(m, T)) == pytest.approx(E * (1 - miss ** T), rel=1e-12)
    # and a Monte Carlo of the routing itself
    rng = np.random.default_rng(0)
    n = 4000
    picks = np.argsort(rng.random((n, T, E)), axis=2)[:, :, :k]
    distinct = np.array([len(np.unique(p)) for p in picks])
    assert float(experts_read(m, T)) == pytest.approx(distinct.mean(), rel=0.03)


def test_mixtral_decode_reads_two_experts_at_batch_one_and_all_eight_at_batch_64():
    m = BUILTIN["mixtral-8x7b"]
    d, L, ff, V = 4096, 32, 14336, 32000
    attn = d * (32 + 2 * 8) * 128 + 32 * 128 * d
    expert = 3 * d * ff
    router = d * 8
    norms = 2 * d * L + d
    for B in (1, 64):
        experts = 8 * (1 - (6 / 8) ** B)          # 2 at B = 1; 8 (1 - 0.75^64) at 64
        want = (L * (attn + router + experts * expert) + norms + B * d + V * d) * BF16
        row = _row(_predict(model="mixtral-8x7b", seq_len=1024, batch=B, strategies="dense"), "dense")
        assert row["weight_bytes"] == pytest.approx(want, rel=1e-12), B
        # FLOPs of the experts follow the tokens, not the experts read: 2 per token pair
    assert m.active_params == pytest.approx(L * (attn + router + 2 * expert + 2 * d) + d + 2 * V * d, rel=1e-12)
    # all 8 experts stay resident
    assert _row(_predict(model="mixtral-8x7b", seq_len=1024, batch=1, strategies="dense"), "dense")[
        "memory_required_bytes"] > m.n_params * BF16


def test_deepseek_v3_reads_its_shared_expert_and_dense_layers():
    m = BUILTIN["deepseek-v3"]
    d, L, V = 7168, 61, 129280
    mla = (d * 1536 + 1536 + 1536 * 128 * 192) + (d * 576 + 512 + 512 * 128 * (128 + 128)) + 128 * 128 * d
    assert m.attn_params == mla
    dense_mlp, expert, router = 3 * d * 18432, 3 * d * 2048, d * 256
    B = 1
    experts = 256 * (1 - (248 / 256) ** B)        # = 8
    want = (L * mla + 3 * dense_mlp + 58 * (router + (experts + 1) * expert) + 2 * L * d + d + B * d + V * d) * BF16
    row = _row(_predict(model="deepseek-v3", seq_len=4096, batch=B, strategies="dense", devices=8), "dense")
    # eight devices together read every split matrix once and the replicated ones (latent projections, norms,
    # routers, the batch's embedding rows) eight times
    replicated = L * ((d + 1) * 1536 + d * 576 + 512 + 2 * d) + d + 58 * router + B * d
    assert row["weight_bytes"] == pytest.approx(want + 7 * replicated * BF16, rel=1e-12)


# --- multi-head latent attention ------------------------------------------------------------------------------------

def test_mla_caches_one_latent_row_per_token_and_layer():
    S, B, L = 8192, 4, 61
    row = _row(_predict(model="deepseek-v3", seq_len=S, batch=B, strategies="dense", devices=8), "dense")
    # absorbed decode: every device reads the whole (replicated) row of 512 + 64 for all S positions
    assert row["kv_read_bytes"] == pytest.approx(8 * B * L * S * 576 * BF16, rel=1e-12)
    assert row["kv_write_bytes"] == pytest.approx(8 * B * L * 576 * BF16, rel=1e-12)
    m = BUILTIN["deepseek-v3"]
    assert m.kv_elements_per_token() == L * 576     # vs 2 x 128 heads x 128 for the same heads in MHA


def test_sparse_strategies_on_the_latent_row():
    S, L, C = 10000, 61, 8
    df = _predict(model="deepseek-v3", seq_len=S, batch=1, compression=C)
    dense, sparq, flex, h2o = (_row(df, s) for s in ("dense", "sparq", "flexgen", "h2o"))
    r, k = round(576 / (2 * C)), math.floor(S / (2 * C) + 0.5)
    assert (int(sparq["r"]), int(sparq["k"])) == (r, k) == (36, 625)
    # SparQ: r columns over S, then k whole rows (K and V in one read), v_bar of 512 read and written
    assert sparq["kv_read_bytes"] == pytest.approx(L * (S * r + k * 576) * BF16, rel=1e-12)
    assert sparq["metadata_bytes"] == pytest.approx(L * 2 * 512 * BF16, rel=1e-12)
    assert sparq["attention_fraction"] == pytest.approx(
        (S * r + k * 576 + 576 + 1024) / (S * 576 + 576), rel=1e-12)
    # FlexGen: all rows for the scores, then k = S/C rows again for V's 512
    kf = math.floor(S / C + 0.5)
    assert flex["kv_read_bytes"] == pytest.approx(L * (S * 576 + kf * 512) * BF16, rel=1e-12)
    # H2O: its k rows once, and its score statistics
    assert h2o["kv_read_bytes"] == pytest.approx(L * kf * 576 * BF16, rel=1e-12)
    assert dense["kv_read_bytes"] == pytest.approx(L * S * 576 * BF16, rel=1e-12)


def test_unabsorbed_mla_expands_the_rows_and_sparq_loses_its_columns():
    m = replace(BUILTIN["deepseek-v3"], mla_absorb=False, name="deepseek-v3-unabsorbed")
    S, L, H = 4096, 61, 128
    df = _predict(model=m, seq_len=S, batch=1, strategies="dense,sparq,h2o")
    ab = _predict(model="deepseek-v3", seq_len=S, batch=1, strategies="dense,sparq,h2o")
    d_un, d_ab = _row(df, "dense"), _row(ab, "dense")
    assert d_un["kv_read_bytes"] == d_ab["kv_read_bytes"]          # the same rows are read
    # the expansion: k_nope and v (128 + 128) per head for all S rows, 2 FLOPs per latent element each
    expand = 2 * 512 * H * S * (128 + 128)
    scores_values = 2 * H * S * (192 + 128)
    absorbed = 2 * H * S * (576 + 512) + 2 * 2 * H * 128 * 512      # over the row, plus q_absorb and o_absorb
    assert d_un["flops"] - d_ab["flops"] == pytest.approx(L * (expand + scores_values - absorbed), rel=1e-9)
    # SparQ's step 1 needs whole rows once the keys are expanded
    sp = _row(df, "sparq")
    k = int(sp["k"])
    assert sp["kv_read_bytes"] == pytest.approx(L * (S * 576 + k * 576) * BF16, rel=1e-12)


# --- local and global layers ----------------------------------------------------------------------------------------

def test_gemma2_local_layers_attend_and_cache_only_their_window():
    S, B, C, w = 10000, 2, 8, 4096
    df = _predict(model="gemma2-9b", seq_len=S, batch=B, compression=C)
    dense, sparq = _row(df, "dense"), _row(df, "sparq")
    per_pos = B * 8 * 256 * BF16                   # B x 8 KV heads x 256 per K (or V)
    assert dense["kv_read_bytes"] == pytest.approx(2 * per_pos * (21 * S + 21 * w), rel=1e-12)
    # SparQ: k and r per span: global k = S/16, local k = w/16; r = 256/8
    kg, kl, r = math.floor(S / 16 + 0.5), w // 16, 32
    assert (int(sparq["k"]), int(sparq["r"]), int(sparq["attended_len"])) == (kg, r, S)
    want = per_pos * (21 * (S * r / 256 + 2 * kg) + 21 * (w * r / 256 + 2 * kl))
    assert sparq["kv_read_bytes"] == pytest.approx(want, rel=1e-12)
    # the cache: 21 layers of S positions, 21 of the window (K and V), beside 9.24B bf16 weights
    cache = 2 * per_pos * (21 * S + 21 * w)
    m = BUILTIN["gemma2-9b"]
    assert dense["memory_required_bytes"] == pytest.approx(
        m.n_params * BF16 + cache + B * (256000 * 4 + 2 * 2 * 14336 * 2 + 16 * S * 4), rel=1e-9)


def test_gemma3_has_five_local_layers_to_each_global_one():
    m = BUILTIN["gemma3-12b"]
    wins = m.layer_windows()
    assert wins.count(None) == 8 and wins.count(1024) == 40
    assert [i for i, x in enumerate(wins) if x is None] == [5, 11, 17, 23, 29, 35, 41, 47]


def test_a_sliding_window_prefill_counts_the_windowed_pairs():
    """Mistral 7B v0.1 (window 4096) prefilling 10,000 tokens: each query sees at most 4096 keys."""
    S, w, B = 10000, 4096, 2
    led = sparq_sim.ledger(hardware="h100", model="mistral-7b", seq_len=S, batch=B, strategies="dense",
                           dtype="bf16", phases=("prefill",))
    attn = led[led["op"] == "attention"].iloc[0]
    pairs = w * (w + 1) / 2 + (S - w) * w
    assert attn["flops"] == pytest.approx(32 * B * 32 * pairs * (4 * 128 + 5), rel=1e-12)  # q.k, p.v, softmax
    store = led[led["op"] == "kv_store"].iloc[0]
    assert store["kv_write_bytes"] == pytest.approx(32 * B * 8 * w * 2 * 128 * BF16, rel=1e-12)  # the window kept


# --- config.json of these models loads to the built-in ---------------------------------------------------------------

CONFIGS = {
    "deepseek-v3": {"model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
                    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
                    "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
                    "num_experts_per_tok": 8, "first_k_dense_replace": 3, "kv_lora_rank": 512, "q_lora_rank": 1536,
                    "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128, "vocab_size": 129280,
                    "max_position_embeddings": 163840, "tie_word_embeddings": False},
    "mixtral-8x7b": {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
                     "max_position_embeddings": 32768, "sliding_window": None, "tie_word_embeddings": False},
    "gemma2-9b": {"model_type": "gemma2", "hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
                  "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
                  "max_position_embeddings": 8192, "sliding_window": 4096},
    "gemma3-12b": {"model_type": "gemma3", "text_config": {
        "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 262208, "max_position_embeddings": 131072,
        "sliding_window": 1024, "sliding_window_pattern": 6}},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_their_config_json_loads_to_the_built_in(tmp_path, name):
    import dataclasses
    import json

    (tmp_path / "config.json").write_text(json.dumps(CONFIGS[name]))
    got, want = load_model_spec(str(tmp_path / "config.json")), BUILTIN[name]
    diff = {f.name for f in dataclasses.fields(want) if f.name not in ("name", "source")
            and getattr(got, f.name) != getattr(want, f.name)}
    assert not diff, diff


# --- names as users type them ---------------------------------------------------------------------------------------

def test_a_hugging_face_id_resolves_from_the_local_cache_first(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snap = tmp_path / "models--mistralai--Mixtral-8x7B-v0.1" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(dict(CONFIGS["mixtral-8x7b"], num_experts_per_tok=3)))
    (tmp_path / "models--mistralai--Mixtral-8x7B-v0.1" / "refs").mkdir()
    (tmp_path / "models--mistralai--Mixtral-8x7B-v0.1" / "refs" / "main").write_text("abc123")
    m = load_model_spec("mistralai/Mixtral-8x7B-v0.1")
    assert m.experts_per_token == 3 and "local Hugging Face cache" in m.source   # the cached file, not the alias
    # not cached: the alias table
    assert load_model_spec("meta-llama/Llama-2-7b-hf") is BUILTIN["llama2-7b"]
    assert load_model_spec("deepseek-ai/DeepSeek-V3") is BUILTIN["deepseek-v3"]


def test_an_unknown_hugging_face_id_says_how_to_give_a_config(tmp_path, monkeypatch, capsys):
    from sparq_sim.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    rc = main(["predict", "--model", "some-org/some-model"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "never downloads" in err and "config.json" in err


def test_mla_decode_is_a_choice_for_latent_attention_models(capsys):
    from sparq_sim.cli import main

    assert main(["predict", "--model", "deepseek-v3", "--devices", "8", "--mla-decode", "unabsorbed",
                 "--no-legend"]) == 0
    assert "deepseek-v3:unabsorbed" in capsys.readouterr().out
    for args, needle in ((["--model", "llama2-7b", "--mla-decode", "unabsorbed"], "latent attention"),
                         (["--model", "deepseek-v3", "--mla-decode", "folded"], "absorbed or unabsorbed")):
        rc = main(["predict", *args])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and err.count("\n") == 1
