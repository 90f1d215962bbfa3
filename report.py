"""Interactive plotly reports: `sparq-sim report -o report.html`, or `sparq_sim.report.figures(...)` in a notebook.

The only module that imports plotly (reports live beside the CLI, imported only by `report`). It runs the
core's `predict` over a sweep and draws, in one self-contained offline HTML file (plotly.js inlined once):

    roofline per device     memory roofs per tier (peak and achieved), compute roofs per dtype (matrix and vector),
                            every decode operator of the ledger as a point (hover: bytes, FLOPs, time, bound, tier)
    bytes per decode step   stacked by kind (weights, activations, KV read, KV write, strategy metadata) per strategy
    speedup over dense      against sequence length (a line per strategy and device) and against batch size
    memory capacity         the largest batch that fits (`max_batch`) per strategy and sequence length
    accuracy                with --evaluation: score against transferred fraction per strategy (paper Figure 1 kind)
    trace layers            with --trace: alpha and out_rel_err per layer
    measured                with --measured: predicted against measured time (log-log, y = x, error bands) and
                            measured against predicted speedup over the dense kernel

Figures are built as plain dictionaries (fast: no per-trace validation when writing the HTML); `figures()` wraps each
in a `plotly.graph_objects.Figure`, which validates it. Dropdowns choose the model (and batch or sequence length); a
device gets its own roofline and its own line style in the other charts.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .hardware_profiles import HardwareProfile
from .simulator.errors import UserError, input_file, read_json
from .simulator.ledger import Parallel, Precision, attention_decode_ops
from .simulator.models import DEFAULT_MODEL, ModelSpec
from .simulator.predict import (Case, evaluate_case, auto_dtype, decoded, parse_compressions, predict_columns,
                                resolve_hardware, resolve_models)
from .simulator.ranges import parse_axis, parse_names
from .simulator.roofline import BOUNDS, Placement, matrix_peak, tier_table, time_op
from .simulator.strategies import parse_strategies, resolve_params
from .simulator.units import parse_dtype

DEFAULT_HARDWARE = "a100,h100,h200"
DEFAULT_SEQ = "1k:128k:x2"
DEFAULT_BATCH = "1,8,64"

STRATEGY_COLOURS = {
    "dense": "#3b3b3b", "sparq": "#1f77b4", "h2o": "#d62728", "flexgen": "#2ca02c", "lm-infinite": "#9467bd",
    "quest": "#ff7f0e",
}
_PALETTE = ["#17becf", "#bcbd22", "#8c564b", "#e377c2", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a"]
DEVICE_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
DEVICE_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "cross", "x"]
TIER_COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"]
BYTE_KINDS = [  # column of predict, label, colour
    ("weight_bytes", "weights", "#7f8c9a"),
    ("activation_bytes", "activations", "#c7c7c7"),
    ("kv_read_bytes", "KV read", "#1f77b4"),
    ("kv_write_bytes", "KV write", "#aec7e8"),
    ("metadata_bytes", "strategy metadata", "#ff7f0e"),
]
MEASURED_COLUMNS = ("hardware", "kernel", "strategy", "k_layout", "batch", "seq_len", "n_heads", "n_kv_heads",
                    "head_dim", "dtype", "r", "k", "time_s")
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


def strategy_colour(name: str) -> str:
    if name in STRATEGY_COLOURS:
        return STRATEGY_COLOURS[name]
    return _PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(_PALETTE)]


def tokens(n) -> str:
    """4096 -> '4k', 1536 -> '1.5k', 1048576 -> '1M', 1000 -> '1000'."""
    n = int(n)
    if n >= 2**20 and n % 2**19 == 0:
        return f"{n / 2**20:g}M"
    if n >= 1024 and n % 512 == 0:
        return f"{n / 1024:g}k"
    return str(n)


# ---------------------------------------------------------------------------------------------------------------------
# what was asked


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
             page_size, k_layout, kv_location, weights_location, trace, evaluation, measured) -> Request:
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
    )
    points = len(req.hardware) * len(req.models) * len(req.seqs) * len(req.batches) * len(req.compressions) * len(
        req.dtypes) * len(req.devices)
    if points > 20_000:
        raise UserError(f"the report's sweep has {points} points per strategy; at most 20000 make a readable report "
                        f"(use `sparq-sim predict` for large sweeps)")
    return req


# ---------------------------------------------------------------------------------------------------------------------
# data


@dataclass
class Chart:
    id: str
    title: str
    description: str
    figure: dict  # plotly figure as a plain dictionary: {"data": [...], "layout": {...}}


def _predict_frame(req: Request):
    import pandas as pd

    cols = decoded(predict_columns(
        hardware=req.hardware, model=req.models, seq_len=req.seqs, batch=req.batches, strategies=req.strategies,
        compression=req.compressions, dtype=",".join(req.dtypes), kv_dtype=req.kv_dtype, devices=req.devices,
        r=req.r, k=req.k, local_window=req.local_window, page_size=req.page_size, k_layout=req.k_layout,
        kv_location=req.kv_location, weights_location=req.weights_location))
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


def _operator_points(req: Request, hw: HardwareProfile, m: ModelSpec, dtype: str, devices: int, comp: float,
                     case_label: str) -> list[dict]:
    """Every decode operator at every (batch, seq_len) of the sweep on one device: intensity, attained FLOP/s per
    device, and what the hover shows. Non-attention operators depend on the batch only: kept once per batch."""
    prec = Precision.of(auto_dtype(hw) if dtype == "auto" else dtype, req.kv_dtype)
    case = Case(hw, m, prec, devices, req.k_layout, req.kv_location, req.weights_location, req.r, req.k)
    Bg, Sg = (a.ravel() for a in np.meshgrid(np.asarray(req.batches, dtype=np.int64),
                                             np.asarray(req.seqs, dtype=np.int64), indexing="ij"))
    Cg = np.full(Bg.shape, float(comp))
    log: dict = {}
    evaluate_case(case, req.strategies, Bg, Sg, Cg, req.local_window, req.page_size, keep_ops=log)
    n = Bg.shape[0]
    first_of_batch = np.unique(Bg, return_index=True)[1]
    points = []
    shared_done = False
    for strat in req.strategies:
        pl, entries = log[strat]
        for op, t in entries:
            if op.phase != "decode":
                continue
            attention = op.group == "attention"
            if not attention and shared_done:
                continue
            idx = np.arange(n) if attention else first_of_batch
            b = lambda x: np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))[idx]  # noqa: E731
            flops, nbytes, time_s = b(op.flops), b(op.bytes_total()), b(t.time_s)
            busy = time_s - t.overhead_s
            kvb = op.kv_read + op.kv_write + op.meta_read + op.meta_write
            tier_bytes = np.stack([b(op.weight * (pl.weights == i) + kvb * (np.asarray(pl.kv) == i)
                                     + (op.act_read + op.act_write) * (pl.act == i)) for i in range(len(pl.tiers))])
            tier = np.asarray(pl.tiers, dtype=object)[tier_bytes.argmax(axis=0)]
            bound = np.asarray(BOUNDS, dtype=object)[np.broadcast_to(np.asarray(t.bound), (n,))[idx].astype(int)]
            bound = np.where(t.overhead_s > busy, "overhead", bound)
            points.append(dict(
                case=case_label, strategy=strat if attention else "", op=op.name, group=op.group,
                batch=Bg[idx], seq_len=Sg[idx], intensity=np.where(nbytes > 0, flops / np.where(nbytes > 0, nbytes, 1),
                                                                    np.nan),
                perf=flops / time_s, bytes=nbytes * devices * op.layers, flops=flops * devices * op.layers,
                time_s=time_s * op.layers, overhead_s=np.full(len(idx), t.overhead_s * op.layers), bound=bound,
                tier=tier))
        shared_done = True
    return points


# ---------------------------------------------------------------------------------------------------------------------
# figure helpers


def _layout(title: str, xtitle: str, ytitle: str, xlog=False, ylog=False, height=560, **kw) -> dict:
    axis = dict(showgrid=True, gridcolor="#e6e6e6", zeroline=False, linecolor="#888", ticks="outside",
                exponentformat="SI", automargin=True)
    lay = dict(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=16)),
        xaxis=dict(axis, title=dict(text=xtitle), type="log" if xlog else "linear"),
        yaxis=dict(axis, title=dict(text=ytitle), type="log" if ylog else "linear"),
        height=height, margin=dict(l=80, r=30, t=110, b=70), template="none", plot_bgcolor="white",
        font=dict(family=_FONT, size=12), hovermode="closest",
        legend=dict(font=dict(size=11), bgcolor="rgba(255,255,255,0.85)"),
    )
    lay.update(kw)
    return lay


def _menu(options: list[tuple[str, list[bool]]], x=0.0, y=1.02, layout_updates: list[dict] | None = None,
          label: str | None = None) -> dict:
    """A dropdown that shows one group of traces at a time (visibility masks over the figure's traces)."""
    buttons = []
    for i, (lab, vis) in enumerate(options):
        args = [{"visible": vis}]
        if layout_updates is not None:
            args.append(layout_updates[i])
        buttons.append(dict(label=lab, method="update", args=args))
    return dict(type="dropdown", buttons=buttons, x=x, xanchor="left", y=y, yanchor="bottom", direction="down",
                showactive=True, active=0, bgcolor="#f7f7f7", bordercolor="#999", font=dict(size=12),
                name=label or "")


def _menu_label(text: str, x: float, y: float = 1.055) -> dict:
    return dict(text=text, x=x, y=y, xref="paper", yref="paper", xanchor="right", yanchor="bottom",
                showarrow=False, font=dict(size=12, color="#444"))


def _apply_options(fig: dict, groups: list[list[int]], labels: list[str], menu_title: str,
                   layout_updates: list[dict] | None = None) -> None:
    """Traces in groups[i] belong to option i (all other traces are always shown); option 0 starts visible."""
    n = len(fig["data"])
    grouped = set(i for g in groups for i in g)
    masks = []
    for g in groups:
        gs = set(g)
        masks.append([(i in gs) if i in grouped else fig["data"][i].get("visible", True) for i in range(n)])
    for i, tr in enumerate(fig["data"]):
        tr["visible"] = masks[0][i] if masks else tr.get("visible", True)
    if layout_updates:
        _merge_relayout(fig["layout"], layout_updates[0])
    if len(groups) > 1:
        fig["layout"].setdefault("updatemenus", []).append(
            _menu(list(zip(labels, masks)), x=0.09, layout_updates=layout_updates, label=menu_title))
        fig["layout"].setdefault("annotations", []).append(_menu_label(menu_title, 0.085))


def _merge_relayout(layout: dict, upd: dict) -> None:
    for key, v in upd.items():
        node = layout
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v


def _seq_axis(seqs: list[int]) -> dict:
    vals = list(seqs)
    if len(vals) > 14:  # thin the ticks of long sweeps
        step = math.ceil(len(vals) / 12)
        vals = vals[::step]
    return dict(tickmode="array", tickvals=vals, ticktext=[tokens(s) for s in vals])


def _hw_style(req: Request):
    return {h.name: (DEVICE_DASHES[i % len(DEVICE_DASHES)], DEVICE_SYMBOLS[i % len(DEVICE_SYMBOLS)])
            for i, h in enumerate(req.hardware)}


def _device_legend(req: Request, mode: str = "lines") -> list[dict]:
    """Legend entries (no data) saying which line style and marker is which device; the data traces' legend
    entries name the strategy only (colour), once per strategy."""
    if len(req.hardware) < 2:
        return []
    style = _hw_style(req)
    return [dict(type="scatter", mode=mode, x=[None], y=[None], name=h.name, legendgroup=f"device:{h.name}",
                 line=dict(color="#555", dash=style[h.name][0], width=2),
                 marker=dict(color="#555", symbol=style[h.name][1], size=7), hoverinfo="skip")
            for h in req.hardware]


def _log_ticks(lo: float, hi: float, unit: str) -> dict:
    """Ticks at the powers of ten between lo and hi, labelled with SI prefixes ('100 µs', '1 ms', '10 s')."""
    vals = [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    return dict(tickmode="array", tickvals=vals, ticktext=[_si(v, unit) for v in vals])


def _ratio_ticks(lo: float, hi: float) -> dict:
    """Ticks at 1, 2, 5 x powers of ten between lo and hi, labelled '0.5x', '1x', '20x'."""
    vals = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    vals = [v for v in vals if lo <= v <= hi]
    return dict(tickmode="array", tickvals=vals, ticktext=[f"{v:g}x" for v in vals])


def _num(a) -> list:
    """A JSON-safe list: NaN and infinities become null."""
    out = []
    for v in np.asarray(a, dtype=np.float64).tolist():
        out.append(v if math.isfinite(v) else None)
    return out


def _si(v: float, unit: str) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:g} {unit}"
    prefixes = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ"),
                (1e-9, "n")]
    for scale, p in prefixes:
        if abs(v) >= scale:
            return f"{v / scale:.4g} {p}{unit}"
    return f"{v:.3g} {unit}"


# ---------------------------------------------------------------------------------------------------------------------
# charts


def _roofline_chart(req: Request, df, hw: HardwareProfile) -> Chart:
    sub = df[df["hardware"] == hw.name]
    names, peak, achieved, _ = tier_table(hw)
    tier_label = [f"{n} ({hw.host_link.name})" if n == "host" else n for n in names]
    data: list[dict] = []
    groups: list[list[int]] = []
    labels: list[str] = []
    xs: list[float] = []
    ys: list[float] = []
    cases = list(dict.fromkeys(sub["case"]))
    used_tiers: set[str] = set()
    for case in cases:
        row = sub[sub["case"] == case].iloc[0]
        spec = {m.name: m for m in req.models}[row["model"]]
        pts = _operator_points(req, hw, spec, row["dtype"], int(row["devices"]), float(row["compression"]), case)
        used_tiers.update(t for p in pts for t in p["tier"])
        for B in req.batches:
            g = []
            for si, strat in enumerate([""] + req.strategies):
                sel = [p for p in pts if p["strategy"] == strat]
                if not sel:
                    continue
                cat = {key: np.concatenate([np.asarray(p[key] if np.ndim(p[key]) else [p[key]] * len(p["batch"]))
                                            if key not in ("op", "group", "case", "strategy") else
                                            np.full(len(p["batch"]), p[key], dtype=object) for p in sel])
                       for key in sel[0]}
                keep = (cat["batch"] == B) & np.isfinite(cat["intensity"]) & (cat["intensity"] > 0) & (cat["perf"] > 0)
                if not keep.any():
                    continue
                c = {key: v[keep] for key, v in cat.items()}
                xs += c["intensity"].tolist()
                ys += c["perf"].tolist()
                custom = np.stack([c["op"], np.asarray([tokens(s) for s in c["seq_len"]], dtype=object),
                                   c["batch"].astype(object), c["bytes"].astype(object), c["flops"].astype(object),
                                   c["time_s"].astype(object), c["bound"], c["tier"],
                                   c["overhead_s"].astype(object)], axis=1)
                name = strat if strat else "other operators (all strategies)"
                g.append(len(data))
                data.append(dict(
                    type="scatter", mode="markers", name=name, legendgroup=name, x=_num(c["intensity"]),
                    y=_num(c["perf"]), customdata=custom.tolist(),
                    # later strategies draw on top, smaller: points at the same place stay visible as rings
                    marker=dict(color=strategy_colour(strat) if strat else "#9e9e9e",
                                size=max(5, 15 - 1.6 * (si - 1)) if strat else 10,
                                symbol="circle" if strat else "diamond-open", opacity=0.85,
                                line=dict(width=0.5, color="white") if strat else dict(width=1.5)),
                    hovertemplate=(f"<b>%{{customdata[0]}}</b> · {name}<br>S=%{{customdata[1]}}, B=%{{customdata[2]}}"
                                   "<br>bytes %{customdata[3]:.4s}B · FLOPs %{customdata[4]:.4s}"
                                   "<br>time %{customdata[5]:.4s}s (launch overhead %{customdata[8]:.3s}s)"
                                   "<br>bound: %{customdata[6]} · tier %{customdata[7]}"
                                   "<br>intensity %{x:.3g} FLOP/B · %{y:.3s}FLOP/s<extra></extra>"),
                ))
            groups.append(g)
            labels.append(f"{case} · batch {B}")
    # roofs: x range from the points and the ridge points
    comp_peaks = []
    for unit, peaks, dash in (("matrix", hw.matrix.peak_flops, "solid"), ("vector", hw.vector.peak_flops, "dot")):
        by_value: dict[float, list[str]] = {}
        for dt, v in peaks.items():
            by_value.setdefault(v, []).append(dt)
        comp_peaks += [(f"{unit} {'/'.join(dts)}", v, dash) for v, dts in by_value.items()]
    top = max(v for _, v, _ in comp_peaks)
    ridge = [top / bw for n, bw in zip(names, peak) if n != "host" or n in used_tiers]
    lo = min([min(xs) if xs else 0.1] + [min(v for _, v, _ in comp_peaks) / max(peak)]) / 3
    hi = max([max(xs) if xs else 100.0] + ridge) * 3
    lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
    roofs = []
    for i, (tname, bw, ach) in enumerate(zip(tier_label, peak, achieved)):
        if names[i] == "host" and "host" not in used_tiers:
            continue  # nothing of this sweep lives behind the host link
        colour = TIER_COLOURS[i % len(TIER_COLOURS)]
        for label, rate, dash, width in ((f"{tname} peak {_si(bw, 'B/s')}", bw, "solid", 2.2),
                                         (f"{tname} achieved {_si(ach, 'B/s')}", ach, "dash", 1.3)):
            x_end = min(hi, top / rate)
            roofs.append(dict(type="scatter", mode="lines", name=label, legendgroup=f"tier{i}",
                              x=[lo, x_end], y=[rate * lo, rate * x_end], line=dict(color=colour, dash=dash,
                                                                                     width=width),
                              hovertemplate=f"{label}<br>%{{x:.3g}} FLOP/B -> %{{y:.3s}}FLOP/s<extra></extra>"))
    grey = ["#222222", "#555555", "#777777", "#999999", "#aaaaaa", "#bbbbbb", "#cccccc"]
    for j, (label, v, dash) in enumerate(sorted(comp_peaks, key=lambda t: -t[1])):
        roofs.append(dict(type="scatter", mode="lines", name=f"{label} {_si(v, 'FLOP/s')}",
                          legendgroup="compute", x=[lo, hi], y=[v, v],
                          line=dict(color=grey[min(j, len(grey) - 1)], dash=dash, width=1.6),
                          hovertemplate=f"{label} peak {_si(v, 'FLOP/s')}<extra></extra>"))
    n_roofs = len(roofs)
    data = roofs + data
    groups = [[i + n_roofs for i in g] for g in groups]
    ymin = min(ys + [min(v for _, v, _ in comp_peaks)]) / 5
    ymax = top * 1.6
    fig = dict(data=data, layout=_layout(
        f"Roofline: {hw.name} ({hw.description.split(',')[0]})",
        "arithmetic intensity (FLOP/byte)", "attained performance per device (FLOP/s)", xlog=True, ylog=True,
        height=620))
    fig["layout"]["xaxis"]["range"] = [math.log10(lo), math.log10(hi)]
    fig["layout"]["yaxis"]["range"] = [math.log10(ymin), math.log10(ymax)]
    _apply_options(fig, groups, labels, "model, batch:")
    desc = ("Each decode operator at each sequence length of the sweep (one colour per strategy; grey diamonds: the "
            "operators outside attention, the same for every strategy). Attained performance = the operator's FLOPs "
            "over its predicted realistic time (achieved bandwidth and peak, plus launch overhead), so points sit "
            "under the achieved roofs. Operators with no FLOPs or no bytes (embedding lookup, KV append, the fused "
            "softmax) have no place on the chart. Solid diagonal: a memory tier at its datasheet bandwidth; dashed: "
            "at the achieved bandwidth. Horizontal: compute peaks per dtype (solid: matrix unit; dotted: vector unit).")
    return Chart(f"roofline-{hw.name}", f"Roofline: {hw.name}", desc, fig)


def _bytes_chart(req: Request, df) -> Chart:
    sub = df[df["hardware"] == req.hardware[0].name]  # bytes moved do not depend on the device
    data, groups, labels = [], [], []
    parts = {key: g for key, g in sub.groupby(["case", "batch"], sort=False)}
    for case in dict.fromkeys(sub["case"]):
        for B in req.batches:
            rows = parts[(case, B)]
            x = [[tokens(s) for s in rows["seq_len"]], rows["strategy"].tolist()]
            g = []
            total = rows[[c for c, _, _ in BYTE_KINDS]].sum(axis=1).to_numpy()
            for col, label, colour in BYTE_KINDS:
                v = rows[col].to_numpy(dtype=np.float64)
                g.append(len(data))
                data.append(dict(type="bar", name=label, legendgroup=label, x=x, y=_num(v),
                                 customdata=_num(np.where(total > 0, v / np.where(total > 0, total, 1), 0) * 100),
                                 marker=dict(color=colour, line=dict(width=0)),
                                 hovertemplate=(f"<b>{label}</b><br>S=%{{x}}<br>%{{y:.4s}}B per step "
                                                "(%{customdata:.1f}% of the step)<extra></extra>")))
            groups.append(g)
            labels.append(f"{case} · batch {B}")
    fig = dict(data=data, layout=_layout(
        "Bytes moved per decode step, by kind", "sequence length / strategy", "bytes per decode step (all layers)",
        height=600, barmode="stack", bargap=0.15))
    fig["layout"]["xaxis"].update(type="multicategory", tickangle=-90, tickfont=dict(size=10))
    fig["layout"]["yaxis"].update(ticksuffix="B", exponentformat="SI")
    fig["layout"]["margin"]["b"] = 120
    _apply_options(fig, groups, labels, "model, batch:")
    fig["layout"].setdefault("updatemenus", []).append(dict(
        type="buttons", direction="right", x=1.0, xanchor="right", y=1.02, yanchor="bottom", showactive=True,
        active=0, bgcolor="#f7f7f7", bordercolor="#999", font=dict(size=12), buttons=[
            dict(label="bytes", method="relayout",
                 args=[{"barnorm": "", "yaxis.title.text": "bytes per decode step (all layers)",
                        "yaxis.ticksuffix": "B"}]),
            dict(label="share of step", method="relayout",
                 args=[{"barnorm": "percent", "yaxis.title.text": "share of the bytes moved in the step (%)",
                        "yaxis.ticksuffix": "%"}]),
        ]))
    desc = ("What one decode step moves, all layers and devices together: weights (read once for the whole batch), "
            "activations, the KV cache read and written, and each strategy's own metadata (SparQ's running mean of "
            "V, H2O's score statistics, Quest's page summaries). The bytes do not depend on the device. The buttons "
            "on the right switch to each kind's share of the step.")
    return Chart("bytes", "Bytes per decode step", desc, fig)


_SPEEDUP_METRICS = [
    ("speedup_vs_dense", "decode step (realistic)", "speedup of the decode step over dense (x)"),
    ("attention_speedup_vs_dense", "attention only (realistic)", "speedup of attention over dense (x)"),
    ("ideal_speedup_vs_dense", "decode step (ideal roofline)", "ideal-roofline speedup of the step over dense (x)"),
]


def _speedup_chart(req: Request, df, axis: str) -> Chart:
    """Speedup over dense against seq_len (options: case x batch) or against batch (options: case x seq_len)."""
    style = _hw_style(req)
    other = "batch" if axis == "seq_len" else "seq_len"
    other_values = req.batches if axis == "seq_len" else req.seqs
    strategies = [s for s in req.strategies if s != "dense"] or ["dense"]
    data, groups, labels = [], [], []
    metric_ys: list[list] = [[] for _ in _SPEEDUP_METRICS]
    # row positions of each (case, other axis value, device, strategy), sorted along the axis (numpy: fast)
    col = {c: df[c].to_numpy() for c in ("seq_len", "batch", "time_s", "fits", "bound", "speedup_vs_dense",
                                         "attention_speedup_vs_dense", "ideal_speedup_vs_dense")}
    parts = {key: idx[np.argsort(col[axis][idx], kind="stable")]
             for key, idx in df.groupby(["case", other, "hardware", "strategy"], sort=False).indices.items()}
    for case in dict.fromkeys(df["case"]):
        for ov in other_values:
            g = []
            for hw in req.hardware:
                for strat in strategies:
                    idx = parts.get((case, ov, hw.name, strat))
                    if idx is None or not len(idx):
                        continue
                    dense_idx = parts[(case, ov, hw.name, "dense")]  # the same axis values, in the same order
                    dash, _ = style[hw.name]
                    fits = col["fits"][idx].astype(bool)
                    xs = col[axis][idx]
                    custom = list(zip(_num(col["time_s"][idx] * 1e3), _num(col["time_s"][dense_idx] * 1e3),
                                      _num(col["attention_speedup_vs_dense"][idx]),
                                      _num(col["ideal_speedup_vs_dense"][idx]), _num(col["speedup_vs_dense"][idx]),
                                      col["bound"][idx].tolist(), ["yes" if f else "NO (exceeds memory)" for f in fits],
                                      [tokens(v) for v in xs]))
                    name = f"{strat} · {hw.name}" if len(req.hardware) > 1 else strat
                    g.append(len(data))
                    for mi, (c, _, _) in enumerate(_SPEEDUP_METRICS):
                        metric_ys[mi].append(_num(col[c][idx]))
                    data.append(dict(
                        type="scatter", mode="lines+markers", name=strat, legendgroup=strat,
                        showlegend=hw is req.hardware[0], x=xs.tolist(), y=_num(col["speedup_vs_dense"][idx]),
                        line=dict(color=strategy_colour(strat), dash=dash, width=2),
                        marker=dict(size=7, color=strategy_colour(strat),
                                    symbol=["circle" if f else "circle-open" for f in fits]),
                        customdata=[list(row) for row in custom],
                        hovertemplate=(f"<b>{name}</b><br>{'S' if axis == 'seq_len' else 'B'}=%{{customdata[7]}}"
                                       "<br>step speedup %{customdata[4]:.3f}x · attention %{customdata[2]:.3f}x"
                                       " · ideal %{customdata[3]:.3f}x<br>step %{customdata[0]:.4g} ms (dense "
                                       "%{customdata[1]:.4g} ms)<br>bound: %{customdata[5]} · fits: "
                                       "%{customdata[6]}<extra></extra>"),
                    ))
            groups.append(g)
            labels.append(f"{case} · {'batch ' + str(ov) if other == 'batch' else 'seq ' + tokens(ov)}")
    for tr in _device_legend(req, "lines"):
        data.append(tr)
        for ys in metric_ys:
            ys.append([None])
    xtitle = "sequence length (tokens, log scale)" if axis == "seq_len" else "batch size (sequences, log scale)"
    fig = dict(data=data, layout=_layout(
        "Speedup over dense against " + ("sequence length" if axis == "seq_len" else "batch size"),
        xtitle, _SPEEDUP_METRICS[0][2], xlog=True, ylog=False, height=560))
    if axis == "seq_len":
        fig["layout"]["xaxis"].update(_seq_axis(req.seqs))
    else:
        fig["layout"]["xaxis"].update(tickmode="array", tickvals=req.batches, ticktext=[str(b) for b in req.batches])
    fig["layout"]["shapes"] = [dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=1, y1=1,
                                    line=dict(color="#3b3b3b", width=1, dash="dot"))]
    fig["layout"]["annotations"] = [dict(text="dense = 1x", xref="paper", x=1.0, xanchor="right", yref="y", y=1,
                                         yanchor="bottom", showarrow=False, font=dict(size=10, color="#3b3b3b"))]
    _apply_options(fig, groups, labels, "model, batch:" if axis == "seq_len" else "model, seq:")
    fig["layout"]["updatemenus"] = fig["layout"].get("updatemenus", []) + [dict(
        type="dropdown", direction="down", x=1.0, xanchor="right", y=1.02, yanchor="bottom", showactive=True,
        active=0, bgcolor="#f7f7f7", bordercolor="#999", font=dict(size=12), buttons=[
            dict(label=lab, method="update", args=[{"y": metric_ys[mi]}, {"yaxis.title.text": ytitle}])
            for mi, (_, lab, ytitle) in enumerate(_SPEEDUP_METRICS)])]
    fig["layout"]["annotations"].append(_menu_label("speedup of:", 0.745))
    what = "sequence length" if axis == "seq_len" else "batch size"
    desc = (f"Predicted speedup of each strategy over dense attention against {what}: colour = strategy, line style "
            f"= device. Open markers: the weights and KV cache (with the strategy's extra storage) do not fit in the "
            f"device's memory at that point. The right-hand menu switches between the whole decode step "
            f"(realistic: achieved bandwidth, launch overhead), attention alone, and the ideal roofline.")
    return Chart(f"speedup-{'seq' if axis == 'seq_len' else 'batch'}", f"Speedup against {what}", desc, fig)


def _capacity_chart(req: Request, df) -> Chart:
    style = _hw_style(req)
    data, groups, labels = [], [], []
    B0 = req.batches[0]  # max_batch does not depend on the batch asked for
    parts = {key: g for key, g in df[df["batch"] == B0].groupby(["case", "hardware", "strategy"], sort=False)}
    for case in dict.fromkeys(df["case"]):
        g = []
        for hw in req.hardware:
            for strat in req.strategies:
                rows = parts.get((case, hw.name, strat))
                if rows is None or rows.empty:
                    continue
                rows = rows.sort_values("seq_len")
                mb = rows["max_batch"].to_numpy(dtype=np.float64)
                shown = np.where((mb >= 1) & (mb < 2**40), mb, np.nan)
                note = np.where(mb < 1, "does not fit even one sequence",
                                np.where(mb >= 2**40, "unbounded (host memory)", ""))
                dash, symbol = style[hw.name]
                name = f"{strat} · {hw.name}" if len(req.hardware) > 1 else strat
                g.append(len(data))
                data.append(dict(
                    type="scatter", mode="lines+markers", name=strat, legendgroup=strat,
                    showlegend=hw is req.hardware[0], x=rows["seq_len"].tolist(),
                    y=_num(shown), line=dict(color=strategy_colour(strat), dash=dash, width=2),
                    marker=dict(size=7, symbol=symbol, color=strategy_colour(strat)),
                    customdata=np.stack([np.asarray([tokens(s) for s in rows["seq_len"]], dtype=object),
                                         mb.astype(np.int64).astype(object), note,
                                         (rows["memory_capacity_bytes"].to_numpy() / 1e9).astype(object)],
                                        axis=1).tolist(),
                    hovertemplate=(f"<b>{name}</b><br>S=%{{customdata[0]}}: largest batch %{{customdata[1]}} "
                                   "%{customdata[2]}<br>device memory %{customdata[3]:.4g} GB<extra></extra>"),
                ))
        groups.append(g)
        labels.append(str(case))
    data += _device_legend(req, "lines+markers")
    fig = dict(data=data, layout=_layout(
        "Memory capacity: the largest batch that fits", "sequence length (tokens, log scale)",
        "largest batch that fits (sequences, log scale)", xlog=True, ylog=True, height=560))
    fig["layout"]["xaxis"].update(_seq_axis(req.seqs))
    _apply_options(fig, groups, labels, "model:")
    desc = ("The largest batch whose weights, KV cache (with each strategy's extra storage: SparQ's second copy of K, "
            "Quest's page summaries; H2O and LM-Infinite keep only their k tokens) and workspace fit in the device's "
            "memory tiers, per strategy and sequence length (`max_batch` of predict). Gaps: not even one sequence "
            "fits. Line style and marker = device.")
    return Chart("capacity", "Memory capacity", desc, fig)


# --- evaluation (accuracy against transferred fraction) --------------------------------------------------------------


def _read_json(path: str, what: str):
    return read_json(Path(path), what)   # a regular file of sane size (errors.input_file), then JSON


def load_evaluation(path: str) -> list[dict]:
    """Rows of `sparq-sim evaluate --format json` ({"rows": [...]}, or a bare list): task, strategy, score,
    transfer_ratio (compression optional)."""
    obj = _read_json(path, "--evaluation")
    rows = obj.get("rows") if isinstance(obj, dict) else obj
    if not isinstance(rows, list):
        raise UserError(f"--evaluation {path!r}: expected an object with 'rows' (a list), as "
                        f"`sparq-sim evaluate --format json` writes")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"--evaluation {path!r}: rows[{i}] is not an object")
        missing = [c for c in ("strategy", "score", "transfer_ratio") if c not in row]
        if missing:
            raise UserError(f"--evaluation {path!r}: rows[{i}] has no {missing[0]!r} (each row needs task, strategy, "
                            f"compression, score, transfer_ratio)")
        for key, v in (("task", row.get("task")), ("strategy", row["strategy"])):
            if v is None and key == "task":  # optional
                continue
            if not isinstance(v, str) or not v.strip() or not _utf8(v):
                raise UserError(f"--evaluation {path!r}: rows[{i}].{key} must be a name (text), got {v!r}")
        score, ratio = row["score"], row["transfer_ratio"]
        if score is None or ratio is None:  # a run without a result (evaluate writes NaN as null)
            continue
        for key, v in (("score", score), ("transfer_ratio", ratio)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"--evaluation {path!r}: rows[{i}].{key} must be a number, got {v!r}")
        try:
            score, ratio = float(score), float(ratio)
        except OverflowError:
            raise UserError(f"--evaluation {path!r}: rows[{i}]: score and transfer_ratio must be finite numbers, "
                            f"got a number too large for a float") from None
        if not math.isfinite(score):
            raise UserError(f"--evaluation {path!r}: rows[{i}].score must be a finite number, got {score!r}")
        if not (math.isfinite(ratio) and ratio > 0):
            raise UserError(f"--evaluation {path!r}: rows[{i}].transfer_ratio must be a positive finite fraction "
                            f"of dense, got {ratio!r}")
        out.append({**row, "task": str(row.get("task") or "task"), "strategy": row["strategy"], "score": score,
                    "transfer_ratio": ratio})
    if not out:
        raise UserError(f"--evaluation {path!r}: no row with a score and a positive transfer_ratio")
    return out


def _utf8(text: str) -> bool:
    """False for text with lone surrogates (JSON '\\udc80'): it cannot be written into the UTF-8 HTML page."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_TASK_AXES = {  # task name -> y-axis title (higher is better unless said)
    "repetition": "characters reproduced before divergence",
    "passkey": "pass-key retrieval accuracy",
    "pass-key": "pass-key retrieval accuracy",
    "bpc": "bits per character (lower is better)",
}


def _evaluation_chart(rows: list[dict]) -> Chart:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    data, groups, updates = [], [], []
    for task in tasks:
        g = []
        trows = [r for r in rows if r["task"] == task]
        for strat in dict.fromkeys(r["strategy"] for r in trows):
            srows = sorted((r for r in trows if r["strategy"] == strat), key=lambda r: -r["transfer_ratio"])
            g.append(len(data))
            comp = [r.get("compression") for r in srows]
            data.append(dict(
                type="scatter", mode="lines+markers", name=strat, legendgroup=strat,
                x=[r["transfer_ratio"] for r in srows], y=[r["score"] for r in srows],
                customdata=[[("-" if c is None else f"{c}")] for c in comp],
                line=dict(color=strategy_colour(strat), width=2), marker=dict(size=8, color=strategy_colour(strat)),
                hovertemplate=(f"<b>{strat}</b> · {task}<br>transferred %{{x:.4f}} of dense"
                               " (compression %{customdata[0]})<br>score %{y:.4g}<extra></extra>")))
        groups.append(g)
        key = task.lower().replace("_", "-")
        updates.append({"yaxis.title.text": f"{task}: {_TASK_AXES.get(key, 'score (task metric)')}"})
    ratios = [r["transfer_ratio"] for r in rows]
    ticks = [2.0 ** -i for i in range(0, 11) if min(ratios) / 1.5 <= 2.0 ** -i <= max(ratios) * 1.5]
    fig = dict(data=data, layout=_layout(
        "Accuracy against the fraction of attention data transferred", "attention data transferred "
        "(fraction of dense, log scale)", "score", xlog=True, height=540))
    fig["layout"]["xaxis"].update(tickmode="array", tickvals=ticks,
                                  ticktext=["1" if t == 1 else f"1/{round(1 / t)}" for t in ticks])
    _apply_options(fig, groups, tasks, "task:", layout_updates=updates)
    desc = ("From `sparq-sim evaluate`: each strategy's score on the task against the fraction of dense attention "
            "traffic it transferred (the SparQ paper's Figure 1 kind of plot). Dense sits at 1.")
    return Chart("accuracy", "Accuracy against transferred fraction", desc, fig)


# --- traces (alpha and out_rel_err per layer) -------------------------------------------------------------------------


def _decode_meta(meta) -> dict:
    out = {}
    for key, v in (meta or {}).items():
        key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[key] = v
    return out


def _trace_reader():
    """The trace format's reader (`sparq_sim.traces.read_trace`, which validates the schema), or None while that
    module is not installed."""
    try:
        from . import traces as _traces
    except ImportError:
        return None
    return getattr(_traces, "read_trace", None)


def read_trace_layers(path: str):
    """(DataFrame with layer, alpha, out_rel_err; file metadata). Uses the trace reader of `traces/` when it is
    installed, else reads the Parquet file with pyarrow (one row per step, layer, KV head)."""
    import pandas as pd

    p = input_file(path, "--trace", "a trace file")
    need = ["layer", "alpha", "out_rel_err"]
    frame, meta = None, {}
    reader = _trace_reader()
    if reader is not None:
        obj = reader(str(p))  # its UserError names what is wrong with the file
        parts = list(obj) if isinstance(obj, tuple) else [obj]
        for part in parts:
            if frame is None and isinstance(part, pd.DataFrame):
                frame = part
            elif frame is None and hasattr(part, "to_pandas") and hasattr(part, "schema"):
                frame = part.to_pandas()
                meta = _decode_meta(part.schema.metadata)
            elif isinstance(part, dict):
                meta = part
            elif hasattr(part, "metadata") and isinstance(getattr(part, "metadata"), dict):
                meta = part.metadata
        if frame is not None and not meta:
            meta = dict(getattr(frame, "attrs", {}).get("metadata", {}) or frame.attrs)
    if frame is None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError("--trace needs pyarrow (pip install pyarrow)") from None
        try:
            schema = pq.read_schema(str(p))
            missing = [c for c in need if c not in schema.names]
            if missing:
                raise UserError(f"--trace {path!r}: no column {missing[0]!r} (a trace has one row per step, layer "
                                f"and KV head, with columns {', '.join(need)}, ...)")
            frame = pq.read_table(str(p), columns=need).to_pandas()
            meta = _decode_meta(schema.metadata)
        except UserError:
            raise
        except Exception as e:  # pyarrow's errors for a file that is not Parquet or is truncated
            raise UserError(f"--trace {path!r} cannot be read as Parquet: {' '.join(str(e).split())}") from None
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise UserError(f"--trace {path!r}: no column {missing[0]!r}")
    meta = {k: v for k, v in meta.items() if not str(k).startswith(("pandas", "ARROW"))}
    return frame[need], meta


def _trace_label(path: str, meta: dict) -> tuple[str, str]:
    strat = meta.get("strategy")
    if isinstance(strat, dict):
        strat = strat.get("name") or strat.get("strategy")
    strat = str(strat) if strat else ""
    extra = []
    params = meta.get("params") or meta.get("strategy_params") or (meta.get("strategy") if isinstance(
        meta.get("strategy"), dict) else None)
    if isinstance(params, dict):
        for key in ("compression", "r", "k"):
            if params.get(key) not in (None, "", 0):
                extra.append(f"{key}={params[key]}")
    for key in ("compression",):
        if meta.get(key) not in (None, "") and not any(e.startswith(key) for e in extra):
            extra.append(f"{key}={meta[key]}")
    label = " ".join([strat] + extra).strip() or Path(path).stem
    return f"{label} ({Path(path).name})", strat


def _trace_chart(paths: list[str]) -> Chart:
    data = []
    dashes = {}
    for path in paths:
        frame, meta = read_trace_layers(path)
        label, strat = _trace_label(path, meta)
        dash = DEVICE_DASHES[dashes.setdefault(strat, 0) % len(DEVICE_DASHES)]
        dashes[strat] += 1
        colour = strategy_colour(strat) if strat else _PALETTE[len(data) % len(_PALETTE)]
        for col, axis_n in (("alpha", ""), ("out_rel_err", "2")):
            v = frame[["layer", col]].astype({"layer": np.int64, col: np.float64})
            v = v[np.isfinite(v[col])]
            if col == "out_rel_err":
                v = v[v[col] > 0]
            if v.empty:
                continue
            agg = v.groupby("layer")[col].agg(["mean", "median", lambda s: s.quantile(0.1),
                                               lambda s: s.quantile(0.9), "count"])
            agg.columns = ["mean", "median", "p10", "p90", "count"]
            custom = np.stack([agg["median"], agg["p10"], agg["p90"], agg["count"]], axis=1)
            data.append(dict(
                type="scatter", mode="lines+markers", name=label, legendgroup=label, showlegend=axis_n == "",
                xaxis="x" + axis_n, yaxis="y" + axis_n, x=agg.index.tolist(), y=_num(agg["mean"]),
                error_y=dict(type="data", symmetric=False, array=_num(agg["p90"] - agg["mean"]),
                             arrayminus=_num(agg["mean"] - agg["p10"]), thickness=1, width=3, color=colour),
                line=dict(color=colour, dash=dash, width=2), marker=dict(size=6, color=colour),
                customdata=custom.tolist(),
                hovertemplate=(f"<b>{label}</b><br>layer %{{x}}: mean {col} %{{y:.4g}}<br>median %{{customdata[0]:.4g}}"
                               " · 10-90%: %{customdata[1]:.4g} to %{customdata[2]:.4g}<br>%{customdata[3]} "
                               "(step, KV head) rows<extra></extra>")))
    lay = _layout("Recorded traces: alpha and output error per layer", "layer", "alpha (softmax mass fetched)",
                  height=540)
    axis = dict(lay["xaxis"])
    lay["xaxis"].update(domain=[0, 0.46])
    if data and max(max(d["x"]) for d in data) <= 16:
        lay["xaxis"]["dtick"] = 1
    lay["xaxis2"] = dict(axis, domain=[0.56, 1], anchor="y2", title=dict(text="layer"))
    lay["yaxis2"] = dict(lay["yaxis"], anchor="x2", type="log", dtick="D2", title=dict(
        text="out_rel_err (output error vs dense, log)"))
    lay["legend"].update(orientation="h", y=-0.18, x=0)
    lay["margin"]["b"] = 110
    if not data:
        lay["annotations"] = [dict(text="no finite alpha or positive out_rel_err in these traces", x=0.5, y=0.5,
                                   xref="paper", yref="paper", showarrow=False, font=dict(size=14, color="#b00020"))]
    fig = dict(data=data, layout=lay)
    desc = ("From recorded traces (one row per decode step, layer and KV head): the mean over steps and KV heads of "
            "alpha (SparQ's approximate softmax mass on the fetched positions) and of the attention output's relative "
            "error against dense, per layer; bars span the 10th to 90th percentile.")
    return Chart("trace-layers", "Traces: alpha and error per layer", desc, fig)


# --- measured micro-benchmarks ----------------------------------------------------------------------------------------

def profile_for_device(name: str) -> HardwareProfile | None:
    """The profile for a measured `hardware` value (simulator.measured.resolve_device), or None if none matches."""
    from .simulator.measured import resolve_device
    try:
        return resolve_device(name)
    except UserError:
        return None


def predict_microbench_times(df, notes: list[str] | None = None) -> np.ndarray:
    """Predicted whole-batch time of each row of a measurement CSV (decode attention of one layer).

    A stand-in until the calibrated implementation models (issue 5) exist: the simulator's attention operators for a
    one-layer model with the row's n_heads / n_kv_heads / head_dim, timed on the roofline of the matching profile
    (realistic: achieved bandwidth and peak, launch overhead per kernel); the KV append is left out (the
    micro-benchmarks do not write the cache); k_layout does not change the formula's bytes. NaN where no profile
    matches or the strategy is unknown."""
    notes = notes if notes is not None else []
    pred = np.full(len(df), np.nan)
    keys = ["hardware", "strategy", "n_heads", "n_kv_heads", "head_dim", "dtype"]
    for key, g in df.groupby(keys, sort=False, dropna=False):
        hwname, strat, nh, nkv, hd, dtype = key
        prof = profile_for_device(str(hwname))
        if prof is None:
            notes.append(f"no hardware profile matches {hwname!r}: its {len(g)} rows are not predicted")
            continue
        try:
            strat = parse_strategies(str(strat))[0]
            dt = parse_dtype(str(dtype))
            nh, nkv, hd = int(nh), int(nkv), int(hd)
            B = g["batch"].to_numpy(dtype=np.int64)
            S = g["seq_len"].to_numpy(dtype=np.int64)
            m = ModelSpec(name=f"attention-{nh}x{hd}", n_layers=1, d_model=nh * hd, n_heads=nh, n_kv_heads=nkv,
                          head_dim=hd, d_ff=1, vocab_size=1, max_position=int(S.max()))
            over = {}
            if strat == "sparq":
                over["r"] = g["r"].to_numpy(dtype=np.float64)
            if strat != "dense" and g["k"].notna().all():
                over["k"] = g["k"].to_numpy(dtype=np.float64)
            params = resolve_params(strat, S, hd, 1.0, **over)
            prec = Precision.of(dt, None)
            matrix_peak(prof, dt)  # a clear note when the profile has no throughput for this dtype
            names, peak, achieved, _ = tier_table(prof)
            pl = Placement(names, peak, achieved, 0, 0, 0)
            ops = [op for op in attention_decode_ops(m, Parallel.of(m, 1), strat, B, S, params, prec, 1)
                   if not op.name.endswith("kv_append")]
            t = sum(time_op(op, prof, pl, prec, 1).time_s * op.layers for op in ops)
        except (UserError, ValueError) as e:
            notes.append(f"rows of {hwname} / {strat} / {dtype} not predicted: {e}")
            continue
        pred[df.index.get_indexer(g.index)] = np.broadcast_to(t, (len(g),))
    return pred


def load_measured(path: str):
    import pandas as pd

    p = input_file(path, "--measured", "a CSV file")
    try:
        df = pd.read_csv(p)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"--measured {path!r} cannot be read as CSV: {' '.join(str(e).split())}") from None
    missing = [c for c in MEASURED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"--measured {path!r}: no column {missing[0]!r} (the measurement schema: "
                        f"{', '.join(MEASURED_COLUMNS)}, time_stderr_s)")
    for c in ("batch", "seq_len", "n_heads", "n_kv_heads", "head_dim", "time_s"):
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise UserError(f"--measured {path!r}: column {c!r} must be numeric")
    df = df[np.isfinite(df["time_s"]) & (df["time_s"] > 0)].reset_index(drop=True)
    if df.empty:
        raise UserError(f"--measured {path!r}: no row with a positive time_s")
    # an all-blank column reads as float NaN: fill through object (no pandas warning about the fill value's type)
    df["k_layout"] = df["k_layout"].astype(object).where(df["k_layout"].notna(), "")
    return df


_MODEL_PREDICTOR = "implementation models"
_ROOFLINE_PREDICTOR = "attention roofline"


def predict_measured(df, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Predicted time of each measured row, and which predictor gave it: the implementation models of `sparq-sim
    validate` (simulator.measured: kernel launches, stream and gather efficiencies, top-k cost; calibrated where the
    profile carries a calibration) where they know the device and kernels, else the plain attention roofline of
    `predict_microbench_times`."""
    pred = np.full(len(df), np.nan)
    source = np.full(len(df), _ROOFLINE_PREDICTOR, dtype=object)
    try:
        from .simulator.implementations import get_implementation
        from .simulator.measured import resolve_device, validate
    except ImportError:
        validate = None
    for hwname, g in df.groupby("hardware", sort=False):
        if validate is not None:
            known = []
            for kernel in dict.fromkeys(g["kernel"].astype(str)):
                try:
                    get_implementation(kernel)
                    known.append(kernel)
                except UserError:
                    notes.append(f"kernel {kernel!r} has no implementation model: the plain attention roofline")
            sub = g[g["kernel"].astype(str).isin(known)]
            try:
                if len(sub):
                    rows, _ = validate(sub.reset_index(drop=True), resolve_device(str(hwname)))
                    if len(rows) == len(sub):
                        pos = df.index.get_indexer(sub.index)
                        pred[pos] = rows["predicted_time_s"].to_numpy(dtype=np.float64)
                        source[pos] = _MODEL_PREDICTOR
                        g = g.drop(index=sub.index)
            except (UserError, KeyError, ValueError, TypeError, AttributeError) as e:
                notes.append(f"{hwname}: implementation models not usable ({' '.join(str(e).split())}); "
                             f"the plain attention roofline instead")
        if len(g):
            pred[df.index.get_indexer(g.index)] = predict_microbench_times(g, notes)
    return pred, source


def _measured_charts(path: str) -> list[Chart]:
    df = load_measured(path)
    notes: list[str] = []
    df["predicted_s"], df["predictor"] = predict_measured(df, notes)
    df["device"] = [(profile_for_device(h).name if profile_for_device(h) else str(h)) for h in df["hardware"]]
    ok = df[np.isfinite(df["predicted_s"])]
    note_text = ("<br>" + "<br>".join(html.escape(n) for n in notes[:5])) if notes else ""
    # --- predicted against measured time
    devices = list(dict.fromkeys(ok["device"]))
    data, groups = [], []
    lo = min(ok["time_s"].min(), ok["predicted_s"].min()) / 2 if len(ok) else 1e-6
    hi = max(ok["time_s"].max(), ok["predicted_s"].max()) * 2 if len(ok) else 1.0
    bands = []
    for f, alpha in ((2.0, 0.07), (1.25, 0.12)):
        bands.append(dict(type="scatter", mode="lines", x=[lo, hi, hi, lo, lo],
                          y=[lo * f, hi * f, hi / f, lo / f, lo * f],
                          fill="toself", fillcolor=f"rgba(31,119,180,{alpha})", line=dict(width=0),
                          name=f"within {f:g}x" if f == 2 else "within ±25%", hoverinfo="skip"))
    bands.append(dict(type="scatter", mode="lines", x=[lo, hi], y=[lo, hi], name="predicted = measured",
                      line=dict(color="#222", dash="dash", width=1.2), hoverinfo="skip"))
    kernels = list(dict.fromkeys(ok["kernel"]))
    kcol = {kn: strategy_colour(kn) if kn in STRATEGY_COLOURS else None for kn in kernels}
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf", "#393b79", "#637939", "#843c39", "#7b4173"]
    for i, kn in enumerate(kernels):
        kcol[kn] = kcol[kn] or palette[i % len(palette)]
    for dev in devices:
        g = []
        for kn in kernels:
            rows = ok[(ok["device"] == dev) & (ok["kernel"] == kn)]
            if rows.empty:
                continue
            err = rows["predicted_s"] / rows["time_s"] - 1
            g.append(len(data))
            custom = np.stack([rows["batch"], rows["seq_len"], rows["r"].fillna(0), rows["k"].fillna(0), err * 100,
                               rows["k_layout"], rows["predictor"]], axis=1)
            data.append(dict(
                type="scatter", mode="markers", name=kn, legendgroup=kn, x=_num(rows["time_s"]),
                y=_num(rows["predicted_s"]), customdata=custom.tolist(),
                marker=dict(size=7, color=kcol[kn], symbol="circle-open" if "oneK" in kn else "circle", opacity=0.8,
                            line=dict(width=1.5 if "oneK" in kn else 0.5, color=kcol[kn] if "oneK" in kn else "white")),
                hovertemplate=(f"<b>{kn}</b> · {dev}<br>B=%{{customdata[0]}}, S=%{{customdata[1]}}, "
                               "r=%{customdata[2]}, k=%{customdata[3]}<br>measured %{x:.4s}s · predicted %{y:.4s}s"
                               "<br>error %{customdata[4]:+.1f}% (%{customdata[6]})<extra></extra>")))
        groups.append(g)
    n_b = len(bands)
    data = bands + data
    groups = [[i + n_b for i in g] for g in groups]
    fig = dict(data=data, layout=_layout(
        "Predicted against measured time (decode attention micro-benchmarks)", "measured time per call (s, log)",
        "predicted time per call (s, log)", xlog=True, ylog=True, height=600))
    for ax in ("xaxis", "yaxis"):
        fig["layout"][ax].update(range=[math.log10(lo), math.log10(hi)], **_log_ticks(lo, hi, "s"))
    _apply_options(fig, groups, devices, "device:")
    mape = (np.abs(ok["predicted_s"] / ok["time_s"] - 1).mean() * 100) if len(ok) else float("nan")
    how = []
    for dev in devices:
        used = set(ok.loc[ok["device"] == dev, "predictor"])
        how.append(f"{dev}: " + (" and ".join(sorted(used))))
    desc = (f"Each measured row of {html.escape(Path(path).name)} against the simulator's prediction for the same "
            f"shape: {len(ok)} of {len(df)} rows predicted, mean absolute error {mape:.0f}%. Predicted by "
            f"{html.escape('; '.join(how))}. The implementation models are those of `sparq-sim validate` (kernel "
            f"launches, stream and gather efficiencies, top-k cost; calibrated where the profile carries a "
            f"calibration); the attention roofline is the strategy's attention operators of one layer with the row's "
            f"heads and head_dim on the profile's roofline. Open markers: K stored once (-oneK). Bands: within ±25% "
            f"and within 2x.{note_text}")
    charts = [Chart("measured-time", "Predicted against measured time", desc, fig)]

    # --- speedup over the dense kernel, measured against predicted
    shape = ["hardware", "batch", "seq_len", "n_heads", "n_kv_heads", "head_dim", "dtype"]
    dense_rows = ok[ok["strategy"] == "dense"]
    data, groups = [], []
    base_names = {}
    for dev in devices:
        d = dense_rows[dense_rows["device"] == dev]
        if d.empty:
            continue
        base = "attn-torch" if "attn-torch" in set(d["kernel"]) else d["kernel"].value_counts().index[0]
        base_names[dev] = base
        d = d[d["kernel"] == base].drop_duplicates(shape).set_index(shape)
        others = ok[(ok["device"] == dev) & (ok["strategy"] != "dense")]
        g = []
        for kn in dict.fromkeys(others["kernel"]):
            rows = others[others["kernel"] == kn]
            idx = rows.set_index(shape).index
            match = d.reindex(idx)
            meas = match["time_s"].to_numpy() / rows["time_s"].to_numpy()
            pred = match["predicted_s"].to_numpy() / rows["predicted_s"].to_numpy()
            keep = np.isfinite(meas) & np.isfinite(pred)
            if not keep.any():
                continue
            rows = rows[keep]
            custom = np.stack([rows["batch"], rows["seq_len"], rows["r"].fillna(0), rows["k"].fillna(0),
                               (pred[keep] / meas[keep] - 1) * 100], axis=1)
            g.append(len(data))
            data.append(dict(
                type="scatter", mode="markers", name=kn, legendgroup=kn, x=_num(meas[keep]), y=_num(pred[keep]),
                customdata=custom.tolist(),
                marker=dict(size=7, color=kcol[kn], symbol="circle-open" if "oneK" in kn else "circle", opacity=0.8),
                hovertemplate=(f"<b>{kn}</b> over {base} · {dev}<br>B=%{{customdata[0]}}, S=%{{customdata[1]}}, "
                               "r=%{customdata[2]}, k=%{customdata[3]}<br>measured %{x:.3f}x · predicted %{y:.3f}x"
                               "<br>error %{customdata[4]:+.1f}%<extra></extra>")))
        groups.append((dev, g))
    if data:
        xs = [v for d in data for v in d["x"] if v] + [v for d in data for v in d["y"] if v]
        lo, hi = min(xs) / 1.5, max(xs) * 1.5
        ref = [dict(type="scatter", mode="lines", x=[lo, hi], y=[lo, hi], name="predicted = measured",
                    line=dict(color="#222", dash="dash", width=1.2), hoverinfo="skip"),
               dict(type="scatter", mode="lines", x=[lo, hi, hi, lo, lo], y=[lo * 1.15, hi * 1.15, hi / 1.15,
                                                                              lo / 1.15, lo * 1.15],
                    fill="toself", fillcolor="rgba(31,119,180,0.12)", line=dict(width=0), name="within ±15%",
                    hoverinfo="skip")]
        data = ref + data
        fig = dict(data=data, layout=_layout(
            "Speedup over the dense kernel: measured against predicted", "measured speedup over dense (x, log)",
            "predicted speedup over dense (x, log)", xlog=True, ylog=True, height=600))
        for ax in ("xaxis", "yaxis"):
            fig["layout"][ax].update(range=[math.log10(lo), math.log10(hi)], **_ratio_ticks(lo, hi))
        fig["layout"]["shapes"] = [
            dict(type="line", xref="x", yref="paper", x0=1, x1=1, y0=0, y1=1, line=dict(color="#999", width=1,
                                                                                        dash="dot")),
            dict(type="line", yref="y", xref="paper", y0=1, y1=1, x0=0, x1=1, line=dict(color="#999", width=1,
                                                                                        dash="dot"))]
        _apply_options(fig, [[i + 2 for i in g] for _, g in groups], [dev for dev, _ in groups], "device:")
        bases = "; ".join(f"{dev}: {b}" for dev, b in base_names.items())
        desc = ("Each non-dense kernel's speedup over the dense kernel at the same shape (batch, sequence length, "
                f"heads, head_dim, dtype), measured (x) and predicted (y). Dense kernel: {html.escape(bases)}. "
                "Points right of the dotted vertical line are faster than dense in the measurement.")
        charts.append(Chart("measured-speedup", "Speedup comparison", desc, fig))
    return charts


# ---------------------------------------------------------------------------------------------------------------------
# assembly


@dataclass
class Report:
    request: Request
    charts: list[Chart]
    header: dict


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def build(hardware=DEFAULT_HARDWARE, model=DEFAULT_MODEL, seq_len=DEFAULT_SEQ, batch=DEFAULT_BATCH, strategies=None,
          compression=8, dtype="auto", kv_dtype=None, devices=1, r=None, k=None, local_window=None, page_size=None,
          k_layout="twice", kv_location="auto", weights_location="auto", trace=None, evaluation=None,
          measured=None) -> Report:
    """Compute everything a report shows: the charts (plain plotly dictionaries) and the header facts."""
    req = _request(hardware, model, seq_len, batch, strategies, compression, dtype, kv_dtype, devices, r, k,
                   local_window, page_size, k_layout, kv_location, weights_location, trace, evaluation, measured)
    # read the optional inputs first: a bad file fails fast
    eval_rows = load_evaluation(req.evaluation) if req.evaluation else None
    df = _predict_frame(req)
    charts = [_roofline_chart(req, df, hw) for hw in req.hardware]
    charts += [_bytes_chart(req, df), _speedup_chart(req, df, "seq_len"), _speedup_chart(req, df, "batch"),
               _capacity_chart(req, df)]
    if eval_rows is not None:
        charts.append(_evaluation_chart(eval_rows))
    if req.traces:
        charts.append(_trace_chart(req.traces))
    if req.measured:
        charts += _measured_charts(req.measured)
    named = (("--trace", req.traces), ("--evaluation", [req.evaluation] if req.evaluation else []),
             ("--measured", [req.measured] if req.measured else []))
    inputs = [(flag, f, _file_digest(f)) for flag, files in named for f in files]
    from . import __version__
    header = dict(version=__version__, generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  inputs=inputs)
    return Report(req, charts, header)


def figures(hardware=DEFAULT_HARDWARE, model=DEFAULT_MODEL, seq_len=DEFAULT_SEQ, batch=DEFAULT_BATCH, strategies=None,
            compression=8, dtype="auto", kv_dtype=None, devices=1, r=None, k=None, local_window=None, page_size=None,
            k_layout="twice", kv_location="auto", weights_location="auto", trace=None, evaluation=None,
            measured=None) -> dict:
    """The report's charts as `plotly.graph_objects.Figure`s, by chart id (roofline-<device>, bytes, speedup-seq,
    speedup-batch, capacity, and with their inputs accuracy, trace-layers, measured-time, measured-speedup).

    Arguments as `sparq_sim.predict` (one value or a list; strings take comma lists and ranges), plus `trace`
    (Parquet files), `evaluation` (JSON of `sparq-sim evaluate`) and `measured` (CSV in the measurement schema).
    Example: `figures(hardware=["a100", "h100"], model="llama3-8b", seq_len="1k:64k:x2")["speedup-seq"].show()`."""
    import plotly.graph_objects as go

    rep = build(hardware, model, seq_len, batch, strategies, compression, dtype, kv_dtype, devices, r, k,
                local_window, page_size, k_layout, kv_location, weights_location, trace, evaluation, measured)
    return {c.id: go.Figure(c.figure) for c in rep.charts}


def _values(vals, fmt=str) -> str:
    vals = list(vals)
    if len(vals) > 6:
        return f"{fmt(vals[0])}, {fmt(vals[1])}, ..., {fmt(vals[-1])} ({len(vals)} values)"
    return ", ".join(fmt(v) for v in vals)


def _header_html(rep: Report, command: str | None) -> str:
    q = rep.request
    e = html.escape
    asked = [
        ("devices", ", ".join(h.name for h in q.hardware)),
        ("models", ", ".join(m.name for m in q.models)),
        ("sequence lengths", _values(q.seqs, tokens)),
        ("batch sizes", _values(q.batches)),
        ("strategies", ", ".join(q.strategies)),
        ("compression", _values(q.compressions, lambda c: f"{c:g}")),
        ("dtype", ", ".join(q.dtypes) + (f" (KV cache {q.kv_dtype})" if q.kv_dtype else "")),
        ("tensor-parallel devices", _values(q.devices)),
        ("placement", f"KV cache: {q.kv_location}; weights: {q.weights_location}; SparQ K stored {q.k_layout}"),
    ]
    over = [f"{n}={v}" for n, v in (("r", q.r), ("k", q.k), ("local window", q.local_window),
                                    ("page size", q.page_size)) if v is not None]
    if over:
        asked.append(("overrides", ", ".join(over)))
    for flag, f, digest in rep.header["inputs"]:
        asked.append((flag, f"{Path(f).name} (sha256 {digest})"))
    rows = "".join(f"<tr><th>{e(a)}</th><td>{e(str(b))}</td></tr>" for a, b in asked)
    profs = "".join(f"<tr><td>{e(h.name)}</td><td>{e(h.description)}</td><td>{h.version}</td>"
                    f"<td><code>{e(h.digest)}</code></td><td>{e(Path(h.path).name)}</td></tr>" for h in q.hardware)
    toc = " · ".join(f'<a href="#sec-{e(c.id)}">{e(c.title)}</a>' for c in rep.charts)
    cmd = f"<p class='cmd'><code>{e(command)}</code></p>" if command else ""
    return (f"<header><h1>sparq-sim report</h1>"
            f"<p class='sub'>Predicted bytes, time and speedup of KV-sparse attention in LLM decoding · sparq-sim "
            f"{e(rep.header['version'])} · generated {e(rep.header['generated'])} · works offline</p>{cmd}"
            f"<div class='cols'><div><h3>What was asked</h3><table class='kv'>{rows}</table></div>"
            f"<div><h3>Hardware profiles</h3><table class='prof'><tr><th>name</th><th>device</th><th>version</th>"
            f"<th>sha256</th><th>file</th></tr>{profs}</table>"
            f"<p class='note'>Times are the simulator's realistic roofline (achieved bandwidths and peaks, kernel "
            f"launch overhead) unless a chart says ideal; bytes count every layer and device of one decode step.</p>"
            f"</div></div><nav>{toc}</nav></header>")


_CSS = """
body{font-family:%s;margin:0;background:#fafafa;color:#222}
header,section{max-width:1400px;margin:0 auto;padding:12px 24px}
header h1{margin:8px 0 2px;font-size:24px} .sub{color:#555;margin:0 0 8px}
.cmd code{background:#eef;padding:3px 6px;border-radius:3px;font-size:12px}
.cols{display:flex;gap:32px;flex-wrap:wrap} .cols>div{flex:1;min-width:380px}
h3{font-size:15px;margin:10px 0 6px}
table{border-collapse:collapse;font-size:13px} th,td{text-align:left;padding:2px 10px 2px 0;vertical-align:top}
table.kv th{color:#555;font-weight:600;white-space:nowrap} table.prof th{color:#555;border-bottom:1px solid #ccc}
.note{font-size:12px;color:#666;max-width:640px}
nav{margin:10px 0 0;padding:8px 0;border-top:1px solid #ddd;font-size:13px} nav a{color:#1f5fa8;text-decoration:none}
section{background:white;border:1px solid #e3e3e3;border-radius:6px;margin:14px auto}
section h2{font-size:18px;margin:6px 0 4px} section p.desc{font-size:13px;color:#444;margin:0 0 6px;max-width:1100px}
.sparq-chart{width:100%%} .chart-error{color:#b00020;font-family:monospace}
""" % _FONT

_BOOT = """
(function () {
  var divs = document.querySelectorAll('div.sparq-chart');
  for (var i = 0; i < divs.length; i++) {
    var div = divs[i];
    try {
      var spec = JSON.parse(document.getElementById(div.getAttribute('data-spec')).textContent);
      Plotly.newPlot(div, spec.data, spec.layout, {responsive: true, displaylogo: false,
        toImageButtonOptions: {format: 'svg', filename: div.id}});
    } catch (err) {
      console.error('sparq-sim report: chart ' + div.id + ' failed: ' + err);
      div.innerHTML = '<p class="chart-error">this chart failed to draw: ' + String(err).replace(/</g, '&lt;') + '</p>';
    }
  }
})();
"""


def _script_json(text: str) -> str:
    # inside <script>, '</' could close the element; '<!--' could start a comment state
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def render_html(rep: Report, command: str | None = None) -> str:
    """The whole report as one HTML page: plotly.js inlined once, each chart's figure as a JSON block."""
    from plotly.offline import get_plotlyjs

    parts = ["<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             "<title>sparq-sim report</title>", f"<style>{_CSS}</style>",
             "<script type='text/javascript'>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
             f"<script type='text/javascript'>{get_plotlyjs()}</script>", "</head><body>",
             _header_html(rep, command)]
    for c in rep.charts:
        cid = html.escape(c.id)
        spec = _script_json(json.dumps(c.figure, separators=(",", ":"), allow_nan=False,
                                       default=_json_default))
        parts.append(f"<section id='sec-{cid}'><h2>{html.escape(c.title)}</h2><p class='desc'>{c.description}</p>"
                     f"<div class='sparq-chart' id='chart-{cid}' data-spec='spec-{cid}'></div>"
                     f"<script type='application/json' id='spec-{cid}'>{spec}</script></section>")
    parts.append(f"<script type='text/javascript'>{_BOOT}</script></body></html>\n")
    return "\n".join(parts)


def _json_default(v):
    if isinstance(v, np.generic):
        v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def write_report(path, hardware=DEFAULT_HARDWARE, model=DEFAULT_MODEL, seq_len=DEFAULT_SEQ, batch=DEFAULT_BATCH,
                 strategies=None, compression=8, dtype="auto", kv_dtype=None, devices=1, r=None, k=None,
                 local_window=None, page_size=None, k_layout="twice", kv_location="auto", weights_location="auto",
                 trace=None, evaluation=None, measured=None, command: str | None = None) -> Report:
    """Write the report to `path` (one self-contained HTML file, written atomically) and return what it holds.
    Arguments as `figures()`; `command` is shown in the header (the CLI passes its command line)."""
    from .simulator.output import write_atomic

    rep = build(hardware, model, seq_len, batch, strategies, compression, dtype, kv_dtype, devices, r, k,
                local_window, page_size, k_layout, kv_location, weights_location, trace, evaluation, measured)
    write_atomic(str(path), render_html(rep, command))
    return rep
