"""Trace schema, writer and reader (see the package docstring for the columns and metadata). pyarrow + numpy only."""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..common.errors import UserError, input_file
from ..simulator.interrupt import checkpoint, deferred
from ..simulator.output import fsync_dir, fsync_file, output_target, temporary_beside, umask_mode
from ..simulator.strategies import QUEST_DENSE_LAYERS, STRATEGIES

SCHEMA_VERSION = 1
METADATA_KEY = b"sparq_sim.trace"

SCHEMA = pa.schema([
    pa.field("step", pa.int32(), nullable=False),
    pa.field("layer", pa.int32(), nullable=False),
    pa.field("kv_head", pa.int32(), nullable=False),
    pa.field("batch", pa.int32(), nullable=False),
    pa.field("seq_len", pa.int32(), nullable=False),
    pa.field("k", pa.int32(), nullable=False),
    pa.field("r", pa.int32(), nullable=False),
    pa.field("positions", pa.list_(pa.int32()), nullable=False),
    pa.field("components", pa.list_(pa.int32()), nullable=False),
    pa.field("alpha", pa.float32(), nullable=True),
    pa.field("oracle_mass", pa.float32(), nullable=False),
    pa.field("out_rel_err", pa.float32(), nullable=False),
])
COLUMNS = tuple(SCHEMA.names)
REQUIRED_METADATA = ("schema_version", "model", "strategy", "params", "dtypes", "task", "packages")


def _list_array(values) -> pa.Array:
    """A list of int sequences (numpy arrays or lists) -> list<int32>, built from one flat buffer."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    seqs = [np.asarray(v, dtype=np.int32).reshape(-1) for v in values]
    offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int32()))


def _to_table(columns: Mapping[str, object]) -> pa.Table:
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"trace rows lack column(s) {', '.join(missing)}")
    arrays = []
    for f in SCHEMA:
        v = columns[f.name]
        if pa.types.is_list(f.type):
            a = _list_array(v).cast(f.type)
        elif f.name == "alpha":
            x = np.asarray(v, dtype=np.float32)
            a = pa.array(x, type=pa.float32(), mask=np.isnan(x))
        else:
            a = pa.array(np.asarray(v), type=f.type) if not isinstance(v, pa.Array) else v.cast(f.type)
        arrays.append(a)
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def rows_table(columns: Mapping[str, object]) -> pa.Table:
    """Trace rows given as columns (as `TraceWriter.write` takes them) -> an Arrow table with SCHEMA."""
    return _to_table(columns)


def _package_versions() -> dict:
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("sparq-sim", "torch", "transformers", "pyarrow", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _system_temporary() -> str:
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".sparq-sim.", suffix=".tmp")
    os.close(fd)
    return tmp


class TraceWriter:
    """Streams rows to `path` through a temporary file in the same folder; `close()` renames it into place.

    Use as a context manager: on an exception (KeyboardInterrupt included) the temporary file is removed and `path`
    is left as it was. Metadata may be completed before closing (`writer.metadata["task"]["score"] = ...`).
    `committed` turns True together with the rename (a Ctrl-C cannot fall between the two): `path` is then complete.
    """

    def __init__(self, path: str | os.PathLike, metadata: Mapping, row_group_rows: int = 65_536):
        # a symlink's target is replaced; a device or FIFO (/dev/null, a named pipe) is written directly
        self.path, self._direct = output_target(path)
        self._given = str(path)
        self.metadata = {"schema_version": SCHEMA_VERSION, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"), "packages": _package_versions()}
        self.metadata.update(dict(metadata))
        self.row_group_rows = row_group_rows
        # a device or FIFO cannot take Parquet's seeks: the trace is written aside, then copied into it on close
        self._tmp = Path(_system_temporary()) if self._direct else Path(temporary_beside(self.path))
        try:
            self._writer = pq.ParquetWriter(self._tmp, SCHEMA, compression="zstd")
        except OSError as e:
            self._drop_temporary()
            raise UserError(f"--output {self._given!r} cannot be written: {e.strerror or e}") from None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0
        self._closed = False
        self.committed = False

    def write(self, columns: Mapping[str, object] | pa.Table) -> None:
        """Append rows given as columns (numpy arrays; `positions`/`components` as lists of int arrays), or as an
        Arrow table with SCHEMA's columns."""
        t = columns.select(list(COLUMNS)).cast(SCHEMA) if isinstance(columns, pa.Table) else _to_table(columns)
        self._pending.append(t)
        self._pending_rows += t.num_rows
        self.rows += t.num_rows
        if self._pending_rows >= self.row_group_rows:
            try:
                self._flush()
            except OSError as e:   # disk full, file too large: nothing half-written stays behind
                self.abort()
                raise UserError(f"--output {self._given!r} could not be written: {e.strerror or e}; nothing was "
                                f"written") from None

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self.row_group_rows)
            self._pending, self._pending_rows = [], 0

    def close(self) -> Path:
        """Flush, write the metadata, and move the file into place."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            missing = [k for k in REQUIRED_METADATA if k not in self.metadata]
            if missing:
                raise ValueError(f"trace metadata lacks {', '.join(missing)}")
            self._flush()
            self._writer.add_key_value_metadata(
                {METADATA_KEY.decode(): json.dumps(self.metadata, default=_json_default)})
            self._writer.close()
            if self._direct:   # a device or FIFO: copied into, nothing to rename
                with open(self._tmp, "rb") as src, open(self.path, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                self.committed = True
                return self.path
            umask_mode(self._tmp)
            fsync_file(self._tmp)
            checkpoint("write")
            with deferred():  # the rename and `committed` together: a Ctrl-C waits for both
                os.replace(self._tmp, self.path)
                self.committed = True
            fsync_dir(self.path.parent if str(self.path.parent) else Path("."))
        except OSError as e:
            raise UserError(f"--output {self._given!r} could not be written: {e.strerror or e}; nothing was "
                            f"written") from None
        finally:
            self._drop_temporary()
        return self.path

    def _drop_temporary(self) -> None:
        self._tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        if not self._closed:
            self._closed = True
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
        self._pending = []
        self._drop_temporary()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_trace(path, rows: Mapping[str, object] | Iterable[Mapping[str, object]], metadata: Mapping) -> Path:
    """Write a whole trace at once (rows as one dict of columns, or an iterable of them)."""
    with TraceWriter(path, metadata) as w:
        for chunk in ([rows] if isinstance(rows, Mapping) else rows):
            w.write(chunk)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# reading


@dataclass
class Trace:
    """A validated trace: the Arrow table (SCHEMA's columns) and the metadata dictionary."""

    table: pa.Table
    metadata: dict
    path: Path | None = None

    @property
    def strategy(self) -> str:
        return self.metadata["strategy"]

    def to_pandas(self):
        return self.table.to_pandas()

    def fetched_counts(self) -> dict[str, np.ndarray]:
        """Per row: seq_len, number of positions and of components, as numpy arrays (for replay)."""
        return {
            "seq_len": self.table["seq_len"].to_numpy(),
            "n_positions": pc.list_value_length(self.table["positions"]).to_numpy(zero_copy_only=False),
            "n_components": pc.list_value_length(self.table["components"]).to_numpy(zero_copy_only=False),
        }


def _where(path) -> str:
    return f"trace {str(path)!r}" if path is not None else "trace"


def validate_table(table: pa.Table, metadata: dict, path=None) -> None:
    """Raise UserError naming the first problem: missing or mistyped columns, bad metadata, values out of range."""
    w = _where(path)
    names = table.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{w}: column {twice[0]!r} appears more than once")
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise UserError(f"{w}: missing column(s) {', '.join(missing)} (schema version {SCHEMA_VERSION} needs "
                        f"{', '.join(COLUMNS)})")
    for f in SCHEMA:
        got = table.schema.field(f.name).type
        if got != f.type:
            ok = (pa.types.is_integer(got) and pa.types.is_integer(f.type)) or (
                pa.types.is_floating(got) and pa.types.is_floating(f.type)) or (
                pa.types.is_list(got) and pa.types.is_list(f.type) and pa.types.is_integer(got.value_type))
            if not ok:
                raise UserError(f"{w}: column {f.name!r} has type {got}, expected {f.type}")
        if not f.nullable and table[f.name].null_count:
            raise UserError(f"{w}: column {f.name!r} has {table[f.name].null_count} missing value(s)")
    missing_meta = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing_meta:
        raise UserError(f"{w}: metadata lacks {', '.join(missing_meta)}")
    strategy = metadata.get("strategy")
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise UserError(f"{w}: unknown strategy {strategy!r} in metadata (accepted: {', '.join(STRATEGIES)})")
    _validate_metadata(metadata, w)
    if table.num_rows == 0:
        return
    seq = table["seq_len"].to_numpy().astype(np.int64)
    if (seq < 1).any():
        i = int(np.argmax(seq < 1))
        raise UserError(f"{w}: row {i}: seq_len {int(seq[i])} must be at least 1")
    for name in ("step", "layer", "kv_head", "batch", "k", "r"):
        a = table[name].to_numpy()
        if (a < 0).any():
            i = int(np.argmax(a < 0))
            raise UserError(f"{w}: row {i}: {name} {int(a[i])} is negative")
    pos = table["positions"].combine_chunks()
    flat = pc.list_flatten(pos).to_numpy(zero_copy_only=False).astype(np.int64)
    if flat.size:
        parent = pc.list_parent_indices(pos).to_numpy(zero_copy_only=False)
        bad = (flat < 0) | (flat >= seq[parent])
        if bad.any():
            j = int(np.argmax(bad))
            i = int(parent[j])
            raise UserError(f"{w}: row {i} (step {table['step'][i].as_py()}, layer {table['layer'][i].as_py()}, "
                            f"kv_head {table['kv_head'][i].as_py()}): position {int(flat[j])} is outside "
                            f"[0, seq_len = {int(seq[i])})")
    for name, top in (("alpha", 1.0), ("oracle_mass", 1.0), ("out_rel_err", None)):
        a = table[name].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls (alpha) come back as NaN
        bad = (a < 0) | ((a > top + 1e-3) if top is not None else False)  # 1e-3: float32 rounding of a sum
        if name != "alpha":   # only alpha may be missing (strategies without an approximate mass)
            bad = bad | ~np.isfinite(a)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise UserError(f"{w}: row {i}: {name} {float(a[i])!r} is outside "
                            f"{'[0, 1]' if top is not None else '[0, inf)'}")
    head_dim = (metadata.get("model") or {}).get("head_dim")
    comp = table["components"].combine_chunks()
    cflat = pc.list_flatten(comp).to_numpy(zero_copy_only=False).astype(np.int64)
    if cflat.size:
        bad = (cflat < 0) | ((cflat >= int(head_dim)) if head_dim else False)
        if np.any(bad):
            i = int(pc.list_parent_indices(comp).to_numpy(zero_copy_only=False)[int(np.argmax(bad))])
            raise UserError(f"{w}: row {i}: component {int(cflat[int(np.argmax(bad))])} is outside "
                            f"[0, head_dim = {head_dim})")
    # a row fetches at most its budget k of positions (fewer while the context or the cache is short; 0: no budget,
    # as dense; Quest's first layers run dense) and exactly its r components (0: none)
    n_pos = pc.list_value_length(table["positions"].combine_chunks()).to_numpy(zero_copy_only=False)
    n_comp = pc.list_value_length(table["components"].combine_chunks()).to_numpy(zero_copy_only=False)
    k, r = table["k"].to_numpy(), table["r"].to_numpy()
    exempt = table["layer"].to_numpy() < QUEST_DENSE_LAYERS if metadata.get("strategy") == "quest" else False
    for bad, what in (((k > 0) & (n_pos > k) & ~exempt, "k is {want} but the row lists {n} positions"),
                      ((r > 0) & (n_comp != r), "r is {want} but the row lists {n} components")):
        if np.any(bad):
            i = int(np.argmax(bad))
            want, n = (k, n_pos) if what.startswith("k") else (r, n_comp)
            raise UserError(f"{w}: row {i} {_at(table, i)}: " + what.format(want=int(want[i]), n=int(n[i])))
    # one row per (step, layer, kv_head, batch), or one per query head of the KV head's group when the run did not
    # share its index sets (replay reads their union): more rows than the group has heads repeat a row
    model = metadata.get("model") or {}
    heads, kv_heads = model.get("n_heads"), model.get("n_kv_heads")
    group = heads // kv_heads if isinstance(heads, int) and isinstance(kv_heads, int) and kv_heads > 0 else None
    cols = [table[c].to_numpy().astype(np.int64) for c in ("batch", "kv_head", "layer", "step")]
    if group is not None and len(cols[0]) > group:
        order = np.lexsort(cols)
        new = np.ones(len(order), dtype=bool)
        new[1:] = ~np.logical_and.reduce([c[order][1:] == c[order][:-1] for c in cols])
        start = np.flatnonzero(new)
        runs = np.diff(np.append(start, len(order)))
        if (runs > group).any():
            j = int(np.argmax(runs > group))
            i = int(order[start[j] + group])
            raise UserError(f"{w}: row {i} {_at(table, i)}: batch {table['batch'][i].as_py()} has {int(runs[j])} rows "
                            f"for this step, layer and KV head; at most {group} (one per query head of its group)")


def _at(table: pa.Table, i: int) -> str:
    return (f"(step {table['step'][i].as_py()}, layer {table['layer'][i].as_py()}, kv_head "
            f"{table['kv_head'][i].as_py()})")


def _validate_metadata(metadata: dict, w: str) -> None:
    """The metadata fields that replay reads: JSON objects where objects are expected, and sane values in them."""
    for key in ("model", "params", "dtypes"):
        if not isinstance(metadata.get(key), dict):
            v = repr(metadata.get(key))
            raise UserError(f"{w}: metadata {key!r} must be a JSON object, got {v if len(v) <= 40 else v[:36] + '...'}")
    name = metadata["model"].get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise UserError(f"{w}: metadata model.name must be a name (text), got {name!r}")
    head_dim = metadata["model"].get("head_dim")
    if head_dim is not None and (type(head_dim) is not int or not 1 <= head_dim <= 2**20):
        raise UserError(f"{w}: metadata model.head_dim must be a positive whole number, got {head_dim!r}")
    for key in ("kv", "compute"):
        v = metadata["dtypes"].get(key)
        if v is not None and (not isinstance(v, str) or v.strip().lower() not in _DTYPE_NAMES):
            raise UserError(f"{w}: metadata dtypes.{key} must be a dtype name ({', '.join(_DTYPE_NAMES)}), got {v!r}")
    params = metadata["params"]
    c = params.get("compression")
    if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 1 <= c <= 1e15):
        raise UserError(f"{w}: metadata params.compression must be a finite number >= 1, got {c!r}")
    ps = params.get("page_size")
    if ps is not None and (type(ps) is not int or not 1 <= ps <= 2**31 - 1):
        raise UserError(f"{w}: metadata params.page_size must be a whole number of positions >= 1, got {ps!r}")
    if not isinstance(params.get("reallocate", True), bool):
        raise UserError(f"{w}: metadata params.reallocate must be true or false, got {params['reallocate']!r}")


def _dtype_names() -> tuple[str, ...]:
    from ..common.units import DTYPE_ALIASES, DTYPE_BYTES
    return tuple(DTYPE_BYTES) + tuple(DTYPE_ALIASES)


_DTYPE_NAMES = _dtype_names()


def unreadable(path, e: BaseException) -> UserError:
    """The one-line error for a file that pyarrow cannot read (its message, whitespace collapsed, shortened)."""
    msg = " ".join(str(e).split()) or type(e).__name__
    return UserError(f"{_where(path)} is not a readable Parquet file (truncated or another format?): {msg[:300]}")


def open_trace(path: str | os.PathLike):
    """The header checks of `read_trace` without reading the rows: (open ParquetFile, its Arrow schema, the trace
    metadata, the Path). Every problem is a one-line UserError naming the file; column checks are `validate_table`'s."""
    p = input_file(path, "trace", "a trace file")
    w = _where(p)
    try:
        pf = pq.ParquetFile(p)
        schema = pf.schema_arrow
        kv = {**(schema.metadata or {}), **(pf.metadata.metadata or {})}  # footer pairs, as read() merges them
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file raises ArrowInvalid, OSError, UnicodeDecodeError, ...
        raise unreadable(p, e) from None
    raw = kv.get(METADATA_KEY)
    if raw is None:
        raise UserError(f"{w} is a Parquet file but not a sparq-sim trace (no {METADATA_KEY.decode()!r} metadata)")
    try:
        metadata = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # ValueError: JSONDecodeError, 5000-digit numbers
        why = "nested too deeply" if isinstance(e, RecursionError) else " ".join(str(e).split(";")[0].split())
        raise UserError(f"{w}: trace metadata is not valid JSON ({why})") from None
    if not isinstance(metadata, dict):
        raise UserError(f"{w}: trace metadata is not a JSON object")
    version = metadata.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # not True, not 1.0
        raise UserError(f"{w}: schema version {version!r} is not supported (this sparq-sim reads version "
                        f"{SCHEMA_VERSION})")
    return pf, schema, metadata, p


def read_trace(path: str | os.PathLike, *, validate: bool = True) -> Trace:
    """Read and validate a trace file; every problem is a one-line UserError naming the file."""
    pf, _, metadata, p = open_trace(path)
    try:
        table = pf.read()
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file raises ArrowInvalid, OSError, UnicodeDecodeError, ...
        raise unreadable(p, e) from None
    if validate:
        validate_table(table, metadata, p)
    return Trace(table, metadata, p)
