"""Recorded traces (with --trace): alpha and out_rel_err per layer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..common.errors import UserError, input_file
from .figure import _PALETTE, DEVICE_DASHES, Chart, _layout, _num, strategy_colour


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
        from .. import traces as _traces
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
    # looked up on the package: `sparq_sim.report._trace_reader` is the hook to replace (the tests read synthetic
    # traces with pyarrow)
    reader = sys.modules[__package__]._trace_reader()
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
