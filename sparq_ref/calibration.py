"""Offline key statistics for the strategies that choose key components ahead of time: Loki and Double Sparsity.

Both methods calibrate once per model on sample text, then decode with what they learnt:

- Loki (Singhania et al., NeurIPS 2024, arXiv 2406.02542, section 4): principal component analysis of the keys of
  each layer and KV head (post-rotary here: the keys as the cache holds them). The basis (eigenvectors of the keys'
  covariance, by decreasing eigenvalue) rotates queries and keys; the first r components score every position.
- Double Sparsity (Yang et al. 2024, arXiv 2408.07092, section 3): the "outlier" channels of each layer and KV head,
  ranked by the channel's contribution to q.k on calibration text, sum over tokens t (and over the query heads of the
  GQA group) of |q_t,i k_t,i|. The first r channels form the label cache.

- DeepSeek Sparse Attention (DeepSeek-V3.2-Exp technical report, section 2.1): a lightning indexer per layer,
  I_t,s = sum_j w_t,j ReLU(q^I_t,j . k^I_s), trained, as DeepSeek's dense warm-up stage does, by distilling the
  layer's dense attention (summed over heads and L1-normalised) with a KL loss, the model frozen (`train_indexer`;
  here 2 x 1024 tokens, 128 query positions of each, 60 Adam steps per layer: about a minute on two CPU cores).
  DeepSeek projects the indexer's queries from the query latent and its keys and weights from the hidden state;
  here all three are linear maps of the layer's post-rotary queries (all heads) and keys (all KV heads), which the
  attention function sees and which carry the positions (through the rotary embedding). The indexer keys are cached
  in FP8 (e4m3, one scale per token), as DeepSeek-V3.2 caches them.

The statistics come from a dense prefill (`hf.Session` with `key_stats`) of `CALIBRATION_SEQUENCES` sequences of
`CALIBRATION_TOKENS` tokens: the user's `--text` when given, else the standard library's docstrings taken from the
end of their list (the tasks draw passages at random from the same list, so a calibration passage may also appear in
a task; the calibration keeps key statistics only, never answers). The same model and text give the same
calibration in every process (deterministic), so a Ray worker computes exactly what a single process does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .attention import index_scores

CALIBRATION_SEQUENCES = 4
CALIBRATION_TOKENS = 512
NEEDS_CALIBRATION = ("loki", "double-sparsity", "dsa")
# DSA's indexer distillation: sequences of calibration text and their length (the contexts it must serve: a
# shorter training context does not carry over to 1024 tokens), training queries per sequence, Adam steps per layer
# and its learning rate (3e-3 lets some layers collapse), and the seed of the initial weights and of the queries
INDEXER_SEQUENCES = 2
INDEXER_TOKENS = 1024
INDEXER_QUERIES = 128
INDEXER_STEPS = 60
INDEXER_LR = 1e-3
INDEXER_SEED = 0
FP8_MAX = 448.0      # the largest float8 e4m3 value


def fp8_roundtrip(x: torch.Tensor) -> torch.Tensor:
    """x [..., d] stored as float8 e4m3 with one fp32 scale per row (amax / 448), read back as fp32: what DSA's
    indexer cache holds."""
    x = x.float()
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    return (x / scale).to(torch.float8_e4m3fn).float() * scale


class Indexer(torch.nn.Module):
    """One layer's lightning indexer: H_I heads of width d_I. Queries and the heads' weights from the layer's
    post-rotary queries (H d_h), one key per token from its post-rotary keys (H_kv d_h)."""

    def __init__(self, q_in: int, k_in: int, heads: int, dim: int, generator: torch.Generator | None = None,
                 head_dim: int | None = None, noise: float = 0.02):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.scale = 1.0 / math.sqrt(heads * dim)   # DeepSeek's H_I^-1/2 on the weights and d_I^-1/2 on q.k
        wq = torch.randn(q_in, heads * dim, generator=generator) * noise / math.sqrt(q_in)
        wk = torch.randn(k_in, dim, generator=generator) * noise / math.sqrt(k_in)
        ww = torch.randn(q_in, heads, generator=generator) * noise / math.sqrt(q_in)
        d = head_dim or dim
        if dim <= d and q_in % d == 0 and k_in % d == 0:
            # start from the model's own logits: the key is the KV heads' keys summed (first d_I channels), index
            # head j reads query head j's (spread over the query heads), and the heads start equally weighted
            H, Hkv = q_in // d, k_in // d
            for h in range(Hkv):
                wk[h * d:h * d + dim] += torch.eye(dim) / Hkv
            for j in range(heads):
                h = j * H // heads
                wq[h * d:h * d + dim, j * dim:(j + 1) * dim] += torch.eye(dim) * Hkv
        self.wq, self.wk, self.ww = (torch.nn.Parameter(x) for x in (wq, wk, ww))
        # a bias on the heads' weights (DeepSeek's projection has none), so that the heads can start equally weighted
        self.bw = torch.nn.Parameter(torch.ones(heads))

    def keys(self, K: torch.Tensor) -> torch.Tensor:
        """K [B, Hkv, S, d] -> indexer keys [B, S, d_I] (fp32, not yet quantised)."""
        B, Hkv, S, d = K.shape
        return K.float().permute(0, 2, 1, 3).reshape(B, S, Hkv * d) @ self.wk

    def queries(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [..., H, d] -> (queries [..., H_I, d_I], weights [..., H_I])."""
        x = q.float().flatten(-2)
        return (x @ self.wq).unflatten(-1, (self.heads, self.dim)), (x @ self.ww + self.bw) * self.scale

    @staticmethod
    def scores(qi: torch.Tensor, w: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        """I_t,s = sum_j w_t,j ReLU(q_t,j . k_s): qi [B, T, H_I, d_I], w [B, T, H_I], ki [B, S, d_I] -> [B, T, S]."""
        return index_scores(qi, w, ki)


class QKCollector:
    """Keeps the post-rotary queries and keys of every prefill (per layer), for `train_indexer`; the `add` of
    `KeyStats`, called by `hf.Session.on_prefill`."""

    def __init__(self):
        self.q: dict[int, list[torch.Tensor]] = {}
        self.k: dict[int, list[torch.Tensor]] = {}
        self.scaling: dict[int, float | None] = {}

    def add(self, layer: int, query, key, valid, scaling=None) -> None:
        self.q.setdefault(layer, []).append(query.detach().float().cpu())
        self.k.setdefault(layer, []).append(key.detach().float().cpu())
        self.scaling[layer] = scaling


@dataclass
class KeyCalibration:
    """Per layer: Loki's PCA basis [Hkv, d, d] (columns by decreasing variance) and its variances [Hkv, d]; Double
    Sparsity's channel order [Hkv, d] (most important first) and the channels' importance [Hkv, d]."""

    basis: dict[int, torch.Tensor] = field(default_factory=dict)
    variance: dict[int, torch.Tensor] = field(default_factory=dict)
    channels: dict[int, torch.Tensor] = field(default_factory=dict)
    importance: dict[int, torch.Tensor] = field(default_factory=dict)
    tokens: int = 0
    source: str = ""
    indexer: dict[int, Indexer] = field(default_factory=dict)   # DSA: one trained indexer per layer
    indexer_info: dict = field(default_factory=dict)             # ... its shape, data and KL before / after

    def describe(self, strategy: str, r: int | None = None) -> dict:
        """What a trace's metadata keeps of the calibration: its text and size, and per layer and KV head Double
        Sparsity's first r channels, or the share of the keys' variance in Loki's first r components."""
        d = {"source": self.source, "tokens": int(self.tokens)}
        layers = sorted(self.basis)
        if strategy == "double-sparsity":
            d["channels"] = {str(i): self.channels[i][:, :r].tolist() for i in layers}
        elif strategy == "dsa":
            d = {"source": self.source, **self.indexer_info}
        elif strategy == "loki":
            d["explained_variance"] = {
                str(i): [round(float(x), 6) for x in (self.variance[i][:, :r].sum(-1) /
                                                      self.variance[i].sum(-1).clamp_min(1e-30))]
                for i in layers}
        return d


class KeyStats:
    """Running sums over prefill tokens, per layer and KV head (float64): count, sum k, sum k k^T, and sum over the
    group of |q_i k_i|. `add` is called by `hf.Session.on_prefill`."""

    def __init__(self):
        self.n: dict[int, torch.Tensor] = {}
        self.s1: dict[int, torch.Tensor] = {}
        self.s2: dict[int, torch.Tensor] = {}
        self.qk: dict[int, torch.Tensor] = {}

    def add(self, layer: int, query, key, valid, scaling=None) -> None:
        """query [B, H, T, d] (post-rotary), key [B, Hkv, T, d] of the same T tokens, valid [B, T] bool."""
        B, H, T, d = query.shape
        Hkv = key.shape[1]
        m = valid.view(B, 1, T, 1).to(torch.float64)
        k = key.to(torch.float64) * m                                                 # [B, Hkv, T, d]
        q = query.to(torch.float64).view(B, Hkv, H // Hkv, T, d)
        n = m.sum((0, 2)).view(1).expand(Hkv)
        s1 = k.sum((0, 2))
        s2 = torch.einsum("bhti,bhtj->hij", k, k)
        qk = (q.abs().sum(2) * k.abs()).sum((0, 2))                                   # [Hkv, d]
        if layer not in self.n:
            self.n[layer], self.s1[layer], self.s2[layer], self.qk[layer] = n.clone(), s1, s2, qk
        else:
            self.n[layer] += n
            self.s1[layer] += s1
            self.s2[layer] += s2
            self.qk[layer] += qk

    def finish(self, source: str) -> KeyCalibration:
        cal = KeyCalibration(source=source)
        for layer in sorted(self.n):
            n = self.n[layer].clamp_min(1).view(-1, 1, 1)
            mean = self.s1[layer].unsqueeze(-1) / n
            cov = self.s2[layer] / n - mean * mean.transpose(-1, -2)
            cov = (cov + cov.transpose(-1, -2)) / 2
            evals, evecs = torch.linalg.eigh(cov)                                      # ascending
            evals, evecs = evals.flip(-1), evecs.flip(-1)
            # a sign convention, so that the basis does not depend on the eigen-solver's choice
            sign = torch.where(evecs.gather(1, evecs.abs().argmax(1, keepdim=True)) < 0, -1.0, 1.0)
            cal.basis[layer] = (evecs * sign).to(torch.float32)
            cal.variance[layer] = evals.clamp_min(0).to(torch.float32)
            imp = self.qk[layer]
            cal.channels[layer] = torch.sort(imp, dim=-1, descending=True, stable=True).indices
            cal.importance[layer] = imp.to(torch.float32)
            cal.tokens = int(self.n[layer][0])
        return cal


def calibration_texts(text=None) -> tuple[tuple[str, ...], str]:
    """The paragraphs calibration reads, and a description of them."""
    from . import tasks as T

    if text is not None:
        return T.file_paragraphs(text), f"--text {text}"
    paras = T.stdlib_paragraphs()
    return tuple(reversed(paras)), "Python standard-library docstrings (from the end of their list)"


def calibrate(lm, text=None, *, sequences: int = CALIBRATION_SEQUENCES, tokens: int = CALIBRATION_TOKENS
              ) -> KeyCalibration:
    """Key statistics of a loaded model (`sparq_ref.model.LoadedModel`) from dense prefills of `sequences` x
    `tokens` tokens of calibration text (consecutive paragraphs)."""
    batch, source = calibration_batch(lm, text, sequences=sequences, tokens=tokens)
    return calibrate_on(lm.model, batch, source)


def calibrate_on(model, input_ids, source: str = "", *, indexer: bool = False) -> KeyCalibration:
    """Key statistics of a transformers model from dense prefills of the rows of input_ids [n, T], one at a time
    (the same sums whatever n, and little memory); with `indexer`, DSA's indexers trained on the same rows."""
    from .hf import Session, StrategyConfig, install

    stats = KeyStats()
    install(model)
    with torch.no_grad(), Session(StrategyConfig("dense"), key_stats=stats):
        for row in input_ids:
            model(input_ids=row.view(1, -1).to(model.device), use_cache=False)
    cal = stats.finish(source or f"{input_ids.shape[0]} x {input_ids.shape[1]} tokens")
    if indexer:
        cal.indexer, cal.indexer_info = train_indexer_on(model, input_ids, cal.source)
    return cal


def calibration_batch(lm, text=None, *, sequences: int = CALIBRATION_SEQUENCES, tokens: int = CALIBRATION_TOKENS):
    """(input_ids [n, T] of consecutive calibration paragraphs, a description)."""
    paras, source = calibration_texts(text)
    tok = lm.tokenizer
    ids: list[int] = []
    for p in paras:
        ids += tok(p + "\n\n", add_special_tokens=False).input_ids
        if len(ids) >= sequences * tokens:
            break
    n = min(sequences, max(1, len(ids) // tokens))
    tokens = min(tokens, len(ids))
    return torch.tensor([ids[i * tokens:(i + 1) * tokens] for i in range(n)]), f"{source}; {n} x {tokens} tokens"


def _distill_layer(q, k, scaling, heads: int, dim: int, steps: int, lr: float, gen: torch.Generator,
                   queries: int | None = None):
    """One layer's indexer from its prefill queries q [n, H, T, d] and keys k [n, Hkv, T, d]: full-batch Adam on
    KL(p || softmax(I)) averaged over the training queries, p the dense attention averaged over heads (causal, over
    all T keys). The training queries: `queries` positions drawn once (by `gen`) from the last three quarters of the
    sequence, else every position. The parameters of the lowest loss seen are kept (a step that overshoots cannot
    leave the indexer worse than its start). -> (indexer, KL of the initial and of the kept indexer), nats per query."""
    n, H, T, d = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    if queries is None or queries >= T:
        pos = torch.arange(T)
    else:
        lo = T // 4
        pos = torch.sort(torch.randperm(T - lo, generator=gen)[:queries] + lo).values
    scale = 1.0 / math.sqrt(d) if scaling is None else float(scaling)
    causal = torch.arange(T).view(1, T) <= pos.view(-1, 1)                                  # [Tq, T]
    with torch.no_grad():
        logits = torch.matmul(q[:, :, pos].reshape(n, Hkv, g, len(pos), d) * scale, k.unsqueeze(2).transpose(-1, -2))
        p = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1).mean((1, 2))      # [n, Tq, T]
        logp = torch.log(p.clamp_min(1e-30))
    ix = Indexer(H * d, Hkv * d, heads, dim, gen, head_dim=d)
    qt = q[:, :, pos].permute(0, 2, 1, 3)                                                   # [n, Tq, H, d]
    opt = torch.optim.Adam(ix.parameters(), lr=lr)

    def kl():
        qi, w = ix.queries(qt)
        s = Indexer.scores(qi, w, ix.keys(k)).masked_fill(~causal, float("-inf"))
        return (p * (logp - torch.log_softmax(s, -1)).masked_fill(~causal, 0.0)).sum(-1).mean()

    first, best, kept = None, math.inf, None
    for i in range(steps + 1):
        loss = kl()
        value = float(loss.detach())
        first = value if first is None else first
        if value < best:
            best, kept = value, [t.detach().clone() for t in ix.parameters()]
        if i == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for t, v in zip(ix.parameters(), kept):
            t.copy_(v)
    ix.requires_grad_(False)
    return ix, first, best


def train_indexer_on(model, input_ids, source: str = "", *, heads: int | None = None, dim: int | None = None,
                     steps: int = INDEXER_STEPS, lr: float = INDEXER_LR, queries: int | None = INDEXER_QUERIES
                     ) -> tuple[dict[int, Indexer], dict]:
    """DSA's lightning indexers of a transformers model: a dense prefill of each row of input_ids [n, T] keeps every
    layer's queries and keys, then each layer's indexer is distilled from its dense attention (`_distill_layer`).
    H_I and d_I default to the simulator's rule (`ModelSpec.indexer`: DeepSeek-V3.2's 64 x 128, at most half the
    query heads and the head width). Deterministic: a fixed seed, and one thread while training (a thread count
    changes float sums), so every process trains the same indexers."""
    from ..simulator import strategies as reg
    from .hf import Session, StrategyConfig, install

    col = QKCollector()
    install(model)
    with torch.no_grad(), Session(StrategyConfig("dense"), key_stats=col):
        for row in input_ids:
            model(input_ids=row.view(1, -1).to(model.device), use_cache=False)
    _, H, T, d = col.q[min(col.q)][0].shape
    heads = heads or min(reg.DSA_INDEX_HEADS, max(1, H // 2))
    dim = dim or min(reg.DSA_INDEX_DIM, d)
    gen = torch.Generator().manual_seed(INDEXER_SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out, before, after = {}, [], []
    try:
        for layer in sorted(col.q):
            q, k = torch.cat(col.q[layer]), torch.cat(col.k[layer])
            with torch.enable_grad():
                out[layer], b, a = _distill_layer(q, k, col.scaling[layer], heads, dim, steps, lr, gen, queries)
            before.append(b)
            after.append(a)
    finally:
        torch.set_num_threads(threads)
    info = {"index_heads": heads, "index_dim": dim, "tokens": int(input_ids.numel()), "steps": steps,
            "queries_per_sequence": T if not queries or queries >= T else min(queries, T - T // 4),
            "kl_start_nats": round(sum(before) / len(before), 4), "kl_end_nats": round(sum(after) / len(after), 4),
            "kl_end_by_layer": [round(x, 4) for x in after], "indexer_keys": "fp8 e4m3, one scale per token",
            "training": source or f"{input_ids.shape[0]} x {input_ids.shape[1]} tokens"}
    return out, info


def train_indexer(lm, text=None) -> tuple[dict[int, Indexer], dict]:
    """DSA's indexers of a loaded model (`sparq_ref.model.LoadedModel`), trained on `INDEXER_SEQUENCES` x
    `INDEXER_TOKENS` tokens of the calibration text."""
    batch, source = calibration_batch(lm, text, sequences=INDEXER_SEQUENCES, tokens=INDEXER_TOKENS)
    return train_indexer_on(lm.model, batch, source)


def for_model(lm, strategy: str, text=None) -> KeyCalibration | None:
    """The model's calibration when `strategy` needs one (computed once per loaded model and text), else None; for
    DSA with its trained indexers (also once)."""
    if strategy not in NEEDS_CALIBRATION:
        return None
    cache = lm.__dict__.setdefault("_key_calibration", {})
    key = None if text is None else str(text)
    if key not in cache:
        cache[key] = calibrate(lm, text)
    cal = cache[key]
    if strategy == "dsa" and not cal.indexer:
        cal.indexer, cal.indexer_info = train_indexer(lm, text)
    return cal
