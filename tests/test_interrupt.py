"""Ctrl-C in `record`, `measure` and `evaluate`: exit status 130, one line on stderr (no traceback), the output file
whole or not there, no temporary file left; `record --resume` goes on from OUTPUT.partial and writes the trace an
uninterrupted run writes.

The CLI runs in a subprocess. Interrupts come from the test hook SPARQ_SIM_TEST_INTERRUPT=POINT[:N] (the process
sends itself a real SIGINT the N-th time it passes POINT; see simulator/interrupt.py), and once from outside, while
the process imports torch. Tests that load the model (~25 s each on two cores) are marked slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_same_trace, without_progress
from sparq_sim.simulator import interrupt as I
from sparq_sim.simulator.errors import UserError
from sparq_sim.traces import SCHEMA, TraceWriter
from sparq_sim.traces.partial import partial_info, partial_path, read_partial, write_partial

_EXE = Path(sys.executable).with_name("sparq-sim")
CLI = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "sparq_sim.cli"]
META = {"model": {"name": "m", "head_dim": 8}, "strategy": "sparq", "params": {}, "dtypes": {}, "task": {}}


def _env(interrupt: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != I.TEST_ENV}
    env["HF_HUB_OFFLINE"] = "1"
    if interrupt:
        env[I.TEST_ENV] = interrupt
    return env


def cli(args, cwd, interrupt=None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, env=_env(interrupt), capture_output=True, text=True,
                          timeout=600)


def interrupted_line(p) -> str:
    """The run ended by Ctrl-C: status 130 and exactly one line on stderr, `interrupted: ...`; returns the line."""
    assert p.returncode == 130, (p.returncode, p.stderr)
    lines = without_progress(p.stderr)
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), p.stderr
    return lines[0]


def error_line(p) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = without_progress(p.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def rows(n=6):
    return {"step": np.zeros(n), "layer": np.zeros(n), "kv_head": np.arange(n), "batch": np.zeros(n),
            "seq_len": np.full(n, 10), "k": np.full(n, 2), "r": np.full(n, 1),
            "positions": [np.array([0, 9])] * n, "components": [np.array([3])] * n, "alpha": np.full(n, 0.5),
            "oracle_mass": np.full(n, 0.9), "out_rel_err": np.full(n, 0.1)}


# --- the pieces, in process --------------------------------------------------------------------------------------------

def test_deferred_holds_ctrl_c_until_the_section_ends():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with I.deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("rest of the section")
    assert done == ["rest of the section"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interruptible_says_what_was_kept_and_ignores_a_second_ctrl_c():
    cleaned = []
    with pytest.raises(I.Interrupted, match="^nothing kept$"):
        with I.interruptible(lambda: "nothing kept"):
            try:
                signal.raise_signal(signal.SIGINT)
            finally:
                signal.raise_signal(signal.SIGINT)  # a second Ctrl-C during the cleanup: ignored
                cleaned.append(True)
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interruptible_leaves_an_ignored_sigint_ignored():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with I.interruptible(lambda: "x"):
            signal.raise_signal(signal.SIGINT)  # e.g. `nohup`: nothing happens
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_trace_writer_interrupted_before_the_rename_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(I.TEST_ENV, "write")
    monkeypatch.setattr(I, "_counts", {})
    p = tmp_path / "t.parquet"
    with pytest.raises(KeyboardInterrupt):
        with TraceWriter(p, META) as w:
            w.write(rows())
    assert not w.committed and names(tmp_path) == []


def test_partial_file_round_trip_and_refusals(tmp_path):
    p = partial_path(tmp_path / "t.parquet")
    assert p.name == "t.parquet.partial"
    from sparq_sim.traces.format import rows_table

    table = rows_table(rows())
    write_partial(p, table, {"config_hash": "abc", "samples_done": 1})
    got, info = read_partial(p)
    assert got.equals(table) and info["config_hash"] == "abc" and info["samples_done"] == 1
    assert partial_info(p) == info
    assert names(tmp_path) == ["t.parquet.partial"]                       # no temporary file
    p.write_bytes(b"not parquet")
    with pytest.raises(UserError, match="cannot be read.*--restart discards it"):
        read_partial(p)
    with pytest.raises(UserError, match="not a readable partial recording.*--restart discards it"):
        partial_info(p)
    pq.write_table(pa.table({"x": [1]}), p)
    with pytest.raises(UserError, match="not a partial recording"):
        read_partial(p)


# --- measure and evaluate through the CLI ------------------------------------------------------------------------------

MEASURE = ["measure", "--kernels", "attn-torch", "--batch", "1", "--seq", "64,128", "--heads", "2", "--head-dim", "16",
           "--r", "4", "--k", "8", "--repeats", "2", "--warmup", "0", "-o", "m.csv"]


@pytest.mark.parametrize("point, says, left", [
    ("point:1", "interrupted: no file written; 1 of 2 points were measured", []),
    ("write", "interrupted: no file written; 2 of 2 points were measured", []),
    ("written", "interrupted: m.csv was written completely", ["m.csv"]),
])
def test_measure_interrupted(tmp_path, point, says, left):
    p = cli(MEASURE, tmp_path, interrupt=point)
    assert interrupted_line(p) == says
    assert names(tmp_path) == left
    if left:
        assert len((tmp_path / "m.csv").read_text().splitlines()) == 3       # header and both points


def test_measure_interrupted_leaves_an_older_file_as_it_was(tmp_path):
    (tmp_path / "m.csv").write_text("older\n")
    p = cli(MEASURE, tmp_path, interrupt="point:2")
    assert "no file written (m.csv left as it was)" in interrupted_line(p)
    assert (tmp_path / "m.csv").read_text() == "older\n" and names(tmp_path) == ["m.csv"]


def test_evaluate_interrupted_before_the_model_loads(tmp_path):
    p = cli(["evaluate", "--tasks", "passkey", "--samples", "1", "--length", "128", "-o", "e.json"], tmp_path,
            interrupt="load")
    assert interrupted_line(p) == "interrupted: no file written"
    assert names(tmp_path) == []


def test_record_real_ctrl_c_while_torch_loads(tmp_path):
    """A genuine SIGINT from outside, once the process is importing torch (seen in /proc/PID/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc to see when torch is being loaded")
    proc = subprocess.Popen(CLI + ["record", "--steps", "2", "--length", "128", "-o", "t.parquet"], cwd=tmp_path,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text():
                break
        except OSError:
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert interrupted_line(p) == "interrupted: no trace written"
    assert names(tmp_path) == []


# --- record: interrupt, resume, compare (slow: four model loads) --------------------------------------------------------

RECORD = ["record", "--samples", "3", "--batch-size", "1", "--steps", "2", "--length", "128", "-o", "t.parquet"]


@pytest.mark.slow
def test_record_resume_writes_the_uninterrupted_trace(tmp_path, tiny):
    """On the tiny random Llama of conftest (2 layers, 2 KV heads: 8 trace rows per sample), which loads in a second
    where SmolLM2 takes ~25 s: the resume logic does not depend on the model."""
    RECORD = globals()["RECORD"] + ["--model", str(tiny)]
    run, ref = tmp_path / "run", tmp_path / "ref"
    run.mkdir()
    ref.mkdir()
    part = run / "t.parquet.partial"
    # the same recording without interruption, alongside
    reference = subprocess.Popen(CLI + RECORD, cwd=ref, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)

    # Ctrl-C in the first decode step of the third sample: the two finished samples are kept, no trace
    p = cli(RECORD, run, interrupt="step:5")
    assert interrupted_line(p) == ("interrupted: no trace written; 2 of 3 samples kept in t.parquet.partial: rerun "
                                   "with --resume to continue")
    assert names(run) == ["t.parquet.partial"]
    assert read_partial(part)[1]["samples_done"] == 2

    # other options: refused, before the model loads
    assert "recorded with other options (steps 3 now, 2 then)" in error_line(cli(RECORD + ["--steps", "3", "--resume"],
                                                                                 run))
    assert names(run) == ["t.parquet.partial"]

    # resumed, and interrupted again while the trace is written: the third sample is kept too, no trace, no temp file
    p = cli(RECORD + ["--resume"], run, interrupt="write")
    assert interrupted_line(p) == ("interrupted: no trace written; 3 of 3 samples kept in t.parquet.partial: rerun "
                                   "with --resume to continue")
    assert names(run) == ["t.parquet.partial"]

    # resumed to the end (Ctrl-C just after the rename: the trace is whole and says so; the partial file is gone)
    p = cli(RECORD + ["--resume"], run, interrupt="written")
    assert interrupted_line(p) == "interrupted: t.parquet was written completely (24 rows)"
    assert names(run) == ["t.parquet"]

    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0 and without_progress(err) == [], err
    assert out.startswith("wrote t.parquet: 24 rows"), out
    assert names(ref) == ["t.parquet"]

    a = assert_same_trace(run / "t.parquet", ref / "t.parquet", 24)
    assert sorted(a.table["batch"].unique().to_pylist()) == [0, 1, 2]



def test_record_refuses_or_discards_a_foreign_partial_file(tmp_path):
    """Before the model loads: an existing partial file is refused without a flag, refused by --resume when the
    options differ, and discarded by --restart."""
    part = tmp_path / "t.parquet.partial"
    write_partial(part, pa.Table.from_batches([], schema=SCHEMA), {"config_hash": "old", "config": {"steps": 9},
                                                                   "samples": 3, "samples_done": 1})
    assert "'t.parquet.partial' holds an interrupted recording (1 of 3 samples)" in error_line(cli(RECORD, tmp_path))
    assert "--resume: 't.parquet.partial' was recorded with other options (" in \
        error_line(cli(RECORD + ["--resume"], tmp_path))
    assert "give one of them" in error_line(cli(RECORD + ["--resume", "--restart"], tmp_path))
    assert names(tmp_path) == ["t.parquet.partial"]
    p = cli(RECORD + ["--restart"], tmp_path, interrupt="load")
    assert p.returncode == 130
    assert p.stderr.splitlines() == ["discarded the partial recording t.parquet.partial",
                                     "interrupted: no trace written"]
    assert names(tmp_path) == []
