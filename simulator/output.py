"""Rendering of result columns (dict of numpy arrays) as a table, JSON or CSV, and atomic file writes.

No pandas here: `sparq-sim predict` renders straight from the arrays so that it starts fast.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError

FORMATS = ("table", "json", "csv")


def resolve_format(fmt: str | None, output: str | None) -> str:
    """--format, or the --output file's suffix (.json, .csv), or table."""
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output else ""
        return suffix if suffix in ("json", "csv") else "table"
    f = fmt.strip().lower()
    if f not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; accepted: {', '.join(FORMATS)}")
    return f


def _py(v):
    """numpy scalar -> JSON-safe Python value (non-finite floats become null)."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def records(cols: dict[str, np.ndarray]) -> list[dict]:
    names = list(cols)
    lists = []
    for c in names:
        a = cols[c]
        if a.dtype.kind == "f":
            lst = [x if math.isfinite(x) else None for x in a.tolist()]
        else:
            lst = a.tolist()
        lists.append(lst)
    return [dict(zip(names, row)) for row in zip(*lists)]


def _clean(obj):
    """Make a structure JSON-safe: numpy scalars to Python, non-finite floats to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _py(obj)
    return obj


def to_json(obj) -> str:
    return json.dumps(_clean(obj), indent=1, allow_nan=False, default=_py) + "\n"


def to_csv(cols: dict[str, np.ndarray]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = list(cols)
    w.writerow(names)
    w.writerows(zip(*[cols[c].tolist() for c in names]))
    return buf.getvalue()


def write_atomic(path: str, text: str) -> None:
    """Write the whole file or nothing: a temporary file in the same folder, then rename over the target."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"--output {path!r} is a directory, expected a file name")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"--output {path!r}: folder {str(folder)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written file follows the umask like any other
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --- table -----------------------------------------------------------------------------------------------------------

def _bytes(v):
    return f"{v / 1e9:.3f} GB" if v >= 1e8 else f"{v / 1e6:.2f} MB"


def _ms(v):
    return f"{v * 1e3:.3f}"


PREDICT_TABLE = [
    # header, column, formatter
    ("hardware", "hardware", str), ("model", "model", str), ("B", "batch", str), ("S", "seq_len", str),
    ("strategy", "strategy", str), ("r", "r", lambda v: str(v) if v else "-"), ("k", "k", lambda v: str(v) if v else "-"),
    ("attn bytes", "attention_bytes", _bytes), ("attn frac", "attention_fraction", lambda v: f"{v:.4f}"),
    ("total bytes", "total_bytes", _bytes), ("step ms", "time_s", _ms), ("ideal ms", "ideal_time_s", _ms),
    ("attn ms", "attention_time_s", _ms), ("speedup", "speedup_vs_dense", lambda v: f"{v:.2f}x"),
    ("attn speedup", "attention_speedup_vs_dense", lambda v: f"{v:.2f}x"), ("bound", "bound", str),
    ("fits", "fits", lambda v: "yes" if v else "NO"),
]


def render_table(cols: dict[str, np.ndarray], spec=PREDICT_TABLE, title: str | None = None,
                 drop_constant=("hardware", "model", "batch", "seq_len")) -> str:
    """A plain-text table (fixed-width, no colour codes, so it pipes and diffs cleanly)."""
    n = len(next(iter(cols.values()))) if cols else 0
    use = [(h, c, f) for h, c, f in spec if c in cols]
    if n > 1:  # columns that are the same on every row move to the title
        const = [(h, c, f) for h, c, f in use if c in drop_constant and len(set(cols[c].tolist())) == 1]
        if const and len(use) > len(const):
            extra = ", ".join(f"{h}={f(cols[c][0])}" for h, c, f in const)
            title = f"{title}  ({extra})" if title else extra
            use = [u for u in use if u not in const]
    cells = [[f(v) for v in cols[c].tolist()] for _, c, f in use]
    widths = [max([len(h)] + [len(x) for x in col]) for (h, _, _), col in zip(use, cells)]
    numeric = [cols[c].dtype.kind in "iuf" for _, c, _ in use]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.rjust(w) if num else h.ljust(w) for (h, _, _), w, num in zip(use, widths, numeric)))
    lines.append("  ".join("-" * w for w in widths))
    for i in range(n):
        lines.append("  ".join(col[i].rjust(w) if num else col[i].ljust(w)
                               for col, w, num in zip(cells, widths, numeric)))
    return "\n".join(lines) + "\n"
