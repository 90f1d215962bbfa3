"""`sparq-sim validate` on a million measured rows: wall time and peak memory of the command.

Target (issue 15): 1M rows validated in under 30 s, in bounded memory. The measurement file is the shipped A10G
dataset (1,076 kernel rows over 11 kernels, dense and SparQ, K stored once and twice) repeated to --rows rows (and to
a fifth of that) and written to a temporary CSV; `sparq-sim validate FILE --hardware a10g -o OUT` runs in a fresh
child each time and its peak resident set size is read with getrusage (ru_maxrss): bounded memory means the two peaks
are about equal. Ends with the figures for `benchmarks/run`.

    python benchmarks/validate_scale.py [--rows 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit, figure  # noqa: E402  (benchmarks/, the folder of this script)

GIB = 1024 ** 3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=float, default=1e6)
    ap.add_argument("--quick", action="store_true", help="100k rows")
    a = ap.parse_args()
    rows = int(1e5 if a.quick else a.rows)
    import pandas as pd

    from sparq_sim.simulator.measured import dataset_path

    src = pd.read_csv(dataset_path("sparq-paper-a10g"))
    exe = shutil.which("sparq-sim", path=str(Path(sys.executable).parent)) or "sparq-sim"

    def run(n: int):
        """Wall time and peak memory of `validate` on n rows (each in a fresh child: ru_maxrss of that child)."""
        big = pd.concat([src] * (n // len(src) + 1), ignore_index=True).iloc[:n]
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "measured.csv"
            big.to_csv(f, index=False)
            out = Path(tmp) / "out.txt"
            code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
                    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                    "w = time.perf_counter() - t; "
                    "print(r.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                    "print(r.stderr.strip(), file=sys.stderr)")
            res = subprocess.run([sys.executable, "-c", code, exe, "validate", str(f), "--hardware", "a10g", "-o",
                                  str(out)], capture_output=True, text=True, env=dict(os.environ))
            rc, wall, kib = res.stdout.split()
            if rc != "0":
                sys.exit(f"sparq-sim validate failed ({rc}): {res.stderr.strip()}")
            print(out.read_text().splitlines()[2])
        return float(wall), int(kib) * 1024 / GIB

    small_wall, small_peak = run(rows // 5)
    wall, peak = run(rows)
    b = f"validate of {rows:,} measured kernel rows (`validate_scale.py`)"
    print(f"{rows // 5} rows: {small_wall:.1f} s, peak {small_peak:.2f} GiB; {rows} rows: {wall:.1f} s, "
          f"peak {peak:.2f} GiB")
    emit([figure(b, "wall time of the command", wall, "s", "< 30 s", lambda v: v < 30),
          figure(b, "rows per second", rows / wall / 1e3, "k rows/s"),
          figure(b, "peak memory (child ru_maxrss)", peak, "GiB", "< 2 GiB", lambda v: v < 2),
          figure(b, f"peak memory, {rows:,} rows over {rows // 5:,} (linear growth: about 3x)",
                 peak / small_peak, "x", "< 1.5x", lambda v: v < 1.5)])

if __name__ == "__main__":
    main()
