"""Issue 5's CPU target, end to end on this machine: calibrate, measure, validate.

    python benchmarks/cpu_validation.py            # the default measure grid (68 kernel rows) and model steps
    python benchmarks/cpu_validation.py --quick    # a smaller grid, no model steps

Runs the CLI as a user would, with one torch thread (multi-threaded torch ops on a small VM pay an OpenMP wake-up
per op that no kernel model should absorb):
    sparq-sim calibrate --device cpu --threads 1 -o this-cpu.yaml      micro-benchmarks -> profile of this machine
    sparq-sim measure --device cpu --threads 1 -o measured.csv         every strategy's kernel over the grid
    sparq-sim validate measured.csv --hardware-file this-cpu.yaml      predicted vs measured
and prints the MAPE per strategy; the targets (at most 20 % on the dense and SparQ rows) come from issue 5.
With model steps it also times whole SmolLM2 decode steps (`measure --model-step`) and validates `predict`'s
decode-step roofline against them (reported, no target). Files go to a temporary folder, or --keep DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, figure  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def cli(*args) -> str:
    exe = shutil.which("sparq-sim", path=str(Path(sys.executable).parent)) or "sparq-sim"
    res = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=ENV)
    if res.returncode != 0:
        sys.exit(f"sparq-sim {' '.join(map(str, args))} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller grid and no model steps")
    ap.add_argument("--keep", metavar="DIR", help="keep the profile, measurements and validation here")
    args = ap.parse_args()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sparq-cpu-validation-"))
    out.mkdir(parents=True, exist_ok=True)
    prof, meas, steps = out / "this-cpu.yaml", out / "measured.csv", out / "model-steps.csv"
    grid = ["--seq", "1024,2048", "--batch", "1,2", "--r", "16", "--k", "64"] if args.quick else []
    try:
        t0 = time.perf_counter()
        cli("calibrate", "--device", "cpu", "--threads", "1", *(["--quick"] if args.quick else []), "-o", prof)
        t1 = time.perf_counter()
        cli("measure", "--device", "cpu", "--threads", "1", *grid, "-o", meas)
        t2 = time.perf_counter()
        doc = json.loads(cli("validate", meas, "--hardware-file", prof, "--format", "json"))
        print(f"calibrate {t1 - t0:.0f} s, measure {t2 - t1:.0f} s ({doc['summary']['overall']['rows']} rows)")
        print(cli("validate", meas, "--hardware-file", prof))
        figs = []
        by = doc["summary"]["by_strategy"]
        bench = "CPU validation, " + ("quick grid" if args.quick else "default measure grid") + ", 1 thread"
        for strat, s in by.items():
            target = "<= 20 %" if strat in ("dense", "sparq") else ""
            ok = (lambda v: v <= 20.0) if target else None
            figs.append(figure(bench, f"MAPE {strat} ({s['rows']} rows)", 100 * s["mape"], "%", target, ok))
        figs.append(figure(bench, f"MAPE all ({doc['summary']['overall']['rows']} rows)",
                           100 * doc["summary"]["mape"], "%"))
        if not args.quick:
            cli("measure", "--device", "cpu", "--threads", "1", "--model-step", "--batch", "1,4", "--seq", "256,1024",
                "-o", steps)
            sd = json.loads(cli("validate", steps, "--hardware-file", prof, "--format", "json"))
            print(cli("validate", steps, "--hardware-file", prof))
            figs.append(figure("CPU validation, SmolLM2 decode steps, 1 thread",
                               f"MAPE ({sd['summary']['overall']['rows']} rows)", 100 * sd["summary"]["mape"], "%"))
            figs.append(figure("CPU validation, SmolLM2 decode steps, 1 thread", "predicted / measured (geomean)",
                               sd["summary"]["overall"]["geomean_ratio"], "x"))
        emit(figs)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
