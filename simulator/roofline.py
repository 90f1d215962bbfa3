"""Roofline timing of ledger operators on a hardware profile.

Per operator (per device, per occurrence):
    realistic = max(bytes on each tier / achieved bandwidth, FLOPs / achieved peak, collective time) + launches x overhead
                (int8 / int4 weights at units.WEIGHT_STREAM_EFFICIENCY of the achieved bandwidth)
    ideal     = max(bytes on each tier / peak bandwidth,     FLOPs / peak,          collective bytes / link peak)
Tiers are independent channels (HBM and a PCIe host link stream concurrently), so an operator waits for the slowest.
Operators run one after another; the step time is their sum.
A collective is an all-reduce as NCCL's own tuning model (src/graph/tuning.cc) costs it within one node: the link's
fixed cost per collective, then a ring's 2 (N-1) steps with 2 (N-1)/N of the message over each device's link
(`allreduce_time`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..hardware_profiles import HardwareProfile
from .errors import UserError
from .ledger import NUMBERS, Op, Precision
from .units import COMPUTE_DTYPE

BOUNDS = ("memory", "compute", "link", "overhead")
HOST = "host"
DISK = "disk"


@dataclass
class Placement:
    """Where each kind of data lives: an index into `tiers` (device tiers in profile order, then the host link, then
    the disk when the profile has one).

    Indices may be arrays over the sweep rows (the KV cache of a small batch fits SRAM, of a large one not).
    `weights_host` and `kv_host` are the shares kept in host memory instead (FlexGen's percentages), `weights_disk`
    and `kv_disk` the shares on the disk behind it: those bytes stream over the host link (the disk's cross it too,
    disk -> host memory -> device) and the disk's also at the disk's rates, while the rest streams from the device
    tier, all concurrently (each operator takes the slowest), as FlexGen overlaps the transfer of the next weights
    and cache with the current computation. `write_Bps`: each tier's achieved rate for writes (the disk's is its
    own; None: as for reads)."""
    tiers: tuple[str, ...]
    peak_Bps: np.ndarray
    achieved_Bps: np.ndarray
    weights: np.ndarray | int
    kv: np.ndarray | int
    act: int
    weights_host: float = 0.0
    kv_host: float = 0.0
    weights_disk: float = 0.0
    kv_disk: float = 0.0
    write_Bps: np.ndarray | None = None
    write_peak_Bps: np.ndarray | None = None

    @property
    def host_i(self) -> int:
        return self.tiers.index(HOST)

    @property
    def disk_i(self) -> int:
        return self.tiers.index(DISK) if DISK in self.tiers else -1

    def weight_share(self, t: int):
        """The share of the weights whose bytes pass tier t."""
        return self._share(self.weights, t, self.weights_host, self.weights_disk)

    def kv_share(self, kv_tier, t: int):
        return self._share(kv_tier, t, self.kv_host, self.kv_disk)

    def idle(self, t: int, kv_tier) -> bool:
        """Whether no byte passes tier t: the activations are elsewhere and the weights' and the cache's shares of it
        (`_share`) are zero. kv_tier: the cache's tier, a number or an array (per operator and row)."""
        w = self.weight_share(t)
        if t == self.act or (w.any() if type(w) is np.ndarray else w):
            return False
        placed = bool((kv_tier == t).any()) if type(kv_tier) is np.ndarray else kv_tier == t
        return not self.kv_share(t if placed else None, t)   # the largest share of it any operator's cache has

    def _share(self, where, t: int, host: float, disk: float):
        if t == self.disk_i:
            return disk
        return (where == t) * (1.0 - host - disk) + ((host + disk) if t == self.host_i else 0.0)


def tier_table(hw: HardwareProfile):
    """(names, peak, achieved, capacities) of the device tiers, the host and (when the profile has one) the disk."""
    names = tuple(t.name for t in hw.memory) + (HOST,)
    peak = [t.bandwidth_Bps for t in hw.memory] + [hw.host_link.bandwidth_Bps]
    # a few-shot calibration of the device (calibration.bandwidth_scale) scales what its memory tiers achieve
    achieved = [t.achieved_Bps * hw.bandwidth_scale for t in hw.memory] + [hw.host_link.achieved_Bps]
    caps = [t.capacity_bytes for t in hw.memory] + [hw.host_link.capacity_bytes]
    if hw.disk is not None:
        names += (DISK,)
        peak.append(hw.disk.bandwidth_Bps)
        achieved.append(hw.disk.achieved_Bps)
        caps.append(hw.disk.capacity_bytes)
    return names, np.array(peak), np.array(achieved), np.array(caps)


def write_rates(hw: HardwareProfile, achieved: np.ndarray, peak: np.ndarray):
    """Each tier's (achieved, peak) rate for writes: the disk's own write bandwidth; every other tier's as for reads."""
    if hw.disk is None:
        return None, None
    w, p = achieved.copy(), peak.copy()
    w[-1], p[-1] = hw.disk.achieved_write_Bps, hw.disk.write_bandwidth_Bps
    return w, p


def _tier_memory(pl: Placement, t: int, w, kv_bytes, kv_rd, kv_wr, act_bytes, kv_tier, w_eff: float):
    """(realistic, ideal) seconds of tier t for an operator's bytes: weights w, cache reads kv_rd and writes kv_wr,
    activations. Weight-only quantised weights stream below the achieved rate (units.WEIGHT_STREAM_EFFICIENCY) on the
    device; the disk reads at its read rate and writes at its write rate."""
    ws = w * pl.weight_share(t)
    share = pl.kv_share(kv_tier, t)
    if t == pl.disk_i:
        rd, wr = ws + kv_rd * share, kv_wr * share
        return (rd / pl.achieved_Bps[t] + wr / pl.write_Bps[t],
                rd / pl.peak_Bps[t] + wr / pl.write_peak_Bps[t])
    b = ws + kv_bytes * share + act_bytes * (pl.act == t)
    slow = b if w_eff == 1 else b + ws * (1 / w_eff - 1)   # (adding ws x 0 changes no finite byte count)
    return slow / pl.achieved_Bps[t], b / pl.peak_Bps[t]


def matrix_peak(hw: HardwareProfile, dtype: str) -> float:
    cd = COMPUTE_DTYPE[dtype]
    if cd not in hw.matrix.peak_flops:
        how = "" if cd == dtype else f" (which computes in {cd})"
        raise UserError(f"hardware {hw.name} lists no matrix throughput for {dtype}{how}; accepted there: "
                        f"{', '.join(hw.matrix.peak_flops)} (quantised weights on units without their format: "
                        f"--act bf16, weight-only)")
    return hw.matrix.peak_flops[cd]


def vector_peak(hw: HardwareProfile) -> float:
    # softmax, norms and selection run in fp32 (SparQ, Ribar et al. ICML 2024: both softmaxes in fp32)
    if "fp32" in hw.vector.peak_flops:
        return hw.vector.peak_flops["fp32"]
    return min(hw.vector.peak_flops.values())


def allreduce_time(message_bytes, devices: int, link) -> np.ndarray:
    """Realistic time of an all-reduce of `message_bytes` per device over `devices` devices joined by `link` (one
    node): the link's fixed cost per collective, 2 (N-1) hops, and 2 (N-1)/N of the message over each link.

    NCCL's latency model (src/graph/tuning.cc) gives a ring all-reduce 2 (N-1) steps of the link's latency and a tree
    2 ((N/nodes - 1) x intra-node latency + log2(nodes) x inter-node latency): within a node its tree is a chain (the
    double binary tree spans nodes), with the ring's 2 (N-1) hops and twice the message, so the ring is never slower
    there. Decode's messages (batch x d_model activations) are small: the base latency and the hops dominate."""
    N = int(devices)
    n = np.asarray(message_bytes, dtype=np.float64)
    return link.base_latency_s + 2 * (N - 1) * link.latency_s + 2 * (N - 1) / N * n / link.achieved_Bps


@dataclass
class OpTimes:
    time_s: np.ndarray
    ideal_s: np.ndarray
    memory_s: np.ndarray
    compute_s: np.ndarray
    link_s: np.ndarray
    overhead_s: float
    bound: np.ndarray   # index into BOUNDS (0..2) of the largest term of the realistic time


def time_op(op: Op, hw: HardwareProfile, pl: Placement, prec: Precision, devices: int) -> OpTimes:
    kv_bytes = op.kv_read + op.kv_write + op.meta_read + op.meta_write
    kv_rd, kv_wr = op.kv_read + op.meta_read, op.kv_write + op.meta_write
    act_bytes = op.act_read + op.act_write
    mem_real = 0.0
    mem_ideal = 0.0
    for t in range(len(pl.tiers)):
        real, ideal = _tier_memory(pl, t, op.weight, kv_bytes, kv_rd, kv_wr, act_bytes, pl.kv, prec.w_eff)
        mem_real = np.maximum(mem_real, real)
        mem_ideal = np.maximum(mem_ideal, ideal)
    if op.unit == "matrix":
        peak, eff = matrix_peak(hw, prec.compute or prec.dtype), hw.matrix.efficiency
    else:
        peak, eff = vector_peak(hw), hw.vector.efficiency
    comp_ideal = op.flops / peak
    comp_real = comp_ideal / eff
    if devices > 1 and op.unit == "link":
        link_ideal = 2 * (devices - 1) / devices * op.comm / hw.device_link.bandwidth_Bps
        link_real = allreduce_time(op.comm, devices, hw.device_link)
    else:
        link_ideal = link_real = 0.0
    busy = np.maximum(np.maximum(mem_real, comp_real), link_real)
    # which term is the largest (ties go to memory, then compute): 0 memory, 1 compute, 2 link
    if np.ndim(link_real) == 0 and link_real == 0:
        bound = np.where(comp_real > mem_real, 1, 0).astype(np.int8)
    else:
        bound = np.where(link_real > np.maximum(mem_real, comp_real), 2,
                         np.where(comp_real > mem_real, 1, 0)).astype(np.int8)
    overhead = op.launches * hw.kernel_launch_s
    return OpTimes(
        time_s=busy + overhead,
        ideal_s=np.maximum(np.maximum(mem_ideal, comp_ideal), link_ideal),
        memory_s=mem_real, compute_s=comp_real, link_s=link_real, overhead_s=overhead,
        bound=bound,
    )


_BYTE_FIELDS = ("weight", "act_read", "act_write", "kv_read", "kv_write", "meta_read", "meta_write", "flops", "comm")
_NUMBERS = Op._fields[NUMBERS]   # layers, launches, then flops and the byte fields, in an Op's order
_BYTE_INDEX = [_NUMBERS.index(name) for name in _BYTE_FIELDS]
_UNITS = {"matrix": 0, "vector": 1, "link": 2}


@dataclass
class StackedTimes:
    """`time_op` for a list of operators at once: every array has the operators on its first axis (ops x rows)."""
    fields: dict            # name of a byte / FLOP field -> (ops x rows) array
    layers: np.ndarray      # (ops,) occurrences per step
    time_s: np.ndarray
    ideal_s: np.ndarray
    overhead_s: np.ndarray  # (ops,)
    bound: np.ndarray


def _field_rows(ops: list[Op], rows: int, numbers: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The byte and FLOP fields of `ops` as one (fields x ops x rows) float64 array (_BYTE_FIELDS' order), and their
    layers and launches (ops,). Each field is a number or an array broadcasting to `rows`; with `numbers` (every field
    a number: a single configuration, its ledger on Python numbers), one pass over the operators' numbers fills it
    all."""
    k, nf = len(ops), len(_BYTE_FIELDS)
    if numbers and rows == 1:
        try:   # every operator's numbers, one after the other
            a = np.fromiter(itertools.chain.from_iterable(op[NUMBERS] for op in ops), dtype=np.float64,
                            count=k * len(_NUMBERS))
        except (TypeError, ValueError):   # an array among them after all: each field on its own, below
            a = None
        if a is not None:
            a = np.ascontiguousarray(a.reshape(k, len(_NUMBERS)).T)   # numbers x ops
            return a[_BYTE_INDEX].reshape(nf, k, 1), a[0], a[1]
    out = np.empty((nf, k, rows))
    flat = out.reshape(-1, rows)
    for i, v in enumerate(getattr(op, name) for name in _BYTE_FIELDS for op in ops):
        flat[i] = v
    return out, np.array([op.layers for op in ops], dtype=np.float64), \
        np.array([op.launches for op in ops], dtype=np.float64)


def time_ops(ops: list[Op], hw: HardwareProfile, pl: Placement, prec: Precision, devices: int,
             rows: int, numbers: bool = False) -> StackedTimes:
    """What `time_op` gives for each operator, computed with the operators stacked on one axis (one numpy call per
    term, not one per term and operator: a single-configuration prediction is dominated by that overhead). Rows are
    the sweep's points (every field broadcasts to `rows`); the placement's KV tier may also be per operator and row
    (ops x rows: several strategies timed together). Same formulas and the same result as `time_op`. `numbers`: every
    operator's fields are numbers, not arrays (one configuration; `_field_rows`)."""
    k = len(ops)
    fields, layers, launches = _field_rows(ops, rows, numbers)
    f = dict(zip(_BYTE_FIELDS, fields))
    unit = np.array([_UNITS[op.unit] for op in ops], dtype=np.int8)[:, None]
    kv_bytes = f["kv_read"] + f["kv_write"] + f["meta_read"] + f["meta_write"]
    kv_rd, kv_wr = (f["kv_read"] + f["meta_read"], f["kv_write"] + f["meta_write"]) if pl.disk_i >= 0 else (0, 0)
    act_bytes = f["act_read"] + f["act_write"]
    kv_tier = pl.kv   # one tier for every operator and row (a number), or an array of them
    if type(kv_tier) is not int:
        kv_tier = np.asarray(kv_tier)
        if kv_tier.shape != (k, rows):
            kv_tier = np.broadcast_to(kv_tier, (k, rows) if kv_tier.ndim == 2 else (rows,))
    mem_real = np.zeros((k, rows))
    mem_ideal = np.zeros((k, rows))
    for t in range(len(pl.tiers)):
        if pl.idle(t, kv_tier):   # no byte passes it: its times are zeros, which the maxima below would not change
            continue
        real, ideal = _tier_memory(pl, t, f["weight"], kv_bytes, kv_rd, kv_wr, act_bytes, kv_tier, prec.w_eff)
        mem_real = np.maximum(mem_real, real)
        mem_ideal = np.maximum(mem_ideal, ideal)
    matrix = unit == _UNITS["matrix"]
    peak = np.where(matrix, matrix_peak(hw, prec.compute or prec.dtype) if matrix.any() else 1.0, vector_peak(hw))
    eff = np.where(matrix, hw.matrix.efficiency, hw.vector.efficiency)
    comp_ideal = f["flops"] / peak
    comp_real = comp_ideal / eff
    link = (unit == _UNITS["link"]) & (devices > 1)
    if link.any():
        link_ideal = np.where(link, 2 * (devices - 1) / devices * f["comm"] / hw.device_link.bandwidth_Bps, 0.0)
        link_real = np.where(link, allreduce_time(f["comm"], devices, hw.device_link), 0.0)
    else:
        link_ideal = link_real = np.zeros((k, rows))
    busy = np.maximum(np.maximum(mem_real, comp_real), link_real)
    bound = np.where(link_real > np.maximum(mem_real, comp_real), 2, np.where(comp_real > mem_real, 1, 0)).astype(
        np.int8)
    overhead = launches * hw.kernel_launch_s
    return StackedTimes(fields=f, layers=layers, time_s=busy + overhead[:, None],
                        ideal_s=np.maximum(np.maximum(mem_ideal, comp_ideal), link_ideal),
                        overhead_s=overhead, bound=bound)
