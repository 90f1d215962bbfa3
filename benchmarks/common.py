"""What every benchmark script shares: the figures it reports, in a form `benchmarks/run` collects into one table.

A script measures, prints whatever it likes for a reader, and ends with

    from common import emit
    emit([dict(benchmark="predict sweep, ...", figure="rows per second", value=2.2, unit="M rows/s",
               target=">= 1 M rows/s", ok=True), ...])

which prints one line per figure, `FIGURE {json}`, on standard output. Keys: benchmark (what was run), figure (what
was measured), value (a number, or None when it could not be measured), unit, target (text such as "< 2 s", or ""
for a figure only reported), ok (True / False against the target, None when there is no target or no value).
Scripts also accept `--quick` (smaller sizes, fewer repeats) so that `benchmarks/run --quick` finishes in a minute or
two; the figures of a quick run are indicative only.
"""

from __future__ import annotations

import json
import math
import sys

KEYS = ("benchmark", "figure", "value", "unit", "target", "ok")
PREFIX = "FIGURE "


def figure(benchmark: str, figure: str, value, unit: str, target: str = "", ok=None) -> dict:
    """One figure; `ok` may be a callable applied to the value (skipped when the value is None)."""
    if value is not None:
        value = float(value)
        if not math.isfinite(value):
            value = None
    if callable(ok):
        ok = None if value is None else bool(ok(value))
    return dict(benchmark=benchmark, figure=figure, value=value, unit=unit, target=target, ok=ok)


def emit(figures: list[dict]) -> None:
    """Print each figure as a line `FIGURE {json}` on standard output (parsed by benchmarks/run)."""
    for f in figures:
        missing = [k for k in KEYS if k not in f]
        if missing:
            raise ValueError(f"figure {f!r} lacks {', '.join(missing)}")
        ok = f["ok"]
        if ok is not None and not isinstance(ok, bool):
            ok = bool(ok)
        print(PREFIX + json.dumps({**{k: f[k] for k in KEYS}, "ok": ok}), flush=True)
    sys.stdout.flush()


def parse(line: str) -> dict | None:
    """The figure of a `FIGURE {json}` line, or None for any other line."""
    if not line.startswith(PREFIX):
        return None
    try:
        f = json.loads(line[len(PREFIX):])
    except json.JSONDecodeError:
        return None
    return f if isinstance(f, dict) and all(k in f for k in KEYS) else None
