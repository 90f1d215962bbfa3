"""transformers integration: decode any causal LM with a chosen strategy.

The attention function ``sparq_ref`` is registered in transformers' `AttentionInterface` (and the sdpa mask builder in
`AttentionMaskInterface` under the same name), and `install(model)` switches a model to it. While no `Session` is
active it behaves exactly like sdpa. Inside ``with session:`` (or `activate(session)`):

- prefill (query length > 1) is dense (sdpa), as in every SparQ implementation; H2O's statistics, SnapKV's votes
  (the attention of the prompt's last queries) and, when calibrating, the keys' statistics (`calibration`) are
  collected;
- each decode step (query length 1) runs the session's strategy from `sparq_ref.attention` on the whole cache, per
  layer, with per-layer, per-sequence state (SparQ's running mean of V, H2O's scores and evictions, SnapKV's kept
  positions, DSA's indexer cache) and, for Loki, Double Sparsity and DSA, the model's offline calibration;
- the elements each step touches are counted from the fetched index sets, beside the dense count for the same cache;
- with tracing on, one row per (step, layer, KV head, sequence) goes to the session's sink (see `traces/`).

The KV cache itself is left whole (H2O's eviction is a mask), so dense attention on the same q, K, V can be computed
at every step for the trace's oracle_mass and out_rel_err. Batches may be left-padded; positions in traces and seq_len
count from each sequence's first real token. Beam search and cache reordering are not supported.

Works with models whose attention calls the `AttentionInterface` (Llama, Mistral, Qwen2/3, Gemma, GPT-NeoX, Phi-3,
...). Not supported: attention logit soft-capping (Gemma 2) and learned attention sinks.
"""

from __future__ import annotations

import contextvars
import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..simulator import strategies as reg
from ..simulator.errors import UserError
from . import attention as A
from .calibration import NEEDS_CALIBRATION, fp8_roundtrip

ATTN_NAME = "sparq_ref"
_ACTIVE: contextvars.ContextVar["Session | None"] = contextvars.ContextVar("sparq_ref_session", default=None)
_REGISTERED = False


# ----------------------------------------------------------------------------------------------------------------
# strategy configuration


@dataclass(frozen=True)
class StrategyConfig:
    """A strategy and how its parameters are chosen: the registry's recipe for `compression`, or explicit values.

    Parameters depending on the context (k = S / C, ...) are resolved by `strategies.resolve_params` at every decode
    step for every sequence, from that sequence's current length, so each step moves 1/C of dense (the paper's recipe).
    reallocate: SparQ's step 3 (mean-value reallocation); the paper dropped it for GQA models.
    """

    strategy: str
    compression: float = 1.0
    r: int | None = None
    k: int | None = None
    local_window: int | None = None
    page_size: int | None = None
    sinks: int | None = None
    reallocate: bool = True

    def __post_init__(self):
        object.__setattr__(self, "strategy", reg.get_strategy(self.strategy).name)
        c = self.compression
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 1:
            raise UserError(f"--compression must be a number >= 1 (1 = dense transfers), got {c!r}")

    def resolve(self, seq_len, head_dim: int) -> dict[str, np.ndarray]:
        return reg.resolve_params(self.strategy, np.asarray(seq_len, dtype=np.int64), head_dim, self.compression,
                                  r=self.r, k=self.k, local_window=self.local_window, page_size=self.page_size,
                                  sinks=self.sinks)

    def describe(self) -> dict:
        d = {"strategy": self.strategy, "compression": float(self.compression)}
        for f in ("r", "k", "local_window", "page_size", "sinks"):
            if getattr(self, f) is not None:
                d[f] = int(getattr(self, f))
        if self.strategy == "sparq":
            d["reallocate"] = self.reallocate
        return d


# ----------------------------------------------------------------------------------------------------------------
# per-layer state and the session


@dataclass
class LayerState:
    v_sum: torch.Tensor | None = None       # SparQ: running sum of V over the valid positions [B, Hkv, d] fp32
    v_count: torch.Tensor | None = None     # ... and their number [B]
    v_seen: int = 0                         # cache length covered by v_sum
    h2o: A.H2OState | None = None
    snap_keep: torch.Tensor | None = None   # SnapKV: prompt positions kept at the end of prefill [B, Hkv, S0]
    index_keys: torch.Tensor | None = None  # DSA: the indexer cache [B, S, d_I] (FP8 values, read back as fp32)


@dataclass
class Counts:
    """Elements touched per sequence, summed over decode steps, layers and KV heads, and dense's for the same caches."""

    strategy: np.ndarray
    dense: np.ndarray
    by_component: dict[str, float] = field(default_factory=dict)

    @property
    def transfer_ratio(self) -> float:
        return float(self.strategy.sum() / self.dense.sum()) if self.dense.sum() else float("nan")


class Session:
    """Strategy, per-layer state, traffic counters and (optionally) trace rows of one batch of sequences.

    sink: called with a dict of columns (numpy arrays; `positions` and `components` as lists of int32 arrays) once per
    decode call of each layer when tracing. h2o_scores: H2O statistics from a shared prefill (`Prefix.h2o_scores`).
    calibration: Loki's and Double Sparsity's offline key statistics, DSA's trained indexers
    (`calibration.for_model`). key_stats: a `calibration.KeyStats` that every prefill adds its queries and keys to.
    collect_snapkv: keep SnapKV's votes.
    """

    def __init__(self, config: StrategyConfig, *, sink: Callable[[dict], None] | None = None,
                 h2o_scores: dict[int, torch.Tensor] | None = None, collect_h2o: bool = False,
                 calibration=None, key_stats=None, collect_snapkv: bool = False):
        self.config = config
        self.sink = sink
        self.collect_h2o = collect_h2o or config.strategy == "h2o"
        self.collect_snapkv = collect_snapkv or config.strategy == "snapkv"
        if config.strategy in NEEDS_CALIBRATION and (calibration is None or
                                                     (config.strategy == "dsa" and not calibration.indexer)):
            raise ValueError(f"{config.strategy} needs the model's calibration (sparq_ref.calibration.for_model)")
        self.calibration = calibration
        self.key_stats = key_stats
        self.layers: dict[int, LayerState] = {}
        self.h2o_prefill: dict[int, torch.Tensor] = dict(h2o_scores or {})
        self.snapkv_votes: dict[int, torch.Tensor] = {}
        self.counts: Counts | None = None
        self.step = -1
        self._last_layer = math.inf
        self._token = None
        self._layer_ids: dict[int, int] = {}

    def layer_index(self, module) -> int:
        """The module's layer_idx (transformers sets it on attention modules), else an index by first call order."""
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int):
            return idx
        return self._layer_ids.setdefault(id(module), len(self._layer_ids))

    # context manager: the attention function finds the active session through a context variable
    def __enter__(self):
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc):
        _ACTIVE.reset(self._token)
        self._token = None

    # ---- prefill -------------------------------------------------------------------------------------------------
    def on_prefill(self, module, query, key, allowed, scaling):
        """allowed [B, T, S]: which keys each prompt query sees (causal and padding)."""
        layer = self.layer_index(module)
        T, S = query.shape[2], key.shape[2]
        fresh = T == S
        if fresh:  # a new sequence: forget this layer's state
            self.layers.pop(layer, None)
            self.h2o_prefill.pop(layer, None)
            self.snapkv_votes.pop(layer, None)
            self.step, self._last_layer = -1, math.inf
        if self.key_stats is not None:
            self.key_stats.add(layer, query, key[:, :, S - T:], allowed[:, -1, S - T:], scaling)
        if self.collect_snapkv:  # the attention of the prompt's last queries: SnapKV's votes
            w = min(T, reg.SNAPKV_WINDOW)
            self.snapkv_votes[layer] = A.snapkv_votes(query[:, :, T - w:], key, allowed[:, T - w:], scaling)
        if not self.collect_h2o:
            return
        sc = A.h2o_prefill_scores(query, key, allowed, scaling)
        prev = self.h2o_prefill.get(layer)
        if prev is not None and not fresh and prev.shape[-1] <= S:
            sc[..., :prev.shape[-1]] += prev
        self.h2o_prefill[layer] = sc

    # ---- decode --------------------------------------------------------------------------------------------------
    def decode(self, module, query, key, value, valid, scaling):
        """One decode step of one layer: query [B, H, 1, d] -> output [B, 1, H, d] (transformers' layout)."""
        layer = self.layer_index(module)
        if layer <= self._last_layer:
            self.step += 1
        self._last_layer = layer
        B, H, _, d = query.shape
        Hkv, S = key.shape[1], key.shape[2]
        q = query[:, :, 0]
        cfg = self.config
        seq_len = valid.sum(1)
        S_np = seq_len.cpu().numpy()
        st = self.layers.setdefault(layer, LayerState())
        strategy = cfg.strategy
        if strategy == "quest" and layer < reg.QUEST_DENSE_LAYERS:
            strategy = "dense"  # Quest keeps its first layers dense (Tang et al. 2024)
        params = cfg.resolve(S_np, d) if strategy != "dense" else reg.resolve_params("dense", S_np, d, 1.0)

        if strategy == "dense":
            y, f = A.dense_attention(q, key, value, valid=valid, scaling=scaling)
        elif strategy == "sparq":
            v_mean = self._v_mean(st, value, valid) if cfg.reallocate else None
            y, f = A.sparq_attention(q, key, value, r=int(params["r"][0]), k=params["k"], valid=valid,
                                     local_window=params["local_window"], v_mean=v_mean, scaling=scaling,
                                     reallocate=cfg.reallocate)
        elif strategy == "h2o":
            if st.h2o is None:
                st.h2o = A.H2OState.empty(B, Hkv, query.device)
                pre = self.h2o_prefill.get(layer)
                if pre is not None:
                    st.h2o.scores = pre[..., :S].clone()
                    st.h2o.alive = torch.ones_like(st.h2o.scores, dtype=torch.bool)
            y, f = A.h2o_attention(q, key, value, k=params["k"], local_window=params["local_window"], state=st.h2o,
                                   valid=valid, scaling=scaling)
        elif strategy == "lm-infinite":
            y, f = A.lm_infinite_attention(q, key, value, k=params["k"], local_window=params["local_window"],
                                           sinks=params["sinks"], valid=valid, scaling=scaling)
        elif strategy == "flexgen":
            y, f = A.flexgen_attention(q, key, value, k=params["k"], valid=valid, scaling=scaling)
        elif strategy == "quest":
            y, f = A.quest_attention(q, key, value, k=params["k"], page_size=int(params["page_size"][0]), valid=valid,
                                     scaling=scaling)
        elif strategy == "loki":
            y, f = A.loki_attention(q, key, value, r=int(params["r"][0]), k=params["k"], valid=valid, scaling=scaling,
                                    basis=self.calibration.basis[layer])
        elif strategy == "double-sparsity":
            y, f = A.double_sparsity_attention(q, key, value, r=int(params["r"][0]), k=params["k"], valid=valid,
                                               scaling=scaling, channels=self.calibration.channels[layer])
        elif strategy == "dsa":
            ix = self.calibration.indexer[layer]
            qi, w = ix.queries(q)
            y, f = A.dsa_attention(q, key, value, k=params["k"], index_q=qi, index_w=w,
                                   index_keys=self._index_keys(st, ix, key), valid=valid, scaling=scaling)
        elif strategy == "snapkv":
            if st.snap_keep is None:  # the first decode step: select from the prompt, once
                st.snap_keep = self._snapkv_keep(layer, valid, d)
            y, f = A.snapkv_attention(q, key, value, keep=st.snap_keep, valid=valid, scaling=scaling)
            # the cache SnapKV attends: its kept prompt positions plus every token since (the trace's k)
            params = dict(params, k=f.rows.sum(-1).max(-1).values.cpu().numpy().astype(np.int64))
        else:  # pragma: no cover - the registry and this dispatch are tested together
            raise AssertionError(strategy)

        self._count(f, d, S_np, B)
        if self.sink is not None:
            self._trace(layer, q, key, value, valid, scaling, y, f, params, S)
        return y.to(query.dtype).unsqueeze(1)  # [B, 1, H, d]

    def _snapkv_keep(self, layer: int, valid, head_dim: int):
        """SnapKV's selection from this layer's votes: a budget of k = S0 / C positions of the prompt (S0 its valid
        length), the observation window among them."""
        votes = self.snapkv_votes.get(layer)
        if votes is None:
            raise ValueError("SnapKV needs the votes of its prefill: prefill(..., collect_snapkv=True)")
        S0 = votes.shape[-1]
        v0 = valid[:, :S0]
        p = self.config.resolve(v0.sum(1).cpu().numpy(), head_dim)
        dev = votes.device
        k = torch.as_tensor(p["k"], device=dev)
        w = torch.minimum(torch.as_tensor(p["local_window"], device=dev), torch.tensor(votes.shape[2], device=dev))
        return A.snapkv_select(votes, v0, k, w, reg.SNAPKV_KERNEL)

    def _index_keys(self, st: LayerState, ix, key):
        """DSA's indexer cache for this layer: the newest position's key appended in FP8 (every position's computed
        again whenever the cache was not followed step by step)."""
        S = key.shape[2]
        if st.index_keys is None or st.index_keys.shape[1] != S - 1:
            st.index_keys = fp8_roundtrip(ix.keys(key))
        else:
            st.index_keys = torch.cat([st.index_keys, fp8_roundtrip(ix.keys(key[:, :, S - 1:]))], 1)
        return st.index_keys

    def _v_mean(self, st: LayerState, value, valid):
        """SparQ's running mean of V, updated with the newest row (recomputed whenever the cache was not followed)."""
        S = value.shape[2]
        if st.v_sum is None or st.v_seen != S - 1:
            vm = valid.view(valid.shape[0], 1, S, 1)
            st.v_sum = (value.float() * vm).sum(2)
            st.v_count = valid.sum(1).float()
        else:
            new_ok = valid[:, -1].view(-1, 1, 1)
            st.v_sum = st.v_sum + value[:, :, -1].float() * new_ok
            st.v_count = st.v_count + valid[:, -1].float()
        st.v_seen = S
        return st.v_sum / st.v_count.clamp_min(1).view(-1, 1, 1)

    def _count(self, f: A.Fetched, d: int, S_np, B: int):
        parts = A.elements_touched(f, d)
        per_seq = sum(parts.values()).sum(1).double().cpu().numpy()
        Hkv = f.rows.shape[1]
        dense = Hkv * reg.elements_moved("dense", S_np, d, reg.resolve_params("dense", S_np, d, 1.0))
        if self.counts is None or len(self.counts.strategy) != B:
            self.counts = Counts(np.zeros(B), np.zeros(B))
        self.counts.strategy += per_seq
        self.counts.dense += dense
        for name, t in parts.items():
            self.counts.by_component[name] = self.counts.by_component.get(name, 0.0) + float(t.sum())

    def _trace(self, layer, q, key, value, valid, scaling, y, f: A.Fetched, params, S):
        B, H, d = q.shape
        Hkv = key.shape[1]
        g = H // Hkv
        p = A.dense_probs(q, key, valid, scaling)                                        # [B, Hkv, g, S]
        y_dense = torch.matmul(p.to(value.dtype), value).float()                          # [B, Hkv, g, d]
        oracle = (p * f.rows.unsqueeze(2)).sum(-1).mean(-1)                               # [B, Hkv]
        err = (y.view(B, Hkv, g, d) - y_dense).norm(dim=(-1, -2)) / y_dense.norm(dim=(-1, -2)).clamp_min(1e-30)
        alpha = (f.alpha.view(B, Hkv, g).mean(-1) if f.alpha is not None
                 else torch.full((B, Hkv), float("nan"), device=q.device))
        offset = (~valid).sum(1).cpu().numpy()
        rows = f.rows.cpu().numpy()
        comps = f.components.cpu().numpy().astype(np.int32) if f.components is not None else None
        positions, components = [], []
        for b in range(B):
            for h in range(Hkv):
                positions.append((np.flatnonzero(rows[b, h]) - offset[b]).astype(np.int32))
                components.append(np.sort(comps[b, h]) if comps is not None else np.zeros(0, np.int32))
        seq_len = f.seq_len.cpu().numpy()
        self.sink({
            "step": np.full(B * Hkv, self.step, np.int32),
            "layer": np.full(B * Hkv, layer, np.int32),
            "kv_head": np.tile(np.arange(Hkv, dtype=np.int32), B),
            "batch": np.repeat(np.arange(B, dtype=np.int32), Hkv),
            "seq_len": np.repeat(seq_len.astype(np.int32), Hkv),
            "k": np.repeat(params["k"].astype(np.int32), Hkv),
            "r": np.repeat(params["r"].astype(np.int32), Hkv),
            "positions": positions,
            "components": components,
            "alpha": alpha.float().cpu().numpy().reshape(-1),
            "oracle_mass": oracle.float().cpu().numpy().reshape(-1),
            "out_rel_err": err.float().cpu().numpy().reshape(-1),
        })


# ----------------------------------------------------------------------------------------------------------------
# the attention function


def _valid_from_mask(attention_mask, B, S, device) -> torch.Tensor:
    """transformers' 4D mask [B, 1, q, >=S] (bool: True attends; float: 0 attends) -> valid [B, S] of the last query."""
    if attention_mask is None:
        return torch.ones(B, S, dtype=torch.bool, device=device)
    m = attention_mask[:, 0, -1, :S]
    if m.dtype != torch.bool:
        m = m > torch.finfo(m.dtype).min / 2
    return m.expand(B, S).to(device)


def _trim(key, value, valid):
    """Drop the unfilled tail of a preallocated (static) cache: positions no sequence can see yet."""
    S = key.shape[2]
    seen = valid.reshape(-1, S).any(0)
    if bool(seen[-1]):
        return key, value, valid
    last = int(torch.nonzero(seen).max()) + 1 if bool(seen.any()) else S
    return key[:, :, :last], value[:, :, :last], valid[..., :last]


def sparq_ref_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """The function registered as ``sparq_ref``: sdpa outside a session and in prefill; the strategy in decode."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    session = _ACTIVE.get()
    if session is None or query.shape[2] != 1:
        if session is not None:
            B, T, S = key.shape[0], query.shape[2], key.shape[2]
            if attention_mask is None and kwargs.get("position_ids") is not None:
                # no padding (transformers then drops the mask): each query sees the keys up to its own position,
                # which in a preallocated cache is not the end of the keys (the tail is not filled yet)
                pos = kwargs["position_ids"].to(key.device).view(-1, T)
                allowed = (torch.arange(S, device=key.device).view(1, 1, S) <= pos.unsqueeze(-1)).expand(B, T, S)
            elif attention_mask is None:  # plain causal, queries aligned to the end of the keys
                allowed = torch.ones(T, S, dtype=torch.bool, device=key.device).tril(S - T).expand(B, T, S)
            else:
                m = attention_mask[:, 0, :, :S]
                allowed = (m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2).expand(B, T, S)
            k, _, allowed = _trim(key, key, allowed)
            with torch.no_grad():
                session.on_prefill(module, query, k, allowed, scaling)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise UserError("this model uses attention soft-capping or learned sinks, which sparq_ref does not support")
    valid = _valid_from_mask(attention_mask, key.shape[0], key.shape[2], key.device)
    key, value, valid = _trim(key, value, valid)
    with torch.no_grad():
        return session.decode(module, query, key, value, valid, scaling), None


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, sparq_ref_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    _REGISTERED = True


def install(model) -> None:
    """Switch `model` to the ``sparq_ref`` attention function (sdpa unless a Session is active)."""
    register()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTN_NAME)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = ATTN_NAME
    if model.config._attn_implementation != ATTN_NAME:
        raise UserError(f"model {type(model).__name__} does not use transformers' attention registry, "
                        "so sparq_ref cannot run its decode steps")


# ----------------------------------------------------------------------------------------------------------------
# a small decode loop: one shared dense prefill, then any number of strategy runs from copies of its cache


@dataclass
class Prefix:
    """A dense prefill of a left-padded batch: its cache, next-token logits, masks, and H2O statistics."""

    cache: object
    logits: torch.Tensor          # [B, vocab] fp32, predicting the first new token
    attention_mask: torch.Tensor  # [B, T] long
    h2o_scores: dict[int, torch.Tensor]
    snapkv_votes: dict[int, torch.Tensor] = field(default_factory=dict)   # per layer [B, Hkv, w, S]


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, collect_h2o=True,
            collect_snapkv=True, max_new_tokens: int = 256) -> Prefix:
    """Dense prefill into a preallocated cache with room for `max_new_tokens` (transformers' StaticCache: appending
    to a DynamicCache copies the whole cache at every step, which dominates decode time at batch 8 on a CPU)."""
    from transformers import StaticCache

    install(model)
    dev = model.device
    input_ids = input_ids.to(dev)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.to(dev)
    pos = (attention_mask.cumsum(1) - 1).clamp_min(0)
    collector = Session(StrategyConfig("dense"), collect_h2o=collect_h2o, collect_snapkv=collect_snapkv)
    with torch.no_grad(), collector:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                    cache=StaticCache(config=model.config, max_cache_len=input_ids.shape[1] + max_new_tokens + 1),
                    use_cache=True)
    return Prefix(out.past_key_values, out.logits[:, -1].float(), attention_mask, collector.h2o_prefill,
                  collector.snapkv_votes)


@dataclass
class DecodeResult:
    tokens: torch.Tensor      # [B, n] the tokens fed after the prefix (generated, or forced)
    logprobs: torch.Tensor    # [B, n] log p of each of those tokens (nats) under the run's own predictions
    counts: Counts
    steps: int
    argmax: torch.Tensor | None = None   # [B, n] the run's most likely token at each position (= tokens unless forced)


def decode(model, prefix: Prefix, session: Session, max_new_tokens: int, *, forced: torch.Tensor | None = None,
           stop: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: Callable[[int], None] | None = None
           ) -> DecodeResult:
    """Greedy decoding (or teacher forcing with `forced` [B, n]) from a copy of `prefix`'s cache.

    The first token comes from the dense prefill's logits; each following one from a decode step that runs the
    session's strategy. stop(tokens [B, n]) -> bool [B] ends early once every sequence is done.
    """
    dev = model.device
    cache = copy.deepcopy(prefix.cache)
    session.h2o_prefill = {k: v for k, v in prefix.h2o_scores.items()}
    session.snapkv_votes = dict(prefix.snapkv_votes)
    mask = prefix.attention_mask.clone()
    pos = mask.sum(1, keepdim=True) - 1
    logits = prefix.logits
    n = max_new_tokens if forced is None else min(max_new_tokens, forced.shape[1])
    room = getattr(cache, "max_cache_len", None)
    if room is not None and prefix.attention_mask.shape[1] + n > room:
        raise ValueError(f"the prefix cache has room for {room - prefix.attention_mask.shape[1]} new tokens, not {n}")
    toks, lps, best = [], [], []
    with torch.no_grad(), session:
        for i in range(n):
            lp = torch.log_softmax(logits.float(), -1)
            best.append(lp.argmax(-1))
            t = forced[:, i].to(dev) if forced is not None else best[-1]
            toks.append(t)
            lps.append(lp.gather(1, t.view(-1, 1)).squeeze(1))
            if i == n - 1 or (stop is not None and bool(stop(torch.stack(toks, 1)).all())):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = pos + 1
            out = model(input_ids=t.view(-1, 1), attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            logits = out.logits[:, -1]
            if progress is not None:
                progress(1)
    counts = session.counts or Counts(np.zeros(len(mask)), np.zeros(len(mask)))
    return DecodeResult(torch.stack(toks, 1).cpu(), torch.stack(lps, 1).cpu(), counts, max(session.step + 1, 0),
                        torch.stack(best, 1).cpu())
