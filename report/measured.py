"""Measured micro-benchmarks (with --measured): predicted against measured time, and measured against predicted
speedup over the dense kernel."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from ..common.errors import UserError, input_file
from ..common.units import parse_dtype
from ..hardware_profiles import HardwareProfile
from ..simulator.ledger import Parallel, Precision, attention_decode_ops
from ..simulator.models import ModelSpec
from ..simulator.roofline import Placement, matrix_peak, tier_table, time_op
from ..simulator.strategies import COMPONENT_STRATEGIES, parse_strategies, resolve_params
from .figure import STRATEGY_COLOURS, Chart, _apply_options, _layout, _log_ticks, _num, _ratio_ticks, strategy_colour

MEASURED_COLUMNS = ("hardware", "kernel", "strategy", "k_layout", "batch", "seq_len", "n_heads", "n_kv_heads",
                    "head_dim", "dtype", "r", "k", "time_s")


def profile_for_device(name: str) -> HardwareProfile | None:
    """The profile for a measured `hardware` value (simulator.measured.resolve_device), or None if none matches."""
    from ..simulator.measured import resolve_device
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
            if strat in COMPONENT_STRATEGIES:
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
        from ..simulator.implementations import get_implementation
        from ..simulator.measured import resolve_device, validate
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
