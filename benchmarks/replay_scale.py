"""Replay of a 100-million-event trace in bounded memory: events, wall time, events/s and peak memory of the command.

Target (issue 7): peak memory < 2 GiB, whatever the trace's size (replay reads the key columns first, then walks the
file in batches of ~4M fetched-index events holding whole (step, layer) groups). Synthesises a SparQ trace with
Llama 3 8B shapes (32 layers x 8 KV heads, S = 32k, k = 2048 positions and r = 16 components per row) step by step
with TraceWriter, in row groups of 1024 rows (~2M events), never holding more than one step in memory; then runs
`sparq-sim replay TRACE --gpu h100` in a subprocess and reads the child's peak resident set size (getrusage
ru_maxrss). The trace lives in a temporary folder and is deleted. Ends with the figures for `benchmarks/run`
(common.emit).

    python benchmarks/replay_scale.py [--events 100e6] [--row-group-rows 1024] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

from common import emit, figure  # noqa: E402  (benchmarks/, the folder of this script)

GIB = 1024 ** 3


def synthetic_sparq(path, events, model="llama3-8b", S=32768, compression=8, row_group_rows=1024, seed=0):
    """A SparQ trace of at least `events` fetched-index events, written one decode step at a time (rows of every
    layer and KV head; positions one per stride of S/k, random within the stride; components likewise)."""
    import pyarrow as pa

    from sparq_sim.simulator.models import load_model_spec
    from sparq_sim.traces import TraceWriter

    m = load_model_spec(model)
    d = m.head_dim
    k, r = S // (2 * compression), d // compression
    per_step = m.n_layers * m.n_kv_heads
    steps = math.ceil(events / (per_step * (k + r)))
    rng = np.random.default_rng(seed)
    stride, cstride = S // k, d // r
    layer = np.repeat(np.arange(m.n_layers), m.n_kv_heads).astype(np.int32)
    kv_head = np.tile(np.arange(m.n_kv_heads), m.n_layers).astype(np.int32)

    def lists(a):
        off = np.arange(0, a.size + 1, a.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(off), pa.array(a.ravel().astype(np.int32)))

    meta = {"model": m.to_dict(), "strategy": "sparq", "params": {"strategy": "sparq", "compression": compression},
            "dtypes": {"kv": "bf16", "compute": "bf16"}, "task": {"name": "synthetic"}, "packages": {}}
    with TraceWriter(path, meta, row_group_rows=row_group_rows) as w:
        for s in range(steps):
            pos = (np.arange(k) * stride)[None, :] + rng.integers(0, stride, size=(per_step, k))
            comp = (np.arange(r) * cstride)[None, :] + rng.integers(0, cstride, size=(per_step, r))
            w.write({"step": np.full(per_step, s, np.int32), "layer": layer, "kv_head": kv_head,
                     "batch": np.zeros(per_step, np.int32), "seq_len": np.full(per_step, S + s, np.int32),
                     "k": np.full(per_step, k, np.int32), "r": np.full(per_step, r, np.int32),
                     "positions": lists(pos), "components": lists(comp),
                     "alpha": np.full(per_step, np.nan, np.float32), "oracle_mass": np.ones(per_step, np.float32),
                     "out_rel_err": np.zeros(per_step, np.float32)})
    return steps * per_step * (k + r), steps * per_step


def run_measured(cmd: list[str]) -> tuple[int, float, int, str]:
    """Run `cmd`; return (exit status, wall seconds, peak RSS in bytes of that child alone, its standard output).
    Output goes through files, so that the child is reaped by os.wait4 (its own rusage) without a pipe to drain."""
    import subprocess

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, etext = out.read().decode(errors="replace"), err.read().decode(errors="replace").strip()
    if rc:
        print(f"command failed ({rc}): {etext}", file=sys.stderr)
    return rc, wall, usage.ru_maxrss * 1024, text  # Linux: ru_maxrss in kilobytes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=float, default=None, help="events in the trace (default 100e6; 10e6 with "
                    "--quick)")
    ap.add_argument("--row-group-rows", type=int, default=1024, help="trace rows per Parquet row group")
    ap.add_argument("--quick", action="store_true", help="a 10M-event trace")
    args = ap.parse_args(argv)
    target_events = int(args.events or (10e6 if args.quick else 100e6))
    exe = os.path.join(os.path.dirname(sys.executable), "sparq-sim")
    cmd_exe = [exe] if os.path.exists(exe) else [sys.executable, "-m", "sparq_sim.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.parquet"
        t = time.perf_counter()
        events, rows = synthetic_sparq(path, target_events, row_group_rows=args.row_group_rows)
        import pyarrow.parquet as pq

        groups = pq.ParquetFile(path).metadata.num_row_groups
        print(f"synthetic SparQ trace: {events:,} fetched-index events in {rows:,} rows, {groups} row groups, "
              f"{path.stat().st_size / 1e6:.0f} MB, written in {time.perf_counter() - t:.1f} s")
        cmd = cmd_exe + ["replay", str(path), "--gpu", "h100", "-f", "json"]
        print("$ sparq-sim " + " ".join(cmd[len(cmd_exe):]))
        rc, wall, peak, out = run_measured(cmd)
    name = f"replay of a {events / 1e6:.0f}M-event trace from Parquet"
    ok = rc == 0
    replayed = None
    if ok:
        row = json.loads(out)["rows"][0]
        replayed = int(row["events"])
        print(f"replayed {replayed:,} events ({row['rows']:,} rows after the GQA union, {row['steps']} steps): "
              f"bytes touched {row['bytes_touched'] / 1e9:.2f} GB, {row['ratio']:.4f} x the formula")
        ok = replayed == events
    rate = replayed / wall if ok else None
    print(f"wall {wall:.1f} s, {rate / 1e6 if rate else float('nan'):.1f} M events/s, peak RSS {peak / 2**20:.0f} MiB "
          f"(target < 2 GiB: {'ok' if ok and peak < 2 * GIB else 'MISSED'})")
    emit([
        figure(name, "events replayed", replayed, "events", f"= {events:,}", None if replayed is None else ok),
        figure(name, "wall time of the command", wall if ok else None, "s"),
        figure(name, "events per second", rate / 1e6 if rate else None, "M events/s"),
        figure(name, "peak memory (child ru_maxrss)", peak / GIB if ok else None, "GiB", "< 2 GiB",
               lambda v: v < 2.0),
    ])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
