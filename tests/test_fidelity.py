"""Fidelity that travels (issue 11): the shipped datasets at their levels, the fitted defaults, leave-one-dataset-out,
the software stacks of whole-model rows, and the few-shot calibration of a new device."""

import dataclasses
import json

import numpy as np
import pytest

from sparq_sim.cli import main
from sparq_sim.hardware_profiles import load_hardware
from sparq_sim.simulator.errors import UserError
from sparq_sim.simulator.fidelity import fit_all, load_dataset, predict_rows, refit_defaults, validate_all
from sparq_sim.simulator.fitting import fit_device
from sparq_sim.simulator.implementations import (IMPLEMENTATIONS_FILE, features, fitted_defaults, get_implementation,
                                                 params_for, predict_kernel_times)
from sparq_sim.simulator.measured import dataset_names, load_measurements
from sparq_sim.simulator.stacks import get_stack, prefill_time, row_base, row_time, stack_costs, step_times

DATASETS = ["flashdecoding-a100", "flexgen-t4", "gptfast-mi250x", "h2o-a100", "h2o-t4", "quest-rtx6000ada",
            "sparq-paper-a10g", "sparq-paper-epyc"]
HEADER = ("hardware,kernel,strategy,k_layout,batch,seq_len,n_heads,n_kv_heads,head_dim,dtype,r,k,time_s,"
          "time_stderr_s,level,model,weights,kv_dtype,gen_len,page_size,devices,weights_on_device,kv_on_device,skip\n")


def test_every_dataset_is_shipped_and_loads_at_its_levels():
    assert dataset_names() == DATASETS
    for name in DATASETS:
        df = load_dataset(name)
        assert len(df) > 0 and set(df["level"]) <= {"kernel", "step", "e2e"}
        assert (df["time_s"] > 0).all()
        for line, reason in df.attrs["skipped"]:   # a row not judged says why
            assert line >= 2 and reason.strip()
    assert set(load_dataset("quest-rtx6000ada")["level"]) == {"kernel", "step"}
    assert set(load_dataset("h2o-a100")["level"]) == {"step", "e2e"}


@pytest.mark.parametrize("row,match", [
    ("t4,flexgen,dense,,2,512,32,32,128,fp16,,,1.0,,decode,opt-6.7b,fp16,,32,,1,1,1,\n", "unknown level 'decode'"),
    ("t4,flexgen,dense,,2,512,32,32,128,fp16,,,1.0,,e2e,opt-6.7b,fp16,,,,1,1,1,\n", "needs gen_len"),
    ("t4,flexgen,dense,,2,512,32,32,128,fp16,,,1.0,,step,,fp16,,32,,1,1,1,\n", "needs a model"),
    ("t4,flexgen,h2o,,2,512,32,32,128,fp16,,,1.0,,step,opt-6.7b,fp16,,32,,1,1,1,\n", "needs k"),
    ("t4,vllm,dense,,2,512,32,32,128,fp16,,,1.0,,step,opt-6.7b,fp16,,32,,1,1,1,\n", "unknown software stack"),
    ("t4,flexgen,dense,,2,512,32,32,128,fp16,,,1.0,,step,opt-6.7b,fp16,,32,,1,1.5,1,\n", "fraction from 0 to 1"),
    ("t4,flexgen,dense,,,512,32,32,128,fp16,,,1.0,,step,opt-6.7b,fp16,,32,,1,1,1,\n", "batch must be a number"),
])
def test_bad_dataset_rows_are_one_line_errors(tmp_path, capsys, row, match):
    f = tmp_path / "m.csv"
    f.write_text(HEADER + row)
    with pytest.raises(UserError, match=match):
        load_measurements(f)
    assert main(["validate", str(f), "--hardware", "t4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "row 2" in err


def test_a_skipped_row_is_not_judged_but_counted(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text(HEADER + "t4,flexgen,dense,,2,512,32,32,128,fp16,,,2.5,,e2e,opt-6.7b,fp16,,32,,1,1,1,\n"
                 + "t4,flexgen,dense,,,512,32,32,128,fp16,,,2.5,,e2e,opt-6.7b,fp16,,32,,1,1,1,no batch given\n")
    df = load_measurements(f)
    assert len(df) == 1 and df.attrs["skipped"] == [(3, "no batch given")]


def test_validate_all_json_has_one_row_per_dataset(capsys):
    assert main(["validate", "--all", "-f", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["dataset"] for r in rows] == DATASETS
    for r in rows:
        assert {"dataset", "level", "rows", "mape_uncalibrated", "mape_leave_one_out", "speedup_mape"} <= set(r)
        assert r["rows"] == len(load_dataset(r["dataset"]))
        assert 0 <= r["mape_uncalibrated"] < 1 and 0 <= r["mape_leave_one_out"] < 1
    assert main(["validate", "--all", "--dataset", "h2o-t4"]) == 2
    assert main(["validate", "--leave-one-out", "x.csv"]) == 2


def test_nothing_fitted_on_a_dataset_is_judged_as_held_out():
    """Leave one dataset out: no implementation, family or stack of the defaults was fitted on it, and its
    predictions come from those defaults (validate --all's held-out column)."""
    for held in DATASETS:
        others = [n for n in DATASETS if n != held]
        d = fit_all(others)
        assert d["datasets"] == others
        for kinds in d["implementations"].values():
            for c in kinds.values():
                assert held not in c["datasets"]
        for c in d["stacks"].values():
            assert held not in c["datasets"]
    row = next(r for r in validate_all(["h2o-a100"]))
    df = load_dataset("h2o-a100")
    loo = predict_rows(df, defaults=fit_all([n for n in DATASETS if n != "h2o-a100"]))
    assert row["mape_leave_one_out"] == pytest.approx(np.mean(np.abs(loo / df["time_s"] - 1)))


def test_the_shipped_defaults_are_the_fit_of_the_shipped_datasets():
    """`sparq-sim calibrate --defaults` reproduces the fitted block of data/implementations.yaml: a changed dataset,
    profile or model must be followed by a refit (the source of each default names the command)."""
    _, text = refit_defaults("test")
    shipped = IMPLEMENTATIONS_FILE.read_text(encoding="utf-8")
    strip = (lambda t: [ln for ln in t.splitlines() if not ln.lstrip().startswith("source:")])  # noqa: E731
    assert strip(text) == strip(shipped)
    assert "sparq-sim calibrate --defaults" in fitted_defaults()["source"]


def test_the_host_cost_travels_and_the_device_part_scales_with_the_profile():
    """An uncalibrated prediction on a GPU nobody measured carries the software's host floor (fitted on the A10G)
    and scales the device terms with the profile's achieved bandwidth."""
    rows = dict(batch=[1, 64], seq_len=[2048, 16384], n_heads=[32, 32], n_kv_heads=[32, 32], head_dim=[128, 128],
                dtype=["float16"] * 2, r=[32, 32], k=[128, 128])
    host = fitted_defaults()["implementations"]["sparq-attn-triton"]["gpu"]["host_s"]
    assert 3e-4 < host < 1e-3    # several hundred microseconds, as measured
    for gpu in ("h100", "h200", "a100"):
        hw = load_hardware(gpu)
        t = predict_kernel_times(["sparq-attn-triton"] * 2, rows, hw)
        assert t[0] == pytest.approx(host, rel=0.05)   # batch 1: the host floor, whatever the GPU
    a100, h100 = load_hardware("a100"), load_hardware("h100")
    impl = get_implementation("sparq-attn-triton")
    big = {c: [v[1]] for c, v in rows.items()}
    def device(h):   # the time less the host's share (overlap) and the fixed launch gaps
        p = params_for(impl, h)
        t = predict_kernel_times(["sparq-attn-triton"], big, h)[0]
        return (t ** 2 - p["fixed_s"] ** 2) ** 0.5 - p["device_fixed_s"]
    dev = {h.name: device(h) for h in (a100, h100)}
    ratio = (h100.memory[0].achieved_Bps) / (a100.memory[0].achieved_Bps)
    assert dev["a100-80gb"] / dev["h100-sxm"] == pytest.approx(ratio, rel=1e-9)


def test_new_kernel_features_by_hand():
    hw = load_hardware("a100")
    rows = dict(batch=[2], seq_len=[1024], n_heads=[16], n_kv_heads=[2], head_dim=[128], dtype=["fp16"],
                r=[np.nan], k=[256])
    # flash-decoding: K and V once per KV head (GQA shared), streamed across the whole device
    fd = features(get_implementation("attn-flash-decoding"), rows, hw)
    assert fd["stream_bytes"][0] == 2 * 2 * 2 * 1024 * 128 * 2
    # the eager reference: K and V expanded to all 16 query heads, 6 fp16 passes, 4 fp32 passes over the scores
    ref = features(get_implementation("attn-torch-ref"), rows, hw)
    assert ref["stream_bytes"][0] == 2 * 2 * 16 * 1024 * 128 * 2 * 6 + 4 * 2 * 16 * 1024 * 4
    # FlashInfer's decode on the selected pages: only the k selected tokens' K and V, no scoring, no top-k
    fi = features(get_implementation("flashinfer-paged-decode"), dict(rows, page_size=[16]), hw)
    assert fi["stream_bytes"][0] == 2 * 2 * 2 * 256 * 128 * 2 and fi["topk_elements"][0] == 0
    # flash-attn 2.0.9: one block per (sequence, query head), each reading its KV head: 32 blocks on 108 SMs
    f2 = features(get_implementation("attn-flash2"), rows, hw)
    assert f2["stream_bytes"][0] == pytest.approx(2 * 2 * 16 * 1024 * 128 * 2 / (32 / 108))


def _stack_row(level, gen_len, w_on=1.0, kv_on=1.0, stack="flexgen"):
    hw = load_hardware("t4")
    return hw, row_base(hw, "opt-6.7b", level, 4, 512, gen_len, "dense", "fp16", "fp16",
                        weights_on_device=w_on, kv_on_device=kv_on)


def test_stack_step_by_hand():
    """One FlexGen step with 40 % of the weights on the host: the device streams the resident 60 % (at the stack's
    weight efficiency), the link moves the rest, and FlexGen overlaps the two; the host's layers overlap the step."""
    hw, b = _stack_row("step", 8, w_on=0.6)
    stack = get_stack("flexgen")
    c = dict(stack_costs(stack), w16=0.5, kv16=1.0, link=1.0, host_per_layer_s=0.0)
    device = b.steps + 0.6 * b.W / b.bw * (1 / 0.5 - 1) - 0.4 * b.W / b.bw
    link = 0.4 * b.W / hw.host_link.achieved_Bps
    assert step_times(stack, c, b) == pytest.approx(np.maximum(device, link), rel=1e-12)
    hf = get_stack("hf-accelerate")     # no overlap: the transfers add
    assert step_times(hf, c, b) == pytest.approx(device + link, rel=1e-12)
    c["host_per_layer_s"] = 1.0         # a host much slower than the device: the step is about the host's
    step = np.maximum(device, link)
    assert step_times(stack, c, b) == pytest.approx(np.sqrt(32.0 ** 2 + step ** 2), rel=1e-12)


def test_flexgen_dequantises_4_bit_weights_and_cache_by_hand():
    """FlexGen's group-wise 4-bit (group 64: 0.5 + 2.5 / 64 bytes per element) is dequantised by unfused torch code: per
    element 15 bytes of passes, then the 16-bit copy read (2 bytes), all at the achieved bandwidth over the stack's
    4-bit efficiency: one decompress function (compression.py) runs on the weights and on the cache, so the cache's
    4-bit efficiency is the weights' (kv4 plays no part); attention over a 4-bit cache on the host moves 39 bytes of
    host memory per element. Elements counted by hand: 4 sequences x (the context read + the new token written) x 32
    layers x K and V x 4096."""
    hw = load_hardware("t4")
    q = 0.5 + 2.5 / 64
    stack = get_stack("flexgen")
    c = dict(stack_costs(stack), w4=0.8, kv4=0.5, link=1.0, host_per_layer_s=0.0, cpu_attention_Bps=40e9)
    b = row_base(hw, "opt-6.7b", "step", 4, 512, 3, "dense", "int4-g64", "int4-g64")
    kv_el = np.array([4 * (s + 1) * 32 * 2 * 4096 for s in (513, 514)], dtype=float)   # read s, write 1
    assert b.KV / q == pytest.approx(kv_el, rel=1e-12)
    w_el = b.W / q
    bw = hw.memory[0].achieved_Bps
    want = (b.steps - b.W / b.w_bw - b.KV / bw + w_el * (q + 15 + 2) / bw / 0.8 + kv_el * (q + 15 + 2) / bw / 0.8)
    assert step_times(stack, c, b) == pytest.approx(want, rel=1e-12)
    assert step_times(stack, dict(c, kv4=0.1), b) == pytest.approx(want, rel=1e-12)
    assert (want > 20 * b.steps).all()     # about 32x the bytes of the packed format: the roofline's step is no guide
    off = row_base(hw, "opt-6.7b", "step", 4, 512, 3, "dense", "int4-g64", "int4-g64", kv_on_device=0.0)
    device = off.steps - off.W / off.w_bw - off.KV / bw + w_el * (q + 17) / bw / 0.8
    cpu = kv_el * 39 / 40e9
    assert step_times(stack, c, off) == pytest.approx(np.maximum(device, cpu), rel=1e-12)   # no KV over the link
    fp16 = row_base(hw, "opt-6.7b", "step", 4, 512, 3, "dense", "fp16", "fp16", kv_on_device=0.0)
    c16 = dict(c, w16=1.0)
    assert step_times(stack, c16, fp16) == pytest.approx(np.maximum(fp16.steps - fp16.KV / bw, kv_el * 14 / 40e9),
                                                         rel=1e-12)


def test_gpt_fast_reads_the_whole_lm_head_on_every_device_by_hand():
    """gpt-fast's tensor parallelism (tp.py) splits each block's attention and feed-forward only: the output layer stays
    whole on every device. Llama-2-70B in bf16 on 8 A100s: lm_head is 32000 x 8192 x 2 bytes, the roofline gives each
    device 1/8 of its vocabulary, so each device reads 7/8 of it more per step, 458,752,000 bytes, at the weights'
    rate over the stack's efficiency, and once more for the prefill's last position. One device: nothing more."""
    import dataclasses

    hw = load_hardware("a100-80gb")
    stack = get_stack("gpt-fast")
    assert stack.tp_replicates_lm_head and not get_stack("flexgen").tp_replicates_lm_head
    split = dataclasses.replace(stack, tp_replicates_lm_head=False)
    c = dict(stack_costs(stack), w16=0.8, prefill=0.9)
    b = row_base(hw, "llama2-70b", "e2e", 1, 5, 4, "dense", "bf16", "bf16", devices=8)
    rest = 32000 * 8192 * 2 * 7 / 8
    assert b.lm_head_rest == rest == 458_752_000
    assert step_times(stack, c, b) - step_times(split, c, b) == pytest.approx(
        np.full(3, rest / hw.memory[0].achieved_Bps / 0.8), rel=1e-9)
    assert prefill_time(stack, c, b) - prefill_time(split, c, b) == pytest.approx(
        rest / hw.memory[0].achieved_Bps / 0.9, rel=1e-9)
    one = row_base(hw, "llama2-70b", "e2e", 1, 5, 4, "dense", "bf16", "bf16", devices=1)
    assert one.lm_head_rest == 0 and (step_times(stack, c, one) == step_times(split, c, one)).all()


def test_whole_generation_sums_every_step_exactly():
    import sparq_sim

    _, b = _stack_row("e2e", 6)
    stack = get_stack("gpt-fast")       # no host cost per layer, efficiencies 1 below
    c = dict(stack_costs(stack), w16=1.0, kv16=1.0, prefill=1.0)
    cols = sparq_sim.predict_columns(hardware="t4", model="opt-6.7b", seq_len=[512 + i for i in range(6)], batch=4,
                                     strategies=["dense"], dtype="fp16")
    want = cols["prefill_time_s"][0] + cols["time_s"][1:].sum()   # prefill, then steps at contexts 513 .. 517
    assert row_time(stack, c, b) == pytest.approx(want, rel=1e-12)
    _, s = _stack_row("step", 6)
    assert row_time(stack, c, s) == pytest.approx(cols["time_s"][1:].mean(), rel=1e-12)


def _mis_specified(hw, factor):
    return dataclasses.replace(hw, memory=tuple(dataclasses.replace(t, bandwidth_Bps=t.bandwidth_Bps * factor)
                                                for t in hw.memory))


def test_three_rows_calibrate_a_device_whose_bandwidth_prior_is_wrong():
    """The IPU-like case: a profile whose memory bandwidth is 2.4x too high, defaults fitted without this dataset
    (held out). Three batch-1 rows of a fused dense kernel at three lengths recover the kernel's other rows (other
    batches) within 15 %; a host-bound kernel's three rows recover its host speed."""
    held = fit_all([n for n in DATASETS if n != "sparq-paper-a10g"])
    df = load_dataset("sparq-paper-a10g")
    wrong = _mis_specified(load_hardware("a10g"), 2.4)
    kern = df[df.kernel == "attn-mem-efficient"]
    three = kern[(kern.batch == 1) & kern.seq_len.isin([2048, 4096, 16384])]
    assert len(three) == 3
    rest = kern.drop(three.index)
    before = np.mean(np.abs(predict_rows(rest, wrong, held) / rest.time_s - 1))
    dev = fit_device(three, wrong, held)
    cal = dataclasses.replace(wrong, calibration={"host_scale": dev["host_scale"],
                                                  "bandwidth_scale": dev["bandwidth_scale"]})
    after = np.mean(np.abs(predict_rows(rest, cal, held) / rest.time_s - 1))
    assert before > 0.4 and after <= 0.15
    assert 0.3 < dev["bandwidth_scale"] < 0.6          # about 1 / 2.4
    tri = df[(df.kernel == "sparq-attn-triton") & (df.batch == 1) & (df.r == 32) & (df.k == 128)]
    three = tri[tri.seq_len.isin([2048, 4096, 16384])]
    rest = df[df.kernel == "sparq-attn-triton"].drop(three.index)
    dev = fit_device(three, load_hardware("a10g"), held)
    cal = dataclasses.replace(load_hardware("a10g"), calibration={"host_scale": dev["host_scale"]})
    assert np.mean(np.abs(predict_rows(rest, cal, held) / rest.time_s - 1)) <= 0.15


def test_calibrate_cli_from_three_rows(tmp_path, capsys):
    df = load_dataset("sparq-paper-a10g")
    three = df[(df.kernel == "attn-mem-efficient") & (df.batch == 1) & df.seq_len.isin([2048, 4096, 16384])]
    f = tmp_path / "three.csv"
    three.to_csv(f, index=False)
    prof = tmp_path / "cal.yaml"
    assert main(["calibrate", str(f), "--hardware", "a10g", "-o", str(prof)]) == 0
    assert "memory bandwidth x" in capsys.readouterr().err
    cal = load_hardware(str(prof))
    assert cal.calibration["kernels"] == {}        # three rows: the device is calibrated, no kernel on its own
    assert 0.5 < cal.bandwidth_scale < 2 and cal.calibration["host_scale"] > 0


def test_every_judged_whole_model_row_fits_where_its_placement_puts_it():
    """A measured run existed, so its weights and the KV cache of its prompt fit the device's memory (and the
    offloaded shares the host's) where the row says they were: this catches a transcription's placement that cannot
    have been (the DeepSpeed rows of flexgen-t4 marked 'all on GPU'). Measured at the prompt: slow systems were
    projected from fewer generated tokens, so the cache at the end of the generation may never have existed."""
    import sparq_sim

    for name in DATASETS:
        df = load_dataset(name)
        for i in np.flatnonzero(df["level"].to_numpy() != "kernel"):
            r = df.iloc[i]
            def get(col, default):
                v = r.get(col)
                return default if v is None or v != v else v
            k = get("k", None)
            p = sparq_sim.predict_columns(
                hardware=r["hardware"], model=r["model"], seq_len=int(r["seq_len"]) + 1, batch=int(r["batch"]),
                strategies=r["strategy"], k=int(k) if k is not None and r["strategy"] != "dense" else None,
                dtype=get("weights", r["dtype"]), kv_dtype=get("kv_dtype", None), devices=int(get("devices", 1)),
                weights_on_device=float(get("weights_on_device", 1.0)), kv_on_device=float(get("kv_on_device", 1.0)),
                weights_on_disk=float(get("weights_on_disk", 0.0)), kv_on_disk=float(get("kv_on_disk", 0.0)))
            assert p["fits"][0], (name, i, r["kernel"], r["model"], int(r["batch"]), int(r["seq_len"]))
