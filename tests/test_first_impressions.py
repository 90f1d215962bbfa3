"""First impressions (issue 16): the headline table says what it assumed and what its columns mean, mixed devices
just work, every option has a help text, `--version`."""

from __future__ import annotations

import pytest

from sparq_sim.cli import app, main
from sparq_sim.simulator.strategies import STRATEGY_NAMES


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def test_the_headline_table_states_every_assumption_and_explains_itself(capsys):
    out = run(capsys, "predict", "--gpu", "a100", "--seq", "4096")
    head = out.splitlines()[0]
    for needle in ("llama2-7b", "a100-80gb", "batch 1", "context 4096", "bf16", "compression 1/8", "1 device"):
        assert needle in head, (needle, head)
    assert all(line == line.rstrip() for line in out.splitlines()), "trailing blanks"
    for needle in ("vs dense", "realistic", "ideal attn", "attn frac", "bound:", "fits:", "k = S/(2C)"):
        assert needle in out, needle
    bare = run(capsys, "predict", "--gpu", "a100", "--seq", "4096", "--no-legend")
    assert bare.splitlines()[0] == head and "attn frac:" not in bare and len(bare.splitlines()) == 3 + len(STRATEGY_NAMES)


def test_the_layout_does_not_depend_on_the_number_of_strategies(capsys):
    one = run(capsys, "predict", "--seq", "4096", "--strategies", "sparq", "--no-legend").splitlines()
    six = run(capsys, "predict", "--seq", "4096", "--no-legend").splitlines()
    assert one[0] == six[0] and one[1].split() == six[1].split()


def test_the_accuracy_note_names_strategies_that_lose_the_task(capsys):
    from sparq_sim.simulator import explain

    assert explain.evaluation_rows(), "the bundled evaluation (data/evaluation/smollm2-135m.json) is missing"
    out = run(capsys, "predict", "--seq", "4096")
    assert "accuracy at 1/8" in out and "passkey" in out
    assert explain.accuracy_note(["dense"], 8) is None


def test_mixed_devices_take_each_ones_precision(capsys):
    out = run(capsys, "predict", "--gpu", "a100,h100,ipu", "--seq", "4096", "--strategies", "dense", "--no-legend")
    rows = [line.split() for line in out.splitlines()[3:]]
    assert {r[0]: r[1] for r in rows} == {"a100-80gb": "bf16", "h100-sxm": "bf16", "ipu-bow": "fp16"}
    assert "--dtype auto" in out.splitlines()[0]
    run(capsys, "report", "--gpu", "a100,ipu", "--seq", "1024,4096", "-o", "/dev/null")
    import sparq_sim

    cols = sparq_sim.predict_columns(hardware="ipu,a100", seq_len=1024, strategies="dense", dtype="auto,fp16")
    assert len(cols["time_s"]) == 3    # auto and fp16 are one case on the IPU


def test_the_ledger_has_a_total_row_per_strategy_and_phase(capsys):
    out = run(capsys, "ledger", "--gpu", "h100", "--seq", "8192", "--strategies", "sparq,dense", "--phase", "both")
    totals = [t for t in (line.split() for line in out.splitlines()[3:]) if t[2] == "total"]
    assert sorted((t[0], t[1]) for t in totals) == [("dense", "decode"), ("dense", "prefill"), ("sparq", "decode"),
                                                    ("sparq", "prefill")]
    import sparq_sim

    led = sparq_sim.ledger(hardware="h100", seq_len=8192, strategies="sparq", phases=("decode",))
    tot = next(t for t in totals if t[:2] == ["sparq", "decode"])
    assert float(tot[4]) == pytest.approx(led.weight_bytes.sum() / 1e6, abs=1e-3)       # weights MB
    assert float(tot[-4]) == pytest.approx(led.time_s.sum() * 1e3, abs=1e-4)           # ms
    assert all(line == line.rstrip() for line in out.splitlines())


def test_every_option_has_a_help_text_and_there_is_a_version(capsys):
    import typer.main

    group = typer.main.get_command(app)
    bare = []
    for name, cmd in group.commands.items():
        subs = cmd.commands.items() if hasattr(cmd, "commands") else [(name, cmd)]
        for sub, c in subs:
            bare += [(sub, p.opts) for p in c.params if p.param_type_name == "option" and not (p.help or "").strip()]
    assert bare == []
    assert run(capsys, "--version").startswith("sparq-sim ")
