"""The partial file of an interrupted `sparq-sim record`: the rows of the samples decoded so far, kept beside the trace.

``OUTPUT.partial`` (e.g. ``trace.parquet.partial``) is a Parquet file with the trace SCHEMA and, under the key
``sparq_sim.partial``, a JSON object: the run's configuration and its hash, the samples done, their scores and
element counts, the steps. It is rewritten after every decode batch through a temporary file that is fsync'd and
renamed over the previous one (the folder is fsync'd too), so it always holds whole batches. It is never a trace:
the trace itself is written, as always, through its own temporary file renamed into place, after which the partial
file is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from ..common.errors import UserError
from ..simulator.output import open_atomic
from .format import SCHEMA

PARTIAL_KEY = b"sparq_sim.partial"
PARTIAL_VERSION = 1


def partial_path(output: str | os.PathLike) -> Path:
    return Path(str(output) + ".partial")


def config_hash(config: Mapping) -> str:
    """sha256 of the configuration as canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_partial(path: Path, table: pa.Table, info: Mapping) -> None:
    """Replace `path` with `table` and `info`, atomically and durably (temporary file, fsync, rename, fsync folder)."""
    info = {"partial_version": PARTIAL_VERSION, **info}
    table = table.cast(SCHEMA).replace_schema_metadata({PARTIAL_KEY: json.dumps(info)})
    try:
        with open_atomic(str(path), what="partial recording", durable=True) as tmp:
            pq.write_table(table, tmp, compression="zstd")
    except OSError as e:
        raise UserError(f"partial recording {str(path)!r} cannot be written: {e.strerror or e}") from None


def partial_info(path: Path) -> dict:
    """The information of a partial file without its rows (its footer only)."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(PARTIAL_KEY)
        info = json.loads(raw) if raw is not None else None
    except (pa.ArrowInvalid, OSError, json.JSONDecodeError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict) or info.get("partial_version") != PARTIAL_VERSION or "config_hash" not in info:
        raise UserError(f"{str(path)!r} is not a readable partial recording of this sparq-sim; --restart discards it")
    return info


def read_partial(path: Path) -> tuple[pa.Table, dict]:
    """The rows and the information of a partial file; a file that cannot be used is one line naming it."""
    hint = "; --restart discards it"
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"partial recording {str(path)!r} cannot be read ({msg}){hint}") from None
    raw = (table.schema.metadata or {}).get(PARTIAL_KEY)
    try:
        info = json.loads(raw) if raw is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict) or info.get("partial_version") != PARTIAL_VERSION or "config_hash" not in info:
        raise UserError(f"{str(path)!r} is not a partial recording of this sparq-sim{hint}")
    try:
        table = table.replace_schema_metadata(None).cast(SCHEMA)
    except (pa.ArrowInvalid, ValueError, KeyError):
        raise UserError(f"partial recording {str(path)!r} does not have the trace columns{hint}") from None
    return table, info
