"""The CLI on bad input (issue 2, item 9) and its happy paths.

Every bad-input case runs `sparq_sim.cli.main([...])` in-process and must give: exit status 2, exactly one line on
stderr starting with "error:" that names the bad value (and, where the issue asks, the closest match and the list
command; for a profile file, the file and the field), nothing on stdout, and with `--output FILE` no file left behind
(no temporary file either). A few cases also run as `python -m sparq_sim.cli` to prove no traceback reaches the user.
The happy paths check that JSON, CSV and `--output` carry the issue's required keys and complete data, and that the
list/show/ledger commands exit 0.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparq_sim.cli import main
from sparq_sim.simulator.strategies import STRATEGY_NAMES

REPO = Path(__file__).resolve().parents[1]
A100_YAML = REPO / "hardware_profiles" / "a100-80gb.yaml"

REQUIRED_KEYS = ["hardware", "model", "batch", "seq_len", "strategy", "r", "k", "weight_bytes", "kv_read_bytes",
                 "kv_write_bytes", "attention_bytes", "total_bytes", "flops", "time_s", "ideal_time_s",
                 "attention_time_s", "speedup_vs_dense", "attention_speedup_vs_dense", "bound", "fits",
                 "memory_required_bytes"]
STRATS = list(STRATEGY_NAMES)


def cli(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, needles=()):
    assert rc == 2, (rc, out, err)
    assert out == "", out
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("error:"), lines[0]
    for n in needles:
        assert str(n) in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def assert_bad_input(capsys, tmp_path, args, needles=()):
    """The case plain, then again with --output: same one-line error, and the output folder stays empty."""
    msg = assert_one_line_error(*cli(capsys, *args), needles)
    outdir = tmp_path / "outdir"
    outdir.mkdir(exist_ok=True)
    target = outdir / "result.json"
    # --output right after the subcommand, so a trailing option still lacks its value
    again = assert_one_line_error(*cli(capsys, args[0], "--output", target, *args[1:]), needles)
    assert again == msg
    assert list(outdir.iterdir()) == [], "an output (or temporary) file was left behind"
    return msg


# --------------------------------------------------------------------------------------------------------------------
# bad flags

FLAG_CASES = [
    pytest.param(["predict", "--gpu", "a1000"], ["'a1000'", "a100", "sparq-sim hardware list"], id="unknown-gpu"),
    pytest.param(["predict", "--hardware", "h1000"], ["'h1000'", "h100", "sparq-sim hardware list"],
                 id="unknown-hardware-alias-flag"),
    pytest.param(["predict", "--gpu", "a100,rtx-4909"], ["rtx-4909", "rtx-4090", "sparq-sim hardware list"],
                 id="unknown-gpu-in-list"),
    pytest.param(["predict", "--model", "llama3-8"], ["'llama3-8'", "llama3-8b", "sparq-sim models list"],
                 id="unknown-model"),
    pytest.param(["predict", "--model", "mistral7b"], ["mistral-7b", "sparq-sim models list"],
                 id="unknown-model-typo"),
    pytest.param(["predict", "--seq", "0"], ["--seq", "0"], id="seq-0"),
    pytest.param(["predict", "--seq", "-5"], ["--seq", "-5"], id="seq-negative"),
    pytest.param(["predict", "--seq=-5"], ["--seq", "-5"], id="seq-negative-equals"),
    pytest.param(["predict", "--seq", "1024,0"], ["--seq", "0"], id="seq-0-in-list"),
    pytest.param(["predict", "--seq", "abc"], ["--seq", "abc"], id="seq-abc"),
    pytest.param(["predict", "--seq", "8:4"], ["--seq", "8:4"], id="empty-range"),
    pytest.param(["predict", "--seq", ""], ["--seq"], id="seq-empty"),
    pytest.param(["predict", "--seq", "1k:2k:x1"], ["--seq"], id="range-factor-1"),
    pytest.param(["predict", "--batch", "0"], ["--batch", "0"], id="batch-0"),
    pytest.param(["predict", "--r", "129"], ["129", "head_dim", "128"], id="r-above-head-dim"),
    pytest.param(["predict", "--r", "0"], ["--r", "0"], id="r-0"),
    pytest.param(["predict", "--k", "5000", "--seq", "4096", "--strategies", "sparq"], ["5000", "4096"],
                 id="k-above-seq"),
    pytest.param(["predict", "--compression", "0.5"], ["--compression", "0.5"], id="compression-below-1"),
    pytest.param(["predict", "--compression", "nan"], ["--compression", "nan"], id="compression-nan"),
    pytest.param(["predict", "--dtype", "bogus"], ["bogus", "bf16"], id="dtype"),
    pytest.param(["predict", "--kv-dtype", "bogus"], ["bogus", "bf16"], id="kv-dtype"),
    pytest.param(["predict", "--gpu", "ipu", "--dtype", "bf16"], ["ipu", "bf16", "fp16"],
                 id="dtype-unsupported-by-device"),
    pytest.param(["predict", "--kv-location", "bogus"], ["bogus", "hbm", "host"], id="kv-location"),
    pytest.param(["predict", "--kv-location", "sram"], ["sram", "hbm"], id="kv-location-tier-of-another-device"),
    pytest.param(["predict", "--strategies", "bogus"], ["bogus", "sparq"], id="strategies"),
    pytest.param(["predict", "--strategies", "dense,sparqq"], ["sparqq", "sparq"], id="strategies-typo"),
    pytest.param(["predict", "--devices", "3"], ["3", "32"], id="devices-not-dividing-heads"),
    pytest.param(["predict", "--devices", "0"], ["--devices", "0"], id="devices-0"),
    pytest.param(["predict", "--format", "xml"], ["xml", "json", "csv"], id="format"),
    pytest.param(["predict", "--k-layout", "thrice"], ["thrice"], id="k-layout"),
    pytest.param(["predict", "--bogus-flag"], ["--bogus-flag"], id="unknown-option"),
    pytest.param(["predict", "--seq"], ["--seq"], id="option-without-value"),
    pytest.param(["ledger", "--seq", "1024,2048"], ["--seq"], id="ledger-two-seqs"),
    pytest.param(["ledger", "--r", "abc"], ["--r"], id="ledger-r-not-int"),
    pytest.param(["ledger", "--phase", "both-ways"], ["both-ways"], id="ledger-phase"),
    pytest.param(["hardware", "show", "a1000"], ["a1000", "a100", "sparq-sim hardware list"], id="hardware-show"),
    pytest.param(["models", "show", "llama3-8"], ["llama3-8b", "sparq-sim models list"], id="models-show"),
]


@pytest.mark.parametrize("args,needles", FLAG_CASES)
def test_bad_flag(capsys, tmp_path, args, needles):
    if args[0] == "predict" or args[0] == "ledger":
        assert_bad_input(capsys, tmp_path, args, needles)
    else:
        assert_one_line_error(*cli(capsys, *args), needles)


def test_unknown_gpu_names_the_closest_matches(capsys):
    msg = assert_one_line_error(*cli(capsys, "predict", "--gpu", "h10"))
    assert re.search(r"did you mean .*'h100", msg), msg


@pytest.mark.parametrize("args", [["--seq", "1e30"], ["--seq", "99999999999999999999"], ["--batch", "1e19"]],
                         ids=["seq-1e30", "seq-20-digits", "batch-1e19"])
def test_number_too_large_for_int64(capsys, args):
    assert_one_line_error(*cli(capsys, "predict", *args), [args[0]])


def test_empty_gpu_is_an_error(capsys):
    assert_one_line_error(*cli(capsys, "predict", "--gpu", ""), ["--gpu"])


def test_empty_model_is_an_error(capsys):
    assert_one_line_error(*cli(capsys, "predict", "--model", ""), ["--model"])


# --------------------------------------------------------------------------------------------------------------------
# --output


def test_output_into_missing_folder(capsys, tmp_path):
    target = tmp_path / "no" / "such" / "folder" / "out.json"
    assert_one_line_error(*cli(capsys, "predict", "-o", target), [str(target.parent)])
    assert not (tmp_path / "no").exists()
    assert list(tmp_path.iterdir()) == []


def test_output_is_a_directory(capsys, tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    assert_one_line_error(*cli(capsys, "predict", "--output", d), [str(d)])
    assert list(d.iterdir()) == []
    assert list(tmp_path.iterdir()) == [d]


def test_failed_run_leaves_an_existing_output_untouched(capsys, tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old contents\n")
    assert_one_line_error(*cli(capsys, "predict", "--seq", "abc", "-o", target))
    assert target.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# --------------------------------------------------------------------------------------------------------------------
# --hardware-file


def _profile(tmp_path, name, old=None, new=None, text=None):
    base = A100_YAML.read_text(encoding="utf-8")
    if text is None:
        assert base.count(old) >= 1, old
        text = base.replace(old, new, 1)
    d = tmp_path / "profiles"
    d.mkdir(exist_ok=True)
    p = d / f"{name}.yaml"
    p.write_text(text, encoding="utf-8")
    return p


HUGE_INT = "9" * 400

PROFILE_CASES = [
    # name, old, new, field named in the message
    ("wrong-type-efficiency", "efficiency: 0.86", "efficiency: high", "memory[0].efficiency"),
    ("wrong-type-efficiency-string", "efficiency: 0.86", 'efficiency: "0.86"', "memory[0].efficiency"),
    ("wrong-type-capacity", "capacity: 80 GB", "capacity: [80, GB]", "memory[0].capacity"),
    ("wrong-unit-capacity", "capacity: 80 GB", "capacity: 80 GB/s", "memory[0].capacity"),
    ("wrong-type-name", "name: a100-80gb", "name: 123", "name"),
    ("wrong-type-peak", "bf16: 312 TFLOP/s", "bf16: fast", "compute.matrix.peak.bf16"),
    ("wrong-type-aliases", "aliases: [a100, a100-sxm, a100-80gb-sxm]", "aliases: a100", "aliases"),
    ("unknown-field-top", "vendor: NVIDIA", "vendor: NVIDIA\ncolour: green", "colour"),
    ("unknown-field-tier", "    efficiency: 0.86", "    efficiency: 0.86\n    speed: 3", "speed"),
    ("unknown-dtype", "int8: 624 TFLOP/s", "int9: 624 TFLOP/s", "int9"),
    ("negative-bandwidth", "bandwidth: 2039 GB/s", "bandwidth: -2039 GB/s", "memory[0].bandwidth"),
    ("negative-bandwidth-bare", "bandwidth: 2039 GB/s", "bandwidth: -5", "memory[0].bandwidth"),
    ("zero-bandwidth", "bandwidth: 2039 GB/s", "bandwidth: 0 GB/s", "memory[0].bandwidth"),
    ("nan-bandwidth", "bandwidth: 2039 GB/s", "bandwidth: .nan", "memory[0].bandwidth"),
    ("nan-bandwidth-with-unit", "bandwidth: 2039 GB/s", "bandwidth: nan GB/s", "memory[0].bandwidth"),
    ("inf-bandwidth", "bandwidth: 2039 GB/s", "bandwidth: .inf", "memory[0].bandwidth"),
    ("nan-efficiency", "efficiency: 0.86", "efficiency: .nan", "memory[0].efficiency"),
    ("efficiency-above-1", "efficiency: 0.86", "efficiency: 1.5", "memory[0].efficiency"),
    ("huge-bandwidth", "bandwidth: 2039 GB/s", "bandwidth: 1e40 GB/s", "memory[0].bandwidth"),
    ("overflowing-capacity", "capacity: 80 GB", "capacity: 1e400 GB", "memory[0].capacity"),
    ("bad-time-unit", "kernel_launch: 2.5 us", "kernel_launch: 2.5 parsecs", "overheads.kernel_launch"),
    ("negative-cache", "size: 40 MB", "size: -40 MB", "cache.size"),
    ("schema-version-2", "schema_version: 1", "schema_version: 2", "schema_version"),
    ("schema-version-string", "schema_version: 1", 'schema_version: "1"', "schema_version"),
    ("missing-field", "  kernel_launch: 2.5 us\n", "", "kernel_launch"),
    ("bad-kind", "kind: gpu", "kind: tpu", "kind"),
]


@pytest.mark.parametrize("name,old,new,field", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_malformed_profile_names_file_and_field(capsys, tmp_path, name, old, new, field):
    p = _profile(tmp_path, name, old, new)
    assert_bad_input(capsys, tmp_path, ["predict", "--hardware-file", p], [str(p), field])


@pytest.mark.parametrize("old,new,field", [
    ("capacity: 80 GB", f"capacity: {HUGE_INT}", "memory[0].capacity"),
    ("bf16: 312 TFLOP/s", f"bf16: {HUGE_INT}", "compute.matrix.peak.bf16"),
    ("latency: 0.6 us", f"latency: {HUGE_INT}", "device_link.latency"),
    ("base_latency: 6.7 us", f"base_latency: {HUGE_INT}", "device_link.base_latency"),
], ids=["capacity", "peak", "latency", "base-latency"])
def test_profile_with_huge_integer(capsys, tmp_path, old, new, field):
    p = _profile(tmp_path, "huge-int", old, new)
    assert_one_line_error(*cli(capsys, "predict", "--hardware-file", p), [str(p), field])


@pytest.mark.parametrize("name,text", [
    ("not-yaml", "name: [unclosed\n  : : :\n"),
    ("a-list", "- 1\n- 2\n"),
    ("empty", ""),
    ("a-scalar", "just some words\n"),
    ("python-tag", "name: !!python/object:os.system {}\n"),
], ids=lambda x: x if "\n" not in x and len(x) < 20 else "")
def test_profile_that_is_not_a_profile(capsys, tmp_path, name, text):
    p = _profile(tmp_path, name, text=text)
    assert_bad_input(capsys, tmp_path, ["predict", "--hardware-file", p], [str(p)])


def test_profile_binary_file(capsys, tmp_path):
    p = tmp_path / "binary.yaml"
    p.write_bytes(b"\xff\xfe\x00\x01garbage")
    assert_one_line_error(*cli(capsys, "predict", "--hardware-file", p), [str(p)])


def test_profile_missing(capsys, tmp_path):
    p = tmp_path / "nope.yaml"
    assert_bad_input(capsys, tmp_path, ["predict", "--hardware-file", p], [str(p)])


def test_profile_is_a_directory(capsys, tmp_path):
    d = tmp_path / "adir.yaml"
    d.mkdir()
    assert_bad_input(capsys, tmp_path, ["predict", "--hardware-file", d], [str(d)])


def test_valid_copied_profile_works(capsys, tmp_path):
    p = _profile(tmp_path, "mine", "name: a100-80gb", "name: my-a100")
    rc, out, err = cli(capsys, "predict", "--hardware-file", p, "--format", "json")
    assert (rc, err) == (0, "")
    rows = json.loads(out)
    assert {r["hardware"] for r in rows} == {"my-a100"}


# --------------------------------------------------------------------------------------------------------------------
# --model config.json

GOOD_CONFIG = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
               "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
               "max_position_embeddings": 8192}


def _config(tmp_path, name, text=None, **changes):
    cfg = dict(GOOD_CONFIG)
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k)
        else:
            cfg[k] = v
    d = tmp_path / "models" / name
    d.mkdir(parents=True)
    p = d / "config.json"
    p.write_text(json.dumps(cfg) if text is None else text, encoding="utf-8")
    return p


def test_good_config_json_works(capsys, tmp_path):
    p = _config(tmp_path, "good")
    rc, out, err = cli(capsys, "predict", "--model", p, "--format", "json")
    assert (rc, err) == (0, "")
    assert len(json.loads(out)) == len(STRATS)
    rc, out2, err = cli(capsys, "predict", "--model", p.parent, "--format", "json")  # the folder works too
    assert (rc, err) == (0, "")


CONFIG_CASES = [
    # name, text or None, changes, needles
    ("malformed-json", '{"model_type": "llama", ', {}, ["{path}", "JSON"]),
    ("not-an-object", "[1, 2, 3]", {}, ["{path}"]),
    ("missing-hidden-size", None, {"hidden_size": ...}, ["{path}", "hidden_size"]),
    ("missing-layers", None, {"num_hidden_layers": ...}, ["{path}", "num_hidden_layers"]),
    ("missing-vocab", None, {"vocab_size": ...}, ["{path}", "vocab_size"]),
    ("heads-string", None, {"num_attention_heads": "32"}, ["{path}", "num_attention_heads", "'32'"]),
    ("hidden-float", None, {"hidden_size": 4096.5}, ["{path}", "hidden_size"]),
    ("layers-string", None, {"num_hidden_layers": "32"}, ["'32'"]),
    ("ffn-list", None, {"intermediate_size": [1]}, ["[1]"]),
    ("layers-bool", None, {"num_hidden_layers": True}, ["True"]),
    ("layers-negative", None, {"num_hidden_layers": -1}, ["-1"]),
    ("kv-heads-not-dividing", None, {"num_key_value_heads": 5}, ["5", "32"]),
    ("unknown-model-type", None, {"model_type": "llamma"}, ["{path}", "'llamma'", "llama"]),
    ("no-model-type", None, {"model_type": ...}, ["{path}", "model_type"]),
    ("moe-mixtral", None, {"model_type": "mixtral", "num_local_experts": 8}, ["{path}", "expert"]),
    ("moe-num-experts", None, {"model_type": "qwen2", "num_experts": 60}, ["{path}", "expert"]),
]


@pytest.mark.parametrize("name,text,changes,needles", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_model_config(capsys, tmp_path, name, text, changes, needles):
    p = _config(tmp_path, name, text, **changes)
    assert_bad_input(capsys, tmp_path, ["predict", "--model", p], [n.replace("{path}", str(p)) for n in needles])


@pytest.mark.parametrize("key,value", [("num_hidden_layers", "32"), ("intermediate_size", [1]),
                                       ("vocab_size", 0), ("head_dim", "128")])
def test_bad_model_config_names_file_and_key(capsys, tmp_path, key, value):
    p = _config(tmp_path, "typed", **{key: value})
    assert_one_line_error(*cli(capsys, "predict", "--model", p), [str(p), key])


def test_model_folder_without_config(capsys, tmp_path):
    d = tmp_path / "empty-model"
    d.mkdir()
    assert_one_line_error(*cli(capsys, "predict", "--model", d), ["config.json"])


# --------------------------------------------------------------------------------------------------------------------
# subprocess: no traceback reaches the user


def _sub(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "sparq_sim.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@pytest.mark.parametrize("args,needles", [
    (["predict", "--gpu", "a1000"], ["a100", "sparq-sim hardware list"]),
    (["predict", "--model", "llama3-8"], ["llama3-8b", "sparq-sim models list"]),
    (["predict", "--seq", "abc"], ["--seq"]),
    (["predict", "--seq", "8:4"], ["8:4"]),
    (["predict", "--devices", "3"], ["32"]),
    (["predict", "--format", "xml"], ["xml"]),
], ids=["gpu", "model", "seq-abc", "empty-range", "devices", "format"])
def test_subprocess_bad_input(tmp_path, args, needles):
    r = _sub(*args, "-o", tmp_path / "out.json", cwd=tmp_path)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, needles)
    assert list(tmp_path.iterdir()) == []


def test_subprocess_bad_profile(tmp_path):
    p = _profile(tmp_path, "nan", "bandwidth: 2039 GB/s", "bandwidth: .nan")
    r = _sub("predict", "--hardware-file", p)
    assert_one_line_error(r.returncode, r.stdout, r.stderr, [str(p), "bandwidth"])


def test_subprocess_happy_path():
    r = _sub("predict", "--gpu", "a100", "--seq", "4096")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for s in STRATS:
        assert s in r.stdout


# --------------------------------------------------------------------------------------------------------------------
# happy paths


def _json_rows(capsys, *args):
    rc, out, err = cli(capsys, "predict", *args, "--format", "json")
    assert (rc, err) == (0, ""), err
    rows = json.loads(out)
    assert isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)
    return rows


def test_json_has_required_keys(capsys):
    rows = _json_rows(capsys, "--gpu", "a100", "--seq", "4096")
    assert [r["strategy"] for r in rows] == STRATS
    for r in rows:
        missing = [k for k in REQUIRED_KEYS if k not in r]
        assert not missing, missing
        assert r["hardware"] == "a100-80gb" and r["model"] == "llama2-7b"
        assert (r["batch"], r["seq_len"]) == (1, 4096)
        assert isinstance(r["fits"], bool)
        assert r["bound"] in ("memory", "compute", "link", "overhead")
        for k in REQUIRED_KEYS[5:]:
            if k not in ("bound", "fits"):
                assert isinstance(r[k], (int, float)) and not isinstance(r[k], bool), (k, r[k])
    assert rows[0]["kv_read_bytes"] == 2 * 2**30  # issue 2: llama2-7b bf16 B=1 S=4096 reads exactly 2 GiB of KV


def test_json_grid_is_the_full_product(capsys):
    rows = _json_rows(capsys, "--gpu", "a100,h100", "--seq", "1024:4096:x2", "--batch", "1,4",
                      "--strategies", "dense,sparq")
    keys = {(r["hardware"], r["batch"], r["seq_len"], r["strategy"]) for r in rows}
    assert len(rows) == len(keys) == 2 * 3 * 2 * 2
    assert {r["seq_len"] for r in rows} == {1024, 2048, 4096}


def test_csv_parses_and_matches_json(capsys):
    args = ["--gpu", "a100,ipu", "--dtype", "fp16", "--seq", "1k,4k", "--batch", "1,8"]
    rows = _json_rows(capsys, *args)
    rc, out, err = cli(capsys, "predict", *args, "--format", "csv")
    assert (rc, err) == (0, "")
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == len(rows) == 2 * 2 * 2 * len(STRATS)
    assert set(REQUIRED_KEYS) <= set(table[0])
    for jr, cr in zip(rows, table):
        for k in REQUIRED_KEYS:
            v = jr[k]
            if isinstance(v, bool):
                assert cr[k] == str(v)
            elif isinstance(v, (int, float)):
                assert float(cr[k]) == v, (k, cr[k], v)
            else:
                assert cr[k] == v


def test_output_file_is_complete_and_clean(capsys, tmp_path):
    stdout_rows = _json_rows(capsys, "--seq", "1024,4096")
    target = tmp_path / "out.json"
    rc, out, err = cli(capsys, "predict", "--seq", "1024,4096", "-o", target)  # format from the suffix
    assert (rc, out, err) == (0, "", "")
    assert json.loads(target.read_text()) == stdout_rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    # overwriting works and stays clean; csv from the suffix
    target.write_text("stale")
    rc, out, err = cli(capsys, "predict", "--seq", "1024,4096", "-o", target, "--format", "json")
    assert rc == 0 and json.loads(target.read_text()) == stdout_rows
    csv_target = tmp_path / "out.csv"
    assert cli(capsys, "predict", "--seq", "1024,4096", "-o", csv_target)[0] == 0
    assert len(list(csv.DictReader(csv_target.open()))) == len(stdout_rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.json"]


def test_output_file_mode_follows_umask(capsys, tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "out.json"
        assert cli(capsys, "predict", "-o", target)[0] == 0
        assert target.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("args,expect", [
    (["hardware", "list"], ["a100-80gb", "h100-sxm", "ipu-bow", "epyc-7763"]),
    (["hardware", "show", "a100"], ["a100-80gb", "2039 GB/s"]),
    (["models", "list"], ["llama2-7b", "llama3-8b", "smollm2-135m"]),
    (["models", "show", "llama3-8b"], ["llama3-8b", "131072"]),   # 128 KiB of KV per token (bf16)
    (["ledger"], ["sparq"]),
    (["ledger", "--strategies", "all", "--phase", "both", "--format", "json"], ["prefill"]),
    (["strategies"], STRATS),
    (["predict", "--gpu", "ipu", "--dtype", "fp16", "--devices", "4"], ["ipu-bow"]),
    (["predict", "--kv-location", "host", "--model", "llama3-70b"], ["llama3-70b"]),
], ids=["hw-list", "hw-show", "models-list", "models-show", "ledger",
        "ledger-json", "strategies", "predict-ipu", "predict-host"])
def test_commands_exit_zero(capsys, args, expect):
    rc, out, err = cli(capsys, *args)
    assert (rc, err) == (0, ""), err
    for e in expect:
        assert e in out, e
    if "json" in args:
        json.loads(out)


# regression: these crashed on the unstated host-link capacity (inf) before output._clean turned it into null
@pytest.mark.parametrize("args", [["hardware", "list", "--format", "json"],
                                  ["hardware", "show", "a100", "--format", "json"],
                                  ["hardware", "show", "ipu", "--format", "json"]],
                         ids=["list", "show-a100", "show-ipu"])
def test_hardware_json(capsys, args):
    rc, out, err = cli(capsys, *args)
    assert (rc, err) == (0, "")
    data = json.loads(out)
    for prof in data if isinstance(data, list) else [data]:
        assert prof["memory"] and prof["host_link"]["bandwidth_Bps"] > 0
