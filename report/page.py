"""The report assembled: every chart of a request (`build`, `figures`), and the self-contained HTML page (header,
plotly.js inlined once, each chart's figure as a JSON block) written atomically (`render_html`, `write_report`)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .accuracy import _evaluation_chart, load_evaluation
from .bytes_moved import _bytes_chart
from .capacity import _capacity_chart
from .figure import _FONT, Chart, tokens
from .measured import _measured_charts
from .request import DEFAULT_BATCH, DEFAULT_HARDWARE, DEFAULT_MODEL, DEFAULT_SEQ, Request, _predict_frame, _request
from .roofline import _roofline_chart
from .speedup import _speedup_chart
from .trace_layers import _trace_chart


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
          measured=None, gen_len=None) -> Report:
    """Compute everything a report shows: the charts (plain plotly dictionaries) and the header facts."""
    req = _request(hardware, model, seq_len, batch, strategies, compression, dtype, kv_dtype, devices, r, k,
                   local_window, page_size, k_layout, kv_location, weights_location, trace, evaluation, measured,
                   gen_len)
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
    from .. import __version__
    header = dict(version=__version__, generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  inputs=inputs)
    return Report(req, charts, header)


def figures(hardware=DEFAULT_HARDWARE, model=DEFAULT_MODEL, seq_len=DEFAULT_SEQ, batch=DEFAULT_BATCH, strategies=None,
            compression=8, dtype="auto", kv_dtype=None, devices=1, r=None, k=None, local_window=None, page_size=None,
            k_layout="twice", kv_location="auto", weights_location="auto", trace=None, evaluation=None,
            measured=None, gen_len=None) -> dict:
    """The report's charts as `plotly.graph_objects.Figure`s, by chart id (roofline-<device>, bytes, speedup-seq,
    speedup-batch, capacity, and with their inputs accuracy, trace-layers, measured-time, measured-speedup).

    Arguments as `sparq_sim.predict` (one value or a list; strings take comma lists and ranges), plus `trace`
    (Parquet files), `evaluation` (JSON of `sparq-sim evaluate`), `measured` (CSV in the measurement schema) and
    `gen_len` (whole generations of that many tokens: the speedup charts offer the end-to-end speedup too).
    Example: `figures(hardware=["a100", "h100"], model="llama3-8b", seq_len="1k:64k:x2")["speedup-seq"].show()`."""
    import plotly.graph_objects as go

    rep = build(hardware, model, seq_len, batch, strategies, compression, dtype, kv_dtype, devices, r, k,
                local_window, page_size, k_layout, kv_location, weights_location, trace, evaluation, measured,
                gen_len)
    return {c.id: go.Figure(c.figure) for c in rep.charts}


# ---------------------------------------------------------------------------------------------------------------------
# the HTML page


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
                 trace=None, evaluation=None, measured=None, command: str | None = None, gen_len=None) -> Report:
    """Write the report to `path` (one self-contained HTML file, written atomically) and return what it holds.
    Arguments as `figures()`; `command` is shown in the header (the CLI passes its command line)."""
    from ..simulator.output import write_atomic

    rep = build(hardware, model, seq_len, batch, strategies, compression, dtype, kv_dtype, devices, r, k,
                local_window, page_size, k_layout, kv_location, weights_location, trace, evaluation, measured,
                gen_len)
    write_atomic(str(path), render_html(rep, command))
    return rep
