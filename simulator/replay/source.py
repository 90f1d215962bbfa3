"""A trace, batch by batch: what replay knows of the whole trace first (its key columns, `_Dims`), then its rows read a
piece at a time (`_Source`) and cut into batches of whole units, each checked and flattened."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .flatten import _Flat, _flatten
from .metadata import _check_flat, _Setup

BATCH_EVENTS = 1 << 22   # fetched-index events flattened at a time (a batch grows to hold one whole unit, see _Dims)
KEY_COLUMNS = ("step", "layer", "kv_head", "batch", "seq_len")


@dataclass(frozen=True)
class _Dims:
    """What replay must know of a whole trace before it walks it batch by batch; read from the key columns alone."""
    rows: int            # trace rows (before the GQA union)
    L1: int              # largest layer + 1
    NB: int              # largest batch index + 1
    H: int               # largest kv_head + 1
    seq_len_max: int
    step_max: int
    n_sl: int            # distinct (step, layer)
    n_steps: int         # distinct steps, layers, sequences, KV heads
    n_layers: int
    n_batches: int
    n_kv_heads: int
    unit: str = "sl"     # batches hold whole units, in file order: 'sl' when every (step, layer) group is contiguous
    #                      and the groups come in order in the file, 'step' when only the steps do, 'all' otherwise
    #                      (then the whole trace is one batch, as unsorted rows must be sorted first)

    @staticmethod
    def of_flat(f: _Flat) -> "_Dims":
        if f.n == 0:
            return _Dims(0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
        L1 = int(f.layer.max()) + 1
        return _Dims(f.n, L1, int(f.batch.max()) + 1, int(f.kv_head.max()) + 1, int(f.seq_len.max()),
                     int(f.step.max()), len(np.unique(f.step * L1 + f.layer)), len(np.unique(f.step)),
                     len(np.unique(f.layer)), len(np.unique(f.batch)), len(np.unique(f.kv_head)))


def _key_arrays(table) -> dict:
    return {c: np.asarray(table[c].fill_null(0).to_numpy(), dtype=np.int64) for c in KEY_COLUMNS}


def _scan_keys(tables) -> _Dims:
    """Pass 1, over the key columns only (tables of consecutive rows): sizes, distinct values and the file's order."""
    rows = 0
    mx = {c: -1 for c in KEY_COLUMNS}
    distinct = {c: np.zeros(0, dtype=np.int64) for c in ("step", "layer", "batch", "kv_head")}
    sl_all = np.zeros(0, dtype=np.int64)
    sl_sorted = step_sorted = True
    last_sl = last_step = None
    for t in tables:
        if t.num_rows == 0:
            continue
        k = _key_arrays(t)
        rows += t.num_rows
        for c in KEY_COLUMNS:
            mx[c] = max(mx[c], int(k[c].max()))
        for c in distinct:
            distinct[c] = np.union1d(distinct[c], k[c])
        sl = (k["step"] << 32) + k["layer"]
        sl_all = np.union1d(sl_all, sl)
        if sl_sorted:
            sl_sorted = bool(np.all(sl[1:] >= sl[:-1])) and (last_sl is None or int(sl[0]) >= last_sl)
        if step_sorted:
            st_ = k["step"]
            step_sorted = bool(np.all(st_[1:] >= st_[:-1])) and (last_step is None or int(st_[0]) >= last_step)
        last_sl, last_step = int(sl[-1]), int(k["step"][-1])
    if rows == 0:
        return _Dims(0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
    return _Dims(rows, mx["layer"] + 1, mx["batch"] + 1, mx["kv_head"] + 1, mx["seq_len"], mx["step"], len(sl_all),
                 len(distinct["step"]), len(distinct["layer"]), len(distinct["batch"]), len(distinct["kv_head"]),
                 "sl" if sl_sorted else "step" if step_sorted else "all")


def _list_events(table) -> int:
    import pyarrow.compute as pc

    n = 0
    for c in ("positions", "components"):
        v = pc.sum(pc.list_value_length(table[c])).as_py()
        n += int(v or 0)
    return n


class _Source:
    """The rows of one trace, read a piece at a time: a Parquet file (checked piece by piece with the trace reader's
    `validate_table`, row numbers counted from the top of the file) or a `Trace` already in memory."""

    def __init__(self, item):
        from ...traces import Trace

        if isinstance(item, Trace):
            self.pf, self.table, self.metadata, self.path = None, item.table, item.metadata, item.path
        else:
            self._open(item)
        self.where = f"trace {str(self.path)!r}" if self.path is not None else "trace"
        self.name = str(self.path) if self.path is not None else "<trace>"

    def _open(self, path):
        from ...traces.format import open_trace, validate_table

        self.pf, schema, self.metadata, self.path = open_trace(path)   # read_trace's header checks, no rows read
        self.table = None
        validate_table(schema.empty_table(), self.metadata, self.path)  # columns, types, metadata, strategy

    def _unreadable(self, e) -> UserError:
        from ...traces.format import unreadable

        return unreadable(self.path, e)

    def events_per_row(self) -> float:
        if self.pf is None:
            return _list_events(self.table) / max(self.table.num_rows, 1)
        try:
            md = self.pf.metadata
            if md.num_row_groups == 0:
                return 1.0
            rg = md.row_group(0)
            ev = sum(rg.column(j).num_values for j in range(rg.num_columns)
                     if rg.column(j).path_in_schema.split(".")[0] in ("positions", "components"))
            return max(1.0, ev / max(rg.num_rows, 1))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - damaged footer statistics (UnicodeDecodeError, ArrowInvalid, ...)
            raise self._unreadable(e) from None

    def pieces(self, rows: int, columns=None):
        """Tables of at most `rows` consecutive rows, in file order."""
        import pyarrow as pa

        if self.pf is None:
            t = self.table if columns is None else self.table.select(list(columns))
            for b in t.to_batches(max_chunksize=rows):
                yield pa.Table.from_batches([b])
            return
        it = self.pf.iter_batches(batch_size=rows, columns=list(columns) if columns else None)
        while True:
            try:
                b = next(it)
            except StopIteration:
                return
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged file raises ArrowInvalid, OSError, ... (as read_trace)
                raise self._unreadable(e) from None
            yield pa.Table.from_batches([b])

    def _validate(self, table, row0: int) -> None:
        import re

        from ...traces import validate_table

        if self.pf is None:  # a Trace object: validated when it was read (or built by the caller)
            return
        try:
            validate_table(table, self.metadata, self.path)
        except UserError as e:
            if not row0:
                raise
            msg = str(e)
            head = msg[:len(self.where)] if msg.startswith(self.where) else ""
            tail = re.sub(r"\brow (\d+)", lambda m: f"row {int(m.group(1)) + row0}", msg[len(head):], count=1)
            raise UserError(head + tail) from None

    def flats(self, st: _Setup, dims: _Dims, batch_events: int = BATCH_EVENTS):
        """The trace as _Flat batches: consecutive runs of whole units (see _Dims) of about `batch_events` events,
        each checked, flattened and sorted; in order, the batches are exactly the whole trace's _Flat cut between
        units."""
        import pyarrow as pa

        read_rows = int(min(65_536, max(16, batch_events / 4 / self.events_per_row())))
        pending, pend_rows, pend_events, cut, last_key, row0 = [], 0, 0, 0, None, 0

        def unit_key(t):
            if dims.unit == "all":
                return np.zeros(t.num_rows, dtype=np.int64)
            k = np.asarray(t["step"].fill_null(0).to_numpy(), dtype=np.int64)
            if dims.unit == "sl":
                k = (k << 32) + np.asarray(t["layer"].fill_null(0).to_numpy(), dtype=np.int64)
            return k

        def flat(table, start):
            self._validate(table, start)
            f = _flatten(table, self.where, start)
            _check_flat(st, f, self.where)
            return f

        for t in self.pieces(read_rows):
            n = t.num_rows
            if n == 0:
                continue
            key = unit_key(t)
            inner = np.flatnonzero(key[1:] != key[:-1])
            if len(inner):
                cut = pend_rows + int(inner[-1]) + 1
            elif last_key is not None and int(key[0]) != last_key:
                cut = pend_rows
            last_key = int(key[-1])
            pending.append(t)
            pend_rows += n
            pend_events += _list_events(t)
            if pend_events >= batch_events and cut > 0:
                table = pa.concat_tables(pending)
                yield flat(table.slice(0, cut), row0)
                rest = table.slice(cut)
                row0 += cut
                pending, pend_rows, pend_events, cut = [rest], rest.num_rows, _list_events(rest), 0
        if pend_rows:
            yield flat(pa.concat_tables(pending), row0)
        if self.pf is not None and row0 + pend_rows != self.pf.metadata.num_rows:   # a damaged column chunk
            raise self._unreadable(ValueError(f"read {row0 + pend_rows} rows where the footer promises "
                                              f"{self.pf.metadata.num_rows}"))
