"""Memory capacity: the largest batch that fits (`max_batch` of predict) per strategy and sequence length."""

from __future__ import annotations

import numpy as np

from .figure import Chart, _apply_options, _device_legend, _hw_style, _layout, _num, _seq_axis, strategy_colour, tokens
from .request import Request


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
