"""Pipeline parallelism (predict --pipeline P --microbatches M): the round of P stages from one micro-batch's times,
the fullest stage's weights and cache, the prefill's fill, checked by hand against single-device predictions."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparq_sim
from sparq_sim.cli import main
from sparq_sim.hardware_profiles import load_hardware
from sparq_sim.simulator.models import load_model_spec


def _one(**kw):
    return sparq_sim.predict_columns(strategies=["dense"], **kw)


def _head(model, batch, phase="decode", seq=4096, hw="a100"):
    """The final norm and lm_head (the last stage's own work) from the per-operator ledger."""
    d = sparq_sim.ledger(hardware=hw, model=model, seq_len=seq, batch=batch, strategies="dense", phases=(phase,))
    h = d[d["op"].isin(["final_norm", "lm_head"])]
    return float(h["time_s"].sum()), float(h["ideal_time_s"].sum())


@pytest.mark.parametrize("P,M,B", [(4, None, 16), (3, 2, 10), (2, 8, 5)])
def test_round_by_hand(P, M, B):
    """llama2-13b (40 layers, d_model 5120) on an A100: the round is the fullest stage busy with every micro-batch
    or one micro-batch's trip through all stages and its P sends, whichever is longer."""
    model, m = "llama2-13b", load_model_spec("llama2-13b")
    link = load_hardware("a100").device_link
    Me = min(M or P, B)
    b = math.ceil(B / Me)
    frac = math.ceil(40 / P) / 40            # 4 stages: 10 of 40 layers; 3 stages: 14; 2 stages: 20
    one = _one(hardware="a100", model=model, seq_len=4096, batch=b)
    h, hi = _head(model, b)
    act = b * m.d_model * 2
    p2p = link.base_latency_s + link.latency_s + act / (link.bandwidth_Bps * link.efficiency)
    want = max(Me * ((one["time_s"][0] - h) * frac + h), one["time_s"][0] + P * p2p)
    want_ideal = max(Me * ((one["ideal_time_s"][0] - hi) * frac + hi),
                     one["ideal_time_s"][0] + P * act / link.bandwidth_Bps)
    pp = _one(hardware="a100", model=model, seq_len=4096, batch=B, pipeline=P, microbatches=M)
    assert pp["time_s"][0] == pytest.approx(want, rel=1e-12)
    assert pp["ideal_time_s"][0] == pytest.approx(want_ideal, rel=1e-12)
    assert pp["batch"][0] == B and pp["pipeline"][0] == P and pp["microbatches"][0] == Me
    assert pp["tokens_per_s"][0] == pytest.approx(B / want, rel=1e-12)
    for c in ("weight_bytes", "kv_read_bytes", "flops"):    # every micro-batch reads its stage's weights again
        assert pp[c][0] == pytest.approx(Me * one[c][0], rel=1e-12)
    # the prefill: one micro-batch's prompts through every stage, then a stage time per further micro-batch
    ph, _ = _head(model, b, "prefill")
    pf = one["prefill_time_s"][0]
    pf_p2p = link.base_latency_s + link.latency_s + b * 4096 * m.d_model * 2 / (link.bandwidth_Bps * link.efficiency)
    assert pp["prefill_time_s"][0] == pytest.approx(pf + (P - 1) * pf_p2p + (Me - 1) * ((pf - ph) * frac + ph),
                                                    rel=1e-12)


def test_the_fullest_device_holds_its_layers_and_an_end_of_the_model():
    """llama2-70b (80 layers, vocab 32000 x 8192, untied) in bf16 over 2 tensor-parallel devices and 2 stages: a device
    holds half of 40 layers' split matrices with its norms, and the lm_head's half with the final norm (larger than
    the embedding's half); its cache is 40 of 80 layers for every sequence."""
    m = load_model_spec("llama2-70b")
    d, L = m.d_model, m.n_layers
    attn = d * m.n_heads * m.head_dim + 2 * d * m.n_kv_heads * m.head_dim + m.n_heads * m.head_dim * d
    mlp = 3 * d * m.d_ff
    layer_split, layer_norms = attn + mlp, 2 * d
    want_w = (40 * (layer_split / 2 + layer_norms) + (m.vocab_size * d / 2 + d)) * 2
    kw = dict(hardware="a100-40gb", model="llama2-70b", seq_len=4096, batch=32, devices=2)
    pp = _one(pipeline=2, **kw)
    one = _one(**kw)
    kv_one = 32 * 4096 * L * 2 * (m.n_kv_heads // 2) * m.head_dim * 2     # K and V, bf16, 4 of 8 KV heads a device
    workspace_b16 = 16 * (m.vocab_size / 2 * 4 + 2 * 2 * m.d_ff / 2 * 2 + m.n_heads / 2 * 4096 * 4)
    assert pp["memory_required_bytes"][0] == pytest.approx(want_w + kv_one / 2 + workspace_b16, rel=1e-9)
    assert one["memory_required_bytes"][0] > 40e9 and not one["fits"][0]   # one stage does not fit


def test_four_stages_fit_where_one_does_not_and_serve_a_larger_batch():
    kw = dict(hardware="a100-40gb", model="llama2-70b", seq_len=4096, batch=32, devices=2)
    one, four = _one(**kw), _one(pipeline=4, **kw)
    assert not one["fits"][0] and four["fits"][0]
    assert four["max_batch"][0] > 32


def test_one_micro_batch_is_never_faster_than_one_stage():
    """Without micro-batches the stages take turns: the step is the single-stage step plus the sends."""
    kw = dict(hardware="h100", model="llama3.1-8b", seq_len=8192, batch=8)
    one = _one(**kw)
    pp = _one(pipeline=4, microbatches=1, **kw)
    assert pp["time_s"][0] > one["time_s"][0]
    assert pp["time_s"][0] - one["time_s"][0] < 4 * 50e-6     # four sends of 8 x 4096 activations: tens of us


@settings(max_examples=25, deadline=None)
@given(P=st.integers(1, 8), M=st.integers(1, 16), B=st.integers(1, 64), S=st.integers(1, 50_000))
def test_pipeline_invariants(P, M, B, S):
    """Any stages and micro-batches: the round is at least one micro-batch's trip through the model and at least the
    fullest stage's work on every micro-batch; a stage's memory never grows with more stages."""
    kw = dict(hardware="a100", model="llama2-7b", seq_len=S, batch=B)
    pp = _one(pipeline=P, microbatches=M, **kw)
    Me = min(M, B) if P > 1 else 1
    one_b = _one(batch=math.ceil(B / Me), hardware="a100", model="llama2-7b", seq_len=S)
    assert pp["time_s"][0] >= one_b["time_s"][0] * (1 - 1e-12)
    assert pp["time_s"][0] >= Me * one_b["time_s"][0] * math.ceil(32 / P) / 32 * (1 - 1e-12)
    assert np.isfinite(pp["time_s"]).all() and pp["tokens_per_s"][0] > 0
    if P < 8:
        more = _one(pipeline=P + 1, microbatches=M, **kw)
        assert more["memory_required_bytes"][0] <= pp["memory_required_bytes"][0] * (1 + 1e-12) or \
            math.ceil(32 / (P + 1)) == math.ceil(32 / P)


def test_a_generation_through_a_pipeline_sums_its_rounds():
    kw = dict(hardware="a100", model="llama2-13b", seq_len=1024, batch=8, pipeline=2, strategies=["dense"])
    gen = sparq_sim.predict_columns(gen_len=5, **kw)
    steps = sparq_sim.predict_columns(**dict(kw, seq_len=[1025, 1026, 1027, 1028]))
    assert gen["ttft_s"][0] == pytest.approx(gen["prefill_time_s"][0], rel=1e-12)
    assert gen["e2e_time_s"][0] == pytest.approx(gen["prefill_time_s"][0] + steps["time_s"].sum(), rel=1e-12)


@pytest.mark.parametrize("args,match", [
    (["--pipeline", "0"], "--pipeline"),
    (["--pipeline", "33"], "exceeds the 32 layers of llama2-7b"),
    (["--pipeline", "2", "--microbatches", ""], "--microbatches is empty"),
    (["--pipeline", "2", "--microbatches", "0"], "--microbatches"),
])
def test_bad_pipeline_flags_are_one_line(capsys, args, match):
    assert main(["predict", "--gpu", "a100", "--model", "llama2-7b"] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err


def test_the_header_says_how_the_devices_are_arranged(capsys):
    assert main(["predict", "--gpu", "a100-40gb", "--model", "llama2-70b", "--devices", "2", "--pipeline", "2",
                 "--batch", "32", "--strategies", "dense", "--no-legend"]) == 0
    out = capsys.readouterr().out
    assert "2 pipeline stages of 2 devices (4 in all), 2 micro-batches in flight" in out.splitlines()[0]
