"""A 10-million-row predict sweep streamed to Parquet: wall time, rows/s and the peak memory of the command.

Target (issue 7): peak memory bounded, < 1 GiB, whatever the number of rows (the sweep is evaluated and written in
chunks of ~128k rows, one Parquet row group each). Runs `sparq-sim predict ... -o sweep.parquet` in a subprocess
(2 GPUs x 2 models x 5 batch sizes x 100,000 context lengths x 5 strategies = 10,000,000 rows), reads the child's
peak resident set size (getrusage ru_maxrss), checks the file's row count from its footer, and deletes the file.
Ends with the figures for `benchmarks/run` (common.emit).

    python benchmarks/sweep_parquet.py [--seq-values 100000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

from common import emit, figure  # noqa: E402  (benchmarks/, the folder of this script)

GIB = 1024 ** 3
STRATEGIES = "dense,sparq,h2o,lm-infinite,quest"
GPUS, MODELS, BATCHES = "a100,h100", "llama2-7b,llama3-8b", "1,2,4,8,16"


def run_child(cmd: list[str]) -> tuple[int, float, int]:
    """Run `cmd`; return (exit status, wall seconds, peak RSS in bytes of that child alone). Its output goes through
    a file, so that the child is reaped by os.wait4 (its own rusage) without a pipe to drain."""
    import subprocess

    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace").strip()
    if rc:
        print(f"command failed ({rc}): {text}", file=sys.stderr)
    return rc, wall, usage.ru_maxrss * 1024  # Linux: ru_maxrss in kilobytes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-values", type=int, default=None,
                    help="context lengths 1..N (default 100000: 10M rows; 10000 with --quick: 1M rows)")
    ap.add_argument("--quick", action="store_true", help="a 1M-row sweep")
    ap.add_argument("--keep", metavar="FILE", help="write the Parquet file here and keep it")
    args = ap.parse_args(argv)
    n_seq = args.seq_values or (10_000 if args.quick else 100_000)
    exe = os.path.join(os.path.dirname(sys.executable), "sparq-sim")
    cmd_exe = [exe] if os.path.exists(exe) else [sys.executable, "-m", "sparq_sim.cli"]
    n_rows = 2 * 2 * 5 * n_seq * 5
    name = f"predict sweep to Parquet, {n_rows:,} rows"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "sweep.parquet"
        cmd = cmd_exe + ["predict", "--gpu", GPUS, "--model", MODELS, "--batch", BATCHES, "--seq", f"1:{n_seq}",
                         "--strategies", STRATEGIES, "-o", str(path)]
        print("$ " + " ".join(["sparq-sim"] + cmd[len(cmd_exe):]))
        rc, wall, peak = run_child(cmd)
        rows = size = groups = None
        if rc == 0:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            rows, groups, size = meta.num_rows, meta.num_row_groups, path.stat().st_size
            leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
            print(f"rows {rows:,} (expected {n_rows:,}) in {groups} row groups, {size / 1e6:.0f} MB on disk"
                  + (f"; temporary files left: {leftovers}" if leftovers else ""))
            if rows != n_rows:
                rc = 1
        ok = rc == 0
        rate = rows / wall if ok else None
        print(f"wall {wall:.1f} s, {rate / 1e6 if rate else float('nan'):.2f} M rows/s, "
              f"peak RSS {peak / 2**20:.0f} MiB (target < 1 GiB: {'ok' if ok and peak < GIB else 'MISSED'})")
    emit([
        figure(name, "rows written", rows if ok else None, "rows", f"= {n_rows:,}", None if not ok else rows == n_rows),
        figure(name, "wall time of the command", wall if ok else None, "s"),
        figure(name, "rows per second", rate / 1e6 if rate else None, "M rows/s"),
        figure(name, "peak memory (child ru_maxrss)", peak / GIB if ok else None, "GiB", "< 1 GiB",
               lambda v: v < 1.0),
    ])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
