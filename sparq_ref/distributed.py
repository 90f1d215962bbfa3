"""`evaluate --ray`, `record --ray` and `measure --ray`: the cells of an evaluation, a recording or a measurement
fanned out as Ray tasks, one per CPU slot (or GPU).

A cell is one (task, batch of samples): what `run.run_task` computes for one batch, one dense prefill shared by
every strategy configuration, as in one process. A worker loads the model once (`model.load_model` keeps it for the
worker's later cells), makes the task's samples exactly as a single process does (same seed, same text), and returns
the cell's per-sample results. The driver puts them back in the single process's order (task, batch, configuration,
sample), so `run.aggregate` gives the same rows; with the same torch threads per process (`--threads`; Ray gives each
one-CPU task one thread) the scores are the same bit for bit. Cells are as many as batches of samples: at
`--batch-size 1` one per sample.

- A worker that dies (killed, out of memory) has its cell run again (Ray's `max_retries`); an error in a cell (a
  bad --text, a context too long for the model) is one line and ends the run.
- With `--output`, every finished cell is kept in OUTPUT.cells/ (one JSON file per cell, named by a hash of what
  it computes), so a rerun of the same command after Ctrl-C or a failure does only the cells still missing; the
  folder goes when the output is written.
- Ctrl-C cancels the cells in flight and keeps the finished ones.

`record --ray`: a cell is one batch of samples decoded with tracing (`record_cell`); its rows travel back as an
Arrow IPC stream and are kept as one trace file per cell in OUTPUT.cells/ (KEY.arrow) beside its JSON entry, the
folder's manifest; the driver writes the trace from them in the samples' order, in the row chunks one process writes,
so the trace is the single process's (bit for bit with the same torch threads).

`measure --ray`: a cell is one kernel's points (`measure_cell`), timed where the task runs. On GPUs each task holds a
GPU of its own (`num_gpus=1`); on CPUs each holds `--threads` CPUs (default: all of the driver's), so that
measurements never share the cores they time (with --threads below the node's CPUs they run side by side and share
its memory bandwidth: the rows say their threads).

Ray is optional (`pip install 'sparq-sim[distributed]'`): without it, `--ray` is one line saying how to get it.
`--ray-address` joins a running cluster (its workers need this package, the model and any --text file at the same
paths); `--ray` alone starts a local one on this machine's CPUs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..simulator.errors import UserError

MAX_RETRIES = 3        # a cell whose worker died is run again up to this many times
INSTALL = "pip install 'sparq-sim[distributed]' (or pip install ray)"
TEST_CRASH_ENV = "SPARQ_SIM_TEST_CRASH_ONCE"   # tests: FOLDER; each cell's first worker dies (a marker file per cell)


def need_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def cell_key(spec: dict) -> str:
    """What a cell computes, as a short hash: its file name in OUTPUT.cells/ (a changed option is another cell)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def worker_paths(model: str | None, text: str | None) -> tuple[str | None, str | None]:
    """The model (a local folder or file) and a --text file as absolute paths, as every worker must find them (a
    model name or None stays as it is)."""
    if model is not None and Path(model).exists():
        model = str(Path(model).expanduser().resolve())
    return model, None if text is None else str(Path(text).resolve())


def _crash_once_for_tests(spec: dict) -> None:
    """The test of retries (TEST_CRASH_ENV set to a folder): this cell's first attempt kills its worker process, as an
    out-of-memory kill would."""
    crash = os.environ.get(TEST_CRASH_ENV)
    if crash:
        marker = Path(crash) / cell_key(spec)
        if not marker.exists():
            marker.touch()
            os._exit(1)


def evaluate_cell(spec: dict) -> dict:
    """Run one cell (in a Ray worker, or anywhere): the per-sample results of every configuration on one batch, in
    `run_task`'s order (configuration, then sample)."""
    from . import tasks as T
    from .hf import StrategyConfig
    from .measure import set_threads
    from .model import load_model
    from .run import run_task

    _crash_once_for_tests(spec)
    if spec.get("threads"):
        set_threads(spec["threads"])
    lm = load_model(spec["model"], device=spec["device"], dtype=spec["dtype"])
    from .commands import _check_length
    _check_length(lm, spec["length"], T.DEFAULT_NEW_TOKENS[spec["task"]])
    smp = T.make_samples(spec["task"], lm.tokenizer, spec["samples"], length=spec["length"], seed=spec["seed"],
                         text=spec["text"], depth=spec["depth"])
    b0 = spec["b0"]
    batch = smp[b0:b0 + spec["batch_size"]]
    configs = [StrategyConfig(**c) for c in spec["configs"]]
    res = run_task(lm, spec["task"], batch, configs, batch_size=spec["batch_size"], calibration_text=spec["text"])
    return {"model": {"name": lm.name, "device": lm.device, "dtype": lm.dtype},
            "results": [{"config": configs.index(r.config), "sample": b0 + r.sample, "score": r.score,
                         "elements": r.elements, "dense_elements": r.dense_elements, "steps": r.steps,
                         "generated": r.generated} for r in res]}


def record_cell(spec: dict) -> dict:
    """Record one batch of samples (in a Ray worker, or anywhere): the model loaded (once per worker), the task's
    samples made as one process makes them, the batch decoded with tracing -> its trace rows (Arrow IPC bytes), scores
    and elements touched, and what the trace's metadata needs from the loaded model."""
    import pyarrow as pa

    from . import tasks as T
    from .calibration import for_model
    from .commands import _check_length, _new_tokens, _record_meta, _record_rows
    from .hf import StrategyConfig
    from .measure import set_threads
    from .model import load_model

    _crash_once_for_tests(spec)
    if spec.get("threads"):
        set_threads(spec["threads"])
    lm = load_model(spec["model"], device=spec["device"], dtype=spec["dtype"])
    _check_length(lm, spec["length"], spec["steps"])
    cfg = StrategyConfig(**spec["strategy_config"])
    cfg.resolve([max(spec["length"], 64)], lm.head_dim)
    smp = T.make_samples(spec["task"], lm.tokenizer, spec["samples"], length=spec["length"], seed=spec["seed"],
                         text=spec["text"], depth=spec["depth"])
    n_new = _new_tokens(lm.tokenizer, spec["task"], smp, spec["steps"])
    cal = for_model(lm, cfg.strategy, spec["text"])
    b0 = spec["b0"]
    size = min(spec["batch_size"], spec["samples"] - b0)
    rows, scores, strat, dense, n_steps = _record_rows(lm, spec["task"], smp, b0, size, cfg, n_new, None, cal)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as w:
        w.write_table(rows)
    return {"rows": sink.getvalue().to_pybytes(), "scores": scores, "strategy_elements": strat,
            "dense_elements": dense, "steps": n_steps, "size": size,
            "meta": _record_meta(lm, cfg, spec["task"], spec["samples"], spec["length"], spec["seed"], spec["depth"],
                                 spec["text"], spec["batch_size"], cal),
            "n_kv": int(lm.config.num_key_value_heads), "n_layers": int(lm.config.num_hidden_layers)}


def measure_cell(spec: dict) -> dict:
    """Time one kernel's points (in a Ray worker, or anywhere): rows in the measurement schema."""
    from .measure import measure_kernels, set_threads

    set_threads(spec["threads"])
    rows = measure_kernels([spec["kernel"]], spec["batches"], spec["seqs"], spec["heads"], spec["kv_heads"],
                           spec["head_dims"], spec["dtypes"], spec["rs"], spec["ks"], device=spec["device"],
                           repeats=spec["repeats"], warmup=spec["warmup"])
    return {"rows": rows}


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A cluster address must answer before Ray is asked to join it: Ray itself retries for minutes, printing its
    own logs. HOST:PORT or ray://HOST:PORT is tried with one TCP connection; 'auto' (the cluster of this machine's
    `ray start`) is left to Ray."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UserError(f"--ray-address {address!r}: give HOST:PORT of the cluster's head (ray start --head prints "
                        f"it), ray://HOST:PORT, or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise UserError(f"--ray-address {address!r}: no Ray cluster answers there ({e.strerror or e})") from None


class CellRun:
    """The cells of one evaluation on Ray, with their results kept in `folder` (None: not kept)."""

    def __init__(self, specs: list[dict], folder: Path | None, fn=None):
        self.specs = specs
        self.fn = fn or evaluate_cell    # what a cell runs: evaluate_cell or record_cell
        self.keys = [cell_key(s) for s in specs]
        self.folder = folder
        self.done: dict[int, dict] = {}
        if folder is not None and folder.is_dir():
            for i, key in enumerate(self.keys):
                f = folder / f"{key}.json"
                if f.is_file():
                    try:
                        d = json.loads(f.read_text())
                        if "rows_file" in d:   # a recorded cell: its trace rows beside it
                            d["rows"] = (folder / d.pop("rows_file")).read_bytes()
                        self.done[i] = d
                    except (OSError, ValueError):   # a cell file cut short or missing: computed again
                        pass

    def keep(self, i: int, result: dict) -> None:
        self.done[i] = result
        if self.folder is None:
            return
        from ..simulator.output import open_atomic, write_atomic
        self.folder.mkdir(exist_ok=True)
        entry = result
        if isinstance(result.get("rows"), (bytes, bytearray)):   # the rows first, then the entry that names them
            name = f"{self.keys[i]}.arrow"
            with open_atomic(str(self.folder / name)) as tmp:
                with open(tmp, "wb") as f:
                    f.write(result["rows"])
            entry = {k: v for k, v in result.items() if k != "rows"}
            entry["rows_file"] = name
        write_atomic(str(self.folder / f"{self.keys[i]}.json"), json.dumps(entry))

    def run_shown(self, address: str | None, gpus: bool, what: str, unit: str, quiet: bool, cpus: int = 1) -> None:
        """`run` with the command's progress line (cells done of all, kept ones at once) and a Ctrl-C point after
        each finished cell."""
        from ..common.progress import Progress
        from ..simulator.interrupt import checkpoint

        with Progress(len(self.specs), what, quiet=quiet, unit=unit) as bar:
            def step(n=1):
                bar.advance(n)
                if n:
                    checkpoint("cell")

            self.run(address, gpus, step, cpus)

    def run(self, address: str | None, gpus: bool, advance, cpus: int = 1) -> None:
        """Every cell not done yet, as Ray tasks; `advance(1)` as each finishes. Ctrl-C cancels the rest."""
        import contextlib
        import io

        todo = [i for i in range(len(self.specs)) if i not in self.done]
        advance(len(self.specs) - len(todo))
        if not todo:
            return
        ray = need_ray()
        # Ray's driver threads print the cluster's notices ("(raylet) A worker died ... will be retried") on standard
        # output, where the results go: while the cluster is in use they go nowhere (a failure that matters is an
        # exception here), and the driver leaves the cluster before the results are printed
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                self._run(ray, todo, address, gpus, advance, cpus)
            finally:
                ray.shutdown()

    def _run(self, ray, todo, address, gpus, advance, cpus=1) -> None:
        import logging

        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     ignore_reinit_error=True)
        except Exception as e:   # no cluster at that address, a port taken: Ray's own words, on one line
            raise UserError(f"--ray could not start or join a cluster{f' at {address}' if address else ''}: "
                            f"{' '.join(str(e).split())[:300]}") from None
        if gpus and ray.cluster_resources().get("GPU", 0) < 1:   # the cells would wait for a GPU forever
            raise UserError(f"--device cuda: the Ray cluster{f' at {address}' if address else ''} has no GPU")
        if not gpus and ray.cluster_resources().get("CPU", 0) < cpus:
            raise UserError(f"the Ray cluster{f' at {address}' if address else ''} has fewer than the {cpus} CPUs "
                            f"each task holds (--threads)")
        task = ray.remote(self.fn).options(num_cpus=1 if gpus else cpus, num_gpus=1 if gpus else 0,
                                           max_retries=MAX_RETRIES)
        pending = {task.remote(self.specs[i]): i for i in todo}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, UserError):
                        raise UserError(str(cause)) from None
                    raise UserError(f"cell {i + 1} of {len(self.specs)} failed in its worker: "
                                    f"{type(cause).__name__ if cause else 'error'}: "
                                    f"{' '.join(str(cause or e).split())[:300]}") from None
                except ray.exceptions.WorkerCrashedError:
                    raise UserError(f"cell {i + 1} of {len(self.specs)}: its worker died {MAX_RETRIES + 1} times "
                                    f"(out of memory?)") from None
                self.keep(i, result)
                advance(1)
        finally:
            for ref in pending:   # Ctrl-C or an error: nothing keeps running for this command
                ray.cancel(ref, force=True)

    def clear(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
