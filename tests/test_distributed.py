"""`evaluate --ray` (issue 13): the cells of an evaluation as Ray tasks on a real local cluster, with a tiny random
Llama and a byte-level tokenizer saved as a Hugging Face folder (fast to load in every worker). The result is the
single-process run's, bit for bit (one torch thread each); a killed worker's cell is run again; Ctrl-C keeps the
finished cells and the same command goes on from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_same_trace, without_progress

_EXE = Path(sys.executable).with_name("sparq-sim")
CLI = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "sparq_sim.cli"]
ARGS = ["evaluate", "--tasks", "passkey,repetition", "--samples", "6", "--batch-size", "1", "--length", "128",
        "--compression", "8", "--strategies", "dense,sparq,h2o,loki", "--threads", "1", "-f", "json"]


def test_without_ray_it_says_how_to_install_it(capsys, monkeypatch):
    from sparq_sim.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)    # `import ray` fails as when it is not installed
    assert main(["evaluate", "--ray", "--samples", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ray needs Ray, which is not installed: pip install 'sparq-sim[distributed]'" in err


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARQ_SIM_TEST")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    return env


def _run(args, cwd, **env):
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    """The single-process run, one torch thread."""
    p = _run(ARGS + ["--model", tiny, "-q"], tmp_path_factory.mktemp("single"))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.slow
def test_ray_gives_the_single_process_result_bit_for_bit(tiny, single, tmp_path):
    pytest.importorskip("ray")
    p = _run(ARGS + ["--model", tiny, "--ray", "-o", "e.json"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == single == json.loads((tmp_path / "e.json").read_text())
    assert without_progress(p.stderr) == []
    assert p.stderr.splitlines()[-1].startswith("evaluate on ray: 100% (12/12 cells)")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["e.json"]       # the kept cells went with the output


@pytest.mark.slow
def test_a_killed_worker_has_its_cell_run_again(tiny, single, tmp_path):
    """Every cell's first worker dies (os._exit, as an out-of-memory kill); Ray runs each cell again elsewhere."""
    pytest.importorskip("ray")
    marks = tmp_path / "marks"
    marks.mkdir()
    p = _run(ARGS + ["--model", tiny, "--ray", "-q"], tmp_path, SPARQ_SIM_TEST_CRASH_ONCE=str(marks))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == single
    assert len(list(marks.iterdir())) == 12                               # every cell died once


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_cells_and_the_same_command_goes_on(tiny, single, tmp_path):
    pytest.importorskip("ray")
    args = ARGS + ["--model", tiny, "--ray", "-o", "e.json"]
    p = _run(args, tmp_path, SPARQ_SIM_TEST_INTERRUPT="cell:3")
    assert p.returncode == 130, p.stderr
    line = without_progress(p.stderr)
    assert len(line) == 1 and line[0].startswith("interrupted: no file written; ") and \
        "cells kept in e.json.cells: the same command goes on from them" in line[0], p.stderr
    kept = len(list((tmp_path / "e.json.cells").iterdir()))
    assert 3 <= kept < 12
    p = _run(args, tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == single
    lines = p.stderr.splitlines()      # 0 of 12 when it starts, then at once the kept cells: they are not run again
    assert lines[0].startswith("evaluate on ray: 0% (0/12 cells)") and f"({kept}/12 cells)" in lines[1], p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["e.json"]


@pytest.mark.parametrize("address,match", [("127.0.0.1:1", "no Ray cluster answers there"),
                                           ("garbage", "give HOST:PORT of the cluster's head"),
                                           ("", "--ray-address is empty")])
def test_an_address_without_a_cluster_is_one_line_at_once(capsys, address, match):
    """Ray itself would retry for minutes, printing its own logs: the address is tried first."""
    pytest.importorskip("ray")
    from sparq_sim.cli import main

    assert main(["evaluate", "--ray-address", address, "--samples", "1", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err


RECORD = ["record", "--task", "passkey", "--strategy", "sparq", "--compression", "4", "--samples", "4",
          "--batch-size", "1", "--steps", "3", "--length", "128", "--threads", "1", "-o", "t.parquet"]


@pytest.mark.slow
def test_record_on_ray_writes_the_single_process_trace_and_goes_on_after_ctrl_c(tiny, tmp_path):
    """Four batches of one sample as Ray tasks: Ctrl-C after the second keeps the finished batches' rows in
    t.parquet.cells/ (a trace file and an entry per batch); the same command then records only the rest, and the
    trace equals one process's, rows, row groups and metadata."""
    pytest.importorskip("ray")
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    p = _run(RECORD + ["--model", tiny, "-q"], one)
    assert p.returncode == 0, p.stderr
    args = RECORD + ["--model", tiny, "--ray"]
    p = _run(args, many, SPARQ_SIM_TEST_INTERRUPT="cell:2")
    assert p.returncode == 130, p.stderr
    line = without_progress(p.stderr)
    assert len(line) == 1 and line[0].startswith("interrupted: no trace written; ") and \
        "batches kept in t.parquet.cells: the same command goes on from them" in line[0], p.stderr
    kept = sorted(x.suffix for x in (many / "t.parquet.cells").iterdir())
    assert 2 <= kept.count(".arrow") == kept.count(".json") < 4
    p = _run(args, many)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("wrote t.parquet: 48 rows (3 steps x 2 layers x 2 KV heads x 4 sequence(s))")
    lines = p.stderr.splitlines()      # the kept batches count as done at once: they are not recorded again
    assert lines[0].startswith("record sparq on ray: 0% (0/4 batches)") and \
        f"({kept.count('.arrow')}/4 batches)" in lines[1], p.stderr
    assert sorted(x.name for x in many.iterdir()) == ["t.parquet"]      # the cells went with the trace
    assert_same_trace(one / "t.parquet", many / "t.parquet", 48)


def test_record_ray_refuses_the_partial_files_options(capsys):
    from sparq_sim.cli import main

    assert main(["record", "--ray", "--resume", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "with --ray the same command goes on from the batches kept in OUTPUT.cells/" in err


MEASURE = ["measure", "--kernels", "attn-torch,sparq-attn-torch,h2o-attn-torch", "--batch", "1", "--seq", "256,512",
           "--heads", "2", "--head-dim", "32", "--r", "8", "--k", "32", "--repeats", "2", "--warmup", "0", "--threads",
           "1", "-q", "-o", "m.csv"]


@pytest.mark.slow
def test_measure_on_ray_times_the_single_process_points(tmp_path):
    """Each kernel's points as a Ray task holding --threads CPUs: the same rows as one process (every column but the
    timings), in the same order; the kept kernels go with the CSV."""
    pytest.importorskip("ray")
    import csv

    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    p = _run(MEASURE, one)
    assert p.returncode == 0, p.stderr
    p = _run(MEASURE + ["--ray"], many)
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in many.iterdir()) == ["m.csv"]
    a = list(csv.DictReader(open(one / "m.csv")))
    b = list(csv.DictReader(open(many / "m.csv")))
    timing = ("time_s", "time_stderr_s", "repeats")
    assert len(a) == len(b) == 6
    assert [{c: v for c, v in r.items() if c not in timing} for r in a] == \
        [{c: v for c, v in r.items() if c not in timing} for r in b]
    assert all(float(r["time_s"]) > 0 and r["threads"] == "1" for r in b)


def test_measure_ray_refuses_model_steps(tmp_path, capsys):
    from sparq_sim.cli import main

    assert main(["measure", "--ray", "--model-step", "-o", str(tmp_path / "m.csv"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model-step runs in one process; --ray fans out the kernels" in err
