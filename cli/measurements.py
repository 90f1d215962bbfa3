"""Measurements: `sparq-sim validate`, `calibrate` and `measure`."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from ..simulator.errors import UserError
from . import FMT, HW_FILE, OUT, QUIET, _emit, _given, _hardware_arg, app

# --- measurements: validate and calibrate (issue 5) ------------------------------------------------------------------

_REF_MODEL = "the bundled SmolLM2-135M by default, or a local Hugging Face folder."

def _one_source(measured: Optional[str], dataset: Optional[str]) -> None:
    from ..simulator.measured import dataset_names
    _given(measured, "MEASURED.csv", "a measurement CSV file")
    _given(dataset, "--dataset", "a dataset name (" + ", ".join(dataset_names()) + ")")
    if bool(measured) == bool(dataset):
        raise UserError("give one of MEASURED.csv or --dataset NAME (datasets: " + ", ".join(dataset_names()) + ")")


def _measurements(measured: Optional[str], dataset: Optional[str]):
    from ..simulator.measured import dataset_path, load_measurements
    _one_source(measured, dataset)
    return load_measurements(measured or dataset_path(dataset))


def _measured_hardware(df, gpu: Optional[str], hardware_file: Optional[str]):
    """The profile --hardware-file or --hardware names; without either, the one device of `df` (None: the caller
    reads the file's devices itself)."""
    from ..hardware_profiles import load_hardware
    from ..simulator.measured import resolve_device
    _given(gpu, "--hardware", "a profile name (see `sparq-sim hardware list`)")
    _given(hardware_file, "--hardware-file", "a profile YAML file")
    if hardware_file:
        return load_hardware(_hardware_arg(None, hardware_file)[0])
    if gpu:
        return load_hardware(gpu)
    if df is None:
        return None
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
    from ..simulator.measured import validate as run_validate
    from ..simulator.output import records, resolve_format, to_csv, to_json

    fmt = resolve_format(format, output)
    _given(holdout, "--holdout", "COLUMN:VALUES (batch:1,4) or a fraction (0.5)")
    if all_:
        if measured or dataset or holdout or leave_one_out or gpu or hardware_file:
            raise UserError("--all judges every shipped dataset with its own profiles; give it alone (with -f, -o)")
        return _validate_all(fmt, output)
    if leave_one_out and not dataset:
        raise UserError("--leave-one-out needs --dataset NAME (a shipped dataset, held out of the fit)")
    _one_source(measured, dataset)
    if measured and not holdout:   # a file of any length: read, checked and judged in chunks
        return _validate_stream(measured, gpu, hardware_file, fmt, output)
    df = _measurements(measured, dataset)
    hw = _measured_hardware(df, gpu, hardware_file)
    defaults = None
    if leave_one_out:
        from ..simulator.fidelity import fit_all
        from ..simulator.measured import dataset_names
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
        text = _summary_table(hw, how, summary, bool(holdout))
    _emit(text, output)


def _summary_table(hw, how: str, summary: dict, holdout: bool) -> str:
    lines = [f"validation on {hw.name} ({how}); errors on {summary['overall']['rows']} "
             f"{'held-out ' if holdout else ''}rows; speedup vs {summary['baseline_kernel'] or '-'}",
             f"{'kernel':28s} {'rows':>8s} {'MAPE':>7s} {'worst':>8s} {'geomean':>8s} {'speedup err':>11s}"]
    parts = [("all", summary["overall"])]
    if len(summary["by_level"]) > 1:
        parts += [(f"  level {k}", v) for k, v in summary["by_level"].items()]
    parts += [(f"  {k}", v) for k, v in summary["by_strategy"].items()] + list(summary["by_kernel"].items())
    for name, part in parts:
        se = part.get("speedup_mape")
        lines.append(f"{name:28s} {part['rows']:8d} {part['mape'] * 100:6.1f}% {part['worst_rel_err'] * 100:+7.1f}% "
                     f"{part['geomean_ratio']:8.3f} {'' if se is None else f'{se * 100:10.1f}%':>11s}")
    if summary.get("skipped_rows"):
        lines.append(f"({summary['skipped_rows']} rows not judged: see their skip column)")
    return "\n".join(lines) + "\n"


def _validate_stream(measured: str, gpu, hardware_file, fmt: str, output: Optional[str]):
    """validate MEASURED.csv without --holdout: two passes over the file in chunks (measured.StreamedValidation),
    every row checked before anything is written; per-row output streamed (CSV, JSON) or only the summary kept."""
    from ..simulator.measured import StreamedValidation
    from ..simulator.output import csv_chunks, json_chunks, to_json, write_text

    hw = _measured_hardware(None, gpu, hardware_file)
    sv = StreamedValidation(measured, hw, one_device=True)
    hw = sv.hw
    frames = ({c: d[c].to_numpy() for c in d.columns} for d in sv.rows())
    if fmt == "csv":
        write_text(output, csv_chunks(frames))
    elif fmt == "json":
        def pieces():   # the rows as they come, then the summary they add up to
            yield '{"rows": '
            yield from json_chunks(frames)
            yield ', "summary": ' + to_json(sv.summary) + "}\n"
        write_text(output, pieces())
    else:
        for _ in frames:
            pass
        how = "calibrated profile" if hw.calibration else "uncalibrated: shipped defaults"
        _emit(_summary_table(hw, how, sv.summary, False), output)


def _validate_all(fmt: str, output: Optional[str]):
    from ..simulator.fidelity import validate_all
    from ..simulator.output import to_csv, to_json

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
              output: Optional[str] = typer.Option(None, "--output", "-o", help="The profile YAML to write."),
              quiet: bool = QUIET):
    """Calibrate a device on its measurements (its host speed and memory bandwidth from as few as three rows; each
    kernel with enough rows on its own), measure this machine (--device cpu), or refit the shipped defaults
    (--defaults); write the profile."""
    import datetime

    import yaml

    from ..simulator.fitting import MIN_KERNEL_ROWS
    from ..simulator.measured import calibrate_from_measurements
    from ..simulator.output import write_atomic

    if name is not None and (not name.strip() or not name.isprintable()):
        raise UserError(f"--name {name!r}: give a profile name (printable text, not empty)")
    if defaults:
        if measured or dataset or device or gpu or hardware_file or name:
            raise UserError("--defaults refits on the shipped datasets; give it alone (or with -o FILE)")
        from ..simulator.fidelity import refit_defaults
        from ..simulator.implementations import IMPLEMENTATIONS_FILE
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
        from ..simulator.output import output_target
        from ..sparq_ref.calibrate_cpu import profile_from_microbenchmarks, run_microbenchmarks
        from ..sparq_ref.measure import set_threads
        output_target(output)   # before the micro-benchmarks, not after
        set_threads(threads)
        from ..common.progress import Progress
        from ..sparq_ref.calibrate_cpu import MICROBENCHMARK_STAGES
        with Progress(MICROBENCHMARK_STAGES, "calibrate this cpu", quiet=quiet, unit="micro-benchmarks") as bar:
            figures = run_microbenchmarks(quick=quick, progress=bar)
        data = profile_from_microbenchmarks(figures, name or "this-cpu")
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
    from ..hardware_profiles import load_yaml
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

    from ..hardware_profiles import parse_profile

    try:
        parse_profile(yaml.safe_load(text), "(calibrated profile)")
    except UserError as e:
        raise UserError(f"the calibration gave a profile that does not validate, so {output!r} was not written: "
                        f"{e}") from None


@app.command(epilog="Examples:\n\n  sparq-sim measure --device cpu -o measured.csv\n\n"
             "  sparq-sim measure --device cuda --batch 1,16,64 --seq 1k:16k:x2 --dtype fp16 -o h200.csv")
def measure(device: str = typer.Option("cpu", "--device", help="cpu, cuda (cuda:N) or mps."),
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
            output: str = typer.Option(..., "--output", "-o", help="The CSV to write (atomically, when done)."),
            ray: bool = typer.Option(False, "--ray", help="Time each kernel as a Ray task on a local Ray cluster "
                                     "started here: one GPU per task with --device cuda, else --threads CPUs per "
                                     "task (default: all); finished kernels kept in OUTPUT.cells/."),
            ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join the Ray cluster at ADDR "
                                                      "(implies --ray): each task times the node it runs on."),
            quiet: bool = QUIET):
    """Time the decode-attention kernels of every strategy on this machine; write a CSV in the measurement schema.

    Ctrl-C leaves no CSV (or the whole one)."""
    from ..simulator.interrupt import interruptible

    done = {"points": 0, "of": None, "written": False, "bar": None, "run": None}

    def on_interrupt() -> str:
        if done["written"]:
            return f"{output} was written completely"
        if done["bar"] is not None:
            done["bar"].close()   # clear the progress line
        left = f" ({output} left as it was)" if os.path.exists(output) else ""
        measured = f"; {done['points']} of {done['of']} points were measured" if done["of"] else ""
        run = done["run"]
        if run is not None and run.done:
            measured = (f"; {len(run.done)} of {len(run.specs)} kernels kept in {run.folder.name}: the same command "
                        f"goes on from them")
        return f"no file written{left}{measured}"

    ray_address = _given(ray_address, "--ray-address", "a Ray cluster address (host:port)")
    with interruptible(on_interrupt):
        _measure(device, kernels, batch, seq, heads, kv_heads, head_dim, dtype, r, k, repeats, warmup, threads,
                 model_step, model, output, done, quiet, bool(ray or ray_address), ray_address)


def _measure(device, kernels, batch, seq, heads, kv_heads, head_dim, dtype, r, k, repeats, warmup, threads,
             model_step, model, output, done, quiet, ray=False, ray_address=None):
    from ..simulator.interrupt import checkpoint, deferred
    from ..simulator.measured import SCHEMA
    from ..simulator.output import to_csv, write_atomic
    from ..simulator.ranges import parse_axis, parse_names

    from ..sparq_ref.model import check_device
    if not ray_address:   # a cluster's workers have their own devices
        check_device(device)
    from ..sparq_ref.kernels import KERNELS
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
    from ..simulator.output import output_target
    output_target(output)   # a name that cannot be written is said before minutes of measuring, not after
    if ray and model_step:
        raise UserError("--model-step runs in one process; --ray fans out the kernels")
    if ray:
        from ..sparq_ref.distributed import check_reachable, need_ray
        need_ray()
        if ray_address:
            check_reachable(ray_address)
    from ..sparq_ref.measure import measure_kernels, set_threads
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    if not ray:
        set_threads(threads)

    from ..common.progress import Progress

    def progress(i, n):
        if done["bar"] is None:
            done["bar"] = Progress(n, "measure", quiet=quiet, unit="points").__enter__()
        done["bar"].advance(i - done["points"])
        done.update(points=i, of=n)
        if i == n:
            done["bar"].close()
        if i:
            checkpoint("point")

    if model_step:
        from ..sparq_ref.measure import measure_model_step
        if len(dts) > 1:
            raise UserError("--model-step takes one --dtype")
        from ..sparq_ref.model import say_loading
        say_loading(model, None, quiet)
        rows = measure_model_step(model, parse_axis(batch, "--batch", minimum=1), parse_axis(seq, "--seq", minimum=1),
                                  device=device, dtype=dts[0], repeats=repeats, warmup=warmup, progress=progress)
    elif ray:
        rows = _measure_on_ray(kern, dict(
            batches=parse_axis(batch, "--batch", minimum=1), seqs=parse_axis(seq, "--seq", minimum=1), heads=hs,
            kv_heads=kvs, head_dims=parse_axis(head_dim, "--head-dim", minimum=1), dtypes=dts,
            rs=parse_axis(r, "--r", minimum=1), ks=parse_axis(k, "--k", minimum=1), device=device, repeats=repeats,
            warmup=warmup), threads, output, ray_address, done, quiet)
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
    if done["run"] is not None:
        done["run"].clear()   # the CSV holds them now
    checkpoint("written")
    sys.stderr.write(f"wrote {output}: {len(rows)} rows\n")


def _measure_on_ray(kernels, grid: dict, threads, output, address, done, quiet) -> list[dict]:
    """`measure --ray`: each kernel's points as a Ray task (sparq_ref.distributed.measure_cell) holding a GPU, or
    `threads` CPUs (default: all of this machine's, so that no two measurements share cores); the rows in the
    kernels' order, as one process writes them."""
    from pathlib import Path

    from ..sparq_ref.distributed import CellRun, measure_cell

    gpus = str(grid["device"]).startswith("cuda")
    cpus = 1 if gpus else (threads or os.cpu_count() or 1)
    specs = [dict(grid, kernel=kn, device="cuda" if gpus else grid["device"], threads=None if gpus else cpus)
             for kn in kernels]
    run = CellRun(specs, Path(str(output) + ".cells"), fn=measure_cell)
    done["run"] = run
    run.run_shown(address or None, gpus, "measure on ray", "kernels", quiet, cpus)
    rows = [row for i in range(len(specs)) for row in run.done[i]["rows"]]
    if not rows:
        raise UserError("the grid has no valid point (r must be <= head_dim, k <= seq)")
    return rows
