"""`sparq-sim measure`: time decode-attention kernels on this machine's CPU or a CUDA GPU.

Warm-up, then repeats; CPU timings with perf_counter, GPU timings with CUDA events after synchronising; the median
of the repeats is `time_s` and the standard error of the mean `time_stderr_s`. Rows follow the measurement schema
(simulator/measured.py) plus device, threads and versions columns. The CSV is written atomically when the grid is
done; Ctrl-C leaves no file.
"""

from __future__ import annotations

import itertools
import math
import platform
import statistics
import time

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def set_threads(threads: int | None) -> None:
    """Fix torch's CPU thread count (None: leave torch's default)."""
    if threads is None:
        return
    if threads < 1:
        from sparq_sim.simulator.errors import UserError
        raise UserError(f"--threads must be at least 1, got {threads}")
    import torch
    torch.set_num_threads(threads)


def device_name(device: str) -> str:
    """What the rows' hardware column says: the GPU's name, or the CPU's with its threads."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    if device == "mps":
        return f"Apple GPU (MPS) on {cpu_name()}"
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
    elif device == "mps":
        torch.mps.synchronize()


def time_call(fn, repeats: int, warmup: int, device: str, min_time_s: float = 0.0):
    """Median and standard error of `fn()` wall times (seconds)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if device.startswith("cuda"):
        with torch.cuda.device(torch.device(device)):   # cuda:N: events on that GPU's stream
            torch.cuda.synchronize()
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
    else:
        sync(device)   # MPS runs asynchronously too: wall times around a sync
        spent = 0.0
        while len(times) < repeats or spent < min_time_s:
            t = time.perf_counter()
            fn()
            sync(device)
            dt = time.perf_counter() - t
            times.append(dt)
            spent += dt
            if len(times) >= 10 * repeats:
                break
    med = statistics.median(times)
    err = statistics.stdev(times) / math.sqrt(len(times)) if len(times) > 1 else 0.0
    return med, err, len(times)


def measure_kernels(kernels, batches, seqs, heads, kv_heads, head_dims, dtypes, rs, ks, device="cpu",
                    repeats=7, warmup=2, progress=None) -> list[dict]:
    """Time each kernel over the grid; returns rows in the measurement schema."""
    import torch

    from .kernels import KERNELS, make_inputs

    from .model import check_device
    check_device(device)
    hw_name = device_name(device)
    rows = []
    points, seen = [], set()
    for kern, B, S, (H, Hkv), d, dt, r, k in itertools.product(kernels, batches, seqs, zip(heads, kv_heads),
                                                              head_dims, dtypes, rs, ks):
        strategy = KERNELS[kern][0]
        r_ = r if strategy == "sparq" else None   # only SparQ has r; dense has neither r nor k
        k_ = k if strategy != "dense" else None
        if (r_ is not None and r_ > d) or (k_ is not None and k_ > S):
            continue
        key = (kern, B, S, H, Hkv, d, dt, r_, k_)
        if key not in seen:
            seen.add(key)
            points.append(key)
    if progress:
        progress(0, len(points))
    for n, (kern, B, S, H, Hkv, d, dt, r_, k_) in enumerate(points):
        strategy, fn = KERNELS[kern]
        r, k = r_ or 1, k_ or 1
        args = make_inputs(kern, B, S, H, Hkv, d, getattr(torch, DTYPES[dt]), device, r=r, k=k)
        with torch.inference_mode():
            t, err, n_rep = time_call(lambda: fn(**args), repeats, warmup, device)
        rows.append({
            "hardware": hw_name, "kernel": kern, "strategy": strategy,
            "k_layout": ("once" if kern.endswith("-oneK") else "twice") if strategy == "sparq" else "",
            "batch": B, "seq_len": S, "n_heads": H, "n_kv_heads": Hkv, "head_dim": d, "dtype": DTYPES[dt],
            "r": r_ if r_ is not None else "", "k": k_ if k_ is not None else "", "time_s": t, "time_stderr_s": err,
            "repeats": n_rep, "device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
        })
        if progress:
            progress(n + 1, len(points))

    return rows


MODEL_STEP = "model-step"  # the kernel name of a whole decode step of a real model (measurement schema)


def measure_model_step(model, batches, seqs, device="cpu", dtype=None, repeats=7, warmup=2, progress=None) -> list[dict]:
    """Time whole decode steps (all layers, lm_head, sampling by argmax) of a real model through transformers, dense
    attention, after a prefill of seq_len random tokens. One row per (batch, seq_len) in the measurement schema, with
    kernel 'model-step' and a `model` column naming the model (a built-in spec name or its folder). The context grows
    by one token a step; seq_len is the context at the median measured step."""
    import torch

    from ..simulator.models import BUILTIN
    from .model import load_model

    lm = load_model(model, device=device, dtype=dtype)
    m, cfg = lm.model, lm.config
    hw_name = device_name(lm.device)
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    gen = torch.Generator(device="cpu").manual_seed(0)
    import inspect
    # newer transformers name the cache argument `cache` (past_key_values is deprecated there)
    cache_kw = "cache" if "cache" in inspect.signature(m.forward).parameters else "past_key_values"
    rows, grid = [], [(B, S) for B in batches for S in seqs]
    if progress:
        progress(0, len(grid))
    for n, (B, S) in enumerate(grid):
        ids = torch.randint(10, cfg.vocab_size - 1, (B, S), generator=gen).to(lm.device)
        times = []
        with torch.inference_mode():
            out = m(input_ids=ids, use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            for i in range(warmup + repeats):
                sync(lm.device)
                t = time.perf_counter()
                out = m(input_ids=nxt, use_cache=True, **{cache_kw: cache})
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                sync(lm.device)
                if i >= warmup:
                    times.append(time.perf_counter() - t)
                cache = getattr(out, "cache", None) or out.past_key_values
        med = statistics.median(times)
        err = statistics.stdev(times) / math.sqrt(len(times)) if len(times) > 1 else 0.0
        rows.append({
            "hardware": hw_name, "kernel": MODEL_STEP, "strategy": "dense", "k_layout": "", "batch": B,
            "seq_len": S + warmup + repeats // 2, "n_heads": heads, "n_kv_heads": kv, "head_dim": lm.head_dim,
            "dtype": DTYPES.get(lm.dtype, lm.dtype), "r": "", "k": "", "time_s": med, "time_stderr_s": err,
            "repeats": len(times), "device": lm.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "model": lm.name if lm.name in BUILTIN else lm.source,
        })
        if progress:
            progress(n + 1, len(grid))
    return rows
