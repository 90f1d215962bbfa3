"""Trace format (sparq_sim.traces): schema, atomic writer, validating reader. No torch here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparq_sim.simulator.errors import UserError
from sparq_sim.traces import METADATA_KEY, SCHEMA, SCHEMA_VERSION, TraceWriter, read_trace, write_trace

META = {"model": {"name": "toy", "head_dim": 8}, "strategy": "sparq", "params": {"compression": 8.0},
        "dtypes": {"kv": "fp32"}, "task": {"name": "repetition", "score": 12.0}}


def rows(n=3, seq_len=10):
    return {
        "step": np.arange(n), "layer": np.zeros(n), "kv_head": np.arange(n) % 2, "batch": np.zeros(n),
        "seq_len": np.full(n, seq_len), "k": np.full(n, 2), "r": np.full(n, 2),
        "positions": [np.array([0, seq_len - 1])] * n, "components": [np.array([1, 5])] * n,
        "alpha": np.full(n, 0.7), "oracle_mass": np.full(n, 0.8), "out_rel_err": np.full(n, 0.05),
    }


def test_schema_has_the_documented_columns():
    assert SCHEMA.names == ["step", "layer", "kv_head", "batch", "seq_len", "k", "r", "positions", "components",
                            "alpha", "oracle_mass", "out_rel_err"]
    import sparq_sim.traces as tr

    for name in SCHEMA.names:
        assert name in tr.__doc__


def test_round_trip(tmp_path):
    p = tmp_path / "t.parquet"
    write_trace(p, rows(), META)
    t = read_trace(p)
    assert t.table.num_rows == 3
    assert t.metadata["schema_version"] == SCHEMA_VERSION
    assert t.metadata["strategy"] == "sparq" and t.metadata["task"]["score"] == 12.0
    assert "pyarrow" in t.metadata["packages"] and "python" in t.metadata["packages"]
    assert t.table["positions"][0].as_py() == [0, 9]
    c = t.fetched_counts()
    assert c["n_positions"].tolist() == [2, 2, 2] and c["n_components"].tolist() == [2, 2, 2]


def test_nan_alpha_is_stored_as_null(tmp_path):
    r = rows()
    r["alpha"] = np.full(3, np.nan)
    r["components"] = [np.zeros(0, np.int32)] * 3
    r["r"] = np.zeros(3)   # H2O picks no components
    p = tmp_path / "t.parquet"
    write_trace(p, r, {**META, "strategy": "h2o"})
    assert read_trace(p).table["alpha"].null_count == 3


def test_streaming_writer_and_metadata_completed_late(tmp_path):
    p = tmp_path / "t.parquet"
    with TraceWriter(p, META, row_group_rows=4) as w:
        for i in range(5):
            w.write({**rows(), "step": np.arange(3) + 3 * i})   # five batches of three steps
        w.metadata["task"]["score"] = 99.0
        assert not p.exists()                          # nothing at the target until closed
    t = read_trace(p)
    assert t.table.num_rows == 15 and t.metadata["task"]["score"] == 99.0
    assert pq.ParquetFile(p).num_row_groups >= 3


def test_interrupted_write_leaves_nothing(tmp_path):
    p = tmp_path / "t.parquet"
    with pytest.raises(KeyboardInterrupt):
        with TraceWriter(p, META) as w:
            w.write(rows())
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # an existing file survives an interrupted rewrite untouched
    write_trace(p, rows(), META)
    before = p.read_bytes()
    with pytest.raises(RuntimeError):
        with TraceWriter(p, META) as w:
            w.write(rows(7))
            raise RuntimeError("boom")
    assert p.read_bytes() == before and list(tmp_path.iterdir()) == [p]


def bad_file(tmp_path, table, meta):
    p = tmp_path / "bad.parquet"
    if meta is not None:
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    pq.write_table(table, p)
    return p


def good_table(**over):
    from sparq_sim.traces.format import _to_table

    r = rows()
    r.update(over)
    return _to_table(r)


def full_meta(**over):
    return {"schema_version": SCHEMA_VERSION, "packages": {}, **META, **over}


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"does not exist"),
    ("folder", r"is a folder"),
    ("not_parquet", r"not a readable Parquet file"),
    ("truncated", r"not a readable Parquet file"),
    ("no_metadata", r"not a sparq-sim trace"),
    ("version", r"schema version 99 is not supported"),
    ("missing_column", r"missing column\(s\) positions"),
    ("position_out_of_range", r"row 1 .*position 10 is outside \[0, seq_len = 10\)"),
    ("negative_position", r"position -1 is outside"),
    ("component_out_of_range", r"component 8 is outside \[0, head_dim = 8\)"),
    ("unknown_strategy", r"unknown strategy 'sparkle'"),
    ("missing_meta", r"metadata lacks dtypes"),
    ("wrong_type", r"column 'positions' has type"),
])
def test_reader_names_what_is_wrong(tmp_path, case, pattern):
    if case == "missing":
        p = tmp_path / "nope.parquet"
    elif case == "folder":
        p = tmp_path
    elif case == "not_parquet":
        p = tmp_path / "x.parquet"
        p.write_text("step,layer\n0,0\n")
    elif case == "truncated":
        good = tmp_path / "good.parquet"
        write_trace(good, rows(50), META)
        p = tmp_path / "trunc.parquet"
        p.write_bytes(good.read_bytes()[:-200])
    elif case == "no_metadata":
        p = bad_file(tmp_path, good_table(), None)
    elif case == "version":
        p = bad_file(tmp_path, good_table(), full_meta(schema_version=99))
    elif case == "missing_column":
        p = bad_file(tmp_path, good_table().drop_columns(["positions"]), full_meta())
    elif case == "position_out_of_range":
        p = bad_file(tmp_path, good_table(positions=[[0], [3, 10], [1]]), full_meta())
    elif case == "negative_position":
        p = bad_file(tmp_path, good_table(positions=[[0], [-1], [1]]), full_meta())
    elif case == "component_out_of_range":
        p = bad_file(tmp_path, good_table(components=[[0], [8], [1]]), full_meta())
    elif case == "unknown_strategy":
        p = bad_file(tmp_path, good_table(), full_meta(strategy="sparkle"))
    elif case == "missing_meta":
        m = full_meta()
        del m["dtypes"]
        p = bad_file(tmp_path, good_table(), m)
    elif case == "wrong_type":
        t = good_table()
        t = t.set_column(t.column_names.index("positions"), "positions", pa.array(["a", "b", "c"]))
        p = bad_file(tmp_path, t, full_meta())
    with pytest.raises(UserError, match=pattern) as e:
        read_trace(p)
    assert "\n" not in str(e.value)
    if case not in ("folder",):
        assert str(p) in str(e.value)


def test_writer_rejects_bad_output(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        TraceWriter(tmp_path, META)
    with pytest.raises(UserError, match="does not exist"):
        TraceWriter(tmp_path / "no" / "t.parquet", META)


@settings(max_examples=20, deadline=None)
@given(data=st.lists(st.tuples(st.integers(1, 500), st.lists(st.integers(0, 10_000), max_size=20)), min_size=1,
                     max_size=30))
def test_round_trip_property(tmp_path_factory, data):
    """Any positions below seq_len survive a write and read unchanged; any at or above it are reported."""
    seq = np.array([s for s, _ in data])
    pos = [sorted({x % s for x in ps}) for s, ps in data]
    n = len(data)
    r = rows(n)
    r.update(seq_len=seq, positions=[np.array(x, dtype=np.int64) for x in pos], k=np.array([len(x) for x in pos]))
    p = tmp_path_factory.mktemp("t") / "t.parquet"
    write_trace(p, r, META)
    assert read_trace(p).table["positions"].to_pylist() == pos
    r["positions"] = [np.array(x + [s], dtype=np.int64) for x, s in zip(pos, seq)]
    write_trace(p, r, META)
    with pytest.raises(UserError, match="outside"):
        read_trace(p)


def test_traces_package_does_not_import_torch():
    code = "import sys, sparq_sim.traces; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "traces" / "examples").glob("*.parquet"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_shipped_examples_read_and_replay(path):
    """The example traces validate, and pricing their fetched sets with the registry gives the recorded ratio."""
    from sparq_sim.simulator import strategies as reg

    t = read_trace(path)
    m = t.metadata
    d = m["model"]["head_dim"]
    c = t.fetched_counts()
    layer = t.table["layer"].to_numpy()
    strategy = m["strategy"]
    zero = np.zeros(len(layer), np.int64)
    params = {"k": c["n_positions"], "r": c["n_components"], "page_size": zero + reg.DEFAULT_PAGE_SIZE,
              "local_window": zero, "sinks": zero}
    moved = reg.elements_moved(strategy, c["seq_len"], d, params)
    if strategy == "quest":
        dense_rows = layer < reg.QUEST_DENSE_LAYERS
        moved = np.where(dense_rows, reg.elements_moved("dense", c["seq_len"], d, params), moved)
    dense = reg.elements_moved("dense", c["seq_len"], d, reg.resolve_params("dense", c["seq_len"], d, 1))
    assert moved.sum() / dense.sum() == pytest.approx(m["transfer_ratio"], rel=1e-9)
    assert t.table.num_rows == m["steps"] * m["model"]["n_layers"] * m["model"]["n_kv_heads"] * m["batch_size"]
