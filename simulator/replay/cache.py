"""The --cache model: the profile's on-chip cache as one fully associative LRU over G-byte lines, shared by every layer
and step (see the docstring of `sparq_sim.simulator.replay`): the line ids each component touches (`_Lines`), the LRU
itself (`_LRU`), and the model fed (step, layer) group by group, batch after batch (`_CacheModel`)."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..strategies import INDEX_READ, KV_READ, KV_WRITE, META_READ
from .columns import OP_OF
from .flatten import _cdiv, _Flat, _gather_segments
from .geometry import _all_rows, _Geom, _vector, label_write_span
from .metadata import _Setup
from .source import _Dims

MAX_CACHE_LINES = 400_000_000  # the --cache model keeps 8 bytes per line of the address space the trace spans


# ---------------------------------------------------------------------------------------------------------------------
# the LRU over G-byte lines, kernel by kernel


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


# ---------------------------------------------------------------------------------------------------------------------
# the lines each component touches


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

    TENSORS = ("k", "v", "kt", "vmean", "stats", "minmax", "label", "index")

    def __init__(self, g: _Geom, f, quest_page: int, label: bool = False, index_dim: int = 0):
        """f: the whole trace (_Flat) or its dimensions (_Dims). label: room for Double Sparsity's label cache;
        index_dim: for DSA's indexer cache (one per layer and sequence, in the region of KV head 0)."""
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
                "minmax": 2 * int(_vector(g, _cdiv(S_cap, quest_page) * g.d)),
                "label": int(_vector(g, S_cap * g.d)) if label else 0,
                "index": int(_vector(g, S_cap * index_dim))}
        self.index_dim = index_dim
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

    def columns(self, f, rows, layout=None):
        """Lines of SparQ's Step 1: r columns of K over all positions (K twice), or r components of every row (K
        once; Loki's leading components of its rotated keys)."""
        g = self.g
        layout = layout or g.layout
        ci, coff = _gather_segments(f.comp_off, rows)
        comp = f.comp[ci]
        cseg = np.repeat(np.arange(len(rows)), np.diff(coff))
        S = f.seq_len[rows]
        if layout == "twice" and not g.N:
            lo = comp * self.col
            ids, s2 = _ranges(lo, lo + _cdiv(S[cseg] * g.e, g.G))
            seg = cseg[s2]
            return self.region("kt", f, rows)[seg] + ids, seg
        npos = _cdiv(S, g.N) * g.N if g.N else S
        if layout == "twice" or g.R % g.G == 0:
            # the same sector pattern in every page of the second copy (K twice), or in every row (rows G-aligned)
            if layout == "twice":
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
        if layout == "twice":  # paged [d x N] blocks: page, then component-major inside the page
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
            return self.columns(f, rows, layout="once" if strategy == "loki" else None)
        if name == "label_read":   # the label cache [S, r] of the row, from its start
            return self.vector(f, rows, "label", f.seq_len[rows] * np.diff(f.comp_off)[rows])
        if name == "label_write":  # the new token's r labels at the end of it
            lo, hi = label_write_span(self.g, f.seq_len[rows], np.diff(f.comp_off)[rows])
            ids, seg = _ranges(lo, hi)
            return self.region("label", f, rows)[seg] + ids, seg
        if name in ("index_keys_read", "index_key_write"):   # DSA's indexer cache: the layer's, on KV head 0
            S = f.seq_len[rows]
            if name == "index_keys_read":
                lo, hi = np.zeros(len(rows), dtype=np.int64), _vector(self.g, S * self.index_dim)
            else:
                lo, hi = label_write_span(self.g, S, self.index_dim)
            head0 = f.kv_head[rows] == 0
            ids, seg = _ranges(lo, np.where(head0, hi, lo))
            return self.region("index", f, rows)[seg] + ids, seg
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
# the on-chip cache across batches


class _CacheModel:
    """LRU over the trace's lines (see the module docstring), fed (step, layer) group by group, batch after batch:
    per trace row of a batch, the bytes of each read component served on chip."""

    def __init__(self, st: _Setup, g: _Geom, hw, dims: _Dims, fills, dense: bool):
        self.st, self.g, self.dims, self.dense = st, g, dims, dense
        self.lines = _Lines(g, dims, st.quest_page, label=st.strategy == "double-sparsity",
                            index_dim=st.index_dim if st.strategy == "dsa" else 0)
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
                if kinds[name] in (KV_READ, META_READ, INDEX_READ):
                    got = np.bincount(seg[h], minlength=len(rows)) * G_bytes
                    hits.setdefault(name, np.zeros(f.n))[rows] += got
            lru.fill(int(fill_after[i] // G_bytes))
        return hits


def _op_order(strategy, names):
    order = list(OP_OF[strategy])
    return [n for n in order if n in names]
