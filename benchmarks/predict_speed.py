"""Prediction speed: rows evaluated per second by a large sweep, the cost of one single-configuration call of the API,
and the cold start of `sparq-sim predict`.

Targets: at least 1,000,000 (config x strategy) rows/s on one core and `sparq-sim predict --gpu a100 --seq 4096`
under 0.5 s of whole-process wall time (issue 2); at most 1 ms per single-configuration call (issue 16). Prints medians of several runs (this machine is shared and noisy),
then the figures for `benchmarks/run` (common.emit).

    python benchmarks/predict_speed.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings

# one core: the numpy kernels here are single-threaded, but make sure no BLAS pool joins in
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

from common import emit, figure  # noqa: E402
from sparq_sim.simulator.predict import predict_columns  # noqa: E402
from sparq_sim.simulator.strategies import STRATEGY_NAMES  # noqa: E402

N_STRATEGIES = len(STRATEGY_NAMES)   # every registered strategy: what a call without --strategies evaluates

# the sweeps run past some models' maximum context on purpose (a speed test, not a prediction anyone reads)
warnings.simplefilter("ignore", UserWarning)

SWEEPS = {
    # name: keyword arguments of predict_columns
    f"3 GPUs x 4 models x 509 seq x 17 batch x {N_STRATEGIES} strategies": dict(
        hardware="a100,h100,h200", model="llama2-7b,llama3-8b,mistral-7b,llama2-13b",
        seq_len="1024:131072:+256", batch="1:128:x2,3,6,12,24,48,96,192,256,384"),
    f"1 GPU x 1 model x 200k seq x {N_STRATEGIES} strategies": dict(hardware="a100", seq_len="1:200000:+1"),
}


def bench_sweep(kwargs, repeats):
    predict_columns(**{**kwargs, "seq_len": 4096, "batch": 1})  # warm: profiles loaded, imports done
    times, rows = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        cols = predict_columns(**kwargs)
        times.append(time.perf_counter() - t)
        rows = len(cols["time_s"])
    return rows, statistics.median(times)


def bench_single_calls(calls):
    """Per-call cost of the API for one configuration (issue 16: <= 1 ms): `predict_columns` and the DataFrame of
    `sparq_sim.predict`, every strategy at one (batch, context), each the median of `calls` calls. As a loop in a
    notebook or an optimiser calls it: the same hardware and model, and at every call a context not asked for before
    in the loop (the batch 1 or 3), so no result worked out from a configuration's numbers can come from an earlier
    call (what is kept between calls is the parse of the arguments: `sweep`, `ranges.parse_axis`)."""
    import sparq_sim

    points = [(1 + 2 * (i % 2), 1024 + 3 * (i % 1000)) for i in range(calls)]   # within Llama 2's 4,096 positions
    out = {}
    for name, f in (("predict_columns", lambda b, s: predict_columns(hardware="a100", seq_len=s, batch=b)),
                    ("sparq_sim.predict (DataFrame)",
                     lambda b, s: sparq_sim.predict(hardware="a100", seq_len=s, batch=b))):
        f(1, 4096)
        times = []
        for b, s in points:
            t = time.perf_counter()
            f(b, s)
            times.append(time.perf_counter() - t)
        out[name] = (statistics.median(times), min(times), max(times))
    return out


def bench_cold_start(repeats):
    exe = os.path.join(os.path.dirname(sys.executable), "sparq-sim")
    cmd = [exe, "predict", "--gpu", "a100", "--seq", "4096"]
    subprocess.run(cmd, check=True, capture_output=True)  # warm the OS file cache
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None, help="runs per figure (default 5; 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (the sweeps keep their sizes)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    figures = []
    print(f"{'benchmark':62s} {'figure':>40s} {'target':>16s}")
    for name, kwargs in SWEEPS.items():
        rows, t = bench_sweep(kwargs, repeats)
        rate = rows / t
        print(f"{'predict sweep: ' + name:58s} {rate / 1e6:9.2f} M rows/s ({rows} rows, {t:.2f} s) "
              f"{'>= 1.00 M rows/s':>16s} {'ok' if rate >= 1e6 else 'MISSED'}")
        figures.append(figure(f"predict sweep, {name}", f"rows/s (median of {repeats})", rate / 1e6, "M rows/s",
                              ">= 1 M rows/s", lambda v: v >= 1.0))
    for name, (med, lo, hi) in bench_single_calls(200 if args.quick else 1000).items():
        print(f"{'one configuration: ' + name:58s} {med * 1e3:9.3f} ms (min {lo * 1e3:.3f}, max {hi * 1e3:.3f}) "
              f"{'<= 1 ms':>16s} {'ok' if med <= 1e-3 else 'MISSED'}")
        figures.append(figure(f"one configuration (a100, llama2-7b, {N_STRATEGIES} strategies; a new batch and "
                              f"context each call), {name}", "per-call time (median)", med * 1e3, "ms", "<= 1 ms",
                              lambda v: v <= 1.0))
    med, lo, hi = bench_cold_start(repeats)
    print(f"{'cold start: sparq-sim predict --gpu a100 --seq 4096':58s} {med:9.3f} s (min {lo:.3f}, max {hi:.3f}) "
          f"{'< 0.5 s':>16s} {'ok' if med < 0.5 else 'MISSED'}")
    figures.append(figure("cold start, `sparq-sim predict --gpu a100 --seq 4096`",
                          f"whole-process wall time (median of {repeats})", med, "s", "< 0.5 s", lambda v: v < 0.5))
    emit(figures)


if __name__ == "__main__":
    main()
