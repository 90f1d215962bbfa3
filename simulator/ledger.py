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
- Local layers (a sliding window w) attend to min(S, w) positions and cache that many; global layers to all S. Each
  group of layers is its own set of attention operators (`layer_groups`), with the strategy's k and r for its span.
- Mixture of experts: T tokens, each routed to k of E experts, read E (1 - (1 - k/E)^T) distinct experts per layer
  on average (routing uniform and independent across tokens: a token misses a given expert with probability
  1 - k/E), plus the shared experts; FLOPs are T (k + shared) experts' worth. Experts are split across devices
  like the dense MLP (tensor parallel within each expert); the router (d_model x E) is replicated.
- Multi-head latent attention: the latent projections (q_a, kv_a, d_model -> rank) and their norms are replicated
  on every device, the per-head ones (q_b, kv_b, o) split by heads; the cache row is replicated. Absorbed decode
  (FlashMLA, DeepSeek's inference code) folds kv_b's key half into the query (q_absorb) and its value half into the
  output (o_absorb): attention runs over the rows as one KV head of d_c + d_r with the g = heads queries. Unabsorbed
  decode expands every attended row to per-head keys and values (kv_b read, the expansion written and read back),
  then runs multi-head attention over them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .errors import UserError
from .models import ModelSpec
from .units import (COMPUTE_DTYPE, DTYPE_BYTES, WEIGHT_ONLY_EFFICIENCY, WEIGHT_STREAM_EFFICIENCY, base_dtype,
                    dtype_bytes)
from .strategies import (QUEST_DENSE_LAYERS, KVGeometry, _ceil, _num, cache_tokens, extra_cache_elements,
                         index_cache_elements, traffic_components)

FP32 = 4.0
INDEX_BYTES = 4.0  # int32 indices

BYTE_KINDS = ("weight", "act_read", "act_write", "kv_read", "kv_write", "meta_read", "meta_write")
SOFTMAX_FLOPS = 5.0  # per score: max, subtract, exp, sum, scale
NORM_FLOPS = 5.0     # per element: residual add, square, sum, scale, weight


class Op(NamedTuple):
    """One operator of the ledger. A tuple (a single configuration builds ~95 a call): its numbers, `layers` to
    `comm`, are one slice (NUMBERS), read in one pass when operators are timed together (roofline.time_ops)."""
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


NUMBERS = slice(Op._fields.index("layers"), len(Op._fields))   # the fields of an Op that are numbers (or arrays)


@dataclass(frozen=True)
class Precision:
    dtype: str
    kv_dtype: str
    w: float    # bytes per weight (scales included)
    a: float    # bytes per activation
    kv: float   # bytes per KV element, scales included (also metadata, as in the paper's element model)
    w_eff: float = 1.0   # share of the achieved bandwidth the weights stream at (weight-only quantised kernels)
    act_dtype: str = ""  # activations, and the matrix units' arithmetic (COMPUTE_DTYPE of it)
    compute: str = ""

    @classmethod
    def of(cls, dtype: str, kv_dtype: str | None = None, act_dtype: str | None = None) -> "Precision":
        """Weights in `dtype`; KV in `kv_dtype` (default: `dtype`); activations in `act_dtype`.

        Without `act_dtype`, activations follow the weights as the usual kernels run them: 16-bit and fp32 as is,
        fp8 W8A8 and nvfp4/mxfp4 W4A4 on the units of their format, int8 and int4 weight-only as gpt-fast, GPTQ and
        AWQ run them (fp16 activations and arithmetic, dequantised weights streaming at
        units.WEIGHT_STREAM_EFFICIENCY). With `act_dtype` 16-bit or wider and quantised weights, the kernels are
        weight-only: they compute in `act_dtype` and stream the weights at WEIGHT_ONLY_EFFICIENCY; with `act_dtype`
        int8 or fp8 (W8A8) they stream at the full rate."""
        kvd = kv_dtype or dtype
        base = base_dtype(dtype)
        if act_dtype is None:
            act = "fp16" if base in ("int4", "int8") else dtype
            w_eff = WEIGHT_STREAM_EFFICIENCY.get(base, 1.0)
        else:
            act = act_dtype
            weight_only = DTYPE_BYTES[base_dtype(act)] >= 2 and DTYPE_BYTES[base] < 2
            w_eff = WEIGHT_ONLY_EFFICIENCY.get(base, 1.0) if weight_only else 1.0
        compute = COMPUTE_DTYPE[base_dtype(act)]
        return cls(dtype, kvd, dtype_bytes(dtype), dtype_bytes(act), dtype_bytes(kvd), w_eff, act, compute)


@dataclass(frozen=True)
class Parallel:
    """Per-device shapes under tensor parallelism over `devices`."""
    devices: int
    heads: int
    kv_heads: int          # KV heads cached per device (MLA: 1, the latent row, replicated)
    d_ff: float
    vocab: float
    d_ff_expert: float = 0.0

    @classmethod
    def of(cls, m: ModelSpec, devices: int) -> "Parallel":
        if devices < 1:
            raise UserError(f"--devices must be at least 1, got {devices}")
        if m.n_heads % devices:
            raise UserError(f"model {m.name} has {m.n_heads} attention heads, which {devices} devices cannot split "
                            f"evenly; accepted: a divisor of {m.n_heads}")
        # fewer KV heads than devices: each device holds (a replica of) one KV head
        kv = 1 if m.is_mla else math.ceil(m.n_kv_heads / devices)
        return cls(devices, m.n_heads // devices, kv, m.d_ff / devices, m.vocab_size / devices,
                   m.d_ff_expert / devices)


@lru_cache(maxsize=256)
def kv_geometry(m: ModelSpec) -> KVGeometry:
    """What one KV head caches per token (strategies.KVGeometry): K and V of head_dim, or MLA's shared row."""
    if m.is_mla:
        return KVGeometry(m.kv_lora_rank + m.qk_rope_head_dim, m.kv_lora_rank, shared=True,
                          columns_whole=not m.mla_absorb)
    return KVGeometry(m.head_dim, m.head_dim)


def experts_read(m: ModelSpec, T):
    """Expected distinct routed experts one MoE layer reads for T tokens: E (1 - (1 - k/E)^T)."""
    E, k = float(m.n_experts), float(m.experts_per_token)
    return E * -np.expm1(np.asarray(T, dtype=np.float64) * np.log1p(-k / E)) if k < E else np.full(np.shape(T), E)


def _z(B):
    """Zeros like B (an `_f64`) in float64; for a number, 0.0."""
    return np.zeros(B.shape, dtype=np.float64) if type(B) is np.ndarray else 0.0


def _f64(x):
    """x in float64: an array as an array; a number (a single configuration) as a Python float, the same IEEE
    arithmetic at a fraction of a numpy scalar's cost per operation (strategies._num)."""
    return _num(x, np.float64)


def _norm_op(phase, name, m, T, p: Precision, layers):
    return Op(phase, name, "norm", "vector", layers, 1, flops=NORM_FLOPS * T * m.d_model, weight=m.norm_params * p.w,
              act_read=2 * T * m.d_model * p.a, act_write=T * m.d_model * p.a)


def block_ops(phase: str, m: ModelSpec, tp: Parallel, T, p: Precision):
    """Operators outside attention, for T tokens in flight (T = B in decode, B x S in prefill).

    Returns (before_attention, after_attention) lists; the attention operators go between them.
    """
    d, hd, L = m.d_model, m.head_dim, m.n_layers
    T = _f64(T)
    attn_out = tp.heads * m.value_dim
    bias_o = d if m.linear_bias else 0
    before = [
        Op(phase, "embedding", "embedding", "vector", 1, 1, flops=_z(T), weight=T * d * p.w, act_write=T * d * p.a),
        _norm_op(phase, "attn_norm", m, T, p, L),
    ]
    if m.is_mla:
        H, rope, c = tp.heads, m.qk_rope_head_dim, m.kv_lora_rank
        q_in = m.q_lora_rank or d
        q_w = (d * m.q_lora_rank + m.q_lora_rank if m.q_lora_rank else 0) + q_in * H * hd
        before += [
            # queries: d -> q_lora (replicated, with its norm) -> heads x (nope + rope)
            Op(phase, "q_proj", "projection", "matrix", L, 2 if m.q_lora_rank else 1,
               flops=2 * T * ((d * m.q_lora_rank if m.q_lora_rank else 0) + q_in * H * hd), weight=q_w * p.w,
               act_read=T * d * p.a, act_write=T * H * hd * p.a),
            # the new token's latent and RoPE key (replicated), with the latent's norm
            Op(phase, "kv_a_proj", "projection", "matrix", L, 1, flops=2 * T * d * (c + rope),
               weight=(d * (c + rope) + c) * p.w, act_read=T * d * p.a, act_write=T * (c + rope) * p.a),
            Op(phase, "rope", "projection", "vector", L, 1, flops=6 * T * (H + 1) * rope,
               act_read=T * (H + 1) * rope * p.a, act_write=T * (H + 1) * rope * p.a),
        ]
        if m.mla_absorb:   # q_nope through W_UK: the query meets the latent directly
            before.append(Op(phase, "q_absorb", "projection", "matrix", L, 1, flops=2 * T * H * m.qk_nope_head_dim * c,
                             weight=c * H * m.qk_nope_head_dim * p.w, act_read=T * H * m.qk_nope_head_dim * p.a,
                             act_write=T * H * c * p.a))
    else:
        qkv_out = (tp.heads + 2 * tp.kv_heads) * hd
        bias_qkv = qkv_out if (m.linear_bias or m.qkv_bias) else 0
        before += [
            Op(phase, "qkv_proj", "projection", "matrix", L, 1, flops=2 * T * d * qkv_out,
               weight=(d * qkv_out + bias_qkv + (2 * hd if m.qk_norm else 0)) * p.w, act_read=T * d * p.a,
               act_write=T * qkv_out * p.a),
            # rotary embedding on q and k (GPT-NeoX rotates part of head_dim; counted whole: an upper bound)
            Op(phase, "rope", "projection", "vector", L, 1, flops=6 * T * (tp.heads + tp.kv_heads) * hd,
               act_read=T * (tp.heads + tp.kv_heads) * hd * p.a, act_write=T * (tp.heads + tp.kv_heads) * hd * p.a),
        ]
    after = []
    if m.is_mla and m.mla_absorb:   # the attention's latent output through W_UV
        after.append(Op(phase, "o_absorb", "projection", "matrix", L, 1, flops=2 * T * tp.heads * m.kv_lora_rank *
                        m.v_head_dim, weight=m.kv_lora_rank * tp.heads * m.v_head_dim * p.w,
                        act_read=T * tp.heads * m.kv_lora_rank * p.a, act_write=T * attn_out * p.a))
    after.append(Op(phase, "o_proj", "projection", "matrix", L, 1, flops=2 * T * attn_out * d,
                    weight=(attn_out * d + bias_o) * p.w, act_read=T * attn_out * p.a, act_write=T * d * p.a))
    if m.norms_per_layer > 2:   # Gemma 2/3: a norm after attention and after the MLP too
        after.append(_norm_op(phase, "post_attn_norm", m, T, p, L * (m.norms_per_layer - 2) / 2))
    if tp.devices > 1:
        after.append(Op(phase, "attn_allreduce", "communication", "link", L, 1, flops=T * d,
                        act_read=T * d * p.a, act_write=T * d * p.a, comm=T * d * p.a))
    after.append(_norm_op(phase, "mlp_norm", m, T, p, L))
    after += mlp_ops(phase, m, tp, T, p)
    if m.norms_per_layer > 2:
        after.append(_norm_op(phase, "post_mlp_norm", m, T, p, L * (m.norms_per_layer - 2) / 2))
    if tp.devices > 1:
        after.append(Op(phase, "mlp_allreduce", "communication", "link", L, 1, flops=T * d,
                        act_read=T * d * p.a, act_write=T * d * p.a, comm=T * d * p.a))
    return before, after


def _mlp_triplet(phase, m: ModelSpec, T, p: Precision, layers, width, tag: str, experts_w=None, tokens=None):
    """up (gate and up), activation, down of an MLP of `width` columns (per device); for experts, `experts_w` is the
    number of expert matrices read and `tokens` the token-expert pairs computed."""
    d = m.d_model
    n_in = 2 if m.gated_mlp else 1
    bias_in = n_in * width if m.linear_bias else 0
    bias_out = d if m.linear_bias else 0
    mats = 1.0 if experts_w is None else experts_w
    Tw = T if tokens is None else tokens
    return [
        Op(phase, f"{tag}_up", "mlp", "matrix", layers, 1, flops=2 * Tw * d * n_in * width,
           weight=mats * (d * n_in * width + bias_in) * p.w, act_read=Tw * d * p.a, act_write=Tw * n_in * width * p.a),
        Op(phase, f"{tag}_act", "mlp", "vector", layers, 1, flops=(8 if m.gated_mlp else 7) * Tw * width,
           act_read=Tw * n_in * width * p.a, act_write=Tw * width * p.a),
        Op(phase, f"{tag}_down", "mlp", "matrix", layers, 1, flops=2 * Tw * width * d,
           weight=mats * (width * d + bias_out) * p.w, act_read=Tw * width * p.a, act_write=Tw * d * p.a),
    ]


def mlp_ops(phase: str, m: ModelSpec, tp: Parallel, T, p: Precision) -> list[Op]:
    """The MLP of every layer: dense (d_ff), or an MoE layer's router, routed experts and shared experts."""
    T = _f64(T)
    dense_layers = m.n_layers - m.moe_layers
    ops = _mlp_triplet(phase, m, T, p, dense_layers, tp.d_ff, "mlp") if dense_layers else []
    if m.moe_layers:
        E, k, sh = m.n_experts, m.experts_per_token, m.n_shared_experts
        ops.append(Op(phase, "moe_router", "mlp", "matrix", m.moe_layers, 2, flops=2 * T * m.d_model * E + 4 * T * E,
                      weight=m.d_model * E * p.w, act_read=T * m.d_model * p.a, act_write=T * (E * FP32 + k *
                                                                                                   INDEX_BYTES)))
        ops += _mlp_triplet(phase, m, T, p, m.moe_layers, tp.d_ff_expert, "experts", experts_w=experts_read(m, T),
                            tokens=T * k)
        if sh:
            ops += _mlp_triplet(phase, m, T, p, m.moe_layers, tp.d_ff_expert * sh, "shared_experts")
    return ops


def head_ops(phase: str, m: ModelSpec, tp: Parallel, B, p: Precision):
    """Final norm and lm_head for the B positions that produce a token (logits in fp32)."""
    B = _f64(B)
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
    B = _f64(B)
    S = _f64(S)
    hq, hkv = tp.heads, tp.kv_heads
    geo = kv_geometry(m)
    comps = {name: (kind, e) for name, kind, e in traffic_components(strategy, S, geo, params)}
    # widths the arithmetic runs at: q.k and p.v per head (absorbed MLA: the latent row; unabsorbed: expanded heads)
    dq, dvf = (m.head_dim, m.v_head_dim) if geo.columns_whole else (geo.d_k, geo.d_v)
    hd = dq

    def kv(name):  # bytes of one component for all sequences and this device's KV heads
        return B * hkv * comps[name][1] * p.kv

    def idx(name):  # bytes of a per-layer component (DSA's indexer cache: every device holds it whole)
        return B * comps[name][1] * p.kv

    k = _f64(params["k"])
    z = _z(B)
    name = (lambda n: f"{tag}{n}")
    ops = [Op("decode", name("kv_append"), "attention", "vector", layers, 1, flops=z, act_read=B * hkv * geo.row * p.a,
              kv_write=kv("kv_append"))]
    q_in = B * hq * dq * p.a
    out = B * hq * dvf * p.a
    if geo.columns_whole:   # unabsorbed MLA: expand the attended rows to per-head keys and values first
        rows_k = S if strategy in ("dense", "flexgen", "sparq", "loki") else k
        rows_v = S if strategy == "dense" else k
        c, nope, v = m.kv_lora_rank, m.qk_nope_head_dim, m.v_head_dim
        expanded = B * hq * (rows_k * nope + rows_v * v)
        ops.append(Op("decode", name("mla_expand"), "attention", "matrix", layers, 2,
                      flops=2 * c * expanded, weight=c * hq * (nope + v) * p.w, act_write=expanded * p.a,
                      act_read=expanded * p.a))
    if strategy == "dense":
        ops += [
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1, flops=2 * B * hq * S * hd,
               act_read=q_in, kv_read=kv("k_all")),
            Op("decode", name("attn_softmax"), "attention", "vector", layers, 0, flops=SOFTMAX_FLOPS * B * hq * S),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 0, flops=2 * B * hq * S * dvf,
               kv_read=kv("v_all"), act_write=out),
        ]
    elif strategy == "sparq":
        r = _f64(params["r"])
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
            Op("decode", name("sparq_values"), "attention", "matrix", layers, 1, flops=2 * B * hq * k * dvf,
               act_read=B * hq * k * FP32 + B * hkv * k * INDEX_BYTES, kv_read=kv("v_rows"), act_write=out),
            # Step 3: y = alpha y + (1 - alpha) v_bar, and the running mean update
            Op("decode", name("sparq_mean_value"), "attention", "vector", layers, 1, flops=4 * B * hq * dvf,
               act_read=out, act_write=out, meta_read=kv("v_mean_read"), meta_write=kv("v_mean_write")),
        ]
    elif strategy == "h2o":
        ops += [
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * k * hd + SOFTMAX_FLOPS * B * hq * k, act_read=q_in, kv_read=kv("k_rows"),
               act_write=B * hq * k * FP32),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 0, flops=2 * B * hq * k * dvf,
               kv_read=kv("v_rows"), act_write=out),
            # accumulate this step's attention into the heavy-hitter statistics, then evict the lightest
            Op("decode", name("h2o_score_update"), "attention", "vector", layers, 1, flops=B * hq * k + B * hkv * k,
               act_read=B * hq * k * FP32, meta_read=kv("score_stats_read"), meta_write=kv("score_stats_write")),
        ]
    elif strategy in ("loki", "double-sparsity"):
        r = _f64(params["r"])
        if strategy == "loki":
            ops += [
                # q (and the new key, before it is cached) into the layer's PCA basis: one d x d matrix per KV head
                Op("decode", name("loki_project"), "attention", "matrix", layers, 1,
                   flops=2 * B * (hq + hkv) * dq * dq, weight=hkv * dq * dq * p.a, act_read=q_in,
                   act_write=q_in),
                # approximate scores from the r leading components of every rotated key
                Op("decode", name("loki_approx_scores"), "attention", "matrix", layers, 1,
                   flops=2 * B * hq * S * r + SOFTMAX_FLOPS * B * hq * S, act_read=q_in,
                   kv_read=kv("k_columns"), act_write=B * hkv * S * FP32),
            ]
        else:
            ops += [
                # approximate scores from the label cache: the r chosen channels of q against the same of every key
                Op("decode", name("ds_approx_scores"), "attention", "matrix", layers, 1,
                   flops=2 * B * hq * S * r + SOFTMAX_FLOPS * B * hq * S, act_read=q_in + B * hkv * r * INDEX_BYTES,
                   meta_read=kv("label_read"), meta_write=kv("label_write"), act_write=B * hkv * S * FP32),
            ]
        tag_ = "loki" if strategy == "loki" else "ds"
        ops += [
            Op("decode", name(f"{tag_}_top_k"), "attention", "vector", layers, 1, flops=B * hkv * S,
               act_read=B * hkv * S * FP32, act_write=B * hkv * k * INDEX_BYTES),
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * k * hd + SOFTMAX_FLOPS * B * hq * k, act_read=q_in + B * hkv * k * INDEX_BYTES,
               kv_read=kv("k_rows"), act_write=B * hq * k * FP32),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 1, flops=2 * B * hq * k * dvf,
               act_read=B * hq * k * FP32 + B * hkv * k * INDEX_BYTES, kv_read=kv("v_rows"), act_write=out),
        ]
    elif strategy == "dsa":
        hi, di = m.indexer()[0], _f64(params["index_dim"])
        wi = m.indexer_params()
        q_idx = B * (hi * di + hi) * p.a   # the indexer's queries and head weights for this step
        ops += [
            # the lightning indexer's projections (replicated on every device): q_I and w from the query input, the
            # new token's indexer key, stored
            Op("decode", name("dsa_index_project"), "attention", "matrix", layers, 1, flops=2 * B * wi,
               weight=wi * p.w, act_read=q_in, act_write=q_idx, meta_write=idx("index_key_write")),
            # I_s = sum_j w_j ReLU(q_I,j . k_s) over every position's indexer key
            Op("decode", name("dsa_index_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hi * S * di + 3 * B * hi * S, act_read=q_idx, meta_read=idx("index_keys_read"),
               act_write=B * S * FP32),
            Op("decode", name("dsa_top_k"), "attention", "vector", layers, 1, flops=B * S, act_read=B * S * FP32,
               act_write=B * k * INDEX_BYTES),
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * k * hd + SOFTMAX_FLOPS * B * hq * k, act_read=q_in + B * k * INDEX_BYTES,
               kv_read=kv("k_rows"), act_write=B * hq * k * FP32),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 1, flops=2 * B * hq * k * dvf,
               act_read=B * hq * k * FP32 + B * k * INDEX_BYTES, kv_read=kv("v_rows"), act_write=out),
        ]
    elif strategy in ("lm-infinite", "snapkv"):
        ops += [
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * k * hd + SOFTMAX_FLOPS * B * hq * k, act_read=q_in, kv_read=kv("k_rows")),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 0, flops=2 * B * hq * k * dvf,
               kv_read=kv("v_rows"), act_write=out),
        ]
    elif strategy == "flexgen":
        ops += [
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * S * hd + SOFTMAX_FLOPS * B * hq * S, act_read=q_in, kv_read=kv("k_all"),
               act_write=B * hq * S * FP32),
            Op("decode", name("flexgen_top_k"), "attention", "vector", layers, 1, flops=B * hq * S,
               act_read=B * hq * S * FP32, act_write=B * hq * k * INDEX_BYTES),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 1, flops=2 * B * hq * k * dvf,
               act_read=B * hq * k * (FP32 + INDEX_BYTES), kv_read=kv("v_rows"), act_write=out),
        ]
    elif strategy == "quest":
        pages = _ceil(S / params["page_size"])
        ops += [
            # upper bound of q.k per page from its min and max keys: sum_i max(q_i min_i, q_i max_i)
            Op("decode", name("quest_page_scores"), "attention", "vector", layers, 1, flops=4 * B * hq * pages * hd,
               act_read=q_in, meta_read=kv("page_minmax"), act_write=B * hkv * pages * FP32),
            Op("decode", name("quest_top_pages"), "attention", "vector", layers, 1, flops=B * hkv * pages,
               act_read=B * hkv * pages * FP32, act_write=B * hkv * k / params["page_size"] * INDEX_BYTES),
            Op("decode", name("attn_scores"), "attention", "matrix", layers, 1,
               flops=2 * B * hq * k * hd + SOFTMAX_FLOPS * B * hq * k, act_read=q_in, kv_read=kv("k_rows")),
            Op("decode", name("attn_values"), "attention", "matrix", layers, 0, flops=2 * B * hq * k * dvf,
               kv_read=kv("v_rows"), act_write=out),
        ]
    else:
        raise AssertionError(strategy)
    # sanity: the operators carry exactly the strategy's traffic
    return ops


@lru_cache(maxsize=256)
def layer_groups(m: ModelSpec, strategy: str) -> tuple[tuple[int | None, int, bool], ...]:
    """(window, layers, dense) for each group of layers attended alike: one per distinct window (None = global), and
    Quest's first QUEST_DENSE_LAYERS layers, which run dense, apart. In order of first appearance."""
    nd = min(QUEST_DENSE_LAYERS, m.n_layers) if strategy == "quest" else 0
    counts: dict = {}
    for i, w in enumerate(m.layer_windows()):
        counts[(w, i < nd)] = counts.get((w, i < nd), 0) + 1
    return tuple((w, n, dense) for (w, dense), n in counts.items())


@lru_cache(maxsize=256)
def windows(m: ModelSpec) -> tuple[int | None, ...]:
    """The distinct attention windows of a model's layers (None = the whole context)."""
    return tuple(dict.fromkeys(m.layer_windows()))


def span(S, window):
    """Positions a layer with this window attends to at context S (a number stays one)."""
    if type(S) is int:   # one configuration
        return S if window is None or S <= window else window
    S = S if isinstance(S, np.generic) else np.asarray(S)
    return S if window is None else np.minimum(S, window)


def attention_ops(m: ModelSpec, tp: Parallel, strategy: str, B, spans: dict, p: Precision) -> list[Op]:
    """The attention operators of one decode step, all layers. `spans` maps each window of `windows(m)` to
    (S_w, params_w, dense_params_w): the positions its layers attend to and the strategy's parameters there."""
    groups = layer_groups(m, strategy)
    several = len(spans) > 1
    ops = []
    for w, n, dense in groups:
        S_w, params_w, dense_w = spans[w]
        tag = ("global." if w is None else "local.") if several else ""
        if dense:
            ops += attention_decode_ops(m, tp, "dense", B, S_w, dense_w, p, n, tag=tag + "dense_layers.")
        else:
            ops += attention_decode_ops(m, tp, strategy, B, S_w, params_w, p, n, tag=tag)
    return ops


def decode_ops(m: ModelSpec, tp: Parallel, strategy: str, B, spans: dict, p: Precision) -> list[Op]:
    """All operators of one decode step, in execution order."""
    before, after = block_ops("decode", m, tp, B, p)
    attn = attention_ops(m, tp, strategy, B, spans, p)
    return before + attn + after + head_ops("decode", m, tp, B, p)


def prefill_ops(m: ModelSpec, tp: Parallel, strategy: str, B, S, spans: dict, p: Precision,
                k_layout: str) -> list[Op]:
    """The dense prefill of S prompt tokens per sequence, writing what the strategy keeps."""
    T = np.asarray(B, dtype=np.float64) * np.asarray(S, dtype=np.float64)
    before, after = block_ops("prefill", m, tp, T, p)
    attn = prefill_attention_ops(m, tp, strategy, B, S, spans, p, k_layout)
    return before + attn + after + head_ops("prefill", m, tp, np.asarray(B, dtype=np.float64), p)


def causal_pairs(S, window=None):
    """(query, key) pairs a causal prefill of S tokens computes: S (S + 1) / 2, or with a sliding window w each
    query sees at most w positions: w (w + 1) / 2 + (S - w) w once S > w."""
    S = _f64(S)
    full = S * (S + 1) / 2
    if window is None:
        return full
    w = float(window)
    if type(S) is float:   # a number (one configuration)
        return full if S <= w else w * (w + 1) / 2 + (S - w) * w
    return np.where(S <= w, full, w * (w + 1) / 2 + (S - w) * w)


def stored_groups(m: ModelSpec, strategy: str, spans: dict, k_layout: str) -> list[tuple]:
    """What each group of layers (`layer_groups`) keeps at its span: (window, layers, dense, tokens whose K and V are
    kept, extra elements per KV head, index elements per layer). What the prefill stores and what stays resident
    (`prefill_attention_ops`, `cache_bytes_per_device`: worked out once for both when passed to them)."""
    geo = kv_geometry(m)
    out = []
    for w, n, dense in layer_groups(m, strategy):
        S_w, params_w, dense_w = spans[w]
        strat, pw = ("dense", dense_w) if dense else (strategy, params_w)
        out.append((w, n, dense, cache_tokens(strat, S_w, pw), extra_cache_elements(strat, S_w, geo, pw, k_layout),
                    index_cache_elements(strat, S_w, pw)))   # (DSA's indexer keys, per layer)
    return out


def prefill_attention_ops(m: ModelSpec, tp: Parallel, strategy: str, B, S, spans: dict, p: Precision,
                          k_layout: str, made: dict | None = None, stored: list | None = None) -> list[Op]:
    """The prefill's attention and the store of what the strategy keeps (the operators of `prefill_ops` that depend
    on the strategy), per group of layers. MLA prefills unabsorbed (compute bound): the latent rows are expanded to
    per-head keys and values, as DeepSeek's and vLLM's prefill paths do.

    The attention operator of a group is dense whatever the strategy; with `made` (a dict, the same B and S for
    every call), each group's is made once and shared by the strategies' lists (operators are only read). `stored`:
    `stored_groups` of these arguments (worked out here when not given)."""
    B = _f64(B)
    S = _f64(S)
    T = B * S
    hq, hkv = tp.heads, tp.kv_heads
    geo = kv_geometry(m)
    dq, dv = m.head_dim, m.value_dim
    several = len(spans) > 1
    ops = []
    for w, n, dense, kept, extra, index in stored or stored_groups(m, strategy, spans, k_layout):
        tag = ("global." if w is None else "local.") if several else ""
        tag += "dense_layers." if dense else ""
        attention = None if made is None else made.get((w, n, tag))
        if attention is None:
            pairs = causal_pairs(S, w)
            flops = 2 * B * hq * pairs * (dq + dv) + SOFTMAX_FLOPS * B * hq * pairs
            weight = 0.0
            if m.is_mla:   # expand every row: k_nope and v per head
                flops = flops + 2 * T * m.kv_lora_rank * hq * (m.qk_nope_head_dim + m.v_head_dim)
                weight = m.kv_lora_rank * hq * (m.qk_nope_head_dim + m.v_head_dim) * p.w
            attention = Op("prefill", tag + "attention", "attention", "matrix", n, 1, flops=flops, weight=weight,
                           act_read=T * (hq * dq + hkv * geo.row) * p.a, act_write=T * hq * dv * p.a,
                           kv_read=B * hkv * S * geo.row * p.kv)
            if made is not None:
                made[(w, n, tag)] = attention
        ops += [
            attention,
            Op("prefill", tag + "kv_store", "attention", "vector", n, 1, flops=_z(B),
               kv_write=B * hkv * kept * geo.row * p.kv, meta_write=B * hkv * extra * p.kv + B * index * p.kv),
        ]
    return ops


def cache_bytes_per_device(m: ModelSpec, tp: Parallel, strategy: str, B, spans: dict, p: Precision, k_layout: str,
                           stored: list | None = None):
    """KV cache (and the strategy's extra storage) per device: what must stay resident at context S. A local layer
    keeps its window (a ring buffer, as HF's hybrid cache does), a global one every position. `stored`: as for
    `prefill_attention_ops`."""
    B = _f64(B)
    geo = kv_geometry(m)
    total = index = 0.0
    for _, n, _, kept, extra, index_w in stored or stored_groups(m, strategy, spans, k_layout):
        total = total + n * (kept * geo.row + extra)
        index = index + n * index_w   # DSA's indexer keys: per layer, on every device
    return B * tp.kv_heads * p.kv * total + B * p.kv * index


def weight_bytes_per_device(m: ModelSpec, tp: Parallel, p: Precision, stages: int = 1) -> float:
    """Resident weights per device: split matrices, replicated norms, vocab-parallel embedding and lm_head; every
    expert resident (split like the dense MLP), the router replicated; MLA's latent projections replicated.

    With `stages` pipeline stages, the fullest device: ceil(L / stages) of the L layers' weights, and the larger of the
    first stage's embedding and the last stage's lm_head with the final norm (a tied head is a copy of the embedding
    on the last stage)."""
    replicated_attn = 0
    if m.is_mla:
        replicated_attn = (m.d_model * m.q_lora_rank + m.q_lora_rank if m.q_lora_rank else 0) + \
            m.d_model * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
    layers_split = m.n_layers * (m.attn_params - replicated_attn) + m.mlp_params_all_layers - m.moe_layers * \
        m.router_params
    if stages <= 1:
        split = layers_split + m.embedding_params + (0 if m.tied_embeddings else m.lm_head_params)
        replicated = m.n_layers * (m.norms_per_layer * m.norm_params + replicated_attn) + m.norm_params + \
            m.moe_layers * m.router_params
        return (split / tp.devices + replicated) * p.w
    layers_replicated = m.n_layers * (m.norms_per_layer * m.norm_params + replicated_attn) + \
        m.moe_layers * m.router_params
    share = math.ceil(m.n_layers / stages) / m.n_layers
    ends = max(m.embedding_params / tp.devices, m.lm_head_params / tp.devices + m.norm_params)
    return (share * (layers_split / tp.devices + layers_replicated) + ends) * p.w


def ops_frame_columns() -> list[str]:
    return list(Op._fields)
