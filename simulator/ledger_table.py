"""The per-operator ledger as a table: one row per (hardware, model, strategy, phase, operator) of one decode step
(and its prefill), from the operators `predict.evaluate_case` times (`sparq-sim ledger`, `sparq_sim.ledger`)."""

from __future__ import annotations

import itertools

import numpy as np

from .errors import UserError
from .ledger import Precision
from .models import DEFAULT_MODEL
from .cases import (AUTO, Case, auto_dtype, parse_compressions, placement_shares, resolve_hardware,
                    resolve_models)
from .predict import evaluate_case
from .ranges import parse_axis
from .roofline import BOUNDS
from .strategies import parse_strategies
from .units import parse_dtype


LEDGER_COLUMNS = [
    "hardware", "model", "batch", "seq_len", "strategy", "phase", "op", "group", "unit", "layers", "launches",
    "weight_bytes", "act_read_bytes", "act_write_bytes", "kv_read_bytes", "kv_write_bytes", "meta_read_bytes",
    "meta_write_bytes", "comm_bytes", "bytes", "flops", "arithmetic_intensity", "tier_bytes",
    "time_s", "ideal_time_s", "memory_time_s", "compute_time_s", "link_time_s", "overhead_time_s", "bound",
]


def ledger(hardware="a100", model=DEFAULT_MODEL, seq_len=4096, batch=1, strategies=None, compression=8,
           dtype="auto", kv_dtype=None, devices=1, r=None, k=None, local_window=None, page_size=None,
           k_layout="twice", kv_location="auto", weights_location="auto", phases=("decode", "prefill"),
           act_dtype=None, weights_on_device=1.0, kv_on_device=1.0, weights_on_disk=0.0, kv_on_disk=0.0):
    """The per-operator ledger: one row per (hardware, model, strategy, phase, operator) at one batch and seq_len.

    Bytes and FLOPs are per step, all layers and devices together; `tier_bytes` maps tier name -> the bytes that pass
    it (the host's include the disk's, which cross the host link too); times are
    per step (per device: devices run in parallel). Returns a pandas DataFrame with LEDGER_COLUMNS."""
    import pandas as pd

    seqs = parse_axis(seq_len, "--seq", minimum=1)
    batches = parse_axis(batch, "--batch", minimum=1)
    comps = parse_compressions(compression)
    if len(seqs) != 1 or len(batches) != 1 or len(comps) != 1:
        raise UserError("the ledger takes one --seq, one --batch and one --compression")
    hws = resolve_hardware(hardware)
    models = resolve_models(model)
    strats = parse_strategies(strategies)
    auto = str(dtype).strip().lower() == AUTO
    dt = None if auto else parse_dtype(dtype)
    kvd = parse_dtype(kv_dtype, "kv dtype") if kv_dtype is not None else None
    act = parse_dtype(act_dtype, "activation dtype") if act_dtype is not None else None
    given = (weights_on_device, kv_on_device, weights_on_disk, kv_on_disk)
    shares = placement_shares(hws, *given)
    for flag, where, value, s in zip(("--weights-on-device", "--kv-on-device", "--weights-on-disk", "--kv-on-disk"),
                                     ("device", "device", "disk", "disk"), given, shares):
        if len(s) != 1:
            raise UserError(f"{flag} is one share kept on the {where}, between 0 and 1; got {value!r}")
    wod, kod, wdk, kdk = (s[0] for s in shares)
    if k_layout not in ("twice", "once"):
        raise UserError(f"--k-layout must be twice or once, got {k_layout!r}")
    B = np.asarray(batches, dtype=np.int64)
    S = np.asarray(seqs, dtype=np.int64)
    C = np.asarray(comps, dtype=np.float64)
    rows = []
    for hw, m in itertools.product(hws, models):
        log: dict = {}
        prec = Precision.of(auto_dtype(hw) if auto else dt, kvd, act)
        case = Case(hw, m, prec, int(devices), k_layout, kv_location, weights_location, r, k, wod, kod,
                    weights_on_disk=wdk, kv_on_disk=kdk)
        evaluate_case(case, strats, B, S, C, local_window, page_size, keep_ops=log)
        for strat in strats:
            pl, entries = log[strat]
            for op, t in entries:
                if op.phase not in phases:
                    continue
                nd = case.devices * op.layers
                val = lambda x: float(np.asarray(x).ravel()[0])  # noqa: E731
                kvb = op.kv_read + op.kv_write + op.meta_read + op.meta_write
                tiers = {}
                for i, name in enumerate(pl.tiers):
                    b = (op.weight * pl.weight_share(i) + kvb * pl.kv_share(np.asarray(pl.kv), i)
                         + (op.act_read + op.act_write) * (pl.act == i))
                    if val(b) > 0:
                        tiers[name] = val(b) * nd
                total = val(op.bytes_total()) * nd
                flops = val(op.flops) * nd
                rows.append({
                    "hardware": hw.name, "model": m.name, "batch": int(B[0]), "seq_len": int(S[0]),
                    "strategy": strat, "phase": op.phase, "op": op.name, "group": op.group, "unit": op.unit,
                    "layers": op.layers, "launches": op.launches * op.layers,
                    "weight_bytes": val(op.weight) * nd, "act_read_bytes": val(op.act_read) * nd,
                    "act_write_bytes": val(op.act_write) * nd, "kv_read_bytes": val(op.kv_read) * nd,
                    "kv_write_bytes": val(op.kv_write) * nd, "meta_read_bytes": val(op.meta_read) * nd,
                    "meta_write_bytes": val(op.meta_write) * nd, "comm_bytes": val(op.comm) * nd,
                    "bytes": total, "flops": flops, "arithmetic_intensity": flops / total if total else float("inf"),
                    "tier_bytes": tiers,
                    "time_s": val(t.time_s) * op.layers, "ideal_time_s": val(t.ideal_s) * op.layers,
                    "memory_time_s": val(t.memory_s) * op.layers, "compute_time_s": val(t.compute_s) * op.layers,
                    "link_time_s": val(t.link_s) * op.layers, "overhead_time_s": t.overhead_s * op.layers,
                    "bound": BOUNDS[int(np.asarray(t.bound).ravel()[0])],
                })
    return pd.DataFrame(rows, columns=LEDGER_COLUMNS)
