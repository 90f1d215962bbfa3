"""Memory geometry: the access granularity (sectors), the K layout (twice / once), pages, and the sectors each kind of
read or write touches (all sizes in bits, so that int4's half-byte elements stay integers). The model is in the
docstring of `sparq_sim.simulator.replay`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ...hardware_profiles import HardwareProfile
from ..errors import UserError
from ..units import dtype_bytes
from .flatten import _cdiv, _segment_sum

if TYPE_CHECKING:
    from .metadata import _Setup


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


def _geometry(st: _Setup, hw: HardwareProfile, k_layout, granularity, page_size) -> _Geom:
    e_bytes = dtype_bytes(st.kv_dtype)
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


# ---------------------------------------------------------------------------------------------------------------------
# sectors per read and write


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


def label_write_span(g: _Geom, S, r):
    """Sectors [lo, hi) of Double Sparsity's new label: r elements at element offset (S - 1) r of its label cache
    (and of DSA's new indexer key, r = d_I, in its indexer cache)."""
    lo = (S - 1) * r * g.e // g.G
    hi = _cdiv(S * r * g.e, g.G)
    return lo, np.maximum(hi, lo)
