"""Replay speed: fetched-index events per second (positions + components of the trace) on one core.

Target (issue 4): at least 10 million events/s. Builds a synthetic SparQ trace of tens of millions of events (Llama 3
8B shapes: 32 layers x 8 KV heads, S = 32k, k = S/16 = 2048 random positions and r = 16 components per row), then
times `sparq_sim.replay` on the trace held in memory (K twice and K once, at the profile's 32-byte granularity, with
and without 16-position pages) and, once, reading the file as well. Prints the median of several runs (this machine
is shared and noisy). The cache model (--cache) is timed separately on a smaller trace: it walks the lines kernel by
kernel and is not held to the target. Ends with the figures for `benchmarks/run` (common.emit).

    python benchmarks/replay_speed.py [--repeats 5] [--steps 60] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

import sparq_sim  # noqa: E402
from common import emit, figure  # noqa: E402
from sparq_sim.simulator.models import load_model_spec  # noqa: E402
from sparq_sim.traces import read_trace, write_trace  # noqa: E402


def synthetic_sparq(path, model="llama3-8b", S=32768, steps=60, compression=8, seed=0):
    """Rows of every (step, layer, KV head); positions one per stride of S/k (distinct, sorted, random within the
    stride), components likewise; built as flat Arrow arrays (no Python loop per row)."""
    import pyarrow as pa

    m = load_model_spec(model)
    d = m.head_dim
    k, r = S // (2 * compression), d // compression
    rng = np.random.default_rng(seed)
    n = steps * m.n_layers * m.n_kv_heads
    step = np.repeat(np.arange(steps), m.n_layers * m.n_kv_heads)
    seq = (S + step).astype(np.int32)
    stride = S // k
    pos = (np.arange(k) * stride)[None, :] + rng.integers(0, stride, size=(n, k))
    cstride = d // r
    comp = (np.arange(r) * cstride)[None, :] + rng.integers(0, cstride, size=(n, r))

    def lists(a):
        off = np.arange(0, a.size + 1, a.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(off), pa.array(a.ravel().astype(np.int32)))

    cols = {
        "step": step, "layer": np.tile(np.repeat(np.arange(m.n_layers), m.n_kv_heads), steps),
        "kv_head": np.tile(np.arange(m.n_kv_heads), steps * m.n_layers), "batch": np.zeros(n, np.int32),
        "seq_len": seq, "k": np.full(n, k), "r": np.full(n, r), "positions": lists(pos), "components": lists(comp),
        "alpha": np.full(n, np.nan, np.float32), "oracle_mass": np.ones(n, np.float32),
        "out_rel_err": np.zeros(n, np.float32),
    }
    meta = {"model": m.to_dict(), "strategy": "sparq", "params": {"strategy": "sparq", "compression": compression},
            "dtypes": {"kv": "bf16", "compute": "bf16"}, "task": {"name": "synthetic"}, "packages": {}}
    write_trace(path, cols, meta)
    return n * (k + r)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None, help="runs per figure (default 5; 2 with --quick)")
    ap.add_argument("--steps", type=int, default=None,
                    help="decode steps of the synthetic trace (default 60: ~32M events; 10 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a 6x smaller trace and fewer repeats")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.steps = args.steps or (10 if args.quick else 60)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sparq.parquet"
        t = time.perf_counter()
        events = synthetic_sparq(path, steps=args.steps)
        print(f"synthetic SparQ trace: {events / 1e6:.1f} M fetched-index events, "
              f"{path.stat().st_size / 1e6:.0f} MB, written in {time.perf_counter() - t:.1f} s")
        trace = read_trace(path)  # warm: pyarrow's kernels, the file in the page cache
        read_s, _ = median_time(lambda: read_trace(path), max(1, args.repeats // 2))
        print(f"read_trace (Parquet + validation): median {read_s:.2f} s, {events / read_s / 1e6:.1f} M events/s")
        sparq_sim.replay(trace, "h100")  # warm: imports, profile
        cases = [("K twice, 32 B", dict(k_layout="twice")), ("K once, 32 B", dict(k_layout="once")),
                 ("K twice, pages of 16", dict(k_layout="twice", page_size=16)),
                 ("K once, 64 B, pages of 16", dict(k_layout="once", granularity=64, page_size=16)),
                 ("K once, 96 B (rows not sector-aligned)", dict(k_layout="once", granularity=96))]
        rates = []
        for name, kw in cases:
            med, best = median_time(lambda: sparq_sim.replay(trace, "h100", **kw), args.repeats)
            rates.append(events / med)
            if name == "K twice, 32 B":
                figures.append(figure(f"replay in memory, {name} ({events / 1e6:.0f} M events)",
                                      f"events/s (median of {args.repeats})", events / med / 1e6, "M events/s",
                                      ">= 10 M events/s", lambda v: v >= 10))
            print(f"replay in memory, {name:40s} median {med:6.3f} s (best {best:.3f})  "
                  f"{events / med / 1e6:7.1f} M events/s")
        med, _ = median_time(lambda: sparq_sim.replay(path, "h100"), max(1, args.repeats // 2))
        print(f"read + replay from the file, K twice, 32 B            median {med:6.3f} s          "
              f"{events / med / 1e6:7.1f} M events/s")
        print(f"slowest in-memory case: {min(rates) / 1e6:.1f} M events/s (target >= 10)")
        figures.append(figure(f"replay in memory, slowest of {len(cases)} layouts/granularities/pages",
                              f"events/s (median of {args.repeats})", min(rates) / 1e6, "M events/s",
                              ">= 10 M events/s", lambda v: v >= 10))
        figures.append(figure("read + replay from the Parquet file, K twice, 32 B", "events/s", events / med / 1e6,
                              "M events/s", ""))

        small = Path(tmp) / "small.parquet"
        ev_small = synthetic_sparq(small, S=4096, steps=8)
        tr = read_trace(small)
        med, _ = median_time(lambda: sparq_sim.replay(tr, "h100", k_layout="once", cache=True), 1)
        print(f"--cache (LRU, strategy and dense baseline), K once, S = 4096, 8 steps: {med:.2f} s for "
              f"{ev_small / 1e6:.2f} M events")
        figures.append(figure(f"replay --cache (LRU), K once, S = 4096, 8 steps ({ev_small / 1e6:.2f} M events)",
                              "wall time", med, "s", ""))
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
