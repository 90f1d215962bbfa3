"""Reference decode attention for every registered strategy, in plain torch.

One query token per sequence, grouped-query attention (GQA):

    q: [B, n_heads, d_h]     K, V: [B, n_kv_heads, S, d_h]     valid: [B, S] bool (False = padding), optional

Each function returns ``(y, Fetched)``: the attention output [B, n_heads, d_h] and what the step read, per
(sequence, KV head), as index sets from which bytes are counted (`elements_touched`). Everything the step reads is
*gathered* from those sets (``K.gather``, ``V.gather``), so the counts are the data the computation actually used.

The strategies are the registry's (`sparq_sim.simulator.strategies`); the parameters come from its `resolve_params`.
GQA: a KV head serves g = n_heads / n_kv_heads query heads; every strategy fetches ONE shared set per KV head, chosen
from statistics summed over the group (SparQ paper, GQA variant: sum |q| before top-r, sum scores before top-k).

Positions are cache indices (0..S-1). With left padding (`valid` False on a prefix), seq_len of a sequence is its
number of valid positions and the strategies never select padding. Softmaxes are fp32; q is scaled before each matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

NEG_INF = float("-inf")


@dataclass
class Fetched:
    """What one decode step of one layer read, per (sequence b, KV head h).

    rows:        [B, Hkv, S] bool, the token positions whose V rows were read (and K rows, except FlexGen and dense,
                 which read all of K; dense reads all rows of both). For SparQ the k positions of Step 2.
    seq_len:     [B] long, valid positions in the cache (including the token being decoded).
    components:  [B, Hkv, r] long, the r key components read over all positions: SparQ's largest |q| (columns of
                 K), Loki's leading principal components (of the rotated keys), Double Sparsity's channels (its
                 label cache); None for the others.
    alpha:       [B, H] float, SparQ's approximate mass on the chosen positions, per query head; None for the others.
    pages:       [B] long, Quest: pages whose min/max key vectors were read; None for the others.
    """

    strategy: str
    rows: torch.Tensor
    seq_len: torch.Tensor
    components: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    pages: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def positions(self, b: int, h: int, offset: int = 0) -> list[int]:
        """Sorted positions of sequence b, KV head h, relative to `offset` (the first valid position)."""
        return (torch.nonzero(self.rows[b, h]).flatten() - offset).tolist()


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _shapes(q, K, V):
    if q.dim() != 3 or K.dim() != 4 or V.shape != K.shape:
        raise ValueError(f"expected q [B, H, d], K and V [B, Hkv, S, d]; got {tuple(q.shape)}, {tuple(K.shape)}, "
                         f"{tuple(V.shape)}")
    B, H, d = q.shape
    _, Hkv, S, dk = K.shape
    if dk != d or K.shape[0] != B or H % Hkv:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, K {tuple(K.shape)}")
    return B, H, Hkv, H // Hkv, S, d


def _valid(valid, B, S, device) -> torch.Tensor:
    if valid is None:
        return torch.ones(B, S, dtype=torch.bool, device=device)
    return valid.to(device=device, dtype=torch.bool)


def _per_seq(x, B, device) -> torch.Tensor:
    """An int or a length-B sequence -> long tensor [B]."""
    if not isinstance(x, torch.Tensor) and hasattr(x, "tolist"):  # numpy (often a read-only broadcast view)
        x = x.tolist()
    t = torch.as_tensor(x, dtype=torch.long, device=device)
    return t.expand(B).clone() if t.dim() == 0 else t.reshape(B)


def _scale(scaling, d):
    return 1.0 / math.sqrt(d) if scaling is None else float(scaling)


def _gather_rows(X, idx):
    """X [B, Hkv, S, d], idx [B, Hkv, n] -> [B, Hkv, n, d]."""
    return X.gather(2, idx.unsqueeze(-1).expand(*idx.shape, X.shape[-1]))


def _rows_mask(idx, ok, S):
    """Index sets [B, Hkv, n] (entries with ok False ignored) -> bool mask [B, Hkv, S]."""
    m = torch.zeros(*idx.shape[:2], S + 1, dtype=torch.bool, device=idx.device)
    return m.scatter(2, idx.masked_fill(~ok, S), True)[..., :S]


def _attend(qg, Ksel, Vsel, ok, scale):
    """Exact softmax attention on gathered rows. qg [B,Hkv,g,d]; Ksel/Vsel [B,Hkv,n,d]; ok [B,Hkv,n] -> y, probs."""
    logits = torch.matmul((qg.float() * scale).to(Ksel.dtype), Ksel.transpose(-1, -2)).float()
    logits = logits.masked_fill(~ok.unsqueeze(2), NEG_INF)
    p = torch.softmax(logits, dim=-1)
    y = torch.matmul(p.to(Vsel.dtype), Vsel).float()
    return y, p


def _topk_sets(score, k, ok_positions):
    """Per-sequence top-k of score [B, Hkv, S] (k: [B] long) -> idx [B, Hkv, kmax], ok [B, Hkv, kmax].

    Sorted top-k, so the first k_b entries are the k_b largest; positions with score -inf (padding) never count.
    """
    kmax = int(k.max())
    vals, idx = torch.topk(score, kmax, dim=-1, sorted=True)
    ok = torch.arange(kmax, device=score.device).view(1, 1, -1) < k.view(-1, 1, 1)
    ok = ok & ok_positions.gather(2, idx)
    return idx, ok


def _last_positions(valid, n):
    """Bool [B, S]: the last n[b] positions of each sequence (the newest tokens; valid with left padding)."""
    B, S = valid.shape
    pos = torch.arange(S, device=valid.device).view(1, S)
    return (pos >= S - n.view(B, 1)) & valid


def _first_valid_positions(valid, n):
    """Bool [B, S]: the first n[b] valid positions of each sequence (sink tokens)."""
    rank = torch.cumsum(valid.long(), dim=1) - 1
    return valid & (rank < n.view(-1, 1))


def dense_probs(q, K, valid=None, scaling=None) -> torch.Tensor:
    """Exact attention probabilities [B, Hkv, g, S] (fp32), zero on padding."""
    B, H, Hkv, g, S, d = _shapes(q, K, K)
    v = _valid(valid, B, S, q.device)
    qg = q.view(B, Hkv, g, d)
    logits = torch.matmul((qg.float() * _scale(scaling, d)).to(K.dtype), K.transpose(-1, -2)).float()
    logits = logits.masked_fill(~v.view(B, 1, 1, S), NEG_INF)
    return torch.softmax(logits, dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# strategies


def dense_attention(q, K, V, *, valid=None, scaling=None):
    """softmax(q K^T / sqrt(d_h)) V over every valid position: reads all of K and V."""
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    v = _valid(valid, B, S, q.device)
    p = dense_probs(q, K, v, scaling)
    y = torch.matmul(p.to(V.dtype), V).float().reshape(B, H, d)
    rows = v.view(B, 1, S).expand(B, Hkv, S).clone()
    return y, Fetched("dense", rows, v.sum(1))


def sparq_attention(q, K, V, *, r, k, local_window, v_mean=None, valid=None, scaling=None, reallocate=True):
    """SparQ Attention, Algorithm 1 of Ribar et al. (ICML 2024), with the GQA variant.

    r: query components (int); k, local_window: positions per sequence (int or [B]); v_mean: [B, Hkv, d] running mean
    of V over the valid positions (computed from V when None); reallocate=False drops step 3 (the paper did so for
    GQA models: Llama 3, Mistral). k = S and r = d_h reproduce dense attention exactly (up to float rounding).
    """
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    dev = q.device
    v = _valid(valid, B, S, dev)
    k = _per_seq(k, B, dev)
    lw = _per_seq(local_window, B, dev)
    r = int(r)
    if not 1 <= r <= d:
        raise ValueError(f"r = {r} must be between 1 and head_dim = {d}")
    scale = _scale(scaling, d)
    qg = q.view(B, Hkv, g, d).float()

    # Step 1: the r largest |q| components, summed over the GQA group -> one set per KV head
    i1 = torch.topk(qg.abs().sum(2), r, dim=-1).indices                              # [B, Hkv, r]
    q1 = qg.gather(-1, i1.unsqueeze(2).expand(B, Hkv, g, r))                         # [B, Hkv, g, r]
    # tau = sqrt(d_h * ||q[i1]||_1 / ||q||_1) replaces sqrt(d_h); a model scale other than 1/sqrt(d_h) carries over
    cover = q1.abs().sum(-1) / qg.abs().sum(-1).clamp_min(torch.finfo(torch.float32).tiny)
    inv_tau = scale * math.sqrt(d) / torch.sqrt(d * cover).clamp_min(1e-20)          # [B, Hkv, g]
    Kc = K.gather(-1, i1.unsqueeze(2).expand(B, Hkv, S, r))                          # r columns of K over all S
    logits_hat = torch.matmul((q1 * inv_tau.unsqueeze(-1)).to(K.dtype), Kc.transpose(-1, -2)).float()
    logits_hat = logits_hat.masked_fill(~v.view(B, 1, 1, S), NEG_INF)
    s_hat = torch.softmax(logits_hat, dim=-1)                                        # [B, Hkv, g, S] fp32

    # Step 2: local window forced in, top-k of the approximate scores summed over the group
    score = s_hat.sum(2)
    score = score.masked_fill(_last_positions(v, lw).unsqueeze(1), float("inf"))
    score = score.masked_fill(~v.unsqueeze(1), NEG_INF)
    i2, ok = _topk_sets(score, k, v.unsqueeze(1).expand(B, Hkv, S))
    alpha = (s_hat.gather(-1, i2.unsqueeze(2).expand(B, Hkv, g, i2.shape[-1])) * ok.unsqueeze(2)).sum(-1)
    y, _ = _attend(qg, _gather_rows(K, i2), _gather_rows(V, i2), ok, scale)          # k rows of K and V

    # Step 3: mean-value reallocation
    if reallocate:
        if v_mean is None:
            v_mean = running_mean_init(V, v)
        y = alpha.unsqueeze(-1) * y + (1 - alpha.unsqueeze(-1)) * v_mean.float().unsqueeze(2)
    fetched = Fetched("sparq", _rows_mask(i2, ok, S), v.sum(1), components=i1, alpha=alpha.reshape(B, H))
    fetched.extra["reallocate"] = bool(reallocate)
    return y.reshape(B, H, d), fetched


def running_mean_init(V, valid=None) -> torch.Tensor:
    """Mean of V over the valid positions: [B, Hkv, d] fp32."""
    B, Hkv, S, d = V.shape
    v = _valid(valid, B, S, V.device).view(B, 1, S, 1)
    return (V.float() * v).sum(2) / v.sum(2).clamp_min(1)


@dataclass
class H2OState:
    """Per-sequence, per-layer H2O state: accumulated attention per position and which positions are still cached.

    scores: [B, Hkv, S'] fp32 accumulated attention (summed over the GQA group); alive: [B, Hkv, S'] bool.
    Positions beyond S' (tokens appended since) start alive with score 0. Eviction is permanent.
    """

    scores: torch.Tensor
    alive: torch.Tensor

    @classmethod
    def empty(cls, B, Hkv, device):
        return cls(torch.zeros(B, Hkv, 0, device=device), torch.zeros(B, Hkv, 0, dtype=torch.bool, device=device))

    def extend(self, S: int, valid: torch.Tensor) -> None:
        n = S - self.scores.shape[-1]
        if n < 0:
            raise ValueError(f"H2O state holds {self.scores.shape[-1]} positions but the cache only {S}")
        if n:
            B, Hkv = self.scores.shape[:2]
            self.scores = torch.cat([self.scores, self.scores.new_zeros(B, Hkv, n)], -1)
            self.alive = torch.cat([self.alive, torch.ones(B, Hkv, n, dtype=torch.bool, device=self.alive.device)], -1)
        self.alive = self.alive & valid.unsqueeze(1)


def h2o_prefill_scores(q_all, K, allowed=None, scaling=None, chunk=256) -> torch.Tensor:
    """H2O's statistics after a dense prefill: the attention each key received, summed over the prompt's queries and
    over the GQA group. q_all [B, H, T, d]; K [B, Hkv, S, d]; allowed [B, T, S] bool, which keys each query sees
    (None: causal with the queries at the end of the keys, no padding) -> [B, Hkv, S] fp32.
    """
    B, H, T, d = q_all.shape
    _, Hkv, S, _ = K.shape
    g = H // Hkv
    if allowed is None:
        allowed = torch.ones(T, S, dtype=torch.bool, device=q_all.device).tril(S - T).expand(B, T, S)
    out = torch.zeros(B, Hkv, S, device=q_all.device)
    scale = _scale(scaling, d)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        qc = q_all[:, :, t0:t1].reshape(B, Hkv, g, t1 - t0, d)
        logits = torch.matmul((qc.float() * scale).to(K.dtype), K.unsqueeze(2).transpose(-1, -2)).float()
        ok = allowed[:, t0:t1].view(B, 1, 1, t1 - t0, S)
        p = torch.softmax(logits.masked_fill(~ok, NEG_INF), -1).nan_to_num(0.0)  # padding queries see nothing
        out += p.sum((2, 3))
    return out


def h2o_attention(q, K, V, *, k, local_window, state: H2OState, valid=None, scaling=None):
    """H2O (Zhang et al., NeurIPS 2023): a cache of k tokens, the local_window most recent plus the heavy hitters
    (largest accumulated attention); before each step the cache is cut back to k by evicting, permanently, the
    non-recent positions with the smallest accumulated score. Then exact attention on the k cached tokens, whose
    probabilities are added to the statistics. `state` is updated in place.
    """
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    dev = q.device
    v = _valid(valid, B, S, dev)
    k = _per_seq(k, B, dev)
    lw = _per_seq(local_window, B, dev)
    state.extend(S, v)
    alive = state.alive
    recent = _last_positions(v, lw).unsqueeze(1)
    n_evict = (alive.sum(-1) - k.view(B, 1)).clamp_min(0)                            # [B, Hkv]
    evictable = alive & ~recent
    order = torch.sort(state.scores.masked_fill(~evictable, float("inf")), dim=-1, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(S, device=dev).expand(B, Hkv, S).contiguous())
    alive = alive & ~(evictable & (rank < n_evict.unsqueeze(-1)))
    state.alive = alive
    idx, ok = _topk_sets(alive.float(), k, alive)                                     # the (up to k) cached positions
    qg = q.view(B, Hkv, g, d)
    y, p = _attend(qg, _gather_rows(K, idx), _gather_rows(V, idx), ok, _scale(scaling, d))
    state.scores = state.scores.scatter_add(-1, idx, (p.sum(2) * ok))
    return y.reshape(B, H, d), Fetched("h2o", alive.clone(), v.sum(1))


def lm_infinite_attention(q, K, V, *, k, local_window, sinks, valid=None, scaling=None):
    """LM-Infinite / StreamingLLM: the first `sinks` tokens plus the `local_window` most recent (k = sinks + window).

    Not modelled: LM-Infinite's cap on relative distance and StreamingLLM's position re-indexing (RoPE is applied
    before the cache here), so this is the attention pattern and its traffic, not every detail of those methods.
    """
    del k  # the set is sinks + window; k = sinks + window in the registry's recipe
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    dev = q.device
    v = _valid(valid, B, S, dev)
    keep = _first_valid_positions(v, _per_seq(sinks, B, dev)) | _last_positions(v, _per_seq(local_window, B, dev))
    keep = keep.unsqueeze(1).expand(B, Hkv, S)
    idx, ok = _topk_sets(keep.float(), keep.sum(-1).max(-1).values, keep)
    y, _ = _attend(q.view(B, Hkv, g, d), _gather_rows(K, idx), _gather_rows(V, idx), ok, _scale(scaling, d))
    return y.reshape(B, H, d), Fetched("lm-infinite", _rows_mask(idx, ok, S), v.sum(1))


def flexgen_attention(q, K, V, *, k, valid=None, scaling=None):
    """FlexGen's top-k sparse attention (Sheng et al., ICML 2023): exact scores from all of K, then only the top-k
    rows of V by exact probability (summed over the GQA group). As FlexGen's code, the newest token is always among
    the k and the probabilities are not renormalised: y = sum over the k of p_i v_i.
    """
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    dev = q.device
    v = _valid(valid, B, S, dev)
    k = _per_seq(k, B, dev)
    p = dense_probs(q, K, v, scaling)                                                 # reads all of K
    score = p.sum(2).masked_fill(_last_positions(v, torch.ones_like(k)).unsqueeze(1), float("inf"))
    score = score.masked_fill(~v.unsqueeze(1), NEG_INF)
    idx, ok = _topk_sets(score, k, v.unsqueeze(1).expand(B, Hkv, S))
    psel = p.gather(-1, idx.unsqueeze(2).expand(B, Hkv, g, idx.shape[-1])) * ok.unsqueeze(2)
    y = torch.matmul(psel.to(V.dtype), _gather_rows(V, idx)).float()
    return y.reshape(B, H, d), Fetched("flexgen", _rows_mask(idx, ok, S), v.sum(1))


def quest_page_bounds(K, valid, page_size):
    """Per-page element-wise min and max of the keys, pages of `page_size` tokens counted from each sequence's first
    valid position. -> (kmin, kmax) [B, Hkv, n_pages, d] (padding pages hold +inf/-inf), page id [B, S] (-1 padding),
    pages [B].
    """
    B, Hkv, S, d = K.shape
    first = (~valid).sum(1, keepdim=True)                                             # left padding
    page = torch.where(valid, (torch.arange(S, device=K.device).view(1, S) - first) // page_size, -1)
    n_pages = -(-valid.sum(1) // page_size)
    P = int(n_pages.max())
    idx = page.clamp_min(0).view(B, 1, S, 1).expand(B, Hkv, S, d)
    Kf = K.float()
    vm = valid.view(B, 1, S, 1)
    kmin = torch.full((B, Hkv, P, d), float("inf"), device=K.device).scatter_reduce(
        2, idx, Kf.masked_fill(~vm, float("inf")), "amin")
    kmax = torch.full((B, Hkv, P, d), NEG_INF, device=K.device).scatter_reduce(
        2, idx, Kf.masked_fill(~vm, NEG_INF), "amax")
    return kmin, kmax, page, n_pages


def quest_attention(q, K, V, *, k, page_size, valid=None, scaling=None):
    """Quest (Tang et al., ICML 2024): per page of P tokens the min and max key vectors give an upper bound of q.k,
    sum_j max(q_j min_j, q_j max_j); the top k/P pages by that bound (summed over the GQA group) are read in full.
    The newest page (holding the token being decoded) is always among them. A partial last page has fewer than P
    tokens, so the positions read can be fewer than k.
    """
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    dev = q.device
    v = _valid(valid, B, S, dev)
    P = int(page_size)
    kmin, kmax, page, n_pages = quest_page_bounds(K, v, P)
    qg = q.view(B, Hkv, g, d).float()
    bound = torch.maximum(qg.unsqueeze(3) * kmin.unsqueeze(2), qg.unsqueeze(3) * kmax.unsqueeze(2)).sum(-1).sum(2)
    n_pages_max = kmin.shape[2]
    pid = torch.arange(n_pages_max, device=dev).view(1, 1, -1)
    real = pid < n_pages.view(B, 1, 1)
    bound = bound.masked_fill(pid == (n_pages.view(B, 1, 1) - 1), float("inf")).masked_fill(~real, NEG_INF)
    n_sel = torch.minimum(_per_seq(k, B, dev) // P, n_pages).clamp_min(1)
    pidx, pok = _topk_sets(bound, n_sel, real.expand(B, Hkv, n_pages_max))
    chosen = torch.zeros(B, Hkv, n_pages_max + 1, dtype=torch.bool, device=dev)
    chosen = chosen.scatter(2, pidx.masked_fill(~pok, n_pages_max), True)[..., :n_pages_max]
    rows = chosen.gather(2, page.clamp_min(0).view(B, 1, S).expand(B, Hkv, S)) & v.view(B, 1, S)
    idx, ok = _topk_sets(rows.float(), rows.sum(-1).max(-1).values, rows)
    y, _ = _attend(qg, _gather_rows(K, idx), _gather_rows(V, idx), ok, _scale(scaling, d))
    return y.reshape(B, H, d), Fetched("quest", rows, v.sum(1), pages=n_pages)


def _approx_then_exact(q, K, V, Kc, qc, k, valid, scaling, name, components):
    """Shared by Loki and Double Sparsity: approximate logits qc . Kc over every valid position (qc [B, Hkv, g, r],
    Kc [B, Hkv, S, r]), softmax per query head (scaled as the exact logits), summed over the GQA group; the top-k
    positions' K and V rows, exact attention on them (not renormalised beyond the chosen set)."""
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    scale = _scale(scaling, d)
    logits_hat = torch.matmul((qc * scale).to(K.dtype), Kc.transpose(-1, -2)).float()
    logits_hat = logits_hat.masked_fill(~valid.view(B, 1, 1, S), NEG_INF)
    score = torch.softmax(logits_hat, dim=-1).sum(2).masked_fill(~valid.unsqueeze(1), NEG_INF)
    idx, ok = _topk_sets(score, _per_seq(k, B, q.device), valid.unsqueeze(1).expand(B, Hkv, S))
    y, _ = _attend(q.view(B, Hkv, g, d), _gather_rows(K, idx), _gather_rows(V, idx), ok, scale)
    return y.reshape(B, H, d), Fetched(name, _rows_mask(idx, ok, S), valid.sum(1), components=components)


def loki_attention(q, K, V, *, r, k, basis, valid=None, scaling=None):
    """Loki (Singhania et al., NeurIPS 2024, Algorithm 1): keys are kept in their offline PCA basis; the query is
    rotated into it, the first r components of q and of every key give approximate scores, the top k positions (summed
    over the GQA group) are attended exactly. basis [Hkv, d, d]: orthonormal columns in order of decreasing variance
    (`sparq_ref.calibration`). A rotation keeps dot products, so the exact step reads K and V as stored; r = d_h and
    k = S reproduce dense attention (up to float rounding)."""
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    r = int(r)
    if not 1 <= r <= d or tuple(basis.shape) != (Hkv, d, d):
        raise ValueError(f"r = {r} must be between 1 and head_dim = {d}, basis [Hkv, d, d] = {(Hkv, d, d)}, "
                         f"got {tuple(basis.shape)}")
    v = _valid(valid, B, S, q.device)
    P = basis[:, :, :r].to(device=q.device, dtype=torch.float32)                     # [Hkv, d, r]
    qc = torch.matmul(q.view(B, Hkv, g, d).float(), P.unsqueeze(0))                    # [B, Hkv, g, r]
    Kc = torch.matmul(K.float(), P.unsqueeze(0)).to(K.dtype)                           # the stored leading components
    comps = torch.arange(r, device=q.device).expand(B, Hkv, r)
    return _approx_then_exact(q, K, V, Kc, qc, k, v, scaling, "loki", comps)


def double_sparsity_attention(q, K, V, *, r, k, channels, valid=None, scaling=None):
    """Double Sparsity (Yang et al. 2024, arXiv 2408.07092): r channels per KV head chosen offline (`channels`
    [Hkv, >= r], most important first: `sparq_ref.calibration`), whose values for every key form the label cache;
    approximate scores from those channels of q and of the labels, the top k positions (summed over the GQA group)
    attended exactly. r = d_h and k = S reproduce dense attention."""
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    r = int(r)
    if not 1 <= r <= d or channels.shape[0] != Hkv or channels.shape[1] < r:
        raise ValueError(f"r = {r} must be between 1 and head_dim = {d}, with at least r channels for each of "
                         f"{Hkv} KV heads (got {tuple(channels.shape)})")
    v = _valid(valid, B, S, q.device)
    ch = channels[:, :r].to(q.device).long().expand(B, Hkv, r)                        # [B, Hkv, r]
    qc = q.view(B, Hkv, g, d).float().gather(-1, ch.unsqueeze(2).expand(B, Hkv, g, r))
    labels = K.gather(-1, ch.unsqueeze(2).expand(B, Hkv, S, r))                        # the label cache
    return _approx_then_exact(q, K, V, labels, qc, k, v, scaling, "double-sparsity", ch)


def snapkv_votes(q_window, K, allowed, scaling=None) -> torch.Tensor:
    """SnapKV's raw votes after a prefill: the attention each key gets from each of the prompt's last queries, summed
    over the GQA group. q_window [B, H, w, d] (the last w prompt queries, post-rotary); K [B, Hkv, S, d];
    allowed [B, w, S] (causal and padding) -> [B, Hkv, w, S] fp32, zero where not allowed."""
    B, H, w, d = q_window.shape
    Hkv, S = K.shape[1], K.shape[2]
    g = H // Hkv
    qc = q_window.reshape(B, Hkv, g, w, d)
    logits = torch.matmul((qc.float() * _scale(scaling, d)).to(K.dtype), K.unsqueeze(2).transpose(-1, -2)).float()
    p = torch.softmax(logits.masked_fill(~allowed.view(B, 1, 1, w, S), NEG_INF), -1).nan_to_num(0.0)
    return p.sum(2)


def snapkv_select(votes, valid, k, window, kernel) -> torch.Tensor:
    """SnapKV's one-shot selection (Li et al., NeurIPS 2024): of a prompt of S positions (valid [B, S]), keep the last
    `window` and the k - window others with the most votes from those `window` queries, the votes smoothed by an
    average pool of `kernel` positions. votes [B, Hkv, >= window, S] (`snapkv_votes`, last rows = last queries);
    k, window: [B] long (k <= window keeps the window only). -> keep [B, Hkv, S] bool."""
    B, Hkv, W, S = votes.shape
    dev = votes.device
    win = _last_positions(valid, window)                                             # [B, S]
    use = torch.arange(W, device=dev).view(1, W) >= (W - window).view(B, 1)          # the last `window` queries
    v = (votes * use.view(B, 1, W, 1)).sum(2)                                         # [B, Hkv, S]
    prefix = valid & ~win
    v = v.masked_fill(~prefix.unsqueeze(1), 0.0)
    pooled = torch.nn.functional.avg_pool1d(v.reshape(B * Hkv, 1, S), kernel, stride=1, padding=kernel // 2,
                                            count_include_pad=False).reshape(B, Hkv, S)
    pooled = pooled.masked_fill(~prefix.unsqueeze(1), NEG_INF)
    n = (k - window).clamp_min(0)
    idx, ok = _topk_sets(pooled, n.clamp_min(1), prefix.unsqueeze(1).expand(B, Hkv, S))
    ok = ok & (n.view(B, 1, 1) > 0)
    return _rows_mask(idx, ok, S) | win.unsqueeze(1)


def snapkv_attention(q, K, V, *, keep, valid=None, scaling=None):
    """SnapKV's decode step: exact attention over the positions kept at the end of prefill (keep [B, Hkv, S0]) and
    every position appended since (S0 .. S-1)."""
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    v = _valid(valid, B, S, q.device)
    rows = torch.ones(B, Hkv, S, dtype=torch.bool, device=q.device)
    rows[..., :keep.shape[-1]] = keep
    rows = rows & v.unsqueeze(1)
    idx, ok = _topk_sets(rows.float(), rows.sum(-1).max(-1).values, rows)
    y, _ = _attend(q.view(B, Hkv, g, d), _gather_rows(K, idx), _gather_rows(V, idx), ok, _scale(scaling, d))
    return y.reshape(B, H, d), Fetched("snapkv", rows, v.sum(1))


def index_scores(index_q, index_w, index_keys) -> torch.Tensor:
    """DSA's lightning indexer, I_s = sum_j w_j ReLU(q_j . k_s): index_q [B, ..., H_I, d_I], index_w [B, ..., H_I],
    index_keys [B, S, d_I] -> [B, ..., S] fp32 (one query per sequence in decode, T of them in training)."""
    dots = torch.einsum("b...jd,bsd->b...js", index_q.float(), index_keys.float())
    return torch.einsum("b...j,b...js->b...s", index_w.float(), torch.relu(dots))


def dsa_attention(q, K, V, *, k, index_q, index_w, index_keys, valid=None, scaling=None):
    """DeepSeek Sparse Attention (DeepSeek-V3.2-Exp, section 2.1): the lightning indexer scores every position,
    I_s = sum_j w_j ReLU(q^I_j . k^I_s) (index_q [B, H_I, d_I], index_w [B, H_I], index_keys [B, S, d_I]: the
    indexer cache, `sparq_ref.calibration`), and the top k positions (k: int or [B]) are attended exactly by every
    head: one set per sequence, shared by all KV heads (DeepSeek selects per query token for all heads). k = S
    reproduces dense attention."""
    B, H, Hkv, g, S, d = _shapes(q, K, V)
    if index_keys.shape[:2] != (B, S) or index_q.shape[0] != B or index_w.shape != index_q.shape[:2]:
        raise ValueError(f"indexer shapes: queries {tuple(index_q.shape)}, weights {tuple(index_w.shape)}, keys "
                         f"{tuple(index_keys.shape)} for {B} sequences of {S} positions")
    v = _valid(valid, B, S, q.device)
    scores = index_scores(index_q, index_w, index_keys).masked_fill(~v, NEG_INF).view(B, 1, S)
    idx, ok = _topk_sets(scores, _per_seq(k, B, q.device), v.view(B, 1, S))
    idx, ok = idx.expand(B, Hkv, -1), ok.expand(B, Hkv, -1)
    y, _ = _attend(q.view(B, Hkv, g, d), _gather_rows(K, idx), _gather_rows(V, idx), ok, _scale(scaling, d))
    return y.reshape(B, H, d), Fetched("dsa", _rows_mask(idx, ok, S), v.sum(1),
                                       extra={"index_dim": int(index_keys.shape[-1])})


# ----------------------------------------------------------------------------------------------------------------
# traffic counted from the fetched sets


def elements_touched(f: Fetched, head_dim: int) -> dict[str, torch.Tensor]:
    """Elements read and written per (sequence, KV head) [B, Hkv], by the component names of
    `sparq_sim.simulator.strategies.traffic_components`, counted from the index sets the step actually used. A
    per-layer component (DSA's indexer cache) is counted on KV head 0, so that the heads sum to the layer's.
    """
    d = int(head_dim)
    B, Hkv, S = f.rows.shape
    S_b = f.seq_len.view(B, 1).expand(B, Hkv)
    n_rows = f.rows.sum(-1)
    const = torch.full_like(n_rows, d)
    out = {}
    if f.strategy == "dense":
        out = {"k_all": n_rows * d, "v_all": n_rows * d}
    elif f.strategy == "sparq":
        out = {"k_columns": S_b * f.components.shape[-1], "k_rows": n_rows * d, "v_rows": n_rows * d}
    elif f.strategy == "h2o":
        out = {"k_rows": n_rows * d, "v_rows": n_rows * d}
    elif f.strategy in ("lm-infinite", "snapkv"):
        out = {"k_rows": n_rows * d, "v_rows": n_rows * d}
    elif f.strategy == "dsa":   # the indexer cache is the layer's, not a head's: counted once, on KV head 0
        di = int(f.extra["index_dim"])
        head0 = (torch.arange(Hkv, device=n_rows.device) == 0).view(1, Hkv).expand(B, Hkv).long()
        out = {"index_keys_read": head0 * S_b * di, "k_rows": n_rows * d, "v_rows": n_rows * d,
               "index_key_write": head0 * di}
    elif f.strategy == "loki":
        out = {"k_columns": S_b * f.components.shape[-1], "k_rows": n_rows * d, "v_rows": n_rows * d}
    elif f.strategy == "double-sparsity":
        r = f.components.shape[-1]
        out = {"label_read": S_b * r, "k_rows": n_rows * d, "v_rows": n_rows * d,
               "label_write": torch.full_like(n_rows, r)}
    elif f.strategy == "flexgen":
        out = {"k_all": S_b * d, "v_rows": n_rows * d}
    elif f.strategy == "quest":
        out = {"page_minmax": 2 * f.pages.view(B, 1).expand(B, Hkv) * d, "k_rows": n_rows * d, "v_rows": n_rows * d}
    else:
        raise ValueError(f"unknown strategy {f.strategy!r}")
    out["kv_append"] = 2 * const                                                     # the new token's k and v
    if f.strategy == "sparq" and f.extra.get("reallocate", True):
        out["v_mean_read"] = const.clone()
        out["v_mean_write"] = const.clone()
    if f.strategy == "h2o":
        out["score_stats_read"] = S_b.clone()
        out["score_stats_write"] = S_b.clone()
    return out


def total_elements(f: Fetched, head_dim: int) -> torch.Tensor:
    """Sum of `elements_touched`: [B, Hkv]."""
    return sum(elements_touched(f, head_dim).values())
