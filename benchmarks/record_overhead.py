"""Recording overhead: time to decode N tokens with tracing vs plain transformers `generate`.

    python benchmarks/record_overhead.py [--tokens 32] [--context 512] [--runs 3] [--strategy sparq] [--compression 8]
                                         [--quick]

Prints the median wall time of `--runs` runs (after one warm-up) of greedy `model.generate` on the same prompt:
  plain     transformers' own sdpa attention, no sparq_ref at all
  strategy  the sparq_ref attention running the strategy (elements counted, no trace)
  traced    the same with every (step, layer, KV head) row written to a Parquet trace (dense attention recomputed at
            each step for oracle_mass and out_rel_err), the file closed and renamed
each one's total, its decode time (total minus a 1-token plain generate: the prompt's prefill), the decode time per
token and its ratio to plain, then the figures for `benchmarks/run` (common.emit). Figures only: no target (the
README quotes the traced/plain ratio measured last).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import emit, figure  # noqa: E402

README_TRACED_X = 1.89  # traced / plain decode per token, batch 1, as quoted in README.md (update with the README)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="local Hugging Face folder (default: bundled SmolLM2-135M)")
    ap.add_argument("--tokens", type=int, default=None, help="tokens to decode (default 32; 8 with --quick)")
    ap.add_argument("--context", type=int, default=None, help="prompt tokens (default 512; 128 with --quick)")
    ap.add_argument("--runs", type=int, default=None,
                    help="timed runs per mode; the median is printed (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a short prompt, few tokens, one run")
    ap.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    ap.add_argument("--strategy", default="sparq")
    ap.add_argument("--compression", type=float, default=8.0)
    a = ap.parse_args(argv)
    a.tokens = a.tokens or (8 if a.quick else 32)
    a.context = a.context or (128 if a.quick else 512)
    a.runs = a.runs or (1 if a.quick else 3)

    import torch

    from sparq_sim.sparq_ref import hf
    from sparq_sim.sparq_ref.model import load_model
    from sparq_sim.sparq_ref.tasks import make_samples
    from sparq_sim.traces import TraceWriter

    t0 = time.perf_counter()
    lm = load_model(a.model)
    load_s = time.perf_counter() - t0
    tok, model = lm.tokenizer, lm.model
    prompts = [s.prompt for s in make_samples("bpc", tok, a.batch, length=a.context)]
    enc = tok(prompts, return_tensors="pt", padding=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    cfg = hf.StrategyConfig(a.strategy, a.compression)
    gen = dict(max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False, pad_token_id=tok.pad_token_id)

    def plain():
        model.set_attn_implementation("sdpa")
        try:
            with torch.no_grad():
                model.generate(**enc, **gen)
        finally:
            hf.install(model)

    def strategy():
        with torch.no_grad(), hf.Session(cfg):
            model.generate(**enc, **gen)

    def traced():
        with tempfile.TemporaryDirectory() as d:
            meta = {"model": {"name": lm.name, **lm.spec()}, "strategy": cfg.strategy, "params": cfg.describe(),
                    "dtypes": {"kv": lm.dtype}, "task": {"name": "benchmark"}}
            with TraceWriter(Path(d) / "t.parquet", meta) as w, torch.no_grad(), hf.Session(cfg, sink=w.write):
                model.generate(**enc, **gen)

    def prefill_only():
        model.set_attn_implementation("sdpa")
        try:
            with torch.no_grad():
                model.generate(**enc, **{**gen, "max_new_tokens": 1, "min_new_tokens": 1})
        finally:
            hf.install(model)

    modes = {"prefill": prefill_only, "plain": plain, "strategy": strategy, "traced": traced}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m, fn in modes.items():
        fn()  # warm-up
    for _ in range(a.runs):
        for m, fn in modes.items():  # interleaved, so load on the machine hits every mode alike
            t = time.perf_counter()
            fn()
            times[m].append(time.perf_counter() - t)

    print(f"model {lm.name} on {lm.device} ({lm.dtype}), loaded in {load_s:.1f} s; prompt {enc['input_ids'].shape[1]} "
          f"tokens x batch {a.batch}; {a.tokens} new tokens; {a.strategy} at 1/{a.compression:g}; "
          f"median of {a.runs} runs (torch threads: {torch.get_num_threads()})")
    pre = statistics.median(times["prefill"])
    base = statistics.median(times["plain"]) - pre
    print(f"prefill (plain, 1 token): {pre:.2f} s; below, decode = total - prefill")
    print(f"{'mode':<10}{'total s':>9}{'decode s':>10}{'ms/token':>10}{'x plain':>9}   runs (s)")
    ratio = {}
    for m in ("plain", "strategy", "traced"):
        med = statistics.median(times[m])
        dec = med - pre
        ratio[m] = dec / base
        runs = ", ".join(f"{x:.2f}" for x in times[m])
        print(f"{m:<10}{med:>9.2f}{dec:>10.2f}{1e3 * dec / (a.tokens - 1):>10.1f}{dec / base:>9.2f}   {runs}")
    what = (f"recording overhead, {lm.name}, batch {a.batch}, {enc['input_ids'].shape[1]}-token prompt, "
            f"{a.tokens} tokens, {a.strategy} 1/{a.compression:g}")
    emit([figure(what, f"traced / plain `generate`, decode per token (median of {a.runs})", ratio["traced"], "x",
                 f"reported (README: {README_TRACED_X}x)"),
          figure(what, f"{a.strategy} untraced / plain `generate`, decode per token", ratio["strategy"], "x", ""),
          figure(what, "plain `generate`, decode per token", 1e3 * base / (a.tokens - 1), "ms", "")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
