"""`sparq-sim report` (interactive plotly HTML; plotly is imported only here, through report/) and `sparq-sim
replay` (the bytes a recorded trace really touches)."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from ..simulator.errors import UserError
from . import (COMP, DEVICES, DTYPE, FMT, GPU, HW_FILE, K, KLAYOUT, KV_DTYPE, KVLOC, LW, OUT, PAGE, R, STRATS,
               WLOC, _command_line, _emit, _given, _hardware_arg, app)

# --- report (issue 6): interactive plotly HTML; plotly is imported only here, through report.py -----------------------

REPORT_MODEL = "llama3.1-8b"   # a model whose context reaches the report's default 128k (Llama 2's ends at 4k)


@app.command(epilog="Examples:\n\n  sparq-sim report -o report.html\n\n"
             "  sparq-sim report --gpu a100,h100,h200 --model llama3.1-70b --seq 1k:128k:x2 --batch 1,8,64 -o r.html\n\n"
             "  sparq-sim report --gpu a10g --measured validation.csv --evaluation eval.json --trace t1.parquet "
             "--trace t2.parquet -o r.html")
def report(ctx: typer.Context, gpu: Optional[str] = typer.Option("a100,h100,h200", "--gpu", "--hardware", help="Device profile(s), "
                                             "comma list (see `sparq-sim hardware list`); one roofline each."),
           hardware_file: Optional[str] = HW_FILE,
           model: str = typer.Option(REPORT_MODEL, "--model", "-m", help="Model(s), comma list: built-in name (see "
                                     "`sparq-sim models list`), config.json or a folder holding one. The default "
                                     "reaches the default contexts (128k)."),
           seq: str = typer.Option("1k:128k:x2", "--seq", "-s", help="Context lengths: a list or range "
                                   "(4096, 1k,4k, 1024:131072:x2)."),
           batch: str = typer.Option("1,8,64", "--batch", "-b", help="Batch sizes: a list or range (1,8,64)."),
           strategies: str = STRATS, compression: str = COMP, dtype: str = DTYPE, kv_dtype: Optional[str] = KV_DTYPE,
           devices: str = DEVICES, r: Optional[str] = R, k: Optional[str] = K, local_window: Optional[str] = LW,
           page_size: Optional[str] = PAGE, k_layout: str = KLAYOUT, kv_location: str = KVLOC,
           weights_location: str = WLOC,
           trace: Optional[list[str]] = typer.Option(None, "--trace", metavar="FILE", help="Recorded trace (Parquet, from `sparq-sim "
                                                     "record`): alpha and out_rel_err per layer. Repeat the option "
                                                     "or give a comma list for several."),
           evaluation: Optional[str] = typer.Option(None, "--evaluation", metavar="FILE", help="JSON of `sparq-sim evaluate "
                                                    "--format json`: accuracy against transferred fraction."),
           measured: Optional[str] = typer.Option(None, "--measured", metavar="FILE", help="CSV in the measurement schema (hardware, "
                                                  "kernel, strategy, ..., time_s): predicted against measured time."),
           output: str = typer.Option("report.html", "--output", "-o", metavar="FILE", help="The HTML file to write (atomically)."),
           gen_len: Optional[str] = typer.Option(None, "--gen-len", help="Whole generations of this many tokens: "
                                                 "the speedup charts offer the end-to-end speedup (prefill + every "
                                                 "decode step) too.")):
    """Write an interactive, self-contained HTML report: rooflines, bytes by kind, speedups, capacity, and accuracy,
    traces and measurements when given. Works offline (plotly.js is inlined)."""
    from ..report import write_report

    gpu_given = getattr(ctx.get_parameter_source("gpu"), "name", "") == "COMMANDLINE"
    hw = _hardware_arg(gpu if (gpu_given or not hardware_file) else None, hardware_file)  # a file alone: just it
    command = _command_line(ctx, "report")
    rep = write_report(output, hardware=hw, model=model, seq_len=seq, batch=batch, strategies=strategies,
                       compression=compression, dtype=dtype, kv_dtype=kv_dtype, devices=devices, r=r, k=k,
                       local_window=local_window, page_size=page_size, k_layout=k_layout, kv_location=kv_location,
                       weights_location=weights_location, trace=trace, evaluation=evaluation, measured=measured,
                       command=command, gen_len=gen_len)
    size = os.path.getsize(output)
    sys.stderr.write(f"wrote {output} ({size / 1e6:.1f} MB, {len(rep.charts)} charts)\n")


# --- replay (issue 4): the bytes a recorded trace really touches, by layout, granularity, pages and cache -------------

@app.command(epilog="Examples:\n\n  sparq-sim replay trace.parquet --gpu h100\n\n"
             "  sparq-sim replay trace.parquet --gpu h100 --k-layout once --kv-dtype bf16\n\n"
             "  sparq-sim replay t1.parquet t2.parquet --gpu a100,h100,mi300x --page-size 16 --cache -f json\n\n"
             "  sparq-sim replay trace.parquet --gpu h100 --granularity element --level step -f csv -o steps.csv")
def replay(traces: list[str] = typer.Argument(..., metavar="TRACE.parquet...", help="Trace file(s) written by "
                                              "`sparq-sim record`."),
           gpu: Optional[str] = GPU, hardware_file: Optional[str] = HW_FILE,
           k_layout: str = typer.Option("twice", "--k-layout", help="SparQ K storage: twice (extra S-contiguous copy "
                                        "for Step 1) or once (Step 1 gathers r components of every d-contiguous row)."),
           granularity: Optional[str] = typer.Option(None, "--granularity", help="Bytes per memory transaction "
                                                     "(32, 64 B, ...) or 'element'; default: the profile's "
                                                     "(32 B sectors on NVIDIA)."),
           page_size: Optional[int] = typer.Option(None, "--page-size", help="Paged KV cache (vLLM-style): N "
                                                   "positions per page; a page is moved whole when any of its "
                                                   "positions is needed."),
           cache: bool = typer.Option(False, "--cache", help="Model the profile's on-chip cache as an LRU over the "
                                      "fetched lines across steps and layers; report the part served on chip."),
           level: str = typer.Option("run", "--level", help="run (one row per trace and device), step, layer or "
                                     "row (one per trace row)."),
           kv_dtype: Optional[str] = typer.Option(None, "--kv-dtype", help="KV element type (default: the trace's; "
                                                  "e.g. bf16 for a trace recorded in fp32)."),
           dtype: Optional[str] = typer.Option(None, "--dtype", help="Weights/activations type for the step time "
                                               "(default: the trace's)."),
           model: Optional[str] = typer.Option(None, "--model", "-m", help="Model shapes (default: the trace's "
                                               "metadata)."),
           kv_location: str = KVLOC, format: Optional[str] = FMT, output: Optional[str] = OUT):
    """Replay recorded traces on device profiles: bytes actually touched (by layout, access granularity, pages and
    cache) against the analytical formula, predicted attention and step time, and speedup over dense on the same
    trace."""
    from ..simulator.output import records, render_table, resolve_format, to_csv, to_json
    from ..simulator.replay import K_LAYOUTS, LEVELS, parse_granularity
    from ..simulator.replay import replay as run_replay

    fmt = resolve_format(format, output)
    if k_layout not in K_LAYOUTS:
        raise UserError(f"--k-layout must be twice or once, got {k_layout!r}")
    if level not in LEVELS:
        raise UserError(f"--level must be one of {', '.join(LEVELS)}, got {level!r}")
    if page_size is not None and not 1 <= page_size <= 2**31 - 1:
        raise UserError(f"--page-size must be a whole number of positions from 1 to {2**31 - 1}, got {page_size}")
    for flag, value in (("--kv-dtype", kv_dtype), ("--dtype", dtype), ("--model", model),
                        ("--granularity", granularity)):
        _given(value, flag)
    df = run_replay(traces, hardware=_hardware_arg(gpu, hardware_file), k_layout=k_layout,
                    granularity=parse_granularity(granularity), page_size=page_size, cache=cache, level=level,
                    model=model, dtype=dtype, kv_dtype=kv_dtype, kv_location=kv_location)
    cols = {c: df[c].to_numpy() for c in df.columns}
    for c, v in cols.items():
        if v.dtype == object:
            cols[c] = v.astype(str)
    if fmt == "json":
        text = to_json({"level": level, "rows": records(cols)})
    elif fmt == "csv":
        text = to_csv(cols)
    else:
        mb = lambda v: f"{v / 1e6:.3f}"  # noqa: E731
        ms = lambda v: f"{v * 1e3:.4f}"  # noqa: E731
        key = {"run": [("trace", "trace", lambda v: os.path.basename(v))],
               "step": [("step", "step", str)], "layer": [("layer", "layer", str)],
               "row": [("step", "step", str), ("layer", "layer", str), ("batch", "batch", str),
                       ("kv_head", "kv_head", str)]}[level]
        spec = key + [("hardware", "hardware", str), ("strategy", "strategy", str), ("K", "k_layout", str),
                      ("gran B", "granularity_bytes", lambda v: f"{v:g}"), ("touched MB", "bytes_touched", mb),
                      ("formula MB", "bytes_formula", mb), ("ratio", "ratio", lambda v: f"{v:.4f}"),
                      ("on chip MB", "bytes_on_chip", mb), ("dense MB", "bytes_dense", mb),
                      ("of dense", "transfer_ratio", lambda v: f"{v:.4f}")]
        if level != "row":
            spec += [("attn ms", "attention_time_s", ms), ("time ms", "time_s", ms),
                     ("speedup", "speedup_vs_dense", lambda v: f"{v:.2f}x"),
                     ("attn speedup", "attention_speedup_vs_dense", lambda v: f"{v:.2f}x")]
        if not cache:
            spec = [s for s in spec if s[1] != "bytes_on_chip"]
        title = (f"replay ({level}): bytes touched vs formula; times are totals over the "
                 f"{'run' if level == 'run' else level + ' rows'} (realistic roofline)")
        text = render_table(cols, spec, title=title, drop_constant=("hardware", "strategy", "k_layout",
                                                                     "granularity_bytes", "trace"))
    _emit(text, output)
