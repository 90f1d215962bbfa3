"""`sparq-sim evaluate` and `sparq-sim record`: the functions behind the commands.

Top-level imports are light (no torch, no transformers): the CLI imports this module for every command, and torch is
loaded inside the function bodies only when one of these two runs. Every function returns the exit status; bad input
raises `UserError` (one line, exit status 2, shown by the CLI).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..simulator.errors import UserError
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
        raise UserError(f"--length {length} plus {new_tokens} new tokens does not fit {lm.name}'s {limit} positions; "
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


def _progress(total: int, description: str, enabled: bool):
    """A rich progress bar on stderr (a no-op context when disabled or stderr is not a terminal)."""
    from contextlib import nullcontext

    if not enabled or not sys.stderr.isatty():
        return nullcontext(lambda n=1: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class _Bar:
        def __enter__(self):
            self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                              console=Console(stderr=True), transient=True)
            self.p.__enter__()
            self.t = self.p.add_task(description, total=total)
            return lambda n=1: self.p.advance(self.t, n)

        def __exit__(self, *exc):
            return self.p.__exit__(*exc)

    return _Bar()


# ----------------------------------------------------------------------------------------------------------------
# evaluate


def evaluate(model: str | None = None, tasks: str = "all", strategies: str = "all",
             compression: str = DEFAULT_COMPRESSION, samples: int = 4, fmt: str = "table", output: str | None = None,
             *, length: int = 1024, text: str | None = None, batch_size: int = 8, seed: int = 0,
             depth: float | None = None, device: str | None = None, dtype: str | None = None,
             reallocate: bool = True, progress: bool = True) -> int:
    """Score table of strategies x compression ratios x tasks on a real model, with each run's measured transfer
    ratio (elements the decode steps touched, counted from the fetched sets, over dense's for the same caches).

    Dense runs once (compression 1). `output` also writes the rows to a file (.json, else CSV). Returns 0.
    """
    from . import tasks as T

    task_names = T.parse_tasks(tasks)
    strategy_names = parse_strategies(strategies)
    ratios = parse_compression(compression)
    fmt = _check_format(fmt)
    _check_run(samples, length, depth, text)
    _positive(batch_size, "batch-size")
    if output:
        _check_output(Path(output))

    from .hf import StrategyConfig
    from .model import load_model
    from .run import aggregate, run_task

    configs = []
    if "dense" in strategy_names:
        configs.append(StrategyConfig("dense"))
    for c in ratios:
        for s in strategy_names:
            if s != "dense":
                configs.append(StrategyConfig(s, c, reallocate=reallocate))
    lm = load_model(model, device=device, dtype=dtype)
    _check_length(lm, length, max(T.DEFAULT_NEW_TOKENS[t] for t in task_names))
    results = []
    total = sum(samples * len(configs) * (T.DEFAULT_NEW_TOKENS[t] + 1) for t in task_names)
    with _progress(total, "evaluate", progress) as advance:
        for t in task_names:
            smp = T.make_samples(t, lm.tokenizer, samples, length=length, seed=seed, text=text, depth=depth)
            results += run_task(lm, t, smp, configs, batch_size=batch_size, progress=advance)
    rows = aggregate(results)
    doc = {"model": lm.name, "device": lm.device, "dtype": lm.dtype, "length": length, "seed": seed,
           "text": text or "python standard library docstrings", "rows": rows}
    if output:
        out = Path(output)
        if out.suffix.lower() == ".json":
            _write_atomic(out, json.dumps(doc, indent=2) + "\n")
        else:
            _write_atomic(out, _csv(rows))
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    elif fmt == "csv":
        sys.stdout.write(_csv(rows))
    else:
        _print_table(rows, doc)
    return 0


def _csv(rows) -> str:
    import csv
    import io

    buf = io.StringIO()
    cols = ["task", "strategy", "compression", "score", "score_std", "score_name", "higher_is_better",
            "transfer_ratio", "samples", "params"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "params": r["params"] if isinstance(r["params"], str) else json.dumps(r["params"],
                                                                                              sort_keys=True)})
    return buf.getvalue()


def _print_table(rows, doc) -> None:
    from rich.console import Console
    from rich.table import Table

    order = {n: i for i, n in enumerate(STRATEGY_NAMES)}
    table = Table(title=f"{doc['model']}, {doc['length']}-token contexts: score vs measured transfer ratio",
                  caption="repetition: characters repeated before the first divergence; passkey: share of pass keys "
                          "found; bpc: bits per character. ↑/↓: higher/lower is better; ± sample std; transfer: "
                          "elements moved / dense's, counted from the fetched sets.")
    for col in ("task", "strategy", "C", "score", "±", "transfer", "n"):
        table.add_column(col, justify="left" if col in ("task", "strategy") else "right", no_wrap=True)
    for r in sorted(rows, key=lambda r: (r["task"], r["compression"], order.get(r["strategy"], 99))):
        task = r["task"] + (" ↑" if r["higher_is_better"] else " ↓")
        table.add_row(task, r["strategy"], f"1/{r['compression']:g}", f"{r['score']:.3g}", f"{r['score_std']:.3g}",
                      f"{r['transfer_ratio']:.3f}", str(r["samples"]))
    Console().print(table)


# ----------------------------------------------------------------------------------------------------------------
# record


def record(model: str | None = None, task: str = "repetition", strategy: str = "sparq", compression: float = 8.0,
           r: int | None = None, k: int | None = None, steps: int = 64, output: str = "trace.parquet", *,
           local_window: int | None = None, page_size: int | None = None, sinks: int | None = None,
           samples: int = 1, length: int = 1024, text: str | None = None, seed: int = 0, depth: float | None = None,
           device: str | None = None, dtype: str | None = None, reallocate: bool = True, progress: bool = True,
           quiet: bool = False) -> int:
    """Run one task with one strategy and write its attention trace (see `sparq_sim.traces`) to `output`, atomically.

    `samples` sequences decode together as one batch, `steps` decode steps each (no early stop, so every sequence
    has the same number of rows); the task's score goes into the metadata. Returns 0.
    """
    from . import tasks as T

    task_name = T.parse_tasks(task)
    if len(task_name) != 1:
        raise UserError(f"--task takes one task, got {task!r} (accepted: {', '.join(T.TASKS)})")
    task_name = task_name[0]
    _positive(steps, "steps")
    _check_run(samples, length, depth, text)
    out = Path(output)
    _check_output(out)

    from .hf import StrategyConfig
    from .model import load_model

    cfg = StrategyConfig(strategy, float(compression), r=r, k=k, local_window=local_window, page_size=page_size,
                         sinks=sinks, reallocate=reallocate)
    lm = load_model(model, device=device, dtype=dtype)
    _check_length(lm, length, steps)
    cfg.resolve([max(length, 64)], lm.head_dim)  # reject r > d_h and the like before any work
    from ..traces import TraceWriter

    smp = T.make_samples(task_name, lm.tokenizer, samples, length=length, seed=seed, text=text, depth=depth)
    meta = {
        "model": {"name": lm.name, "source": lm.source, **lm.spec()},
        "strategy": cfg.strategy,
        "params": cfg.describe(),
        "dtypes": {"kv": lm.dtype, "compute": lm.dtype, "softmax": "fp32"},
        "task": {"name": task_name, "samples": samples, "length": length, "seed": seed, "depth": depth,
                 "text": text or "python standard library docstrings"},
        "batch_size": samples,
        "device": lm.device,
    }
    with TraceWriter(out, meta) as writer, _progress(steps, f"record {cfg.strategy}", progress) as advance:
        score, n_steps, ratio = _record_run(lm, task_name, smp, cfg, steps, writer.write, advance)
        name, higher = T.TASK_INFO[task_name]
        writer.metadata["task"].update(score=score, score_name=name, higher_is_better=higher)
        writer.metadata["steps"] = n_steps
        writer.metadata["transfer_ratio"] = ratio
    if not quiet:
        print(f"wrote {output}: {writer.rows} rows ({n_steps} steps x {lm.config.num_hidden_layers} layers x "
              f"{lm.config.num_key_value_heads} KV heads x {samples} sequence(s)); {task_name} "
              f"{T.TASK_INFO[task_name][0]} {score:.4g}; transfer ratio {ratio:.3f}")
    return 0


def _record_run(lm, task, samples, cfg, steps, sink, advance):
    """Decode `steps` steps with tracing: returns (mean score, steps, transfer ratio)."""
    import torch

    from .hf import Session, decode, prefill
    from .run import _encode, score_sample

    tok = lm.tokenizer
    ids, mask = _encode(tok, [s.prompt for s in samples])
    forced = None
    n = steps + 1  # the first token comes from the prefill; `steps` decode steps follow
    if task == "bpc":
        cont = [tok(s.target, add_special_tokens=False).input_ids for s in samples]
        avail = min(map(len, cont))
        if avail < 2:
            raise UserError("the held-out text is too short for bpc")
        n = min(n, avail)
        forced = torch.tensor([c[:n] for c in cont])
    pre = prefill(lm.model, ids, mask, collect_h2o=cfg.strategy == "h2o", max_new_tokens=n + 1)
    res = decode(lm.model, pre, Session(cfg, sink=sink), n, forced=forced, progress=advance)
    scores = [score_sample(tok, task, s, res.tokens[i], res.logprobs[i])[0] for i, s in enumerate(samples)]
    return float(sum(scores) / len(scores)), res.steps, res.counts.transfer_ratio
