"""What was asked: the report's selection parsed and validated (`Request`, same meaning as `predict`'s arguments),
and the `predict` sweep over it that the charts share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..common.errors import UserError
from ..common.units import parse_dtype
from ..hardware_profiles import HardwareProfile
from ..simulator.models import ModelSpec
from ..simulator.cases import parse_compressions, resolve_hardware, resolve_models
from ..simulator.predict import decoded, predict_columns
from ..simulator.ranges import parse_axis, parse_names
from ..simulator.strategies import parse_strategies

DEFAULT_HARDWARE = "a100,h100,h200"
DEFAULT_SEQ = "1k:128k:x2"
DEFAULT_MODEL = "llama3.1-8b"   # its context reaches DEFAULT_SEQ's 128k
DEFAULT_BATCH = "1,8,64"


@dataclass
class Request:
    """The report's selection, parsed and validated (same meaning as `predict`'s arguments)."""
    hardware: list[HardwareProfile]
    models: list[ModelSpec]
    seqs: list[int]
    batches: list[int]
    strategies: list[str]
    compressions: list[float]
    dtypes: list[str]
    kv_dtype: str | None
    devices: list[int]
    r: int | None
    k: int | None
    local_window: int | None
    page_size: int | None
    k_layout: str
    kv_location: str
    weights_location: str
    traces: list[str] = field(default_factory=list)
    evaluation: str | None = None
    measured: str | None = None
    gen_len: int | None = None      # whole generations of this many tokens (predict --gen-len)


def _one(value, what: str, minimum: int) -> int | None:
    if value is None:
        return None
    vals = parse_axis(value, what, minimum=minimum)
    if len(vals) != 1:
        raise UserError(f"{what} takes one value in a report (lists are for `sparq-sim predict`), got {value!r}")
    return int(vals[0])


def _files(value, what: str = "--trace") -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, (str, Path)) else list(value)
    out = []
    for item in items:
        names = [s.strip() for s in str(item).split(",") if s.strip()]
        if not names:
            raise UserError(f"{what} {str(item)!r} names no file; give a file path")
        out += names
    return out


def _file(value, what: str) -> str | None:
    if value is None:
        return None
    if not str(value).strip():
        raise UserError(f"{what} is empty; give a file path (or leave {what} out)")
    return str(value)


def _request(hardware, model, seq_len, batch, strategies, compression, dtype, kv_dtype, devices, r, k, local_window,
             page_size, k_layout, kv_location, weights_location, trace, evaluation, measured,
             gen_len=None) -> Request:
    hws = resolve_hardware(hardware)
    models = resolve_models(model)
    comps = sorted(set(parse_compressions(compression)))
    if k_layout not in ("twice", "once"):
        raise UserError(f"--k-layout must be twice or once, got {k_layout!r}")
    req = Request(
        hardware=hws, models=models,
        seqs=sorted(set(int(s) for s in parse_axis(seq_len, "--seq", minimum=1))),
        batches=sorted(set(int(b) for b in parse_axis(batch, "--batch", minimum=1))),
        strategies=parse_strategies(strategies),
        compressions=comps,
        dtypes=list(dict.fromkeys(d.strip().lower() if d.strip().lower() == "auto" else parse_dtype(d)
                                  for d in parse_names(dtype, "--dtype"))),
        kv_dtype=parse_dtype(kv_dtype, "kv dtype") if kv_dtype is not None else None,
        devices=sorted(set(int(d) for d in parse_axis(devices, "--devices", minimum=1))),
        r=_one(r, "--r", 1), k=_one(k, "--k", 1), local_window=_one(local_window, "--local-window", 0),
        page_size=_one(page_size, "--page-size", 1),
        k_layout=k_layout, kv_location=str(kv_location), weights_location=str(weights_location),
        traces=_files(trace), evaluation=_file(evaluation, "--evaluation"), measured=_file(measured, "--measured"),
        gen_len=_one(gen_len, "--gen-len", 1),
    )
    points = len(req.hardware) * len(req.models) * len(req.seqs) * len(req.batches) * len(req.compressions) * len(
        req.dtypes) * len(req.devices)
    if req.gen_len and points * req.gen_len > 20_000_000:   # every decode step of each generation is evaluated
        raise UserError(f"the report's generations need {points * req.gen_len:,} decode steps per strategy; at most "
                        f"20,000,000 (fewer --seq or --batch values, or a shorter --gen-len)")
    if points > 20_000:
        raise UserError(f"the report's sweep has {points} points per strategy; at most 20000 make a readable report "
                        f"(use `sparq-sim predict` for large sweeps)")
    return req


# ---------------------------------------------------------------------------------------------------------------------
# the sweep: predict over what was asked


def _predict_frame(req: Request):
    import pandas as pd

    cols = decoded(predict_columns(
        hardware=req.hardware, model=req.models, seq_len=req.seqs, batch=req.batches, strategies=req.strategies,
        compression=req.compressions, dtype=",".join(req.dtypes), kv_dtype=req.kv_dtype, devices=req.devices,
        r=req.r, k=req.k, local_window=req.local_window, page_size=req.page_size, k_layout=req.k_layout,
        kv_location=req.kv_location, weights_location=req.weights_location, gen_len=req.gen_len))
    df = pd.DataFrame({c: v.astype(str) if v.dtype == object else v for c, v in cols.items()})
    df["case"] = _case_labels(df, req)
    return df


def _case_labels(df, req: Request):
    """A short label for each categorical case other than the device: the model, and whatever else varies."""
    parts = [df["model"].astype(str)]
    if len(req.dtypes) > 1:
        parts.append(df["dtype"].astype(str))
    if len(req.compressions) > 1:
        parts.append("C=" + df["compression"].map(lambda c: f"{c:g}"))
    if len(req.devices) > 1:
        parts.append("TP=" + df["devices"].astype(str))
    out = parts[0]
    for p in parts[1:]:
        out = out + " · " + p
    return out
