"""Interactive plotly reports: `sparq-sim report -o report.html`, or `sparq_sim.report.figures(...)` in a notebook.

The only package that imports plotly (reports live beside the CLI, imported only by `report`). It runs the
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

The package, file by file: `request` (the selection parsed, and the predict sweep over it), `figure` (colours, layouts,
menus and ticks every chart shares), one file per chart family (`roofline`, `bytes_moved`, `speedup` (time and speedup),
`capacity`, `accuracy` (--evaluation), `trace_layers` (--trace), `measured` (--measured)), and `page` (the charts of a
request assembled, and the HTML page).
"""

from __future__ import annotations

from .accuracy import load_evaluation
from .bytes_moved import BYTE_KINDS
from .figure import DEVICE_DASHES, DEVICE_SYMBOLS, STRATEGY_COLOURS, TIER_COLOURS, Chart, strategy_colour, tokens
from .measured import MEASURED_COLUMNS, load_measured, predict_measured, predict_microbench_times, profile_for_device
from .page import Report, build, figures, render_html, write_report
from .request import DEFAULT_BATCH, DEFAULT_HARDWARE, DEFAULT_SEQ, Request, _predict_frame, _request
from .trace_layers import _trace_reader, read_trace_layers

__all__ = ["build", "figures", "write_report", "render_html", "Report", "Request", "Chart", "load_evaluation",
           "load_measured", "read_trace_layers", "predict_measured", "predict_microbench_times", "profile_for_device",
           "strategy_colour", "tokens", "DEFAULT_HARDWARE", "DEFAULT_SEQ", "DEFAULT_BATCH", "STRATEGY_COLOURS",
           "DEVICE_DASHES", "DEVICE_SYMBOLS", "TIER_COLOURS", "BYTE_KINDS", "MEASURED_COLUMNS"]

# not part of the API: `_trace_reader` is the hook `trace_layers.read_trace_layers` looks up here (tests replace it);
# `_request` and `_predict_frame` are reached by the tests
_INTERNALS = (_trace_reader, _request, _predict_frame)
