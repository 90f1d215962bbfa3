"""Trace replay: the bytes a strategy really touches, by layout, access granularity, paging, GQA sharing and cache.

The formulas of `strategies.traffic_components` count elements; memory moves sectors (32 B on NVIDIA, 64 B on AMD and
CPUs), cache lines and pages. `replay` takes traces written by `sparq-sim record` (see `sparq_sim.traces`) and counts,
for every trace row (one decode step, layer, sequence and KV head), the bytes of every memory transaction the fetched
index sets need, then times them with the same roofline as `predict`. Pure numpy (+ pyarrow to read the trace),
vectorised over the flattened index lists: no Python loop per row (the optional cache model loops per kernel). A trace
is read in pieces and replayed in batches of whole (step, layer) groups (`BATCH_EVENTS` events or so), so memory stays
bounded however large the trace; the results do not depend on the batches (sums follow the rows' order exactly).

The memory model, one line per assumption (e = bytes per KV element, d = head_dim, R = d e bytes per row, G = access
granularity in bytes, N = --page-size):

- Every tensor of one (layer, sequence, KV head) is its own G-aligned allocation: K and V as [S x d] (d-contiguous
  rows), K's second copy (K stored twice) as [d x S_cap] (S-contiguous columns, each column G-aligned), v_bar as d
  elements, H2O's score statistics as S elements, Quest's per-page min and max keys as two [pages x d] arrays.
- A transaction moves whole G-byte sectors; the bytes touched are the distinct sectors covered by the elements read or
  written, times G. A sector shared by two elements of one request is moved once (per kernel: the union).
- Step 1 of SparQ (r columns of K over all S positions): K twice reads r whole columns of the S-contiguous copy,
  r ceil(S e / G) sectors; K once reads, for each of the S rows of the d-contiguous copy, the sectors its r components
  fall in (at most min(r, R/G) sectors per row when rows are G-aligned; the exact union otherwise).
- Step 2 (and every other strategy's rows): the K and V rows at the fetched positions, each row rounded to sectors.
  Dense and FlexGen's K read all S rows: ceil(S R / G) sectors per tensor.
- Metadata at the KV dtype, as the formula counts it: v_bar read and written (d elements each), H2O's statistics read
  and written (S each), Quest's min/max keys (2 ceil(S/P) d, P = Quest's page size from the trace metadata).
- The new token's k and v: one row of K and one of V written. Storing K twice also writes the new key into the
  S-contiguous copy: d elements in d different columns. The paper's element model leaves that write out, and so does
  `predict`; replay reports it apart (`k_copy_write_bytes`) and does not add it to `bytes_touched`.
- GQA: trace rows hold one index set per KV head, shared by the group's query heads (the recorder sums |q| and the
  approximate scores over the group, as the paper does). A trace whose run did not share its sets holds several rows
  for one (step, layer, sequence, KV head), one per query head: replay reads the union of their positions and of their
  components once, and the formula counts one member's k and r (their mean).
- --page-size N (vLLM-style paged KV cache): pages of N positions, each a G-aligned block ([N x d] for K and V,
  [d x N] for K's second copy). A page is touched whole: a kernel that needs any position of a page moves all N
  positions of that page, for the columns it reads (whole rows for K and V rows, the r column segments for SparQ's
  Step 1). So Step-2 rows cost pages_touched x N R bytes, and all-position reads round S up to whole pages. This is the
  page as the unit of transfer (offloading, block-sparse kernels); without --page-size the model is an ideal gather
  that moves only the sectors it needs (which paging does not change when N R is a multiple of G). Writes of the new
  token and metadata are not rounded to pages.
- --cache: the profile's on-chip cache (`cache.size`) as one fully associative LRU over G-byte lines, shared by every
  layer and step. Lines are referenced kernel by kernel in execution order (per step: layer by layer; per layer: the
  ledger's operators in order; per kernel: sequence by sequence, KV head by KV head, in address order), and the other
  traffic of the step (weights and activations of the projections, MLP, norms, lm_head, attention scores; sizes from
  the ledger) streams through the cache between them as lines that are never reused. A read hits when fewer than
  cache/G distinct lines were referenced since its line's previous reference (LRU stack distance; exact, except that
  lines re-read within one kernel are taken to be re-read in the order they were last touched, which address-ordered
  kernels do). Hits are served on chip and cost no memory-tier time; writes always reach memory (write-back) but
  refresh their lines. The dense baseline runs through its own cache.
- Time: the attention operators of `ledger.attention_decode_ops`, one per (step, layer), carry the replayed bytes in
  place of the formula's (bytes not served on chip, on the tier `predict` places the KV cache in, for the trace's
  model, batch and longest context), and are timed with `roofline.time_op` (achieved bandwidth, compute, launch
  overhead), so that at a granularity of one element with K twice the replayed attention time equals `predict`'s
  attention_time_s for the same shapes. The rest of the step (projections, MLP, lm_head) is `predict`'s. One device.

Summaries (`level`): 'run' (one row per trace and device), 'step', 'layer', 'row' (one per trace row, no time).
Bytes and times are totals over what the row covers (a run: all steps; a layer: all steps of that layer);
`mean_step_time_s` and `mean_attention_time_s` are per decode step. Columns:

    trace, hardware, model, strategy, compression, k_layout, granularity_bytes, page_size, cache, kv_dtype, kv_tier
    bytes_touched            bytes of the transactions the fetched sets need (reads and writes, all tiers)
    bytes_formula            the analytical formula's bytes for the same rows (k = fetched positions, r = components)
    ratio                    bytes_touched / bytes_formula (1 at a granularity of one element, K twice, no pages)
    k_columns_bytes, k_rows_bytes, v_rows_bytes, metadata_bytes, kv_write_bytes   bytes_touched by part
    bytes_on_chip            reads served by the on-chip cache (--cache; else 0); bytes_memory = the rest
    bytes_dense, bytes_dense_formula   dense attention on the same trace (all positions) under the same model
    transfer_ratio           bytes_touched / bytes_dense
    pages_touched            pages moved (with --page-size; else 0): K, V and K's second copy counted apart, so
                             positions 0..15 in pages of 16 are one page of K plus one of V
    k_copy_write_bytes       the new key written into K's second copy (K twice, SparQ), not in bytes_touched
    attention_time_s, time_s, dense_attention_time_s, dense_time_s   predicted (realistic roofline) times
    speedup_vs_dense, attention_speedup_vs_dense
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..hardware_profiles import MAX_GRANULARITY_BYTES, HardwareProfile, load_hardware
from .errors import UserError
from .strategies import (DEFAULT_PAGE_SIZE, KV_READ, KV_WRITE, META_READ, META_WRITE, QUEST_DENSE_LAYERS,
                         get_strategy, traffic_components)
from .units import DTYPE_BYTES, parse_dtype

K_LAYOUTS = ("twice", "once")
LEVELS = ("run", "step", "layer", "row")
PARTS = ("k_columns", "k_rows", "v_rows", "metadata", "kv_write")
PART_OF = {"k_columns": "k_columns", "k_rows": "k_rows", "k_all": "k_rows", "v_rows": "v_rows", "v_all": "v_rows",
           "kv_append": "kv_write", "v_mean_read": "metadata", "v_mean_write": "metadata",
           "score_stats_read": "metadata", "score_stats_write": "metadata", "page_minmax": "metadata"}
FIELD_OF_KIND = {KV_READ: "kv_read", KV_WRITE: "kv_write", META_READ: "meta_read", META_WRITE: "meta_write"}
# the ledger operator (ledger.attention_decode_ops) that carries each component, per strategy
OP_OF = {
    "dense": {"kv_append": "kv_append", "k_all": "attn_scores", "v_all": "attn_values"},
    "sparq": {"kv_append": "kv_append", "k_columns": "sparq_approx_scores", "k_rows": "sparq_exact_scores",
              "v_rows": "sparq_values", "v_mean_read": "sparq_mean_value", "v_mean_write": "sparq_mean_value"},
    "h2o": {"kv_append": "kv_append", "k_rows": "attn_scores", "v_rows": "attn_values",
            "score_stats_read": "h2o_score_update", "score_stats_write": "h2o_score_update"},
    "lm-infinite": {"kv_append": "kv_append", "k_rows": "attn_scores", "v_rows": "attn_values"},
    "flexgen": {"kv_append": "kv_append", "k_all": "attn_scores", "v_rows": "attn_values"},
    "quest": {"kv_append": "kv_append", "page_minmax": "quest_page_scores", "k_rows": "attn_scores",
              "v_rows": "attn_values"},
}
MAX_CACHE_LINES = 400_000_000  # the --cache model keeps 8 bytes per line of the address space the trace spans

RUN_COLUMNS = [
    "trace", "hardware", "model", "strategy", "compression", "k_layout", "granularity_bytes", "page_size", "cache",
    "kv_dtype", "kv_tier", "steps", "layers", "batch", "kv_heads", "rows", "events", "seq_len_max",
    "bytes_touched", "bytes_formula", "ratio", *(f"{p}_bytes" for p in PARTS), "bytes_on_chip", "bytes_memory",
    "bytes_dense", "bytes_dense_formula", "transfer_ratio", "pages_touched", "k_copy_write_bytes",
    "attention_time_s", "time_s", "mean_attention_time_s", "mean_step_time_s", "dense_attention_time_s",
    "dense_time_s", "speedup_vs_dense", "attention_speedup_vs_dense",
]


# ---------------------------------------------------------------------------------------------------------------------
# the flattened trace


@dataclass
class _Flat:
    """Trace rows after the GQA union, sorted by (step, layer, batch, kv_head); index lists flattened with offsets."""
    step: np.ndarray
    layer: np.ndarray
    batch: np.ndarray
    kv_head: np.ndarray
    seq_len: np.ndarray
    pos: np.ndarray       # int64 positions, sorted and distinct within each row
    pos_off: np.ndarray   # int64 [n + 1]
    comp: np.ndarray
    comp_off: np.ndarray
    k_formula: np.ndarray  # float: positions per member row (mean over the union's members)
    r_formula: np.ndarray
    members: np.ndarray
    events: int            # fetched-index events in the trace (positions + components, before any union)

    @property
    def n(self) -> int:
        return len(self.step)

    @property
    def n_pos(self) -> np.ndarray:
        return np.diff(self.pos_off)

    @property
    def n_comp(self) -> np.ndarray:
        return np.diff(self.comp_off)


def _cdiv(a, b):
    return -(-a // b)


def _segment_sum(values, offsets):
    """Sum of values[offsets[i]:offsets[i+1]] for every i (empty segments give 0)."""
    cs = np.zeros(len(values) + 1, dtype=np.result_type(values.dtype, np.int64))
    np.cumsum(values, out=cs[1:])
    return cs[offsets[1:]] - cs[offsets[:-1]]


def _gather_segments(offsets, rows):
    """Indices of the values of `rows` (in that order), and the new offsets."""
    starts = offsets[rows]
    lens = offsets[rows + 1] - starts
    new_off = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lens, out=new_off[1:])
    idx = np.arange(new_off[-1], dtype=np.int64) + np.repeat(starts - new_off[:-1], lens)
    return idx, new_off


def _list_column(table, name):
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table[name]
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    values = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    off = np.zeros(len(arr) + 1, dtype=np.int64)
    np.cumsum(pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False), out=off[1:])
    return values, off


def _sorted_sets(values, off, what, where, keys, row0=0):
    """Make every row's list sorted; a value listed twice in one row is an error (rows numbered from `row0`)."""
    if len(values) < 2:
        return values
    d = np.diff(values)
    same_row = np.ones(len(d), dtype=bool)
    inner = off[1:-1]
    inner = inner[(inner > 0) & (inner < len(values))]
    same_row[inner - 1] = False
    if not np.any((d <= 0) & same_row):
        return values
    parent = np.repeat(np.arange(len(off) - 1), np.diff(off))
    order = np.lexsort((values, parent))
    values = values[order]
    dup = (np.diff(values) == 0) & (np.diff(parent) == 0)
    if dup.any():
        j = int(np.argmax(dup))
        i = int(parent[j])
        raise UserError(f"{where}: row {row0 + i} (step {keys[0][i]}, layer {keys[1][i]}, kv_head {keys[2][i]}): "
                        f"{what} {int(values[j])} is listed twice")
    return values


def _flatten(trace, where, row0: int = 0) -> _Flat:
    """A trace (or a table of consecutive trace rows, the first being row `row0` of the file) -> _Flat."""
    t = getattr(trace, "table", trace)
    num = {c: np.asarray(t[c].to_numpy(), dtype=np.int64) for c in ("step", "layer", "kv_head", "batch", "seq_len")}
    pos, pos_off = _list_column(t, "positions")
    comp, comp_off = _list_column(t, "components")
    keys = (num["step"], num["layer"], num["kv_head"])
    pos = _sorted_sets(pos, pos_off, "position", where, keys, row0)
    comp = _sorted_sets(comp, comp_off, "component", where, keys, row0)
    n = len(num["step"])
    events = int(len(pos) + len(comp))
    npos = np.diff(pos_off).astype(np.float64)
    ncomp = np.diff(comp_off).astype(np.float64)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return _Flat(z, z, z, z, z, pos, pos_off, comp, comp_off, z.astype(float), z.astype(float), z, 0)

    order = np.lexsort((num["kv_head"], num["batch"], num["layer"], num["step"]))
    ks = np.stack([num["step"][order], num["layer"][order], num["batch"][order], num["kv_head"][order]])
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = np.any(ks[:, 1:] != ks[:, :-1], axis=0)
    sorted_already = bool(np.all(order == np.arange(n)))
    if new_group.all():  # one row per (step, layer, batch, kv_head): index sets shared by the GQA group
        if not sorted_already:
            pi, pos_off = _gather_segments(pos_off, order)
            ci, comp_off = _gather_segments(comp_off, order)
            pos, comp = pos[pi], comp[ci]
        s = num["seq_len"][order]
        return _Flat(ks[0], ks[1], ks[2], ks[3], s, pos, pos_off, comp, comp_off, npos[order], ncomp[order],
                     np.ones(n, dtype=np.int64), events)

    # several rows for one KV head: per-query-head sets of a run that did not share them -> their union
    gid = np.cumsum(new_group) - 1            # group of each row (in sorted order)
    ng = int(gid[-1]) + 1
    seq = num["seq_len"][order]
    first = np.flatnonzero(new_group)
    if np.any(seq != seq[first][gid]):
        i = int(order[int(np.argmax(seq != seq[first][gid]))])
        raise UserError(f"{where}: row {row0 + i}: rows of one (step, layer, batch, kv_head) disagree on seq_len")
    members = np.bincount(gid, minlength=ng)

    def union(values, off):
        idx, o = _gather_segments(off, order)
        v = values[idx]
        g = np.repeat(gid, np.diff(o))
        srt = np.lexsort((v, g))
        v, g = v[srt], g[srt]
        keep = np.ones(len(v), dtype=bool)
        keep[1:] = (v[1:] != v[:-1]) | (g[1:] != g[:-1])
        v, g = v[keep], g[keep]
        new_off = np.zeros(ng + 1, dtype=np.int64)
        np.cumsum(np.bincount(g, minlength=ng), out=new_off[1:])
        return v, new_off

    pos, pos_off = union(pos, pos_off)
    comp, comp_off = union(comp, comp_off)
    kf = np.bincount(gid, weights=npos[order], minlength=ng) / members
    rf = np.bincount(gid, weights=ncomp[order], minlength=ng) / members
    return _Flat(ks[0][first], ks[1][first], ks[2][first], ks[3][first], seq[first], pos, pos_off, comp, comp_off,
                 kf, rf, members.astype(np.int64), events)


# ---------------------------------------------------------------------------------------------------------------------
# sector counting (all sizes in bits, so that int4's half-byte elements stay integers)


@dataclass(frozen=True)
class _Geom:
    d: int        # head_dim
    e: int        # bits per KV element
    G: int        # bits per access (sector)
    N: int        # positions per page (0: no paging)
    layout: str   # twice | once

    @property
    def R(self) -> int:
        return self.d * self.e

    @property
    def page_sectors(self) -> int:  # one G-aligned page of K or V
        return _cdiv(self.N * self.R, self.G)


def _union_sectors(start, end, off, G):
    """Distinct G-sectors covered by intervals [start, end), sorted and disjoint within each segment of `off`."""
    if len(start) == 0:
        return np.zeros(len(off) - 1, dtype=np.int64)
    first = start // G
    last = (end - 1) // G
    prev = np.empty_like(last)
    prev[0] = -1
    prev[1:] = last[:-1]
    starts = off[:-1][off[:-1] < off[1:]]
    prev[starts] = -1
    new = last - np.maximum(first, prev + 1) + 1
    np.maximum(new, 0, out=new)
    return _segment_sum(new, off)


def _pattern_sectors(comp, comp_off, row_bits, elem_bits, G, nrows):
    """Sectors touched by the elements `comp` (sorted per segment) of each of the rows 0 .. nrows-1 of a G-aligned,
    contiguous array of rows of `row_bits` bits, per segment.

    The sector pattern repeats every T = G / gcd(row_bits, G) rows, and rows T apart never share a sector (T rows span a
    whole number of sectors), so F(n) = (n // T) F(T) + F(n mod T), with F evaluated on at most T rows.
    """
    nseg = len(comp_off) - 1
    nrows = np.broadcast_to(np.asarray(nrows, dtype=np.int64), (nseg,))
    T = G // math.gcd(row_bits, G)
    if T == 1:
        one = _union_sectors(comp * elem_bits, comp * elem_bits + elem_bits, comp_off, G)
        return nrows * one
    r = np.diff(comp_off)
    ev = T * r
    ev_off = np.zeros(nseg + 1, dtype=np.int64)
    np.cumsum(ev, out=ev_off[1:])
    seg = np.repeat(np.arange(nseg), ev)
    loc = np.arange(ev_off[-1], dtype=np.int64) - ev_off[:-1][seg]
    rs = r[seg]
    p = loc // np.maximum(rs, 1)
    c = comp[comp_off[:-1][seg] + loc % np.maximum(rs, 1)]
    start = p * row_bits + c * elem_bits
    first = start // G
    last = (start + elem_bits - 1) // G
    prev = np.empty_like(last)
    if len(prev):
        prev[0] = -1
        prev[1:] = last[:-1]
        prev[ev_off[:-1][ev > 0]] = -1
    new = np.maximum(last - np.maximum(first, prev + 1) + 1, 0)
    cs = np.zeros(len(new) + 1, dtype=np.int64)
    np.cumsum(new, out=cs[1:])

    def F(m):  # union over rows [0, m) of each segment, m <= T
        return cs[ev_off[:-1] + m * r] - cs[ev_off[:-1]]

    return (nrows // T) * F(np.full(nseg, T)) + F(nrows % T)


def _rows(g: _Geom, pos, off):
    """(sectors, pages) of the K (or V) rows at the positions of each row of the trace."""
    npos = np.diff(off)
    if g.N:
        pg = pos // g.N
        new = np.ones(len(pos), dtype=np.int64)
        new[1:] = pg[1:] != pg[:-1]
        starts = off[:-1][npos > 0]
        new[starts] = 1
        pages = _segment_sum(new, off)
        return pages * g.page_sectors, pages
    if g.R % g.G == 0:
        return npos * (g.R // g.G), 0
    return _union_sectors(pos * g.R, (pos + 1) * g.R, off, g.G), 0


def _all_rows(g: _Geom, S):
    """(sectors, pages) of all S rows of K (or V)."""
    if g.N:
        pages = _cdiv(S, g.N)
        return pages * g.page_sectors, pages
    return _cdiv(S * g.R, g.G), 0


def _columns_twice(g: _Geom, S, comp, comp_off):
    """(sectors, pages) of SparQ's Step 1 on the S-contiguous copy of K: r columns over all S positions."""
    r = np.diff(comp_off)
    if g.N:
        pages = _cdiv(S, g.N)
        per_page = _pattern_sectors(comp, comp_off, g.d * g.N * g.e, g.N * g.e, g.G, 1)
        return pages * per_page, np.where(r > 0, pages, 0)
    return r * _cdiv(S * g.e, g.G), 0


def _columns_once(g: _Geom, S, comp, comp_off):
    """(sectors, pages) of SparQ's Step 1 on the d-contiguous K: r components of each of the S rows."""
    r = np.diff(comp_off)
    if g.N:
        pages = _cdiv(S, g.N)
        return pages * _pattern_sectors(comp, comp_off, g.R, g.e, g.G, g.N), np.where(r > 0, pages, 0)
    return _pattern_sectors(comp, comp_off, g.R, g.e, g.G, S), 0


def _append(g: _Geom, S):
    """Sectors of one row written at position S - 1 (K or V)."""
    o = ((S - 1) % g.N if g.N else S - 1) * g.R
    return (o + g.R - 1) // g.G - o // g.G + 1


def _copy_write(g: _Geom, S):
    """Sectors of the new key written into the S-contiguous copy of K: d elements, one per column."""
    if g.N:
        o = (S - 1) % g.N
        out = np.zeros(len(S), dtype=np.int64)
        for v in np.unique(o):
            one = _pattern_sectors(np.array([v]), np.array([0, 1]), g.N * g.e, g.e, g.G, g.d)[0]
            out[o == v] = one
        return out
    o = (S - 1) * g.e
    return g.d * ((o + g.e - 1) // g.G - o // g.G + 1)


def _vector(g: _Geom, n_elements):
    return _cdiv(n_elements * g.e, g.G)


# ---------------------------------------------------------------------------------------------------------------------
# per trace row: components touched (sectors) and the formula (elements)


@dataclass
class _Part:
    """One strategy's traffic on a set of trace rows: sectors touched and formula elements, by component."""
    sectors: dict
    elements: dict
    kinds: dict
    pages: np.ndarray


def _strategy_rows(strategy: str, f: _Flat, rows: np.ndarray, g: _Geom, quest_page: int, reallocate: bool) -> _Part:
    """Traffic of `strategy` on the trace rows `rows` (indices into f)."""
    S = f.seq_len[rows]
    if len(rows) == f.n:  # every row (rows is then arange(n)): no gather
        pos, poff, comp, coff = f.pos, f.pos_off, f.comp, f.comp_off
    else:
        pi, poff = _gather_segments(f.pos_off, rows)
        pos = f.pos[pi]
        ci, coff = _gather_segments(f.comp_off, rows)
        comp = f.comp[ci]
    params = {"k": f.k_formula[rows], "r": f.r_formula[rows], "page_size": np.full(len(rows), quest_page),
              "local_window": np.zeros(len(rows)), "sinks": np.zeros(len(rows))}
    comps = traffic_components(strategy, S, g.d, params)
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
        elif name == "k_columns":
            s, p = (_columns_twice if g.layout == "twice" else _columns_once)(g, S, comp, coff)
        elif name == "kv_append":
            s = 2 * _append(g, S)
        elif name in ("v_mean_read", "v_mean_write"):
            s = np.full(len(rows), _vector(g, g.d))
        elif name in ("score_stats_read", "score_stats_write"):
            s = _vector(g, S)
        elif name == "page_minmax":
            s = 2 * _vector(g, _cdiv(S, quest_page) * g.d)
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


# ---------------------------------------------------------------------------------------------------------------------
# the on-chip cache: an LRU over G-byte lines, kernel by kernel


class _LRU:
    """Fully associative LRU of `capacity` lines over line ids in [0, n_lines).

    Time advances one kernel ("phase") at a time; the lines of a phase are distinct and referenced in the given order.
    A line's stack distance is counted from three parts: lines whose last reference lies in a phase strictly between
    (a Fenwick tree over phases keeps how many lines each phase was the last reference of, fill traffic included),
    lines last referenced later in the line's own previous phase (a live bitmap per phase), and lines referenced
    earlier in the current phase that were below it in the stack (last reference in an older or the same phase)."""

    def __init__(self, capacity_lines: int, n_lines: int, max_phases: int):
        self.C = int(capacity_lines)
        self.last_ph = np.full(n_lines, -1, dtype=np.int32)
        self.last_ix = np.zeros(n_lines, dtype=np.int32)
        self.live: list = []
        self.tree = [0] * (max_phases + 2)
        self.P = 0

    def _add(self, i, v):
        i += 1
        t = self.tree
        while i < len(t):
            t[i] += v
            i += i & -i

    def _prefix(self, i):  # lines whose last reference is in phases 0..i
        s = 0
        i += 1
        t = self.tree
        while i > 0:
            s += t[i]
            i -= i & -i
        return s

    def fill(self, lines: int):
        """Traffic that passes through the cache and is not reused (weights, activations)."""
        if lines > 0:
            self.live.append(None)
            self._add(self.P, int(lines))
            self.P += 1

    def access(self, ids: np.ndarray) -> np.ndarray:
        """Reference the lines `ids` (distinct) in order; returns which were hits."""
        M = len(ids)
        P = self.P
        hit = np.zeros(M, dtype=bool)
        if M == 0:
            return hit
        q = self.last_ph[ids]
        qi = self.last_ix[ids]
        present = np.bincount(q + 1)                      # phases are small integers: no sort needed
        uq = np.flatnonzero(present) - 1
        classes = []                                      # (previous phase v, mask or None for all lines)
        if len(uq) == 1:
            classes.append((int(uq[0]), None))
        else:
            lookup = np.zeros(len(present), dtype=np.int64)
            lookup[uq + 1] = np.arange(len(uq))
            inv = lookup[q + 1]
            classes += [(int(v), inv == j) for j, v in enumerate(uq.tolist())]
        total = self._prefix(P - 1)
        for v, m in classes:
            if v < 0:                                     # first references: misses
                continue
            live = self.live[v]
            mid = total - self._prefix(v)                 # lines last referenced in phases after v
            sel = slice(None) if m is None else np.flatnonzero(m)
            if self.C > 0 and mid < self.C:
                if mid + len(live) + M < self.C:          # even the farthest line of the class is close enough
                    hit[sel] = True
                else:
                    le = q <= v
                    below = np.cumsum(le) - le            # earlier lines of this phase, last used no later than v
                    suffix = np.zeros(len(live) + 1, dtype=np.int64)
                    suffix[:-1] = np.cumsum(live[::-1])[::-1]
                    # ... plus lines referenced later in phase v itself and not since
                    hit[sel] = mid + below[sel] + suffix[qi[sel] + 1] < self.C
        for v, m in classes:                              # then move the lines: all distances were counted first
            if v >= 0:
                sel = slice(None) if m is None else np.flatnonzero(m)
                self.live[v][qi[sel]] = False
                self._add(v, -(M if m is None else int(np.count_nonzero(m))))
        self.last_ph[ids] = P
        self.last_ix[ids] = np.arange(M, dtype=np.int32)
        self.live.append(np.ones(M, dtype=bool))
        self._add(P, M)
        self.P += 1
        return hit


def _ranges(lo, hi):
    """Concatenated aranges [lo_i, hi_i) and the segment of each value."""
    lens = np.maximum(hi - lo, 0)
    off = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    seg = np.repeat(np.arange(len(lens)), lens)
    return np.arange(off[-1], dtype=np.int64) - off[:-1][seg] + lo[seg], seg


def _distinct_runs(ids, seg):
    """Drop each (id, segment) pair equal to the one before it: sorted sectors made distinct per segment."""
    keep = np.ones(len(ids), dtype=bool)
    keep[1:] = (ids[1:] != ids[:-1]) | (seg[1:] != seg[:-1])
    return ids[keep], seg[keep]


def _pattern_lines(comp, coff, elem_bits, G):
    """Per segment: the sorted distinct sectors of the elements [c elem_bits, (c + 1) elem_bits), c in comp."""
    start = comp * elem_bits
    ids, s2 = _ranges(start // G, (start + elem_bits - 1) // G + 1)
    seg = np.repeat(np.arange(len(coff) - 1), np.diff(coff))[s2]
    ids, seg = _distinct_runs(ids, seg)
    off = np.zeros(len(coff), dtype=np.int64)
    np.cumsum(np.bincount(seg, minlength=len(coff) - 1), out=off[1:])
    return ids, off


def _tile(U, uoff, reps, stride):
    """Per segment i: the pattern U[uoff[i]:uoff[i+1]] repeated reps[i] times, the p-th copy shifted by p stride."""
    u = np.diff(uoff)
    n = np.asarray(reps, dtype=np.int64) * u
    ids, seg = _ranges(np.zeros(len(u), dtype=np.int64), n)   # local index within the segment
    us = np.maximum(u[seg], 1)
    return (ids // us) * stride + U[uoff[:-1][seg] + ids % us], seg


class _Lines:
    """Line ids (G-sized lines) of every tensor of a trace, and the lines each component touches."""

    TENSORS = ("k", "v", "kt", "vmean", "stats", "minmax")

    def __init__(self, g: _Geom, f, quest_page: int):
        """f: the whole trace (_Flat) or its dimensions (_Dims)."""
        dims = f if isinstance(f, _Dims) else _Dims.of_flat(f)
        self.g = g
        self.L = dims.L1
        self.B = dims.NB
        self.H = dims.H
        S_cap = dims.seq_len_max
        self.col = _cdiv(S_cap * g.e, g.G)                   # sectors per column of K's S-contiguous copy
        self.kt_page = _cdiv(g.d * g.N * g.e, g.G) if g.N else 0
        rows_all, _ = _all_rows(g, np.int64(S_cap))
        size = {"k": int(rows_all), "v": int(rows_all),
                "kt": int(_cdiv(S_cap, g.N) * self.kt_page) if g.N else g.d * self.col,
                "vmean": int(_vector(g, g.d)), "stats": int(_vector(g, S_cap)),
                "minmax": 2 * int(_vector(g, _cdiv(S_cap, quest_page) * g.d))}
        self.mm_half = int(_vector(g, _cdiv(S_cap, quest_page) * g.d))
        regions = self.L * self.B * self.H
        self.stride = size
        self.base = {}
        acc = 0
        for t in self.TENSORS:
            self.base[t] = acc
            acc += regions * size[t]
        self.n_lines = acc
        if acc > MAX_CACHE_LINES:
            raise UserError(f"--cache: this trace spans {acc:,} lines of {g.G / 8:g} B, more than the cache model "
                            f"handles ({MAX_CACHE_LINES:,}); use a coarser --granularity or a shorter trace")

    def region(self, t, f: _Flat, rows):
        return self.base[t] + ((f.layer[rows] * self.B + f.batch[rows]) * self.H + f.kv_head[rows]) * self.stride[t]

    def rows(self, f, rows, t, positions=True):
        """Lines of the K or V rows at the trace's positions (or all S positions), per row, in address order."""
        g = self.g
        if not positions:  # all rows: one contiguous range (whole pages, when paged)
            S = f.seq_len[rows]
            n = _cdiv(S, g.N) * g.page_sectors if g.N else _cdiv(S * g.R, g.G)
            ids, seg = _ranges(np.zeros(len(rows), dtype=np.int64), n)
            return self.region(t, f, rows)[seg] + ids, seg
        if positions:
            pi, poff = _gather_segments(f.pos_off, rows)
            pos = f.pos[pi]
            seg = np.repeat(np.arange(len(rows)), np.diff(poff))
        else:
            S = f.seq_len[rows]
            n = _cdiv(S, g.N) * g.N if g.N else S
            pos, seg = _ranges(np.zeros(len(rows), dtype=np.int64), n)
        if g.N:
            pg = pos // g.N
            keep = np.ones(len(pg), dtype=bool)
            keep[1:] = (pg[1:] != pg[:-1]) | (seg[1:] != seg[:-1])
            pg, seg = pg[keep], seg[keep]
            lo = pg * g.page_sectors
            ids, s2 = _ranges(lo, lo + g.page_sectors)
            seg = seg[s2]
        else:
            lo = pos * g.R // g.G
            hi = ((pos + 1) * g.R - 1) // g.G + 1
            ids, s2 = _ranges(lo, hi)
            seg = seg[s2]
            if g.R % g.G:
                ids, seg = _distinct_runs(ids, seg)
        return self.region(t, f, rows)[seg] + ids, seg

    def columns(self, f, rows):
        """Lines of SparQ's Step 1: r columns of K over all positions (K twice), or r components of every row."""
        g = self.g
        ci, coff = _gather_segments(f.comp_off, rows)
        comp = f.comp[ci]
        cseg = np.repeat(np.arange(len(rows)), np.diff(coff))
        S = f.seq_len[rows]
        if g.layout == "twice" and not g.N:
            lo = comp * self.col
            ids, s2 = _ranges(lo, lo + _cdiv(S[cseg] * g.e, g.G))
            seg = cseg[s2]
            return self.region("kt", f, rows)[seg] + ids, seg
        npos = _cdiv(S, g.N) * g.N if g.N else S
        if g.layout == "twice" or g.R % g.G == 0:
            # the same sector pattern in every page of the second copy (K twice), or in every row (rows G-aligned)
            if g.layout == "twice":
                U, uoff = _pattern_lines(comp, coff, g.N * g.e, g.G)
                ids, seg = _tile(U, uoff, _cdiv(S, g.N), self.kt_page)
                return self.region("kt", f, rows)[seg] + ids, seg
            U, uoff = _pattern_lines(comp, coff, g.e, g.G)
            ids, seg = _tile(U, uoff, npos, g.R // g.G)
            return self.region("k", f, rows)[seg] + ids, seg
        # every (position, component) element, position-major: its first and last sector
        r = np.diff(coff)
        p_all, pseg = _ranges(np.zeros(len(rows), dtype=np.int64), npos)
        reps = r[pseg]
        el_seg = np.repeat(pseg, reps)
        el_p = np.repeat(p_all, reps)
        # component index within the row for each element
        first_el = np.zeros(len(p_all) + 1, dtype=np.int64)
        np.cumsum(reps, out=first_el[1:])
        k = np.arange(first_el[-1], dtype=np.int64) - np.repeat(first_el[:-1], reps)
        el_c = comp[coff[:-1][el_seg] + k]
        if g.layout == "twice":  # paged [d x N] blocks: page, then component-major inside the page
            page = el_p // g.N
            start = page * self.kt_page * g.G + el_c * g.N * g.e + (el_p % g.N) * g.e
            t = "kt"
        else:
            if g.N:
                start = (el_p // g.N) * g.page_sectors * g.G + (el_p % g.N) * g.R + el_c * g.e
            else:
                start = el_p * g.R + el_c * g.e
            t = "k"
        order = np.lexsort((start, el_seg))
        start, el_seg = start[order], el_seg[order]
        ids, s2 = _ranges(start // g.G, (start + g.e - 1) // g.G + 1)
        seg = el_seg[s2]
        ids, seg = _distinct_runs(ids, seg)
        return self.region(t, f, rows)[seg] + ids, seg

    def append(self, f, rows):
        g = self.g
        S = f.seq_len[rows]
        p = S - 1
        if g.N:
            o = (p // g.N) * g.page_sectors * g.G + (p % g.N) * g.R
        else:
            o = p * g.R
        ids, seg = _ranges(o // g.G, (o + g.R - 1) // g.G + 1)
        k = self.region("k", f, rows)[seg] + ids
        v = self.region("v", f, rows)[seg] + ids
        # K row, then V row, per trace row
        return np.concatenate([k, v]), np.concatenate([seg, seg])

    def vector(self, f, rows, t, n_elements, offset=0):
        n = np.broadcast_to(np.asarray(_vector(self.g, n_elements), dtype=np.int64), (len(rows),))
        ids, seg = _ranges(np.zeros(len(rows), dtype=np.int64) + offset, n + offset)
        return self.region(t, f, rows)[seg] + ids, seg

    def component(self, name, f, rows, strategy, quest_page, baseline=False):
        d = self.g.d
        listed = strategy == "dense" and not baseline  # a dense run lists every position; the baseline reads all S
        if name in ("k_rows", "k_all"):
            return self.rows(f, rows, "k", positions=(name == "k_rows" or listed))
        if name in ("v_rows", "v_all"):
            return self.rows(f, rows, "v", positions=(name == "v_rows" or listed))
        if name == "k_columns":
            return self.columns(f, rows)
        if name == "kv_append":
            return self.append(f, rows)
        if name in ("v_mean_read", "v_mean_write"):
            return self.vector(f, rows, "vmean", d)
        if name in ("score_stats_read", "score_stats_write"):
            return self.vector(f, rows, "stats", f.seq_len[rows])
        if name == "page_minmax":
            n = _cdiv(f.seq_len[rows], quest_page) * d
            a, sa = self.vector(f, rows, "minmax", n)
            b, sb = self.vector(f, rows, "minmax", n, offset=self.mm_half)
            return np.concatenate([a, b]), np.concatenate([sa, sb])
        raise AssertionError(name)  # pragma: no cover


# ---------------------------------------------------------------------------------------------------------------------
# the replay of one trace on one device


@dataclass
class _Setup:
    trace_name: str
    strategy: str
    compression: float
    model: object          # ModelSpec or None
    kv_dtype: str
    dtype: str
    quest_page: int
    reallocate: bool
    flat: _Flat | None = None   # the whole trace (`_trace_setup`); replay itself walks it batch by batch


def _meta_setup(meta: dict, where: str, name: str, model, dtype, kv_dtype) -> _Setup:
    """Strategy, dtypes, model and parameters from a trace's metadata (and the overrides)."""
    from .models import ModelSpec, load_model_spec, spec_from_config

    strategy = get_strategy(meta.get("strategy")).name
    params = meta.get("params") or {}
    dtypes = meta.get("dtypes") or {}
    try:
        kvd = parse_dtype(kv_dtype or dtypes.get("kv") or "bf16", "kv dtype")
        dt = parse_dtype(dtype or dtypes.get("compute") or kvd)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    spec = None
    if model is not None:
        spec = load_model_spec(model)
    else:
        m = meta.get("model") or {}
        fields = {k: m[k] for k in ModelSpec.__dataclass_fields__ if k in m}
        try:
            spec = ModelSpec(**fields)
        except (TypeError, UserError):
            try:
                spec = spec_from_config(m, m.get("name", "model"), where)
            except UserError:
                spec = None
    head_dim = spec.head_dim if spec is not None else (meta.get("model") or {}).get("head_dim")
    if not isinstance(head_dim, int) or head_dim < 1:
        raise UserError(f"{where}: metadata names no model head_dim the simulator can use; pass --model NAME or a "
                        f"config.json")
    if spec is None:
        raise UserError(f"{where}: the trace's model is not one the simulator knows; pass --model NAME or a "
                        f"config.json for its shapes")
    comp = params.get("compression", 1.0)
    try:
        comp = float(comp)
    except (TypeError, ValueError):
        comp = 1.0
    qp = params.get("page_size") or DEFAULT_PAGE_SIZE
    return _Setup(name, strategy, comp, spec, kvd, dt, int(qp), bool(params.get("reallocate", True)))


def _check_ranges(st: _Setup, where: str, comp_max: int, kv_head_max: int, layer_max: int) -> None:
    spec = st.model
    if comp_max >= spec.head_dim:
        raise UserError(f"{where}: component {comp_max} is outside [0, head_dim = {spec.head_dim})")
    if kv_head_max >= spec.n_kv_heads:
        raise UserError(f"{where}: kv_head {kv_head_max} is outside [0, {spec.n_kv_heads}) KV heads of "
                        f"{spec.name}")
    if layer_max >= spec.n_layers:
        raise UserError(f"{where}: layer {layer_max} is outside [0, {spec.n_layers}) layers of "
                        f"{spec.name}")


def _check_flat(st: _Setup, flat: _Flat, where: str) -> None:
    if flat.n:
        _check_ranges(st, where, int(flat.comp.max(initial=-1)), int(flat.kv_head.max()), int(flat.layer.max()))


def _trace_setup(trace, model, dtype, kv_dtype) -> _Setup:
    """Setup and the whole flattened trace of a Trace held in memory."""
    where = f"trace {str(trace.path)!r}" if trace.path is not None else "trace"
    name = str(trace.path) if trace.path is not None else "<trace>"
    st = _meta_setup(trace.metadata, where, name, model, dtype, kv_dtype)
    flat = _flatten(trace, where)
    _check_flat(st, flat, where)
    st.flat = flat
    return st


def _geometry(st: _Setup, hw: HardwareProfile, k_layout, granularity, page_size) -> _Geom:
    e_bytes = DTYPE_BYTES[st.kv_dtype]
    if granularity is None:
        G = hw.granularity_bytes
    elif isinstance(granularity, str) and granularity.strip().lower() in ("element", "elem", "e"):
        G = e_bytes
    else:
        G = float(granularity)
    G_bits = G * 8
    if not (G > 0) or abs(G_bits - round(G_bits)) > 1e-9:
        raise UserError(f"--granularity must be a positive whole number of bits (in bytes: 32, 64, 0.5, ...), got {G:g}")
    return _Geom(st.model.head_dim, int(round(e_bytes * 8)), int(round(G_bits)), int(page_size or 0), k_layout)


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
    parts = [(s, rows, _strategy_rows(s, f, rows, g, st.quest_page, st.reallocate)) for s, rows in classes]
    dense = _dense_rows(f, idx, g)
    return parts, dense


# ---------------------------------------------------------------------------------------------------------------------
# a trace, batch by batch: what replay knows of the whole trace first (its key columns), then runs of whole units

BATCH_EVENTS = 1 << 22   # fetched-index events flattened at a time (a batch grows to hold one whole unit, see _Dims)
KEY_COLUMNS = ("step", "layer", "kv_head", "batch", "seq_len")


@dataclass(frozen=True)
class _Dims:
    """What replay must know of a whole trace before it walks it batch by batch; read from the key columns alone."""
    rows: int            # trace rows (before the GQA union)
    L1: int              # largest layer + 1
    NB: int              # largest batch index + 1
    H: int               # largest kv_head + 1
    seq_len_max: int
    step_max: int
    n_sl: int            # distinct (step, layer)
    n_steps: int         # distinct steps, layers, sequences, KV heads
    n_layers: int
    n_batches: int
    n_kv_heads: int
    unit: str = "sl"     # batches hold whole units, in file order: 'sl' when every (step, layer) group is contiguous
    #                      and the groups come in order in the file, 'step' when only the steps do, 'all' otherwise
    #                      (then the whole trace is one batch, as unsorted rows must be sorted first)

    @staticmethod
    def of_flat(f: _Flat) -> "_Dims":
        if f.n == 0:
            return _Dims(0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
        L1 = int(f.layer.max()) + 1
        return _Dims(f.n, L1, int(f.batch.max()) + 1, int(f.kv_head.max()) + 1, int(f.seq_len.max()),
                     int(f.step.max()), len(np.unique(f.step * L1 + f.layer)), len(np.unique(f.step)),
                     len(np.unique(f.layer)), len(np.unique(f.batch)), len(np.unique(f.kv_head)))


def _key_arrays(table) -> dict:
    return {c: np.asarray(table[c].fill_null(0).to_numpy(), dtype=np.int64) for c in KEY_COLUMNS}


def _scan_keys(tables) -> _Dims:
    """Pass 1, over the key columns only (tables of consecutive rows): sizes, distinct values and the file's order."""
    rows = 0
    mx = {c: -1 for c in KEY_COLUMNS}
    distinct = {c: np.zeros(0, dtype=np.int64) for c in ("step", "layer", "batch", "kv_head")}
    sl_all = np.zeros(0, dtype=np.int64)
    sl_sorted = step_sorted = True
    last_sl = last_step = None
    for t in tables:
        if t.num_rows == 0:
            continue
        k = _key_arrays(t)
        rows += t.num_rows
        for c in KEY_COLUMNS:
            mx[c] = max(mx[c], int(k[c].max()))
        for c in distinct:
            distinct[c] = np.union1d(distinct[c], k[c])
        sl = (k["step"] << 32) + k["layer"]
        sl_all = np.union1d(sl_all, sl)
        if sl_sorted:
            sl_sorted = bool(np.all(sl[1:] >= sl[:-1])) and (last_sl is None or int(sl[0]) >= last_sl)
        if step_sorted:
            st_ = k["step"]
            step_sorted = bool(np.all(st_[1:] >= st_[:-1])) and (last_step is None or int(st_[0]) >= last_step)
        last_sl, last_step = int(sl[-1]), int(k["step"][-1])
    if rows == 0:
        return _Dims(0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
    return _Dims(rows, mx["layer"] + 1, mx["batch"] + 1, mx["kv_head"] + 1, mx["seq_len"], mx["step"], len(sl_all),
                 len(distinct["step"]), len(distinct["layer"]), len(distinct["batch"]), len(distinct["kv_head"]),
                 "sl" if sl_sorted else "step" if step_sorted else "all")


def _list_events(table) -> int:
    import pyarrow.compute as pc

    n = 0
    for c in ("positions", "components"):
        v = pc.sum(pc.list_value_length(table[c])).as_py()
        n += int(v or 0)
    return n


class _Source:
    """The rows of one trace, read a piece at a time: a Parquet file (checked piece by piece with the trace reader's
    `validate_table`, row numbers counted from the top of the file) or a `Trace` already in memory."""

    def __init__(self, item):
        from ..traces import Trace

        if isinstance(item, Trace):
            self.pf, self.table, self.metadata, self.path = None, item.table, item.metadata, item.path
        else:
            self._open(item)
        self.where = f"trace {str(self.path)!r}" if self.path is not None else "trace"
        self.name = str(self.path) if self.path is not None else "<trace>"

    def _open(self, path):
        from ..traces.format import open_trace, validate_table

        self.pf, schema, self.metadata, self.path = open_trace(path)   # read_trace's header checks, no rows read
        self.table = None
        validate_table(schema.empty_table(), self.metadata, self.path)  # columns, types, metadata, strategy

    def _unreadable(self, e) -> UserError:
        from ..traces.format import unreadable

        return unreadable(self.path, e)

    def events_per_row(self) -> float:
        if self.pf is None:
            return _list_events(self.table) / max(self.table.num_rows, 1)
        try:
            md = self.pf.metadata
            if md.num_row_groups == 0:
                return 1.0
            rg = md.row_group(0)
            ev = sum(rg.column(j).num_values for j in range(rg.num_columns)
                     if rg.column(j).path_in_schema.split(".")[0] in ("positions", "components"))
            return max(1.0, ev / max(rg.num_rows, 1))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - damaged footer statistics (UnicodeDecodeError, ArrowInvalid, ...)
            raise self._unreadable(e) from None

    def pieces(self, rows: int, columns=None):
        """Tables of at most `rows` consecutive rows, in file order."""
        import pyarrow as pa

        if self.pf is None:
            t = self.table if columns is None else self.table.select(list(columns))
            for b in t.to_batches(max_chunksize=rows):
                yield pa.Table.from_batches([b])
            return
        it = self.pf.iter_batches(batch_size=rows, columns=list(columns) if columns else None)
        while True:
            try:
                b = next(it)
            except StopIteration:
                return
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged file raises ArrowInvalid, OSError, ... (as read_trace)
                raise self._unreadable(e) from None
            yield pa.Table.from_batches([b])

    def _validate(self, table, row0: int) -> None:
        import re

        from ..traces import validate_table

        if self.pf is None:  # a Trace object: validated when it was read (or built by the caller)
            return
        try:
            validate_table(table, self.metadata, self.path)
        except UserError as e:
            if not row0:
                raise
            msg = str(e)
            head = msg[:len(self.where)] if msg.startswith(self.where) else ""
            tail = re.sub(r"\brow (\d+)", lambda m: f"row {int(m.group(1)) + row0}", msg[len(head):], count=1)
            raise UserError(head + tail) from None

    def flats(self, st: _Setup, dims: _Dims, batch_events: int = BATCH_EVENTS):
        """The trace as _Flat batches: consecutive runs of whole units (see _Dims) of about `batch_events` events,
        each checked, flattened and sorted; in order, the batches are exactly the whole trace's _Flat cut between
        units."""
        import pyarrow as pa

        read_rows = int(min(65_536, max(16, batch_events / 4 / self.events_per_row())))
        pending, pend_rows, pend_events, cut, last_key, row0 = [], 0, 0, 0, None, 0

        def unit_key(t):
            if dims.unit == "all":
                return np.zeros(t.num_rows, dtype=np.int64)
            k = np.asarray(t["step"].fill_null(0).to_numpy(), dtype=np.int64)
            if dims.unit == "sl":
                k = (k << 32) + np.asarray(t["layer"].fill_null(0).to_numpy(), dtype=np.int64)
            return k

        def flat(table, start):
            self._validate(table, start)
            f = _flatten(table, self.where, start)
            _check_flat(st, f, self.where)
            return f

        for t in self.pieces(read_rows):
            n = t.num_rows
            if n == 0:
                continue
            key = unit_key(t)
            inner = np.flatnonzero(key[1:] != key[:-1])
            if len(inner):
                cut = pend_rows + int(inner[-1]) + 1
            elif last_key is not None and int(key[0]) != last_key:
                cut = pend_rows
            last_key = int(key[-1])
            pending.append(t)
            pend_rows += n
            pend_events += _list_events(t)
            if pend_events >= batch_events and cut > 0:
                table = pa.concat_tables(pending)
                yield flat(table.slice(0, cut), row0)
                rest = table.slice(cut)
                row0 += cut
                pending, pend_rows, pend_events, cut = [rest], rest.num_rows, _list_events(rest), 0
        if pend_rows:
            yield flat(pa.concat_tables(pending), row0)
        if self.pf is not None and row0 + pend_rows != self.pf.metadata.num_rows:   # a damaged column chunk
            raise self._unreadable(ValueError(f"read {row0 + pend_rows} rows where the footer promises "
                                              f"{self.pf.metadata.num_rows}"))


# ---------------------------------------------------------------------------------------------------------------------
# sums over batches


class _KeySums:
    """Per-key sums of row values that arrive batch by batch, equal bit for bit to one `np.bincount` over all the rows
    in order: each key's total so far comes first, then the new rows in order, as bincount adds them."""

    def __init__(self, cols):
        self.cols = list(cols)
        self.keys = np.zeros(0, dtype=np.int64)
        self.sums = {c: np.zeros(0) for c in self.cols}
        self.seq_max = np.zeros(0, dtype=np.int64)

    def add(self, key_rows, values: dict, seq_len=None):
        keys = np.union1d(self.keys, key_rows)
        old = np.searchsorted(keys, self.keys)
        new = np.searchsorted(keys, key_rows)
        idx = np.concatenate([old, new])
        for c in self.cols:
            w = np.concatenate([self.sums[c], np.asarray(values[c], dtype=np.float64)])
            self.sums[c] = np.bincount(idx, weights=w, minlength=len(keys))
        if seq_len is not None:
            m = np.zeros(len(keys), dtype=np.int64)
            m[old] = self.seq_max
            np.maximum.at(m, new, seq_len)
            self.seq_max = m
        self.keys = keys


# ---------------------------------------------------------------------------------------------------------------------
# the on-chip cache across batches


class _CacheModel:
    """LRU over the trace's lines (see the module docstring), fed (step, layer) group by group, batch after batch:
    per trace row of a batch, the bytes of each read component served on chip."""

    def __init__(self, st: _Setup, g: _Geom, hw, dims: _Dims, fills, dense: bool):
        self.st, self.g, self.dims, self.dense = st, g, dims, dense
        self.lines = _Lines(g, dims, st.quest_page)
        capacity = int(hw.cache_bytes * 8 // g.G)
        max_comps = max(len(v) for v in OP_OF.values())   # phases per (step, layer): fills + one per component
        self.lru = _LRU(capacity, self.lines.n_lines, dims.n_sl * (max_comps + 3) + 4 * (dims.step_max + 2))
        self.fill_step, self.fill_before = fills
        self.prev_step = None

    def run(self, f: _Flat, parts, fill_after):
        st, g, lines, lru = self.st, self.g, self.lines, self.lru
        hits = {}
        sl_key = f.step * self.dims.L1 + f.layer
        bounds = np.flatnonzero(np.r_[True, sl_key[1:] != sl_key[:-1], True])
        n_sl = len(bounds) - 1
        row_class = np.zeros(f.n, dtype=np.int64)
        for ci, (_, rows, _) in enumerate(parts):
            row_class[rows] = ci
        G_bytes = g.G / 8
        for i in range(n_sl):
            rows = np.arange(bounds[i], bounds[i + 1])
            step = int(f.step[rows[0]])
            if step != self.prev_step:
                if self.prev_step is not None:
                    lru.fill(int(self.fill_step[1] // G_bytes))   # final norm, lm_head of the previous step
                lru.fill(int(self.fill_step[0] // G_bytes))       # embedding
                self.prev_step = step
            strategy, _, part = parts[row_class[rows[0]]]
            if self.dense:
                strategy = "dense"
                names = ["kv_append", "k_all", "v_all"]
                kinds = {"kv_append": KV_WRITE, "k_all": KV_READ, "v_all": KV_READ}
            else:
                names = _op_order(strategy, list(part.sectors))
                kinds = part.kinds
            lru.fill(int(self.fill_before // G_bytes))
            for name in names:
                ids, seg = lines.component(name, f, rows, strategy, st.quest_page, baseline=self.dense)
                h = lru.access(ids)
                if kinds[name] in (KV_READ, META_READ):
                    got = np.bincount(seg[h], minlength=len(rows)) * G_bytes
                    hits.setdefault(name, np.zeros(f.n))[rows] += got
            lru.fill(int(fill_after[i] // G_bytes))
        return hits


def _op_order(strategy, names):
    order = list(OP_OF[strategy])
    return [n for n in order if n in names]


def _unit_ops(st: _Setup, hw, strategy, f: _Flat, rows, mem_bytes: dict, kinds: dict, prec, tp, L1=None, NB=None):
    """Ledger attention operators of `strategy` for the given trace rows, with the replayed bytes, summed per
    (step, layer). Returns (keys of the (step, layer) groups: step * L1 + layer, list of Op with per-group arrays).
    L1, NB: more than the largest layer and batch index of the trace (default: of `f`)."""
    from .ledger import Op, attention_decode_ops

    m = st.model
    L1 = int(f.layer.max()) + 1 if L1 is None else L1
    NB = int(f.batch.max()) + 1 if NB is None else NB
    # one unit per (step, layer, batch): KV heads summed
    ukey = (f.step[rows] * L1 + f.layer[rows]) * NB + f.batch[rows]
    uniq, uinv = np.unique(ukey, return_inverse=True)
    nu = len(uniq)
    heads = np.bincount(uinv, minlength=nu)
    S_u = np.zeros(nu, dtype=np.int64)
    np.maximum.at(S_u, uinv, f.seq_len[rows])
    k_u = np.bincount(uinv, weights=f.k_formula[rows], minlength=nu) / heads
    r_u = np.bincount(uinv, weights=f.r_formula[rows], minlength=nu) / heads
    params = {"k": k_u, "r": r_u, "local_window": np.zeros(nu), "sinks": np.zeros(nu),
              "page_size": np.full(nu, float(st.quest_page))}
    ops = attention_decode_ops(m, tp, strategy, np.ones(nu), S_u, params, prec, 1)
    by_op = {op.name: op for op in ops}
    fields = ("kv_read", "kv_write", "meta_read", "meta_write")
    for op in ops:
        for fld in fields:
            setattr(op, fld, np.zeros(nu))
    for name, b in mem_bytes.items():
        op = by_op[OP_OF[strategy][name]]
        fld = FIELD_OF_KIND[kinds[name]]
        setattr(op, fld, getattr(op, fld) + np.bincount(uinv, weights=b, minlength=nu))
    # (step, layer) groups
    sl = uniq // NB
    gk, ginv = np.unique(sl, return_inverse=True)
    out = []
    for op in ops:
        agg = {}
        for fld in ("flops", "act_read", "act_write") + fields:
            v = np.broadcast_to(np.asarray(getattr(op, fld), dtype=np.float64), (nu,))
            agg[fld] = np.bincount(ginv, weights=v, minlength=len(gk))
        out.append(Op(op.phase, op.name, op.group, op.unit, 1, op.launches, **agg))
    return gk, out


SUM_COLS = ["bytes_touched", "bytes_formula", *(f"{p}_bytes" for p in PARTS), "bytes_on_chip", "bytes_dense",
            "bytes_dense_formula", "pages_touched", "k_copy_write_bytes"]


class _Replayer:
    """One trace on one device: fed the trace's batches in order (`add`), summarised at the end (`finish`).

    Rows are counted batch by batch; sums per step and per layer follow the rows' order exactly (`_KeySums`); the
    attention time of each (step, layer) is timed within its batch (a batch holds whole (step, layer) groups); the run's
    totals add the steps' sums. Memory: the batch, plus a few numbers per step and per (step, layer) (and, at level
    'row', the output rows; with --cache, the cache model's state)."""

    def __init__(self, st: _Setup, dims: _Dims, hw: HardwareProfile, k_layout, granularity, page_size, cache,
                 kv_location, levels):
        from .ledger import Parallel, Precision, block_ops, head_ops
        from .predict import predict_columns
        from .roofline import tier_table

        self.st, self.dims, self.hw, self.levels = st, dims, hw, levels
        self.k_layout, self.page_size, self.cache = k_layout, page_size, cache
        g = self.g = _geometry(st, hw, k_layout, granularity, page_size)
        m = st.model
        self.prec = prec = Precision.of(st.dtype, st.kv_dtype)
        self.tp = tp = Parallel.of(m, 1)
        self.G_bytes = g.G / 8
        self.e_bytes = g.e / 8
        n_batch = dims.NB

        # placement and the rest of the step, from predict (same model, batch, longest context)
        def placed(strategy):
            kw = dict(hardware=hw, model=m, seq_len=int(dims.seq_len_max), batch=n_batch, strategies=[strategy],
                      compression=max(st.compression, 1.0) if strategy != "dense" else 1.0, dtype=st.dtype,
                      kv_dtype=st.kv_dtype, k_layout=k_layout, kv_location=kv_location,
                      page_size=st.quest_page if strategy == "quest" else None)
            cols = predict_columns(**kw)
            return (float(cols["time_s"][0] - cols["attention_time_s"][0]), cols["kv_location"].decode()[0])

        self.rest_s, self.kv_tier = placed(st.strategy)
        self.dense_rest_s, self.dense_tier = placed("dense")
        self.names, self.peak, self.achieved, _ = tier_table(hw)
        if cache:
            before, after = block_ops("decode", m, tp, np.float64(n_batch), prec)
            per_layer = lambda ops: sum(float(np.sum(op.bytes_total())) for op in ops if op.layers == m.n_layers)  # noqa: E731
            emb = sum(float(np.sum(op.bytes_total())) for op in before if op.layers != m.n_layers)
            head = sum(float(np.sum(op.bytes_total())) for op in head_ops("decode", m, tp, np.float64(n_batch), prec))
            self.after_bytes = per_layer(after)
            fills = ((emb, head), per_layer(before))
            self.cache_model = _CacheModel(st, g, hw, dims, fills, dense=False)
            self.dense_cache_model = _CacheModel(st, g, hw, dims, fills, dense=True)
        self.sl_keys, self.att, self.datt, self.row_parts = [], [], [], []
        self.step_sums = _KeySums(SUM_COLS)
        self.layer_sums = _KeySums(SUM_COLS)
        self.n_rows = self.events = self.seq_len_max = 0

    def _placement(self, tier):
        from .roofline import Placement

        return Placement(self.names, self.peak, self.achieved, 0, self.names.index(tier), 0)

    def _timed(self, f, strategy_parts, hits, tier):
        """Attention operators per (step, layer) of the batch: time and activation bytes, keyed step * L1 + layer."""
        from .roofline import time_op

        sl_time = {}
        act = {}
        for strategy, rows, part in strategy_parts:
            mem = {}
            for name, s in part.sectors.items():
                b = np.asarray(s, dtype=np.float64) * self.G_bytes
                if name in hits:
                    b = b - hits[name][rows]
                mem[name] = b
            keys, ops = _unit_ops(self.st, self.hw, strategy, f, rows, mem, part.kinds, self.prec, self.tp,
                                  self.dims.L1, self.dims.NB)
            pl = self._placement(tier)
            t = sum(time_op(op, self.hw, pl, self.prec, 1).time_s for op in ops)
            a = sum(op.act_read + op.act_write for op in ops)
            for k_, tv, av in zip(keys.tolist(), np.broadcast_to(t, keys.shape).tolist(),
                                  np.broadcast_to(a, keys.shape).tolist()):
                sl_time[k_] = sl_time.get(k_, 0.0) + tv
                act[k_] = act.get(k_, 0.0) + av
        return sl_time, act

    def add(self, f: _Flat) -> None:
        """One batch: whole (step, layer) groups, sorted, after every earlier batch's groups."""
        st, g = self.st, self.g
        G_bytes, e_bytes = self.G_bytes, self.e_bytes
        parts, dense = _traffic(st, g, f)
        dense_parts = [("dense", np.arange(f.n), dense)]

        # per row: sectors -> bytes
        touched = {p: np.zeros(f.n) for p in PARTS}
        formula = np.zeros(f.n)
        pages = np.zeros(f.n)
        for _, rows, part in parts:
            for name, s in part.sectors.items():
                touched[PART_OF[name]][rows] += s * G_bytes
                formula[rows] += part.elements[name] * e_bytes
            pages[rows] += part.pages
        dense_touched = sum(s for s in dense.sectors.values()) * G_bytes
        dense_formula = sum(e for e in dense.elements.values()) * e_bytes
        copy_write = np.zeros(f.n)
        if st.strategy == "sparq" and self.k_layout == "twice":
            for s, rows, _ in parts:
                if s == "sparq":
                    copy_write[rows] = _copy_write(g, f.seq_len[rows]) * G_bytes

        # attention operators per (step, layer) without KV bytes first (their activations feed the cache model)
        sl_key = f.step * self.dims.L1 + f.layer
        sl_unique = np.unique(sl_key)
        hits, dense_hits = {}, {}
        if self.cache:
            _, act = self._timed(f, parts, {}, self.kv_tier)
            _, dact = self._timed(f, dense_parts, {}, self.dense_tier)
            fill_after = np.array([self.after_bytes + act.get(k_, 0.0) for k_ in sl_unique.tolist()])
            dfill_after = np.array([self.after_bytes + dact.get(k_, 0.0) for k_ in sl_unique.tolist()])
            hits = self.cache_model.run(f, parts, fill_after)
            dense_hits = self.dense_cache_model.run(f, dense_parts, dfill_after)
        sl_time, _ = self._timed(f, parts, hits, self.kv_tier)
        dsl_time, _ = self._timed(f, dense_parts, dense_hits, self.dense_tier)
        on_chip = sum(hits.values()) if hits else np.zeros(f.n)

        bytes_touched = sum(touched.values())
        row_cols = {
            "step": f.step, "layer": f.layer, "batch": f.batch, "kv_head": f.kv_head, "seq_len": f.seq_len,
            "n_positions": f.n_pos, "n_components": f.n_comp, "members": f.members,
            "bytes_touched": bytes_touched, "bytes_formula": formula,
            **{f"{p}_bytes": touched[p] for p in PARTS},
            "bytes_on_chip": on_chip, "bytes_dense": dense_touched, "bytes_dense_formula": dense_formula,
            "pages_touched": pages, "k_copy_write_bytes": copy_write,
        }
        self.sl_keys.append(sl_unique)
        self.att.append(np.array([sl_time[k_] for k_ in sl_unique.tolist()]))
        self.datt.append(np.array([dsl_time[k_] for k_ in sl_unique.tolist()]))
        if "row" in self.levels:
            d = dict(row_cols)
            d["ratio"] = d["bytes_touched"] / d["bytes_formula"]
            d["bytes_memory"] = d["bytes_touched"] - d["bytes_on_chip"]
            d["transfer_ratio"] = d["bytes_touched"] / d["bytes_dense"]
            self.row_parts.append(d)
        if "step" in self.levels or "run" in self.levels:
            self.step_sums.add(f.step, row_cols, f.seq_len)
        if "layer" in self.levels:
            self.layer_sums.add(f.layer, row_cols)
        self.n_rows += f.n
        self.events += f.events
        self.seq_len_max = max(self.seq_len_max, int(f.seq_len.max()))

    def finish(self) -> dict:
        st, dims, m = self.st, self.dims, self.st.model
        L1 = dims.L1
        rest_s, dense_rest_s = self.rest_s, self.dense_rest_s
        sl_unique = np.concatenate(self.sl_keys)
        att = np.concatenate(self.att)
        datt = np.concatenate(self.datt)
        steps_u = sl_unique // L1
        layers_u = sl_unique % L1
        ident = {"trace": st.trace_name, "hardware": self.hw.name, "model": m.name, "strategy": st.strategy,
                 "compression": st.compression, "k_layout": self.k_layout, "granularity_bytes": self.G_bytes,
                 "page_size": int(self.page_size or 0), "cache": bool(self.cache), "kv_dtype": st.kv_dtype,
                 "kv_tier": self.kv_tier}
        out = {}

        def finish(d):
            d["ratio"] = d["bytes_touched"] / d["bytes_formula"]
            d["bytes_memory"] = d["bytes_touched"] - d["bytes_on_chip"]
            d["transfer_ratio"] = d["bytes_touched"] / d["bytes_dense"]
            d["speedup_vs_dense"] = d["dense_time_s"] / d["time_s"]
            d["attention_speedup_vs_dense"] = d["dense_attention_time_s"] / d["attention_time_s"]
            return d

        if "row" in self.levels:
            parts = self.row_parts
            out["row"] = (ident, {c: np.concatenate([np.asarray(p[c]) for p in parts]) for c in parts[0]})
        for level, acc, key_sl in (("step", self.step_sums, steps_u), ("layer", self.layer_sums, layers_u)):
            if level not in self.levels:
                continue
            ku = acc.keys
            d = {level: ku}
            for c in SUM_COLS:
                d[c] = acc.sums[c]
            kinv = np.searchsorted(ku, key_sl)
            d["attention_time_s"] = np.bincount(kinv, weights=att, minlength=len(ku))
            d["dense_attention_time_s"] = np.bincount(kinv, weights=datt, minlength=len(ku))
            if level == "step":
                d["seq_len_max"] = acc.seq_max
                d["time_s"] = d["attention_time_s"] + rest_s
                d["dense_time_s"] = d["dense_attention_time_s"] + dense_rest_s
            else:  # a layer's share of the rest of the step: 1 / n_layers of it, in every step it ran
                n_steps = np.bincount(kinv, minlength=len(ku))
                d["time_s"] = d["attention_time_s"] + n_steps * rest_s / m.n_layers
                d["dense_time_s"] = d["dense_attention_time_s"] + n_steps * dense_rest_s / m.n_layers
            out[level] = (ident, finish(d))
        if "run" in self.levels:
            n_steps = len(self.step_sums.keys)
            # the run's totals: the steps' sums (each exact over its rows in order), added up
            d = {c: np.array([float(np.sum(self.step_sums.sums[c]))]) for c in SUM_COLS}
            d["attention_time_s"] = np.array([float(att.sum())])
            d["dense_attention_time_s"] = np.array([float(datt.sum())])
            d["time_s"] = d["attention_time_s"] + n_steps * rest_s
            d["dense_time_s"] = d["dense_attention_time_s"] + n_steps * dense_rest_s
            d["mean_attention_time_s"] = d["attention_time_s"] / n_steps
            d["mean_step_time_s"] = d["time_s"] / n_steps
            d.update(steps=np.array([n_steps]), layers=np.array([dims.n_layers]),
                     batch=np.array([dims.n_batches]), kv_heads=np.array([dims.n_kv_heads]),
                     rows=np.array([self.n_rows]), events=np.array([self.events]),
                     seq_len_max=np.array([self.seq_len_max]))
            out["run"] = (ident, finish(d))
        return out


def _replay_one(st: _Setup, hw: HardwareProfile, k_layout, granularity, page_size, cache, kv_location, levels):
    """The whole trace held in `st.flat` (from `_trace_setup`) on one device, in one batch."""
    f = st.flat
    if f.n == 0:
        raise UserError(f"trace {st.trace_name!r} has no rows")
    rp = _Replayer(st, _Dims.of_flat(f), hw, k_layout, granularity, page_size, cache, kv_location, levels)
    rp.add(f)
    return rp.finish()


# ---------------------------------------------------------------------------------------------------------------------
# the public function


def _traces_arg(traces) -> list:
    from ..traces import Trace

    if isinstance(traces, (str, os.PathLike, Trace)):
        traces = [traces]
    items = []
    for t in traces:
        if isinstance(t, Trace):
            items.append(t)
        elif isinstance(t, (str, os.PathLike)):
            for part in (str(t).split(",") if isinstance(t, str) and not Path(t).exists() else [t]):
                if str(part).strip():
                    items.append(str(part).strip())
        else:
            raise UserError(f"replay takes trace files or Trace objects, got {type(t).__name__}")
    if not items:
        raise UserError("no trace given (give one or more TRACE.parquet files written by `sparq-sim record`)")
    return items


def _hardware_list(hardware) -> list[HardwareProfile]:
    from .ranges import parse_names

    if isinstance(hardware, HardwareProfile):
        return [hardware]
    if isinstance(hardware, (list, tuple)):
        return [load_hardware(h) for h in hardware]
    return [load_hardware(h) for h in parse_names(hardware, "--gpu")]


def replay(traces, hardware="a100", k_layout: str = "twice", granularity=None, page_size: int | None = None,
           cache: bool = False, level: str = "run", *, model=None, dtype: str | None = None,
           kv_dtype: str | None = None, kv_location: str = "auto", batch_events: int = BATCH_EVENTS):
    """Replay recorded traces on hardware profiles: bytes touched against the formula, time and speedup vs dense.

    traces: trace file path(s) (a list, or a comma list) or `sparq_sim.traces.Trace` objects. hardware: profile
    name(s), comma list, or HardwareProfile(s). k_layout: SparQ's K stored 'twice' (extra S-contiguous copy) or 'once'.
    granularity: bytes per memory transaction (default: the profile's `access.granularity`; 'element' = one KV element).
    page_size: positions per KV page (paged KV cache; pages are touched whole). cache: model the profile's on-chip cache
    as an LRU across steps and layers. level: 'run', 'step', 'layer' or 'row' (see the module docstring for the model
    and the columns). model, dtype, kv_dtype: override the trace metadata (e.g. kv_dtype='bf16' for a trace recorded
    in fp32). kv_location: as in `predict` (auto, a tier name or host). Returns a pandas DataFrame.

    Memory stays bounded whatever the trace's size: a file is read in pieces (the key columns first, then the rows)
    and replayed in batches of about `batch_events` fetched-index events, each holding whole (step, layer) groups;
    the results do not depend on `batch_events`. This needs the file's rows grouped by (step, layer) in order, as
    `sparq-sim record` writes them (failing that, by step; failing that, the whole trace is one batch). At level
    'row' the output itself has one row per trace row, and --cache keeps its LRU state (8 bytes per line of the
    address space the trace spans, plus a bit per line referenced).
    """
    import pandas as pd

    try:
        importlib.import_module("..traces", __package__)
    except ImportError as e:  # pyarrow is not part of the core install
        raise UserError(f"replay reads Parquet traces and needs pyarrow ({e}); install it with `pip install "
                        f"pyarrow` (or `pip install 'sparq-sim[ref]'`)") from None

    if k_layout not in K_LAYOUTS:
        raise UserError(f"--k-layout must be twice or once, got {k_layout!r}")
    if level not in LEVELS:
        raise UserError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    if page_size is not None:
        try:
            ok = not isinstance(page_size, bool) and float(page_size) == int(float(page_size)) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise UserError(f"--page-size must be a whole number of positions >= 1, got {page_size!r}")
        page_size = int(float(page_size))
    if isinstance(granularity, str):
        granularity = parse_granularity(granularity)
    if granularity is not None and not isinstance(granularity, str):
        if isinstance(granularity, bool) or not (0.125 <= float(granularity) <= MAX_GRANULARITY_BYTES):
            raise UserError(f"--granularity must be from 0.125 to {MAX_GRANULARITY_BYTES} bytes or 'element', got "
                            f"{granularity!r}")
    hws = _hardware_list(hardware)
    frames = []
    for item in _traces_arg(traces):
        src = _Source(item)
        st = _meta_setup(src.metadata, src.where, src.name, model, dtype, kv_dtype)
        dims = _scan_keys(src.pieces(65_536, KEY_COLUMNS))
        if dims.rows == 0:
            raise UserError(f"trace {st.trace_name!r} has no rows")
        _check_ranges(st, src.where, -1, dims.H - 1, dims.L1 - 1)
        replayers = None
        for f in src.flats(st, dims, batch_events):
            if replayers is None:  # after the first batch is checked: the devices' setup uses the trace's sizes
                replayers = [_Replayer(st, dims, hw, k_layout, granularity, page_size, cache, kv_location, (level,))
                             for hw in hws]
            for rp in replayers:
                rp.add(f)
        for rp in replayers:
            ident, cols = rp.finish()[level]
            n = len(next(iter(cols.values())))
            df = pd.DataFrame({**{k: [v] * n for k, v in ident.items()}, **cols})
            frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if level == "run":
        return df[RUN_COLUMNS]
    first = RUN_COLUMNS[:11] + [c for c in ("step", "layer", "batch", "kv_head", "seq_len", "n_positions",
                                              "n_components", "members") if c in df.columns]
    order = first + [c for c in RUN_COLUMNS if c in df.columns and c not in first]
    return df[order + [c for c in df.columns if c not in order]]


def parse_granularity(value):
    """'32', '32 B', '0.5', 'element' -> bytes (float) or 'element'; None stays None."""
    from .units import parse_quantity

    if value is None:
        return None
    v = str(value).strip()
    if v.lower() in ("element", "elem", "e"):
        return "element"
    try:
        out = parse_quantity(v, "bytes")
    except ValueError:
        raise UserError(f"--granularity {value!r}: expected bytes per memory transaction (32, 64 B, ...) or "
                        f"'element'") from None
    if not 0.125 <= out <= MAX_GRANULARITY_BYTES:
        raise UserError(f"--granularity {value!r}: expected from 0.125 B (one bit) to {MAX_GRANULARITY_BYTES} B per "
                        f"memory transaction, or 'element'")
    return out
