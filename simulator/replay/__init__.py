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

The package, file by file: `source` (a trace read piece by piece: its key columns first, then batches of whole
(step, layer) groups), `metadata` (strategy, dtypes, model and parameters from the trace's metadata), `flatten` (rows
after the GQA union, index lists flattened), `geometry` (granularity, K layout, pages: the sectors of each read and
write), `traffic` (per trace row: sectors touched and the formula's elements), `cache` (the --cache LRU), `rows`
(bytes timed with the ledger and the roofline, summed into the rows of each level), `columns` (the parts and the
output columns); here: `replay` and `parse_granularity`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ...hardware_profiles import MAX_GRANULARITY_BYTES, HardwareProfile, load_hardware
from ..errors import UserError
from .cache import MAX_CACHE_LINES, _CacheModel, _Lines, _LRU
from .columns import FIELD_OF_KIND, K_LAYOUTS, LEVELS, OP_OF, PART_OF, PARTS, RUN_COLUMNS, SUM_COLS
from .flatten import _Flat, _flatten
from .geometry import _Geom, _geometry
from .metadata import _check_ranges, _meta_setup, _Setup, _trace_setup
from .rows import _KeySums, _Replayer, _replay_one, _unit_ops
from .source import BATCH_EVENTS, KEY_COLUMNS, _Dims, _scan_keys, _Source
from .traffic import _Part, _traffic

__all__ = ["replay", "parse_granularity", "K_LAYOUTS", "LEVELS", "BATCH_EVENTS", "KEY_COLUMNS", "PARTS", "PART_OF",
           "RUN_COLUMNS", "SUM_COLS", "OP_OF", "FIELD_OF_KIND", "MAX_CACHE_LINES", "UserError", "load_hardware"]

# not part of the API: the internals tests and benchmarks reach as `replay._trace_setup`, `replay._Source`, ...
_INTERNALS = (_CacheModel, _Dims, _Flat, _flatten, _Geom, _geometry, _KeySums, _Lines, _LRU, _Part, _replay_one, _Setup,
              _trace_setup, _traffic, _unit_ops)


# ---------------------------------------------------------------------------------------------------------------------
# the public function


def _traces_arg(traces) -> list:
    from ...traces import Trace

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
    from ..ranges import parse_names

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
        importlib.import_module("...traces", __package__)
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
    from ..units import parse_quantity

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
