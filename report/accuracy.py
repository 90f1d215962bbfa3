"""Accuracy (with --evaluation): each strategy's score against the fraction of dense attention traffic it transferred,
from the JSON of `sparq-sim evaluate`."""

from __future__ import annotations

import math
from pathlib import Path

from ..common.errors import UserError, read_json
from .figure import Chart, _apply_options, _layout, strategy_colour


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
