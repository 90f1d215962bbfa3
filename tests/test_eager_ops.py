"""The op model of eager CPU kernels (simulator/implementations.py eager_ops) against an independent route: the ops
torch's profiler records when the lean kernels of sparq_ref/kernels.py actually run, with their shapes.

Every gather, batched matmul, top-k and softmax the kernel issues on more than B x H x d elements must appear in the
op list with the same amount (gathered elements by kind, bytes read by the matmuls, top-k input elements by torch's
regime, softmax elements), and nothing else may be listed. Then the op-model time is checked by hand on a profile
with round figures."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")

from sparq_sim.hardware_profiles import load_hardware  # noqa: E402
from sparq_sim.simulator.implementations import eager_ops, get_implementation, op_model, predict_kernel_times  # noqa: E402
from sparq_sim.sparq_ref import kernels as K  # noqa: E402

CASES = [  # (B, S, H, Hkv, d, r, k)
    (1, 1024, 8, 8, 64, 16, 128),
    (2, 512, 9, 3, 64, 8, 64),     # GQA, g = 3 (SmolLM2's heads)
    (1, 4096, 4, 2, 32, 4, 64),    # top-k over S in the partial-sort regime (64 k <= S)
]


def _profiled(kernel, B, S, H, Hkv, d, r, k):
    args = K.make_inputs(kernel, B, S, H, Hkv, d, torch.float32, "cpu", r=r, k=k)
    with torch.inference_mode(), torch.profiler.profile(record_shapes=True) as prof:
        K.KERNELS[kernel][1](**args)
    small = B * H * d
    got = defaultdict(float)
    for e in prof.events():
        shapes, conc = e.input_shapes, getattr(e, "concrete_inputs", None) or []
        if e.name == "aten::gather":
            n = math.prod(shapes[2])
            last = conc[1] in (-1, len(shapes[0]) - 1)
            if last and math.prod(shapes[0]) > small or not last and n > small:
                if last:   # m distinct components of each row of n fp32: elements of the 64-byte lines they hit
                    row, m = shapes[0][-1], shapes[2][-1]
                    lines, per = math.ceil(row * 4 / 64), 16
                    hit = lines * (1 - math.comb(row - row // lines, m) / math.comb(row, m))
                    got["gather_components"] += n // m * min(hit * per, row)
                else:
                    got["gather_rows"] += n
        elif e.name == "aten::bmm":
            n = max(math.prod(shapes[0]), math.prod(shapes[1]))
            if n > small:
                got["matmul_bytes"] += 4 * n
        elif e.name == "aten::topk":
            n, kk = shapes[0][-1], conc[1]
            got["topk_heap" if kk * 64 <= n else "topk_select"] += math.prod(shapes[0])
        elif e.name == "aten::_softmax":
            got["softmax"] += math.prod(shapes[0])
        elif e.name in ("aten::mul", "aten::maximum"):
            out = np.broadcast_shapes(*[tuple(s) for s in shapes if s])
            if math.prod(out) > small:
                got["elementwise"] += math.prod(out)
    return dict(got)


def _modelled(kernel, B, S, H, Hkv, d, r, k):
    rows = {"batch": [B], "seq_len": [S], "n_heads": [H], "n_kv_heads": [Hkv], "head_dim": [d],
            "dtype": ["float32"], "r": [r], "k": [k]}
    out = defaultdict(float)
    for name, amount, _ in eager_ops(get_implementation(kernel), rows):
        key = "matmul_bytes" if name in ("matvec", "vecmat") else name
        n = float(np.asarray(amount)[0])
        if key == "gather_components" and name == "gather_components":
            keep = True   # every gather within rows larger than one query vector (the profiled side's rule)
        else:
            keep = n / (4 if key == "matmul_bytes" else 1) > B * H * d or key.startswith("topk") or key == "softmax"
        if keep:
            out[key] += n
    return {key: v for key, v in out.items() if v > 0}


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-S{}-H{}-Hkv{}-d{}".format(*c[:5]))
@pytest.mark.parametrize("kernel", sorted(K.KERNELS))
def test_op_list_matches_what_the_kernel_runs(kernel, case):
    got, model = _profiled(kernel, *case), _modelled(kernel, *case)
    # the model's elementwise ops beyond Quest's bounds (score sums, H2O's statistics) are reductions and in-place
    # updates the profiler books under other names; they are compared for Quest only
    if not kernel.startswith("quest"):
        model.pop("elementwise", None)
    assert got == pytest.approx(model, rel=1e-9), (got, model)


def test_op_time_by_hand(tmp_path):
    """attn-torch, B=1, S=1024, 8 heads of 64, fp32 on a profile with round op figures: K and V (4 MiB together)
    sit in half of a 16 MiB cache, so matvec and vecmat run at their cache figures."""
    data = yaml.safe_load(Path(load_hardware("epyc-7763").path).read_text())
    data.update(name="round", aliases=[], kind="cpu")
    data["cache"]["size"] = "16 MiB"
    data["overheads"]["kernel_launch"] = "2 us"
    ops = {op: {"memory": "1 ns", "cache": "0.5 ns"} for op in
           ("gather_rows", "gather_components", "topk_select", "topk_heap", "softmax", "elementwise")}
    ops["matvec"] = {"memory": "10 GB/s", "cache": "40 GB/s"}
    ops["vecmat"] = {"memory": "20 GB/s", "cache": "80 GB/s"}
    data["calibration"] = {"source": "test figures", "ops": ops}
    p = tmp_path / "round.yaml"
    p.write_text(yaml.safe_dump(data))
    hw = load_hardware(str(p))
    assert op_model(get_implementation("attn-torch"), hw)
    rows = {"batch": [1], "seq_len": [1024], "n_heads": [8], "n_kv_heads": [8], "head_dim": [64],
            "dtype": ["float32"], "r": [np.nan], "k": [np.nan]}
    kv = 8 * 1024 * 64 * 4                                   # bytes of K (and of V)
    launches = get_implementation("attn-torch").launches
    want = launches * 2e-6 + kv / 40e9 + 8 * 1024 * 0.5e-9 + kv / 80e9
    assert predict_kernel_times(["attn-torch"], rows, hw)[0] == pytest.approx(want, rel=1e-12)
    # four times the context: 16 MiB of K and V, twice the 8 MiB of cache they may use, so half of it hits
    rows["seq_len"] = [4096]
    want = launches * 2e-6 + 4 * kv * (0.5 / 40e9 + 0.5 / 10e9) + 8 * 4096 * 0.5e-9 + 4 * kv * (0.5 / 80e9 + 0.5 / 20e9)
    assert predict_kernel_times(["attn-torch"], rows, hw)[0] == pytest.approx(want, rel=1e-12)


def test_calibrate_device_cpu_writes_the_op_figures(tmp_path):
    """`calibrate --device cpu --quick` measures every primitive op; the profile it writes loads, and the eager
    kernels on it are predicted op by op (positive, finite, and growing with the context)."""
    from sparq_sim.cli import main

    out = tmp_path / "cpu.yaml"
    assert main(["calibrate", "--device", "cpu", "--threads", "1", "--quick", "-o", str(out)]) == 0
    hw = load_hardware(str(out))
    ops = hw.calibration["ops"]
    assert set(ops) == {"matvec", "vecmat", "gather_rows", "gather_components", "topk_select", "topk_heap",
                        "softmax", "elementwise"}
    assert all(0 < v < 1e12 and math.isfinite(v) for figs in ops.values() for v in figs.values())
    rows = {"batch": [1, 1], "seq_len": [1024, 8192], "n_heads": [8, 8], "n_kv_heads": [8, 8], "head_dim": [128, 128],
            "dtype": ["float32"] * 2, "r": [16, 16], "k": [64, 64]}
    for kernel in sorted(K.KERNELS):
        assert op_model(get_implementation(kernel), hw)
        t = predict_kernel_times([kernel] * 2, rows, hw)
        assert np.all(np.isfinite(t)) and np.all(t > 0)
        if not kernel.startswith(("h2o", "lm-infinite")):   # the evicting caches hold k tokens whatever S is
            assert t[1] > t[0]


def test_op_figures_are_all_required(tmp_path):
    from sparq_sim.simulator.errors import UserError

    data = yaml.safe_load(Path(load_hardware("epyc-7763").path).read_text())
    data.update(name="partial", aliases=[])
    data["calibration"] = {"source": "test", "ops": {"matvec": {"memory": "10 GB/s", "cache": "40 GB/s"}}}
    p = tmp_path / "partial.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="calibration.ops"):
        load_hardware(str(p))


def _round_profile(tmp_path) -> Path:
    data = yaml.safe_load(Path(load_hardware("epyc-7763").path).read_text())
    data.update(name="round", aliases=[], kind="cpu")
    ops = {op: {"memory": "2 ns", "cache": "1 ns"} for op in
           ("gather_rows", "gather_components", "topk_select", "topk_heap", "softmax", "elementwise")}
    ops["matvec"] = {"memory": "10 GB/s", "cache": "40 GB/s"}
    ops["vecmat"] = {"memory": "20 GB/s", "cache": "80 GB/s"}
    data["calibration"] = {"source": "test figures", "ops": ops, "gather_efficiency": 0.25}
    p = tmp_path / "round.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_calibrate_from_measurements_keeps_the_op_figures_and_fits_factors(tmp_path):
    """Rows 1.3x slower than the op model says: `calibrate MEASURED.csv` on an op-calibrated profile keeps
    calibration.ops (and the other machine figures) and fits factors that bring the error to ~0."""
    import pandas as pd

    from sparq_sim.cli import main

    prof = _round_profile(tmp_path)
    hw = load_hardware(str(prof))
    rows = []
    for kernel in ("attn-torch", "sparq-attn-torch", "sparq-attn-torch-oneK"):
        for B in (1, 2, 4):
            for S in (1024, 2048, 4096, 8192):
                for r, k in ((16, 64), (32, 256)):
                    rows.append(dict(hardware="round", kernel=kernel, strategy=get_implementation(kernel).strategy,
                                     k_layout="", batch=B, seq_len=S, n_heads=8, n_kv_heads=8, head_dim=128,
                                     dtype="float32", r=r, k=k, time_s=0.0, time_stderr_s=0.0))
    df = pd.DataFrame(rows)
    cols = {c: df[c].to_numpy() for c in ("batch", "seq_len", "n_heads", "n_kv_heads", "head_dim", "dtype", "r", "k")}
    df["time_s"] = 1.3 * predict_kernel_times(df["kernel"].to_numpy(), cols, hw)
    measured = tmp_path / "m.csv"
    df.to_csv(measured, index=False)
    out = tmp_path / "fitted.yaml"
    assert main(["calibrate", str(measured), "--hardware-file", str(prof), "-o", str(out)]) == 0
    fitted = load_hardware(str(out))
    assert fitted.calibration["ops"] == hw.calibration["ops"]
    assert fitted.calibration["gather_efficiency"] == 0.25
    assert set(fitted.calibration["kernels"]) == set(df["kernel"])
    again = predict_kernel_times(df["kernel"].to_numpy(), cols, fitted)
    assert np.max(np.abs(again / df["time_s"].to_numpy() - 1)) < 0.05


def test_cache_hit_model_by_hand(tmp_path):
    """1 up to the usable capacity, then (U / F)^p; without measured figures, half the cache and p = 1."""
    from sparq_sim.simulator.implementations import cache_hit_fraction
    from sparq_sim.simulator.errors import UserError

    data = yaml.safe_load(_round_profile(tmp_path).read_text())
    data["cache"]["size"] = "32 MiB"
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(data))
    mib = 1024 ** 2
    assert cache_hit_fraction([8 * mib, 16 * mib, 64 * mib], load_hardware(str(plain))) == pytest.approx([1, 1, 0.25])
    data["calibration"].update(cache_usable="8 MiB", cache_falloff=2)
    measured = tmp_path / "measured.yaml"
    measured.write_text(yaml.safe_dump(data))
    hw = load_hardware(str(measured))
    assert cache_hit_fraction([4 * mib, 8 * mib, 16 * mib, 32 * mib], hw) == pytest.approx([1, 1, 0.25, 1 / 16])
    for bad in (0, True, "steep", 100):
        data["calibration"]["cache_falloff"] = bad
        measured.write_text(yaml.safe_dump(data))
        with pytest.raises(UserError, match="cache_falloff"):
            load_hardware(str(measured))
