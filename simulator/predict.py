"""`predict`: bytes, FLOPs, time and speedup of a decode step for every (hardware, model, batch, seq_len, strategy).

One call evaluates a whole sweep: the categorical axes (hardware, model, dtypes, devices, placement, r/k overrides)
loop in Python, the numeric ones (batch x seq_len x compression) are numpy arrays. Results are columns of numpy arrays
(`predict_columns`, what the CLI renders without importing pandas) or a pandas DataFrame (`predict`). A sweep too large
to hold at once is evaluated chunk by chunk: `sweep(...)` checks the arguments, `.chunks()` yields the same rows in the
same order ~128k at a time (what `sparq-sim predict` streams to Parquet, CSV and JSON).

Columns (one row per hardware, model, devices, dtype, kv_dtype, batch, seq_len, compression, strategy):
    hardware, model, devices, pipeline, microbatches, dtype, kv_dtype, act_dtype, k_layout, batch, seq_len,
    attended_len, compression, strategy           (dtype: the weights' format, scale group included: int4-g32;
                                                  devices: tensor-parallel per pipeline stage; pipeline_step)
    r, k, local_window, page_size                 strategy parameters (0 = not used)
    weight_bytes, activation_bytes, kv_read_bytes, kv_write_bytes, metadata_bytes
                                                  bytes moved in one decode step, all devices together
    attention_bytes                               kv_read + kv_write + metadata (docs/traffic-model.md)
    attention_fraction                            attention_bytes / dense attention_bytes at the same point
    total_bytes, flops, arithmetic_intensity      FLOP per byte
    time_s, ideal_time_s                          realistic (achieved bandwidths and peaks, launch overhead) and
                                                  ideal roofline (datasheet peaks, no overhead) decode-step time
    attention_time_s, attention_ideal_time_s      the attention operators' share of those
    overhead_time_s                               kernel launch overhead in time_s
    tokens_per_s                                  batch / time_s
    speedup_vs_dense, attention_speedup_vs_dense, ideal_speedup_vs_dense, attention_ideal_speedup_vs_dense
                                                  realistic and ideal speedups of the step and of attention alone
    bound                                         memory | compute | link | overhead: what takes most of time_s
    prefill_time_s, prefill_ideal_time_s          the dense prefill of seq_len prompt tokens
    weights_location, kv_location                 memory tier (or 'host') holding weights and the KV cache
    weights_on_device, kv_on_device               shares kept there; the rest on the host, streamed over the host
                                                  link concurrently with the device's reads (FlexGen's percentages)
    weights_on_disk, kv_on_disk                   shares of those on the disk behind the host (profiles with a disk
                                                  tier): read at the disk's rate and across the host link
    memory_required_bytes, memory_capacity_bytes  per device: weights + KV (+ strategy extras) + workspace vs tiers
    fits, max_batch                               whether it fits, and the largest batch that would

With gen_len (whole generations of N tokens after a prompt of seq_len), also:
    gen_len, ttft_s                               N; time to first token: the prompt's prefill, which yields it
    tpot_s                                        the mean decode step over the N - 1 further tokens, the context
                                                  growing from seq_len + 1 to seq_len + N - 1 (each step evaluated:
                                                  an exact sum, not the step at seq_len)
    e2e_time_s, throughput_tokens_s               ttft + every decode step; batch x N / e2e_time_s
    e2e_speedup_vs_dense, fits_at_end             dense's e2e_time_s over this one; whether the cache still fits
                                                  at the last context
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass

import numpy as np

from .cases import Case, SweepArgs, parse_sweep
from .errors import UserError
from .ledger import (FP32, Op, Parallel, Precision, _f64, attention_ops, block_ops, cache_bytes_per_device,
                     head_ops, kv_geometry, prefill_attention_ops, span, stored_groups, windows)
from .models import DEFAULT_MODEL, ModelSpec
from .roofline import BOUNDS, StackedTimes, time_op, time_ops
from .strategies import resolve_params

COLUMNS = [
    "hardware", "model", "devices", "pipeline", "microbatches", "dtype", "kv_dtype", "act_dtype", "k_layout", "batch",
    "seq_len", "attended_len", "compression", "strategy", "r", "k", "local_window", "page_size",
    "weight_bytes", "activation_bytes", "kv_read_bytes", "kv_write_bytes", "metadata_bytes", "attention_bytes",
    "attention_fraction", "total_bytes", "flops", "arithmetic_intensity",
    "time_s", "ideal_time_s", "attention_time_s", "attention_ideal_time_s", "overhead_time_s", "tokens_per_s",
    "speedup_vs_dense", "attention_speedup_vs_dense", "ideal_speedup_vs_dense", "attention_ideal_speedup_vs_dense",
    "bound",
    "prefill_time_s", "prefill_ideal_time_s",
    "weights_location", "kv_location", "weights_on_device", "kv_on_device", "weights_on_disk", "kv_on_disk",
    "memory_required_bytes",
    "memory_capacity_bytes", "fits", "max_batch",
]
STRING_COLUMNS = {"hardware", "model", "dtype", "kv_dtype", "act_dtype", "k_layout", "strategy", "bound",
                  "weights_location", "kv_location"}
LOCATIONS_HELP = "auto (first memory tier with room), a tier name of the profile (e.g. hbm, sram, streaming), or host"


@dataclass(frozen=True)
class Labels:
    """A string column kept as integer codes into `categories` until rendering (a sweep of millions of rows would
    spend most of its time building Python string objects otherwise)."""
    codes: np.ndarray
    categories: tuple[str, ...]

    def __len__(self):
        return len(self.codes)

    def take(self, rows) -> "Labels":
        return Labels(self.codes[rows], self.categories)

    def decode(self) -> np.ndarray:
        return np.asarray(self.categories, dtype=object)[self.codes]

    def tolist(self) -> list[str]:
        return self.decode().tolist()

    @staticmethod
    def concat(parts: list["Labels"]) -> "Labels":
        cats: list[str] = []
        for p in parts:
            cats += [c for c in p.categories if c not in cats]
        index = {c: i for i, c in enumerate(cats)}
        return Labels(np.concatenate([np.asarray([index[c] for c in p.categories], dtype=np.int32)[p.codes]
                                      for p in parts]), tuple(cats))


def decoded(cols: dict) -> dict[str, np.ndarray]:
    """Columns with every Labels turned into an array of strings, for rendering."""
    return {c: (v.decode() if isinstance(v, Labels) else v) for c, v in cols.items()}


def _workspace_bytes(m: ModelSpec, tp: Parallel, B, S, prec: Precision):
    """Peak activation memory per device: logits (fp32), the MLP's widest activation, one row of scores (fp32)."""
    n_in = 2 if m.gated_mlp else 1
    return np.asarray(B, dtype=np.float64) * (tp.vocab * FP32 + 2 * n_in * tp.d_ff * prec.a
                                              + tp.heads * np.asarray(S, dtype=np.float64) * FP32)


def _sum_over(ops, times, field):
    return sum(getattr(t, field) * op.layers for op, t in zip(ops, times))


_KIND_SUMS = (
    ("weight_bytes", ("weight",)), ("activation_bytes", ("act_read", "act_write")), ("kv_read_bytes", ("kv_read",)),
    ("kv_write_bytes", ("kv_write",)), ("metadata_bytes", ("meta_read", "meta_write")), ("flops", ("flops",)),
)


def _aggregate(ops: list[Op], times, devices: int) -> dict:
    """Step totals of a list of timed operators: bytes by kind and FLOPs (all devices), times (per device), and the
    time spent bound by memory, compute, link and launch overhead."""
    agg = {name: devices * sum(sum(getattr(op, f) for f in fs) * op.layers for op in ops) for name, fs in _KIND_SUMS}
    agg["time_s"] = _sum_over(ops, times, "time_s")
    agg["ideal_time_s"] = _sum_over(ops, times, "ideal_s")
    agg["overhead_time_s"] = sum(t.overhead_s * op.layers for op, t in zip(ops, times))
    by_bound = [0.0, 0.0, 0.0]
    for op, t in zip(ops, times):
        busy = (t.time_s - t.overhead_s) * op.layers
        if np.ndim(t.bound) == 0:
            by_bound[int(t.bound)] = by_bound[int(t.bound)] + busy
        else:
            for b in range(3):
                by_bound[b] = by_bound[b] + np.where(t.bound == b, busy, 0.0)
    agg["by_bound"] = by_bound + [agg["overhead_time_s"]]
    return agg


_STACK_SUMS = 1 << 20   # at most this many elements: the sums of `_run_sums` taken with one reduceat


# the quantities `_run_sums` totals, in order: bytes by kind and FLOPs, the two times, then the time bound by
# memory, compute and link (_BY_BOUND)
_TERMS = tuple(name for name, _ in _KIND_SUMS) + ("time_s", "ideal_time_s")
_TIME, _IDEAL, _BY_BOUND = _TERMS.index("time_s"), _TERMS.index("ideal_time_s"), slice(len(_TERMS), len(_TERMS) + 3)


def _run_sums(t: StackedTimes, starts: list[int], devices: int) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray]:
    """`_aggregate` of consecutive runs of operators timed together (`roofline.time_ops`), each run starting at one
    of `starts`: a (rows x runs) array per quantity, _TERMS (bytes by kind and FLOPs of all devices, the times of one)
    then the time bound by memory, compute and link (_BY_BOUND); and the launch overhead (runs,). All runs are summed at
    once (np.add.reduceat over rows laid out operator-last, so each row's sum is the same whatever the number of rows:
    a sweep evaluated in chunks equals the whole to the last bit); a small sweep's quantities all in one reduceat, the
    same sums, returned as that one (quantities x rows x runs) array (a list of arrays otherwise)."""
    f, L = t.fields, t.layers[:, None]
    busy = t.time_s - t.overhead_s[:, None]
    terms = [sum(f[x] for x in fs) if len(fs) > 1 else f[fs[0]] for _, fs in _KIND_SUMS] + [t.time_s, t.ideal_s] + \
        [np.where(t.bound == b, busy, 0.0) for b in range(3)]
    nk = len(_KIND_SUMS)
    if len(terms) * t.time_s.size <= _STACK_SUMS:   # (terms x ops x rows) -> (terms x rows x runs), one array
        sums = np.add.reduceat(np.ascontiguousarray((np.stack(terms) * L).transpose(0, 2, 1)), starts, axis=2)
        sums[:nk] *= devices   # all devices' bytes and FLOPs (x devices, as below)
        return sums, np.add.reduceat(t.overhead_s * t.layers, starts)
    # (ops x rows) -> (rows x runs), one quantity at a time
    sums = [np.add.reduceat(np.ascontiguousarray((a * L).T), starts, axis=1) for a in terms]
    return [devices * v for v in sums[:nk]] + sums[nk:], np.add.reduceat(t.overhead_s * t.layers, starts)


def _col(x):
    """A column of points as (points x 1), to broadcast against (points x strategies); a number as it is."""
    return x[:, None] if getattr(x, "ndim", 0) == 1 else x


def pipeline_step(agg: dict, heads: dict, link, P: int, M, frac: float, act_bytes, prefill_act_bytes) -> None:
    """A decode step of `P` pipeline stages with `M` micro-batches in flight, from the times of one micro-batch
    through the whole model on one stage's devices (`agg`, changed in place).

    Stages run concurrently, each on its own devices, a micro-batch at a time; a micro-batch's next token needs its
    last one to have left the last stage. Of a micro-batch's time t through all the layers, the fullest stage does
    frac = ceil(L / P) / L of the layers' part plus the last stage's final norm and lm_head h (the first stage's
    embedding lookup is a few rows). One round gives every sequence its next token:

        round = max(M x stage, t + P x p2p),  stage = (t - h) x frac + h

    the stage busy with all M micro-batches, or one micro-batch's trip through every stage and back (p2p: a
    point-to-point send of its activations, batch x d_model, over the device link: the link's fixed latency, one
    hop, the bytes at the achieved rate; ideal: the bytes at the peak). Weights are read once per micro-batch, so
    bytes and FLOPs are M times a micro-batch's. The prefill is the pipeline's fill: one micro-batch's prompt through
    every stage, then one stage time per further micro-batch (GPipe's schedule)."""
    Mf = np.asarray(M, dtype=np.float64)
    p2p_real = link.base_latency_s + link.latency_s + act_bytes / link.achieved_Bps
    p2p_ideal = act_bytes / link.bandwidth_Bps
    old = agg["time_s"]
    for key, p2p in (("time_s", p2p_real), ("ideal_time_s", p2p_ideal)):
        t, h = agg[key], heads["decode"][key]
        agg[key] = np.maximum(Mf * ((t - h) * frac + h), t + P * p2p)
    for key in ("attention_time_s", "attention_ideal_time_s"):
        agg[key] = agg[key] * Mf * frac
    for name, _ in _KIND_SUMS:
        agg[name] = agg[name] * Mf
    scale = agg["time_s"] / old
    agg["overhead_time_s"] = agg["overhead_time_s"] * scale
    agg["by_bound"] = [b * scale for b in agg["by_bound"][:3]] + [agg["overhead_time_s"]]
    pf_p2p = {"prefill_time_s": link.base_latency_s + link.latency_s + prefill_act_bytes / link.achieved_Bps,
              "prefill_ideal_time_s": prefill_act_bytes / link.bandwidth_Bps}
    for key, hkey in (("prefill_time_s", "time_s"), ("prefill_ideal_time_s", "ideal_time_s")):
        t, h = agg[key], heads["prefill"][hkey]
        agg[key] = t + (P - 1) * pf_p2p[key] + (Mf - 1) * ((t - h) * frac + h)


def _distinct(a):
    """np.unique(a, return_inverse=True) of a column; a number (one row) as it is, its rows all of them."""
    if np.ndim(a) == 0:
        return a, slice(None)
    return np.unique(a, return_inverse=True)


# the float columns evaluate_case fills from one array: the step's totals (agg), then what is derived from them
_AGG_COLUMNS = ("weight_bytes", "activation_bytes", "kv_read_bytes", "kv_write_bytes", "metadata_bytes", "flops",
                "time_s", "ideal_time_s", "attention_time_s", "attention_ideal_time_s", "overhead_time_s",
                "prefill_time_s", "prefill_ideal_time_s", "memory_required_bytes")
_FLOAT_COLUMNS = _AGG_COLUMNS + ("attention_bytes", "total_bytes", "attention_fraction", "arithmetic_intensity",
                                 "tokens_per_s", "speedup_vs_dense", "attention_speedup_vs_dense",
                                 "ideal_speedup_vs_dense", "attention_ideal_speedup_vs_dense")
_PARAM_COLUMNS = ("r", "k", "local_window", "page_size")   # each strategy's parameters
_INT_COLUMNS = ("batch", "seq_len", "attended_len", "microbatches", "devices", "pipeline") + _PARAM_COLUMNS + \
    ("max_batch",)
_CASE_FLOAT_COLUMNS = ("compression", "memory_capacity_bytes", "weights_on_device", "kv_on_device",
                       "weights_on_disk", "kv_on_disk")
_SPEEDUPS = slice(_FLOAT_COLUMNS.index("speedup_vs_dense"), len(_FLOAT_COLUMNS))   # dense's over each one's ...
_SPEEDUP_OF = [_FLOAT_COLUMNS.index(c) for c in ("time_s", "attention_time_s", "ideal_time_s",
                                                  "attention_ideal_time_s")]   # ... of these, in that order


def evaluate_case(case: Case, strategies: list[str], B, S, C, local_window, page_size,
                   keep_ops: dict | None = None) -> dict:
    """All strategies for one categorical case over the flat numeric grid (B, S, C); rows grid-point major.

    Operators outside attention depend on the batch only: they are timed once per distinct batch size and gathered.
    A single grid point (issue 16: <= 1 ms a call) goes through the same formulas on Python numbers, every operator
    timed in one stack: its row is the sweep's row to the last bit (tests/test_single_call.py).
    With `keep_ops` (a dict), also fills it with strategy -> (placement, [(op, times)]) for the per-operator ledger."""
    hw, m, prec = case.hw, case.model, case.prec
    fx = case.fixed
    tp = fx.tp
    n = B.shape[0]
    grid_B = B   # the batch column
    one = n == 1 and keep_ops is None   # one configuration: the ledger runs on Python numbers, the same IEEE
    if one:                             # arithmetic as on one-element arrays at a fraction of numpy's cost per call
        B, S, C = B[0], S[0], C[0]
    # pipeline parallelism: every operator sees one micro-batch; pipeline_step turns its times into the round's
    P = case.pipeline
    frac = fx.frac   # the fullest stage's share of the layers
    Bt = B                                            # sequences decoding together
    M = np.minimum(case.microbatches or P, Bt) if P > 1 else np.ones(np.shape(Bt), dtype=np.int64)
    if P > 1:
        B = -(-Bt // M)                               # sequences per micro-batch
    wins = windows(m)   # each distinct attention window of the layers (None = global)
    Sn, Cn = (int(S), float(C)) if one else (S, C)   # what the strategies' ledger reads: numbers (strategies._num)
    spans_S = {w: span(Sn, w) for w in wins}
    top = None if None in wins else max(wins)   # the widest: what the attended_len, r and k columns report
    Sa = spans_S[top]   # positions the widest layers see
    geo = kv_geometry(m)
    index_dim = m.indexer()[1]   # DSA's indexer key width on this model
    names, caps, n_dev_tiers, disk = fx.names, fx.caps, fx.n_dev_tiers, fx.disk
    # placement of weights (one tier: wi) and activations (the fastest tier)
    w_dev, w_on, wi = fx.w_dev, fx.w_on, fx.wi   # w_on: the weights resident in their device tier; the rest on the host
    host = n_dev_tiers
    wod, kod = case.weights_on_device, case.kv_on_device
    wdk, kdk = case.weights_on_disk, case.kv_on_disk
    act_i = 0
    workspace = _workspace_bytes(m, tp, B, Sa, prec)
    placement = fx.placement
    base = fx.base
    uB, invB = _distinct(B)
    before, after = block_ops("decode", m, tp, uB, prec)
    common = before + after + head_ops("decode", m, tp, uB, prec)
    pf_head = head_ops("prefill", m, tp, uB, prec)  # the prefill's lm_head on the last position of each sequence
    on_b = common + pf_head   # everything that depends on B only
    T = B.astype(np.float64) * S   # tokens of the prefill: B and S are each at most 1e15, their product not int64
    uT, invT = _distinct(T)   # the prefill's projections depend on B x S tokens
    pf_before, pf_after = block_ops("prefill", m, tp, uT, prec)
    pf_block = pf_before + pf_after
    if not one:   # (one configuration: all the operators timed at once, with the attention's below)
        t_b = time_ops(on_b, hw, base, prec, tp.devices, np.size(uB))
        b_sums, b_oh = _run_sums(t_b, [0, len(common)], tp.devices)
        pf_sums = _run_sums(time_ops(pf_block, hw, base, prec, tp.devices, np.size(uT)), [0], tp.devices)[0]

    # every strategy's attention (decode and prefill) timed together: one placement per strategy, its KV tier.
    # From here on each quantity is a (points x strategies) matrix, strategies in `order` (dense first)
    dense_spans = {w: resolve_params("dense", spans_S[w], geo, Cn) for w in wins}
    # the ledger's arithmetic is in float64: the batch sizes and spans converted once, not in each of its calls
    Bf, Btf, Sf = _f64(B), _f64(Bt), _f64(S)
    spans_f = {w: _f64(x) for w, x in spans_S.items()}
    order = ["dense"] + [s for s in strategies if s != "dense"]
    no = len(order)
    ki = fx.ki   # the same for every strategy (None: auto)
    found, pf_made = {}, {}
    stacked, owner, starts = [], [], []
    kv_dev = np.empty((n, no))
    for j, strat in enumerate(order):
        spans = {}
        for w in wins:
            kw = case.k if case.k is None or w is None else np.minimum(case.k, spans_S[w])  # a window caps k
            pw = dense_spans[w] if strat == "dense" else resolve_params(
                strat, spans_S[w], geo, Cn, r=case.r, k=kw, local_window=local_window, page_size=page_size,
                index_dim=index_dim)
            spans[w] = (spans_f[w], pw, dense_spans[w])
        stored = stored_groups(m, strat, spans, case.k_layout)   # what its cache keeps, for the next two
        # every stage caches its layers for all the sequences (the fullest stage: frac of them; 1.0: one stage)
        kv_dev[:, j] = cache_bytes_per_device(m, tp, strat, Btf, spans, prec, case.k_layout, stored) * frac
        attn_ops = attention_ops(m, tp, strat, Bf, spans, prec)
        pf_attn = prefill_attention_ops(m, tp, strat, Bf, Sf, spans, prec, case.k_layout, pf_made, stored)
        starts += [len(stacked), len(stacked) + len(attn_ops)]   # its decode attention, then its prefill's
        stacked += attn_ops + pf_attn
        owner += [j] * (len(attn_ops) + len(pf_attn))
        found[strat] = (spans[top][1], attn_ops, pf_attn)
    ws = _col(workspace)
    if ki is None and n_dev_tiers == 1:
        ki = 0
    elif ki is None:  # first device tier with room for the cache next to what is already there
        ki_arr = np.full((n, no), n_dev_tiers - 1, dtype=np.int64)
        for i in reversed(range(n_dev_tiers)):
            used = (w_on if wi == i else 0.0) + (ws if act_i == i else 0.0)
            ki_arr = np.where(used + kv_dev * kod <= caps[i], i, ki_arr)
        ki = ki_arr
    # the KV tier of each operator (ops x points), or one tier for all
    op_tiers = ki if np.ndim(ki) == 0 else ki.T[owner]
    if one:   # the operators of B, of B x S and the attention's, one row each: timed and summed together
        first = len(on_b) + len(pf_block)
        tiers_all = 0   # every cache in the first tier, as the operators outside attention place theirs
        if not (type(op_tiers) is int and op_tiers == 0):
            tiers_all = np.zeros((first + len(stacked), 1), dtype=np.int64)
            tiers_all[first:] = op_tiers
        t_b = time_ops(on_b + pf_block + stacked, hw, placement(tiers_all), prec, tp.devices, 1, numbers=True)
        all_sums, all_oh = _run_sums(t_b, [0, len(common), len(on_b)] + [first + x for x in starts], tp.devices)
        b_sums, pf_sums, sums = all_sums[:, :, 0:2], all_sums[:, :, 2:3], all_sums[:, :, 3:]   # quantity x 1 x runs
        b_oh, s_oh = all_oh[:2], all_oh[3:]
    else:
        sums, s_oh = _run_sums(time_ops(stacked, hw, placement(op_tiers), prec, tp.devices, n), starts, tp.devices)
    # the prefill's final norm and lm_head over the distinct batches, its two times (b_sums[:, :, 0] are the decode's
    # operators outside attention, added to the step below)
    b_head = {x: b_sums[x][:, 1] for x in (_TIME, _IDEAL)}
    if P > 1:   # the last stage's share: the decode's and the prefill's final norm and lm_head (t_b's first ops)
        dec_head = [v[:, 0] for v in _run_sums(t_b, [len(before + after), len(common)], tp.devices)[0]]
        heads = {phase: {"time_s": _col(x[_TIME][invB]), "ideal_time_s": _col(x[_IDEAL][invB])}
                 for phase, x in (("decode", dec_head), ("prefill", b_head))}
    pf_time = pf_sums[_TIME][:, 0][invT] + b_head[_TIME][invB]
    pf_ideal = pf_sums[_IDEAL][:, 0][invT] + b_head[_IDEAL][invB]

    # the step: the operators of B at each point, and the decode's attention (runs 0, 2, ...; the prefill's 1, 3, ...)
    if one:   # every quantity at once: b_sums[:, :, :1] is b_common as a column
        total = list(b_sums[:, :, :1] + sums[:, :, 0::2])
    else:
        total = [_col(c[:, 0][invB]) + v[:, 0::2] for c, v in zip(b_sums, sums)]
    agg = dict(zip(_TERMS, total))
    agg["overhead_time_s"] = float(b_oh[0]) + s_oh[0::2]
    agg["by_bound"] = total[_BY_BOUND] + [agg["overhead_time_s"]]
    agg["attention_time_s"] = sums[_TIME][:, 0::2]
    agg["attention_ideal_time_s"] = sums[_IDEAL][:, 0::2]
    agg["prefill_time_s"] = _col(pf_time) + sums[_TIME][:, 1::2]
    agg["prefill_ideal_time_s"] = _col(pf_ideal) + sums[_IDEAL][:, 1::2]
    if P > 1:
        pipeline_step(agg, heads, hw.device_link, P, _col(M), frac, _col(B * m.d_model * prec.a),
                      _col(B.astype(np.float64) * S * m.d_model * prec.a))
    by = np.empty((4, n, no))   # time bound by memory, compute, link, and launch overhead
    for i, x in enumerate(agg.pop("by_bound")):
        by[i] = x
    bound_index = by.argmax(axis=0)

    # capacity, per device, tier by tier (the host's shares of weights and cache in host memory)
    ki_b = np.full((n, no), ki) if np.ndim(ki) == 0 else ki
    kv_on = np.where(ki_b == host, 0.0, kv_dev * kod)
    fits = np.ones((n, no), dtype=bool)
    for i in range(len(names)):
        used = (w_on if wi == i else 0.0) + (ws if act_i == i else 0.0) + np.where(ki_b == i, kv_on, 0.0)
        if i == host:   # what is not on the device nor on the disk
            used = used + (w_dev - w_on - w_dev * wdk) + (kv_dev - kv_on - kv_dev * kdk)
        elif i == disk:
            used = w_dev * wdk + kv_dev * kdk
        fits &= used <= caps[i]
    agg["memory_required_bytes"] = w_dev + kv_dev + ws
    # largest batch: per-sequence resident bytes against the room left in the KV tier(s); the host holds the
    # weights' and the cache's offloaded shares (all of a cache placed there)
    w_host = w_dev - w_on - w_dev * wdk

    def resident(i):   # weight bytes on tier i
        return (w_on if wi == i and i != host else 0.0) + (w_host if i == host else 0.0)

    Bc = _col(Bt)
    with np.errstate(divide="ignore"):
        ws_seq = _col(workspace / (B * M))   # a micro-batch's activations in flight per device, per sequence
        tiers = range(n_dev_tiers) if case.kv_location == "auto" else [int(np.ravel(ki)[0])]
        best = np.zeros((n, no))
        for i in tiers:
            # a cache placed at the host keeps all but the disk's share in host memory
            per_kv = kv_dev * (1 - kdk) / Bc if i == host else kv_dev * kod / Bc
            room = caps[i] - resident(i)
            if act_i != i:  # workspace sits in another tier: it must fit there too
                best = np.maximum(best, np.minimum(room / per_kv, (caps[act_i] - resident(act_i)) / ws_seq))
            else:
                best = np.maximum(best, room / (per_kv + ws_seq))
        if kod + kdk < 1 and host not in tiers:   # the cache's offloaded share must fit the host too
            best = np.minimum(best, (caps[host] - resident(host)) / (kv_dev * (1 - kod - kdk) / Bc))
        if kdk > 0:   # and its share on the disk the disk
            best = np.minimum(best, (caps[disk] - w_dev * wdk) / (kv_dev * kdk / Bc))
    if (wi != host and w_on > caps[wi]) or w_host > caps[host] or (disk is not None and w_dev * wdk > caps[disk]):
        # the weights alone do not fit: no batch
        best = np.zeros((n, no))
    max_batch = np.floor(np.minimum(np.where(np.isfinite(best), np.maximum(best, 0), 2**62), 2**62)).astype(np.int64)
    if keep_ops is not None:
        for j, strat in enumerate(order):
            _, attn_ops, pf_attn = found[strat]
            pl = placement(ki if np.ndim(ki) == 0 else ki[:, j])
            full_before, full_after = block_ops("decode", m, tp, B, prec)
            full_head = head_ops("decode", m, tp, B, prec)
            t = lambda ops: [time_op(op, hw, pl, prec, tp.devices) for op in ops]  # noqa: E731
            pf_b, pf_a = block_ops("prefill", m, tp, T, prec)
            pf_h = head_ops("prefill", m, tp, B, prec)
            seq = full_before + attn_ops + full_after + full_head + pf_b + pf_attn + pf_a + pf_h
            keep_ops[strat] = (pl, list(zip(seq, t(seq))))

    ns = len(strategies)
    N = n * ns
    pick = None if order == list(strategies) else [order.index(s) for s in strategies]

    def sel(a):   # (points x order) -> (points x strategies asked for)
        a = a if np.shape(a) == (n, no) else np.broadcast_to(a, (n, no))
        return a if pick is None else a[:, pick]

    def flat(a, dtype=np.float64):   # -> rows, point major (a new array)
        return np.array(a, dtype=dtype).reshape(N)

    def each(values):   # one value per strategy asked for, each a number or an array of the points -> (points x ns)
        if not any(type(v) is np.ndarray for v in values):
            return values
        return np.array([np.broadcast_to(v, (n,)) for v in values]).T

    # the float columns, every strategy of `order` (dense first), in one array of a quantity per row: the sums and
    # ratios computed a group of columns at a time, the strategies asked for picked once, each column one of its rows
    q = np.empty((len(_FLOAT_COLUMNS), n, no))
    for i, c in enumerate(_AGG_COLUMNS):
        q[i] = agg[c]
    v = dict(zip(_FLOAT_COLUMNS, q))
    np.add(v["kv_read_bytes"], v["kv_write_bytes"], out=v["attention_bytes"])
    v["attention_bytes"] += v["metadata_bytes"]
    np.add(v["weight_bytes"], v["activation_bytes"], out=v["total_bytes"])
    v["total_bytes"] += v["attention_bytes"]
    np.divide(v["attention_bytes"], v["attention_bytes"][:, :1], out=v["attention_fraction"])   # over dense's
    np.divide(v["flops"], v["total_bytes"], out=v["arithmetic_intensity"])
    np.divide(grid_B[:, None], v["time_s"], out=v["tokens_per_s"])
    times = q[_SPEEDUP_OF]
    np.divide(times[:, :, :1], times, out=q[_SPEEDUPS])   # dense's time over each strategy's
    if pick is not None:
        q = q.take(pick, axis=2)
    out: dict = {}
    for c, x in zip(_FLOAT_COLUMNS, q):
        out[c] = x.reshape(N)
    # the integer columns and the float ones that are the case's, each a row of one array (points x strategies)
    ints = np.empty((len(_INT_COLUMNS), n, ns), dtype=np.int64)
    for i, x in enumerate((Bt, S, Sa, M, case.devices, P)):   # a value per point, or one for all
        ints[i] = _col(x)
    for i, c in enumerate(_PARAM_COLUMNS, start=len(_INT_COLUMNS) - len(_PARAM_COLUMNS) - 1):
        ints[i] = each([found[st][0][c] for st in strategies])
    ints[-1] = sel(max_batch)
    floats = np.empty((len(_CASE_FLOAT_COLUMNS), n, ns))
    for i, x in enumerate((C, fx.capacity, wod, kod, wdk, kdk)):
        floats[i] = _col(x)
    for c, x in zip(_INT_COLUMNS + _CASE_FLOAT_COLUMNS, itertools.chain(ints, floats)):
        out[c] = x.reshape(N)
    for c, v in fx.labels.items():
        out[c] = Labels(np.zeros(N, dtype=np.int8), (v,))
    out["bound"] = Labels(flat(sel(bound_index), np.int8), BOUNDS)
    out["kv_location"] = Labels(flat(sel(ki_b), np.int8), names)
    out["fits"] = flat(sel(fits), bool)
    codes = np.arange(ns, dtype=np.int8)
    out["strategy"] = Labels(np.tile(codes, n) if n > 1 else codes, tuple(strategies))
    return {c: out[c] for c in COLUMNS}


GENERATION_CHUNK_POINTS = 16_384   # decode steps of a whole generation evaluated at a time
GENERATION_COLUMNS = ["gen_len", "ttft_s", "tpot_s", "e2e_time_s", "throughput_tokens_s", "e2e_speedup_vs_dense",
                      "fits_at_end"]
DEFAULT_CHUNK_ROWS = 131_072  # rows per chunk when a sweep is streamed (`Sweep.chunks`): ~45 MB of columns,
#                              ~300 MB peak for the whole command


class Sweep(SweepArgs):
    """A validated sweep (`cases.SweepArgs`: the categorical cases and the numeric axes), not evaluated yet.

    Rows are ordered case by case (hardware, model, dtype, kv_dtype, devices, r, k: outer to inner), then grid point by
    grid point (batch, seq_len, compression: outer to inner), then strategy. `chunks()` evaluates it piece by piece in
    that order; `columns()` all at once (what `predict_columns` returns)."""
    __slots__ = ()

    @property
    def points(self) -> int:
        """Grid points (batch x seq_len x compression) per case."""
        return len(self.batches) * len(self.seqs) * len(self.comps)

    @property
    def rows(self) -> int:
        return len(self.cases) * self.points * len(self.strategies)

    def _grid(self, lo: int, hi: int):
        """Batch, seq_len and compression of the flat grid points lo .. hi - 1 (meshgrid 'ij' order, raveled)."""
        idx = np.arange(lo, hi, dtype=np.int64)
        nsc = len(self.seqs) * len(self.comps)
        return (self.batches[idx // nsc], self.seqs[(idx // len(self.comps)) % len(self.seqs)],
                self.comps[idx % len(self.comps)])

    def chunks(self, chunk_rows: int | None = None):
        """Yield the prediction as column dicts (like `predict_columns`) of at most about `chunk_rows` rows each
        (default DEFAULT_CHUNK_ROWS; 0: one chunk per case, however large). The grid is split between grid points, so
        every chunk holds whole grid points (all strategies) of one case; concatenated, the chunks are exactly
        `columns()`: same rows, order and values."""
        chunk_rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
        per = self.points if chunk_rows <= 0 else max(1, chunk_rows // len(self.strategies))
        for case in self.cases:
            for lo in range(0, self.points, per):
                B, S, C = self._grid(lo, min(lo + per, self.points))
                if self.gen_len is None:
                    yield _finite(evaluate_case(case, list(self.strategies), B, S, C, self.local_window,
                                                self.page_size), case)
                else:
                    yield _finite(self._generation(case, B, S, C), case)

    def _generation(self, case: Case, B, S, C) -> dict:
        """The step columns at the prompt's length S, and the whole generation of `gen_len` tokens: the prefill of the
        prompt gives the first token (ttft_s), then one decode step per further token at contexts S + 1 ... S + N - 1,
        each evaluated and summed exactly (a grid expanded along the generation, in pieces of bounded size)."""
        want = list(self.strategies)
        strats = want if "dense" in want else ["dense"] + want
        ns, N = len(strats), int(self.gen_len)
        cols = evaluate_case(case, strats, B, S, C, self.local_window, self.page_size)
        m = len(B)
        steps = np.zeros((m, ns))
        fits_end = cols["fits"].reshape(m, ns).copy()
        if N > 1:
            per = max(1, GENERATION_CHUNK_POINTS // (N - 1))
            t = np.arange(1, N, dtype=np.int64)
            for lo in range(0, m, per):
                sl = slice(lo, min(lo + per, m))
                k = sl.stop - sl.start
                x = evaluate_case(case, strats, np.repeat(B[sl], N - 1), (S[sl, None] + t).ravel(),
                                  np.repeat(C[sl], N - 1), self.local_window, self.page_size)
                steps[sl] = x["time_s"].reshape(k, N - 1, ns).sum(axis=1)
                fits_end[sl] = x["fits"].reshape(k, N - 1, ns)[:, -1]
        ttft = cols["prefill_time_s"].reshape(m, ns)
        e2e = ttft + steps
        gen = {"gen_len": np.full((m, ns), N, dtype=np.int64), "ttft_s": ttft,
               "tpot_s": steps / (N - 1) if N > 1 else np.full((m, ns), np.nan), "e2e_time_s": e2e,
               "throughput_tokens_s": B[:, None] * N / e2e, "e2e_speedup_vs_dense": e2e[:, :1] / e2e,
               "fits_at_end": fits_end}
        keep = [strats.index(s) for s in want]
        rows = (np.arange(m)[:, None] * ns + np.asarray(keep)[None, :]).ravel()
        out = {c: (v.take(rows) if isinstance(v, Labels) else v[rows]) for c, v in cols.items()}
        if isinstance(cols["strategy"], Labels):
            out["strategy"] = Labels(np.tile(np.arange(len(want), dtype=np.int8), m), tuple(want))
        out.update({c: v[:, keep].ravel() for c, v in gen.items()})
        return out

    def columns(self) -> dict:
        parts = list(self.chunks(0))
        if len(parts) == 1:
            return parts[0]
        return concat_columns(parts)


_CHECKED = ("time_s", "ideal_time_s", "prefill_time_s", "total_bytes", "flops", "memory_required_bytes")


def _finite(cols: dict, case: Case) -> dict:
    """Every time, byte and FLOP count of a prediction is a finite number, or the sweep stops with one line."""
    if len(cols["time_s"]) <= 4096 and np.isfinite(np.concatenate([cols[c] for c in _CHECKED])).all():
        return cols   # a few rows: all the columns checked at once
    for c in _CHECKED:
        finite = np.isfinite(cols[c])
        if not finite.all():
            i = int(np.argmin(finite))
            raise UserError(f"the prediction for {case.hw.name}, {case.model.name}, batch {int(cols['batch'][i])}, "
                            f"context {int(cols['seq_len'][i])} is not a finite number ({c}); check the profile's "
                            f"figures and the sizes asked for")
    return cols


def concat_columns(parts: list[dict]) -> dict:
    """Concatenate column dicts (chunks of one sweep) in order."""
    return {c: (Labels.concat([p[c] for p in parts]) if isinstance(parts[0][c], Labels)
                else np.concatenate([p[c] for p in parts])) for c in parts[0]}


def sweep(*args, **kwargs) -> Sweep:
    """The arguments of `predict_columns` (same meaning) parsed and checked into a `Sweep`, evaluating nothing
    (`cases.parse_sweep`: what it keeps between calls, and the order of its errors)."""
    return Sweep(*parse_sweep(*args, **kwargs))


def predict_columns(hardware="a100", model=DEFAULT_MODEL, seq_len=4096, batch=1, strategies=None, compression=8,
                    dtype="auto", kv_dtype=None, devices=1, r=None, k=None, local_window=None, page_size=None,
                    k_layout="twice", kv_location="auto", weights_location="auto",
                    gen_len=None, mla_decode=None, act_dtype=None, weights_on_device=1.0,
                    kv_on_device=1.0, pipeline=1, microbatches=None, weights_on_disk=0.0,
                    kv_on_disk=0.0) -> dict[str, np.ndarray]:
    """The prediction as ordered columns: numpy arrays, and `Labels` (codes + categories) for the string columns
    (see the module docstring; `decoded()` turns those into strings). Arguments take one value or a list; strings
    take comma lists and, for numbers, ranges such as '1024:131072:x2'. For sweeps too large to hold, use
    `sweep(...).chunks()` (the same rows, a chunk at a time). With `gen_len`, also GENERATION_COLUMNS: whole
    generations of that many tokens after a prompt of `seq_len`. A context beyond a model's maximum is a warning.
    `mla_decode`: absorbed (default) or unabsorbed decode of multi-head latent attention (ledger.py). `dtype` is the
    weights' format (with a scale group: 'int4-g32'), `kv_dtype` the cache's, `act_dtype` the activations' and the
    matrix arithmetic's (default: as the weights' usual kernels run; ledger.Precision). `weights_on_device` and
    `kv_on_device`: the shares kept on the device, the rest on the host (roofline.Placement), `weights_on_disk` and
    `kv_on_disk` the shares of the rest on the disk behind the host (profiles with a disk tier). `pipeline`: stages
    of `devices` tensor-parallel devices each, with `microbatches` in flight (default one per stage;
    `pipeline_step`)."""
    sw = sweep(hardware, model, seq_len, batch, strategies, compression, dtype, kv_dtype, devices, r, k,
               local_window, page_size, k_layout, kv_location, weights_location, gen_len, mla_decode, act_dtype,
               weights_on_device, kv_on_device, pipeline, microbatches, weights_on_disk, kv_on_disk)
    if sw.warnings:
        import warnings

        for w in sw.warnings:   # attributed to the caller's line, through predict() too
            warnings.warn(w, stacklevel=3 if sys._getframe(1).f_code is predict.__code__ else 2)
    return sw.columns()


def predict(hardware="a100", model=DEFAULT_MODEL, seq_len=4096, batch=1, strategies=None, compression=8,
            dtype="auto", kv_dtype=None, devices=1, r=None, k=None, local_window=None, page_size=None,
            k_layout="twice", kv_location="auto", weights_location="auto", gen_len=None, mla_decode=None,
            act_dtype=None, weights_on_device=1.0, kv_on_device=1.0, pipeline=1, microbatches=None,
            weights_on_disk=0.0, kv_on_disk=0.0):
    """Predict one decode step (and with `gen_len`, a whole generation) for every combination of the arguments;
    returns a pandas DataFrame (columns in the module docstring). Example:
    `predict(hardware="a100", seq_len=[1024, 4096], strategies=["dense", "sparq"], gen_len=256)`."""
    from .frame import frame

    cols = predict_columns(hardware, model, seq_len, batch, strategies, compression, dtype, kv_dtype, devices, r, k,
                           local_window, page_size, k_layout, kv_location, weights_location, gen_len, mla_decode,
                           act_dtype, weights_on_device, kv_on_device, pipeline, microbatches, weights_on_disk,
                           kv_on_disk)
    return frame(cols)
