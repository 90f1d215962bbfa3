"""Offline key statistics for the strategies that choose key components ahead of time: Loki and Double Sparsity.

Both methods calibrate once per model on sample text, then decode with what they learnt:

- Loki (Singhania et al., NeurIPS 2024, arXiv 2406.02542, section 4): principal component analysis of the keys of
  each layer and KV head (post-rotary here: the keys as the cache holds them). The basis (eigenvectors of the keys'
  covariance, by decreasing eigenvalue) rotates queries and keys; the first r components score every position.
- Double Sparsity (Yang et al. 2024, arXiv 2408.07092, section 3): the "outlier" channels of each layer and KV head,
  ranked by the channel's contribution to q.k on calibration text, sum over tokens t (and over the query heads of the
  GQA group) of |q_t,i k_t,i|. The first r channels form the label cache.

The statistics come from a dense prefill (`hf.Session` with `key_stats`) of `CALIBRATION_SEQUENCES` sequences of
`CALIBRATION_TOKENS` tokens: the user's `--text` when given, else the standard library's docstrings taken from the
end of their list (the tasks draw passages at random from the same list, so a calibration passage may also appear in
a task; the calibration keeps key statistics only, never answers). The same model and text give the same
calibration in every process (deterministic), so a Ray worker computes exactly what a single process does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

CALIBRATION_SEQUENCES = 4
CALIBRATION_TOKENS = 512
NEEDS_CALIBRATION = ("loki", "double-sparsity")


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

    def describe(self, strategy: str, r: int | None = None) -> dict:
        """What a trace's metadata keeps of the calibration: its text and size, and per layer and KV head Double
        Sparsity's first r channels, or the share of the keys' variance in Loki's first r components."""
        d = {"source": self.source, "tokens": int(self.tokens)}
        layers = sorted(self.basis)
        if strategy == "double-sparsity":
            d["channels"] = {str(i): self.channels[i][:, :r].tolist() for i in layers}
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

    def add(self, layer: int, query, key, valid) -> None:
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
    paras, source = calibration_texts(text)
    tok = lm.tokenizer
    ids: list[int] = []
    for p in paras:
        ids += tok(p + "\n\n", add_special_tokens=False).input_ids
        if len(ids) >= sequences * tokens:
            break
    n = min(sequences, max(1, len(ids) // tokens))
    tokens = min(tokens, len(ids))
    batch = torch.tensor([ids[i * tokens:(i + 1) * tokens] for i in range(n)])
    return calibrate_on(lm.model, batch, f"{source}; {n} x {tokens} tokens")


def calibrate_on(model, input_ids, source: str = "") -> KeyCalibration:
    """Key statistics of a transformers model from dense prefills of the rows of input_ids [n, T], one at a time
    (the same sums whatever n, and little memory)."""
    from .hf import Session, StrategyConfig, install

    stats = KeyStats()
    install(model)
    with torch.no_grad(), Session(StrategyConfig("dense"), key_stats=stats):
        for row in input_ids:
            model(input_ids=row.view(1, -1).to(model.device), use_cache=False)
    return stats.finish(source or f"{input_ids.shape[0]} x {input_ids.shape[1]} tokens")


def for_model(lm, strategy: str, text=None) -> KeyCalibration | None:
    """The model's calibration when `strategy` needs one (computed once per loaded model and text), else None."""
    if strategy not in NEEDS_CALIBRATION:
        return None
    cache = lm.__dict__.setdefault("_key_calibration", {})
    key = None if text is None else str(text)
    if key not in cache:
        cache[key] = calibrate(lm, text)
    return cache[key]
