"""The per-operator byte and FLOP ledger of one decode step (and of the prefill that precedes it).

After LLM-Viewer's ledger (load weights / load and store activations / load and store KV), with the strategies' own
reads kept apart as metadata (SparQ's v_bar, H2O's score statistics, Quest's page summaries) and intermediate score
vectors counted as activations. Every quantity is per device and per occurrence (one layer for per-layer operators);
`Op.layers` says how many times the operator runs in a step. Values are numpy arrays over the rows of a sweep.

Assumptions, one line each (they are what a reviewer checks a number against):
- Weights are read once per step for the whole batch; the embedding lookup reads only the B rows it needs.
- Activations are written by the operator that makes them and read by the next; residual adds fuse into the norms.
- Dense decode attention is one fused kernel (flash-decoding): scores stay on chip; K and V are read once per KV head
  and shared by the g query heads of the group.
- Sparse strategies materialise their selection scores (fp32) between kernels: SparQ's approximate scores, FlexGen's
  exact scores, Quest's page bounds are written once and read once by the top-k; the chosen indices are int32.
- Softmax and selection arithmetic run on the vector unit in fp32; projections and score/value products on the matrix
  unit in the activation dtype (int4 weights dequantise to fp16).
- Tensor parallelism (Megatron-style) over N devices splits heads, MLP columns, embedding and lm_head vocab; KV heads
  are replicated when there are fewer than N; two all-reduces of B x d_model activations per layer.
- Prefill is dense for every strategy (as in all SparQ implementations); its attention reads K and V once (flash
  attention's re-reads across query tiles hit on-chip memory); lm_head runs on the last position only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from .errors import UserError
from .models import ModelSpec
from .units import DTYPE_BYTES, WEIGHT_STREAM_EFFICIENCY
from .strategies import QUEST_DENSE_LAYERS, cache_tokens, extra_cache_elements, traffic_components

FP32 = 4.0
INDEX_BYTES = 4.0  # int32 indices

BYTE_KINDS = ("weight", "act_read", "act_write", "kv_read", "kv_write", "meta_read", "meta_write")
SOFTMAX_FLOPS = 5.0  # per score: max, subtract, exp, sum, scale
NORM_FLOPS = 5.0     # per element: residual add, square, sum, scale, weight


@dataclass
class Op:
    phase: str                 # decode | prefill
    name: str
    group: str                 # embedding | norm | projection | attention | mlp | lm_head | communication
    unit: str                  # matrix | vector | link
    layers: float              # occurrences per step
    launches: float            # kernels per occurrence
    flops: np.ndarray
    weight: np.ndarray | float = 0.0
    act_read: np.ndarray | float = 0.0
    act_write: np.ndarray | float = 0.0
    kv_read: np.ndarray | float = 0.0
    kv_write: np.ndarray | float = 0.0
    meta_read: np.ndarray | float = 0.0
    meta_write: np.ndarray | float = 0.0
    comm: np.ndarray | float = 0.0   # bytes each device sends in a collective

    def bytes_total(self):
        return sum(getattr(self, k) for k in BYTE_KINDS)


@dataclass(frozen=True)
class Precision:
    dtype: str
    kv_dtype: str
    w: float    # bytes per weight
    a: float    # bytes per activation
    kv: float   # bytes per KV element (also metadata, as in the paper's element model)
    w_eff: float = 1.0   # share of the achieved bandwidth the weights stream at (weight-only quantised kernels)

    @classmethod
    def of(cls, dtype: str, kv_dtype: str | None = None) -> "Precision":
        """Weights in `dtype`; activations in `dtype` (fp16 for int4 weights, which dequantise); KV in `kv_dtype`."""
        kvd = kv_dtype or dtype
        return cls(dtype, kvd, DTYPE_BYTES[dtype], DTYPE_BYTES[dtype] if dtype != "int4" else 2.0, DTYPE_BYTES[kvd],
                   WEIGHT_STREAM_EFFICIENCY.get(dtype, 1.0))


@dataclass(frozen=True)
class Parallel:
    """Per-device shapes under tensor parallelism over `devices`."""
    devices: int
    heads: int
    kv_heads: int
    d_ff: float
    vocab: float

    @classmethod
    def of(cls, m: ModelSpec, devices: int) -> "Parallel":
        if devices < 1:
            raise UserError(f"--devices must be at least 1, got {devices}")
        if m.n_heads % devices:
            raise UserError(f"model {m.name} has {m.n_heads} attention heads, which {devices} devices cannot split "
                            f"evenly; accepted: a divisor of {m.n_heads}")
        # fewer KV heads than devices: each device holds (a replica of) one KV head
        return cls(devices, m.n_heads // devices, math.ceil(m.n_kv_heads / devices), m.d_ff / devices,
                   m.vocab_size / devices)


def _z(B):
    return np.zeros(np.shape(B), dtype=np.float64)


def _norm_op(phase, name, m, T, p: Precision, layers):
    return Op(phase, name, "norm", "vector", layers, 1, flops=NORM_FLOPS * T * m.d_model, weight=m.norm_params * p.w,
              act_read=2 * T * m.d_model * p.a, act_write=T * m.d_model * p.a)


def block_ops(phase: str, m: ModelSpec, tp: Parallel, T, p: Precision):
    """Operators outside attention, for T tokens in flight (T = B in decode, B x S in prefill).

    Returns (before_attention, after_attention) lists; the attention operators go between them.
    """
    d, hd, L = m.d_model, m.head_dim, m.n_layers
    T = np.asarray(T, dtype=np.float64)
    qkv_out = (tp.heads + 2 * tp.kv_heads) * hd
    attn_out = tp.heads * hd
    bias_qkv = qkv_out if (m.linear_bias or m.qkv_bias) else 0
    bias_o = d if m.linear_bias else 0
    n_in = 2 if m.gated_mlp else 1
    bias_mlp_in = n_in * tp.d_ff if m.linear_bias else 0
    bias_mlp_out = d if m.linear_bias else 0
    before = [
        Op(phase, "embedding", "embedding", "vector", 1, 1, flops=_z(T), weight=T * d * p.w, act_write=T * d * p.a),
        _norm_op(phase, "attn_norm", m, T, p, L),
        Op(phase, "qkv_proj", "projection", "matrix", L, 1, flops=2 * T * d * qkv_out,
           weight=(d * qkv_out + bias_qkv) * p.w, act_read=T * d * p.a, act_write=T * qkv_out * p.a),
        # rotary embedding on q and k (GPT-NeoX rotates part of head_dim; counted whole: an upper bound)
        Op(phase, "rope", "projection", "vector", L, 1, flops=6 * T * (tp.heads + tp.kv_heads) * hd,
           act_read=T * (tp.heads + tp.kv_heads) * hd * p.a, act_write=T * (tp.heads + tp.kv_heads) * hd * p.a),
    ]
    after = [
        Op(phase, "o_proj", "projection", "matrix", L, 1, flops=2 * T * attn_out * d,
           weight=(attn_out * d + bias_o) * p.w, act_read=T * attn_out * p.a, act_write=T * d * p.a),
    ]
    if tp.devices > 1:
        after.append(Op(phase, "attn_allreduce", "communication", "link", L, 1, flops=T * d,
                        act_read=T * d * p.a, act_write=T * d * p.a, comm=T * d * p.a))
    after += [
        _norm_op(phase, "mlp_norm", m, T, p, L),
        Op(phase, "mlp_up", "mlp", "matrix", L, 1, flops=2 * T * d * n_in * tp.d_ff,
           weight=(d * n_in * tp.d_ff + bias_mlp_in) * p.w, act_read=T * d * p.a,
           act_write=T * n_in * tp.d_ff * p.a),
        Op(phase, "mlp_act", "mlp", "vector", L, 1, flops=(8 if m.gated_mlp else 7) * T * tp.d_ff,
           act_read=T * n_in * tp.d_ff * p.a, act_write=T * tp.d_ff * p.a),
        Op(phase, "mlp_down", "mlp", "matrix", L, 1, flops=2 * T * tp.d_ff * d,
           weight=(tp.d_ff * d + bias_mlp_out) * p.w, act_read=T * tp.d_ff * p.a, act_write=T * d * p.a),
    ]
    if tp.devices > 1:
        after.append(Op(phase, "mlp_allreduce", "communication", "link", L, 1, flops=T * d,
                        act_read=T * d * p.a, act_write=T * d * p.a, comm=T * d * p.a))
    return before, after


def head_ops(phase: str, m: ModelSpec, tp: Parallel, B, p: Precision):
    """Final norm and lm_head for the B positions that produce a token (logits in fp32)."""
    B = np.asarray(B, dtype=np.float64)
    return [
        _norm_op(phase, "final_norm", m, B, p, 1),
        Op(phase, "lm_head", "lm_head", "matrix", 1, 1, flops=2 * B * m.d_model * tp.vocab,
           weight=m.d_model * tp.vocab * p.w, act_read=B * m.d_model * p.a, act_write=B * tp.vocab * FP32),
    ]


def attention_decode_ops(m: ModelSpec, tp: Parallel, strategy: str, B, S, params, p: Precision,
                         layers: float, tag: str = "") -> list[Op]:
    """Operators of one strategy's decode attention over context S (per device).

    The KV and metadata bytes are exactly `traffic_components` x KV heads x batch x bytes per element; the names of
    the components decide which operator carries them.
    """
    B = np.asarray(B, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    hd, hq, hkv = m.head_dim, tp.heads, tp.kv_heads
    comps = {name: (kind, e) for name, kind, e in traffic_components(strategy, S, hd, params)}

    def kv(name):  # bytes of one component for all sequences and this device's KV heads
        return B * hkv * comps[name][1] * p.kv

    k = params["k"].astype(np.float64)
    z = _z(B)
    name = (lambda n: f"{tag}{n}")
    ops = [Op("decode", name("kv_append"), "attention", "vector", layers, 1, flops=z, act_read=2 * B * hkv * hd * p.a,
              kv_write=kv("kv_append"))]
    q_in = B * hq * hd * p.a
    out = B * hq * hd * p.a
    if strategy == "dense":
        ops += [
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1, flops=2 * B * hq * S * hd,
               act_read=q_in, kv_read=kv("k_all")),
            Op("decode", name("attn_softmax"), "attention", "vector", layers, 0, flops=SOFTMAX_FLOPS * B * hq * S),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 0, flops=2 * B * hq * S * hd,
               kv_read=kv("v_all"), act_write=out),
        ]
    elif strategy == "sparq":
        r = params["r"].astype(np.float64)
        ops += [
            # Step 1a: |q| summed over the GQA group, top-r components
            Op("decode", name("sparq_top_r"), "attention", "vector", layers, 1, flops=2 * B * hq * hd,
               act_read=q_in, act_write=B * hkv * r * INDEX_BYTES),
            # Step 1b: q[i1] . K[:, i1] over all S (r columns of K), approximate softmax with temperature tau
            Op("decode", name("sparq_approx_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * S * r + SOFTMAX_FLOPS * B * hq * S,
               act_read=q_in + B * hkv * r * INDEX_BYTES, kv_read=kv("k_columns"), act_write=B * hkv * S * FP32),
            # top-k of the group-summed approximate scores, local window forced in
            Op("decode", name("sparq_top_k"), "attention", "vector", layers, 1, flops=B * hkv * S,
               act_read=B * hkv * S * FP32, act_write=B * hkv * k * INDEX_BYTES),
            # Step 2: exact scores on k full rows of K, softmax, then k rows of V
            Op("decode", name("sparq_exact_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * k * hd + SOFTMAX_FLOPS * B * hq * k,
               act_read=q_in + B * hkv * k * INDEX_BYTES, kv_read=kv("k_rows"), act_write=B * hq * k * FP32),
            Op("decode", name("sparq_values"), "attention", "matrix", layers, 1, flops=2 * B * hq * k * hd,
               act_read=B * hq * k * FP32 + B * hkv * k * INDEX_BYTES, kv_read=kv("v_rows"), act_write=out),
            # Step 3: y = alpha y + (1 - alpha) v_bar, and the running mean update
            Op("decode", name("sparq_mean_value"), "attention", "vector", layers, 1, flops=4 * B * hq * hd,
               act_read=out, act_write=out, meta_read=kv("v_mean_read"), meta_write=kv("v_mean_write")),
        ]
    elif strategy == "h2o":
        ops += [
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * k * hd + SOFTMAX_FLOPS * B * hq * k, act_read=q_in, kv_read=kv("k_rows"),
               act_write=B * hq * k * FP32),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 0, flops=2 * B * hq * k * hd,
               kv_read=kv("v_rows"), act_write=out),
            # accumulate this step's attention into the heavy-hitter statistics, then evict the lightest
            Op("decode", name("h2o_score_update"), "attention", "vector", layers, 1, flops=B * hq * k + B * hkv * k,
               act_read=B * hq * k * FP32, meta_read=kv("score_stats_read"), meta_write=kv("score_stats_write")),
        ]
    elif strategy == "lm-infinite":
        ops += [
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * k * hd + SOFTMAX_FLOPS * B * hq * k, act_read=q_in, kv_read=kv("k_rows")),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 0, flops=2 * B * hq * k * hd,
               kv_read=kv("v_rows"), act_write=out),
        ]
    elif strategy == "flexgen":
        ops += [
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * S * hd + SOFTMAX_FLOPS * B * hq * S, act_read=q_in, kv_read=kv("k_all"),
               act_write=B * hq * S * FP32),
            Op("decode", name("flexgen_top_k"), "attention", "vector", layers, 1, flops=B * hq * S,
               act_read=B * hq * S * FP32, act_write=B * hq * k * INDEX_BYTES),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 1, flops=2 * B * hq * k * hd,
               act_read=B * hq * k * (FP32 + INDEX_BYTES), kv_read=kv("v_rows"), act_write=out),
        ]
    elif strategy == "quest":
        pages = np.ceil(S / params["page_size"])
        ops += [
            # upper bound of q.k per page from its min and max keys: sum_i max(q_i min_i, q_i max_i)
            Op("decode", name("quest_page_scores"), "attention", "vector", layers, 1, flops=4 * B * hq * pages * hd,
               act_read=q_in, meta_read=kv("page_minmax"), act_write=B * hkv * pages * FP32),
            Op("decode", name("quest_top_pages"), "attention", "vector", layers, 1, flops=B * hkv * pages,
               act_read=B * hkv * pages * FP32, act_write=B * hkv * k / params["page_size"] * INDEX_BYTES),
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * k * hd + SOFTMAX_FLOPS * B * hq * k, act_read=q_in, kv_read=kv("k_rows")),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 0, flops=2 * B * hq * k * hd,
               kv_read=kv("v_rows"), act_write=out),
        ]
    else:
        raise AssertionError(strategy)
    # sanity: the operators carry exactly the strategy's traffic
    return ops


def attention_ops(m: ModelSpec, tp: Parallel, strategy: str, B, S, params, dense_params, p: Precision) -> list[Op]:
    """The attention operators of one decode step, all layers (Quest runs its first layers dense)."""
    L = m.n_layers
    if strategy == "quest":
        nd = min(QUEST_DENSE_LAYERS, L)
        attn = attention_decode_ops(m, tp, "dense", B, S, dense_params, p, nd, tag="dense_layers.")
        if L > nd:
            attn += attention_decode_ops(m, tp, "quest", B, S, params, p, L - nd)
        return attn
    return attention_decode_ops(m, tp, strategy, B, S, params, p, L)


def decode_ops(m: ModelSpec, tp: Parallel, strategy: str, B, S, params, dense_params, p: Precision) -> list[Op]:
    """All operators of one decode step, in execution order."""
    before, after = block_ops("decode", m, tp, B, p)
    attn = attention_ops(m, tp, strategy, B, S, params, dense_params, p)
    return before + attn + after + head_ops("decode", m, tp, B, p)


def prefill_ops(m: ModelSpec, tp: Parallel, strategy: str, B, S, params, p: Precision, k_layout: str) -> list[Op]:
    """The dense prefill of S prompt tokens per sequence, writing what the strategy keeps."""
    T = np.asarray(B, dtype=np.float64) * np.asarray(S, dtype=np.float64)
    before, after = block_ops("prefill", m, tp, T, p)
    attn = prefill_attention_ops(m, tp, strategy, B, S, params, p, k_layout)
    return before + attn + after + head_ops("prefill", m, tp, np.asarray(B, dtype=np.float64), p)


def prefill_attention_ops(m: ModelSpec, tp: Parallel, strategy: str, B, S, params, p: Precision,
                          k_layout: str) -> list[Op]:
    """The prefill's attention and the store of what the strategy keeps (the operators of `prefill_ops` that depend
    on the strategy)."""
    B = np.asarray(B, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    T = B * S
    hd, hq, hkv, L = m.head_dim, tp.heads, tp.kv_heads, m.n_layers
    kept = cache_tokens(strategy, S, params)
    extra = extra_cache_elements(strategy, S, hd, params, k_layout)
    causal_pairs = S * (S + 1) / 2
    attn = [
        Op("prefill", "attention", "attention", "matrix", L, 1,
           flops=4 * B * hq * causal_pairs * hd + SOFTMAX_FLOPS * B * hq * causal_pairs,
           act_read=T * (hq + 2 * hkv) * hd * p.a, act_write=T * hq * hd * p.a,
           kv_read=2 * B * hkv * S * hd * p.kv),
        Op("prefill", "kv_store", "attention", "vector", L, 1, flops=_z(B),
           kv_write=2 * B * hkv * kept * hd * p.kv, meta_write=B * hkv * extra * p.kv),
    ]
    return attn


def cache_bytes_per_device(m: ModelSpec, tp: Parallel, strategy: str, B, S, params, p: Precision, k_layout: str):
    """KV cache (and the strategy's extra storage) per device: what must stay resident at context S."""
    B = np.asarray(B, dtype=np.float64)
    kept = cache_tokens(strategy, S, params)
    extra = extra_cache_elements(strategy, S, m.head_dim, params, k_layout)
    L = m.n_layers
    extra_layers = L - min(QUEST_DENSE_LAYERS, L) if strategy == "quest" else L
    return B * tp.kv_heads * p.kv * (2 * kept * m.head_dim * L + extra * extra_layers)


def weight_bytes_per_device(m: ModelSpec, tp: Parallel, p: Precision) -> float:
    """Resident weights per device: split matrices, replicated norms, vocab-parallel embedding and lm_head."""
    split = m.n_layers * (m.attn_params + m.mlp_params) + m.embedding_params + (
        0 if m.tied_embeddings else m.lm_head_params)
    replicated = m.n_layers * 2 * m.norm_params + m.norm_params
    return (split / tp.devices + replicated) * p.w


def ops_frame_columns() -> list[str]:
    return [f.name for f in fields(Op)]
