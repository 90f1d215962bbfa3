"""The reference on accelerators (issue 13): evaluate, record and measure on --device cuda (cuda:N) or mps in
bf16/fp16. The GPU tests run where torch sees the device and are skipped, with the reason, elsewhere; the refusals
run everywhere."""

import json

import pytest

torch = pytest.importorskip("torch")

from conftest import lm_eval_tasks  # noqa: E402
from sparq_sim.cli import main  # noqa: E402
from sparq_sim.simulator.errors import UserError  # noqa: E402
from sparq_sim.sparq_ref.model import check_device  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch on this machine")
MPS = pytest.mark.skipif(not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                         reason="no Apple GPU (MPS) visible to torch on this machine")


@pytest.mark.parametrize("device,match", [("tpu", r"must be cpu, cuda \(cuda:N\) or mps, got 'tpu'"),
                                          ("cuda:x", "must be cpu"), ("gpu", "must be cpu")])
def test_unknown_devices_are_refused(device, match):
    with pytest.raises(UserError, match=match):
        check_device(device)


def test_an_absent_device_is_one_line(capsys):
    absent = [d for d, ok in (("cuda", torch.cuda.is_available()),
                              ("mps", getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()))
              if not ok]
    if not absent:
        pytest.skip("this machine has both a CUDA and an MPS device")
    for d in absent:
        assert main(["measure", "--device", d, "--kernels", "attn-torch", "--batch", "1", "--seq", "64",
                     "-o", "/tmp/never.csv"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "torch sees no" in err


@CUDA
@pytest.mark.slow
def test_record_and_evaluate_on_cuda_match_the_cpu_transfer_ratios(tmp_path, capsys):
    """On the GPU in bf16 the index sets may differ at ties, but every strategy fetches the budget its recipe gives:
    the transfer ratios (elements counted from the fetched sets) are the CPU run's (within 2 %: bf16 may stop a
    generation a step earlier or later, and the ratio drifts with the context)."""
    runs = {}
    for device in ("cpu", "cuda"):
        assert main(["evaluate", "--tasks", "passkey", "--samples", "2", "--length", "128", "--compression", "8",
                     "--strategies", "dense,sparq,h2o,lm-infinite,quest", "--device", device, "-f", "json",
                     "-q"]) == 0
        runs[device] = {(r["strategy"], r["compression"]): r for r in json.loads(capsys.readouterr().out)["rows"]}
    for key, row in runs["cpu"].items():
        assert runs["cuda"][key]["transfer_ratio"] == pytest.approx(row["transfer_ratio"], rel=2e-2), key
    out = tmp_path / "t.parquet"
    assert main(["record", "--device", "cuda", "--dtype", "bf16", "--steps", "2", "--length", "128", "-o", str(out),
                 "-q"]) == 0
    assert out.exists()


@CUDA
def test_measure_kernels_on_cuda(tmp_path):
    out = tmp_path / "m.csv"
    assert main(["measure", "--device", "cuda", "--dtype", "fp16", "--kernels", "attn-torch,sparq-attn-torch",
                 "--batch", "1", "--seq", "1024", "--repeats", "3", "-o", str(out), "-q"]) == 0
    assert main(["validate", str(out), "--hardware", "h100"]) == 0   # the file is in the measurement schema


@MPS
def test_measure_and_evaluate_on_mps(tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["measure", "--device", "mps", "--dtype", "fp16", "--kernels", "attn-torch", "--batch", "1",
                 "--seq", "1024", "--repeats", "3", "-o", str(out), "-q"]) == 0
    assert main(["evaluate", "--tasks", "passkey", "--samples", "1", "--length", "128", "--compression", "8",
                 "--strategies", "dense,sparq", "--device", "mps", "-f", "json", "-q"]) == 0


@CUDA
def test_lm_eval_tasks_on_cuda_score_as_on_the_cpu(tiny, tmp_path, capsys):
    """`evaluate --lm-eval` on the GPU (fp32, the tiny Llama, a local multiple-choice task): the same accuracy and
    transfer ratios as on the CPU."""
    pytest.importorskip("lm_eval")
    lm_eval_tasks(tmp_path)
    runs = {}
    for device in ("cpu", "cuda"):
        assert main(["evaluate", "--model", str(tiny), "--lm-eval", "local_mc", "--lm-eval-include", str(tmp_path),
                     "--strategies", "dense,sparq", "--compression", "4", "--samples", "4", "--length", "128",
                     "--device", device, "--dtype", "fp32", "-f", "json", "-q"]) == 0
        runs[device] = {r["strategy"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    for s, row in runs["cpu"].items():
        assert runs["cuda"][s]["score"] == row["score"]
        assert runs["cuda"][s]["transfer_ratio"] == pytest.approx(row["transfer_ratio"], rel=1e-6)
