"""Scale (issue 7): large predict sweeps stream to Parquet / CSV / JSON, and replay walks large traces in batches.

- predict: a sweep evaluated in chunks (forced tiny here) is exactly the sweep evaluated at once: same rows, order,
  values and dtypes, in Parquet (one row group per chunk), CSV and JSON; the file is complete and readable; an
  exception or Ctrl-C in the middle of the write leaves neither the file nor a temporary file (and an existing file
  as it was); a table of too many rows is refused with one line.
- replay: a trace replayed in batches (forced tiny here) gives exactly the results of the whole trace in one batch,
  for every --level and for --k-layout twice and once, on the example traces and on synthetic traces written with
  tiny row groups (GQA union rows, Quest's dense layers, rows grouped by step only, rows in no order), with --cache
  and --page-size too; error messages name the same file row whatever the batch.

The memory figures themselves (10M rows < 1 GiB, 100M events < 2 GiB) are measured by benchmarks/sweep_parquet.py
and benchmarks/replay_scale.py, not asserted here.
"""

from __future__ import annotations

import io
import json
import os
import signal
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import without_progress

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

import sparq_sim  # noqa: E402
import sparq_sim.cli as cli  # noqa: E402
from sparq_sim.cli import main  # noqa: E402
from sparq_sim.simulator import output as O  # noqa: E402
from sparq_sim.simulator.strategies import STRATEGY_NAMES  # noqa: E402
from sparq_sim.simulator import predict as P  # noqa: E402
from sparq_sim.simulator import replay as R  # noqa: E402
from sparq_sim.simulator.models import load_model_spec  # noqa: E402
from sparq_sim.traces import TraceWriter, read_trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "traces" / "examples").glob("*.parquet"))

SWEEP = dict(hardware="a100,h100", model="llama2-7b,llama3-8b", seq_len="1:300:+7,4k", batch="1,3",
             compression="4,8", kv_location="auto")
SWEEP_ARGS = ["--gpu", "a100,h100", "--model", "llama2-7b,llama3-8b", "--seq", "1:300:+7,4k", "--batch", "1,3",
              "--compression", "4,8"]


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def _assert_columns_equal(got: dict, want: dict):
    assert list(got) == list(want)
    for c in want:
        a, b = got[c], want[c]
        if isinstance(b, P.Labels):
            assert isinstance(a, P.Labels)
            a, b = a.decode(), b.decode()
        assert a.dtype == b.dtype, c
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), c


# --- predict: chunks --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_rows", [1, 7, 60, 1000])
def test_chunks_concatenate_to_the_whole_sweep(chunk_rows):
    sw = P.sweep(**SWEEP)
    whole = P.predict_columns(**SWEEP)
    assert sw.rows == len(whole["time_s"]) == 2 * 2 * 2 * 2 * 44 * len(STRATEGY_NAMES)
    chunks = list(sw.chunks(chunk_rows))
    assert len(chunks) > 1
    assert all(len(c["time_s"]) <= max(chunk_rows, len(sw.strategies)) for c in chunks)
    _assert_columns_equal(P.concat_columns(chunks), whole)


def _parquet_equals_sweep(path: Path, sweep_kw: dict):
    want = P.decoded(P.predict_columns(**sweep_kw))
    table = pq.read_table(path)
    assert table.column_names == P.COLUMNS
    assert table.num_rows == len(want["time_s"])
    for c in P.COLUMNS:
        got = table[c].to_numpy()
        if c in P.STRING_COLUMNS:
            assert table.schema.field(c).type == pa.string(), c
            assert got.tolist() == want[c].tolist(), c
        else:
            assert got.dtype == want[c].dtype, c
            assert np.array_equal(got, want[c], equal_nan=got.dtype.kind == "f"), c


def test_parquet_in_tiny_chunks_equals_predict_columns(tmp_path):
    path = tmp_path / "sweep.parquet"
    sw = P.sweep(**SWEEP)
    rows = O.write_parquet(str(path), sw.chunks(50))
    assert rows == sw.rows
    f = pq.ParquetFile(path)
    assert f.metadata.num_rows == sw.rows
    assert f.metadata.num_row_groups == len(list(sw.chunks(50))) > 10  # one row group per chunk
    _parquet_equals_sweep(path, SWEEP)
    assert _leftovers(tmp_path) == []


def test_cli_parquet_streams_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "DEFAULT_CHUNK_ROWS", 120)
    path = tmp_path / "sweep.parquet"
    rc, out, err = _run(["predict", *SWEEP_ARGS, "-o", str(path)])
    assert rc == 0, err
    assert out == "" and without_progress(err) == [] and err.splitlines()[-1].startswith("predict: 100% ")
    assert pq.ParquetFile(path).metadata.num_row_groups > 10
    _parquet_equals_sweep(path, SWEEP)
    assert _leftovers(tmp_path) == []
    other = tmp_path / "out.bin"   # --format parquet with any file name
    assert _run(["predict", "--seq", "1k,2k", "-f", "parquet", "-o", str(other)])[0] == 0
    assert pq.read_table(other).num_rows == 2 * len(STRATEGY_NAMES)
    pd.testing.assert_frame_equal(pd.read_parquet(other)[["seq_len", "time_s"]],
                                  sparq_sim.predict(seq_len="1k,2k")[["seq_len", "time_s"]])


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_cli_text_streams_equal_the_whole_text(fmt, tmp_path, monkeypatch):
    cols = P.decoded(P.predict_columns(**SWEEP))
    want = O.to_csv(cols) if fmt == "csv" else O.to_json(O.records(cols))
    monkeypatch.setattr(P, "DEFAULT_CHUNK_ROWS", 90)
    monkeypatch.setattr(O, "TEXT_CHUNK_ROWS", 37)
    rc, out, err = _run(["predict", *SWEEP_ARGS, "-f", fmt])
    assert rc == 0, err
    assert out == want
    path = tmp_path / f"p.{fmt}"
    assert _run(["predict", *SWEEP_ARGS, "-o", str(path)])[0] == 0
    assert path.read_text() == want
    assert _leftovers(tmp_path) == []
    if fmt == "json":
        assert len(json.loads(out)) == len(cols["time_s"])


def _boom_after(n_calls, exc):
    real = P.evaluate_case
    calls = {"n": 0}

    def evaluate(*a, **kw):
        calls["n"] += 1
        if calls["n"] > n_calls:
            raise exc
        return real(*a, **kw)
    return evaluate, calls


@pytest.mark.parametrize("exc", [RuntimeError("injected"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_no_file(tmp_path, monkeypatch, exc):
    monkeypatch.setattr(P, "DEFAULT_CHUNK_ROWS", 60)
    evaluate, calls = _boom_after(5, exc)
    monkeypatch.setattr(P, "evaluate_case", evaluate)
    path = tmp_path / "sweep.parquet"
    if isinstance(exc, KeyboardInterrupt):
        handler = signal.getsignal(signal.SIGINT)
        try:
            rc, _, err = _run(["predict", *SWEEP_ARGS, "-o", str(path)])
        finally:  # the CLI ignores further Ctrl-C on its way out: not in this test process
            signal.signal(signal.SIGINT, handler)
        assert rc == 130
    else:
        with pytest.raises(RuntimeError, match="injected"):
            _run(["predict", *SWEEP_ARGS, "-o", str(path)])
    assert calls["n"] == 6          # five chunks were written before the failure
    assert list(tmp_path.iterdir()) == []
    # the same through the library, with CSV, and over an existing file: left as it was
    path.write_bytes(b"previous")
    csv_path = tmp_path / "sweep.csv"
    csv_path.write_text("previous")
    for target, pieces in ((path, None), (csv_path, "csv")):
        calls["n"] = 0
        with pytest.raises(type(exc)):
            if pieces is None:
                O.write_parquet(str(target), P.sweep(**SWEEP).chunks(60))
            else:
                O.write_text(str(target), O.csv_chunks(P.decoded(c) for c in P.sweep(**SWEEP).chunks(60)))
    assert path.read_bytes() == b"previous" and csv_path.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv", "sweep.parquet"]


def test_write_parquet_failure_in_the_chunk_stream(tmp_path):
    def chunks():
        sw = P.sweep(**SWEEP)
        for i, c in enumerate(sw.chunks(40)):
            if i == 3:
                raise ValueError("chunk 3")
            yield c
    with pytest.raises(ValueError, match="chunk 3"):
        O.write_parquet(str(tmp_path / "x.parquet"), chunks())
    assert list(tmp_path.iterdir()) == []


def test_table_of_too_many_rows_is_refused(monkeypatch):
    n = len(STRATEGY_NAMES)
    monkeypatch.setattr(cli.predict, "PREDICT_TABLE_MAX_ROWS", 11 * n)
    rc, out, err = _run(["predict", "--seq", "1:12"])   # 12 x the strategies: one seq too many
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and f"{12 * n} rows" in err and "parquet" in err and "csv" in err
    assert _run(["predict", "--seq", "1:11"])[0] == 0    # a table
    rc, out, _ = _run(["predict", "--seq", "1:12", "-f", "csv"])
    assert rc == 0 and out.count("\n") == 12 * n + 1


def test_parquet_format_needs_a_file():
    rc, out, err = _run(["predict", "-f", "parquet"])
    assert rc == 2 and out == "" and "--output" in err and err.count("\n") == 1
    rc, _, err = _run(["ledger", "-f", "parquet"])   # other commands keep their formats
    assert rc == 2 and "parquet" in err


# --- replay: batches --------------------------------------------------------------------------------------------------

def _synthetic(path, strategy="sparq", steps=3, batch=2, union=1, row_group_rows=3, order="sorted", seed=0,
               model="smollm2-135m", S0=200):
    """A trace of every (step, layer, batch, KV head) with random position and component sets, written by
    TraceWriter in tiny row groups. union > 1: that many rows per KV head (unshared GQA sets). order: 'sorted',
    'step' (layers reversed within each step) or 'shuffled'."""
    m = load_model_spec(model)
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(steps):
        for layer in range(m.n_layers):
            for b in range(batch):
                for h in range(m.n_kv_heads):
                    for _ in range(union):
                        S = S0 + s + 13 * b
                        if strategy == "dense":
                            pos = np.arange(S)
                        else:
                            pos = np.sort(rng.choice(S, size=int(rng.integers(1, S // 3)), replace=False))
                        comp = (np.sort(rng.choice(m.head_dim, size=int(rng.integers(1, 12)), replace=False))
                                if strategy == "sparq" else np.zeros(0, dtype=int))
                        rows.append((s, layer, h, b, S, pos, comp))
    if order == "step":
        rows.sort(key=lambda r: (r[0], -r[1]))
    elif order == "shuffled":
        rows = [rows[i] for i in rng.permutation(len(rows))]
    meta = {"model": m.to_dict(), "strategy": strategy, "params": {"strategy": strategy, "compression": 8.0},
            "dtypes": {"kv": "bf16", "compute": "bf16"}, "task": {"name": "synthetic"}, "packages": {}}
    with TraceWriter(path, meta, row_group_rows=row_group_rows) as w:
        for i in range(0, len(rows), 40):
            ch = rows[i:i + 40]
            n = len(ch)
            w.write({"step": [r[0] for r in ch], "layer": [r[1] for r in ch], "kv_head": [r[2] for r in ch],
                     "batch": [r[3] for r in ch], "seq_len": [r[4] for r in ch],
                     "k": [len(r[5]) for r in ch], "r": [len(r[6]) for r in ch],
                     "positions": [r[5] for r in ch], "components": [r[6] for r in ch],
                     "alpha": np.full(n, np.nan, np.float32), "oracle_mass": np.ones(n, np.float32),
                     "out_rel_err": np.zeros(n, np.float32)})
    return Path(path)


def _whole(path, hw, level, **kw):
    """The trace read whole (read_trace) and replayed in one batch: the implementation before batching."""
    st = R._trace_setup(read_trace(path), None, None, None)
    frames = []
    for h in hw.split(","):
        ident, cols = R._replay_one(st, R.load_hardware(h), kw.get("k_layout", "twice"),
                                    R.parse_granularity(kw.get("granularity")), kw.get("page_size"),
                                    kw.get("cache", False), "auto", (level,))[level]
        n = len(next(iter(cols.values())))
        frames.append(pd.DataFrame({**{k: [v] * n for k, v in ident.items()}, **cols}))
    df = pd.concat(frames, ignore_index=True)
    return df[list(R.replay(path, hw, level=level, **kw).columns)]


def _batches(path, batch_events) -> int:
    src = R._Source(str(path))
    st = R._meta_setup(src.metadata, src.where, src.name, None, None, None)
    dims = R._scan_keys(src.pieces(7, R.KEY_COLUMNS))
    return sum(1 for _ in src.flats(st, dims, batch_events)), dims.unit


@pytest.mark.parametrize("trace", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("k_layout", ["twice", "once"])
@pytest.mark.parametrize("level", R.LEVELS)
def test_example_traces_in_batches_equal_the_whole(trace, k_layout, level):
    want = _whole(trace, "h100,a100", level, k_layout=k_layout)
    for batch_events in (1, 2000):
        got = sparq_sim.replay(trace, "h100,a100", k_layout=k_layout, level=level, batch_events=batch_events)
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_example_traces_are_replayed_in_many_batches():
    for trace in EXAMPLES:
        n, unit = _batches(trace, 1)
        assert unit == "sl" and n > 20
        assert _batches(trace, R.BATCH_EVENTS)[0] == 1


SYNTHETIC = {
    "sparq": dict(strategy="sparq"),
    "sparq-gqa-union": dict(strategy="sparq", union=3, steps=2),
    "quest": dict(strategy="quest", steps=2, batch=1),
    "h2o-by-step": dict(strategy="h2o", steps=2, order="step"),
    "dense-shuffled": dict(strategy="dense", steps=2, batch=1, order="shuffled", S0=40),
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale")
    return {name: _synthetic(folder / f"{name}.parquet", **kw) for name, kw in SYNTHETIC.items()}


@pytest.mark.parametrize("name", list(SYNTHETIC))
@pytest.mark.parametrize("k_layout", ["twice", "once"])
@pytest.mark.parametrize("level", R.LEVELS)
def test_synthetic_traces_in_batches_equal_the_whole(synthetic, name, k_layout, level):
    path = synthetic[name]
    assert pq.ParquetFile(path).metadata.num_row_groups > 50
    kw = dict(k_layout=k_layout, granularity=64, page_size=16) if name == "quest" else dict(k_layout=k_layout)
    want = _whole(path, "h100", level, **kw)
    for batch_events in (1, 777, R.BATCH_EVENTS):
        got = sparq_sim.replay(path, "h100", level=level, batch_events=batch_events, **kw)
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_synthetic_batches_follow_the_file_order(synthetic):
    n, unit = _batches(synthetic["sparq"], 1)
    assert unit == "sl" and n > 20                      # cut between (step, layer) groups
    assert _batches(synthetic["h2o-by-step"], 1) == (2, "step")    # layers out of order: cut between steps
    assert _batches(synthetic["dense-shuffled"], 1) == (1, "all")  # no order: one batch


@pytest.mark.parametrize("level", ["run", "step", "row"])
def test_cache_in_batches_equals_the_whole(synthetic, level):
    for path in (EXAMPLES[-1], synthetic["sparq"]):
        want = _whole(path, "h100", level, k_layout="once", cache=True)
        got = sparq_sim.replay(path, "h100", k_layout="once", cache=True, level=level, batch_events=500)
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_errors_name_the_file_row_whatever_the_batch(tmp_path):
    m = load_model_spec("smollm2-135m")
    meta = {"model": m.to_dict(), "strategy": "h2o", "params": {"strategy": "h2o", "compression": 8.0},
            "dtypes": {"kv": "bf16", "compute": "bf16"}, "task": {"name": "synthetic"}, "packages": {}}

    def write(path, bad_row, bad):
        n = 60
        pos = [np.arange(5) for _ in range(n)]
        seq = [100] * n
        if bad == "duplicate":
            pos[bad_row] = np.array([1, 2, 2])
        else:
            seq[bad_row] = 3   # positions 3 and 4 outside [0, 3)
        with TraceWriter(path, meta, row_group_rows=4) as w:
            w.write({"step": [i // 30 for i in range(n)], "layer": [i // 3 % 10 for i in range(n)],
                     "kv_head": [i % 3 for i in range(n)], "batch": [0] * n, "seq_len": seq, "k": [5] * n,
                     "r": [0] * n, "positions": pos, "components": [np.zeros(0, int)] * n,
                     "alpha": np.full(n, np.nan, np.float32), "oracle_mass": np.ones(n, np.float32),
                     "out_rel_err": np.zeros(n, np.float32)})
        return path

    for bad in ("duplicate", "outside"):
        path = write(tmp_path / f"{bad}.parquet", 47, bad)
        msgs = []
        for batch_events in (R.BATCH_EVENTS, 10):
            with pytest.raises(R.UserError) as e:
                sparq_sim.replay(path, "h100", batch_events=batch_events)
            msgs.append(str(e.value))
        assert msgs[0] == msgs[1] and "row 47 " in msgs[0], msgs
    assert _leftovers(tmp_path) == []
    assert not any(os.path.basename(p).startswith(".") for p in os.listdir(tmp_path))
