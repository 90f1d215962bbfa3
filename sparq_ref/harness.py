"""`sparq-sim evaluate --lm-eval TASKS`: EleutherAI's lm-evaluation-harness on a model whose decode steps run a
strategy.

lm-eval scores a Hugging Face model through its class `lm_eval.models.huggingface.HFLM`. `StrategyLM` is that class
over an already loaded model, with the two places where the model runs replaced so that every scored token comes from
a decode step of the strategy, as a deployment would produce it (prefill is dense in every implementation of these
methods; SparQ, H2O, Quest and the others act only when the query is one token):

- loglikelihood requests (multiple choice, `loglikelihood_rolling` perplexity): the context is prefilled densely and
  predicts the continuation's first token; the continuation's tokens are then fed one at a time (teacher forcing),
  each decode step running the strategy over the whole cache, and predict the next. A request's score is the sum of
  the continuation's log-probabilities; `is_greedy` whether each of its tokens was the argmax.
- generate_until requests: dense prefill of the prompt, then greedy decode steps with the strategy until a stop string
  (or lm-eval's token budget). Sampling is refused: the reference decodes greedily.

Everything else (prompt formatting, few-shot examples, tokenisation, truncation, metrics, aggregation) is lm-eval's.
At compression 1 every strategy is dense, so the scores equal those of a dense decode of the same model (tested).
The elements each run's decode steps touch are counted from the fetched index sets, beside dense's for the same caches,
so each lm-eval score comes with its measured transfer ratio.

lm-eval is an optional extra (`pip install 'sparq-sim[lm-eval]'`); it is imported only here. Tasks that need a
dataset from the Hugging Face hub need it in the local cache (or network access); a task of your own is a YAML file
with local data files, given with --lm-eval-include (lm-eval's include_path).
"""

from __future__ import annotations

import contextlib
import os

from ..simulator.errors import UserError

INSTALL = "pip install 'sparq-sim[lm-eval]'"
# lm-eval's standard errors: metrics aggregated by a mean get theirs in closed form; the others (corpus BLEU, F1, ...)
# by bootstrap, here with this many resamples (lm-eval's default is 100,000)
BOOTSTRAP_ITERS = 1000


def need_lm_eval() -> None:
    """One line, before the model loads, when lm-eval is not installed."""
    import importlib

    try:
        importlib.import_module("lm_eval")
    except ImportError:
        raise UserError(f"--lm-eval needs lm-evaluation-harness, which is not installed: {INSTALL}") from None


def _quiet_harness() -> None:
    """lm-eval's loggers below errors: it warns while a model is wrapped, outside `_silenced` (which covers its runs,
    tqdm bars included)."""
    import logging

    for name in ("lm-eval", "lm_eval", "lm_eval.evaluator", "lm_eval.models.huggingface", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


_CLASS = None


def strategy_lm_class():
    """`StrategyLM`, defined on first use (lm-eval and torch are imported then)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    _quiet_harness()
    import torch
    from lm_eval.models.huggingface import HFLM

    from .calibration import for_model
    from .hf import Session, StrategyConfig, decode, prefill

    class StrategyLM(HFLM):
        """HFLM over a `model.LoadedModel`; decode steps run `config`'s strategy (see the module's docstring)."""

        def __init__(self, lm, config: StrategyConfig, *, batch_size: int = 8, max_length: int | None = None,
                     calibration_text=None):
            super().__init__(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size,
                             max_length=max_length)
            self.loaded = lm
            self.strategy = config
            self.calibration_text = calibration_text
            self.touched = [0.0, 0.0]     # elements the strategy's decode steps touched, dense's for the same caches

        # ---- bookkeeping -----------------------------------------------------------------------------------
        def _session(self) -> Session:
            return Session(self.strategy, calibration=for_model(self.loaded, self.strategy.strategy,
                                                                self.calibration_text))

        def _add(self, counts) -> None:
            self.touched[0] += float(counts.strategy.sum())
            self.touched[1] += float(counts.dense.sum())

        def transfer(self) -> tuple[float, float]:
            """(elements the strategy's decode steps touched, dense's for the same caches), all requests so far."""
            return self.touched[0], self.touched[1]

        def _left_padded(self, rows: list[list[int]]):
            pad = self.tokenizer.pad_token_id
            pad = self.eot_token_id if pad is None else pad
            T = max(map(len, rows))
            ids = torch.full((len(rows), T), int(pad), dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, T - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, T - len(r):] = 1
            return ids, mask

        # ---- loglikelihood: dense prefill of the context, the continuation as teacher-forced decode steps -------
        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            """requests: ((context, continuation) or None, context tokens, continuation tokens) -> (sum of the
            continuation's log-probabilities, whether each of its tokens was the argmax), in the requests' order."""
            L = self.max_length
            split = []
            for _, ctx, cont in requests:
                if not cont:
                    raise UserError("an lm-eval request has an empty continuation (the task's target is empty)")
                full = (list(ctx) + list(cont))[-(L + 1):]        # as HFLM truncates: at most max_length fed
                n = min(len(cont), len(full) - 1)
                split.append((full[:len(full) - n], full[len(full) - n:]))
            order = sorted(range(len(split)), key=lambda i: (-len(split[i][1]), -len(split[i][0]), i))
            bs = override_bs or (self.batch_size if isinstance(self.batch_size, int) else 1)
            out: list = [None] * len(split)
            for b0 in range(0, len(order), bs):
                idx = order[b0:b0 + bs]
                ids, mask = self._left_padded([split[i][0] for i in idx])
                n = max(len(split[i][1]) for i in idx)
                forced = torch.full((len(idx), n), int(self.eot_token_id), dtype=torch.long)
                for j, i in enumerate(idx):      # shorter continuations are padded after their end: never scored
                    forced[j, :len(split[i][1])] = torch.tensor(split[i][1], dtype=torch.long)
                pre = prefill(self.model, ids, mask, collect_h2o=self.strategy.strategy == "h2o",
                              collect_snapkv=self.strategy.strategy == "snapkv", max_new_tokens=n + 1)
                res = decode(self.model, pre, self._session(), n, forced=forced)
                for j, i in enumerate(idx):
                    m = len(split[i][1])
                    ll = float(res.logprobs[j, :m].double().sum())
                    greedy = bool((res.argmax[j, :m] == forced[j, :m]).all())
                    out[i] = (ll, greedy)
                    ctx_cont = requests[i][0]
                    if ctx_cont is not None:
                        self.cache_hook.add_partial("loglikelihood", ctx_cont, (ll, greedy))
                self._add(res.counts)
            return out

        # ---- generate_until: dense prefill, greedy decode steps until a stop string -----------------------------
        def _model_generate(self, context, max_length, stop, **generation_kwargs):
            """HFLM's batched generation: context [B, T] left-padded (attention_mask in the kwargs) -> [B, T + n]."""
            mask = generation_kwargs.pop("attention_mask", None)
            temperature = generation_kwargs.pop("temperature", 0.0) or 0.0
            sample = generation_kwargs.pop("do_sample", None)
            if sample or temperature > 0:
                raise UserError("this lm-eval task samples (do_sample / temperature > 0); sparq-sim's reference "
                                "decodes greedily: give the task's generation_kwargs temperature 0")
            T = context.shape[1]
            n = max(int(max_length) - T, 1)
            pre = prefill(self.model, context, mask, collect_h2o=self.strategy.strategy == "h2o",
                          collect_snapkv=self.strategy.strategy == "snapkv", max_new_tokens=n + 1)
            stops = [s for s in (stop or []) if s]
            eos = self.eot_token_id

            def done(tokens):
                flags = []
                for row in tokens.tolist():
                    text = self.tokenizer.decode(row, skip_special_tokens=False)
                    flags.append((eos is not None and eos in row) or any(s in text for s in stops))
                return torch.tensor(flags)

            res = decode(self.model, pre, self._session(), n, stop=done)
            self._add(res.counts)
            gen = res.tokens.to(context.device)
            if gen.shape[1] < n:       # every sequence stopped early: pad as HF's generate would
                pad = torch.full((gen.shape[0], n - gen.shape[1]), int(eos if eos is not None else 0),
                                 dtype=gen.dtype, device=gen.device)
                gen = torch.cat([gen, pad], 1)
            return torch.cat([context, gen], 1)

    _CLASS = StrategyLM
    return _CLASS


def parse_tasks(value) -> list[str]:
    """'hellaswag,arc_easy' -> ['hellaswag', 'arc_easy']: lm-eval task (or group) names, in order, without repeats."""
    out = []
    for it in str(value or "").split(","):
        it = it.strip()
        if it and it not in out:
            out.append(it)
    if not out:
        raise UserError("--lm-eval is empty (accepted: lm-eval task names, comma list, e.g. hellaswag,arc_easy)")
    return out


@contextlib.contextmanager
def _silenced():
    """lm-eval's own logs, tqdm bars and the `git describe` it runs for its environment record go to standard error
    (the last from a child process, so at the file descriptor): the command's progress line stands for them."""
    import io
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):   # no usable descriptor 2: the Python-level redirect only
        saved = None
    try:
        if saved is not None:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


def task_manager(tasks: list[str], include_path: str | None = None):
    """lm-eval's task index for `tasks`: the YAML files under include_path alone when they hold every task (indexing
    lm-eval's own thousands of task files takes seconds), else lm-eval's tasks too. An unknown task is one line."""
    need_lm_eval()
    _quiet_harness()
    from lm_eval.tasks import TaskManager

    with _silenced():
        manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
        if manager is None or not set(tasks) <= set(manager.all_tasks):
            manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in set(manager.all_tasks)]
    if unknown:
        from ..simulator.errors import closest

        hint = closest(unknown[0], sorted(manager.all_tasks))
        where = (f"lm-eval's or {include_path}'s (lm-eval leaves out a YAML file it cannot read)" if include_path
                 else "lm-eval's (yours: --lm-eval-include DIR)")
        raise UserError(f"--lm-eval: {', '.join(unknown)} is not among {where} tasks{hint}")
    return manager


def run_tasks(lm, tasks: list[str], configs, *, limit: int | None, batch_size: int, max_length: int | None,
              manager=None, num_fewshot: int | None = None, seed: int = 0, calibration_text=None,
              progress=None) -> list[dict]:
    """Every lm-eval task under every configuration: one row per (task, metric, configuration), in the shape of
    `run.aggregate`'s rows (the metric, lm-eval's standard error of it, the measured transfer ratio, the documents
    scored). progress(1) after each (task, configuration) run."""
    need_lm_eval()
    cls = strategy_lm_class()
    from lm_eval import evaluator

    manager = manager if manager is not None else task_manager(tasks)
    rows = []
    for task in tasks:
        for cfg in configs:
            model = cls(lm, cfg, batch_size=batch_size, max_length=max_length, calibration_text=calibration_text)
            try:
                with _silenced():
                    out = evaluator.simple_evaluate(
                        model=model, tasks=[task], task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                        bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False, verbosity="ERROR")
            except UserError:
                raise
            except (FileNotFoundError, ConnectionError) as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise UserError(f"--lm-eval {task}: its dataset could not be read ({first}); offline, a task needs "
                                "its data in the local Hugging Face cache or in local files") from None
            except Exception as e:   # a task's YAML lm-eval cannot run (a bad template, output type, ...): one line
                if _raised_in_this_package(e):
                    raise      # a fault of sparq-sim's own, with its traceback
                first = str(e).splitlines()[0] if str(e) else ""
                raise UserError(f"--lm-eval {task}: lm-eval could not run the task: {type(e).__name__}: "
                                f"{first[:300]}") from None
            el, de = model.transfer()
            rows += _rows(out, cfg, el / de if de else float("nan"))
            if progress is not None:
                progress(1)
    return rows


def _raised_in_this_package(e: BaseException) -> bool:
    """Whether the exception passed through sparq-sim's own code below run_tasks (StrategyLM's methods, the
    reference), rather than only through lm-eval and the libraries it calls on a task's configuration."""
    import traceback
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent   # the sparq_sim package (the repository root when editable)
    for frame in traceback.extract_tb(e.__traceback__)[1:]:   # [0]: run_tasks' own call of simple_evaluate
        if frame.filename.startswith("<"):   # code made at run time (a task's Jinja template): not a file of ours
            continue
        path = Path(frame.filename).resolve()
        if path.is_relative_to(root) and "site-packages" not in path.parts:
            return True
    return False


def _rows(out: dict, cfg, transfer: float) -> list[dict]:
    """lm-eval's results of one run -> one row per (task, metric); groups of tasks give a row per subtask."""
    import math

    rows = []
    higher = out.get("higher_is_better", {})
    for task, res in out["results"].items():
        n = out.get("n-samples", {}).get(task, {})
        for key, value in res.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filt = key.split(",", 1)
            err = res.get(f"{metric}_stderr,{filt}")
            rows.append({
                "task": task,
                "strategy": cfg.strategy,
                "compression": float(cfg.compression),
                "score": float(value),
                "score_std": float("nan"),
                "score_stderr": float(err) if isinstance(err, (int, float)) and not isinstance(err, bool)
                and math.isfinite(err) else float("nan"),
                "score_name": metric if filt == "none" else f"{metric} ({filt})",
                "higher_is_better": bool(higher.get(task, {}).get(metric, True)),
                "transfer_ratio": transfer,
                "samples": int(n.get("effective", n.get("original", 0)) or 0),
                "params": cfg.describe(),
                "source": "lm-eval",
            })
    return rows
