"""The categorical axes of a prediction: a `Case` (hardware, model, precisions, devices, placement, overrides), what
no grid point of it changes (`CaseFixed`), and the arguments of `predict` parsed and checked into cases and numeric
axes (`parse_sweep`; what `predict.sweep` turns into a `Sweep`). The parse of a set of built-in names and words is kept
between calls (issue 16: a loop of single-configuration calls parses only its numbers)."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple

import numpy as np

from ..hardware_profiles import HardwareProfile, load_hardware
from .errors import UserError
from .ledger import Parallel, Precision, kv_geometry, weight_bytes_per_device
from .models import BUILTIN, DEFAULT_MODEL, ModelSpec, load_model_spec
from .ranges import parse_axis, parse_names
from .roofline import DISK, HOST, Placement, matrix_peak, tier_table, write_rates
from .strategies import parse_strategies
from .units import parse_dtype


@dataclass(frozen=True)
class Case:
    """One point of the categorical axes."""
    hw: HardwareProfile
    model: ModelSpec
    prec: Precision
    devices: int
    k_layout: str
    kv_location: str
    weights_location: str
    r: int | None
    k: int | None
    weights_on_device: float = 1.0   # the rest on the host, streamed over the host link (FlexGen's percentages)
    kv_on_device: float = 1.0
    pipeline: int = 1                # pipeline stages, each of `devices` tensor-parallel devices
    microbatches: int | None = None  # micro-batches in flight through the pipeline (default: one per stage)
    weights_on_disk: float = 0.0     # shares on the disk behind the host (FlexGen's third tier)
    kv_on_disk: float = 0.0

    @cached_property
    def fixed(self) -> "CaseFixed":
        """What `evaluate_case` needs of this case at every grid point, worked out once (a case is immutable)."""
        return CaseFixed.of(self)


def _unique(items, key, what: str = "", origin=None):
    """Items once each, by `key`; two different items under one name are an error, never one dropped in silence
    (a user's profile named like a built-in, two model folders with one name)."""
    out = []
    for x in items:
        same = [y for y in out if key(y) == key(x)]
        if not same:
            out.append(x)
        elif same[0] != x and origin is not None:
            raise UserError(f"two {what} are both named {key(x)!r} ({origin(same[0])} and {origin(x)}); give one "
                            f"of them another name, or give it once")
    return out


def resolve_hardware(value) -> list[HardwareProfile]:
    """A profile, a list, or a comma list of names / YAML paths -> profiles (each once)."""
    items = value if isinstance(value, (list, tuple)) else [value] if isinstance(value, HardwareProfile) else \
        parse_names(value, "--gpu")
    return _unique([load_hardware(h) for h in items], lambda p: p.name, "hardware profiles",
                   lambda p: f"the file {p.path}" if p.path and os.path.basename(p.path) != f"{p.name}.yaml"
                   or "/hardware_profiles/" not in p.path.replace(os.sep, "/") else f"the built-in {p.name}")


def resolve_models(value) -> list[ModelSpec]:
    """A spec, a list, or a comma list of built-in names / config.json paths -> specs (each once)."""
    items = value if isinstance(value, (list, tuple)) else [value] if isinstance(value, ModelSpec) else \
        parse_names(value, "--model")
    return _unique([load_model_spec(m) for m in items], lambda m: m.name, "models", lambda m: m.source or m.name)


AUTO = "auto"


def auto_dtype(hw: HardwareProfile) -> str:
    """The default precision on a device: bf16 where its matrix unit has it, else fp16 (an IPU, a T4), else fp32."""
    peaks = hw.matrix.peak_flops
    return next((d for d in ("bf16", "fp16", "fp32") if d in peaks), next(iter(peaks)))


def parse_compressions(value) -> list[float]:
    comps = parse_axis(value, "--compression", integer=False)
    if any(c < 1 for c in comps):
        raise UserError(f"--compression must be at least 1 (1 = no compression), got {min(comps):g}")
    return comps


def _location_index(loc: str, names: tuple[str, ...], hw: HardwareProfile) -> int | None:
    if loc == "auto":
        return None
    if loc in names:
        return names.index(loc)
    raise UserError(f"unknown memory location {loc!r} for hardware {hw.name}; accepted: auto, "
                    f"{', '.join(names)}")


@dataclass(frozen=True)
class CaseFixed:
    """A case's quantities that no grid point changes: per-device shapes, the memory tiers, where the weights live
    and how much of them, and the columns that are one value for the whole case. Its errors, in this order, come
    before any grid point's: heads the devices cannot split, an unknown weights location, a format the device lacks,
    an unknown KV location."""
    tp: Parallel
    frac: float                     # the fullest pipeline stage's share of the layers
    names: tuple[str, ...]          # memory tiers (device tiers, the host, the disk when there is one)
    peak: np.ndarray
    achieved: np.ndarray
    caps: np.ndarray
    n_dev_tiers: int                # device tiers; names[n_dev_tiers] is the host
    disk: int | None
    w_dev: float                    # weights per device
    w_on: float                     # of them resident in their device tier
    wi: int                         # the weights' tier
    ki: int | None                  # the KV cache's tier when the case names one (None: auto)
    base: Placement                 # the placement with the cache in the first tier (operators outside attention)
    labels: dict                    # string columns of one value: hardware, model, dtypes, k_layout, weights_location
    capacity: float                 # memory_capacity_bytes

    @classmethod
    def of(cls, case: "Case") -> "CaseFixed":
        hw, m, prec = case.hw, case.model, case.prec
        tp = Parallel.of(m, case.devices)
        names, peak, achieved, caps = tier_table(hw)
        write, write_peak = write_rates(hw, achieved, peak)
        n_dev_tiers = names.index(HOST)
        places = names[:n_dev_tiers + 1]   # where --weights-location / --kv-location may put data (not the disk)
        w_dev = weight_bytes_per_device(m, tp, prec, case.pipeline)
        w_on = w_dev * case.weights_on_device
        wi = _location_index(case.weights_location, places, hw)
        if wi is None:   # the first device tier the weights fit
            fit = [i for i in range(n_dev_tiers) if w_on <= caps[i]]
            wi = fit[0] if fit else n_dev_tiers - 1
        if wi == n_dev_tiers:
            w_on = 0.0
        matrix_peak(hw, prec.compute or prec.dtype)   # a format the device lacks
        ki = _location_index(case.kv_location, places, hw)
        wod, kod, wdk, kdk = case.weights_on_device, case.kv_on_device, case.weights_on_disk, case.kv_on_disk
        base = Placement(names, peak, achieved, wi, 0, 0, 1.0 - wod - wdk, 1.0 - kod - kdk, wdk, kdk, write,
                         write_peak)
        labels = {"hardware": hw.name, "model": m.name, "dtype": prec.dtype, "kv_dtype": prec.kv_dtype,
                  "act_dtype": prec.act_dtype, "k_layout": case.k_layout, "weights_location": names[wi]}
        return cls(tp, math.ceil(m.n_layers / case.pipeline) / m.n_layers, names, peak, achieved, caps, n_dev_tiers,
                   names.index(DISK) if DISK in names else None, w_dev, w_on, wi, ki, base, labels,
                   float(caps[:n_dev_tiers].sum()))

    def placement(self, kv_index) -> Placement:
        """The placement with the KV cache in tier `kv_index` (a number, or an array per operator and row)."""
        b = self.base
        return Placement(b.tiers, b.peak_Bps, b.achieved_Bps, b.weights, kv_index, b.act, b.weights_host, b.kv_host,
                         b.weights_disk, b.kv_disk, b.write_Bps, b.write_peak_Bps)


def _shares(value, flag: str, where: str = "on the device") -> list[float]:
    """--weights-on-device / --kv-on-device (and --...-on-disk): shares kept there, each from 0 to 1."""
    vals = parse_axis(value, flag, integer=False, minimum=0)
    if any(v > 1 for v in vals):
        raise UserError(f"{flag} is the share kept {where}, between 0 and 1; got {max(vals):g}")
    return [float(v) for v in vals]


def placement_shares(hws, weights_on_device, kv_on_device, weights_on_disk, kv_on_disk) -> list[list[float]]:
    """The placement shares, parsed and checked: [weights on the device, KV on the device, weights on the disk, KV on
    the disk] (lists). The disk's need a profile with a disk tier; a share on the device and on the disk add up to at
    most 1 (the rest in host memory)."""
    shares = [_shares(weights_on_device, "--weights-on-device"), _shares(kv_on_device, "--kv-on-device"),
              _shares(weights_on_disk, "--weights-on-disk", "on the disk"),
              _shares(kv_on_disk, "--kv-on-disk", "on the disk")]
    if max(shares[2]) > 0 or max(shares[3]) > 0:
        for hw in hws:
            if hw.disk is None:
                raise UserError(f"hardware {hw.name} has no disk tier: --weights-on-disk and --kv-on-disk need a "
                                "profile with a `disk:` section (a copy of it with --hardware-file; t4 has one)")
    for on, disk, what in ((shares[0], shares[2], "weights"), (shares[1], shares[3], "kv")):
        if max(on) + max(disk) > 1 + 1e-12:
            raise UserError(f"--{what}-on-device {max(on):g} and --{what}-on-disk {max(disk):g} add up to more than "
                            f"the whole; accepted: shares whose sum is at most 1, the rest in host memory (e.g. "
                            f"--{what}-on-device {max(0.0, 1 - max(disk)):g} --{what}-on-disk {max(disk):g})")
    return shares


_PARSED_CASES: dict = {}   # the categorical arguments of a sweep -> what they parse to (_Parsed); see `parse_sweep`


@dataclass(frozen=True)
class _Parsed:
    """What a sweep's categorical arguments parse to: everything of a `SweepArgs` but its numeric axes, and the
    models."""
    cases: tuple
    strategies: tuple
    local_window: int | None
    page_size: int | None
    gen_len: int | None
    models: tuple


def _plain(value):
    """A value made of strings, numbers and None only, as a dictionary key; else None. Each item is known by its type
    and its repr, and a list apart from a single value: 1, 1.0, True and [1] are four keys, -0.0 and 0.0 two (the
    parse tells them apart: a list is not split at commas, a share of -0.0 stays -0.0)."""
    if value is None or type(value) in (str, int, float, bool):
        return type(value), repr(value)
    if type(value) in (list, tuple) and all(type(v) in (str, int, float) for v in value):
        return list, tuple((type(v), repr(v)) for v in value)
    return None


def _names(value) -> list[str]:
    return [str(v).strip().lower() for v in (value.split(",") if type(value) is str else value)]


def _categorical_key(hardware, model, args: tuple):
    """What a sweep's categorical arguments are known by, or None when their meaning may change between two calls:
    a file (a profile or a config.json, which may be edited), a folder, a profile or spec object. Bundled profile names
    and built-in model names mean the same thing for the life of the process."""
    keys = [_plain(v) for v in (hardware, model) + args]
    if any(k is None for k in keys) or hardware is None or model is None:
        return None
    if any("/" in h or os.sep in h or h.endswith((".yaml", ".yml")) for h in _names(hardware)):
        return None
    if not all(name in BUILTIN for name in _names(model)):
        return None
    return tuple(keys)


def _context_notes(models, seqs, gen_len) -> tuple[str, ...]:
    longest = max(seqs) + (gen_len or 1) - 1
    return tuple(f"a context of {longest:,} tokens exceeds {m.name}'s maximum of {m.max_position:,} positions; the "
                 f"prediction assumes the model could attend that far" for m in models if longest > m.max_position)


class SweepArgs(NamedTuple):
    """The arguments of a sweep parsed and checked (what `predict.Sweep` evaluates)."""
    cases: tuple
    strategies: tuple
    batches: np.ndarray
    seqs: np.ndarray
    comps: np.ndarray
    local_window: int | None
    page_size: int | None
    gen_len: int | None      # whole generations of this many tokens (predict.GENERATION_COLUMNS)
    warnings: tuple          # what the caller should tell the user (a context beyond the model's)


def parse_sweep(hardware="a100", model=DEFAULT_MODEL, seq_len=4096, batch=1, strategies=None, compression=8,
                dtype="auto", kv_dtype=None, devices=1, r=None, k=None, local_window=None, page_size=None,
                k_layout="twice", kv_location="auto", weights_location="auto", gen_len=None, mla_decode=None,
                act_dtype=None, weights_on_device=1.0, kv_on_device=1.0, pipeline=1, microbatches=None,
                weights_on_disk=0.0, kv_on_disk=0.0) -> SweepArgs:
    """Parse and check the arguments of `predict_columns` (same meaning), evaluating nothing.

    The categorical arguments (everything but seq_len, batch and compression) parse to the same cases whenever they
    are the same built-in names, numbers and words: those cases are kept (a few hundred sets at most), so a loop of
    single-configuration calls parses only its numbers (issue 16). Every error of the categorical arguments is raised
    while they are parsed (each case's fixed quantities included: `CaseFixed`), so a wrong set is never kept; the
    numeric arguments of a call with kept cases are checked as before: the same errors, in the same order."""
    args = (strategies, dtype, kv_dtype, devices, r, k, local_window, page_size, k_layout, kv_location,
            weights_location, gen_len, mla_decode, act_dtype, weights_on_device, kv_on_device, pipeline, microbatches,
            weights_on_disk, kv_on_disk)
    key = _categorical_key(hardware, model, args)
    known = None if key is None else _PARSED_CASES.get(key)
    if known is None:
        sw, models = _parse(hardware, model, seq_len, batch, compression, *args)
        if key is not None:
            if len(_PARSED_CASES) >= 256:
                _PARSED_CASES.clear()
            _PARSED_CASES[key] = _Parsed(sw.cases, sw.strategies, sw.local_window, sw.page_size, sw.gen_len,
                                         tuple(models))
        return sw
    seqs = parse_axis(seq_len, "--seq", minimum=1)
    batches = parse_axis(batch, "--batch", minimum=1)
    comps = parse_compressions(compression)
    return SweepArgs(known.cases, known.strategies, np.asarray(batches, dtype=np.int64),
                     np.asarray(seqs, dtype=np.int64), np.asarray(comps, dtype=np.float64), known.local_window,
                     known.page_size, known.gen_len, _context_notes(known.models, seqs, known.gen_len))


def _parse(hardware, model, seq_len, batch, compression, strategies, dtype, kv_dtype, devices, r, k, local_window,
           page_size, k_layout, kv_location, weights_location, gen_len, mla_decode, act_dtype, weights_on_device,
           kv_on_device, pipeline, microbatches, weights_on_disk, kv_on_disk) -> tuple[SweepArgs, list[ModelSpec]]:
    """`parse_sweep`, every argument parsed and checked; and the models."""
    hws = resolve_hardware(hardware)
    models = resolve_models(model)
    if mla_decode is not None:
        mode = str(mla_decode).strip().lower()
        if mode not in ("absorbed", "unabsorbed"):
            raise UserError(f"--mla-decode must be absorbed or unabsorbed, got {mla_decode!r}")
        if not any(m.is_mla for m in models):
            raise UserError("--mla-decode applies to models with multi-head latent attention (deepseek-v3, or a "
                            "config.json with kv_lora_rank); none was given")
        models = [replace(m, mla_absorb=mode == "absorbed", name=m.name + ("" if mode == "absorbed" else
                                                                            ":unabsorbed")) if m.is_mla else m
                  for m in models]
    seqs = parse_axis(seq_len, "--seq", minimum=1)
    batches = parse_axis(batch, "--batch", minimum=1)
    comps = parse_compressions(compression)
    strats = parse_strategies(strategies)
    dtype_names = parse_names(dtype, "--dtype")
    dtypes = [d if str(d).strip().lower() == AUTO else parse_dtype(d) for d in dtype_names]
    kv_dtypes = [None] if kv_dtype is None else [parse_dtype(d, "kv dtype")
                                                 for d in parse_names(kv_dtype, "--kv-dtype")]
    act = None if act_dtype is None else parse_dtype(act_dtype, "activation dtype")
    shares = placement_shares(hws, weights_on_device, kv_on_device, weights_on_disk, kv_on_disk)
    devs = parse_axis(devices, "--devices", minimum=1)
    pps = parse_axis(pipeline, "--pipeline", minimum=1)
    mbs = [None] if microbatches is None else parse_axis(microbatches, "--microbatches", minimum=1)
    for m in models:
        if max(pps) > m.n_layers:
            raise UserError(f"--pipeline {max(pps)} exceeds the {m.n_layers} layers of {m.name}; accepted: 1 to "
                            f"{m.n_layers} stages")
    rs = [None] if r is None else parse_axis(r, "--r", minimum=1)
    ks = [None] if k is None else parse_axis(k, "--k", minimum=1)
    if local_window is not None:
        local_window = parse_axis(local_window, "--local-window", minimum=0)
        if len(local_window) > 1:
            raise UserError("--local-window takes one value")
        local_window = local_window[0]
    if page_size is not None:
        page_size = parse_axis(page_size, "--page-size", minimum=1)
        if len(page_size) > 1:
            raise UserError("--page-size takes one value")
        page_size = page_size[0]
    if k_layout not in ("twice", "once"):
        raise UserError(f"--k-layout must be twice or once, got {k_layout!r}")
    for m in models:
        dk = kv_geometry(m).d_k   # the key's width (MLA: the latent row)
        for rr in rs:
            if rr is not None and rr > dk:
                what = "the latent row's width" if m.is_mla else "head_dim"
                raise UserError(f"--r {rr} exceeds {what} {dk} of {m.name}; accepted: 1 <= r <= {dk}")
    cases = []
    for hw, m, dt, kvd, dv, pp, mb, rr, kk, wod, kod, wdk, kdk in itertools.product(
            hws, models, dtypes, kv_dtypes, devs, pps, mbs, rs, ks, *shares):
        prec = Precision.of(auto_dtype(hw) if dt == AUTO else dt, kvd, act)
        case = Case(hw, m, prec, int(dv), k_layout, kv_location, weights_location, rr, kk, float(wod), float(kod),
                    int(pp), None if mb is None else int(mb), float(wdk), float(kdk))
        if case not in cases:   # auto,bf16 on a bf16 device: one case
            cases.append(case)
    if gen_len is not None:
        gl = parse_axis(gen_len, "--gen-len", minimum=1)
        if len(gl) != 1:
            raise UserError("--gen-len takes one value (tokens generated per sequence)")
        gen_len = int(gl[0])
    for case in cases:   # what no grid point changes, and its errors (devices, locations, formats): now, not later
        case.fixed
    return SweepArgs(tuple(cases), tuple(strats), np.asarray(batches, dtype=np.int64),
                     np.asarray(seqs, dtype=np.int64), np.asarray(comps, dtype=np.float64), local_window, page_size,
                     gen_len, _context_notes(models, seqs, gen_len)), models
