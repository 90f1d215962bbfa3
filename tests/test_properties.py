"""Hypothesis invariants of `sparq_sim.predict_columns` / `predict` (issue 2, "Properties").

Random hardware (every bundled profile; the IPUs only with fp16/fp32 matrix units), built-in models, seq_len, batch,
compression, dtypes, placement and K layout. What is checked:

- bytes (total, attention, KV read), FLOPs and times (realistic, ideal, attention, prefill) never decrease when S or B
  grows, all else equal; also not when auto placement moves the KV cache to a slower tier (IPU SRAM -> streaming);
- at C >= 2 and S >= 64 no strategy moves more attention bytes than dense; FlexGen never below 1/2 of dense;
- dense has speedup_vs_dense == attention_speedup_vs_dense == 1.0 exactly;
- ideal_time_s <= time_s and attention_time_s <= time_s;
- attention = kv_read + kv_write + metadata; total = weight + activation + attention;
- attention bytes (and their split into read / write / metadata) equal docs/traffic-model.md's formulas, written out
  here independently of simulator/strategies.py, for the r, k, page_size each row reports;
- the parameters follow the compression recipes (SparQ r = d_h/C, k = S/(2C); others k = S/C; Quest whole pages);
- a vectorised sweep gives the same numbers as one call per point;
- tensor parallelism: weights are split (per-device weights = total / N <= single-device weights; totals exceed the
  single device's only by replicated norms, row-parallel biases, embedding rows and replicated KV heads), no
  super-linear speedup (time(N) >= time(1) / N) and no slowdown beyond the two all-reduces per layer.
Plus hand-computed pins: the metadata strategies' exact excess over dense at C = 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import sparq_sim
from sparq_sim.hardware_profiles import load_hardware, profile_names
from sparq_sim.simulator.ledger import kv_geometry
from sparq_sim.simulator.models import BUILTIN, load_model_spec
from sparq_sim.simulator.predict import decoded
from sparq_sim.simulator.strategies import STRATEGY_NAMES

PROFILES = profile_names()
MODELS = list(BUILTIN)
CLASSIC = [n for n, m in BUILTIN.items() if not m.is_mla and m.global_every is None]
STRATS = list(STRATEGY_NAMES)
# bytes per element, scales included: int4 keeps an fp16 scale and an int4 zero per group of 128 (GPTQ/AWQ)
BYTES_PER = {"fp32": 4.0, "tf32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2.5 / 128}
# the matrix unit each weight format computes on (int8 and int4 weight-only: dequantised to fp16)
COMPUTE = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "fp16", "fp8": "fp8", "int8": "fp16",
           "int4": "fp16"}
PAGE = 16          # Quest's default page size
QUEST_DENSE = 2    # Quest runs its first two layers dense

MONOTONE = ["total_bytes", "attention_bytes", "kv_read_bytes", "kv_write_bytes", "weight_bytes", "activation_bytes",
            "flops", "time_s", "ideal_time_s", "attention_time_s", "attention_ideal_time_s", "prefill_time_s",
            "prefill_ideal_time_s", "memory_required_bytes"]

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _dtypes(hw_name: str) -> list[str]:
    hw = load_hardware(hw_name)
    return [d for d in BYTES_PER if COMPUTE[d] in hw.matrix.peak_flops]


def _multi_tier(hw_name: str) -> bool:
    return len(load_hardware(hw_name).memory) > 1


@st.composite
def configs(draw, min_seq=1, max_seq=1 << 17, devices=False, placement=True, classic=False):
    """classic: only models whose layers all attend alike with K and V per KV head (the formulas written out below;
    MLA and local/global layers have tests of their own in test_model_shapes.py)."""
    hw = draw(st.sampled_from(PROFILES))
    model = draw(st.sampled_from(CLASSIC if classic else MODELS))
    dts = _dtypes(hw)
    preferred = [d for d in ("bf16", "fp16") if d in dts]
    dtype = draw(st.one_of(st.sampled_from(preferred), st.sampled_from(dts)))
    kv_dtype = draw(st.one_of(st.none(), st.sampled_from(list(BYTES_PER))))
    comp = draw(st.one_of(st.sampled_from([1, 2, 4, 8, 16, 32, 64]),
                          st.floats(min_value=1, max_value=200, allow_nan=False, allow_infinity=False)))
    cfg = dict(hardware=hw, model=model, dtype=dtype, kv_dtype=kv_dtype, compression=comp,
               k_layout=draw(st.sampled_from(["twice", "once"])))
    if placement:
        cfg["kv_location"] = draw(st.sampled_from(["auto", "auto", "auto", "host"]))
    if devices:
        n_heads = BUILTIN[model].n_heads
        cfg["devices"] = draw(st.sampled_from([d for d in (1, 2, 3, 4, 8, 9, 16) if n_heads % d == 0]))
    return cfg


def _run(cfg, seq_len, batch, strategies=None):
    cols = decoded(sparq_sim.predict_columns(seq_len=list(seq_len), batch=list(batch), strategies=strategies, **cfg))
    return cols


def _rows(cols, **match):
    """Indices of the rows whose columns equal `match`, in row order."""
    mask = np.ones(len(cols["time_s"]), dtype=bool)
    for c, v in match.items():
        mask &= cols[c] == v
    return np.flatnonzero(mask)


def _pick(cols, strategy, **match):
    idx = _rows(cols, strategy=strategy, **match)
    assert len(idx) == 1, (strategy, match, idx)
    return int(idx[0])


def _assert_monotone(cols, i_small, i_large, what):
    for c in MONOTONE:
        a, b = float(cols[c][i_small]), float(cols[c][i_large])
        assert b >= a * (1 - 1e-12), (f"{c} decreased when {what} grew: {a!r} -> {b!r} "
                                      f"(strategy {cols['strategy'][i_small]}, kv {cols['kv_location'][i_small]} -> "
                                      f"{cols['kv_location'][i_large]})")
    # what fits at the larger point fits at the smaller one
    assert not (cols["fits"][i_large] and not cols["fits"][i_small]), f"fits became True when {what} grew"


# --------------------------------------------------------------------------------------------------------------------
# monotonicity


@SETTINGS
@given(cfg=configs(), s=st.integers(1, 1 << 17), ds=st.integers(1, 1 << 16), b=st.integers(1, 256))
def test_nothing_decreases_when_seq_grows(cfg, s, ds, b):
    s2 = s + ds
    cols = _run(cfg, [s, s2], [b])
    for strat in STRATS:
        _assert_monotone(cols, _pick(cols, strat, seq_len=s), _pick(cols, strat, seq_len=s2), "seq_len")


@SETTINGS
@given(cfg=configs(), s=st.integers(1, 1 << 16), b=st.integers(1, 512), db=st.integers(1, 512))
def test_nothing_decreases_when_batch_grows(cfg, s, b, db):
    b2 = b + db
    cols = _run(cfg, [s], [b, b2])
    for strat in STRATS:
        _assert_monotone(cols, _pick(cols, strat, batch=b), _pick(cols, strat, batch=b2), "batch")


@settings(max_examples=120, deadline=None)
@given(hw=st.sampled_from([p for p in PROFILES if _multi_tier(p)]), model=st.sampled_from(MODELS),
       s=st.integers(1, 1 << 14), ds=st.integers(1, 1 << 14), b=st.integers(1, 64), db=st.integers(0, 64),
       comp=st.sampled_from([1, 2, 8, 32]), k_layout=st.sampled_from(["twice", "once"]))
def test_multi_tier_auto_placement_spill_never_speeds_up(hw, model, s, ds, b, db, comp, k_layout):
    """On a device with SRAM and streaming memory the KV cache moves to the slow tier when it outgrows SRAM: the
    larger point is then much slower, never faster. Drawn around the SRAM boundary (S up to 32k, small batches)."""
    cols = _run(dict(hardware=hw, model=model, dtype="fp16", compression=comp, k_layout=k_layout),
                [s, s + ds], [b, b + db] if db else [b])
    for strat in STRATS:
        i = _pick(cols, strat, seq_len=s, batch=b)
        j = _pick(cols, strat, seq_len=s + ds, batch=b + db)
        _assert_monotone(cols, i, j, "seq_len and batch")


def test_multi_tier_spill_is_exercised():
    """The spill the test above guards does happen in the grid it draws from (else that test proves little)."""
    cols = _run(dict(hardware="ipu", model="llama2-7b", dtype="fp16"), [256, 16384], [1], ["dense"])
    assert list(cols["kv_location"]) == ["sram", "streaming"]
    assert cols["time_s"][1] > cols["time_s"][0]


# --------------------------------------------------------------------------------------------------------------------
# per-row invariants


@SETTINGS
@given(cfg=configs(devices=True), s=st.integers(1, 1 << 17), b=st.integers(1, 256))
def test_row_identities(cfg, s, b):
    cols = _run(cfg, [s], [b])
    n = len(cols["time_s"])
    assert n == len(STRATS)
    for i in range(n):
        attn = cols["kv_read_bytes"][i] + cols["kv_write_bytes"][i] + cols["metadata_bytes"][i]
        assert cols["attention_bytes"][i] == pytest.approx(attn, rel=1e-12)
        total = cols["weight_bytes"][i] + cols["activation_bytes"][i] + cols["attention_bytes"][i]
        assert cols["total_bytes"][i] == pytest.approx(total, rel=1e-12)
        t, ideal, at = cols["time_s"][i], cols["ideal_time_s"][i], cols["attention_time_s"][i]
        assert np.isfinite(t) and t > 0
        assert 0 < ideal <= t * (1 + 1e-12), (cols["strategy"][i], ideal, t)
        assert 0 < at <= t * (1 + 1e-12), (cols["strategy"][i], at, t)
        assert 0 < cols["attention_ideal_time_s"][i] <= at * (1 + 1e-12)
        assert 0 <= cols["overhead_time_s"][i] <= t
        assert cols["tokens_per_s"][i] == pytest.approx(b / t, rel=1e-12)
        assert cols["prefill_ideal_time_s"][i] <= cols["prefill_time_s"][i] * (1 + 1e-12)
    d = _pick(cols, "dense")
    assert cols["speedup_vs_dense"][d] == 1.0
    assert cols["attention_speedup_vs_dense"][d] == 1.0
    assert cols["ideal_speedup_vs_dense"][d] == 1.0
    assert cols["attention_fraction"][d] == 1.0
    for i in range(n):
        assert cols["speedup_vs_dense"][i] == pytest.approx(cols["time_s"][d] / cols["time_s"][i], rel=1e-12)
        assert cols["attention_speedup_vs_dense"][i] == pytest.approx(
            cols["attention_time_s"][d] / cols["attention_time_s"][i], rel=1e-12)
    # the strategy only changes attention: weights are read the same (Loki also reads its PCA rotations, DSA its
    # indexer's projections)
    strat = np.asarray(cols["strategy"]).astype(str)
    assert len(set(cols["weight_bytes"][~np.isin(strat, ["loki", "dsa"])].tolist())) == 1
    assert cols["weight_bytes"][strat == "loki"][0] > cols["weight_bytes"][d]
    assert cols["weight_bytes"][strat == "dsa"][0] > cols["weight_bytes"][d]


@SETTINGS
@given(cfg=configs(devices=True), s=st.integers(64, 1 << 18), b=st.integers(1, 256),
       comp=st.one_of(st.sampled_from([2, 3, 4, 8, 16, 100]), st.floats(2, 1000, allow_nan=False)))
def test_no_strategy_moves_more_than_dense_at_compression_2_or_more(cfg, s, b, comp):
    cfg = dict(cfg, compression=comp)
    cols = _run(cfg, [s], [b])
    d = _pick(cols, "dense")
    dense = cols["attention_bytes"][d]
    shared_row = load_model_spec(cfg["model"]).is_mla
    for strat in STRATS:
        if strat == "flexgen" and shared_row:
            continue   # on MLA's shared row dense reads V with K; FlexGen's sparse-V second pass reads k rows again
        i = _pick(cols, strat)
        # DSA's indexer keys come on top of its 1/C of K and V, and every device reads them whole: where a device
        # caches one KV head (llama2-70b on 8), they are half its K and V, and DSA at 1/2 moves more than dense
        extra = dsa_index_bytes(load_model_spec(cfg["model"]), cols, i) if strat == "dsa" else 0.0
        assert cols["attention_bytes"][i] - extra <= dense, (strat, comp, s, cols["r"][i], cols["k"][i],
                                                             cols["attention_bytes"][i] / dense)
        assert cols["kv_read_bytes"][i] <= cols["kv_read_bytes"][d]
        assert cols["attention_fraction"][i] == pytest.approx(cols["attention_bytes"][i] / dense, rel=1e-12)


@SETTINGS
@given(cfg=configs(devices=True), s=st.integers(1, 1 << 18), b=st.integers(1, 256),
       k=st.one_of(st.none(), st.integers(1, 1 << 18)))
def test_flexgen_never_below_half_of_dense(cfg, s, b, k):
    if k is not None:
        sw = BUILTIN[cfg["model"]].sliding_window
        k = min(k, s, sw or s)  # k <= the attended length (mistral: its sliding window)
    cols = _run(dict(cfg, k=k), [s], [b], ["dense", "flexgen"])
    dense = cols["attention_bytes"][_pick(cols, "dense")]
    flex = cols["attention_bytes"][_pick(cols, "flexgen")]
    assert flex >= dense / 2
    geo = kv_geometry(BUILTIN[cfg["model"]])
    # k <= S; on MLA's shared row FlexGen's second pass reads k <= S rows again (d_v of each)
    assert flex <= dense * ((1 + geo.d_v / geo.d_k) if geo.shared else 1) * (1 + 1e-12)


@SETTINGS
@given(cfg=configs(devices=True), s=st.integers(1, 1 << 18), b=st.integers(1, 64))
def test_dense_speedup_is_exactly_one(cfg, s, b):
    cols = _run(cfg, [s], [b], ["dense"])
    assert cols["speedup_vs_dense"].tolist() == [1.0]
    assert cols["attention_speedup_vs_dense"].tolist() == [1.0]
    assert cols["ideal_speedup_vs_dense"].tolist() == [1.0]


# --------------------------------------------------------------------------------------------------------------------
# attention bytes against docs/traffic-model.md's formulas, written out independently


def reference_elements(strategy, S, dh, r, k, P):
    """(kv_read, kv_write, metadata) elements per KV head per sequence for one decode step of one layer."""
    write = 2 * dh  # the new token's k and v
    if strategy == "dense":
        return 2 * S * dh, write, 0
    if strategy == "sparq":          # S r + 2 k d_h + 4 d_h: r columns of K over S; k rows of K and V; v_bar r+w
        return S * r + 2 * k * dh, write, 2 * dh
    if strategy == "h2o":            # 2 k d_h + 2 d_h + 2 S: score statistics read and written
        return 2 * k * dh, write, 2 * S
    if strategy == "lm-infinite":    # 2 k d_h + 2 d_h
        return 2 * k * dh, write, 0
    if strategy == "flexgen":        # S d_h + k d_h + 2 d_h: all of K, k rows of V
        return S * dh + k * dh, write, 0
    if strategy == "quest":          # 2 (S/P) d_h + 2 k d_h + 2 d_h: per-page min and max keys, whole pages
        return 2 * k * dh, write, 2 * math.ceil(S / P) * dh
    if strategy == "loki":           # S r + 2 k d_h + 2 d_h: r leading components of every rotated key, k rows
        return S * r + 2 * k * dh, write, 0
    if strategy == "double-sparsity":   # S r + r + 2 k d_h + 2 d_h: the label cache read, the new label written
        return 2 * k * dh, write, S * r + r
    if strategy == "snapkv":         # 2 k d_h + 2 d_h: the kept cache
        return 2 * k * dh, write, 0
    if strategy == "dsa":            # 2 k d_h + 2 d_h per KV head; the indexer's keys per layer (dsa_index_bytes)
        return 2 * k * dh, write, 0
    raise AssertionError(strategy)


def dsa_index_elements(m, S):
    """DSA's indexer keys per sequence and device, all layers: every attended position's and the new one's, d_I =
    min(128, the key width) each (DeepSeek-V3.2's 128, or less); a sliding-window layer attends its window."""
    d_key = m.kv_lora_rank + m.qk_rope_head_dim if m.is_mla else m.head_dim
    return sum((min(S, w or S) + 1) * min(128, d_key) for w in m.layer_windows())


def dsa_index_bytes(m, cols, i):
    """A predict row's indexer bytes: every layer, sequence and device (each holds the indexer cache whole)."""
    S, B, N = int(cols["seq_len"][i]), int(cols["batch"][i]), int(cols["devices"][i])
    # the indexer keys are at the KV precision: the new token's K and V written on every device give its bytes
    heads = N * (1 if m.is_mla else math.ceil(m.n_kv_heads / N))
    kvb = cols["kv_write_bytes"][i] / (heads * m.n_layers * B * kv_geometry(m).row)
    return dsa_index_elements(m, S) * B * N * kvb


def reference_bytes(strategy, model, S, B, kv_bytes, devices, r, k, P):
    """(kv_read, kv_write, metadata) bytes of one decode step, all layers and devices."""
    m = BUILTIN[model]
    heads = devices * math.ceil(m.n_kv_heads / devices)  # KV heads are replicated when fewer than devices
    L = m.n_layers
    per = lambda e: e * heads * B * kv_bytes  # noqa: E731
    if strategy == "quest":
        nd = min(QUEST_DENSE, L)
        dense = reference_elements("dense", S, m.head_dim, 0, 0, P)
        quest = reference_elements("quest", S, m.head_dim, r, k, P)
        return tuple(per(nd * a + (L - nd) * b) for a, b in zip(dense, quest))
    out = tuple(per(L * e) for e in reference_elements(strategy, S, m.head_dim, r, k, P))
    if strategy == "dsa":   # the indexer keys: per layer, on every device, at the KV precision
        out = out[:2] + (out[2] + dsa_index_elements(m, S) * B * devices * kv_bytes,)
    return out


@SETTINGS
@given(cfg=configs(devices=True, classic=True), s=st.integers(1, 1 << 18), b=st.integers(1, 256))
def test_attention_bytes_match_reference_formulas(cfg, s, b):
    cols = _run(cfg, [s], [b])
    kvb = BYTES_PER[cfg["kv_dtype"] or cfg["dtype"]]
    m = BUILTIN[cfg["model"]]
    for i in range(len(cols["time_s"])):
        strat = cols["strategy"][i]
        S = int(cols["attended_len"][i])
        assert S == (min(s, m.sliding_window) if m.sliding_window else s)
        r, k, P = int(cols["r"][i]), int(cols["k"][i]), int(cols["page_size"][i])
        rd, wr, meta = reference_bytes(strat, cfg["model"], S, b, kvb, cfg["devices"], r, k, P)
        assert cols["kv_read_bytes"][i] == pytest.approx(rd, rel=1e-12), strat
        assert cols["kv_write_bytes"][i] == pytest.approx(wr, rel=1e-12), strat
        assert cols["metadata_bytes"][i] == pytest.approx(meta, rel=1e-12), strat
        assert cols["attention_bytes"][i] == pytest.approx(rd + wr + meta, rel=1e-12), strat


@SETTINGS
@given(cfg=configs(classic=True), s=st.integers(1, 1 << 18))
def test_parameters_follow_the_compression_recipes(cfg, s):
    cols = _run(cfg, [s], [1])
    C = float(cfg["compression"])
    m = BUILTIN[cfg["model"]]
    S = min(s, m.sliding_window) if m.sliding_window else s
    for i in range(len(cols["time_s"])):
        strat, r, k, P = cols["strategy"][i], int(cols["r"][i]), int(cols["k"][i]), int(cols["page_size"][i])
        if strat == "dense":
            assert (r, k) == (0, 0)
            continue
        assert 1 <= k <= S, (strat, k, S)
        if strat in ("sparq", "loki", "double-sparsity"):
            assert 1 <= r <= m.head_dim
            assert abs(r - m.head_dim / C) <= 0.5 or (r == 1 and m.head_dim / C < 1)
            assert abs(k - S / (2 * C)) <= 0.5 or (k == 1 and S / (2 * C) < 1)
        elif strat == "quest":
            assert P == PAGE
            assert k == S or k % P == 0, (k, S)
            assert abs(k - S / C) <= P / 2 or k == min(S, P) or k == S
        else:
            assert r == 0
            assert abs(k - S / C) <= 0.5 or (k == 1 and S / C < 1)


@settings(max_examples=60, deadline=None)
@given(cfg=configs(devices=True), seqs=st.lists(st.integers(1, 1 << 17), min_size=1, max_size=4, unique=True),
       batches=st.lists(st.integers(1, 128), min_size=1, max_size=3, unique=True))
def test_sweep_equals_pointwise_calls(cfg, seqs, batches):
    """A vectorised sweep is only an optimisation: each of its rows equals a call with that single point."""
    cols = _run(cfg, seqs, batches)
    numeric = [c for c, v in cols.items() if isinstance(v, np.ndarray) and v.dtype.kind in "iufb"]
    tokens = {}
    for s in seqs:
        for b in batches:
            tokens.setdefault(s * b, set()).add(b)
    for s in seqs:
        for b in batches:
            one = _run(cfg, [s], [b])
            idx = _rows(cols, seq_len=s, batch=b)
            assert len(idx) == len(STRATS)
            skip = set()
            for j, i in enumerate(idx):
                for c in numeric:
                    if c in skip:
                        continue
                    assert cols[c][i] == pytest.approx(one[c][j], rel=1e-12, abs=0), (c, s, b)
                for c in ("strategy", "bound", "kv_location", "weights_location"):
                    assert cols[c][i] == one[c][j], (c, s, b)


def test_prefill_of_colliding_token_counts_equals_pointwise():
    cfg = dict(hardware="a100", model="llama3-8b", strategies=["dense"])
    sweep = decoded(sparq_sim.predict_columns(seq_len=[16, 4096], batch=[1, 256], **cfg))
    i = _pick(sweep, "dense", batch=256, seq_len=16)  # T = 4096, like (B=1, S=4096) which comes first
    one = decoded(sparq_sim.predict_columns(seq_len=16, batch=256, **cfg))
    assert sweep["prefill_time_s"][i] == pytest.approx(one["prefill_time_s"][0], rel=1e-12)
    assert sweep["prefill_ideal_time_s"][i] == pytest.approx(one["prefill_ideal_time_s"][0], rel=1e-12)


@SETTINGS
@given(cfg=configs(devices=True), s=st.integers(1, 1 << 17), b=st.integers(1, 64),
       comps=st.lists(st.floats(1, 300, allow_nan=False), min_size=2, max_size=2, unique=True))
def test_more_compression_never_moves_more(cfg, s, b, comps):
    lo, hi = sorted(comps)
    cfg = dict(cfg, compression=[lo, hi])
    cols = decoded(sparq_sim.predict_columns(seq_len=s, batch=b, **cfg))
    for strat in STRATS:
        i, j = _pick(cols, strat, compression=lo), _pick(cols, strat, compression=hi)
        for c in ("attention_bytes", "kv_read_bytes", "metadata_bytes", "k", "r"):
            assert cols[c][j] <= cols[c][i], (strat, c, lo, hi, cols[c][i], cols[c][j])


@st.composite
def wide_configs(draw):
    """Any placement (auto, each tier, host) for weights and KV, tensor parallelism, and r / k / page overrides."""
    hw = draw(st.sampled_from(PROFILES))
    model = draw(st.sampled_from(MODELS))
    m = BUILTIN[model]
    locs = ["auto", "host"] + [t.name for t in load_hardware(hw).memory]
    cfg = dict(hardware=hw, model=model, dtype=draw(st.sampled_from(_dtypes(hw))),
               kv_dtype=draw(st.one_of(st.none(), st.sampled_from(list(BYTES_PER)))),
               compression=draw(st.floats(1, 300)), k_layout=draw(st.sampled_from(["twice", "once"])),
               kv_location=draw(st.sampled_from(locs)), weights_location=draw(st.sampled_from(locs)),
               devices=draw(st.sampled_from([d for d in (1, 2, 4, 8) if m.n_heads % d == 0])))
    if draw(st.booleans()):
        cfg["r"] = draw(st.integers(1, m.head_dim))
    if draw(st.booleans()):   # FlexGen-style split placement: shares of the weights and the cache on the device
        cfg["weights_on_device"] = draw(st.sampled_from([0.0, 0.3, 1.0]))
        cfg["kv_on_device"] = draw(st.sampled_from([0.0, 0.5, 1.0]))
        if load_hardware(hw).disk is not None:   # and on the disk behind host memory (the rest in host memory)
            cfg["weights_on_disk"] = draw(st.sampled_from([0.0, (1 - cfg["weights_on_device"]) / 2,
                                                           1 - cfg["weights_on_device"]]))
            cfg["kv_on_disk"] = draw(st.sampled_from([0.0, 1 - cfg["kv_on_device"]]))
    if draw(st.booleans()):
        P = draw(st.sampled_from([8, 16, 32]))
        cfg["page_size"] = P
        cfg["k"] = P * draw(st.integers(1, 64))
    return cfg


@SETTINGS
@given(cfg=wide_configs(), s=st.integers(1, 1 << 17), ds=st.integers(0, 1 << 16), b=st.integers(1, 300),
       db=st.integers(0, 300))
def test_invariants_with_overrides_and_any_placement(cfg, s, ds, b, db):
    sw = BUILTIN[cfg["model"]].sliding_window
    if cfg.get("k") is not None:
        assume(min(s, sw or s) >= cfg["k"])
    assume(ds or db)
    cols = _run(cfg, [s, s + ds] if ds else [s], [b, b + db] if db else [b])
    for strat in STRATS:
        _assert_monotone(cols, _pick(cols, strat, seq_len=s, batch=b),
                         _pick(cols, strat, seq_len=s + ds, batch=b + db), "seq_len / batch")
    for i in range(len(cols["time_s"])):
        assert cols["ideal_time_s"][i] <= cols["time_s"][i] * (1 + 1e-12)
        assert cols["attention_time_s"][i] <= cols["time_s"][i] * (1 + 1e-12)
        # max_batch is the largest batch that fits
        assert bool(cols["fits"][i]) == bool(cols["max_batch"][i] >= cols["batch"][i]), (
            cols["strategy"][i], cols["fits"][i], cols["max_batch"][i], cols["batch"][i])
        if cols["r"][i]:
            assert cols["r"][i] == cfg.get("r", cols["r"][i])
    d = _pick(cols, "dense", seq_len=s, batch=b)
    assert cols["speedup_vs_dense"][d] == cols["attention_speedup_vs_dense"][d] == 1.0


@settings(max_examples=25, deadline=None)
@given(cfg=configs(devices=True), s=st.integers(1, 1 << 16), b=st.integers(1, 64))
def test_ledger_sums_to_the_prediction(cfg, s, b):
    """The per-operator ledger and the prediction are the same numbers: decode rows sum to the row's bytes, FLOPs
    and times; prefill rows to its prefill time."""
    cols = _run(cfg, [s], [b])
    led = sparq_sim.ledger(seq_len=s, batch=b, strategies="all", **cfg)
    for i, strat in enumerate(cols["strategy"]):
        dec = led[(led.strategy == strat) & (led.phase == "decode")]
        pre = led[(led.strategy == strat) & (led.phase == "prefill")]
        got = {"weight_bytes": dec.weight_bytes.sum(), "kv_read_bytes": dec.kv_read_bytes.sum(),
               "kv_write_bytes": dec.kv_write_bytes.sum(),
               "metadata_bytes": dec.meta_read_bytes.sum() + dec.meta_write_bytes.sum(),
               "activation_bytes": dec.act_read_bytes.sum() + dec.act_write_bytes.sum(),
               "total_bytes": dec["bytes"].sum(), "flops": dec.flops.sum(), "time_s": dec.time_s.sum(),
               "ideal_time_s": dec.ideal_time_s.sum(), "prefill_time_s": pre.time_s.sum()}
        for c, v in got.items():
            assert v == pytest.approx(cols[c][i], rel=1e-9), (strat, c)


# --------------------------------------------------------------------------------------------------------------------
# tensor parallelism


def _allreduce_upper_bound(hw_name, model, B, act_bytes, N):
    """An upper bound on the realistic time of one all-reduce operator of B x d_model activations over N devices:
    the sum of its memory, compute and link terms plus a launch (the realistic time is their max plus the launch)."""
    hw = load_hardware(hw_name)
    m = BUILTIN[model]
    msg = B * m.d_model * act_bytes
    mem = 2 * msg / min(t.achieved_Bps for t in hw.memory)
    comp = B * m.d_model / (min(hw.vector.peak_flops.values()) * hw.vector.efficiency)
    link = hw.device_link.base_latency_s + 2 * (N - 1) / N * msg / hw.device_link.achieved_Bps \
        + 2 * (N - 1) * hw.device_link.latency_s    # the ring: a bound on NCCL's choice of ring or tree
    return mem + comp + link + hw.kernel_launch_s


@pytest.mark.slow
def loki_rotations(m, N, a):
    """Bytes of Loki's d x d rotations over N devices: one per KV head a device caches (MLA: its one latent row), per
    layer, in the activations' format; d the key width the query is scored at."""
    geo = kv_geometry(m)
    d = m.head_dim if geo.columns_whole else geo.d_k
    per_device = 1 if m.is_mla else math.ceil(m.n_kv_heads / N)
    return m.n_layers * N * per_device * d * d * a


def dsa_indexer_weights(m, N, w):
    """Bytes of DSA's indexer projections over N devices (replicated), all layers, at the weights' format:
    H_I = min(64, H / 2) heads of d_I = min(128, key width); DeepSeek (MLA) projects q from the query latent and the
    key and head weights from the hidden state; otherwise all three come from the post-rotary queries and keys, and
    the head weights have a bias."""
    hi = min(64, max(1, m.n_heads // 2))
    di = min(128, m.kv_lora_rank + m.qk_rope_head_dim if m.is_mla else m.head_dim)
    if m.is_mla:
        per_layer = m.q_lora_rank * hi * di + m.d_model * di + m.d_model * hi
    else:
        per_layer = m.n_heads * m.head_dim * (hi * di + hi) + m.n_kv_heads * m.head_dim * di + hi   # + w's bias
    return N * m.n_layers * per_layer * w


@SETTINGS
@given(cfg=configs(placement=False), s=st.integers(1, 1 << 16), b=st.integers(1, 128), data=st.data())
def test_tensor_parallel_splits_weights_and_bounds_speedup(cfg, s, b, data):
    model = cfg["model"]
    m = BUILTIN[model]
    N = data.draw(st.sampled_from([d for d in (2, 3, 4, 8, 16) if m.n_heads % d == 0] or [1]))
    assume(N > 1)
    cols = decoded(sparq_sim.predict_columns(seq_len=s, batch=b, devices=[1, N], **cfg))
    w = BYTES_PER[cfg["dtype"]]
    a = 2.0 if cfg["dtype"] in ("int4", "int8") else w  # weight-only: fp16 activations
    single_tier = not _multi_tier(cfg["hardware"])
    for strat in STRATS:
        i1, iN = _pick(cols, strat, devices=1), _pick(cols, strat, devices=N)
        w1, wN = cols["weight_bytes"][i1], cols["weight_bytes"][iN]
        if strat == "loki":   # its PCA rotations go with the KV heads each device caches (replicas included)
            w1, wN = w1 - loki_rotations(m, 1, a), wN - loki_rotations(m, N, a)
        if strat == "dsa":    # its indexer's projections: replicated, every device reads them whole
            w1, wN = w1 - dsa_indexer_weights(m, 1, w), wN - dsa_indexer_weights(m, N, w)
        # all devices together read at least the single device's weights; each device reads 1/N of the total,
        # which is no more than the single device reads
        assert wN >= w1 * (1 - 1e-12)
        assert wN / N <= w1 * (1 + 1e-12)
        # the excess is what is replicated, not split: norms (2 or 4 per layer + final; q/k norms), row-parallel
        # output biases, the embedding rows of the batch, K/V projection columns of KV heads replicated when
        # n_kv < N, an MoE's routers, MLA's latent projections
        norms = (m.norms_per_layer * m.n_layers + 1) * m.norm_params + (2 * m.head_dim * m.n_layers if m.qk_norm
                                                                          else 0)
        norms += m.moe_layers * m.router_params
        if m.is_mla:
            norms += m.n_layers * ((m.d_model + 1) * m.q_lora_rank + m.d_model * (m.kv_lora_rank + m.qk_rope_head_dim)
                                   + m.kv_lora_rank)
        biases = 2 * m.n_layers * m.d_model if m.linear_bias else 0
        kv_rep = 0 if m.is_mla else N * math.ceil(m.n_kv_heads / N) - m.n_kv_heads
        kv_rep_w = m.n_layers * kv_rep * 2 * m.head_dim * (m.d_model + (1 if m.linear_bias or m.qkv_bias else 0))
        excess = wN - w1
        assert excess >= (N - 1) * norms * w * (1 - 1e-9) - 1e-6, (excess, (N - 1) * norms * w)
        assert excess <= ((N - 1) * (norms + biases + b * m.d_model) + kv_rep_w) * w * (1 + 1e-9) + 1e-6
        # attention traffic: split over KV heads, replicated ones counted on every device (MLA: its one row; DSA's
        # indexer keys, on every device)
        if strat == "dsa" and not m.is_mla:
            assert (cols["attention_bytes"][iN] - dsa_index_bytes(m, cols, iN) == pytest.approx(
                cols["attention_bytes"][i1] - dsa_index_bytes(m, cols, i1), rel=1e-9) if m.n_kv_heads % N == 0
                else cols["attention_bytes"][iN] >= cols["attention_bytes"][i1])
        elif m.is_mla:
            assert cols["attention_bytes"][iN] == pytest.approx(N * cols["attention_bytes"][i1], rel=1e-12)
        elif m.n_kv_heads % N == 0:
            assert cols["attention_bytes"][iN] == pytest.approx(cols["attention_bytes"][i1], rel=1e-12)
        else:
            assert cols["attention_bytes"][iN] >= cols["attention_bytes"][i1]
        assert cols["flops"][iN] >= cols["flops"][i1] * (1 - 1e-12)
        # per-device memory shrinks
        assert cols["memory_required_bytes"][iN] <= cols["memory_required_bytes"][i1] * (1 + 1e-12)
        if single_tier:  # (on a multi-tier device a split can move weights or KV into SRAM: super-linear is real)
            t1, tN = cols["time_s"][i1], cols["time_s"][iN]
            assert tN >= t1 / N * (1 - 1e-12), f"{strat}: super-linear speedup {t1 / tN:.3f} on {N} devices"
            assert cols["ideal_time_s"][iN] >= cols["ideal_time_s"][i1] / N * (1 - 1e-12)
            bound = 2 * m.n_layers * _allreduce_upper_bound(cfg["hardware"], model, b, a, N)
            assert tN <= t1 + bound, f"{strat}: {N} devices slower than 1 beyond the all-reduces"


# --------------------------------------------------------------------------------------------------------------------
# hand-computed pins


def _one(strategies, **kw):
    cols = decoded(sparq_sim.predict_columns(strategies=strategies, **kw))
    return {s: i for i, s in enumerate(cols["strategy"])}, cols


def test_excess_over_dense_at_compression_one_llama2_7b_s4096():
    """At C = 1 SparQ (r = d_h, k = S/2), H2O and Quest (k = S) keep everything dense reads plus their metadata.

    llama2-7b: 32 layers x 32 KV heads, d_h = 128, bf16 (2 B), B = 1, S = 4096.
      dense       = (2 S d_h + 2 d_h) x 32 x 32 x 2 B = 2,148,007,936 B
      SparQ       = dense + 2 d_h (v_bar read + write)          : + 2*128*32*32*2        =     524,288 B
      H2O         = dense + 2 S   (score statistics read + write): + 2*4096*32*32*2       =  16,777,216 B
      Quest       = dense + 2 (S/16) d_h on the 30 non-dense layers: + 2*256*128*32*30*2  = 125,829,120 B
      FlexGen and LM-Infinite at k = S equal dense.
    """
    ix, cols = _one(None, hardware="a100", model="llama2-7b", seq_len=4096, batch=1, compression=1)
    ab = cols["attention_bytes"]
    dense = ab[ix["dense"]]
    assert dense == 2_148_007_936
    assert (cols["r"][ix["sparq"]], cols["k"][ix["sparq"]]) == (128, 2048)
    assert ab[ix["sparq"]] - dense == 524_288
    assert cols["k"][ix["h2o"]] == 4096
    assert ab[ix["h2o"]] - dense == 16_777_216
    assert cols["k"][ix["quest"]] == 4096
    assert ab[ix["quest"]] - dense == 125_829_120
    assert ab[ix["flexgen"]] == dense
    assert ab[ix["lm-infinite"]] == dense


def test_excess_over_dense_at_compression_one_gqa_partial_page():
    """llama3-8b (8 KV heads, 32 layers, d_h 128), fp16, B = 3, S = 1000 (not a whole number of pages).

      dense = (2*1000*128 + 2*128) x 8 x 32 x 3 x 2 = 393,609,216 B
      SparQ: k = round(1000/2) = 500, r = 128  -> + 2*128 x 8*32*3*2              =     393,216 B
      H2O:   k = 1000                          -> + 2*1000 x 8*32*3*2             =   3,072,000 B
      Quest: k = min(16*round(1000/16), 1000) = 1000; ceil(1000/16) = 63 pages
                                               -> + 2*63*128 x 8*30*3*2           =  23,224,320 B
    """
    ix, cols = _one(None, hardware="h100", model="llama3-8b", seq_len=1000, batch=3, compression=1, dtype="fp16")
    ab = cols["attention_bytes"]
    dense = ab[ix["dense"]]
    assert dense == 393_609_216
    assert ab[ix["sparq"]] - dense == 393_216
    assert ab[ix["h2o"]] - dense == 3_072_000
    assert cols["k"][ix["quest"]] == 1000
    assert ab[ix["quest"]] - dense == 23_224_320
    assert ab[ix["flexgen"]] == dense
    assert ab[ix["lm-infinite"]] == dense


def test_issue_pins_sparq_fraction_and_dense_kv():
    """Issue 2's checked figures: llama2-7b bf16 B=1 S=4096 reads exactly 2 GiB of KV; SparQ at r=16, k=256
    moves (S r + 2 k d_h + 4 d_h) / (2 S d_h + 2 d_h) = 0.12546 of dense attention traffic."""
    ix, cols = _one(["dense", "sparq"], hardware="a100", model="llama2-7b", seq_len=4096, batch=1, r=16, k=256)
    assert cols["kv_read_bytes"][ix["dense"]] == 2 * 2**30
    frac = cols["attention_fraction"][ix["sparq"]]
    assert frac == pytest.approx((4096 * 16 + 2 * 256 * 128 + 4 * 128) / (2 * 4096 * 128 + 2 * 128), rel=1e-15)
    assert round(frac, 5) == 0.12546


def test_predict_dataframe_matches_columns():
    df = sparq_sim.predict(hardware=["a100", "ipu"], model="llama3-8b", seq_len=[1024, 4096], batch=[1, 4],
                           dtype="fp16")
    cols = decoded(sparq_sim.predict_columns(hardware="a100,ipu", model="llama3-8b", seq_len="1024,4096",
                                             batch="1,4", dtype="fp16"))
    assert len(df) == 2 * 2 * 2 * len(STRATS)
    for c, v in cols.items():
        assert df[c].tolist() == v.tolist(), c
