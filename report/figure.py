"""What every chart shares: colours, line styles and markers, the `Chart` record, plotly layouts and dropdown menus,
axis ticks, and numbers made JSON-safe. Figures are plain dictionaries (see the package docstring)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .request import Request

STRATEGY_COLOURS = {
    "dense": "#3b3b3b", "sparq": "#1f77b4", "h2o": "#d62728", "flexgen": "#2ca02c", "lm-infinite": "#9467bd",
    "quest": "#ff7f0e", "loki": "#8c564b", "double-sparsity": "#e377c2", "snapkv": "#bcbd22",
    "dsa": "#393b79",
}
_PALETTE = ["#17becf", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2"]
DEVICE_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
DEVICE_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "cross", "x"]
TIER_COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e"]
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


@dataclass
class Chart:
    id: str
    title: str
    description: str
    figure: dict  # plotly figure as a plain dictionary: {"data": [...], "layout": {...}}


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
