"""Running tasks on a model with strategies: one dense prefill per batch of samples, shared by every strategy run.

`run_task` returns one `RunResult` per (strategy configuration, sample) with the score and the elements the run's
decode steps touched (counted from the fetched sets) beside dense's for the same caches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import tasks as T
from .calibration import for_model
from .hf import Session, StrategyConfig, decode, prefill


@dataclass
class RunResult:
    task: str
    config: StrategyConfig
    sample: int
    score: float
    elements: float          # elements touched by the decode steps (all layers, KV heads)
    dense_elements: float    # dense's elements for the same caches
    steps: int
    generated: str


def _encode(tokenizer, texts):
    """Plain-text prompts (no chat template, so base and instruction-tuned models alike), left-padded."""
    import torch

    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask.to(torch.long)


def run_task(lm, task: str, samples: list[T.Sample], configs: list[StrategyConfig], *, batch_size: int = 4,
             new_tokens: int | None = None, progress: Callable[[int], None] | None = None,
             sink_for: Callable[[StrategyConfig, int], Callable | None] | None = None,
             calibration_text=None) -> list[RunResult]:
    """Score every configuration on every sample. progress(n) is called with the tokens done: a decode step of a
    batch of b sequences is b; a run that stops early counts its remaining tokens when it ends, so a run of a batch
    adds up to b x (new_tokens + 1) whatever happens.

    sink_for(config, first_sample_index) may return a trace sink for that run (see `hf.Session`).
    calibration_text: the text Loki and Double Sparsity calibrate on (`calibration`; None: the default text).
    """
    import torch

    tok, model = lm.tokenizer, lm.model
    n_new = new_tokens or T.DEFAULT_NEW_TOKENS[task]
    need_h2o = any(c.strategy == "h2o" for c in configs)
    need_snapkv = any(c.strategy == "snapkv" for c in configs)
    out: list[RunResult] = []
    for b0 in range(0, len(samples), batch_size):
        batch = samples[b0:b0 + batch_size]
        ids, mask = _encode(tok, [s.prompt for s in batch])
        pre = prefill(model, ids, mask, collect_h2o=need_h2o, collect_snapkv=need_snapkv, max_new_tokens=n_new + 1)
        forced = None
        if task == "bpc":
            cont = [tok(s.target, add_special_tokens=False).input_ids for s in batch]
            m = min(n_new + 1, min(map(len, cont)))
            forced = torch.tensor([c[:m] for c in cont])
        eos = tok.eos_token_id

        def stop(tokens, batch=batch):
            done = []
            for row, s in zip(tokens.tolist(), batch):
                if eos is not None and eos in row:
                    done.append(True)
                    continue
                text = tok.decode(row, skip_special_tokens=True)
                if task == "repetition":
                    done.append(T.repetition_diverged(text, s.target))
                elif task == "passkey":
                    done.append(bool(re_number_done(text)))
                else:
                    done.append(False)
            return torch.tensor(done)

        for cfg in configs:
            sink = sink_for(cfg, b0) if sink_for else None
            session = Session(cfg, sink=sink, calibration=for_model(lm, cfg.strategy, calibration_text))
            done = [0]

            def advance(n, batch=batch, done=done):   # a decode step moves every sequence of the batch one token
                done[0] += n * len(batch)
                progress(n * len(batch))

            res = decode(model, pre, session, n_new if forced is None else forced.shape[1],
                         forced=forced, stop=stop if task != "bpc" else None,
                         progress=advance if progress is not None else None)
            if progress is not None:   # the tokens of sequences that stopped early (or never ran): counted done
                progress(len(batch) * (n_new + 1) - done[0])
            for i, s in enumerate(batch):
                score, text = score_sample(tok, task, s, res.tokens[i], res.logprobs[i])
                out.append(RunResult(task, cfg, b0 + i, score, float(res.counts.strategy[i]),
                                     float(res.counts.dense[i]), res.steps, text))
    return out


def score_sample(tok, task: str, sample: T.Sample, tokens, logprobs) -> tuple[float, str]:
    """(score, generated text) of one sequence: tokens [n] fed after the prompt, logprobs [n] their log p (nats)."""
    row = tokens.tolist()
    eos = tok.eos_token_id
    if task != "bpc" and eos is not None and eos in row:
        row = row[:row.index(eos)]
    text = tok.decode(row, skip_special_tokens=True)
    if task == "repetition":
        return float(T.repetition_score(text, sample.target)), text
    if task == "passkey":
        return T.passkey_score(text, sample.target), text
    # bpc: the first token is predicted by the dense prefill; score those the decode steps predicted
    chars = len(tok.decode(row[1:]))
    return float(-logprobs[1:].sum() / math.log(2) / max(chars, 1)), text


def re_number_done(text: str) -> bool:
    """A number has been written and followed by something else."""
    import re

    return re.search(r"\d+\D", text) is not None


def aggregate(results: list[RunResult]) -> list[dict]:
    """Mean score and transfer ratio per (task, strategy, compression)."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.task, r.config), []).append(r)
    rows = []
    for (task, cfg), rs in groups.items():
        scores = np.array([r.score for r in rs])
        el, de = sum(r.elements for r in rs), sum(r.dense_elements for r in rs)
        name, higher = T.TASK_INFO[task]
        rows.append({
            "task": task,
            "strategy": cfg.strategy,
            "compression": float(cfg.compression),
            "score": float(scores.mean()),
            "score_std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "score_name": name,
            "higher_is_better": higher,
            "transfer_ratio": float(el / de) if de else float("nan"),
            "samples": len(rs),
            "params": cfg.describe(),
        })
    return rows
