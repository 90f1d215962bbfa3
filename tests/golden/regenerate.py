"""Regenerate the golden prediction files: `python tests/golden/regenerate.py` (or `make golden`).

A change in any number of these files is a change someone reviews in the diff.
"""

from pathlib import Path

from sparq_sim.simulator.output import to_csv
from sparq_sim.simulator.predict import decoded, predict_columns

HERE = Path(__file__).resolve().parent

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


def render(args) -> str:
    return to_csv(decoded(predict_columns(**args)))


def main():
    for name, args in GRIDS.items():
        (HERE / f"{name}.csv").write_text(render(args))
        print(f"wrote {HERE / (name + '.csv')}")


if __name__ == "__main__":
    main()
