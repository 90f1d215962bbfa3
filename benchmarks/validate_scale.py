"""`sparq-sim validate` on a million measured rows: wall time and peak memory of the command.

Target (issue 15): 1M rows validated in under 30 s, in bounded memory. The measurement file is the shipped A10G
dataset (1,076 kernel rows over 11 kernels, dense and SparQ, K stored once and twice) repeated to --rows rows and
written to a temporary CSV; `sparq-sim validate FILE --hardware a10g -o OUT` runs in a subprocess and the child's
peak resident set size is read with getrusage (ru_maxrss). Ends with the figures for `benchmarks/run`.

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
    big = pd.concat([src] * (rows // len(src) + 1), ignore_index=True).iloc[:rows]
    exe = shutil.which("sparq-sim", path=str(Path(sys.executable).parent)) or "sparq-sim"
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "measured.csv"
        big.to_csv(f, index=False)
        out = Path(tmp) / "out.txt"
        t0 = time.perf_counter()
        res = subprocess.run([exe, "validate", str(f), "--hardware", "a10g", "-o", str(out)], capture_output=True,
                             text=True, env=dict(os.environ))
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            sys.exit(f"sparq-sim validate failed ({res.returncode}): {res.stderr.strip()}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB
        print(out.read_text().splitlines()[2])
    b = f"validate of {rows:,} measured kernel rows (`validate_scale.py`)"
    print(f"{rows} rows: {wall:.1f} s, peak {peak:.2f} GiB")
    emit([figure(b, "wall time of the command", wall, "s", "< 30 s", lambda v: v < 30),
          figure(b, "rows per second", rows / wall / 1e3, "k rows/s"),
          figure(b, "peak memory (child ru_maxrss)", peak, "GiB", "< 2 GiB", lambda v: v < 2)])


if __name__ == "__main__":
    main()
