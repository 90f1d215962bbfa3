"""Regenerate the golden files: `python tests/golden/regenerate.py` (or `make golden`).

    python tests/golden/regenerate.py                    # every golden file
    python tests/golden/regenerate.py validate           # only some: predict, replay, validate or file names

Three public results are pinned, each compared by tests/test_golden.py with a relative tolerance of 1e-9 (any change in
a number shows):
  predict_*.csv            `predict_columns` over fixed grids (devices, models, placements, strategies)
  replay_*.csv             `sparq-sim replay -f csv` on the two example traces in traces/examples/ (K twice / once,
                           granularities, pages, --level step, --cache)
  validate_*.csv           `sparq-sim validate -f csv` (one row per measurement) on the shipped datasets, with and
  validate_*_summary.json  without `--holdout batch:1,4`, and the summary of `-f json` (MAPE per kernel, fitted models)
  validate_all.csv         `sparq-sim validate --all -f csv`: every dataset, uncalibrated and held out
A change in any number of these files is a change someone reviews in the diff. The validate files depend on the
implementation models (simulator/implementations.py, data/implementations.yaml): regenerate them after changing those.
"""

from __future__ import annotations

import json
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from sparq_sim.simulator.output import to_csv
from sparq_sim.simulator.predict import decoded, predict_columns

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the repository root (the package sparq_sim)

# name -> predict_columns arguments: a fixed grid across devices, models, placements and strategies
GRIDS = {
    "predict_gpus": dict(hardware="a100,h100,h200,a10g,mi300x", model="llama2-7b,llama3-8b",
                         seq_len="1024,4096,16384", batch="1,16", compression="8"),
    "predict_models": dict(hardware="h100", model="llama2-13b,llama2-70b,llama3-70b,mistral-7b,gemma-7b,pythia-1.4b,"
                           "pythia-6.9b", seq_len="4096", batch="1,8", devices="1,8",
                           compression="4,16"),
    "predict_placement": dict(hardware="ipu,ipu-m2000,epyc-9654,xeon-8480", model="llama2-7b", dtype="fp16",
                              seq_len="2048,32768", batch="1,4", devices="4"),
    "predict_small": dict(hardware="a10g,epyc-7763,l4", model="smollm2-135m", seq_len="512:8192:x4", batch="1,64",
                          compression="2,8", dtype="fp32,bf16"),
    "predict_offload": dict(hardware="l4,rtx-4090", model="llama3-8b", seq_len="65536", batch="8",
                            kv_location="host", kv_dtype="fp8"),
}

# name -> `sparq-sim replay` options, run on both example traces (paths written relative to the repository root)
TRACES = ("traces/examples/smollm2-135m_sparq_c8_passkey.parquet",
          "traces/examples/smollm2-135m_h2o_c8_passkey.parquet")
REPLAYS = {
    "replay_twice": ["--gpu", "h100,a100"],
    "replay_once": ["--gpu", "h100,mi300x", "--k-layout", "once", "--kv-dtype", "bf16"],
    "replay_element": ["--gpu", "h100", "--granularity", "element"],
    "replay_g64_pages": ["--gpu", "a100", "--granularity", "64", "--page-size", "16", "--k-layout", "once"],
    "replay_steps": ["--gpu", "h100", "--k-layout", "once", "--level", "step"],
    "replay_cache": ["--gpu", "h100", "--k-layout", "once", "--cache"],
}

# name -> `sparq-sim validate` options; each gives NAME.csv (rows) and NAME_summary.json (the JSON summary)
VALIDATIONS = {
    "validate_a10g": ["--dataset", "sparq-paper-a10g"],
    "validate_a10g_holdout": ["--dataset", "sparq-paper-a10g", "--holdout", "batch:1,4"],
    "validate_epyc": ["--dataset", "sparq-paper-epyc"],
    "validate_epyc_holdout": ["--dataset", "sparq-paper-epyc", "--holdout", "batch:1,4"],
}


def render(args) -> str:
    """A predict grid as CSV (the columns of `sparq-sim predict -f csv`)."""
    return to_csv(decoded(predict_columns(**args)))


@lru_cache(maxsize=None)
def cli_output(args: tuple[str, ...]) -> str:
    """The text `sparq-sim ARGS -o FILE` writes (in process), with the repository root removed from paths."""
    from sparq_sim.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        rc = main([*args, "-o", str(out)])
        if rc not in (0, None):
            raise RuntimeError(f"sparq-sim {' '.join(args)} exited with status {rc}")
        return out.read_text().replace(str(ROOT) + "/", "")


def replay_csv(name: str) -> str:
    return cli_output(("replay", *(str(ROOT / t) for t in TRACES), *REPLAYS[name], "-f", "csv"))


def validate_csv(name: str) -> str:
    return cli_output(("validate", *VALIDATIONS[name], "-f", "csv"))


def validate_summary(name: str) -> str:
    doc = json.loads(cli_output(("validate", *VALIDATIONS[name], "-f", "json")))
    return json.dumps(doc["summary"], indent=1) + "\n"


def validate_all_csv() -> str:
    return cli_output(("validate", "--all", "-f", "csv"))


def goldens() -> dict[str, tuple[str, object]]:
    """file name -> (group, function returning its text)."""
    out: dict[str, tuple[str, object]] = {"validate_all.csv": ("validate", validate_all_csv)}
    for name, args in GRIDS.items():
        out[f"{name}.csv"] = ("predict", lambda a=args: render(a))
    for name in REPLAYS:
        out[f"{name}.csv"] = ("replay", lambda n=name: replay_csv(n))
    for name in VALIDATIONS:
        out[f"{name}.csv"] = ("validate", lambda n=name: validate_csv(n))
        out[f"{name}_summary.json"] = ("validate", lambda n=name: validate_summary(n))
    return out


def main(argv=None):
    wanted = set(sys.argv[1:] if argv is None else argv)
    files = goldens()
    known = {g for g, _ in files.values()} | set(files) | {Path(f).stem for f in files}
    if wanted - known:
        sys.exit(f"error: unknown golden {', '.join(sorted(wanted - known))}; accepted: predict, replay, validate "
                 f"or a file name in {HERE}")
    for fname, (group, produce) in files.items():
        if wanted and not wanted & {group, fname, Path(fname).stem}:
            continue
        (HERE / fname).write_text(produce())
        print(f"wrote {HERE / fname}")


if __name__ == "__main__":
    main()
