"""Per trace row: the components a strategy touches (sectors, from `geometry`) and the formula's elements (from
`strategies.traffic_components`), for the strategy and for the dense baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..strategies import PER_LAYER_KINDS, QUEST_DENSE_LAYERS, traffic_components
from .flatten import _cdiv, _Flat, _gather_segments
from .geometry import _all_rows, _append, _columns_once, _columns_twice, _Geom, _rows, _vector, label_write_span

if TYPE_CHECKING:
    from .metadata import _Setup


@dataclass
class _Part:
    """One strategy's traffic on a set of trace rows: sectors touched and formula elements, by component."""
    sectors: dict
    elements: dict
    kinds: dict
    pages: np.ndarray


def _strategy_rows(strategy: str, f: _Flat, rows: np.ndarray, g: _Geom, quest_page: int, reallocate: bool,
                   index_dim: int = 0) -> _Part:
    """Traffic of `strategy` on the trace rows `rows` (indices into f). A per-layer component (DSA's indexer cache)
    is counted on the rows of KV head 0, so that a layer's heads sum to it."""
    S = f.seq_len[rows]
    if len(rows) == f.n:  # every row (rows is then arange(n)): no gather
        pos, poff, comp, coff = f.pos, f.pos_off, f.comp, f.comp_off
    else:
        pi, poff = _gather_segments(f.pos_off, rows)
        pos = f.pos[pi]
        ci, coff = _gather_segments(f.comp_off, rows)
        comp = f.comp[ci]
    params = {"k": f.k_formula[rows], "r": f.r_formula[rows], "page_size": np.full(len(rows), quest_page),
              "local_window": np.zeros(len(rows)), "sinks": np.zeros(len(rows)),
              "index_dim": np.full(len(rows), index_dim)}
    comps = traffic_components(strategy, S, g.d, params)
    head0 = f.kv_head[rows] == 0
    comps = [(n, kind, np.where(head0, e, 0) if kind in PER_LAYER_KINDS else e) for n, kind, e in comps]
    if strategy == "sparq" and not reallocate:  # the run dropped Step 3: no v_bar traffic
        comps = [c for c in comps if not c[0].startswith("v_mean")]
    elements = {name: np.broadcast_to(e, S.shape) for name, _, e in comps}
    kinds = {name: kind for name, kind, _ in comps}
    sec, pages = {}, np.zeros(len(rows), dtype=np.int64)
    for name in elements:
        p = 0
        if name in ("k_rows", "v_rows") or (name in ("k_all", "v_all") and strategy == "dense"):
            s, p = _rows(g, pos, poff)
        elif name in ("k_all", "v_all"):
            s, p = _all_rows(g, S)
        elif name == "k_columns":   # SparQ's columns on its K layout; Loki's leading components of rotated rows
            twice = g.layout == "twice" and strategy == "sparq"
            s, p = (_columns_twice if twice else _columns_once)(g, S, comp, coff)
        elif name == "label_read":  # Double Sparsity's label cache: r channels of every key, one contiguous block
            s = _vector(g, S * np.diff(coff))
        elif name == "label_write":
            lo, hi = label_write_span(g, S, np.diff(coff))
            s = hi - lo
        elif name == "kv_append":
            s = 2 * _append(g, S)
        elif name in ("v_mean_read", "v_mean_write"):
            s = np.full(len(rows), _vector(g, g.d))
        elif name in ("score_stats_read", "score_stats_write"):
            s = _vector(g, S)
        elif name == "page_minmax":
            s = 2 * _vector(g, _cdiv(S, quest_page) * g.d)
        elif name == "index_keys_read":   # DSA's indexer cache [S, d_I] of the layer, one contiguous block
            s = np.where(head0, _vector(g, S * index_dim), 0)
        elif name == "index_key_write":
            lo, hi = label_write_span(g, S, index_dim)
            s = np.where(head0, hi - lo, 0)
        else:  # pragma: no cover - a component the registry added without a replay model
            raise AssertionError(f"replay has no memory model for component {name!r} of {strategy}")
        sec[name] = np.broadcast_to(np.asarray(s, dtype=np.int64), S.shape)
        pages = pages + p
    return _Part(sec, elements, kinds, np.broadcast_to(pages, S.shape))


def _dense_rows(f: _Flat, rows: np.ndarray, g: _Geom) -> _Part:
    """Dense attention on the same rows (all positions), the baseline."""
    S = f.seq_len[rows]
    z = {"k": np.zeros(len(rows)), "r": np.zeros(len(rows))}
    comps = traffic_components("dense", S, g.d, z)
    kall, pages = _all_rows(g, S)
    sec = {"k_all": np.broadcast_to(np.asarray(kall, dtype=np.int64), S.shape),
           "v_all": np.broadcast_to(np.asarray(kall, dtype=np.int64), S.shape),
           "kv_append": np.asarray(2 * _append(g, S), dtype=np.int64)}
    return _Part(sec, {n: np.broadcast_to(e, S.shape) for n, _, e in comps}, {n: k for n, k, _ in comps},
                 np.broadcast_to(2 * np.asarray(pages), S.shape))


def _traffic(st: _Setup, g: _Geom, f: _Flat | None = None):
    """Per trace row (of `f`, default the whole trace): the strategy's and dense's traffic, with Quest's first layers
    dense."""
    f = st.flat if f is None else f
    idx = np.arange(f.n)
    if st.strategy == "quest":
        dmask = f.layer < QUEST_DENSE_LAYERS
        classes = [("dense", idx[dmask]), ("quest", idx[~dmask])]
    else:
        classes = [(st.strategy, idx)]
    classes = [(s, rows) for s, rows in classes if len(rows)]
    parts = [(s, rows, _strategy_rows(s, f, rows, g, st.quest_page, st.reallocate, st.index_dim))
             for s, rows in classes]
    dense = _dense_rows(f, idx, g)
    return parts, dense
