"""Trace schema, writer and reader (see the package docstring for the columns and metadata). pyarrow + numpy only."""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..simulator.errors import UserError, input_file
from ..simulator.strategies import STRATEGIES

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


class TraceWriter:
    """Streams rows to `path` through a temporary file in the same folder; `close()` renames it into place.

    Use as a context manager: on an exception (KeyboardInterrupt included) the temporary file is removed and `path`
    is left as it was. Metadata may be completed before closing (`writer.metadata["task"]["score"] = ...`).
    """

    def __init__(self, path: str | os.PathLike, metadata: Mapping, row_group_rows: int = 65_536):
        self.path = Path(path)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if self.path.is_dir():
            raise UserError(f"--output {str(self.path)!r} is a folder; give a file name such as trace.parquet")
        if not parent.is_dir():
            raise UserError(f"--output {str(self.path)!r}: folder {str(parent)!r} does not exist")
        self.metadata = {"schema_version": SCHEMA_VERSION, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
            timespec="seconds"), "packages": _package_versions()}
        self.metadata.update(dict(metadata))
        self.row_group_rows = row_group_rows
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent)
        except OSError as e:
            raise UserError(f"--output {str(self.path)!r} cannot be written: {e.strerror}") from None
        os.close(fd)
        self._tmp = Path(tmp)
        self._writer = pq.ParquetWriter(self._tmp, SCHEMA, compression="zstd")
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0
        self._closed = False

    def write(self, columns: Mapping[str, object]) -> None:
        """Append rows given as columns (numpy arrays; `positions`/`components` as lists of int arrays)."""
        t = _to_table(columns)
        self._pending.append(t)
        self._pending_rows += t.num_rows
        self.rows += t.num_rows
        if self._pending_rows >= self.row_group_rows:
            self._flush()

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
            _umask_mode(self._tmp)
            os.replace(self._tmp, self.path)
        except OSError as e:
            raise UserError(f"--output {str(self.path)!r} cannot be written: {e.strerror or e}") from None
        finally:
            self._tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the target path is left untouched."""
        if not self._closed:
            self._closed = True
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the file is being thrown away
                pass
        self._pending = []
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


def _umask_mode(path: Path) -> None:
    """mkstemp makes 0600 files: give the result the mode a plain open() would (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


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
    missing = [c for c in COLUMNS if c not in table.column_names]
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
    if strategy not in STRATEGIES:
        raise UserError(f"{w}: unknown strategy {strategy!r} in metadata (accepted: {', '.join(STRATEGIES)})")
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
    head_dim = (metadata.get("model") or {}).get("head_dim")
    comp = table["components"].combine_chunks()
    cflat = pc.list_flatten(comp).to_numpy(zero_copy_only=False).astype(np.int64)
    if cflat.size:
        bad = (cflat < 0) | ((cflat >= int(head_dim)) if head_dim else False)
        if np.any(bad):
            i = int(pc.list_parent_indices(comp).to_numpy(zero_copy_only=False)[int(np.argmax(bad))])
            raise UserError(f"{w}: row {i}: component {int(cflat[int(np.argmax(bad))])} is outside "
                            f"[0, head_dim = {head_dim})")


def read_trace(path: str | os.PathLike, *, validate: bool = True) -> Trace:
    """Read and validate a trace file; every problem is a one-line UserError naming the file."""
    p = input_file(path, "trace", "a trace file")
    w = _where(p)
    try:
        pf = pq.ParquetFile(p)
        table = pf.read()
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{w} is not a readable Parquet file (truncated or another format?): {msg}") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise UserError(f"{w} is a Parquet file but not a sparq-sim trace (no {METADATA_KEY.decode()!r} metadata)")
    try:
        metadata = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{w}: trace metadata is not valid JSON ({e})") from None
    if not isinstance(metadata, dict):
        raise UserError(f"{w}: trace metadata is not a JSON object")
    version = metadata.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(f"{w}: schema version {version!r} is not supported (this sparq-sim reads version "
                        f"{SCHEMA_VERSION})")
    if validate:
        validate_table(table, metadata, p)
    return Trace(table, metadata, p)
