"""Software stacks: the time of whole decode steps and whole generations of a real model, as a measured stack runs them.

A kernel is timed by its implementation model (implementations.py); a decode step of a whole model by `predict`'s
roofline over the per-operator ledger. A measured step also pays what the software stack around it does: Python and
the framework per layer, weight and attention kernels that stream below the roofline, weights or KV cache offloaded
to host memory and moved over the host link (or attention run on the host, as FlexGen does when the cache is there).
Per decode step of a stack at context S (all quantities per device):

    device = roofline(S) + W / BW x (1/w_eff - 1) + KV / BW x (1/kv_eff - 1)           (the resident part)
    link   = W_host / (link_BW x link_eff) [+ KV_host / (link_BW x link_eff)]          (offloaded bytes)
    cpu    = KV_host / kv_q x cpu_bytes / host_Bps                                     (attention on the host)
    step   = max(device, link, cpu) when the stack overlaps transfers with compute, else their sum
    host   = layers x host_per_layer;  time = overlap(host, step) (asynchronous launches: the smooth maximum of
             implementations.overlap, as for kernels) or host + step

A stack whose tensor parallelism leaves lm_head whole on every device (`tp_replicates_lm_head`: gpt-fast) adds to W
the (N - 1)/N of lm_head the roofline's vocabulary split gave the other devices, in every step and in the prefill.

The efficiencies are per precision (w16, w8, w4 for weights; kv16, kv8, kv4 for the cache: dequantising kernels
stream below the roofline). A stack that dequantises with unfused elementwise code (`dequant_bytes_per_element`:
FlexGen's group-wise 4-bit) first writes a 16-bit copy of every quantised weight and cache element, in passes that
move that many bytes per element, and its matmuls and attention then read the copy: the resident quantised bytes
cost (q + dequant + 2) / q times their own reading, q being the format's bytes per element (scales included),

    W / BW x (q + dequant + 2) / q / w_eff        in place of W / (BW x weight_stream) / w_eff

so the efficiencies stay what elementwise kernels achieve (prior 1) and the structure carries the factor of ~30. One
dequantising function serves the weights and the cache, so such a stack's quantised cache goes at the weights'
efficiency of the same width (w4 for a 4-bit cache; its kv4 and kv8 play no part).
Attention on the host (FlexGen's CPU delegation) likewise moves `cpu_attention_bytes_per_element` bytes of host memory
per cached element it attends to (its copies and fp32 conversion; `..._quantized` for a compressed cache, dequantised
into fp32 first), at the host's rate `cpu_attention_Bps` (fitted; kv_q is the cache's bytes per element). W and KV are
the step's weight and KV-cache bytes, BW the profile's achieved bandwidth of the first memory tier; the offloaded
shares are (1 - weights_on_device) and (1 - kv_on_device). A step-level measurement is the mean over the decode steps
it ran (context S + 1 ... S + gen_len - 1); a whole generation (e2e) is the prefill of the prompt (`predict`'s
prefill, plus the offloaded weights' transfer) and those steps, summed exactly over every context.

The stack costs travel like the kernels' (see implementations.py): `host_per_layer` is the software's; the
efficiencies are relative to each profile. Priors come from `stacks:` in data/implementations.yaml; fitted values
from its `fitted:` block. Pure numpy (predict is numpy too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hardware_profiles import HardwareProfile
from .errors import UserError, closest
from .implementations import STACK_EFFICIENCIES, _load, fitted_defaults, overlap
from .units import WEIGHT_STREAM_EFFICIENCY, base_dtype, dtype_bytes

# every fitted cost of a stack, in the order the fit takes them (the host's time, the efficiencies, the host's
# attention rate, the prefill's efficiency)
STACK_COSTS = ("host_per_layer_s", *(e for e in STACK_EFFICIENCIES if e != "prefill"), "cpu_attention_Bps", "prefill")
# the range a fitted cost may take: an efficiency between 1/50 of the achieved bandwidth (dequantising eager code) and
# the datasheet peak
# (an achieved bandwidth is at least ~0.77 of peak in every profile); host attention from 1 to 200 GB/s
BOUNDS = {"w16": (0.02, 1.3), "w8": (0.02, 1.3), "w4": (0.02, 1.3), "kv16": (0.02, 1.3), "kv8": (0.02, 1.3),
          "kv4": (0.02, 1.3), "link": (0.1, 1.3), "disk": (0.1, 1.3), "prefill": (0.1, 1.3),
          "cpu_attention_Bps": (1e9, 200e9)}
CPU_ATTENTION_PRIOR_BPS = 20e9   # assumption: the host's elementwise torch code streams ~20 GB/s of DRAM
# Weight-only quantised matmuls do not stream at the 16-bit rate; `predict`'s roofline already reads int8 and int4
# weights at units.WEIGHT_STREAM_EFFICIENCY (gpt-fast's A100 figures: 0.77 and 0.62), so a stack's w8 and w4 are
# relative to that (prior 1). A quantised KV cache is dequantised by the attention kernels: the same factors are the
# prior for kv8 and kv4 (an assumption).
QUANT_PRIORS = {"w8": 1.0, "w4": 1.0, "kv8": WEIGHT_STREAM_EFFICIENCY["int8"], "kv4": WEIGHT_STREAM_EFFICIENCY["int4"]}
WEIGHT_KEY = {"fp32": "w16", "tf32": "w16", "bf16": "w16", "fp16": "w16", "fp8": "w8", "int8": "w8", "int4": "w4",
              "fp4": "w4", "nvfp4": "w4", "mxfp4": "w4"}
KV_KEY = {"fp32": "kv16", "tf32": "kv16", "bf16": "kv16", "fp16": "kv16", "fp8": "kv8", "int8": "kv8", "int4": "kv4",
          "fp4": "kv4", "nvfp4": "kv4", "mxfp4": "kv4"}
# a cache dequantised by the weights' own elementwise code (dequant_bytes_per_element) goes at their efficiency
KV_AS_WEIGHTS = {"kv16": "w16", "kv8": "w8", "kv4": "w4"}


@dataclass(frozen=True)
class Stack:
    name: str
    family: str | None
    host_ops_per_layer: float
    host_overlap: bool        # the host runs ahead of the device (asynchronous launches): time = overlap(host, step)
    offload_overlap: bool     # offloaded transfers overlap the device's compute (FlexGen's schedule)
    cpu_attention: bool       # attention over an offloaded cache runs on the host (FlexGen)
    roofline_only: bool       # the measured step is predict's roofline as is (sparq-sim measure --model-step)
    source: str
    dequant_bytes_per_element: float = 0.0   # unfused dequantisation to a 16-bit copy (0: fused into the kernels)
    cpu_attention_bytes_per_element: float = 2.0            # host memory moved per cached element attended on the host
    cpu_attention_bytes_per_element_quantized: float = 2.0  # the same over a quantised cache
    tp_replicates_lm_head: bool = False   # tensor parallelism leaves lm_head whole on every device (not vocab-split)


def stack_names() -> list[str]:
    return sorted(_load()["stacks"])


def get_stack(name: str) -> Stack:
    stacks = _load()["stacks"]
    if name not in stacks:
        raise UserError(f"unknown software stack {name!r}{closest(str(name), stacks)} "
                        f"(accepted: {', '.join(sorted(stacks))})")
    d = stacks[name]
    return Stack(name=name, family=d.get("family"), host_ops_per_layer=float(d.get("host_ops_per_layer", 0)),
                 host_overlap=bool(d.get("host_overlap", True)), offload_overlap=bool(d.get("offload_overlap", False)),
                 cpu_attention=bool(d.get("cpu_attention", False)), roofline_only=bool(d.get("roofline_only", False)),
                 source=d["source"], dequant_bytes_per_element=float(d.get("dequant_bytes_per_element", 0.0)),
                 cpu_attention_bytes_per_element=float(d.get("cpu_attention_bytes_per_element", 2.0)),
                 cpu_attention_bytes_per_element_quantized=float(d.get("cpu_attention_bytes_per_element_quantized",
                                                                       d.get("cpu_attention_bytes_per_element", 2.0))),
                 tp_replicates_lm_head=bool(d.get("tp_replicates_lm_head", False)))


def prior_stack_costs(stack: Stack, families: dict | None = None) -> dict[str, float]:
    """Priors: host = host_ops_per_layer x the family's host cost per op on a GPU (fitted on kernel datasets where
    the family was measured, else its prior); 16-bit efficiencies 1, quantised ones QUANT_PRIORS (1 where the stack
    dequantises with unfused elementwise code: the structure carries the cost); host attention
    CPU_ATTENTION_PRIOR_BPS."""
    fams = families if families is not None else fitted_defaults()["families"]
    per_op = fams.get(stack.family or "", {}).get("gpu", fams.get("*", {}).get("gpu"))
    if per_op is None:
        per_op = _load()["families_prior"].get(stack.family, 10e-6) if stack.family else 0.0
    quant = QUANT_PRIORS if stack.dequant_bytes_per_element == 0 else dict.fromkeys(QUANT_PRIORS, 1.0)
    return {"host_per_layer_s": stack.host_ops_per_layer * per_op, "w16": 1.0, "kv16": 1.0, **quant,
            "link": 1.0, "disk": 1.0, "cpu_attention_Bps": CPU_ATTENTION_PRIOR_BPS, "prefill": 1.0}


def stack_costs(stack: Stack, defaults: dict | None = None) -> dict[str, float]:
    d = defaults if defaults is not None else fitted_defaults()
    c = prior_stack_costs(stack, d.get("families", {}))
    c.update({k: v for k, v in (d.get("stacks", {}).get(stack.name) or {}).items() if k in STACK_COSTS})
    return c


@dataclass
class RowBase:
    """What one measured row's prediction needs, computed once (independent of the stack costs): per decode step over
    the contexts it ran, the roofline time and the bytes by kind; the prefill; the profile's rates."""
    level: str
    steps: np.ndarray        # roofline time of each decode step (s)
    W: np.ndarray            # weight bytes per device per step
    KV: np.ndarray           # KV-cache bytes (read + write + metadata) per device per step
    prefill: float           # roofline prefill time (s)
    prefill_W: float         # weight bytes per device of the prefill
    layers: int
    bw: float                # achieved bandwidth of the first memory tier (B/s)
    w_bw: float              # the rate the roofline read the weights at (bw, less for int8 / int4 weights)
    link_bw: float           # achieved bandwidth of the host link (B/s)
    weights_key: str
    kv_key: str
    w_elem_bytes: float      # bytes per element of the weights' and the cache's formats, scales included
    kv_elem_bytes: float
    w_host: float            # offloaded share of the weights (host memory and disk)
    kv_host: float           # offloaded share of the KV cache (host memory and disk)
    gen_len: int             # tokens generated (1: the prefill's token only)
    host_scale: float = 1.0  # the host speed a few-shot calibration measured (calibration.host_scale)
    w_disk: float = 0.0      # the shares of those on the disk behind the host
    kv_disk: float = 0.0
    KV_write: np.ndarray | float = 0.0   # the cache bytes each decode step writes (its new rows)
    prefill_KV: float = 0.0  # the cache bytes the prefill writes (the prompt's rows)
    disk_bw: float = 0.0     # the disk's achieved read and write rates (B/s; 0: no disk)
    disk_write_bw: float = 0.0
    lm_head_rest: float = 0.0   # lm_head bytes the other devices hold under tensor parallelism (a stack that
                                # replicates lm_head reads them too, each step and in the prefill)


def row_base(hw: HardwareProfile, model, level: str, batch: int, seq_len: int, gen_len: int | None, strategy: str,
             weights: str, kv_dtype: str, devices: int = 1, k=None, page_size=None, weights_on_device: float = 1.0,
             kv_on_device: float = 1.0, weights_on_disk: float = 0.0, kv_on_disk: float = 0.0) -> RowBase:
    from .predict import sweep

    def predict_columns(**kw):   # a measured row's contexts as they were run: no warning about the model's maximum
        return sweep(**kw).columns()

    if (weights_on_disk or kv_on_disk) and hw.disk is None:
        raise UserError(f"hardware {hw.name} has no disk tier: weights_on_disk and kv_on_disk need a profile with a "
                        "`disk:` section")
    n = int(gen_len) if gen_len and gen_len > 1 else 1
    contexts = seq_len + np.arange(1, n) if n > 1 else np.array([seq_len])
    cols = predict_columns(hardware=hw, model=model, seq_len=contexts.tolist(), batch=int(batch),
                           strategies=[strategy], dtype=weights, kv_dtype=kv_dtype, devices=int(devices), k=k,
                           page_size=page_size)
    per_dev = 1.0 / devices
    kv = (cols["kv_read_bytes"] + cols["kv_write_bytes"] + cols["metadata_bytes"]) * per_dev
    first = predict_columns(hardware=hw, model=model, seq_len=int(seq_len), batch=int(batch), strategies=[strategy],
                            dtype=weights, kv_dtype=kv_dtype, devices=int(devices), k=k, page_size=page_size)
    from .models import load_model_spec
    m = load_model_spec(model)
    return RowBase(level=level, steps=cols["time_s"], W=cols["weight_bytes"] * per_dev, KV=kv,
                   prefill=float(first["prefill_time_s"][0]), prefill_W=float(first["weight_bytes"][0]) * per_dev,
                   layers=m.n_layers, bw=hw.memory[0].achieved_Bps * hw.bandwidth_scale,
                   w_bw=hw.memory[0].achieved_Bps * hw.bandwidth_scale * WEIGHT_STREAM_EFFICIENCY.get(base_dtype(weights), 1.0),
                   link_bw=hw.host_link.achieved_Bps,
                   weights_key=WEIGHT_KEY[base_dtype(weights)], kv_key=KV_KEY[base_dtype(kv_dtype)],
                   w_elem_bytes=dtype_bytes(weights), kv_elem_bytes=dtype_bytes(kv_dtype),
                   w_host=1.0 - float(weights_on_device),
                   kv_host=1.0 - float(kv_on_device), gen_len=n,
                   host_scale=(hw.calibration or {}).get("host_scale", 1.0),
                   w_disk=float(weights_on_disk), kv_disk=float(kv_on_disk), KV_write=cols["kv_write_bytes"] * per_dev,
                   prefill_KV=float(first["kv_write_bytes"][0]) * per_dev * int(seq_len),
                   disk_bw=hw.disk.achieved_Bps if hw.disk else 0.0,
                   disk_write_bw=hw.disk.achieved_write_Bps if hw.disk else 0.0,
                   lm_head_rest=m.lm_head_params * dtype_bytes(weights) * (1.0 - per_dev))


def scaled_base(b: RowBase, host_factor: float, bandwidth_factor: float) -> RowBase:
    """The row on a device whose host is `host_factor` times as slow and whose memory achieves `bandwidth_factor`
    times the bandwidth, to first order: the weight and cache reads of the roofline's steps scale with the bandwidth
    (decode steps are memory bound), the prefill (compute bound) does not. For fitting those two factors
    (fitting.fit_device) without evaluating `predict` again at every trial."""
    import dataclasses

    extra = (b.W / b.w_bw + b.KV / b.bw) * (1.0 / bandwidth_factor - 1.0)
    return dataclasses.replace(b, steps=np.maximum(b.steps + extra, 0.0), bw=b.bw * bandwidth_factor,
                               w_bw=b.w_bw * bandwidth_factor, host_scale=b.host_scale * host_factor)


def unfused_factor(q: float, dequant_bytes: float) -> float:
    """Bytes moved per byte of a quantised tensor (q bytes per element) that unfused code dequantises to a 16-bit copy
    in passes of `dequant_bytes` per element, the copy then read once (2 bytes per element)."""
    return (q + dequant_bytes + 2.0) / q


def step_times(stack: Stack, c: dict, b: RowBase) -> np.ndarray:
    """Seconds of each decode step of the row under the stack costs `c`."""
    if stack.roofline_only:
        return b.steps
    w_eff, kv_eff = c[b.weights_key], c[b.kv_key]
    W_dev, KV_dev = b.W * (1 - b.w_host), b.KV * (1 - b.kv_host)
    if stack.tp_replicates_lm_head:   # every device reads the whole lm_head, not its share of the vocabulary
        W_dev = W_dev + b.lm_head_rest
    # the roofline read all bytes at the achieved bandwidth (weights at w_bw): swap that for the stack's
    # efficiencies, its unfused dequantisation and the placement
    w_time = W_dev / b.w_bw / w_eff
    kv_time = KV_dev / b.bw / kv_eff
    dq = stack.dequant_bytes_per_element
    if dq > 0 and b.w_elem_bytes < 2:
        w_time = W_dev / b.bw * unfused_factor(b.w_elem_bytes, dq) / w_eff
    if dq > 0 and b.kv_elem_bytes < 2:   # the same elementwise code dequantises both: the weights' efficiency
        kv_time = KV_dev / b.bw * unfused_factor(b.kv_elem_bytes, dq) / c[KV_AS_WEIGHTS[b.kv_key]]
    device = b.steps - b.W / b.w_bw - b.KV / b.bw + w_time + kv_time
    device = np.maximum(device, 0.0)
    link_bw = b.link_bw * c["link"]
    link = b.W * b.w_host / link_bw
    cpu = np.zeros_like(device)
    if b.kv_host > 0:
        if stack.cpu_attention:
            per = (stack.cpu_attention_bytes_per_element if b.kv_elem_bytes >= 2
                   else stack.cpu_attention_bytes_per_element_quantized)
            cpu = b.KV * b.kv_host / b.kv_elem_bytes * per / c["cpu_attention_Bps"]
        else:
            link = link + b.KV * b.kv_host / link_bw
    # the disk behind the host: its shares of the weights and of the cache's reads at its read rate, the cache's new
    # rows at its write rate (they also crossed the host link above, or reach the host's attention)
    disk = disk_time(b, c, b.W * b.w_disk + (b.KV - b.KV_write) * b.kv_disk, b.KV_write * b.kv_disk)
    step = (np.maximum(np.maximum(np.maximum(device, link), cpu), disk) if stack.offload_overlap
            else device + link + cpu + disk)
    host = b.layers * c["host_per_layer_s"] * b.host_scale
    return overlap(host, step) if stack.host_overlap else host + step


def disk_time(b: RowBase, c: dict, read_bytes, write_bytes):
    """Seconds the disk takes to read and to write those bytes (at the stack's share of its rates)."""
    if b.w_disk == 0 and b.kv_disk == 0:
        return 0.0
    return read_bytes / (b.disk_bw * c["disk"]) + write_bytes / (b.disk_write_bw * c["disk"])


def prefill_time(stack: Stack, c: dict, b: RowBase) -> float:
    """The prompt's prefill: its compute, the offloaded weights over the host link, and the prompt's cache rows
    written to the disk when the cache lives there."""
    if stack.roofline_only:
        return b.prefill
    rest = b.lm_head_rest / b.w_bw if stack.tp_replicates_lm_head else 0.0   # its last position's logits
    compute = (b.prefill + rest) / c["prefill"]
    link = b.prefill_W * b.w_host / (b.link_bw * c["link"])
    disk = float(disk_time(b, c, b.prefill_W * b.w_disk, b.prefill_KV * b.kv_disk))
    t = max(compute, link, disk) if stack.offload_overlap else compute + link + disk
    return t + b.layers * c["host_per_layer_s"] * b.host_scale


def row_time(stack: Stack, c: dict, b: RowBase) -> float:
    """The measured quantity of a row: the mean decode step (level step) or the whole generation (level e2e)."""
    if b.level == "e2e":
        steps = step_times(stack, c, b) if b.gen_len > 1 else np.zeros(0)
        return prefill_time(stack, c, b) + float(steps.sum())
    steps = step_times(stack, c, b)
    return float(steps.mean())
