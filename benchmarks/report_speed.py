"""Report speed and size: a report over 3 devices x 12 sequence lengths x every strategy (batch 1, 8, 64).

Targets (issue 6): renders in under 2 s and stays under 10 MB. Prints the median of several runs of
  - the render in a warm process (`sparq_sim.report.write_report`: predict, operator ledger, figures, HTML, write),
  - the whole command `sparq-sim report -o FILE ...` in a fresh process (imports of pandas and plotly included),
the time headless chromium takes to parse the page and draw every chart (when chromium is installed), and the size of
the file; then the figures for `benchmarks/run` (common.emit).

    python benchmarks/report_speed.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

from common import emit, figure  # noqa: E402

SELECTION = dict(hardware="a100,h100,h200", seq_len="1k,2k,3k,4k,6k,8k,12k,16k,24k,32k,64k,128k", batch="1,8,64",
                 strategies="all")
CLI_ARGS = ["--gpu", SELECTION["hardware"], "--seq", SELECTION["seq_len"], "--batch", SELECTION["batch"],
            "--strategies", SELECTION["strategies"]]


# written synchronously after the report's own drawing script: the time from navigation start to all charts drawn
_PROBE = ("<script>var p = document.createElement('pre'); p.id = 'drawn-ms';"
          " p.textContent = performance.now().toFixed(1); document.body.appendChild(p);</script>")


def browser_draw_ms(page: str, tmp: str) -> float | None:
    names = ("chromium", "chromium-browser", "google-chrome")
    browser = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if browser is None:
        return None
    probed = os.path.join(tmp, "probed.html")
    with open(page, encoding="utf-8") as f:
        text = f.read()
    with open(probed, "w", encoding="utf-8") as f:
        f.write(text.replace("</body>", _PROBE + "</body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={os.path.join(tmp, 'chromium-profile')}", "--window-size=1400,1000", "--dump-dom",
           "file://" + probed]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<pre id="drawn-ms">([0-9.]+)</pre>', out)
    return float(m.group(1)) if m else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=None, help="runs per figure (default 5; 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (the report keeps its size)")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 5)

    from sparq_sim import report

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.html")
        rep = report.write_report(path, **SELECTION)  # warm: imports, profiles, plotly.js read once
        warm = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            report.write_report(path, **SELECTION)
            warm.append(time.perf_counter() - t)
        size = os.path.getsize(path)
        draws = [browser_draw_ms(path, tmp) for _ in range(min(args.repeats, 3))]

        exe = os.path.join(os.path.dirname(sys.executable), "sparq-sim")
        cmd = [exe, "report", "-o", os.path.join(tmp, "cli.html")] + CLI_ARGS
        subprocess.run(cmd, check=True, capture_output=True)  # warm the OS file cache
        cold = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            cold.append(time.perf_counter() - t)

    n_dev = len(rep.request.hardware)
    n_seq = len(rep.request.seqs)
    n_strat = len(rep.request.strategies)
    print(f"report: {n_dev} devices x {n_seq} sequence lengths x {n_strat} strategies x "
          f"{len(rep.request.batches)} batch sizes, {len(rep.charts)} charts "
          f"(medians of {args.repeats} runs)")
    print(f"{'benchmark':52s} {'figure':>12s} {'target':>10s}")
    print(f"{'render in a warm process (write_report)':52s} {statistics.median(warm):10.3f} s {'< 2 s':>10s}")
    print(f"{'whole command, fresh process (sparq-sim report)':52s} {statistics.median(cold):10.3f} s {'< 2 s':>10s}")
    if all(d is not None for d in draws):
        print(f"{'page parsed and every chart drawn (headless chromium)':52s} "
              f"{statistics.median(draws) / 1e3:10.3f} s {'< 2 s':>10s}")
    else:
        print(f"{'page parsed and every chart drawn (headless chromium)':52s} {'(no chromium)':>12s}")
    print(f"{'file size':52s} {size / 1e6:9.2f} MB {'< 10 MB':>10s}")
    print("command: sparq-sim report -o report.html " + " ".join(CLI_ARGS))

    what = f"report, {n_dev} devices x {n_seq} seq x {n_strat} strategies x {len(rep.request.batches)} batch sizes"
    med = f"median of {args.repeats}"
    drawn = statistics.median(draws) / 1e3 if all(d is not None for d in draws) else None
    emit([
        figure(what, f"render in a warm process ({med})", statistics.median(warm), "s", "< 2 s", lambda v: v < 2),
        figure(what, f"whole command `sparq-sim report`, fresh process ({med})", statistics.median(cold), "s",
               "< 2 s", lambda v: v < 2),
        figure(what, "drawn in headless chromium" + (f" (median of {len(draws)})" if drawn is not None
                                                       else " (no chromium here)"),
               drawn, "s", "< 2 s", lambda v: v < 2),
        figure(what, "file size", size / 1e6, "MB", "< 10 MB", lambda v: v < 10),
    ])


if __name__ == "__main__":
    main()
