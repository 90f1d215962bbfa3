"""Implementation models: the time a named decode-attention kernel takes, and fitting them to measurements.

A roofline over datasheet peaks is a lower bound; real kernels launch many small ops, gather rather than stream, and
run a top-k. Each implementation in `data/implementations.yaml` says how its bytes move; per call of one kernel:

    time = max(host, device)
    host   = fixed: the framework's per-op dispatch of every op the kernel issues (launches run asynchronously, so
             the host and the device overlap; small problems are host bound and flat in S and B, as measured)
    device = launches x kernel_launch + stream_bytes / (BW x stream_efficiency)
             + gather_bytes / (BW x gather_efficiency) + topk_elements x topk_s_per_element

BW is the peak bandwidth of the tier the KV cache lives in (the profile's first tier unless the implementation names
one). Unfitted, the parameters come from the profile (launch overhead, memory efficiency) and the implementation's
priors; `fit()` finds them from measurements: rows the model says are host bound set `fixed`, the others fit the
device terms by least squares on relative error, pulled toward the priors so a parameter the data cannot see keeps
its prior. Pure numpy/pandas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from ..hardware_profiles import CPU_OPS, HardwareProfile
from .errors import UserError, closest
from .units import DTYPE_BYTES, parse_dtype, parse_quantity

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ONE_K = "-oneK"
GATHER_EFFICIENCY_PRIOR = 0.5   # assumption: row gathers reach about half the streaming bandwidth
TOPK_BYTES_PER_ELEMENT_PRIOR = 16.0  # assumption: a radix select reads 4-byte keys about four times


@dataclass(frozen=True)
class Implementation:
    name: str
    strategy: str
    family: str
    dispatch_s: float
    launches: float
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


@lru_cache(maxsize=1)
def _load() -> dict:
    path = DATA_DIR / "implementations.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    fams = {k: parse_quantity(v["dispatch"], "time") for k, v in data["families"].items()}
    out = {}
    for name, d in data["implementations"].items():
        out[name] = Implementation(
            name=name, strategy=d["strategy"], family=d["family"], dispatch_s=fams[d["family"]],
            launches=float(d["launches"]), score_passes=float(d.get("score_passes", 0)),
            score_bytes=d.get("score_bytes", "dtype"), k_layout=d.get("k_layout"), step1=d.get("step1"),
            gather_factor=float(d.get("gather_factor", 1)), topk=float(d.get("topk", 0)), kv_tier=d.get("kv_tier"),
            bound_passes=float(d.get("bound_passes", 0)), parallel=d.get("parallel"),
            split_kv=bool(d.get("split_kv", False)), source=d["source"], eager_ops=d.get("ops") == "eager")
    return out


def implementation_names() -> list[str]:
    base = _load()
    return sorted(list(base) + [n + ONE_K for n, i in base.items() if i.strategy == "sparq"])


def get_implementation(kernel: str) -> Implementation:
    """A kernel name from the measurement schema; '-oneK' marks K stored once (Step 1 reads whole sectors)."""
    base = _load()
    name = str(kernel)
    once = name.endswith(ONE_K)
    root = name[: -len(ONE_K)] if once else name
    if root not in base or (once and base[root].strategy != "sparq"):
        raise UserError(f"unknown kernel {kernel!r}{closest(name, implementation_names())} "
                        f"(accepted: {', '.join(implementation_names())})")
    impl = base[root]
    if once:
        from dataclasses import replace
        impl = replace(impl, name=name, k_layout="once", step1="sectors")
    return impl


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


def _shape(rows: dict):
    """Batch, context, query heads, KV heads, head_dim and bytes per element of measurement rows, as float arrays."""
    return (*(np.asarray(rows[c], dtype=np.float64) for c in ("batch", "seq_len", "n_heads", "n_kv_heads", "head_dim")),
            np.asarray([DTYPE_BYTES[parse_dtype(x)] for x in rows["dtype"]], dtype=np.float64))


def features(impl: Implementation, rows: dict, hw: HardwareProfile) -> dict[str, np.ndarray]:
    """Bytes and elements per call for measurement rows (dict of arrays: batch, seq_len, n_heads, n_kv_heads,
    head_dim, dtype, r, k; page_size optional, default 16)."""
    B, S, H, Hkv, d, e = _shape(rows)
    k = np.asarray(rows["k"], dtype=np.float64) if impl.strategy != "dense" else S
    sb = e if impl.score_bytes == "dtype" else float(impl.score_bytes)
    zero = np.zeros_like(B)
    # the score matrix the kernel materialises: over all S (dense, FlexGen, SparQ's approximate scores) or over the
    # k positions it attends (the evicting caches, Quest)
    scored = S if impl.strategy in ("dense", "flexgen", "sparq") else k
    stream = impl.score_passes * B * H * scored * sb
    gather, topk = zero, zero
    s = impl.strategy
    if s == "dense":
        stream = stream + 2 * B * Hkv * S * d * e
    elif s == "lm-infinite":
        stream = stream + 2 * B * Hkv * k * d * e
    elif s == "h2o":
        stream = stream + 2 * B * Hkv * k * d * e + 2 * B * Hkv * k * 4   # cache, and fp32 statistics read+write
        topk = impl.topk * B * Hkv * k
    elif s == "flexgen":
        stream = stream + B * Hkv * S * d * e
        gather = B * Hkv * k * d * e * impl.gather_factor
        topk = impl.topk * B * Hkv * S
    elif s == "quest":
        P = np.asarray(rows.get("page_size", np.full(B.shape, 16)), dtype=np.float64)
        pages = np.ceil(S / P)
        stream = stream + 2 * B * Hkv * pages * d * e + impl.bound_passes * B * H * pages * d * 4
        gather = 2 * B * Hkv * k * d * e * impl.gather_factor
        topk = impl.topk * B * Hkv * pages
    elif s == "sparq":
        r = np.asarray(rows["r"], dtype=np.float64)
        # Step 2: k rows of K and of V (whole rows, gathered)
        gather = 2 * B * Hkv * k * d * e * impl.gather_factor
        # Step 1 sweeps every position in address order (prefetch- and coalescing-friendly): streamed, not gathered.
        # An eager gather also writes its r x S copy and reads it back (gather_factor counts those passes).
        step1 = B * Hkv * S * r * e
        if impl.step1 == "stream":
            stream = stream + step1
        elif impl.step1 == "gather":
            stream = stream + step1 * impl.gather_factor
        elif impl.step1 == "sectors":  # K once: each d-contiguous row moves the sectors its r components fall in
            g = hw.granularity_bytes
            per_row = np.asarray([sectors_touched(ri, di, ei, g) for ri, di, ei in zip(r, d, e)]) * g
            stream = stream + B * Hkv * S * per_row + step1 * (impl.gather_factor - 1)
        topk = impl.topk * B * Hkv * S
    else:
        raise UserError(f"kernel {impl.name}: strategy {s!r} has no implementation model")
    # the data a timing loop reads again and again: the KV cache (an evicting strategy holds k tokens; SparQ with K
    # stored twice holds a second copy of K)
    held = k if s in ("h2o", "lm-infinite") else S
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
    per_row = np.asarray([sectors_touched(p, n, e, line_bytes) for p, n, e in
                          zip(picked.ravel(), row_len.ravel(), elem_bytes.ravel())]).reshape(n_rows.shape)
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
    """A GPU's host issues kernels asynchronously (time = max(host, device)); a CPU runs them in turn (sum)."""
    return hw.kind != "cpu"


def _bandwidth(impl: Implementation, hw: HardwareProfile):
    tier = hw.tier(impl.kv_tier) if impl.kv_tier else hw.memory[0]
    return tier.bandwidth_Bps, tier.efficiency


def prior_params(impl: Implementation, hw: HardwareProfile) -> dict[str, float]:
    bw, eff = _bandwidth(impl, hw)
    if not overlapped(hw):  # CPU: each op pays the profile's per-op overhead, then its work, in turn
        fixed, device_fixed = impl.launches * hw.kernel_launch_s, 0.0
    else:
        fixed, device_fixed = impl.launches * (hw.kernel_launch_s + impl.dispatch_s), impl.launches * hw.kernel_launch_s
    cal = hw.calibration or {}
    # machine-wide figures a calibrated profile measured (calibrate --device cpu) replace the assumptions
    gather_eff = cal.get("gather_efficiency", eff * GATHER_EFFICIENCY_PRIOR)
    stream_eff = eff * cal.get("stream_efficiency", 1.0)
    return {
        "fixed_s": fixed,
        "device_fixed_s": device_fixed,
        "inv_stream": 1.0 / (bw * stream_eff),
        "inv_gather": 1.0 / (bw * gather_eff),
        "topk_s": cal.get("topk_per_element_s", TOPK_BYTES_PER_ELEMENT_PRIOR / (bw * eff)),
    }


def params_for(impl: Implementation, hw: HardwareProfile) -> dict[str, float]:
    """Calibrated values from the profile where present, else the priors."""
    p = prior_params(impl, hw)
    cal = (hw.calibration or {}).get("kernels", {}).get(impl.name, {})
    bw, _ = _bandwidth(impl, hw)
    if "fixed_s" in cal:
        p["fixed_s"] = cal["fixed_s"]
    if "device_fixed_s" in cal:
        p["device_fixed_s"] = cal["device_fixed_s"]
    if "stream_efficiency" in cal:
        p["inv_stream"] = 1.0 / (bw * cal["stream_efficiency"])
    if "gather_efficiency" in cal:
        p["inv_gather"] = 1.0 / (bw * cal["gather_efficiency"])
    if "topk_per_element_s" in cal:
        p["topk_s"] = cal["topk_per_element_s"]
    if "op_scale" in cal:
        p["op_scale"] = dict(cal["op_scale"])
    return p


def predict_kernel_times(kernels, rows: dict, hw: HardwareProfile, params: dict | None = None) -> np.ndarray:
    """Predicted whole-call time for each measurement row. `params` maps kernel -> fitted parameters (default: the
    profile's calibration where it has one, else the priors)."""
    kernels = np.asarray(kernels, dtype=object)
    out = np.full(len(kernels), np.nan)
    for name in dict.fromkeys(kernels.tolist()):
        impl = get_implementation(name)
        sel = kernels == name
        sub = {c: np.asarray(v)[sel] for c, v in rows.items()}
        if op_model(impl, hw):
            scale = ((params or {}).get(name) or params_for(impl, hw)).get("op_scale", {})
            out[sel] = sum(t * scale.get(op, 1.0) for op, t in op_times(impl, sub, hw).items())
            continue
        f = features(impl, sub, hw)
        p = (params or {}).get(name) or params_for(impl, hw)
        dev = _device_time(p, f, _cache_speedup(f, hw))
        out[sel] = np.maximum(p["fixed_s"], dev) if overlapped(hw) else p["fixed_s"] + dev
    return out


def _device_time(p: dict, f: dict, speedup=1.0) -> np.ndarray:
    streamed = f["stream_bytes"] * p["inv_stream"] + f["unsplit_stream_bytes"] * p.get("inv_unsplit", p["inv_stream"])
    return (p["device_fixed_s"] + (streamed + f["gather_bytes"] * p["inv_gather"]) / speedup
            + f["topk_elements"] * p["topk_s"])


def fit(kernels, rows: dict, measured_s, hw: HardwareProfile, prior_rows: float = 0.3,
        host_margin: float = 1.5):
    """Fit each kernel's host cost, stream and gather efficiency and top-k cost per element, kernel by kernel.

    Since time = max(host, device) >= host on every row, a kernel's host cost is its fastest measured call. Rows more
    than `host_margin` above that are device bound: they fit the device terms by least squares on relative error,
    each parameter scaled by its prior and pulled toward it with the weight of `prior_rows` rows at 100 % error, so
    a parameter the data cannot see keeps its prior. Returns {kernel: params}."""
    kernels = np.asarray(kernels, dtype=object)
    t_all = np.asarray(measured_s, dtype=np.float64)
    if len(t_all) == 0:
        raise UserError("nothing to fit: no measurement rows")
    if np.any(~np.isfinite(t_all)) or np.any(t_all <= 0):
        raise UserError("measured times must be positive and finite")
    params = {}
    for name in dict.fromkeys(kernels.tolist()):
        impl = get_implementation(name)
        sel = kernels == name
        t = t_all[sel]
        if op_model(impl, hw):
            params[name] = _fit_op_scale(impl, {c: np.asarray(v)[sel] for c, v in rows.items()}, t, hw, prior_rows)
            continue
        f = features(impl, {c: np.asarray(v)[sel] for c, v in rows.items()}, hw)
        p0 = prior_params(impl, hw)
        feat = {"fixed_s": np.ones_like(t), "inv_stream": f["stream_bytes"], "inv_unsplit": f["unsplit_stream_bytes"],
                "inv_gather": f["gather_bytes"], "topk_s": f["topk_elements"]}
        p0 = dict(p0, inv_unsplit=p0["inv_stream"])
        cols = [c for c in ("inv_stream", "inv_unsplit", "inv_gather", "topk_s") if feat[c].any()]
        if overlapped(hw):
            p = dict(p0, fixed_s=float(t.min()))
            dev = t > host_margin * p["fixed_s"]
        else:  # CPU: time = fixed + device terms, one linear fit over every row
            p = dict(p0)
            cols = ["fixed_s"] + cols
            dev = np.ones(len(t), dtype=bool)
        if dev.any():
            prior = np.array([max(p0[c], 1e-9) if c == "fixed_s" else p0[c] for c in cols])
            M = np.stack([feat[c] for c in cols], axis=1)[dev] * prior / t[dev, None]
            y = 1.0 - p0["device_fixed_s"] / t[dev]
            x = np.linalg.solve(M.T @ M + prior_rows * np.eye(len(cols)), M.T @ y + prior_rows)
            x = np.clip(x, 0.05, 20.0)  # between 1/20 and 20 times the prior
            if "fixed_s" in cols:  # a host cost may be anything from zero up
                x[0] = max(x[0], 0.0) if prior[0] > 0 else 0.0
            p.update({c: float(v) for c, v in zip(cols, x * prior)})
        params[name] = p
    return params


def _fit_op_scale(impl: Implementation, rows: dict, t: np.ndarray, hw: HardwareProfile, prior_rows: float) -> dict:
    """Op model: one factor per primitive on its measured cost (1 = the micro-benchmark's figure), least squares on
    relative error, pulled toward 1 with the weight of `prior_rows` rows so a primitive the rows cannot see keeps 1."""
    times = {op: v for op, v in op_times(impl, rows, hw).items() if np.any(v > 0)}
    cols = list(times)
    M = np.stack([times[c] for c in cols], axis=1) / t[:, None]
    x = np.linalg.solve(M.T @ M + prior_rows * np.eye(len(cols)), M.T @ np.ones(len(t)) + prior_rows)
    x = np.clip(x, 0.05, 20.0)
    return {"op_scale": {c: float(v) for c, v in zip(cols, x)}}


def calibration_block(params: dict, hw: HardwareProfile, source: str, rows: int) -> dict:
    """The `calibration:` block of a profile YAML for fitted parameters (efficiencies relative to peak bandwidth)."""
    kernels = {}
    for name, p in params.items():
        impl = get_implementation(name)
        if "op_scale" in p and "fixed_s" not in p:   # op model: factors on the micro-benchmarked costs
            kernels[name] = {"op_scale": {op: round(v, 4) for op, v in p["op_scale"].items()}}
            continue
        bw, _ = _bandwidth(impl, hw)
        kernels[name] = {"fixed": f"{p['fixed_s'] * 1e6:.4g} us", "device_fixed": f"{p['device_fixed_s'] * 1e6:.4g} us",
                         "stream_efficiency": round(1.0 / (bw * p["inv_stream"]), 4),
                         "gather_efficiency": round(1.0 / (bw * p["inv_gather"]), 4),
                         "topk_per_element": f"{p['topk_s'] * 1e9:.4g} ns"}
    return {"source": source, "rows": int(rows), "kernels": kernels}
