"""The bytes moved per decode step, stacked by kind (weights, activations, KV read, KV write, strategy metadata)."""

from __future__ import annotations

import numpy as np

from .figure import Chart, _apply_options, _layout, _num, tokens
from .request import Request

BYTE_KINDS = [  # column of predict, label, colour
    ("weight_bytes", "weights", "#7f8c9a"),
    ("activation_bytes", "activations", "#c7c7c7"),
    ("kv_read_bytes", "KV read", "#1f77b4"),
    ("kv_write_bytes", "KV write", "#aec7e8"),
    ("metadata_bytes", "strategy metadata", "#ff7f0e"),
]


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
