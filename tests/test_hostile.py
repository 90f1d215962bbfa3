"""Hostile inputs and hostile environments (issue 15): the cases tests/test_fuzz_inputs.py does not reach.

The contract: bad input or a failing environment gives one `error:` line and exit status 2 (130 on Ctrl-C, 128 + the
signal on SIGTERM, SIGHUP, SIGQUIT), no traceback, no hang, and never a partial or clobbered file. One test per class
of failure, each run over every writer or loader it applies to:
  1. outputs: a symlink keeps its link and gets its target replaced; a FIFO or /dev/null is written in place;
  2. write failures: a full or size-limited file system, a full or closed standard output, names too long or naming
     a folder;
  3. non-regular inputs (FIFOs, /dev/zero, /dev/urandom) and oversized inputs, for every loader;
  4. YAML aliases (billion laughs) in any field;
  5. signals during a streamed sweep;
  6. profile figures outside any physical range;
  7. batch x context beyond int64;
  8. silent wrong answers (a user's profile named like a built-in, two model folders with one name, bad traces,
     bad measurement cells);
  10. `| head`, an ASCII-only terminal.
"""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import without_progress

from sparq_sim.cli import main

REPO = Path(__file__).resolve().parents[1]
SPARQ_TRACE = REPO / "traces" / "examples" / "smollm2-135m_sparq_c8_passkey.parquet"
A100 = REPO / "hardware_profiles" / "a100-80gb.yaml"
CMD = [sys.executable, "-m", "sparq_sim.cli"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def three_rows(tmp_path) -> Path:
    import pandas as pd

    df = pd.read_csv(REPO / "data" / "datasets" / "sparq-paper-a10g.csv")
    f = tmp_path / "three.csv"
    df[(df.kernel == "attn-mem-efficient") & (df.batch == 1)].head(3).to_csv(f, index=False)
    return f


def writers(tmp_path):
    """Every command that writes a file with -o, in fast settings: (name, argv without -o)."""
    return [
        ("predict-table", ["predict", "--seq", "1024", "-f", "table"]),
        ("predict-csv", ["predict", "--seq", "1024", "-f", "csv"]),
        ("predict-json", ["predict", "--seq", "1024", "-f", "json"]),
        ("predict-parquet", ["predict", "--seq", "1024,2048", "-f", "parquet"]),
        ("ledger", ["ledger", "--seq", "1024", "--strategies", "sparq"]),
        ("replay", ["replay", str(SPARQ_TRACE), "--gpu", "h100"]),
        ("validate", ["validate", "--dataset", "gptfast-mi250x"]),
        ("report", ["report", "--seq", "1024,4096", "--batch", "1"]),
        ("calibrate", ["calibrate", str(three_rows(tmp_path)), "--hardware", "a10g"]),
    ]


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(rc, err, status=2):
    assert rc == status, (rc, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# --- 1. outputs that must not be replaced ------------------------------------------------------------------------------

def test_every_writer_writes_through_a_symlink_to_a_fifo_and_to_dev_null(tmp_path, capsys):
    for name, args in writers(tmp_path):
        d = tmp_path / name
        d.mkdir()
        target = d / "target.out"
        target.write_text("old")
        link = d / "link.out"
        link.symlink_to(target.name)
        rc, _, err = run(capsys, *args, "-o", link)
        assert rc == 0, (name, err)
        assert link.is_symlink() and os.readlink(link) == "target.out", name   # the link stays a link ...
        assert target.read_bytes() != b"old" and target.stat().st_size > 0, name  # ... its target is replaced
        assert leftovers(d) == [], name
        rc, _, err = run(capsys, *args, "-o", os.devnull)
        assert rc == 0 and stat.S_ISCHR(os.stat(os.devnull).st_mode), (name, err)
        fifo = d / "pipe"
        os.mkfifo(fifo)
        got = []
        reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
        reader.start()
        rc, _, err = run(capsys, *args, "-o", fifo)
        reader.join(timeout=60)
        assert rc == 0 and got and len(got[0]) > 0, (name, err)
        assert stat.S_ISFIFO(os.stat(fifo).st_mode), name     # still a FIFO, not replaced by a regular file
        assert leftovers(d) == [], name


def test_trace_writer_keeps_links_and_fifos(tmp_path):
    from sparq_sim.traces import TraceWriter, read_trace

    t = read_trace(SPARQ_TRACE)

    def write(path):
        with TraceWriter(path, t.metadata) as w:
            w.write(t.table)

    target = tmp_path / "t.parquet"
    target.write_text("old")
    (tmp_path / "l.parquet").symlink_to("t.parquet")
    write(tmp_path / "l.parquet")
    assert (tmp_path / "l.parquet").is_symlink() and read_trace(target).table.num_rows == t.table.num_rows
    write(os.devnull)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    write(fifo)
    reader.join(timeout=60)
    assert got and got[0][:4] == b"PAR1" and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode) and leftovers(tmp_path) == []


# --- 2. write failures ---------------------------------------------------------------------------------------------

def test_every_writer_reports_a_bad_name_in_one_line(tmp_path, capsys):
    for name, args in writers(tmp_path):
        d = tmp_path / name
        d.mkdir()
        for bad, needle in ((d / ("a" * 256 + ".out"), "bytes long"), (str(d / "newdir") + "/", "names a folder"),
                            (d, "is a folder"), (d / "no" / "x.out", "does not exist")):
            err = one_line(*run(capsys, *args, "-o", bad)[::2])
            assert needle in err, (name, err)
        assert sorted(p.name for p in d.iterdir()) == [], name   # nothing created, no file named 'newdir'
        rc, _, err = run(capsys, *args, "-o", d / ("b" * 250))  # a long name whose temporary name is longer still
        assert rc == 0 and (d / ("b" * 250)).exists(), (name, err)


def _limited(limit_bytes):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return pre


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, fmt):
    res = subprocess.run(CMD + ["predict", "--model", "mistral-7b", "--seq", "1:20000", "-o", str(tmp_path / f"big.{fmt}")], env=ENV,
                         capture_output=True, text=True, preexec_fn=_limited(64 * 1024), timeout=120)
    one_line(res.returncode, "\n".join(without_progress(res.stderr)))
    assert "could not be written" in res.stderr and "nothing was written" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("args", [["predict", "--seq", "1024"], ["strategies"], ["hardware", "list"],
                                  ["models", "show", "llama2-7b"], ["validate", "--dataset", "gptfast-mi250x"]])
def test_a_full_or_closed_standard_output_is_one_line(args):
    with open("/dev/full", "w") as full:
        res = subprocess.run(CMD + args, env=ENV, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    one_line(res.returncode, res.stderr)
    assert "standard output" in res.stderr
    res = subprocess.run(CMD + args, env=ENV, stderr=subprocess.PIPE, text=True, timeout=120,
                         preexec_fn=lambda: os.close(1))
    one_line(res.returncode, res.stderr)
    assert "standard output is closed" in res.stderr


# --- 3. inputs that are not regular files, or too large ------------------------------------------------------------

def _specials(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return [str(fifo), "/dev/zero", "/dev/urandom"]


def test_no_loader_reads_a_fifo_or_an_endless_device(tmp_path, capsys):
    for special in _specials(tmp_path):
        folder = tmp_path / f"model-{Path(special).name}"
        folder.mkdir()
        (folder / "config.json").symlink_to(special)
        cases = [
            ["predict", "--hardware-file", special],
            ["predict", "--model", special],
            ["predict", "--model", folder],                      # a model folder whose config.json is one
            ["validate", special, "--hardware", "a10g"],
            ["replay", special, "--gpu", "h100"],
            ["report", "--evaluation", special],
            ["report", "--measured", special],
            ["report", "--trace", special],
            ["calibrate", special, "--hardware", "a10g", "-o", tmp_path / "x.yaml"],
        ]
        for args in cases:
            t0 = time.perf_counter()
            err = one_line(*run(capsys, *args)[::2])
            assert time.perf_counter() - t0 < 20 and "regular file" in err, (args, err)
    # a measurement row naming such a file as its hardware (cells are resolved as profile paths)
    csv = tmp_path / "m.csv"
    csv.write_text("hardware,kernel,strategy,k_layout,batch,seq_len,n_heads,n_kv_heads,head_dim,dtype,r,k,time_s\n"
                   "/dev/zero,attn-torch,dense,,1,1024,32,32,128,fp16,,,0.001\n")
    err = one_line(*run(capsys, "validate", csv)[::2])
    assert "regular file" in err


def test_an_oversized_profile_is_refused_before_it_is_read(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text(A100.read_text() + "#" + "x" * (5 << 20) + "\n")
    err = one_line(*run(capsys, "predict", "--hardware-file", big)[::2])
    assert "MiB" in err and "at most" in err


# --- 4. YAML aliases ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["description", "vendor", "memory"])
def test_yaml_aliases_are_refused_in_any_field(tmp_path, capsys, where):
    text = A100.read_text()
    laughs = "".join(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]\n" for i in range(1, 9))
    if where == "description":
        text = text.replace("description:", "lol: &x0 [lol]\n" + laughs + "description:", 1)
    elif where == "vendor":
        text = text.replace("vendor: NVIDIA", "vendor: &v NVIDIA\nextra: *v", 1)
    else:
        text = text.replace("  - name: hbm", "  - name: &n hbm", 1).replace("memory:", "alias_of: *n\nmemory:", 1)
    f = tmp_path / "laughs.yaml"
    f.write_text(text)
    t0 = time.perf_counter()
    err = one_line(*run(capsys, "predict", "--hardware-file", f)[::2])
    assert time.perf_counter() - t0 < 5 and "aliases" in err, err


# --- 5. signals ---------------------------------------------------------------------------------------------------

def _default_signals():
    """The child starts with every signal of the test at its default action, as from an interactive shell: a suite
    run under nohup (SIGHUP ignored) would otherwise hand the command an ignored SIGHUP, which it rightly keeps."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129),
                                        (signal.SIGQUIT, 131)])
def test_a_signal_during_a_streamed_sweep_leaves_no_file(tmp_path, sig, status):
    p = subprocess.Popen(CMD + ["predict", "--gpu", "a100,h100", "--model", "mistral-7b", "--seq", "1:32768", "--batch", "1:25", "-o",
                                str(tmp_path / "sweep.csv")], env=ENV, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_default_signals)
    deadline = time.time() + 60
    while not list(tmp_path.iterdir()) and time.time() < deadline:   # the temporary file has appeared
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(sig)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == status and len(without_progress(err)) == 1 and "Traceback" not in err, (p.returncode, err)
    assert ("interrupted" if sig == signal.SIGINT else signal.Signals(sig).name) in err
    assert list(tmp_path.iterdir()) == []


# --- 6. figures no device has -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("old,new", [
    ("efficiency: 0.86", "efficiency: 5.0e-324"),
    ("granularity: 32 B", "granularity: 1.0e-300"),
    ("granularity: 32 B", "granularity: 1.0e+30"),
    ("bandwidth: 2039 GB/s", "bandwidth: 1.0e-300"),
    ("bf16: 312 TFLOP/s", "bf16: 1.0e-300"),
    ("capacity: 80 GB", "capacity: 1.0e+30"),
    ("kernel_launch: 2.5 us", "kernel_launch: 1.0e+30"),
])
def test_profile_figures_outside_any_physical_range_are_refused(tmp_path, capsys, old, new):
    text = A100.read_text()
    assert old in text
    f = tmp_path / "p.yaml"
    f.write_text(text.replace(old, new, 1))
    one_line(*run(capsys, "predict", "--hardware-file", f)[::2])


def test_replay_granularity_outside_any_memory_is_refused(capsys):
    for g in ("1e300", "1e-300"):
        err = one_line(*run(capsys, "replay", SPARQ_TRACE, "--gpu", "h100", "--granularity", g)[::2])
        assert "--granularity" in err


# --- 7. batch x context beyond int64 -----------------------------------------------------------------------------------

def test_extreme_batch_and_context_stay_finite_and_positive():
    import sparq_sim

    for phase in ("decode", "prefill"):
        led = sparq_sim.ledger(seq_len=3037000500, batch=3037000500, strategies="sparq", phases=(phase,))
        for c in ("weight_bytes", "act_read_bytes", "act_write_bytes", "kv_read_bytes", "flops", "time_s"):
            v = led[c].to_numpy(dtype=float)
            assert np.all(np.isfinite(v)) and np.all(v >= 0), (phase, c)
    cols = sparq_sim.predict_columns(seq_len=[1, 10**15], batch=[1, 10**15], devices=1)
    for c in ("time_s", "total_bytes", "flops", "prefill_time_s", "memory_required_bytes"):
        assert np.all(np.isfinite(cols[c])) and np.all(cols[c] >= 0), c
    assert np.all(cols["max_batch"] >= 0)


# --- 8. silent wrong answers --------------------------------------------------------------------------------------

def test_a_users_profile_named_like_a_built_in_is_never_dropped(tmp_path, capsys):
    f = tmp_path / "mine.yaml"
    f.write_text(A100.read_text().replace("bandwidth: 2039 GB/s", "bandwidth: 1000 GB/s", 1))
    err = one_line(*run(capsys, "predict", "--gpu", "a100", "--hardware-file", f)[::2])
    assert "both named 'a100-80gb'" in err and "mine.yaml" in err
    def time_s(out):
        head, row = out.splitlines()[:2]
        return float(row.split(",")[head.split(",").index("time_s")])

    rc, out, _ = run(capsys, "predict", "--hardware-file", f, "--strategies", "dense", "-f", "csv")
    alone = time_s(out)
    rc, out, _ = run(capsys, "predict", "--gpu", "a100", "--strategies", "dense", "-f", "csv")
    assert alone > time_s(out)   # the file's slower memory, not the built-in's


def test_two_model_folders_with_one_name_are_an_error(tmp_path, capsys):
    cfg = ('{"model_type":"llama","hidden_size":64,"num_attention_heads":4,"num_hidden_layers":%d,'
           '"intermediate_size":128,"vocab_size":100}')
    for i, layers in ((1, 2), (2, 8)):
        (tmp_path / str(i) / "x").mkdir(parents=True)
        (tmp_path / str(i) / "x" / "config.json").write_text(cfg % layers)
    err = one_line(*run(capsys, "predict", "--model", f"{tmp_path}/1/x,{tmp_path}/2/x", "--seq", "64")[::2])
    assert "both named 'x'" in err


def _trace_with(tmp_path, change):
    import pyarrow.parquet as pq

    t = pq.read_table(SPARQ_TRACE)
    meta = {k: v for k, v in pq.ParquetFile(SPARQ_TRACE).metadata.metadata.items() if k != b"ARROW:schema"}
    t = change(t).replace_schema_metadata(meta)   # still a sparq-sim trace, but a bad one
    f = tmp_path / "bad.parquet"
    pq.write_table(t, f)
    return f


@pytest.mark.parametrize("case,needle", [
    ("duplicate column", "appears more than once"),
    ("nan oracle_mass", "oracle_mass"),
    ("nan out_rel_err", "out_rel_err"),
    ("rows beyond the group", "rows for this step"),
    ("k below the positions", "positions"),
])
def test_bad_traces_are_refused(tmp_path, capsys, case, needle):
    import pyarrow as pa

    def change(t):
        if case == "duplicate column":
            return t.append_column("k", t["k"])
        if case.startswith("nan"):
            col = case.split()[1]
            a = t[col].to_numpy().copy()
            a[5] = np.nan
            return t.set_column(t.column_names.index(col), col, pa.array(a, type=pa.float32()))
        if case == "rows beyond the group":   # every row four times: SmolLM2's groups have 3 query heads
            return pa.concat_tables([t] * 4)
        k = t["k"].to_numpy().copy()
        k[7] = 1
        return t.set_column(t.column_names.index("k"), "k", pa.array(k, type=pa.int32()))

    f = _trace_with(tmp_path, change)
    err = one_line(*run(capsys, "replay", f, "--gpu", "h100")[::2])
    assert needle in err, err


@pytest.mark.parametrize("cell,needle", [("k_layout=thrice", "k_layout"), ("model=a,b", "one model per row")])
def test_bad_measurement_cells_are_refused(tmp_path, capsys, cell, needle):
    col, value = cell.split("=", 1)
    header = "hardware,kernel,strategy,k_layout,batch,seq_len,n_heads,n_kv_heads,head_dim,dtype,r,k,time_s,level,model"
    row = {"hardware": "t4", "kernel": "flexgen", "strategy": "dense", "k_layout": "", "batch": "2", "seq_len": "512",
           "n_heads": "32", "n_kv_heads": "32", "head_dim": "128", "dtype": "fp16", "r": "", "k": "", "time_s": "0.1",
           "level": "step", "model": "opt-6.7b"}
    row[col] = f'"{value}"' if "," in value else value
    f = tmp_path / "m.csv"
    f.write_text(header + "\n" + ",".join(row[c] for c in header.split(",")) + "\n")
    err = one_line(*run(capsys, "validate", f)[::2])
    assert needle in err, err


# --- 10. smaller ones ---------------------------------------------------------------------------------------------

def test_a_reader_that_goes_away_ends_the_command_quietly():
    p = subprocess.Popen(CMD + ["predict", "--seq", "1:4096", "--batch", "1:25", "-f", "csv"], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert p.returncode == 0 and err == "", (p.returncode, err)


def test_an_ascii_only_terminal_gets_escaped_names(tmp_path):
    folder = tmp_path / "modèle"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type":"llama","hidden_size":64,"num_attention_heads":4,'
                                        '"num_hidden_layers":2,"intermediate_size":128,"vocab_size":100}')
    res = subprocess.run(CMD + ["predict", "--model", str(folder), "--seq", "64"], capture_output=True,
                         env=dict(ENV, PYTHONIOENCODING="ascii"), timeout=120)
    assert res.returncode == 0 and b"mod\\xe8le" in res.stdout, res.stderr


def test_an_invalid_calibrated_profile_names_no_file(tmp_path):
    from sparq_sim.cli.measurements import _check_profile
    from sparq_sim.simulator.errors import UserError

    with pytest.raises(UserError, match="was not written"):
        _check_profile(A100.read_text().replace("efficiency: 0.86", "efficiency: 7", 1), str(tmp_path / "o.yaml"))
    assert list(tmp_path.iterdir()) == []


def test_measure_writes_through_a_symlink_and_into_dev_null(tmp_path, capsys):
    pytest.importorskip("torch")
    args = ["measure", "--device", "cpu", "--kernels", "attn-torch", "--batch", "1", "--seq", "64", "--heads", "2",
            "--head-dim", "16", "--repeats", "1", "--warmup", "0"]
    (tmp_path / "t.csv").write_text("old")
    (tmp_path / "l.csv").symlink_to("t.csv")
    rc, _, err = run(capsys, *args, "-o", tmp_path / "l.csv")
    assert rc == 0 and (tmp_path / "l.csv").is_symlink() and "attn-torch" in (tmp_path / "t.csv").read_text(), err
    rc, _, err = run(capsys, *args, "-o", os.devnull)
    assert rc == 0 and stat.S_ISCHR(os.stat(os.devnull).st_mode), err
    err = one_line(*run(capsys, *args, "-o", str(tmp_path / "new") + "/")[::2])
    assert "names a folder" in err and leftovers(tmp_path) == []
