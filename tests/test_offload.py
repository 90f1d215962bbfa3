"""Weights and KV cache split between the device and host memory (`--weights-on-device`, `--kv-on-device`): the
host's share streams over the host link while the device reads the rest, each operator taking the slower."""

from __future__ import annotations

import warnings

import pytest

import sparq_sim
from sparq_sim.cli import main
from sparq_sim.hardware_profiles import load_hardware
from sparq_sim.simulator.models import BUILTIN


def _predict(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sparq_sim.predict(hardware="t4", model="opt-6.7b", dtype="fp16", strategies="dense", **kw)


def test_the_ends_of_the_range_are_the_whole_placements():
    on = _predict(seq_len=512, batch=4).iloc[0]
    assert _predict(seq_len=512, batch=4, weights_on_device=1.0).iloc[0]["time_s"] == on["time_s"]
    off = _predict(seq_len=512, batch=4, weights_on_device=0.0).iloc[0]
    host = _predict(seq_len=512, batch=4, weights_location="host").iloc[0]
    assert off["time_s"] == pytest.approx(host["time_s"], rel=1e-12)
    kv_off = _predict(seq_len=512, batch=4, kv_on_device=0.0).iloc[0]
    kv_host = _predict(seq_len=512, batch=4, kv_location="host").iloc[0]
    assert kv_off["time_s"] == pytest.approx(kv_host["time_s"], rel=1e-12)


def test_the_step_slows_as_more_weights_stay_on_the_host():
    times = [_predict(seq_len=512, batch=4, weights_on_device=f).iloc[0]["time_s"] for f in (1, 0.8, 0.5, 0.2, 0)]
    assert times == sorted(times)


def test_an_operator_takes_the_slower_of_its_device_and_host_shares():
    hw = load_hardware("t4")
    m = BUILTIN["opt-6.7b"]
    led = sparq_sim.ledger(hardware="t4", model="opt-6.7b", dtype="fp16", seq_len=512, batch=1, strategies="dense",
                           weights_on_device=0.3, phases=("decode",))
    head = led[led["op"] == "lm_head"].iloc[0]
    W = m.d_model * m.vocab_size * 2.0
    act = m.d_model * 2.0 + m.vocab_size * 4.0          # its input row (fp16) and fp32 logits, on the device
    dev = (0.3 * W + act) / hw.memory[0].achieved_Bps
    link = 0.7 * W / hw.host_link.achieved_Bps
    assert head["memory_time_s"] == pytest.approx(max(dev, link), rel=1e-12)
    assert head["time_s"] == pytest.approx(max(dev, link, head["compute_time_s"]) + hw.kernel_launch_s, rel=1e-12)


def test_the_host_share_frees_device_memory():
    # OPT-30B in fp16 (60 GB) cannot sit on a 16 GB T4; with 20 % on the device it fits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        none = sparq_sim.predict(hardware="t4", model="opt-30b", dtype="fp16", seq_len=512, batch=2,
                                 strategies="dense", weights_location="gddr").iloc[0]
        some = sparq_sim.predict(hardware="t4", model="opt-30b", dtype="fp16", seq_len=512, batch=2,
                                 strategies="dense", weights_on_device=0.2).iloc[0]
    assert not none["fits"] and some["fits"]
    assert some["weights_on_device"] == 0.2 and some["kv_on_device"] == 1.0


@pytest.mark.parametrize("args, needle", [(["--weights-on-device", "1.5"], "between 0 and 1"),
                                          (["--kv-on-device", "-0.1"], "--kv-on-device"),
                                          (["--weights-on-device", "half"], "--weights-on-device")])
def test_bad_shares_are_one_line(capsys, args, needle):
    rc = main(["predict", *args])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1


def test_weights_too_large_for_the_host_fit_no_batch():
    """Found by a CI run of the placement invariants: OPT-175B in fp32 (700 GB) with its weights on the host of a T4
    profile does not fit, and no batch would (max_batch 0, not the room the device has left)."""
    import sparq_sim

    c = sparq_sim.predict_columns(hardware="t4", model="opt-175b", dtype="fp32", weights_location="host", seq_len=1,
                                  batch=1, strategies="dense")
    assert not c["fits"][0] and c["max_batch"][0] == 0
    # the cache's offloaded share counts against the host: the largest batch is where fits turns false
    kw = dict(hardware="t4", model="opt-6.7b", dtype="fp16", weights_on_device=0.0, kv_on_device=0.0,
              seq_len=4096, strategies="dense")
    mb = int(sparq_sim.predict_columns(batch=1, **kw)["max_batch"][0])
    assert sparq_sim.predict_columns(batch=mb, **kw)["fits"][0]
    assert not sparq_sim.predict_columns(batch=mb + 1, **kw)["fits"][0]
