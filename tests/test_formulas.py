"""The issue's hand-checked figures, and the ledger against the element formulas of docs/traffic-model.md."""

import numpy as np
import pytest

from sparq_sim import ledger, load_model_spec, predict
from sparq_sim.hardware_profiles import load_hardware
from sparq_sim.simulator.strategies import STRATEGY_NAMES, elements_moved, resolve_params

GiB = 2**30


def one(df, strategy):
    row = df[df.strategy == strategy]
    assert len(row) == 1
    return row.iloc[0]


def test_llama2_7b_bf16_kv_read_is_exactly_2_gib_and_weights_13_2_to_13_5_gb():
    df = predict(hardware="a100", model="llama2-7b", seq_len=4096, batch=1, strategies="dense", dtype="bf16")
    d = one(df, "dense")
    # 2 (K and V) x 32 layers x 32 heads x 128 x 4096 positions x 2 bytes
    assert d.kv_read_bytes == 2 * 32 * 32 * 128 * 4096 * 2 == 2 * GiB
    assert 13.2e9 <= d.weight_bytes <= 13.5e9
    # the new token's k and v: 2 x 32 x 32 x 128 x 2 B
    assert d.kv_write_bytes == 2 * 32 * 32 * 128 * 2


def test_llama3_8b_holds_128_kib_of_kv_per_token():
    m = load_model_spec("llama3-8b")
    assert m.kv_elements_per_token() * 2 == 128 * 1024  # 2 x 32 layers x 8 KV heads x 128 x 2 B
    a = one(predict(model="llama3-8b", seq_len=4096, strategies="dense"), "dense")
    b = one(predict(model="llama3-8b", seq_len=4097, strategies="dense"), "dense")
    assert b.kv_read_bytes - a.kv_read_bytes == 128 * 1024


def test_sparq_r16_k256_s4096_moves_0_12546_of_dense_attention():
    S, r, k, dh = 4096, 16, 256, 128
    expected = (S * r + 2 * k * dh + 4 * dh) / (2 * S * dh + 2 * dh)
    assert expected == pytest.approx(0.12546, abs=5e-6)
    df = predict(model="llama2-7b", seq_len=S, strategies="dense,sparq", r=r, k=k)
    s, d = one(df, "sparq"), one(df, "dense")
    assert s.attention_bytes / d.attention_bytes == pytest.approx(expected, rel=1e-12)
    assert s.attention_fraction == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("C", [2, 4, 8, 16])
def test_compression_recipes(C):
    S, dh = 8192, 128
    p = resolve_params("sparq", S, dh, C)
    assert int(p["r"]) == dh // C and int(p["k"]) == S // (2 * C) and int(p["local_window"]) == S // (2 * C) // 4
    for name in ("h2o", "lm-infinite", "flexgen"):
        assert int(resolve_params(name, S, dh, C)["k"]) == S // C
    q = resolve_params("quest", S, dh, C)
    assert int(q["k"]) == S // C and int(q["page_size"]) == 16
    lm = resolve_params("lm-infinite", S, dh, C)
    assert int(lm["sinks"]) == 16 and int(lm["local_window"]) == S // C - 16
    for name in ("loki", "double-sparsity"):   # SparQ's r and k, no window
        p = resolve_params(name, S, dh, C)
        assert (int(p["r"]), int(p["k"]), int(p["local_window"])) == (dh // C, S // (2 * C), 0)
    snap = resolve_params("snapkv", S, dh, C)
    assert int(snap["k"]) == S // C and int(snap["local_window"]) == min(32, S // C // 2)
    assert int(resolve_params("snapkv", 40, dh, C)["local_window"]) == round(40 / C + 1e-9) // 2


def test_reference_table_elements_by_hand():
    """docs/traffic-model.md element table, each strategy at S = 1000, d_h = 64, r = 8, k = 96, P = 16, written out."""
    S, dh, r, k = 1000, 64, 8, 96
    by_hand = {
        "dense": 2 * S * dh + 2 * dh,
        "sparq": S * r + 2 * k * dh + 4 * dh,
        "h2o": 2 * k * dh + 2 * dh + 2 * S,
        "lm-infinite": 2 * k * dh + 2 * dh,
        "flexgen": S * dh + k * dh + 2 * dh,
        "quest": 2 * 63 * dh + 2 * k * dh + 2 * dh,  # ceil(1000 / 16) = 63 pages
        "loki": S * r + 2 * k * dh + 2 * dh,         # r leading components of every rotated key, k rows
        "double-sparsity": S * r + r + 2 * k * dh + 2 * dh,   # label cache read, the new label written, k rows
        "snapkv": 2 * k * dh + 2 * dh,
        # k rows, and per layer the indexer key of every position and the new one's, d_I = min(128, d_h) = 64 wide
        "dsa": 2 * k * dh + 2 * dh + S * 64 + 64,
    }
    for name in STRATEGY_NAMES:
        p = resolve_params(name, S, dh, 8, r=r if name in ("sparq", "loki", "double-sparsity") else None,
                           k=k if name != "dense" else None)
        assert float(elements_moved(name, S, dh, p)) == by_hand[name], name
    # the indexer's terms are the layer's, shared by its KV heads; the others are each head's
    p = resolve_params("dsa", S, dh, 8, k=k, index_dim=32)
    assert float(elements_moved("dsa", S, dh, p, kv_heads=4)) == 2 * k * dh + 2 * dh + (S * 32 + 32) / 4
    for name in STRATEGY_NAMES[:-1]:
        p = resolve_params(name, S, dh, 8)
        assert float(elements_moved(name, S, dh, p, kv_heads=4)) == float(elements_moved(name, S, dh, p)), name


@pytest.mark.parametrize("model", ["llama2-7b", "llama3-8b", "gemma-7b", "smollm2-135m", "pythia-1.4b"])
def test_attention_bytes_are_the_formula_times_heads_layers_batch_bytes(model):
    m = load_model_spec(model)
    S, B = 3000, 3
    df = predict(model=model, seq_len=S, batch=B, kv_dtype="fp8")
    for row in df.itertuples():
        p = {c: np.asarray(getattr(row, c)) for c in ("r", "k", "local_window", "page_size")}
        p["index_dim"] = np.asarray(m.indexer()[1])   # DSA's indexer keys, per layer: spread over the KV heads
        per_head = float(elements_moved(row.strategy, S, m.head_dim, p, kv_heads=m.n_kv_heads))
        if row.strategy == "quest":  # Quest's first two layers are dense
            dense = float(elements_moved("dense", S, m.head_dim, p))
            per_layer_sum = 2 * dense + (m.n_layers - 2) * per_head
        else:
            per_layer_sum = m.n_layers * per_head
        assert row.attention_bytes == pytest.approx(per_layer_sum * m.n_kv_heads * B * 1.0, rel=1e-12), row.strategy


def test_ledger_operators_sum_to_the_prediction():
    kw = dict(hardware="h100", model="llama3-8b", seq_len=8192, batch=4)
    pred = predict(**kw)
    led = ledger(**kw, strategies="all", phases=("decode",))
    for s in STRATEGY_NAMES:
        ops = led[led.strategy == s]
        row = one(pred, s)
        assert ops.weight_bytes.sum() == pytest.approx(row.weight_bytes, rel=1e-12)
        assert (ops.kv_read_bytes.sum() + ops.kv_write_bytes.sum() + ops.meta_read_bytes.sum()
                + ops.meta_write_bytes.sum()) == pytest.approx(row.attention_bytes, rel=1e-12)
        assert ops.flops.sum() == pytest.approx(row.flops, rel=1e-12)
        assert ops.time_s.sum() == pytest.approx(row.time_s, rel=1e-12)
        assert ops.ideal_time_s.sum() == pytest.approx(row.ideal_time_s, rel=1e-12)
        assert ops[ops.group == "attention"].time_s.sum() == pytest.approx(row.attention_time_s, rel=1e-12)


def test_weights_read_once_per_step_and_flops_two_per_mac():
    m = load_model_spec("llama2-7b")
    df = predict(model="llama2-7b", seq_len=1024, batch=[1, 8], strategies="dense")
    b1, b8 = df.iloc[0], df.iloc[1]
    assert b1.weight_bytes == pytest.approx(b8.weight_bytes - 7 * 4096 * 2, rel=1e-12)  # only embedding rows grow
    # matmul FLOPs: 2 per MAC over every weight matrix the step runs (embedding lookup excluded, lm_head included)
    matmul_params = m.n_layers * (m.attn_params + m.mlp_params) + m.lm_head_params
    led = ledger(model="llama2-7b", seq_len=1024, batch=1, strategies="dense", phases=("decode",))
    proj = led[led.op.isin(["qkv_proj", "o_proj", "mlp_up", "mlp_down", "lm_head"])]
    assert proj.flops.sum() == 2 * matmul_params


def test_head_dim_is_explicit_not_hidden_over_heads():
    g = load_model_spec("gemma-7b")
    assert g.head_dim == 256 and g.d_model // g.n_heads == 192
    d = one(predict(model="gemma-7b", seq_len=1000, strategies="dense"), "dense")
    assert d.kv_read_bytes == 2 * 28 * 16 * 256 * 1000 * 2


def test_capacity_counts_sparq_second_k_copy_and_reports_what_does_not_fit():
    df = predict(model="llama2-7b", seq_len=4096, batch=16, strategies="dense,sparq,h2o")
    d, s, h = one(df, "dense"), one(df, "sparq"), one(df, "h2o")
    kv = 16 * 2 * GiB
    assert s.memory_required_bytes - d.memory_required_bytes == pytest.approx(kv / 2 + 16 * 32 * 32 * 128 * 2, rel=1e-9)
    assert h.memory_required_bytes < d.memory_required_bytes  # an evicting cache holds S/C tokens
    big = predict(model="llama2-70b", seq_len=4096, strategies="dense")
    assert not big.fits.iloc[0] and big.weight_bytes.iloc[0] > 80e9
    tp = predict(model="llama2-70b", seq_len=4096, strategies="dense", devices=4)
    assert tp.fits.iloc[0]


def test_capacity_counts_double_sparsity_label_cache_and_loki_stores_nothing_more():
    B, S = 4, 4096
    df = predict(model="llama2-7b", seq_len=S, batch=B, strategies="dense,loki,double-sparsity,snapkv")
    d = one(df, "dense")
    r = 128 // 8
    assert one(df, "double-sparsity").memory_required_bytes - d.memory_required_bytes == pytest.approx(
        B * 32 * 32 * S * r * 2, rel=1e-12)                  # batch x layers x KV heads x S x r x bf16
    assert one(df, "loki").memory_required_bytes == d.memory_required_bytes
    assert one(df, "snapkv").memory_required_bytes < d.memory_required_bytes   # S / C tokens kept


def test_loki_reads_its_rotation_once_per_layer_whatever_the_batch():
    for B in (1, 8):
        df = predict(model="llama2-7b", seq_len=4096, batch=B, strategies="dense,loki")
        # 32 layers x 32 KV heads x a 128 x 128 rotation in bf16
        assert one(df, "loki").weight_bytes - one(df, "dense").weight_bytes == 32 * 32 * 128 * 128 * 2


def test_kv_on_host_pays_the_host_link():
    on = one(predict(hardware="a100", seq_len=32768, batch=8, strategies="dense"), "dense")
    off = one(predict(hardware="a100", seq_len=32768, batch=8, strategies="dense", kv_location="host"), "dense")
    assert off.kv_location == "host" and on.kv_location == "hbm"
    # KV read time alone at the host link's achieved bandwidth (31.5 GB/s x 0.8)
    assert off.attention_time_s >= on.kv_read_bytes / (31.5e9 * 0.8)


def test_ideal_roofline_of_a_memory_bound_step_is_bytes_over_peak_bandwidth():
    """At B = 1 every decode operator is memory bound: the ideal time is exactly bytes / peak HBM bandwidth."""
    d = one(predict(hardware="a100", model="llama2-7b", seq_len=4096, strategies="dense"), "dense")
    assert d.bound == "memory"
    # dense attention softmax has no bytes of its own (fused): it adds flops / vector peak
    led = ledger(hardware="a100", model="llama2-7b", seq_len=4096, strategies="dense", phases=("decode",))
    mem = led[led.bytes > 0]
    assert (mem.ideal_time_s.sum() == pytest.approx(mem.bytes.sum() / 2039e9, rel=1e-9))


def test_tensor_parallel_adds_two_allreduces_per_layer():
    led = ledger(hardware="h100", model="llama2-70b", seq_len=4096, devices=8, strategies="dense", phases=("decode",))
    ar = led[led.group == "communication"]
    assert set(ar.op) == {"attn_allreduce", "mlp_allreduce"} and (ar.layers == 80).all()
    assert (ar.link_time_s > 0).all()


def test_sliding_window_caps_what_attention_reads():
    d = one(predict(model="mistral-7b", seq_len=8192, strategies="dense"), "dense")
    assert d.attended_len == 4096 and d.kv_read_bytes == 2 * 32 * 8 * 128 * 4096 * 2


def test_allreduce_is_a_ring_of_two_n_minus_one_hops_after_the_base_latency():
    """NCCL's latency model within one node (tuning.cc): an all-reduce over N devices takes the base latency plus
    2 (N-1) hops, whether ring or tree (its intra-node chain), and the ring moves 2 (N-1)/N of the message per link.
    On an H100's NVLink (0.6 us per hop, 6.7 us per collective) a decode step's 16 KiB message over 8 GPUs costs
    6.7 + 14 x 0.6 = 15.1 us and a bit; over 2 GPUs 6.7 + 1.2 us."""
    from sparq_sim.simulator.roofline import allreduce_time

    link = load_hardware("h100").device_link
    bw = link.achieved_Bps
    n = 16384.0
    assert allreduce_time(n, 8, link) == pytest.approx(6.7e-6 + 14 * 0.6e-6 + 2 * 7 / 8 * n / bw, rel=1e-12)
    assert 15.1e-6 < allreduce_time(n, 8, link) < 15.3e-6
    assert allreduce_time(n, 2, link) == pytest.approx(6.7e-6 + 2 * 0.6e-6 + n / bw, rel=1e-12)
    big = 1e9   # a large message: bandwidth bound
    assert allreduce_time(big, 8, link) == pytest.approx(6.7e-6 + 14 * 0.6e-6 + 2 * 7 / 8 * big / bw, rel=1e-12)
    assert allreduce_time(np.array([n, big]), 4, link) == pytest.approx(
        [6.7e-6 + 6 * 0.6e-6 + 1.5 * x / bw for x in (n, big)], rel=1e-12)


def test_streamingllm_is_lm_infinite_by_another_name():
    """StreamingLLM (attention sinks + a recent window) keeps the cache LM-Infinite keeps and moves its bytes: one
    registry entry, two names. Outputs name the entry; --sinks 4 gives StreamingLLM's paper setting."""
    import sparq_sim
    from sparq_sim.simulator.strategies import ALIASES, get_strategy, parse_strategies, resolve_params
    from sparq_sim.sparq_ref.commands import parse_strategies as ref_parse

    assert ALIASES == {"streamingllm": "lm-infinite"} and get_strategy(" StreamingLLM ").name == "lm-infinite"
    assert parse_strategies("dense,streamingllm,lm-infinite") == ["dense", "lm-infinite"]
    a = sparq_sim.predict_columns(strategies="streamingllm", seq_len=8192)
    b = sparq_sim.predict_columns(strategies="lm-infinite", seq_len=8192)
    assert a["strategy"].decode().tolist() == ["lm-infinite"] and (a["total_bytes"] == b["total_bytes"]).all()
    p = resolve_params("streamingllm", 8192, 128, 8, sinks=4)
    assert int(p["sinks"]) == 4 and int(p["local_window"]) == 1024 - 4
    assert ref_parse("streamingllm") == ["lm-infinite"]
