"""The flattened trace: trace rows after the GQA union, sorted by (step, layer, batch, kv_head), with the index lists
(positions, components) flattened into one array each plus offsets; and the segment helpers replay works with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError


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
