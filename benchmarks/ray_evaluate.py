"""`sparq-sim evaluate` on this machine's CPUs: one process at batch 1 and batch 8, and `--ray` with one worker per
CPU (issue 13: the goal is >= 1.7x over one process on 2 CPU workers); `sparq-sim record` (SparQ, the same samples)
in one process of one thread and with `--ray`, at batch 1, and in one process at batch 8.

    python benchmarks/ray_evaluate.py [--quick] [--what evaluate,record]

Each run is a fresh `sparq-sim evaluate` process on the bundled SmolLM2-135M (bpc task: every sample decodes the
same number of tokens, so the work is known), strategies dense, sparq and h2o at 1/8; its wall time includes
loading the model (once in one process; once per worker, in parallel, with Ray) and, with Ray, starting the local
cluster. Tokens per second = decoded tokens (samples x strategies x steps) / wall time. The target compares Ray's
workers (one torch thread each) with one process of one thread: the fan-out's own scaling. Also reported: `--ray`
against one process with torch's own thread count, at batch 1 and 8 (with Ray, a cell is one batch).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit, figure  # noqa: E402  (benchmarks/, the folder of this script)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples and a shorter context")
    ap.add_argument("--what", default="evaluate,record", help="evaluate, record or both (comma list)")
    a = ap.parse_args()
    what = {w.strip() for w in a.what.split(",") if w.strip()}
    samples, length = (4, 128) if a.quick else (16, 512)
    steps = 64                                   # bpc: DEFAULT_NEW_TOKENS, the same for every sample (at most)
    strategies = ["dense", "sparq", "h2o"]
    tokens = samples * len(strategies) * steps
    exe = shutil.which("sparq-sim", path=str(Path(sys.executable).parent)) or "sparq-sim"
    try:
        import ray  # noqa: F401
        have_ray = True
    except ImportError:
        have_ray = False
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    def run(*extra, command="evaluate") -> float | None:
        with tempfile.TemporaryDirectory() as tmp:
            if command == "record":
                args = [exe, "record", "--task", "bpc", "--strategy", "sparq", "--compression", "8", "--samples",
                        str(samples), "--length", str(length), "--steps", str(steps - 1), "-o", "t.parquet", "-q",
                        *extra]
            else:
                args = [exe, "evaluate", "--tasks", "bpc", "--samples", str(samples), "--length", str(length),
                        "--compression", "8", "--strategies", ",".join(strategies), "-f", "json", "-q", *extra]
            t = time.perf_counter()
            res = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t
        if res.returncode != 0:
            print(f"failed ({res.returncode}): {' '.join(args)}\n{res.stderr.strip()}", file=sys.stderr)
            return None
        return wall

    if "record" in what:
        record_runs(run, samples, length, steps, have_ray)
    if "evaluate" not in what:
        return
    runs = {"one process, batch 1": run("--batch-size", "1"),
            "one process, batch 1, one thread": run("--batch-size", "1", "--threads", "1"),
            "one process, batch 8": run("--batch-size", "8")}
    if have_ray:
        runs["--ray, a worker per CPU, batch 1"] = run("--batch-size", "1", "--ray")
        runs["--ray, a worker per CPU, batch 8"] = run("--batch-size", "8", "--ray")
    b = f"evaluate, SmolLM2-135M, bpc, {samples} samples x {len(strategies)} strategies x {steps} steps, " \
        f"{length}-token contexts, {os.cpu_count()} CPUs (`ray_evaluate.py`)"
    for name, w in runs.items():
        print(f"{name:36s} " + ("failed" if w is None else f"{w:7.1f} s  {tokens / w:7.1f} tokens/s"))

    def ratio(a, b):
        return runs[a] / runs[b] if runs.get(a) and runs.get(b) else None

    # the fan-out's own scaling: Ray's workers (one torch thread each) against one process with one thread
    scaling = ratio("one process, batch 1, one thread", "--ray, a worker per CPU, batch 1")
    over_default = ratio("one process, batch 1", "--ray, a worker per CPU, batch 1")
    over_batch8 = ratio("one process, batch 8", "--ray, a worker per CPU, batch 8")
    for name, v in (("--ray over one process with one thread, batch 1", scaling),
                    ("--ray over one process with torch's threads, batch 1", over_default),
                    ("--ray over one process with torch's threads, batch 8", over_batch8)):
        if v is not None:
            print(f"{name}: {v:.2f}x")
    if not have_ray:
        print("Ray is not installed (pip install 'sparq-sim[distributed]'): no --ray figure")
    emit([figure(b, f"tokens/s, {name}", tokens / w if w else None, "tokens/s") for name, w in runs.items()] +
         [figure(b, "--ray over one process, one thread per process, batch 1", scaling, "x",
                 ">= 1.7x on 2 CPU workers", lambda v: v >= 1.7),
          figure(b, "--ray over one process with torch's threads, batch 1", over_default, "x"),
          figure(b, "--ray over one process with torch's threads, batch 8", over_batch8, "x")])


def record_runs(run, samples, length, steps, have_ray):
    """record --ray against one process of one thread, batch 1 (a Ray cell is one batch); one process at batch 8."""
    tokens = samples * steps
    runs = {"record, one process, batch 1, one thread": run("--batch-size", "1", "--threads", "1", command="record"),
            "record, one process, batch 8": run("--batch-size", "8", command="record")}
    if have_ray:
        runs["record --ray, a worker per CPU, batch 1"] = run("--batch-size", "1", "--ray", command="record")
    b = f"record sparq, SmolLM2-135M, bpc, {samples} samples x {steps} steps, {length}-token contexts, " \
        f"{os.cpu_count()} CPUs (`ray_evaluate.py`)"
    for name, w in runs.items():
        print(f"{name:42s} " + ("failed" if w is None else f"{w:7.1f} s  {tokens / w:7.1f} tokens/s"))
    one, ray = runs.get("record, one process, batch 1, one thread"), runs.get("record --ray, a worker per CPU, batch 1")
    scaling = one / ray if one and ray else None
    if scaling is not None:
        print(f"record --ray over one process with one thread, batch 1: {scaling:.2f}x")
    emit([figure(b, f"tokens/s, {name}", tokens / w if w else None, "tokens/s") for name, w in runs.items()] +
         [figure(b, "record --ray over one process, one thread per process, batch 1", scaling, "x")])


if __name__ == "__main__":
    main()
