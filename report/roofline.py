"""The roofline chart of one device: memory roofs per tier, compute roofs per dtype, and every decode operator of the
ledger as a point."""

from __future__ import annotations

import math

import numpy as np

from ..hardware_profiles import HardwareProfile
from ..simulator.cases import Case, auto_dtype
from ..simulator.ledger import Precision
from ..simulator.models import ModelSpec
from ..simulator.predict import evaluate_case
from ..simulator.roofline import BOUNDS, tier_table
from .figure import TIER_COLOURS, Chart, _apply_options, _layout, _num, _si, strategy_colour, tokens
from .request import Request


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
