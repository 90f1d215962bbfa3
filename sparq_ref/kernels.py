"""Decode-attention kernels for timing (`sparq-sim measure`): lean torch versions of every strategy.

These mirror the SparQ paper's microbenchmark kernels (attn-torch, sparq-attn-torch[-oneK]) and add the baselines,
without the index-set bookkeeping of `sparq_ref.attention` (which is the reference for correctness and bytes). A test
checks that each kernel's output equals the reference's on the same inputs.

Inputs: q [B, H, d], K and V [B, Hkv, S, d], and for SparQ with K stored twice an S-contiguous copy Kt [B, Hkv, d, S].
Kernel names follow the measurement schema: the strategy's kernel plus '-oneK' when SparQ's K is stored once.
"""

from __future__ import annotations

import math

import torch


def _group(q, Hkv):
    B, H, d = q.shape
    return q.view(B, Hkv, H // Hkv, d)


def attn_torch(q, K, V, **_):
    """Dense: softmax(q K^T / sqrt(d)) V, plain matmul-softmax-matmul (the paper's attn-torch)."""
    B, H, d = q.shape
    qg = _group(q, K.shape[1]) / math.sqrt(d)
    s = torch.softmax(qg @ K.transpose(-1, -2), dim=-1)
    return (s @ V).reshape(B, H, d)


def sparq_attn_torch(q, K, V, *, r, k, local_window, v_mean, Kt=None, **_):
    """SparQ, Algorithm 1 with the GQA variant, eager torch. With Kt (K stored twice) Step 1 gathers r rows of the
    S-contiguous copy; without it (K stored once) it gathers r strided components of every key row."""
    B, H, d = q.shape
    Hkv, S = K.shape[1], K.shape[2]
    qg = _group(q, Hkv)
    g = qg.shape[2]
    i1 = torch.topk(qg.abs().sum(2), r, dim=-1).indices                                 # [B, Hkv, r]
    q1 = qg.gather(-1, i1.unsqueeze(2).expand(B, Hkv, g, r))
    scale = torch.sqrt(d * q1.abs().sum(-1, keepdim=True) / qg.abs().sum(-1, keepdim=True))
    if Kt is not None:
        K1 = Kt.gather(2, i1.unsqueeze(-1).expand(B, Hkv, r, S))                       # [B, Hkv, r, S]
        logits = (q1 / scale) @ K1
    else:
        K1 = K.gather(3, i1.unsqueeze(2).expand(B, Hkv, S, r))                         # [B, Hkv, S, r]
        logits = (q1 / scale) @ K1.transpose(-1, -2)
    s_hat = torch.softmax(logits.float(), dim=-1)                                        # [B, Hkv, g, S]
    score = s_hat.sum(2)
    if local_window:
        score[..., S - local_window:] = float("inf")
    i2 = torch.topk(score, k, dim=-1, sorted=False).indices                              # [B, Hkv, k]
    alpha = s_hat.gather(-1, i2.unsqueeze(2).expand(B, Hkv, g, k)).sum(-1, keepdim=True)
    idx = i2.unsqueeze(-1).expand(B, Hkv, k, d)
    K2, V2 = K.gather(2, idx), V.gather(2, idx)
    s = torch.softmax((qg / math.sqrt(d)) @ K2.transpose(-1, -2), dim=-1)
    y = alpha * (s @ V2) + (1 - alpha) * v_mean.unsqueeze(2)
    return y.reshape(B, H, d)


def h2o_attn_torch(q, K, V, *, scores, **_):
    """H2O over its k-token cache (K, V hold only the cache): attend, accumulate the heavy-hitter statistics and find
    the lightest entry to evict next (the cache is permanent: nothing else is read)."""
    B, H, d = q.shape
    qg = _group(q, K.shape[1]) / math.sqrt(d)
    p = torch.softmax(qg @ K.transpose(-1, -2), dim=-1)
    scores += p.sum(2)
    scores.argmin(dim=-1)
    return (p @ V).reshape(B, H, d)


def lm_infinite_attn_torch(q, K, V, **_):
    """LM-Infinite / StreamingLLM: dense attention over the k-token cache of sinks and a recent window."""
    return attn_torch(q, K, V)


def flexgen_attn_torch(q, K, V, *, k, **_):
    """FlexGen top-k (sparse V): exact scores from all of K, then the top-k rows of V."""
    B, H, d = q.shape
    Hkv = K.shape[1]
    qg = _group(q, Hkv) / math.sqrt(d)
    s = torch.softmax(qg @ K.transpose(-1, -2), dim=-1)                                  # [B, Hkv, g, S]
    score = s.sum(2)
    score[..., -1] = float("inf")  # as FlexGen: the newest token is always kept; no renormalisation
    top = torch.topk(score, k, dim=-1, sorted=False).indices
    g = qg.shape[2]
    ps = s.gather(-1, top.unsqueeze(2).expand(B, Hkv, g, k))
    V2 = V.gather(2, top.unsqueeze(-1).expand(B, Hkv, k, d))
    return (ps @ V2).reshape(B, H, d)


def quest_attn_torch(q, K, V, *, k, page_size, kmin, kmax, **_):
    """Quest: upper bounds of q.k per page from the pages' min and max keys, top pages, then their K and V rows."""
    B, H, d = q.shape
    Hkv, S = K.shape[1], K.shape[2]
    qg = _group(q, Hkv)
    bound = torch.maximum(qg.unsqueeze(3) * kmin.unsqueeze(2), qg.unsqueeze(3) * kmax.unsqueeze(2)).sum(-1)
    n_pages = max(1, k // page_size)
    score = bound.sum(2)
    score[..., -1] = float("inf")  # the newest page (holding the token being decoded) is always read
    pages = torch.topk(score, min(n_pages, kmin.shape[2]), dim=-1, sorted=False).indices  # [B, Hkv, p]
    pos = (pages.unsqueeze(-1) * page_size + torch.arange(page_size)).flatten(2).clamp_max(S - 1)
    idx = pos.unsqueeze(-1).expand(B, Hkv, pos.shape[-1], d)
    K2, V2 = K.gather(2, idx), V.gather(2, idx)
    s = torch.softmax((qg / math.sqrt(d)) @ K2.transpose(-1, -2), dim=-1)
    return (s @ V2).reshape(B, H, d)


KERNELS = {
    "attn-torch": ("dense", attn_torch),
    "sparq-attn-torch": ("sparq", sparq_attn_torch),
    "sparq-attn-torch-oneK": ("sparq", sparq_attn_torch),
    "h2o-attn-torch": ("h2o", h2o_attn_torch),
    "lm-infinite-attn-torch": ("lm-infinite", lm_infinite_attn_torch),
    "flexgen-attn-torch": ("flexgen", flexgen_attn_torch),
    "quest-attn-torch": ("quest", quest_attn_torch),
}


def make_inputs(kernel: str, B: int, S: int, H: int, Hkv: int, d: int, dtype, device, *, r: int, k: int,
                page_size: int = 16, seed: int = 0) -> dict:
    """Random normal inputs in the layout each kernel expects (the cache it reads, and its own state)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    strategy = KERNELS[kernel][0]
    S_cache = k if strategy in ("h2o", "lm-infinite") else S   # evicting strategies hold only k tokens
    q = torch.randn(B, H, d, generator=gen).to(device=device, dtype=dtype)
    K = torch.randn(B, Hkv, S_cache, d, generator=gen).to(device=device, dtype=dtype)
    V = torch.randn(B, Hkv, S_cache, d, generator=gen).to(device=device, dtype=dtype)
    args = {"q": q, "K": K, "V": V, "r": r, "k": k}
    if strategy == "sparq":
        args["local_window"] = k // 4
        args["v_mean"] = V.mean(2)
        if not kernel.endswith("-oneK"):
            args["Kt"] = K.transpose(-1, -2).contiguous()
    elif strategy == "h2o":
        args["scores"] = torch.zeros(B, Hkv, S_cache, device=device, dtype=torch.float32)
    elif strategy == "quest":
        n = math.ceil(S / page_size)
        pad = n * page_size - S
        Kp = torch.nn.functional.pad(K, (0, 0, 0, pad), value=float("nan")).view(B, Hkv, n, page_size, d)
        args.update(page_size=page_size, kmin=torch.nan_to_num(Kp, nan=float("inf")).amin(3),
                    kmax=torch.nan_to_num(Kp, nan=float("-inf")).amax(3))
    return args
