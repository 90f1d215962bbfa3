"""The one registry of attention strategies and their decode-step traffic (docs/traffic-model.md).

Each strategy has one name, shared by the simulator (this file: parameters and elements moved) and `sparq_ref`
(the torch implementation). Traffic is counted in scalar elements per KV head per sequence per decode step, by
component, so the ledger can place each component in an operator and a memory tier, and a test can compare the
components with the index sets the reference implementation actually touches.

| strategy    | elements moved per KV head                       |
|-------------|--------------------------------------------------|
| dense       | 2 S d_h + 2 d_h                                  |
| sparq       | S r + 2 k d_h + 4 d_h                            |
| h2o         | 2 k d_h + 2 d_h + 2 S                            |
| lm-infinite | 2 k d_h + 2 d_h                                  |
| flexgen     | S d_h + k d_h + 2 d_h                            |
| quest       | 2 ceil(S/P) d_h + 2 k d_h + 2 d_h                |
| loki        | S r + 2 k d_h + 2 d_h                            |
| double-sparsity | S r + r + 2 k d_h + 2 d_h                    |
| snapkv      | 2 k d_h + 2 d_h                                  |
| dsa         | 2 k d_h + 2 d_h, and per layer S d_I + d_I       |

Loki reads the first r of the d_h principal components of each key (the cache holds keys rotated into their offline
PCA basis, row-major: r leading elements of every row); Double Sparsity reads its label cache, the r offline-chosen
channels of every key stored apart and contiguously (S r), and writes the new token's r; both then read k full rows.
SnapKV reads the k-token cache it kept at the end of prefill (plus every token generated since).
DeepSeek Sparse Attention (DSA) keeps an indexer cache beside K and V: one key of d_I elements per token and layer,
shared by every head (the lightning indexer's keys), read whole at every step to score all S positions, then k full
rows of K and V at the top-k positions, one set for all heads. Its indexer terms are counted per layer
(`INDEX_READ`, `INDEX_WRITE`), not per KV head: `elements_moved(..., kv_heads=H_kv)` spreads them over the heads.
The indexer keys are stored at the KV cache's precision (DeepSeek serves both in FP8: `--kv fp8`).

Everything here takes numpy arrays (or scalars) so one call evaluates a whole sweep.

Multi-head latent attention (DeepSeek-V2/V3) caches one row per token shared by every head: the latent c (d_c) and
a RoPE key (d_r). Decoded absorbed, it is attention with one KV head whose key is the whole row (d_k = d_c + d_r) and
whose value is c, the row's first d_c elements: a row read as K serves as V too (`KVGeometry.shared`). The table
holds with d_h = d_k for K and the V terms dropped where the same kernel has the row already (SparQ's step 2, H2O,
LM-Infinite, Quest read k rows once, dense S rows once); FlexGen gathers V in a second pass after its top-k and
reads those k rows again; the new token writes d_k; SparQ's v_bar is d_c wide. Decoded unabsorbed, the rows are
expanded per head before attention: K's columns do not exist in the cache, so SparQ's step 1 reads whole rows
(`KVGeometry.columns_whole`). SparQ's recipe on a shared row spends half the budget on each step: r = d_k / (2C)
columns, k = S / (2C) rows, so that it too moves 1/C of dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import UserError, closest

# component kinds
KV_READ, KV_WRITE, META_READ, META_WRITE = "kv_read", "kv_write", "meta_read", "meta_write"
# per sequence per layer, shared by all KV heads (DSA's indexer cache), counted at the KV precision
INDEX_READ, INDEX_WRITE = "index_read", "index_write"
PER_LAYER_KINDS = (INDEX_READ, INDEX_WRITE)


@dataclass(frozen=True)
class Strategy:
    name: str
    title: str
    summary: str
    params: tuple[str, ...]      # which of r, k, local_window, page_size, sinks it uses
    keeps_full_cache: bool       # True: all S positions stay in memory (chosen per step); False: evicts to k tokens
    reference: str
    aliases: tuple[str, ...] = ()   # other names of the same method (`--strategies` takes them; outputs say `name`)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy("dense", "Dense attention", "reads all of K and V", (), True, "Vaswani et al. 2017"),
    Strategy("sparq", "SparQ Attention",
             "r largest |q| components select positions from r columns of K; then k full rows of K and V",
             ("r", "k", "local_window"), True, "Ribar et al., ICML 2024 (arXiv 2312.04985), Algorithm 1"),
    Strategy("h2o", "H2O (heavy hitters)",
             "cache of k tokens: heavy hitters by accumulated attention plus a recent window; permanent eviction",
             ("k", "local_window"), False, "Zhang et al., NeurIPS 2023"),
    Strategy("flexgen", "FlexGen top-k (sparse V)", "exact scores from all of K, then only the top-k rows of V",
             ("k",), True, "Sheng et al., ICML 2023"),
    Strategy("lm-infinite", "LM-Infinite / StreamingLLM", "cache of k tokens: sink tokens plus a recent window",
             ("k", "local_window", "sinks"), False,
             "Han et al., NAACL 2024 (arXiv 2308.16137); StreamingLLM (Xiao et al., ICLR 2024, arXiv 2309.17453) is "
             "the same cache and traffic: its paper keeps 4 sinks (--sinks 4, here min(16, k/2)); neither LM-Infinite's "
             "distance cap nor StreamingLLM's positions re-indexed inside the cache is modelled",
             aliases=("streamingllm",)),
    Strategy("quest", "Quest", "per-page min/max key bounds select the top pages; then those pages' K and V",
             ("k", "page_size"), True, "Tang et al., ICML 2024"),
    Strategy("loki", "Loki (low-rank keys)",
             "keys in their offline PCA basis; the first r principal components score all positions, then k full "
             "rows of K and V", ("r", "k"), True,
             "Singhania et al., NeurIPS 2024 (arXiv 2406.02542), Algorithm 1: PCA of the (post-rotary) keys per layer "
             "and head on calibration text, approximate scores from the top d_f = r / d_h components, top k_f = k / S"),
    Strategy("double-sparsity", "Double Sparsity",
             "r channels per head chosen offline; a label cache of those channels scores all positions, then k full "
             "rows of K and V", ("r", "k"), True,
             "Yang et al. 2024 (arXiv 2408.07092), 'Post-Training Sparse Attention with Double Sparsity': outlier "
             "channels by offline calibration (|q_i k_i| summed over calibration tokens), label cache of those "
             "channels in the KV dtype, token top-k on the approximate scores"),
    Strategy("snapkv", "SnapKV",
             "one-shot selection at the end of prefill: an observation window of the prompt's last queries votes "
             "(pooled) for k positions; the cache keeps them and every generated token", ("k", "local_window"), False,
             "Li et al., NeurIPS 2024 (arXiv 2404.14469): votes = attention of the last w prompt queries summed, "
             "smoothed by 1-D pooling (here average, kernel 7), top k - w plus the window itself; no eviction after"),
    Strategy("dsa", "DeepSeek Sparse Attention",
             "a lightning indexer (a few ReLU heads over small per-token indexer keys) scores all positions; the "
             "top-k positions' K and V rows, one set for every head", ("k",), True,
             "DeepSeek-AI, DeepSeek-V3.2-Exp technical report (2025), section 2.1: I_t,s = sum_j w_t,j "
             "ReLU(q_t,j . k_s), H_I = 64 indexer heads of d_I = 128, FP8 indexer keys, top-k = 2048 selected per "
             "query token and shared by all heads; the indexer distilled from the dense attention (KL) on "
             "calibration text"),
]}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)
ALIASES: dict[str, str] = {a: s.name for s in STRATEGIES.values() for a in s.aliases}

DEFAULT_PAGE_SIZE = 16       # Quest's page size (Tang et al. 2024)
DEFAULT_SINKS = 16           # LM-Infinite keeps ~16 global "sink" tokens (Han et al., arXiv 2308.16137)
QUEST_DENSE_LAYERS = 2       # Quest runs its first two layers dense (Tang et al. 2024)
SNAPKV_WINDOW = 32           # SnapKV's observation window (the prompt's last queries; at most k / 2 here)
SNAPKV_KERNEL = 7            # SnapKV's pooling kernel over the votes
DSA_INDEX_DIM = 128          # DeepSeek-V3.2's indexer key width d_I (index_head_dim); at most the model's key width
DSA_INDEX_HEADS = 64         # ... and its indexer heads H_I (index_n_heads); at most half the query heads
# the strategies that choose positions from r key components (SparQ's recipe for r and k: each moves 1/C of dense)
COMPONENT_STRATEGIES = ("sparq", "loki", "double-sparsity")


def get_strategy(name: str) -> Strategy:
    if type(name) is str and name in STRATEGIES:   # a registry name as is (every call of the ledger)
        return STRATEGIES[name]
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in STRATEGIES:
        known = list(STRATEGIES) + list(ALIASES)
        raise UserError(f"unknown strategy {name!r}{closest(key, known)} (accepted: {', '.join(STRATEGIES)}; "
                        f"aliases: {', '.join(f'{a} = {n}' for a, n in ALIASES.items())})")
    return STRATEGIES[key]


def parse_strategies(value) -> list[str]:
    """'all', a comma list or a list -> validated names in registry order of first mention."""
    if value is None:
        return list(STRATEGY_NAMES)
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        item = str(item).strip()
        if item.lower() == "all":
            names = list(STRATEGY_NAMES)
        elif item:
            names = [get_strategy(item).name]
        else:
            continue
        out.extend(n for n in names if n not in out)
    if not out:
        raise UserError(f"no strategy given (accepted: all, {', '.join(STRATEGIES)})")
    return out


@dataclass(frozen=True)
class KVGeometry:
    """What one KV head caches per token: a key of d_k and a value of d_v elements, or (shared) one row whose first
    d_v elements are the value (MLA's latent). columns_whole: the attention's key columns are not in the cache
    (unabsorbed MLA expands the latent), so reading some columns means reading whole rows."""
    d_k: int
    d_v: int
    shared: bool = False
    columns_whole: bool = False

    @property
    def row(self) -> int:
        """Elements one token adds to the cache per KV head."""
        return self.d_k if self.shared else self.d_k + self.d_v


def geometry(head_dim) -> KVGeometry:
    """A KVGeometry as is, or a head_dim: K and V of head_dim each (standard attention)."""
    if isinstance(head_dim, KVGeometry):
        return head_dim
    return KVGeometry(head_dim, head_dim)


def _num(x, dtype=np.float64):
    """x as `dtype` (np.float64 or np.int64): an array as a numpy array; a number (a single configuration) as a
    Python float or int. A Python float is an IEEE double, the same arithmetic as numpy's float64 to the last bit, at a
    fraction of a numpy scalar's cost per operation (issue 16); a Python int is exact where int64 would wrap."""
    t = type(x)
    if dtype is np.float64:
        if t is float:
            return x
        if t is int or isinstance(x, np.generic):   # numpy's cast (round to nearest), as an array's
            return float(x)
    elif t is int:
        return x
    elif isinstance(x, np.integer):
        return int(x)
    a = np.asarray(x, dtype=dtype)
    return a if a.ndim else a.item()


def _shape(x) -> tuple:
    """The shape of an array; () for a number."""
    return x.shape if type(x) is np.ndarray else ()


def _shaped(x, dtype, shape):
    """x as numpy `dtype` broadcast to `shape` (read-only); a number for shape () as a Python number."""
    a = _num(x, dtype)
    return a if not shape and type(a) is not np.ndarray else np.broadcast_to(a, shape)


def _full(shape, value: int):
    """An int64 array of `shape` filled with `value`; for shape () the number."""
    return np.full(shape, value, dtype=np.int64) if shape else int(value)


def _any(x) -> bool:
    """np.any of a comparison: an array's, or a number's (one configuration) without a reduction."""
    return bool(x.any() if type(x) is np.ndarray else x)


def _round_pos(x):
    """Round half up to an integer >= 1 (int64; a number as a Python int)."""
    v = _num(x)
    if type(v) is float and -2.0 ** 63 < v + 0.5 < 2.0 ** 63:   # a number (one configuration): no ufunc
        f = math.floor(v + 0.5)
        return f if f >= 1 else 1
    return np.maximum(1, np.floor(v + 0.5)).astype(np.int64)


def _minimum(a, b):
    """np.minimum; of two numbers (a single configuration) the smaller one, without a ufunc call."""
    if type(a) is not np.ndarray and type(b) is not np.ndarray:
        return a if a <= b else b
    return np.minimum(a, b)


def _ceil(x):
    """np.ceil; of a number the same float, without a ufunc call."""
    return float(math.ceil(x)) if type(x) is float and math.isfinite(x) else np.ceil(x)


def resolve_params(strategy: str, seq_len, head_dim, compression, *, r=None, k=None, local_window=None,
                   page_size=None, sinks=None, index_dim=None) -> dict[str, np.ndarray]:
    """Each strategy's parameters for target compression C (docs/traffic-model.md), with explicit overrides.
    `head_dim` is the key's width, or a KVGeometry.

    SparQ: r = d_h / C, k = S / (2C), local window l = k / 4 (the paper's defaults); on a shared row (MLA)
    r = d_k / (2C). Loki and Double Sparsity: SparQ's r and k (no window): r components over S plus 2k rows is
    1/C of dense. SnapKV: k = S / C cached tokens, an observation window of min(32, k / 2).
    H2O: cache k = S / C tokens, half of them the recent window (H2O's equal split).
    LM-Infinite: cache k = S / C tokens, min(16, k/2) of them sinks, the rest the recent window.
    FlexGen: k = S / C rows of V.  Quest: budget k = S / C tokens, rounded to whole pages of P = 16.
    DSA: k = S / C positions; its indexer keys of index_dim = d_I elements (default min(128, d_k), DeepSeek-V3.2's)
    come on top, as Quest's page bounds do.
    Returns int64 arrays r, k, local_window, page_size, sinks, index_dim broadcast to seq_len's shape (0 = not
    used); for a number seq_len (a single configuration), Python ints.
    Raises UserError on r > d_h, k > S, a window larger than k, or values below 1.
    """
    s = get_strategy(strategy)
    S = _num(seq_len, np.int64)
    shape = _shape(S)
    g = head_dim if isinstance(head_dim, KVGeometry) else None
    dh = _shaped(g.d_k if g else head_dim, np.int64, shape)
    C = _shaped(compression, np.float64, shape)
    zero = _full(shape, 0)
    out = {"r": zero, "k": zero, "local_window": zero, "page_size": zero, "sinks": zero, "index_dim": zero}
    if s.name == "dense":
        return out

    def given(v, what):
        if type(v) is int and not shape and v >= 1:   # one configuration and a whole number: nothing to convert
            return v
        a = np.asarray(v)
        if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.all(a == np.floor(a))):
            raise UserError(f"--{what.replace('_', '-')} must be a whole number, got {v!r}")
        if np.any(a < 1):
            raise UserError(f"--{what.replace('_', '-')} must be at least 1, got {int(np.min(a))}")
        return _shaped(a, np.int64, shape)

    if s.name == "quest":
        P = given(page_size, "page_size") if page_size is not None else _full(shape, DEFAULT_PAGE_SIZE)
        out["page_size"] = P
        if k is None:
            kk = P * _round_pos(S / C / P)
        else:  # Quest reads whole pages: an explicit k is rounded to the nearest whole number of pages (>= 1)
            kk = given(k, "k")
            kk = P * _round_pos(kk / P)
    elif k is None:
        kk = _round_pos(S / (2 * C) if s.name in COMPONENT_STRATEGIES else S / C)
    else:
        kk = given(k, "k")
    if k is not None and _any(kk > S):
        bad = np.argmax(np.broadcast_to(kk > S, shape))
        raise UserError(f"k = {int(np.broadcast_to(kk, shape).flat[bad])} exceeds the context length seq_len = "
                        f"{int(np.ravel(S)[bad])} ({s.name}); accepted: 1 <= k <= seq_len")
    kk = _minimum(kk, S)  # a recipe's rounding (one page at least) may pass a short context
    out["k"] = kk
    if s.name == "dsa":
        out["index_dim"] = (given(index_dim, "index_dim") if index_dim is not None
                            else _minimum(DSA_INDEX_DIM, dh))

    if s.name in COMPONENT_STRATEGIES:
        rr = given(r, "r") if r is not None else _minimum(_round_pos(dh / C / (2 if g and g.shared else 1)), dh)
        if _any(rr > dh):
            raise UserError(f"r = {int(np.max(rr))} exceeds head_dim = {int(np.min(dh))}; accepted: 1 <= r <= head_dim")
        out["r"] = rr
    if "local_window" in s.params:
        if local_window is not None:
            lw = _shaped(local_window, np.int64, shape)
            if _any(lw < 0) or _any(lw > kk):
                raise UserError(f"--local-window must be between 0 and k, got {int(np.max(lw))} with k = "
                                f"{int(np.min(kk))}")
        elif s.name == "sparq":
            lw = kk // 4
        elif s.name == "h2o":
            lw = kk // 2
        elif s.name == "snapkv":
            lw = _minimum(SNAPKV_WINDOW, kk // 2)
        else:  # lm-infinite: whatever the sinks leave
            lw = None
        if s.name == "lm-infinite":
            sk = _shaped(sinks, np.int64, shape) if sinks is not None else _minimum(DEFAULT_SINKS, kk // 2)
            lw = kk - sk if lw is None else lw
            if _any(sk + lw > kk) or _any(sk < 0):
                raise UserError("sinks + local window must not exceed k for lm-infinite")
            out["sinks"] = sk
        out["local_window"] = _num(lw, np.int64)
    return out


def traffic_components(strategy: str, seq_len, head_dim, params: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    """(component, kind, elements) per KV head per sequence for one decode step of one layer.

    Sums to the table in the module docstring. Components name what is read or written so the ledger can turn each
    into an operator: K and V reads and the new token's k, v write, plus each strategy's extra reads. `head_dim` is
    d_h (K and V of d_h each) or a KVGeometry (MLA's shared row: see the module docstring).
    """
    s = get_strategy(strategy).name
    g = geometry(head_dim)
    S = _num(seq_len)
    dk = float(g.d_k)
    dv = float(g.d_v)
    v_sep = 0 * dv if g.shared else dv   # V read apart from K's rows
    k = _num(params["k"])
    write = ("kv_append", KV_WRITE, g.row + 0 * S)  # the new token's k and v (MLA: its row)
    if s == "dense":
        return [("k_all", KV_READ, S * dk), ("v_all", KV_READ, S * v_sep), write]
    if s == "sparq":
        r = _num(params["r"])
        return [
            ("k_columns", KV_READ, S * (dk if g.columns_whole else r)),   # Step 1: r columns of K over all S positions
            ("k_rows", KV_READ, k * dk),              # Step 2: k full rows of K
            ("v_rows", KV_READ, k * v_sep),           # ... and of V
            write,
            ("v_mean_read", META_READ, dv + 0 * S),   # running mean of V (v_bar): read ...
            ("v_mean_write", META_WRITE, dv + 0 * S),  # ... and write back
        ]
    if s == "h2o":
        return [
            ("k_rows", KV_READ, k * dk), ("v_rows", KV_READ, k * v_sep), write,
            # accumulated score statistics, read and written: 2 S (the paper's Table 1 model; counted at the KV dtype)
            ("score_stats_read", META_READ, S), ("score_stats_write", META_WRITE, S),
        ]
    if s in ("lm-infinite", "snapkv"):
        return [("k_rows", KV_READ, k * dk), ("v_rows", KV_READ, k * v_sep), write]
    if s == "dsa":
        di = _num(params["index_dim"])
        return [
            ("index_keys_read", INDEX_READ, S * di),   # the indexer key of every position (per layer, all heads)
            ("k_rows", KV_READ, k * dk), ("v_rows", KV_READ, k * v_sep), write,
            ("index_key_write", INDEX_WRITE, di + 0 * S),   # the new token's indexer key
        ]
    if s == "loki":
        r = _num(params["r"])
        return [
            ("k_columns", KV_READ, S * (dk if g.columns_whole else r)),   # the r leading components of every key
            ("k_rows", KV_READ, k * dk), ("v_rows", KV_READ, k * v_sep), write,
        ]
    if s == "double-sparsity":
        r = _num(params["r"])
        return [
            ("label_read", META_READ, S * r),         # the label cache: r channels of every key, contiguous
            ("k_rows", KV_READ, k * dk), ("v_rows", KV_READ, k * v_sep), write,
            ("label_write", META_WRITE, r + 0 * S),   # the new token's label
        ]
    if s == "flexgen":
        return [("k_all", KV_READ, S * dk), ("v_rows", KV_READ, k * dv), write]   # V gathered in a second pass
    if s == "quest":
        pages = _ceil(S / params["page_size"])
        return [
            ("page_minmax", META_READ, 2 * pages * dk),  # per-page min and max key vectors
            ("k_rows", KV_READ, k * dk), ("v_rows", KV_READ, k * v_sep), write,
        ]
    raise AssertionError(s)


def elements_moved(strategy: str, seq_len, head_dim, params: dict[str, np.ndarray], kv_heads: int = 1) -> np.ndarray:
    """Total elements per KV head per decode step (one layer): the table above (docs/traffic-model.md). Terms kept
    per layer (DSA's indexer cache) are shared by the layer's `kv_heads` KV heads: each carries 1 / kv_heads."""
    return sum(e / kv_heads if kind in PER_LAYER_KINDS else e
               for _, kind, e in traffic_components(strategy, seq_len, head_dim, params))


def cache_tokens(strategy: str, seq_len, params: dict[str, np.ndarray]) -> np.ndarray:
    """Positions whose K and V stay in memory: all S, or the k-token cache of an evicting strategy."""
    s = get_strategy(strategy)
    S = _num(seq_len)
    return S if s.keeps_full_cache else _num(_minimum(S, params["k"]))


def extra_cache_elements(strategy: str, seq_len, head_dim, params: dict[str, np.ndarray], k_layout: str = "twice"):
    """Elements per KV head stored beyond K and V of the cached tokens.

    SparQ with K stored twice keeps a second, S-contiguous copy of K (+50% of the KV cache) and v_bar; Quest keeps
    per-page min and max keys; H2O keeps its score statistics; Double Sparsity its label cache (r channels of every
    key). Loki's keys are stored rotated in place (its d_h x d_h projection per head is a weight, not cache). DSA's
    indexer keys are per layer, not per KV head: `index_cache_elements`. `head_dim`: d_h or a KVGeometry (MLA: the
    copy is of the whole row, v_bar d_v wide).
    """
    s = get_strategy(strategy).name
    g = geometry(head_dim)
    S = _num(seq_len)
    dk = float(g.d_k)
    if s == "sparq":
        return (S * dk if k_layout == "twice" else 0 * S) + g.d_v
    if s == "quest":
        return 2 * _ceil(S / params["page_size"]) * dk
    if s == "h2o":
        return S + 0 * dk
    if s == "double-sparsity":
        return S * params["r"]
    return 0 * S


def index_cache_elements(strategy: str, seq_len, params: dict[str, np.ndarray]):
    """Elements per sequence per layer stored apart from the KV heads: DSA's indexer keys, S d_I (0 for the others)."""
    S = _num(seq_len)
    return S * params["index_dim"] if get_strategy(strategy).name == "dsa" else 0 * S
