"""Rendering of result columns (dict of numpy arrays) as a table, JSON or CSV, Parquet, and atomic file writes.

No pandas here: `sparq-sim predict` renders straight from the arrays so that it starts fast (pyarrow is imported only
to write Parquet). Large results stream: `write_parquet` writes chunks of columns as row groups, `csv_chunks` and
`json_chunks` render them piece by piece, and `open_atomic` puts the file in place only once it is complete.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserError

FORMATS = ("table", "json", "csv")
STREAM_FORMATS = FORMATS + ("parquet",)  # `predict`: formats that stream a large sweep (table excepted)


def resolve_format(fmt: str | None, output: str | None, formats: tuple[str, ...] = FORMATS) -> str:
    """--format, or the --output file's suffix (.json, .csv; .parquet where `formats` has it), or table."""
    if output is not None and not str(output).strip():
        raise UserError("--output is empty; give a file name (or leave --output out to write to standard output)")
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output else ""
        return suffix if suffix in formats and suffix != "table" else "table"
    f = fmt.strip().lower()
    if f not in formats:
        raise UserError(f"unknown --format {fmt!r}; accepted: {', '.join(formats)}")
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


def to_csv(cols: dict[str, np.ndarray], header: bool = True) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = list(cols)
    if header:
        w.writerow(names)
    w.writerows(zip(*[cols[c].tolist() for c in names]))
    return buf.getvalue()


# --- streaming: chunks of columns in, text pieces or Parquet row groups out -------------------------------------------

TEXT_CHUNK_ROWS = 16_384  # rows rendered at a time by csv_chunks / json_chunks (Python objects: keep it small)


def _split(chunks, rows: int):
    """Re-cut a stream of column dicts into pieces of at most `rows` rows (same order)."""
    for cols in chunks:
        n = len(next(iter(cols.values()))) if cols else 0
        if n <= rows:
            yield cols
            continue
        for lo in range(0, n, rows):
            yield {c: v[lo:lo + rows] for c, v in cols.items()}


def csv_chunks(chunks):
    """CSV text piece by piece: the header, then the rows of each chunk (string columns already decoded). Joined,
    the pieces are `to_csv` of the concatenated chunks."""
    first = True
    for cols in _split(chunks, TEXT_CHUNK_ROWS):
        yield to_csv(cols, header=first)
        first = False


def json_chunks(chunks):
    """JSON text piece by piece: a list of records, exactly `to_json(records(all rows))` once joined."""
    yield "["
    sep = "\n"
    empty = True
    for cols in _split(chunks, TEXT_CHUNK_ROWS):
        parts = []
        for rec in records(cols):
            body = json.dumps(_clean(rec), indent=1, allow_nan=False, default=_py)
            parts.append(sep + " " + body.replace("\n", "\n "))
            sep = ",\n"
        if parts:
            empty = False
            yield "".join(parts)
    yield "]\n" if empty else "\n]\n"


def umask_mode(path) -> None:
    """mkstemp makes 0600 files: give the result the mode a plain open() would (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def fsync_file(path) -> None:
    """Flush a written file to the disk, so that a rename cannot outlive its content after a crash."""
    try:
        fd = os.open(path, os.O_RDWR)  # Windows fsyncs only handles open for writing
    except OSError:
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder) -> None:
    """Make a rename in `folder` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


NAME_MAX = 255   # bytes in one file name on the usual file systems (ext4, xfs, btrfs, APFS, NTFS)


def output_target(path, what: str = "--output") -> tuple[Path, bool]:
    """Where an output goes: (the regular file to replace atomically, False) or (a special file to write into
    directly, True). A symlink is followed, so the file it points to is replaced and the link stays; a character
    device or a FIFO that exists (/dev/null, /dev/stdout, a named pipe) is written in place, never replaced; anything
    else that is not a regular file (a folder, a block device, a socket) is refused, as is a name ending in '/'
    (a folder's name) or longer than a file system allows. Every refusal is one line naming the output."""
    s = str(path)
    if s.endswith(("/", os.sep)):
        raise UserError(f"{what} {s!r} ends with '/', so it names a folder; give a file name")
    p = Path(s)
    size = len(p.name.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:
        raise UserError(f"{what} {s!r}: the file name is {size} bytes long; file systems allow {NAME_MAX}")
    try:
        if p.is_symlink():
            p = Path(os.path.realpath(p))
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UserError(f"{what} {s!r} cannot be written: {e.strerror or e}") from None
    except ValueError:   # a NUL byte in the name
        raise UserError(f"{what} {s!r} is not a usable file name (it holds a NUL byte)") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{what} {s!r} is a folder, expected a file name")
        if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            return p, True
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{what} {s!r} is not a regular file (a block device or a socket); give a file name")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{what} {s!r}: folder {str(folder)!r} does not exist")
    return p, False


def temporary_beside(p: Path, what: str = "--output") -> str:
    """A new empty temporary file in `p`'s folder, named after `p` but short enough for any file name limit."""
    folder = p.parent if str(p.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name[:100]}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise UserError(f"{what} {str(p)!r} cannot be written: {e.strerror or e}") from None
    os.close(fd)
    return tmp


def _write_failed(what: str, path, e: OSError) -> UserError:
    return UserError(f"{what} {str(path)!r} could not be written: {e.strerror or e}; nothing was written")


@contextlib.contextmanager
def open_atomic(path: str, what: str = "--output", durable: bool = False, seekable: bool = False):
    """Yield the name of a temporary file beside `path`; rename it onto `path` when the block completes, remove it
    when the block raises (KeyboardInterrupt included): the target ends up complete or as it was. `durable` also
    fsyncs the file before the rename and the folder after it, and holds a Ctrl-C until the rename is done.
    `path` is resolved by `output_target`: a symlink's target is replaced, a device or FIFO is written directly (a
    writer that must seek, `seekable`, such as Parquet's, writes a temporary file that is then copied into it).
    A write that fails (disk full, file too large) is one line, with the target left as it was."""
    from .interrupt import deferred

    p, direct = output_target(path, what)
    if direct and not seekable:
        try:
            yield str(p)
        except OSError as e:
            raise _write_failed(what, path, e) from None
        return
    if direct:
        fd, tmp = tempfile.mkstemp(prefix=".sparq-sim.", suffix=".tmp")
        os.close(fd)
        try:
            yield tmp
            with open(tmp, "rb") as src, open(p, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        except OSError as e:
            raise _write_failed(what, path, e) from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return
    folder = p.parent if str(p.parent) else Path(".")
    tmp = temporary_beside(p, what)
    try:
        yield tmp
        umask_mode(tmp)
        if durable:
            fsync_file(tmp)
            with deferred():
                os.replace(tmp, p)
            fsync_dir(folder)
        else:
            os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_failed(what, path, e) from None
        raise


class ReaderGone(Exception):
    """The reader of standard output went away (`sparq-sim predict ... | head -1`): not an error; the CLI ends the
    command quietly with status 0. Not an OSError, so that click's own EPIPE handling (exit 1) never sees it."""


def write_stdout(text: str) -> None:
    """Text to standard output; a closed or failing standard output (`>&-`, `> /dev/full`) is one line, and a reader
    that went away (`| head`) ends the command quietly (ReaderGone)."""
    if sys.stdout is None:
        raise UserError("standard output is closed; give -o FILE to write the result to a file")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise ReaderGone() from None
    except OSError as e:
        raise UserError(f"cannot write to standard output: {e.strerror or e}") from None


def write_atomic(path: str, text: str) -> None:
    """Write the whole file or nothing: a temporary file in the same folder, then rename over the target."""
    write_text_atomic(path, [text])


def write_text_atomic(path: str, pieces) -> None:
    """Write text pieces (an iterable, consumed as it is written) to `path`, atomically."""
    with open_atomic(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            for piece in pieces:
                f.write(piece)


def write_text(output: str | None, pieces) -> None:
    """Text pieces to the file `output` (atomically) or, without one, to standard output as they come."""
    if output:
        write_text_atomic(output, pieces)
        return
    for piece in pieces:
        write_stdout(piece)


def _arrow_table(cols: dict):
    """Columns -> a pyarrow Table: numeric and boolean columns keep their numpy dtype, string columns (`Labels`, or
    arrays of str) become Arrow strings (Parquet dictionary-encodes them on disk)."""
    import pyarrow as pa

    arrays = []
    for v in cols.values():
        if hasattr(v, "codes") and hasattr(v, "categories"):  # predict.Labels, without importing it
            arrays.append(pa.array(list(v.categories), type=pa.string()).take(pa.array(v.codes)))
        elif v.dtype.kind in "OUS":
            arrays.append(pa.array(v, type=pa.string()))
        else:
            arrays.append(pa.array(v))
    return pa.Table.from_arrays(arrays, names=list(cols))


def write_parquet(path: str, chunks, row_group_rows: int | None = None, metadata: dict | None = None) -> int:
    """Stream column dicts (`chunks`, an iterable of dicts with the same columns) into the Parquet file `path`, one
    row group per chunk (small chunks are merged up to `row_group_rows`), through a temporary file that replaces
    `path` only when every chunk is written. Memory holds one or two chunks, whatever the number of rows. Returns
    the number of rows written. `metadata`: string key-value pairs for the file's footer."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise UserError(f"Parquet output needs pyarrow ({e}); install it with `pip install pyarrow`, or write CSV "
                        f"(-f csv)") from None
    rows = 0
    with open_atomic(path, seekable=True) as tmp:
        writer = None
        pending: list = []
        pending_rows = 0
        try:
            def flush():
                nonlocal pending, pending_rows
                if pending:
                    t = pending[0] if len(pending) == 1 else pa.concat_tables(pending)
                    writer.write_table(t, row_group_size=max(t.num_rows, 1))
                    pending, pending_rows = [], 0

            for cols in chunks:
                t = _arrow_table(cols)
                if writer is None:
                    schema = t.schema.with_metadata({str(k): str(v) for k, v in (metadata or {}).items()})
                    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                t = t.cast(writer.schema) if t.schema != writer.schema else t
                pending.append(t)
                pending_rows += t.num_rows
                rows += t.num_rows
                if row_group_rows is None or pending_rows >= row_group_rows:
                    flush()
            if writer is None:
                raise UserError("nothing to write: the sweep has no rows")
            flush()
        finally:
            if writer is not None:
                writer.close()
    return rows


# --- table -----------------------------------------------------------------------------------------------------------

def _bytes(v):
    return f"{v / 1e9:.3f} GB" if v >= 1e8 else f"{v / 1e6:.2f} MB"


def _ms(v):
    return f"{v * 1e3:.3f}"


PREDICT_TABLE = [
    # header, column, formatter
    ("hardware", "hardware", str), ("model", "model", str), ("dtype", "dtype", str), ("kv", "kv_dtype", str),
    ("C", "compression", lambda v: f"{v:g}"), ("devices", "devices", str), ("pp", "pipeline", str),
    ("mb", "microbatches", str),
    ("w on dev", "weights_on_device", lambda v: f"{v:.0%}"), ("kv on dev", "kv_on_device", lambda v: f"{v:.0%}"),
    ("w on disk", "weights_on_disk", lambda v: f"{v:.0%}"), ("kv on disk", "kv_on_disk", lambda v: f"{v:.0%}"),
    ("B", "batch", str),
    ("S", "seq_len", str), ("strategy", "strategy", str), ("r", "r", lambda v: str(v) if v else "-"),
    ("k", "k", lambda v: str(v) if v else "-"),
    ("attn bytes", "attention_bytes", _bytes), ("attn frac", "attention_fraction", lambda v: f"{v:.4f}"),
    ("total bytes", "total_bytes", _bytes), ("step ms", "time_s", _ms), ("ideal ms", "ideal_time_s", _ms),
    ("attn ms", "attention_time_s", _ms), ("speedup", "speedup_vs_dense", lambda v: f"{v:.2f}x"),
    ("attn speedup", "attention_speedup_vs_dense", lambda v: f"{v:.2f}x"),
    ("ideal attn", "attention_ideal_speedup_vs_dense", lambda v: f"{v:.2f}x"), ("bound", "bound", str),
    ("fits", "fits", lambda v: "yes" if v else "NO"),
]
# whole generations (predict --gen-len): the per-step detail gives way to the generation's figures
PREDICT_GENERATION_TABLE = PREDICT_TABLE[:[c for _, c, _ in PREDICT_TABLE].index("k") + 1] + [
    ("attn frac", "attention_fraction", lambda v: f"{v:.4f}"),
    ("ttft ms", "ttft_s", _ms), ("tpot ms", "tpot_s", lambda v: "-" if v != v else _ms(v)),
    ("e2e s", "e2e_time_s", lambda v: f"{v:.3f}"), ("tok/s", "throughput_tokens_s", lambda v: f"{v:.1f}"),
    ("e2e speedup", "e2e_speedup_vs_dense", lambda v: f"{v:.2f}x"),
    ("fits at end", "fits_at_end", lambda v: "yes" if v else "NO"),
]
PREDICT_HEADER_COLUMNS = ("hardware", "model", "dtype", "kv_dtype", "compression", "devices", "batch", "seq_len",
                          "gen_len", "weights_on_device", "kv_on_device", "weights_on_disk", "kv_on_disk", "pipeline",
                          "microbatches")


def render_table(cols: dict[str, np.ndarray], spec=PREDICT_TABLE, title: str | None = None,
                 drop_constant=("hardware", "model", "batch", "seq_len"), titled: bool = False) -> str:
    """A plain-text table (fixed-width, no colour codes, no trailing blanks, so it pipes and diffs cleanly). Columns of
    `drop_constant` that hold one value on every row leave the table: their values join the title, or, with `titled`,
    the caller's title already states them."""
    n = len(next(iter(cols.values()))) if cols else 0
    use = [(h, c, f) for h, c, f in spec if c in cols]
    const = [(h, c, f) for h, c, f in use if c in drop_constant and len(set(cols[c].tolist())) == 1]
    if const and len(use) > len(const):
        if not titled:
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
    return "\n".join(line.rstrip() for line in lines) + "\n"
