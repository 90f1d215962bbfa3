"""Time and speedup over dense: against sequence length and against batch size, for the decode step, attention alone
and the ideal roofline."""

from __future__ import annotations

import numpy as np

from .figure import (Chart, _apply_options, _device_legend, _hw_style, _layout, _menu_label, _num, _seq_axis,
                     strategy_colour, tokens)
from .request import Request

_SPEEDUP_METRICS = [
    ("speedup_vs_dense", "decode step (realistic)", "speedup of the decode step over dense (x)"),
    ("attention_speedup_vs_dense", "attention only (realistic)", "speedup of attention over dense (x)"),
    ("ideal_speedup_vs_dense", "decode step (ideal roofline)", "ideal-roofline speedup of the step over dense (x)"),
]


def _speedup_chart(req: Request, df, axis: str) -> Chart:
    """Speedup over dense against seq_len (options: case x batch) or against batch (options: case x seq_len). With
    whole generations (`gen_len`), the metric menu offers the end-to-end speedup too."""
    metrics = list(_SPEEDUP_METRICS)
    if "e2e_speedup_vs_dense" in df.columns:
        metrics.append(("e2e_speedup_vs_dense", f"whole generation of {req.gen_len} tokens (e2e)",
                        f"speedup of prefill + {req.gen_len} tokens over dense (x)"))
    style = _hw_style(req)
    other = "batch" if axis == "seq_len" else "seq_len"
    other_values = req.batches if axis == "seq_len" else req.seqs
    strategies = [s for s in req.strategies if s != "dense"] or ["dense"]
    data, groups, labels = [], [], []
    metric_ys: list[list] = [[] for _ in metrics]
    # row positions of each (case, other axis value, device, strategy), sorted along the axis (numpy: fast)
    col = {c: df[c].to_numpy() for c in ("seq_len", "batch", "time_s", "fits", "bound") + tuple(m[0] for m in metrics)}
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
                    for mi, (c, _, _) in enumerate(metrics):
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
        xtitle, metrics[0][2], xlog=True, ylog=False, height=560))
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
            for mi, (_, lab, ytitle) in enumerate(metrics)])]
    fig["layout"]["annotations"].append(_menu_label("speedup of:", 0.745))
    what = "sequence length" if axis == "seq_len" else "batch size"
    desc = (f"Predicted speedup of each strategy over dense attention against {what}: colour = strategy, line style "
            f"= device. Open markers: the weights and KV cache (with the strategy's extra storage) do not fit in the "
            f"device's memory at that point. The right-hand menu switches between the whole decode step "
            f"(realistic: achieved bandwidth, launch overhead), attention alone, and the ideal roofline"
            + (f", and the whole generation (prefill, then {req.gen_len} tokens as the context grows)."
               if len(metrics) > len(_SPEEDUP_METRICS) else "."))
    return Chart(f"speedup-{'seq' if axis == 'seq_len' else 'batch'}", f"Speedup against {what}", desc, fig)
