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


# ---- the disk behind host memory (FlexGen's third tier: --weights-on-disk, --kv-on-disk) ----------------------------

def test_an_operator_on_the_disk_pays_the_disks_read_and_write_rates_and_the_link():
    """lm_head with 40 % of the weights on the device, 60 % on the disk (none in host memory): the disk reads its share
    at 2 GB/s (t4's disk, FlexGen's figure), the same bytes cross PCIe, the device reads the rest; the slowest wins."""
    hw = load_hardware("t4")
    m = BUILTIN["opt-6.7b"]
    led = sparq_sim.ledger(hardware="t4", model="opt-6.7b", dtype="fp16", seq_len=512, batch=1, strategies="dense",
                           weights_on_device=0.4, weights_on_disk=0.6, phases=("decode",))
    head = led[led["op"] == "lm_head"].iloc[0]
    from sparq_sim.simulator.predict import predict_columns
    W = m.d_model * m.vocab_size * 2.0
    act = m.d_model * 2.0 + m.vocab_size * 4.0
    dev = (0.4 * W + act) / hw.memory[0].achieved_Bps
    link = 0.6 * W / hw.host_link.achieved_Bps
    disk = 0.6 * W / 2e9
    assert hw.disk.achieved_Bps == 2e9 and hw.disk.achieved_write_Bps == 1e9
    assert head["memory_time_s"] == pytest.approx(max(dev, link, disk), rel=1e-12)
    assert head["tier_bytes"]["disk"] == pytest.approx(0.6 * W) and head["tier_bytes"]["host"] == pytest.approx(0.6 * W)
    # the same operator built by hand through the roofline's placement
    from sparq_sim.simulator.ledger import Op, Precision
    from sparq_sim.simulator.roofline import Placement, tier_table, time_op, write_rates
    names, peak, achieved, _ = tier_table(hw)
    assert names == ("gddr", "host", "disk")
    wr, wp = write_rates(hw, achieved, peak)
    pl = Placement(names, peak, achieved, 0, 0, 0, 0.0, 0.0, 0.6, 0.0, wr, wp)
    op = Op("decode", "lm_head", "head", "matrix", 1, 1, weight=W, act_read=m.d_model * 2.0,
            act_write=m.vocab_size * 4.0, flops=2 * W / 2)
    t = time_op(op, hw, pl, Precision.of("fp16"), 1)
    assert float(t.memory_s) == pytest.approx(max(dev, link, disk), rel=1e-12) and disk > max(dev, link)
    # a cache write to the disk goes at its write rate, reads at its read rate
    kv = Op("decode", "kv_append", "attention", "vector", 1, 1, kv_read=3e8, kv_write=2e7, flops=0.0)
    pl_kv = Placement(names, peak, achieved, 0, 0, 0, 0.0, 0.0, 0.0, 1.0, wr, wp)
    t = time_op(kv, hw, pl_kv, Precision.of("fp16"), 1)
    assert float(t.memory_s) == pytest.approx(max(3e8 / 2e9 + 2e7 / 1e9, 3.2e8 / hw.host_link.achieved_Bps),
                                              rel=1e-12)
    assert predict_columns(hardware="t4", model="opt-6.7b", dtype="fp16", strategies="dense", seq_len=512,
                           weights_on_device=0.4, weights_on_disk=0.6)["weights_on_disk"][0] == 0.6


def test_weights_on_the_disk_make_a_step_as_slow_as_reading_them_from_it():
    """Batch 1, all weights on the disk: a decode step reads every weight byte at the disk's 2 GB/s, within the
    little that is not weights (the cache and activations stay on the device, their reads hidden behind it)."""
    c = sparq_sim.predict_columns(hardware="t4", model="opt-6.7b", dtype="fp16", strategies="dense", seq_len=512,
                                  batch=1, weights_on_device=0.0, weights_on_disk=1.0)
    t_disk = c["weight_bytes"][0] / 2e9
    assert t_disk <= c["time_s"][0] <= t_disk * 1.01
    half = sparq_sim.predict_columns(hardware="t4", model="opt-6.7b", dtype="fp16", strategies="dense", seq_len=512,
                                     batch=1, weights_on_device=0.0, weights_on_disk=0.5)
    assert half["time_s"][0] == pytest.approx(c["time_s"][0] / 2, rel=0.01)
    none = sparq_sim.predict_columns(hardware="t4", model="opt-6.7b", dtype="fp16", strategies="dense", seq_len=512,
                                     batch=1, weights_on_device=0.0, weights_on_disk=0.0)
    assert none["time_s"][0] < half["time_s"][0]


def test_the_disk_holds_its_shares_and_frees_host_memory():
    """OPT-175B fp16 (350 GB) does not fit the T4 machine's 208 GB of host memory; half of it on the 1.5 TB disk
    does; a model larger than the disk does not fit at all."""
    kw = dict(hardware="t4", model="opt-175b", dtype="fp16", strategies="dense", seq_len=512, batch=1,
              weights_on_device=0.0)
    assert not sparq_sim.predict_columns(**kw)["fits"][0]
    c = sparq_sim.predict_columns(weights_on_disk=0.5, **kw)
    assert c["fits"][0] and c["max_batch"][0] > 1
    # the cache on the disk: the largest batch is where fits turns false
    kw = dict(kw, weights_on_disk=0.5, kv_on_device=0.0, kv_on_disk=1.0)
    mb = int(sparq_sim.predict_columns(**kw)["max_batch"][0])
    assert sparq_sim.predict_columns(**dict(kw, batch=mb))["fits"][0]
    assert not sparq_sim.predict_columns(**dict(kw, batch=mb + 1))["fits"][0]


@pytest.mark.parametrize("args, needle", [
    (["--gpu", "a100", "--weights-on-disk", "0.5", "--weights-on-device", "0.5"],
     "hardware a100-80gb has no disk tier"),
    (["--gpu", "t4", "--weights-on-disk", "0.5"], "--weights-on-device 1 and --weights-on-disk 0.5 add up to more "
                                                  "than the whole; accepted: shares whose sum is at most 1"),
    (["--gpu", "t4", "--kv-on-disk", "2"], "--kv-on-disk is the share kept on the disk, between 0 and 1"),
])
def test_bad_disk_shares_are_one_line(capsys, args, needle):
    rc = main(["predict", *args])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1, err


def test_a_stack_pays_the_disk_for_its_shares():
    """FlexGen's schedule on a RowBase written by hand: weights half on the disk, the cache all on it; with overlap
    the step is the slowest of the device, the link, the host's attention and the disk (read the weights' share and
    the cache, write the new rows)."""
    import numpy as np

    from sparq_sim.simulator.stacks import RowBase, get_stack, prior_stack_costs, step_times

    st = get_stack("flexgen")
    c = dict(prior_stack_costs(st), host_per_layer_s=0.0)
    b = RowBase(level="step", steps=np.array([1.0]), W=np.array([100e9]), KV=np.array([50e9]), prefill=0.0,
                prefill_W=0.0, layers=1, bw=250e9, w_bw=250e9, link_bw=12e9, weights_key="w16", kv_key="kv16",
                w_elem_bytes=2.0, kv_elem_bytes=2.0, w_host=1.0, kv_host=1.0, gen_len=1, w_disk=0.5, kv_disk=1.0,
                KV_write=np.array([1e9]), disk_bw=2e9, disk_write_bw=1e9)
    disk = (100e9 * 0.5 + (50e9 - 1e9) * 1.0) / 2e9 + 1e9 / 1e9
    link = 100e9 / 12e9
    cpu = 50e9 / 2.0 * st.cpu_attention_bytes_per_element / c["cpu_attention_Bps"]
    assert disk > max(link, cpu)
    assert step_times(st, c, b)[0] == pytest.approx(disk, rel=1e-12)


def test_a_measured_row_on_the_disk_is_checked_like_any_share(tmp_path, capsys):
    """The dataset columns weights_on_disk / kv_on_disk: fractions whose sum with the device's share is at most 1."""
    head = ("hardware,kernel,strategy,batch,seq_len,n_heads,n_kv_heads,head_dim,dtype,time_s,level,model,gen_len,"
            "weights_on_device,weights_on_disk\n")
    row = "t4,flexgen,dense,8,512,32,32,128,fp16,2.5,e2e,opt-6.7b,32,{},{}\n"
    bad = tmp_path / "bad.csv"
    bad.write_text(head + row.format(0.6, 0.6))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights_on_device and weights_on_disk add up to more than 1" in err, err
    import json

    times = []
    for disk in (0.0, 0.5, 1.0):   # the weights in host memory, half of them on the disk, all of them
        good = tmp_path / f"good{disk}.csv"
        good.write_text(head + row.format(0, disk))
        assert main(["validate", str(good), "-f", "json"]) == 0
        rows = json.loads(capsys.readouterr().out)["rows"]
        assert len(rows) == 1 and rows[0]["weights_on_disk"] == disk
        times.append(rows[0]["predicted_time_s"])
    assert times[0] < times[1] < times[2]
