"""Weights, activations and KV cache each in their own format, quantisation scales counted (issue 12)."""

from __future__ import annotations

import pytest

import sparq_sim
from sparq_sim.cli import main
from sparq_sim.common.errors import UserError
from sparq_sim.simulator.ledger import Precision
from sparq_sim.simulator.models import BUILTIN
from sparq_sim.simulator.units import dtype_bytes, parse_dtype


@pytest.mark.parametrize("name, want", [
    ("bf16", 2.0), ("fp8", 1.0), ("int8", 1.0),
    ("int4", 0.5 + 2.5 / 128),        # fp16 scale + int4 zero per 128 (GPTQ/AWQ defaults)
    ("int4-g32", 0.5 + 2.5 / 32),
    ("int8-g128", 1 + 2 / 128),       # an fp16 scale per 128
    ("fp8-g128", 1 + 4 / 128),        # an fp32 scale per 128 (DeepSeek-V3's blocks)
    ("nvfp4", 0.5 + 1 / 16),          # an fp8 scale per 16
    ("mxfp4", 0.5 + 1 / 32),          # an e8m0 scale per 32
])
def test_bytes_per_element_count_the_scales(name, want):
    assert dtype_bytes(parse_dtype(name)) == want


@pytest.mark.parametrize("bad, needle", [("int4-g0", "between 1"), ("nvfp4-g32", "fixed block of 16"),
                                         ("bf16-g64", "no scale group"), ("int3", "unknown")])
def test_bad_formats_are_one_clear_error(bad, needle):
    with pytest.raises(UserError, match=needle):
        parse_dtype(bad)


def _row(**kw):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sparq_sim.predict(strategies="dense", **kw).iloc[0]


def test_quantised_weights_and_cache_move_their_scales():
    m = BUILTIN["llama2-7b"]
    B, S = 4, 2048
    row = _row(hardware="h100", model="llama2-7b", seq_len=S, batch=B, dtype="int4-g64", kv_dtype="int8-g128")
    w = 0.5 + 2.5 / 64
    # every weight once, except the embedding: only the batch's rows
    assert row["weight_bytes"] == pytest.approx((m.n_params - m.embedding_params + B * m.d_model) * w, rel=1e-12)
    kv = 1 + 2 / 128
    assert row["kv_read_bytes"] == pytest.approx(B * m.n_layers * 2 * S * m.n_kv_heads * m.head_dim * kv, rel=1e-12)
    assert (row["dtype"], row["kv_dtype"], row["act_dtype"]) == ("int4-g64", "int8-g128", "fp16")


def test_activations_choose_the_arithmetic_and_the_weight_stream():
    # int4 weights with bf16 activations: weight-only, bf16 arithmetic, weights streaming below the 16-bit rate
    p = Precision.of("int4", "fp8", "bf16")
    assert (p.compute, p.a, p.kv, p.w_eff) == ("bf16", 2.0, 1.0, 0.62)
    # fp8 W8A8 streams at the full rate and computes on fp8 units; int8 by default is weight-only as gpt-fast runs it
    assert (Precision.of("fp8").compute, Precision.of("fp8").w_eff) == ("fp8", 1.0)
    assert (Precision.of("int8").compute, Precision.of("int8").a, Precision.of("int8").w_eff) == ("fp16", 2.0, 0.77)
    assert (Precision.of("int8", None, "int8").compute, Precision.of("int8", None, "int8").w_eff) == ("int8", 1.0)
    # nvfp4 W4A4 on fp4 units
    p = Precision.of("nvfp4")
    assert (p.compute, p.a) == ("fp4", 0.5625)
    # a B200 prefill in fp4 is twice as fast as in fp8 where compute bound
    f4 = _row(hardware="b200", model="llama3.1-70b", seq_len=8192, batch=8, dtype="nvfp4")
    f8 = _row(hardware="b200", model="llama3.1-70b", seq_len=8192, batch=8, dtype="fp8")
    assert f4["prefill_ideal_time_s"] < 0.6 * f8["prefill_ideal_time_s"]


def test_the_cli_takes_weights_act_and_kv(capsys):
    rc = main(["predict", "--gpu", "h100", "--model", "llama3.1-70b", "--weights", "int4", "--act", "bf16", "--kv",
               "fp8", "--seq", "8k", "--no-legend"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "int4 weights (bf16 activations), fp8 KV cache" in out.splitlines()[0]
    rc = main(["predict", "--gpu", "h100", "--weights", "nvfp4"])
    err = capsys.readouterr().err
    assert rc == 2 and "no matrix throughput for fp4" in err and "--act bf16" in err
