"""Implementation models: the time a named decode-attention kernel takes on a hardware profile.

A roofline over datasheet peaks is a lower bound; real kernels launch many small ops, gather rather than stream, and
run a top-k. Each implementation in `data/implementations.yaml` says how its bytes move; per call of one kernel:

    time   = overlap(host, device)        (a GPU or IPU: the host issues kernels asynchronously; the smooth maximum
                                          (host^2 + device^2)^(1/2): see `overlap`)
           = host + device                (a CPU: the ops run one after another on the same cores)
    host   = the software's cost per call: Python, the framework's dispatcher, the kernel launcher
    device = launches x kernel_launch + stream_bytes / (BW x stream) + unsplit_bytes / (BW x unsplit)
             + gather_bytes / (BW x gather) + topk_elements x topk_bytes / BW

BW is the achieved bandwidth of the tier the KV cache lives in (the profile's peak x its efficiency), so the device
part scales with whatever device the profile describes. The costs are split by what they depend on (costs that
travel): `host` belongs to the software (the implementation and its framework) and is carried over unchanged to any
device; `stream`, `unsplit` and `gather` are efficiencies of the implementation's access patterns relative to the
profile's achieved bandwidth, and `topk_bytes` is the top-k's cost in bytes-equivalent per element. Where the costs
come from, first match wins:
  1. the profile's `calibration.kernels` (fitted on that very device by `sparq-sim calibrate`),
  2. the fitted defaults at the end of `data/implementations.yaml` (fitted on every shipped dataset by
     `sparq-sim calibrate --defaults`; the source names the datasets), per device kind (gpu, cpu, ipu),
  3. the priors: host = host_ops x the framework family's cost per op (itself fitted where the family was measured),
     efficiencies 1 (streams), 0.5 (gathers), 16 bytes per top-k element (on a CPU: CPU_PRIORS).
A profile's `calibration.host_scale` (fitted from a few rows on a new machine) scales every host cost of 2 and 3.
Pure numpy/pandas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..hardware_profiles import CPU_OPS, HardwareProfile, load_yaml
from .errors import UserError, closest
from .units import dtype_bytes, parse_dtype, parse_quantity

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
IMPLEMENTATIONS_FILE = DATA_DIR / "implementations.yaml"
ONE_K = "-oneK"
KINDS = ("gpu", "cpu", "ipu")
# priors of the relative costs (assumptions, each replaced by a fit wherever an implementation was measured)
STREAM_PRIOR = 1.0          # a streamed read reaches the profile's achieved bandwidth
GATHER_PRIOR = 0.5          # row gathers reach about half of it
TOPK_BYTES_PRIOR = 16.0     # a radix select reads 4-byte keys about four times
# On a CPU eager PyTorch neither streams nor gathers at the memory's rate: `sparq-sim calibrate --device cpu` on this
# project's build machine (2 vCPUs of an AMD EPYC, one thread) measured q K^T reading ~9 GB/s and p V ~20 GB/s from
# DRAM while a streaming sum reads 37-44 GB/s (README, "Predictions checked against measurements"): equal bytes through
# both at 0.22 and 0.5 of the streaming rate is 0.3 overall; torch.gather ~2.5 ns per 4-byte element from DRAM
# (1.6 GB/s) is 0.04 of it.
CPU_PRIORS = {"stream": 0.3, "unsplit": 0.3, "gather": 0.04}
COST_FIELDS = ("host_s", "stream", "unsplit", "gather", "topk_bytes")


@dataclass(frozen=True)
class Implementation:
    name: str
    strategy: str
    family: str
    host_per_op_s: float       # the family's prior host cost per op
    host_ops: float            # ops the host issues per call (Python-level torch calls, kernel launches)
    launches: float            # kernels the device runs per call
    score_passes: float
    score_bytes: str | float
    k_layout: str | None
    step1: str | None
    gather_factor: float
    topk: float
    kv_tier: str | None
    bound_passes: float
    parallel: str | None
    split_kv: bool
    source: str
    eager_ops: bool = False
    kv_passes: float = 1.0           # times K and V cross memory (copies, upcasts), in units of their dtype
    per_query_head: bool = False     # K and V read once per query head (GQA groups not shared)
    selection: bool = True           # False: only the attention over the selected tokens (no scoring, no top-k)


def _quantity(v, what: str, where: str) -> float:
    try:
        return parse_quantity(v, "time")
    except ValueError as e:
        raise UserError(f"{where}: {what}: {e}") from None


@lru_cache(maxsize=1)
def _load() -> dict:
    """The catalogue: implementations by name, the families' prior host cost per op, the fitted defaults, the
    software stacks of whole-model measurements (stacks.py)."""
    where = str(IMPLEMENTATIONS_FILE)
    data = load_yaml(IMPLEMENTATIONS_FILE.read_text(encoding="utf-8"))
    fams = {k: _quantity(v["host_per_op"], f"families.{k}.host_per_op", where) for k, v in data["families"].items()}
    out = {}
    for name, d in data["implementations"].items():
        out[name] = Implementation(
            name=name, strategy=d["strategy"], family=d["family"], host_per_op_s=fams[d["family"]],
            host_ops=float(d.get("host_ops", d["launches"])), launches=float(d["launches"]),
            score_passes=float(d.get("score_passes", 0)),
            score_bytes=d.get("score_bytes", "dtype"), k_layout=d.get("k_layout"), step1=d.get("step1"),
            gather_factor=float(d.get("gather_factor", 1)), topk=float(d.get("topk", 0)), kv_tier=d.get("kv_tier"),
            bound_passes=float(d.get("bound_passes", 0)), parallel=d.get("parallel"),
            split_kv=bool(d.get("split_kv", False)), source=d["source"], eager_ops=d.get("ops") == "eager",
            kv_passes=float(d.get("kv_passes", 1)), per_query_head=bool(d.get("per_query_head", False)),
            selection=bool(d.get("selection", True)))
    return {"implementations": out, "families_prior": fams, "fitted": parse_fitted(data.get("fitted") or {}, where),
            "stacks": data.get("stacks") or {}}


# a software stack's fitted efficiencies (simulator/stacks.py), as the fitted block of implementations.yaml holds them
STACK_EFFICIENCIES = ("w16", "w8", "w4", "kv16", "kv8", "kv4", "link", "disk", "prefill")


def parse_fitted(block: dict, where: str) -> dict:
    """The `fitted:` block -> {'implementations': {name: {kind: costs}}, 'families': {family: {kind: s}},
    'stacks': {...}, 'source': str}. Costs are SI (host_s in seconds)."""
    out = {"source": block.get("source", ""), "implementations": {}, "families": {}, "stacks": {}}
    for name, c in (block.get("stacks") or {}).items():
        st = {k: float(v) for k, v in c.items() if k in STACK_EFFICIENCIES}
        st["host_per_layer_s"] = _quantity(c["host_per_layer"], f"fitted.stacks.{name}.host_per_layer", where)
        try:
            st["cpu_attention_Bps"] = parse_quantity(c["cpu_attention"], "bandwidth")
        except ValueError as e:
            raise UserError(f"{where}: fitted.stacks.{name}.cpu_attention: {e}") from None
        st["rows"], st["datasets"] = int(c.get("rows", 0)), list(c.get("datasets") or [])
        out["stacks"][name] = st
    for fam, kinds in (block.get("families") or {}).items():
        out["families"][fam] = {k: _quantity(v, f"fitted.families.{fam}.{k}", where) for k, v in kinds.items()}
    for name, kinds in (block.get("implementations") or {}).items():
        out["implementations"][name] = {}
        for kind, c in kinds.items():
            costs = {"host_s": _quantity(c["host"], f"fitted.implementations.{name}.{kind}.host", where)}
            costs.update({f: float(c[f]) for f in ("stream", "unsplit", "gather", "topk_bytes") if f in c})
            costs["rows"] = int(c.get("rows", 0))
            costs["datasets"] = list(c.get("datasets") or [])
            out["implementations"][name][kind] = costs
    return out


def implementation_names() -> list[str]:
    base = _load()["implementations"]
    return sorted(list(base) + [n + ONE_K for n, i in base.items() if i.strategy == "sparq"])


def get_implementation(kernel: str) -> Implementation:
    """A kernel name from the measurement schema; '-oneK' marks K stored once (Step 1 reads whole sectors)."""
    base = _load()["implementations"]
    name = str(kernel)
    once = name.endswith(ONE_K)
    root = name[: -len(ONE_K)] if once else name
    if root not in base or (once and base[root].strategy != "sparq"):
        raise UserError(f"unknown kernel {kernel!r}{closest(name, implementation_names())} "
                        f"(accepted: {', '.join(implementation_names())})")
    impl = base[root]
    if once:
        impl = replace(impl, name=name, k_layout="once", step1="sectors")
    return impl


def fitted_defaults() -> dict:
    """The fitted defaults shipped in data/implementations.yaml (see `sparq-sim calibrate --defaults`)."""
    return _load()["fitted"]


def sectors_touched(r, head_dim, elem_bytes, granularity):
    """Expected memory sectors of one d-contiguous key row touched by r distinct components chosen at random.

    A row of d elements spans n = ceil(d e / g) sectors of g bytes with m = d / n components each; a sector is
    missed when all r components fall outside it: C(d - m, r) / C(d, r)."""
    r = np.asarray(r, dtype=np.float64)
    d = float(head_dim)
    n = max(1.0, math.ceil(d * elem_bytes / granularity))
    m = d / n
    # log C(d - m, r) - log C(d, r) via lgamma, vectorised over r
    lg = np.vectorize(math.lgamma)
    rs = np.minimum(r, d - m)  # beyond d - m components every sector is hit (and lgamma would see poles)
    miss = np.where(r <= d - m, np.exp(lg(d - m + 1) - lg(d - m - rs + 1) - lg(d + 1) + lg(d - rs + 1)), 0.0)
    return n * (1.0 - miss)


def _per_combination(fn, a, b, c, scalar) -> np.ndarray:
    """fn(a_i, b_i, c_i, scalar) for every row, evaluated once per distinct (a, b, c): a file of a million rows holds
    a few dozen shapes."""
    keys = np.stack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                     np.asarray(c, dtype=np.float64)], axis=1)
    if len(keys) == 0:
        return np.zeros(0)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    values = np.asarray([float(fn(x, y, z, scalar)) for x, y, z in uniq])
    return values[np.ravel(inverse)]


def _shape(rows: dict):
    """Batch, context, query heads, KV heads, head_dim and bytes per element of measurement rows, as float arrays."""
    return (*(np.asarray(rows[c], dtype=np.float64) for c in ("batch", "seq_len", "n_heads", "n_kv_heads", "head_dim")),
            np.asarray([dtype_bytes(parse_dtype(x)) for x in rows["dtype"]], dtype=np.float64))


def features(impl: Implementation, rows: dict, hw: HardwareProfile) -> dict[str, np.ndarray]:
    """Bytes and elements per call for measurement rows (dict of arrays: batch, seq_len, n_heads, n_kv_heads,
    head_dim, dtype, r, k; page_size optional, default 16)."""
    B, S, H, Hkv, d, e = _shape(rows)
    k = np.asarray(rows["k"], dtype=np.float64) if impl.strategy != "dense" else S
    sb = e if impl.score_bytes == "dtype" else float(impl.score_bytes)
    zero = np.zeros_like(B)
    # K and V reads: once per KV head (a GQA group shares them), or once per query head when the kernel does not
    # share them (each thread block reads its head's copy, or the eager code expands K and V to every head); copies
    # and upcasts of the kernel multiply the passes
    heads_kv = H if impl.per_query_head else Hkv
    passes = impl.kv_passes
    # the score matrix the kernel materialises: over all S (dense, FlexGen, SparQ's approximate scores) or over the
    # k positions it attends (the evicting caches, Quest)
    scored = S if impl.strategy in ("dense", "flexgen", "sparq") else k
    stream = impl.score_passes * B * H * scored * sb
    gather, topk = zero, zero
    s = impl.strategy
    if s == "dense":
        stream = stream + 2 * B * heads_kv * S * d * e * passes
    elif s == "lm-infinite":
        stream = stream + 2 * B * heads_kv * k * d * e * passes
    elif s == "h2o":
        stream = stream + 2 * B * heads_kv * k * d * e * passes + 2 * B * Hkv * k * 4   # cache; fp32 statistics r+w
        topk = impl.topk * B * Hkv * k
    elif s == "flexgen":
        stream = stream + B * heads_kv * S * d * e * passes
        gather = B * heads_kv * k * d * e * impl.gather_factor
        topk = impl.topk * B * Hkv * S
    elif s == "quest" and not impl.selection:
        # only the attention over the selected pages: whole pages of P contiguous tokens are read in order
        stream = stream + 2 * B * heads_kv * k * d * e * passes
    elif s == "quest":
        P = np.asarray(rows.get("page_size", np.full(B.shape, 16)), dtype=np.float64)
        P = np.where(np.isfinite(P) & (P > 0), P, 16.0)
        pages = np.ceil(S / P)
        stream = stream + 2 * B * Hkv * pages * d * e + impl.bound_passes * B * H * pages * d * 4
        gather = 2 * B * heads_kv * k * d * e * impl.gather_factor
        topk = impl.topk * B * Hkv * pages
    elif s == "sparq":
        r = np.asarray(rows["r"], dtype=np.float64)
        # Step 2: k rows of K and of V (whole rows, gathered)
        gather = 2 * B * heads_kv * k * d * e * impl.gather_factor
        # Step 1 sweeps every position in address order (prefetch- and coalescing-friendly): streamed, not gathered.
        # An eager gather also writes its r x S copy and reads it back (gather_factor counts those passes).
        step1 = B * heads_kv * S * r * e
        if impl.step1 == "stream":
            stream = stream + step1
        elif impl.step1 == "gather":
            stream = stream + step1 * impl.gather_factor
        elif impl.step1 == "sectors":  # K once: each d-contiguous row moves the sectors its r components fall in
            g = hw.granularity_bytes
            per_row = _per_combination(sectors_touched, r, d, e, g) * g
            stream = stream + B * heads_kv * S * per_row + step1 * (impl.gather_factor - 1)
        topk = impl.topk * B * Hkv * S
    else:
        raise UserError(f"kernel {impl.name}: strategy {s!r} has no implementation model")
    # the data a timing loop reads again and again: the KV cache (an evicting strategy holds k tokens; SparQ with K
    # stored twice holds a second copy of K)
    held = k if s in ("h2o", "lm-infinite") or (s == "quest" and not impl.selection) else S
    working_set = B * Hkv * held * d * e * (3 if (s == "sparq" and impl.k_layout == "twice") else 2)
    if impl.parallel == "batch_heads" and hw.units:
        # one block per (sequence, head): the busy share of the device, and the part-full last wave
        blocks = B * H
        waves = np.ceil(blocks / hw.units)
        occupancy = blocks / (waves * hw.units)  # below one wave: blocks/units of the SMs stream
        if impl.split_kv:  # S split across blocks when the batch x heads blocks would leave SMs idle
            split = blocks < 0.8 * hw.units
            # the two code paths stream at their own rates: the unsplit one is a separate term
            unsplit = np.where(split, 0.0, stream / occupancy)
            return {"stream_bytes": np.where(split, stream, 0.0), "unsplit_stream_bytes": unsplit,
                    "gather_bytes": gather, "topk_elements": topk, "working_set": working_set}
        stream = stream / occupancy
    return {"stream_bytes": stream, "unsplit_stream_bytes": np.zeros_like(stream), "gather_bytes": gather,
            "topk_elements": topk, "working_set": working_set}


def _topk(rows_, n, k):
    """torch.topk on CPU runs a partial sort when k x 64 <= n and nth_element otherwise (ATen's SortingKernel):
    two costs per input element, so each top-k is booked under the regime its (n, k) selects."""
    heap = k * 64 <= n
    amount = rows_ * n
    return [("topk_heap", np.where(heap, amount, 0.0), np.zeros_like(amount)),
            ("topk_select", np.where(heap, 0.0, amount), np.zeros_like(amount))]


def line_elements(n_rows, row_len, picked, elem_bytes, line_bytes):
    """Elements in the cache lines touched when `picked` distinct components of each of `n_rows` contiguous rows of
    `row_len` elements are gathered: a gather along a row moves whole lines, so this is what it costs."""
    n_rows, row_len, picked, elem_bytes = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in
                                                                (n_rows, row_len, picked, elem_bytes)))
    per_row = _per_combination(sectors_touched, picked.ravel(), row_len.ravel(), elem_bytes.ravel(),
                               line_bytes).reshape(n_rows.shape)
    return n_rows * np.minimum(per_row * line_bytes / elem_bytes, row_len)


def eager_ops(impl: Implementation, rows: dict, line_bytes: float = 64) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The primitive ops one call of a lean eager kernel runs (sparq_ref/kernels.py, op by op): a list of
    (primitive, amount, footprint bytes). Amounts are bytes read for matvec / vecmat, elements in the cache lines
    touched for gather_components (a gather within rows moves whole lines of `line_bytes`), and elements for the
    others (calibration.ops says what each costs). The footprint decides how much of the data an op reads is still
    in the last-level cache when it is read again (cache_hit_fraction): for reads of the cache, the bytes one call
    touches (all of K and V for the dense kernels; the rows and copies it gathers for the sparse ones, which read
    the same positions call after call when timed on the same inputs); for reads of a fresh copy, the copy. Ops on
    vectors of B x H x d elements are left to the per-op overhead."""
    B, S, H, Hkv, d, e = _shape(rows)
    s = impl.strategy
    k = np.asarray(rows["k"], dtype=np.float64) if s != "dense" else S
    held = k if s in ("h2o", "lm-infinite") else S
    ws = B * Hkv * held * d * e * (3 if (s == "sparq" and impl.k_layout == "twice") else 2)
    scores = B * H * S          # score elements over the whole context (fp32 where the kernel upcasts)

    def attend(n, copy: bool):
        """q K^T over n keys, softmax, p V: over the cache itself, or over gathered copies of n rows."""
        kv = B * Hkv * n * d * e
        foot = kv if copy else ws
        return [("matvec", kv, foot), ("softmax", B * H * n, B * H * n * 4), ("vecmat", kv, foot)]

    if s in ("dense", "lm-infinite"):
        return attend(held, copy=False)
    if s == "h2o":   # attend over the cache, then scores += p.sum(2) and argmin over the statistics
        return attend(k, copy=False) + [("elementwise", 2 * B * Hkv * k, B * Hkv * k * 4)]
    if s == "flexgen":
        kv = B * Hkv * S * d * e
        v2 = B * Hkv * k * d * e
        ws = kv + 2 * v2            # touched per call: all of K, k rows of V and their copy
        return ([("matvec", kv, ws), ("softmax", scores, scores * 4), ("elementwise", B * Hkv * S, scores * 4)]
                + _topk(B * Hkv, S, k)
                + [("gather_components", line_elements(B * H, S, k, 4.0, line_bytes), scores * 4),
                   ("gather_rows", B * Hkv * k * d, ws),
                   ("vecmat", v2, v2)])
    if s == "quest":
        P = np.asarray(rows.get("page_size", np.full(B.shape, 16)), dtype=np.float64)
        pages = np.ceil(S / P)
        n_pages = np.minimum(np.maximum(1.0, np.floor(k / P)), pages)
        n = n_pages * P
        bounds = B * H * pages * d
        ws = 4 * B * Hkv * n * d * e        # touched per call: n rows of K and V, and their copies
        return ([("elementwise", 3 * bounds, bounds * 4)]     # q*kmin, q*kmax, maximum (then a sum over d)
                + _topk(B * Hkv, pages, n_pages)
                + [("gather_rows", 2 * B * Hkv * n * d, ws)] + attend(n, copy=True))
    if s == "sparq":
        r = np.asarray(rows["r"], dtype=np.float64)
        step1 = B * Hkv * S * r * e
        rows2 = 2 * B * Hkv * k * d * e
        # touched per call: K twice: r of the copy's rows; K once: every line of K; the k rows of K and V; the copies
        ws = 2 * (step1 + rows2) if impl.k_layout == "twice" else B * Hkv * S * d * e + step1 + 2 * rows2
        # K twice: r rows of the S-contiguous copy gathered, then q1 times the r x S copy (a vector-matrix product);
        # K once: r components of every key row gathered, then the S x r copy times q1 (matrix-vector products)
        step1_ops = ([("gather_rows", B * Hkv * r * S, ws), ("vecmat", step1, step1)] if impl.k_layout == "twice"
                     else [("gather_components", line_elements(B * Hkv * S, d, r, e, line_bytes), ws),
                           ("matvec", step1, step1)])
        return (_topk(B * Hkv, d, r) + step1_ops
                + [("softmax", scores, scores * 4), ("elementwise", B * Hkv * S, scores * 4)]
                + _topk(B * Hkv, S, k)
                + [("gather_components", line_elements(B * H, S, k, 4.0, line_bytes), scores * 4),
                   ("gather_rows", 2 * B * Hkv * k * d, ws)]
                + attend(k, copy=True))
    raise UserError(f"kernel {impl.name}: strategy {s!r} has no eager op model")


def op_model(impl: Implementation, hw: HardwareProfile) -> bool:
    """Eager kernels on a CPU whose profile measured the primitive ops (`sparq-sim calibrate --device cpu`) are
    predicted op by op; everything else by the byte model above."""
    return impl.eager_ops and not overlapped(hw) and bool((hw.calibration or {}).get("ops"))


def cache_hit_fraction(footprint, hw: HardwareProfile) -> np.ndarray:
    """The share of a data set of F bytes read again and again that is still in the last-level cache when read:
    1 up to the usable capacity U, then (U / F)^p. A profile written by `calibrate --device cpu` measured U and p
    (calibration.cache_usable, cache_falloff: q K^T timed on sets from an eighth of the cache to four times it);
    without them, U is CACHE_RESIDENT_FRACTION of the cache and p = 1 (assumption: the rest of the cache holds
    everything else, and replacement keeps a random part of a set too large to fit)."""
    cal = hw.calibration or {}
    usable = cal.get("cache_usable_bytes") or CACHE_RESIDENT_FRACTION * hw.cache_bytes
    falloff = cal.get("cache_falloff", 1.0)
    footprint = np.asarray(footprint, dtype=np.float64)
    return np.where(footprint <= usable, 1.0, (usable / np.maximum(footprint, 1.0)) ** falloff)


def op_times(impl: Implementation, rows: dict, hw: HardwareProfile) -> dict[str, np.ndarray]:
    """Seconds per primitive (and 'op': the per-op overhead of every op the kernel issues) at the measured costs."""
    cal = hw.calibration["ops"]
    out = {"op": np.full(len(np.asarray(rows["batch"])), impl.launches * hw.kernel_launch_s)}
    for name, amount, footprint in eager_ops(impl, rows, hw.granularity_bytes):
        per = {w: (1.0 / v if CPU_OPS[name] == "bandwidth" else v) for w, v in cal[name].items()}
        hit = cache_hit_fraction(footprint, hw)
        out[name] = out.get(name, 0.0) + amount * (hit * per["cache"] + (1.0 - hit) * per["memory"])
    return out


CACHE_RESIDENT_FRACTION = 0.5  # assumption: a working set up to half the last-level cache stays resident between calls


def _cache_speedup(f: dict, hw: HardwareProfile) -> np.ndarray:
    """Factor on byte costs: measured cache bandwidth / memory bandwidth when the working set stays in the cache
    between calls (a calibrated profile's `cache_bandwidth`), else 1."""
    cache_Bps = (hw.calibration or {}).get("cache_Bps")
    if not cache_Bps or not hw.cache_bytes:
        return np.ones_like(f["working_set"])
    mem = hw.memory[0].bandwidth_Bps * hw.memory[0].efficiency
    return np.where(f["working_set"] <= CACHE_RESIDENT_FRACTION * hw.cache_bytes, max(cache_Bps / mem, 1.0), 1.0)


def overlapped(hw: HardwareProfile) -> bool:
    """A GPU's host issues kernels asynchronously (time = overlap(host, device)); a CPU runs them in turn (sum)."""
    return hw.kind != "cpu"


def _bandwidth(impl: Implementation, hw: HardwareProfile):
    """Peak bandwidth of the tier the kernel reads, and the fraction of it achieved (the profile's efficiency, times
    the bandwidth_scale a few-shot calibration measured)."""
    tier = hw.tier(impl.kv_tier) if impl.kv_tier else hw.memory[0]
    return tier.bandwidth_Bps, tier.efficiency * hw.bandwidth_scale


def prior_costs(impl: Implementation, hw: HardwareProfile, families: dict | None = None) -> dict[str, float]:
    """Relative costs before any fit of this implementation: host = host_ops x the family's cost per op (fitted on
    the family's measured implementations where `families` has it; a CPU pays its profile's per-op overhead)."""
    fams = families if families is not None else fitted_defaults()["families"]
    # the family's own fit, else the median over every measured family of this kind of device ('*'), else the prior
    per_op = fams.get(impl.family, {}).get(hw.kind, fams.get("*", {}).get(hw.kind))
    if per_op is None:
        per_op = hw.kernel_launch_s if hw.kind == "cpu" else impl.host_per_op_s
    out = {"host_s": impl.host_ops * per_op, "stream": STREAM_PRIOR, "unsplit": STREAM_PRIOR,
           "gather": GATHER_PRIOR, "topk_bytes": TOPK_BYTES_PRIOR}
    if hw.kind == "cpu" and not impl.kv_tier:
        out.update(CPU_PRIORS)
    return out


def default_costs(impl: Implementation, hw: HardwareProfile, defaults: dict | None = None) -> dict[str, float]:
    """Relative costs of an implementation on this kind of device: the fitted defaults where it was measured (on a
    device of the same kind), else the priors. `defaults` replaces the shipped fitted defaults (leave-one-out)."""
    d = defaults if defaults is not None else fitted_defaults()
    c = prior_costs(impl, hw, d.get("families", {}))
    got = d.get("implementations", {}).get(impl.name, {}).get(hw.kind)
    if got:
        c.update({f: got[f] for f in COST_FIELDS if f in got})
    return c


def absolute_params(impl: Implementation, hw: HardwareProfile, costs: dict) -> dict[str, float]:
    """Relative costs -> the seconds and inverse bandwidths of the time formula on this profile."""
    bw, eff = _bandwidth(impl, hw)
    ach = bw * eff
    return {"fixed_s": costs["host_s"],
            "device_fixed_s": impl.launches * hw.kernel_launch_s if overlapped(hw) else 0.0,
            "inv_stream": 1.0 / (ach * costs["stream"]), "inv_unsplit": 1.0 / (ach * costs["unsplit"]),
            "inv_gather": 1.0 / (ach * costs["gather"]), "topk_s": costs["topk_bytes"] / ach}


def params_for(impl: Implementation, hw: HardwareProfile, defaults: dict | None = None) -> dict[str, float]:
    """The time formula's parameters for this kernel on this profile (see the module docstring for the order)."""
    costs = default_costs(impl, hw, defaults)
    cal = hw.calibration or {}
    bw, eff = _bandwidth(impl, hw)
    # machine-wide figures a calibrated profile measured (calibrate --device cpu) replace the defaults' device terms
    if "stream_efficiency" in cal:
        costs["stream"] = cal["stream_efficiency"]
    if "gather_efficiency" in cal:
        costs["gather"] = cal["gather_efficiency"] / eff
    if "topk_per_element_s" in cal:
        costs["topk_bytes"] = cal["topk_per_element_s"] * bw * eff
    costs["host_s"] *= cal.get("host_scale", 1.0)
    p = absolute_params(impl, hw, costs)
    kc = cal.get("kernels", {}).get(impl.name, {})
    if "fixed_s" in kc:
        p["fixed_s"] = kc["fixed_s"]
    if "device_fixed_s" in kc:
        p["device_fixed_s"] = kc["device_fixed_s"]
    if "stream_efficiency" in kc:
        p["inv_stream"] = p["inv_unsplit"] = 1.0 / (bw * kc["stream_efficiency"])
    if "unsplit_efficiency" in kc:
        p["inv_unsplit"] = 1.0 / (bw * kc["unsplit_efficiency"])
    if "gather_efficiency" in kc:
        p["inv_gather"] = 1.0 / (bw * kc["gather_efficiency"])
    if "topk_per_element_s" in kc:
        p["topk_s"] = kc["topk_per_element_s"]
    if "op_scale" in kc:
        p["op_scale"] = dict(kc["op_scale"])
    return p


def predict_kernel_times(kernels, rows: dict, hw: HardwareProfile, params: dict | None = None,
                         defaults: dict | None = None) -> np.ndarray:
    """Predicted whole-call time for each measurement row. `params` maps kernel -> fitted parameters (default: the
    profile's calibration where it has one, else the fitted defaults, else the priors); `defaults` replaces the
    shipped fitted defaults."""
    return combine(kernel_time_parts(kernels, rows, hw, params, defaults), hw)


def kernel_time_parts(kernels, rows: dict, hw: HardwareProfile, params: dict | None = None,
                      defaults: dict | None = None) -> dict[str, np.ndarray]:
    """The parts of each row's predicted time: host, fixed device time, the device time that scales with the memory
    bandwidth, and (op model) the time of a CPU's measured primitive ops, which no factor scales."""
    kernels = np.asarray(kernels, dtype=object)
    n = len(kernels)
    parts = {k: np.zeros(n) for k in ("host", "device_fixed", "device", "ops")}
    for name in dict.fromkeys(kernels.tolist()):
        impl = get_implementation(name)
        sel = kernels == name
        sub = {c: np.asarray(v)[sel] for c, v in rows.items()}
        p = (params or {}).get(name) or params_for(impl, hw, defaults)
        if op_model(impl, hw):
            scale = p.get("op_scale", {})
            parts["ops"][sel] = sum(t * scale.get(op, 1.0) for op, t in op_times(impl, sub, hw).items())
            continue
        f = features(impl, sub, hw)
        parts["host"][sel] = p["fixed_s"]
        parts["device_fixed"][sel] = p["device_fixed_s"]
        parts["device"][sel] = device_time(dict(p, device_fixed_s=0.0), f, _cache_speedup(f, hw))
    return parts


def combine(parts: dict, hw: HardwareProfile, host_factor: float = 1.0, bandwidth_factor: float = 1.0) -> np.ndarray:
    """Whole-call times from `kernel_time_parts`, with the host cost and the memory bandwidth scaled by factors."""
    host = parts["host"] * host_factor
    dev = parts["device_fixed"] + parts["device"] / bandwidth_factor
    t = overlap(host, dev) if overlapped(hw) else host + dev
    return np.where(parts["ops"] > 0, parts["ops"], t)


OVERLAP_P = 2.0   # host and device time combine as (host^p + device^p)^(1/p); see `overlap`


def overlap(host, device):
    """Time of work the host issues asynchronously to a device: max(host, device) when one dominates; when the two are
    close, less than perfectly overlapped (an eager op's device work cannot start before the host has issued it, and
    a queue only a few ops deep drains whenever the device outruns the host). The smooth maximum
    (host^p + device^p)^(1/p) with p = OVERLAP_P = 2 models it: 1.41x the larger at equal times, within 3 % of it once
    one is 4x the other. p was chosen among 2, 3, 4 and the hard maximum by the held-out errors of `sparq-sim validate
    --all` (so those figures are optimistic by that one choice)."""
    return (np.asarray(host, dtype=np.float64) ** OVERLAP_P + np.asarray(device, dtype=np.float64) ** OVERLAP_P) \
        ** (1.0 / OVERLAP_P)


def device_time(p: dict, f: dict, speedup=1.0) -> np.ndarray:
    streamed = f["stream_bytes"] * p["inv_stream"] + f["unsplit_stream_bytes"] * p.get("inv_unsplit", p["inv_stream"])
    return (p["device_fixed_s"] + (streamed + f["gather_bytes"] * p["inv_gather"]) / speedup
            + f["topk_elements"] * p["topk_s"])
