"""What the headline table of `sparq-sim predict` says about itself: its header (every assumption), its legend, and
the accuracy of the strategies at the compression shown, from the bundled evaluation.

A reader must not have to guess what was assumed (model, precision, batch, context, compression, devices), what a
column means, why SparQ's k is half the others', or conclude that a method which moves fewer bytes but loses the
task is simply better. Pure Python (the evaluation is a small JSON file in data/evaluation/).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from .strategies import COMPONENT_STRATEGIES

EVALUATION_FILE = Path(__file__).resolve().parent.parent / "data" / "evaluation" / "smollm2-135m.json"
# a strategy "fails" a task when it keeps less than half of dense's score (higher is better) or adds more than a
# tenth to it (lower is better: bits per character)
FAIL_BELOW, FAIL_ABOVE = 0.5, 1.1


WIDTH = 118


def wrap(note: str) -> str:
    """A note as lines of at most WIDTH characters, the continuation lines indented."""
    import textwrap

    return "\n".join(textwrap.wrap(note, WIDTH, subsequent_indent="  ", break_on_hyphens=False)) + "\n"


def _one(cols: dict, c: str):
    vals = list(dict.fromkeys(np.asarray(cols[c]).tolist()))
    return vals[0] if len(vals) == 1 else None


def header(cols: dict, auto_dtype: bool = False) -> str:
    """The assumptions behind every row, in one line: the values that are the same on all rows (the others are
    columns of the table). `auto_dtype`: the precision was chosen per device (--dtype auto)."""
    parts = []
    model, hw = _one(cols, "model"), _one(cols, "hardware")
    what = "decode step" + (f" of {model}" if model else "") + (f" on {hw}" if hw else "")
    b, s = _one(cols, "batch"), _one(cols, "seq_len")
    gen = _one(cols, "gen_len") if "gen_len" in cols else None
    if gen is not None:
        what = "generation" + what[len("decode step"):]
    if b is not None:
        parts.append(f"batch {b}")
    if s is not None:
        parts.append(f"prompt {s}" if gen is not None else f"context {s}")
    if gen is not None:
        parts.append(f"{gen} token{'' if gen == 1 else 's'} generated")
    dt, kv = _one(cols, "dtype"), _one(cols, "kv_dtype")
    act = _one(cols, "act_dtype") if "act_dtype" in cols else None
    if dt is not None:
        parts.append(f"{dt} weights" + (f" ({act} activations)" if act is not None and act != dt else "")
                     + (f", {kv} KV cache" if kv is not None and kv != dt else
                        " and KV cache" if kv is not None else "")
                     + (" (--dtype auto)" if auto_dtype else ""))
    elif auto_dtype:
        parts.append("--dtype auto: bf16 where the device has it, else fp16")
    for col, data in (("weights_on_device", "weights"), ("kv_on_device", "KV cache")):
        share = _one(cols, col) if col in cols else None
        disk_col = col.replace("device", "disk")
        disk = _one(cols, disk_col) if disk_col in cols else None
        if disk:
            parts.append(f"{share:.0%} of the {data} on the device, {disk:.0%} on the disk (the rest in host memory)"
                         if share is not None else f"{disk:.0%} of the {data} on the disk")
        elif share is not None and share < 1:
            parts.append(f"{share:.0%} of the {data} on the device (the rest streamed from host memory)")
    c = _one(cols, "compression")
    if c is not None:
        parts.append(f"compression 1/{c:g}")
    d = _one(cols, "devices")
    pp = _one(cols, "pipeline") if "pipeline" in cols else 1
    mb = _one(cols, "microbatches") if "microbatches" in cols else None
    if d is not None and pp == 1:
        parts.append(f"{d} device{'s' if d != 1 else ''}")
    elif d is not None and pp is None:
        parts.append(f"{d} device{'s' if d != 1 else ''} per pipeline stage")
    elif d is not None:
        parts.append(f"{pp} pipeline stages of {d} device{'s' if d != 1 else ''} ({pp * d} in all)"
                     + (f", {mb} micro-batch{'es' if mb != 1 else ''} in flight" if mb is not None else ""))
    return what + (": " + ", ".join(parts) if parts else "")


def varying(cols: dict) -> list[str]:
    """The columns of the header's assumptions that differ between rows (the table shows them)."""
    return [c for c in ("hardware", "model", "batch", "seq_len", "dtype", "kv_dtype", "compression", "devices",
                        "gen_len", "weights_on_device", "kv_on_device", "weights_on_disk", "kv_on_disk", "pipeline",
                        "microbatches")
            if c in cols and _one(cols, c) is None]


def legend(cols: dict) -> list[str]:
    """The lines under the table: what the columns mean and why the strategies' k differ."""
    strategies = list(dict.fromkeys(np.asarray(cols["strategy"]).tolist()))   # first-seen order: a stable legend
    if "e2e_time_s" in cols:
        out = ["whole generation: ttft = the prompt's prefill, which yields the first token; tpot = the mean of the N - "
               "1 decode steps that follow, the context growing one token a step (each step evaluated, realistic: "
               "achieved bandwidths and peaks plus each kernel's launch overhead); e2e = ttft + those steps; tok/s = "
               "batch x N / e2e; e2e speedup: dense's e2e over the strategy's. attn frac: the strategy's attention "
               "bytes over dense's at the prompt's length. fits at end: weights + KV cache (+ the strategy's extra "
               "storage) within the device memory at the last context. Per-step detail: predict --seq without "
               "--gen-len."]
    else:
        out = ["step ms: realistic (achieved bandwidths and peaks, plus each kernel's launch overhead); ideal ms: the "
               "datasheet roofline, no overhead. speedup, attn speedup: vs dense at the same point, realistic, for "
               "the step and for attention alone; ideal attn: attention's on the datasheet roofline. They part where "
               "a strategy's extra kernels cost launches the bytes saved cannot repay, and where the step is not "
               "memory bound.",
               "attn frac: the strategy's attention bytes (KV read and written, its metadata) over dense's. bound: "
               "what takes most of the step (memory, compute, link, launch overhead). fits: weights + KV cache (+ the "
               "strategy's extra storage) within the device memory."]
    comp = [s for s in strategies if s in COMPONENT_STRATEGIES]
    if comp and len(strategies) > len(comp):
        names = [COMPONENT_WORDS[s][0] for s in comp]
        who = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        how = "; ".join((f"{COMPONENT_WORDS[s][0]}: " if len(comp) > 1 else "") + COMPONENT_WORDS[s][1] for s in comp)
        out.append(f"k: positions attended. {who} first read{'s' if len(comp) == 1 else ''} r = d_h/C key components "
                   f"over all positions ({how}), then k = S/(2C) rows of K and V, so the total is about 1/C of dense; "
                   "the others read k = S/C tokens.")
    if "dsa" in strategies:
        out.append("dsa: its lightning indexer first reads every position's indexer key (d_I wide, one per layer "
                   "shared by the heads, at the KV precision), then k = S/C rows of K and V.")
    return out


# how each strategy of strategies.COMPONENT_STRATEGIES picks its r key components (the table's legend)
COMPONENT_WORDS = {"sparq": ("SparQ", "the r largest |q| components"),
                   "loki": ("Loki", "the leading principal components"),
                   "double-sparsity": ("Double Sparsity", "channels chosen offline")}


@lru_cache(maxsize=1)
def evaluation_rows() -> tuple:
    if not EVALUATION_FILE.is_file():
        return ()
    doc = json.loads(EVALUATION_FILE.read_text(encoding="utf-8"))
    return tuple(doc.get("rows", []))


def accuracy_note(strategies, compression) -> str | None:
    """One line when the bundled evaluation saw a strategy of the table fail a task at this compression (None when
    none did, or the compression was not evaluated)."""
    rows = [r for r in evaluation_rows() if abs(float(r["compression"]) - float(compression)) < 1e-9]
    dense = {r["task"]: r for r in evaluation_rows() if r["strategy"] == "dense"}
    if not rows or not dense:
        return None
    fails = []
    for s in strategies:
        if s == "dense":
            continue
        for r in rows:
            if r["strategy"] != s or r["task"] not in dense:
                continue
            d, v = float(dense[r["task"]]["score"]), float(r["score"])
            bad = v < FAIL_BELOW * d if r["higher_is_better"] else v > FAIL_ABOVE * d
            if bad:
                fails.append(f"{s} {r['task']} {v:.3g} (dense {d:.3g})")
    if not fails:
        return None
    return (f"accuracy at 1/{float(compression):g} on the bundled evaluation (SmolLM2-135M, `sparq-sim evaluate`): "
            + "; ".join(fails) + ". Fewer bytes are not a win where the task is lost.")
