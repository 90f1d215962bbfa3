"""`sparq-sim calibrate --device cpu`: micro-benchmarks of this machine, written as a hardware profile.

Measures, with the same torch the kernels use (medians of repeats):
  streaming read        sum over a tensor far larger than the last-level cache -> achieved DRAM bandwidth
  gathers               index_select of random rows 4, 32, 64 and 256 bytes wide -> useful bytes per second
  matmul                fp32 (and bf16 where it runs) square matmuls -> achieved matrix FLOP/s
  vector                fp32 elementwise exp -> achieved vector FLOP/s
  per-op overhead       a torch op on a one-element tensor -> the fixed cost every eager op pays
  top-k                 torch.topk over rows of 4096..65536 scores -> seconds per element
  primitive ops         the ops of the eager decode-attention kernels (q K^T, p V, row and component gathers, top-k
                        in both of torch's regimes, softmax, broadcast products) on data in memory and in the cache
                        -> calibration.ops, from which eager kernels on this CPU are predicted op by op
The profile records achieved figures (efficiency 1.0, since they are what was reached), the gather efficiency and
top-k cost in its calibration block, and names this command and the date as the source of every measured number.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time

from .measure import cpu_name


def _median_time(fn, repeats=7, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _meminfo_bytes() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 16e9


def _cache_bytes() -> tuple[float, int]:
    """Largest cache level's size and the line size, from sysfs."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best, line = 0.0, 64
    try:
        for idx in sorted(os.listdir(base)):
            p = os.path.join(base, idx)
            with open(os.path.join(p, "size"), encoding="utf-8") as f:
                txt = f.read().strip()
            mult = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(txt[-1], 1)
            size = float(txt.rstrip("KMG")) * mult
            if size > best:
                best = size
                with open(os.path.join(p, "coherency_line_size"), encoding="utf-8") as f:
                    line = int(f.read().strip())
    except (OSError, ValueError):
        pass
    return best or 32 * 1024**2, line


MICROBENCHMARK_STAGES = 12   # the steps `run_microbenchmarks` reports to its progress callback


def run_microbenchmarks(quick: bool = False, progress=None) -> dict:
    """The machine's figures (see profile_from_microbenchmarks); `progress(n)` after each of the
    MICROBENCHMARK_STAGES steps."""
    import torch

    tick = progress or (lambda n=1: None)

    torch.manual_seed(0)
    cache, line = _cache_bytes()
    n_stream = int(max(8 * cache, 256 * 1024**2) // 4) // (4 if quick else 1)
    x = torch.randn(n_stream)
    stream_s = _median_time(lambda: x.sum())
    stream_Bps = n_stream * 4 / stream_s
    small = x[: int(cache // 4) // 4]           # a quarter of the last-level cache: stays resident
    cache_Bps = small.numel() * 4 / _median_time(lambda: small.sum(), repeats=15, warmup=3)
    tick(1)

    gathers = {}
    for width in (1, 8, 16, 64):                          # fp32 elements per row: 4, 32, 64, 256 bytes
        rows = n_stream // width
        table = x[: rows * width].view(rows, width)
        n_idx = max(1, min(rows, (32 * 1024**2) // (width * 4)))
        idx = torch.randint(0, rows, (n_idx,))
        out = torch.empty(n_idx, width)
        t = _median_time(lambda: torch.index_select(table, 0, idx, out=out))
        gathers[width * 4] = n_idx * width * 4 / t
        tick(1)
    x = None  # free the stream buffer before the next benchmarks
    # the gather the eager kernels run: whole rows of K picked by an index expanded over head_dim (torch.gather)
    Kg = torch.randn(16, 16384 // (4 if quick else 1), 128)
    rows_idx = torch.randint(0, Kg.shape[1], (16, 1024, 1)).expand(16, 1024, 128)
    row_gather_Bps = rows_idx.numel() * 4 / _median_time(lambda: Kg.gather(1, rows_idx))
    Kg = None
    tick(1)

    # decode attention streams K and V through matrix-vector products: q [1 x d] @ K^T over many heads
    heads, S_mv, d_mv = 16, 32768 // (4 if quick else 1), 128
    K = torch.randn(heads, S_mv, d_mv)
    q = torch.randn(heads, 1, d_mv)
    matvec_Bps = K.numel() * 4 / _median_time(lambda: q @ K.transpose(-1, -2))
    K = None
    tick(1)
    # a decode step streams its weights through batch-1 linear layers: a stack of 4 MB matrices, four times the cache
    W = [torch.randn(2048, 512) for _ in range(max(2, int((2 if quick else 4) * cache // (2048 * 512 * 4))))]
    x, y = torch.randn(1, 512), torch.empty(1, 2048)

    def linears():
        for w in W:
            torch.mm(x, w.t(), out=y)   # F.linear at batch 1, into a reused output
    gemv_Bps = sum(w.numel() for w in W) * 4 / _median_time(linears)
    W = None
    tick(1)

    n = 512 if quick else 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    matmul = {"fp32": 2 * n**3 / _median_time(lambda: a @ b)}
    try:
        ab, bb = a.bfloat16(), b.bfloat16()
        matmul["bf16"] = 2 * n**3 / _median_time(lambda: ab @ bb)
    except RuntimeError:
        pass
    tick(1)
    v = torch.randn(8 * 1024**2)
    vector_fp32 = v.numel() / _median_time(lambda: torch.exp(v))   # one op per element (exp counted as one)

    tiny = torch.ones(1)
    overhead_s = _median_time(lambda: [tiny.add(1.0) for _ in range(200)], repeats=9) / 200
    tick(1)
    ops = primitive_ops(cache, quick, line)
    tick(1)

    topk = []
    for S in (4096, 16384, 65536):
        scores = torch.randn(64, S)
        t = _median_time(lambda: torch.topk(scores, 128, dim=-1, sorted=False))
        topk.append(max(t - overhead_s, 0.0) / scores.numel())
    tick(1)
    return {
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "memory_bytes": _meminfo_bytes(), "cache_bytes": cache, "line_bytes": line,
        "stream_Bps": stream_Bps, "cache_Bps": cache_Bps, "matvec_Bps": matvec_Bps, "gemv_Bps": gemv_Bps,
        "gather_Bps": gathers,
        "row_gather_Bps": row_gather_Bps, "matmul_flops": matmul, "vector_flops": vector_fp32,
        "op_overhead_s": overhead_s, "topk_s_per_element": statistics.median(topk), "ops": ops,
    }


def cache_curve(cache_bytes: float, memory_size: float) -> tuple[float, float]:
    """The usable cache U and fall-off p of the hit model (simulator/implementations.py cache_hit_fraction: 1 up to
    U, then (U / F)^p), from q K^T per-byte times t(F) on sets of F bytes: the hit share at F is
    (t_memory - t(F)) / (t_memory - t_cache); U and p are the grid point that fits those shares best."""
    import numpy as np
    import torch

    sizes = np.array([1 / 8, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4, 1, 3 / 2, 2]) * cache_bytes
    sizes = np.append(sizes, memory_size)
    per_byte = []
    for F in sizes:
        S = max(64, int(F // (16 * OP_D * 4)))
        K, q, o = torch.randn(16, S, OP_D), torch.randn(16, 1, OP_D), torch.empty(16, 1, S)
        per_byte.append(_median_time(lambda: torch.bmm(q, K.transpose(-1, -2), out=o), repeats=9) / (K.numel() * 4))
    per_byte = np.array(per_byte)
    fast, slow = per_byte[:2].min(), per_byte[-1]
    hit = np.clip((slow - per_byte) / max(slow - fast, 1e-30), 0.0, 1.0)
    best = (np.inf, 0.5 * cache_bytes, 1.0)
    for U in np.linspace(cache_bytes / 16, cache_bytes, 61):
        for p in np.arange(0.5, 6.01, 0.25):
            model = np.where(sizes <= U, 1.0, (U / sizes) ** p)
            err = float(np.sum((model - hit) ** 2))
            if err < best[0]:
                best = (err, float(U), float(p))
    return best[1], best[2]


OP_D, OP_R = 128, 32   # head_dim and r of the primitive-op benchmarks (fp32, as `sparq-sim measure` runs by default)


def primitive_ops(cache_bytes: float, quick: bool = False, line_bytes: int = 64) -> dict:
    """The primitive ops of the eager decode-attention kernels (simulator/implementations.py eager_ops), each timed
    on data four times the last-level cache ('memory') and a quarter of it ('cache'), in the shapes decode attention
    uses: [heads, S, d] caches, one query row per head. Returns {op: {'memory': figure, 'cache': figure}}: bytes read
    per second for matvec / vecmat, seconds per element for the others (see hardware_profiles CPU_OPS).

    Each op writes into a buffer allocated once: the kernels, called again and again, reuse their memory (no page
    faults per call, measured), while a fresh output of tens of MB comes from a new mapping whose first touch faults
    every page in, which would be timed as part of the op."""
    import torch

    from ..simulator.implementations import line_elements

    d, r = OP_D, OP_R
    out = {op: {} for op in ("matvec", "vecmat", "gather_rows", "gather_components", "topk_select", "topk_heap",
                             "softmax", "elementwise")}
    memory_size = (2 if quick else 4) * cache_bytes
    for where, size in (("memory", memory_size), ("cache", cache_bytes / 4)):
        heads = 16
        S = max(1024, int(size // (heads * d * 4)) // 1024 * 1024)
        K = torch.randn(heads, S, d)
        q = torch.randn(heads, 1, d)
        p = torch.softmax(torch.randn(heads, 1, S), dim=-1)
        qk, pv = torch.empty(heads, 1, S), torch.empty(heads, 1, d)
        out["matvec"][where] = K.numel() * 4 / _median_time(lambda: torch.bmm(q, K.transpose(-1, -2), out=qk))
        out["vecmat"][where] = K.numel() * 4 / _median_time(lambda: torch.bmm(p, K, out=pv))
        k = S // 2   # half the rows, at random: the set the calls touch is half of K, in memory or in cache
        rows = torch.randint(0, S, (heads, k, 1)).expand(heads, k, d)
        buf = torch.empty(rows.shape)
        out["gather_rows"][where] = _median_time(lambda: torch.gather(K, 1, rows, out=buf)) / rows.numel()
        # r distinct components of every row (as top-r picks them): per element of the cache lines they fall in
        comps = torch.argsort(torch.rand(heads, 1, d), dim=-1)[..., :r].expand(heads, S, r)
        lines = line_elements(heads * S, d, r, 4.0, line_bytes)
        buf = torch.empty(comps.shape)
        out["gather_components"][where] = _median_time(lambda: torch.gather(K, 2, comps, out=buf)) / float(lines)
        K = p = rows = comps = buf = None
        n = 4096                                      # score rows of a 4k context
        scores = torch.randn(max(1, int(size // (n * 4))), n)
        for op, kk in (("topk_select", 256), ("topk_heap", n // 64)):
            vals, idx = torch.empty(scores.shape[0], kk), torch.empty(scores.shape[0], kk, dtype=torch.long)
            out[op][where] = _median_time(lambda: torch.topk(scores, kk, dim=-1, sorted=False, out=(vals, idx))) \
                / scores.numel()
        buf = torch.empty(scores.shape)
        out["softmax"][where] = _median_time(lambda: torch._softmax(scores, -1, False, out=buf)) / scores.numel()
        scores = buf = vals = idx = None
        pages = max(1, int(size // (heads * d * 4)))  # Quest's bounds: a query row times every page's key bound
        a, b = torch.randn(heads, 1, d), torch.randn(heads, pages, d)
        buf = torch.empty(b.shape)
        out["elementwise"][where] = _median_time(lambda: torch.mul(a, b, out=buf)) / b.numel()
        a = b = buf = None
    # how much of a re-read set the cache keeps: q K^T from an eighth of the cache to the memory size
    usable, falloff = cache_curve(cache_bytes, memory_size)
    out["cache_usable"], out["cache_falloff"] = usable, falloff
    # the 'memory' sets still hit in the cache by that share; take it out of the 'memory' figures
    hit = min(1.0, (usable / memory_size) ** falloff)
    for op, figs in out.items():
        if op.startswith("cache_"):
            continue
        bandwidth = op in ("matvec", "vecmat")
        per = {w: (1.0 / v if bandwidth else v) for w, v in figs.items()}
        mem = max((per["memory"] - hit * per["cache"]) / (1.0 - hit), per["cache"])
        figs["memory"] = 1.0 / mem if bandwidth else mem
    return out


def profile_from_microbenchmarks(m: dict, name: str) -> dict:
    """A schema-1 profile (as a dict ready for YAML) from `run_microbenchmarks` figures."""
    today = datetime.date.today().isoformat()
    src = f"measured by sparq-sim calibrate --device cpu on {today}: {m['cpu']}, {m['threads']} threads, torch {m['torch']}"
    gather_eff = m["gather_Bps"][max(m["gather_Bps"])] / m["stream_Bps"]
    return {
        "schema_version": 1,
        "name": name,
        "aliases": [],
        "vendor": m["cpu"].split()[0] if m["cpu"] else "unknown",
        "kind": "cpu",
        "description": f"this machine: {m['cpu']} ({m['threads']} threads), {platform.system()} {platform.machine()}",
        "version": 1,
        "memory": [{
            "name": "dram",
            "capacity": f"{m['memory_bytes'] / 1e9:.3f} GB",
            "bandwidth": f"{m['stream_Bps'] / 1e9:.3f} GB/s",
            "efficiency": round(min(1.0, m["gemv_Bps"] / m["stream_Bps"]), 4),
            "source": f"capacity: /proc/meminfo MemTotal; bandwidth: achieved streaming read (torch.sum over "
                      f"8x the last-level cache), {src}; efficiency: the share of it that batch-1 linear layers "
                      f"(x W^T over 4 MB weight matrices, four times the cache) reach, "
                      f"{m['gemv_Bps'] / 1e9:.2f} GB/s: what a decode step's weight and KV reads achieve here",
        }],
        "host_link": {"name": "NVMe SSD (unknown)", "bandwidth": "7 GB/s", "efficiency": 0.85, "latency": "100 us",
                      "source": "assumption: not measured; a PCIe 4.0 NVMe SSD as in the epyc-7763 profile"},
        "device_link": {"name": "none (single machine)", "bandwidth": "100 GB/s", "efficiency": 0.7,
                        "latency": "2 us", "source": "assumption: not measured; socket-to-socket order of magnitude"},
        "compute": {
            "matrix": {"peak": {k: f"{v / 1e12:.4f} TFLOP/s" for k, v in m["matmul_flops"].items()},
                       "efficiency": 1.0, "source": f"achieved square matmul (torch.mm), {src}"},
            "vector": {"peak": {"fp32": f"{m['vector_flops'] / 1e12:.4f} TFLOP/s"}, "efficiency": 1.0,
                       "source": f"achieved elementwise exp, one op per element, {src}"},
        },
        "cache": {"size": f"{m['cache_bytes'] / 1024**2:.0f} MiB", "source": "sysfs: largest cache level of cpu0"},
        "access": {"granularity": f"{m['line_bytes']} B", "source": "sysfs: coherency_line_size"},
        "overheads": {"kernel_launch": f"{m['op_overhead_s'] * 1e6:.3f} us",
                      "source": f"per-op overhead of a torch op on a one-element tensor, {src}"},
        "calibration": {
            "source": f"{src}; ops: the eager kernels' primitive ops on fp32 data four times ('memory') and a "
                      f"quarter ('cache') of the last-level cache (sparq_ref/calibrate_cpu.py primitive_ops); "
                      f"cache_usable and "
                      f"cache_falloff: the hit model fitted to q K^T times on sets from an eighth of the cache to "
                      f"four times it (cache_curve); "
                      f"cache bandwidth: streaming read of a quarter of the last-level cache; gather "
                      f"efficiency = index_select of random 256-byte rows / streaming read (for reference: K^T "
                      f"matrix-vector products {m['matvec_Bps'] / 1e9:.2f} GB/s, torch.gather of K rows by an "
                      f"expanded index {m['row_gather_Bps'] / 1e9:.2f} GB/s; index_select of random rows: "
                      f"({', '.join(f'{w} B: {b / 1e9:.2f} GB/s' for w, b in m['gather_Bps'].items())})",
            "gather_efficiency": round(gather_eff, 4),
            "cache_bandwidth": f"{m['cache_Bps'] / 1e9:.3f} GB/s",
            "topk_per_element": f"{m['topk_s_per_element'] * 1e9:.4f} ns",
            "cache_usable": f"{m['ops']['cache_usable'] / 1024**2:.2f} MiB",
            "cache_falloff": round(m["ops"]["cache_falloff"], 3),
            "ops": {op: {w: (f"{v / 1e9:.4g} GB/s" if op in ("matvec", "vecmat") else f"{v * 1e9:.4g} ns")
                         for w, v in figs.items()} for op, figs in m["ops"].items() if not op.startswith("cache_")},
        },
    }
