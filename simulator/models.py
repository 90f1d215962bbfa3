"""Model specs: the shapes that decide bytes and FLOPs of a decode step.

Built-in specs carry their Hugging Face `config.json` values; any local `config.json` (or a folder holding one) loads
too. head_dim is explicit (Gemma 7B: 16 heads x 256 = 4096 != hidden 3072), KV heads are explicit (GQA), the MLP is
gated (SwiGLU/GeGLU: three matrices) or plain (two), and tied embeddings share the lm_head matrix with the embedding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .errors import UserError, closest, read_json


@dataclass(frozen=True)
class ModelSpec:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    gated_mlp: bool = True
    tied_embeddings: bool = False
    norm: str = "rmsnorm"          # rmsnorm (weight only) | layernorm (weight and bias)
    linear_bias: bool = False      # biases on the attention and MLP projections (GPT-NeoX, GPT-2)
    qkv_bias: bool = False         # biases on q, k, v only (Qwen2)
    max_position: int = 4096
    sliding_window: int | None = None  # attention sees at most this many past positions (Mistral 7B v0.1)
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise UserError(f"model name must be a non-empty string, got {self.name!r}")
        for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size", "max_position"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v > 10**9:
                raise UserError(f"model {self.name!r}: {f} must be a positive integer, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"model {self.name!r}: n_heads {self.n_heads} is not a multiple of "
                            f"n_kv_heads {self.n_kv_heads}")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise UserError(f"model {self.name!r}: norm must be rmsnorm or layernorm, got {self.norm!r}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise UserError(f"model {self.name!r}: sliding_window must be a positive integer or null")

    @property
    def group_size(self) -> int:
        """g: query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    # --- parameter counts (elements) -------------------------------------------------------------------------
    @property
    def norm_params(self) -> int:
        return self.d_model * (2 if self.norm == "layernorm" else 1)

    @property
    def attn_params(self) -> int:
        """q, k, v, o projections of one layer, with their biases."""
        qkv_out = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        p = self.d_model * qkv_out + self.n_heads * self.head_dim * self.d_model
        if self.linear_bias:
            p += qkv_out + self.d_model
        elif self.qkv_bias:
            p += qkv_out
        return p

    @property
    def mlp_params(self) -> int:
        n_in = 2 if self.gated_mlp else 1
        p = (n_in + 1) * self.d_model * self.d_ff
        if self.linear_bias:
            p += n_in * self.d_ff + self.d_model
        return p

    @property
    def layer_params(self) -> int:
        return self.attn_params + self.mlp_params + 2 * self.norm_params

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.d_model

    @property
    def n_params(self) -> int:
        """All parameters (a tied lm_head counted once)."""
        head = 0 if self.tied_embeddings else self.lm_head_params
        return self.n_layers * self.layer_params + self.norm_params + self.embedding_params + head

    def kv_elements_per_token(self) -> int:
        """K and V elements one token adds to the cache, all layers."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(group_size=self.group_size, n_params=self.n_params, kv_elements_per_token=self.kv_elements_per_token())
        return d


def _llama(name, L, d, h, kv, ff, vocab, max_pos, source, **kw) -> ModelSpec:
    return ModelSpec(name=name, n_layers=L, d_model=d, n_heads=h, n_kv_heads=kv, head_dim=kw.pop("head_dim", d // h),
                     d_ff=ff, vocab_size=vocab, max_position=max_pos, source=source, **kw)


# Values from each model's Hugging Face config.json (the source string names the repository).
BUILTIN: dict[str, ModelSpec] = {m.name: m for m in [
    _llama("llama2-7b", 32, 4096, 32, 32, 11008, 32000, 4096, "meta-llama/Llama-2-7b-hf config.json"),
    _llama("llama2-13b", 40, 5120, 40, 40, 13824, 32000, 4096, "meta-llama/Llama-2-13b-hf config.json"),
    _llama("llama2-70b", 80, 8192, 64, 8, 28672, 32000, 4096, "meta-llama/Llama-2-70b-hf config.json"),
    _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, "meta-llama/Meta-Llama-3-8B config.json"),
    _llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, "meta-llama/Meta-Llama-3-70B config.json"),
    _llama("llama3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072, "meta-llama/Llama-3.1-8B config.json"),
    _llama("llama3.1-70b", 80, 8192, 64, 8, 28672, 128256, 131072, "meta-llama/Llama-3.1-70B config.json"),
    _llama("llama3.1-405b", 126, 16384, 128, 8, 53248, 128256, 131072, "meta-llama/Llama-3.1-405B config.json"),
    _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768,
           "mistralai/Mistral-7B-v0.1 config.json (sliding_window 4096)", sliding_window=4096),
    _llama("gemma-7b", 28, 3072, 16, 16, 24576, 256000, 8192,
           "google/gemma-7b config.json (head_dim 256, GeGLU, tied embeddings)", head_dim=256, tied_embeddings=True),
    ModelSpec("pythia-1.4b", 24, 2048, 16, 16, 128, 8192, 50304, gated_mlp=False, norm="layernorm", linear_bias=True,
              max_position=2048, source="EleutherAI/pythia-1.4b config.json (GPT-NeoX, untied embed_out)"),
    ModelSpec("pythia-6.9b", 32, 4096, 32, 32, 128, 16384, 50432, gated_mlp=False, norm="layernorm",
              linear_bias=True, max_position=2048, source="EleutherAI/pythia-6.9b config.json (GPT-NeoX)"),
    _llama("smollm2-135m", 30, 576, 9, 3, 1536, 49152, 8192,
           "HuggingFaceTB/SmolLM2-135M config.json (GQA g=3, tied embeddings)", tied_embeddings=True),
    _llama("codellama-34b", 48, 8192, 64, 8, 22016, 32000, 16384,
           "codellama/CodeLlama-34b-hf config.json (GQA g=8, rope_theta 1e6, untied lm_head)"),
    ModelSpec("opt-6.7b", 32, 4096, 32, 32, 128, 16384, 50272, gated_mlp=False, tied_embeddings=True,
              norm="layernorm", linear_bias=True, max_position=2048,
              source="facebook/opt-6.7b config.json (ReLU MLP, tied embeddings; the learned positional embedding, "
                     "2050 x d_model, is left out)"),
    ModelSpec("opt-13b", 40, 5120, 40, 40, 128, 20480, 50272, gated_mlp=False, tied_embeddings=True,
              norm="layernorm", linear_bias=True, max_position=2048,
              source="facebook/opt-13b config.json (ReLU MLP, tied embeddings; the learned positional embedding, "
                     "2050 x d_model, is left out)"),
    ModelSpec("opt-30b", 48, 7168, 56, 56, 128, 28672, 50272, gated_mlp=False, tied_embeddings=True,
              norm="layernorm", linear_bias=True, max_position=2048,
              source="facebook/opt-30b config.json (ReLU MLP, tied embeddings; the learned positional embedding, "
                     "2050 x d_model, is left out)"),
    ModelSpec("opt-175b", 96, 12288, 96, 96, 128, 49152, 50272, gated_mlp=False, tied_embeddings=True,
              norm="layernorm", linear_bias=True, max_position=2048,
              source="OPT paper (Zhang et al. 2022, arXiv 2205.01068) Table 1: 96 layers, 96 heads, d_model 12288 "
                     "(no public facebook/opt-175b config.json); d_ff = 4 x d_model, vocab 50272 and max_position 2048 "
                     "as in the other facebook/opt-* configs; the learned positional embedding is left out"),
]}
DEFAULT_MODEL = "llama2-7b"

# model_type values of config.json this loader understands, and whether their MLP is gated.
_GATED_TYPES = {"llama", "mistral", "gemma", "gemma2", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "granite",
                "cohere", "starcoder2_gated", "internlm2", "yi", "deepseek"}
_PLAIN_TYPES = {"gpt_neox", "gpt2", "gptj", "opt", "phi", "starcoder2", "gpt_bigcode", "falcon", "bloom"}


def _get(cfg: dict, where: str, *keys, default=None, required=True):
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    if required and default is None:
        raise UserError(f"model config {where}: missing field {keys[0]!r}")
    return default


def spec_from_config(cfg: dict, name: str, where: str) -> ModelSpec:
    """Build a spec from a Hugging Face config.json dictionary."""
    if not isinstance(cfg, dict):
        raise UserError(f"model config {where}: expected a JSON object, got {type(cfg).__name__}")
    mtype = str(cfg.get("model_type", ""))
    if cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts"):
        raise UserError(f"model config {where}: mixture-of-experts models ({mtype}) are not supported yet")
    if mtype not in _GATED_TYPES | _PLAIN_TYPES:
        raise UserError(f"model config {where}: unsupported model_type {mtype!r}{closest(mtype, _GATED_TYPES | _PLAIN_TYPES)}"
                        f" (accepted: {', '.join(sorted(_GATED_TYPES | _PLAIN_TYPES))})")
    d = _get(cfg, where, "hidden_size", "n_embd", "d_model")
    h = _get(cfg, where, "num_attention_heads", "n_head", "num_heads")
    for f, v in (("hidden_size", d), ("num_attention_heads", h)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"model config {where}: {f} must be a positive integer, got {v!r}")
    kv = _get(cfg, where, "num_key_value_heads", "n_head_kv", "num_kv_heads", default=h)
    if cfg.get("multi_query") and mtype in ("falcon", "gpt_bigcode"):
        kv = 1
    if cfg.get("head_dim") is None and d % h:  # transformers rejects it too: no whole head size
        raise UserError(f"model config {where}: hidden_size {d} is not a multiple of num_attention_heads {h}; "
                        f"accepted: a multiple, or an explicit head_dim")
    head_dim = _get(cfg, where, "head_dim", default=d // h)
    ff = _get(cfg, where, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", default=4 * d,
              required=False)
    if ff is None:
        ff = 4 * d
    tied_default = mtype in ("gpt2", "gemma", "gemma2", "opt", "gpt_bigcode", "bloom", "falcon")
    max_pos = _get(cfg, where, "max_position_embeddings", "n_positions", "seq_length", default=2048, required=False)
    sliding = cfg.get("sliding_window") if mtype in ("mistral", "qwen2", "gemma2", "phi3", "starcoder2") else None
    if mtype == "qwen2" and not cfg.get("use_sliding_window", False):
        sliding = None
    def integer(value, *keys):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**9:
            key = next((k for k in keys if k in cfg), keys[0])
            raise UserError(f"model config {where}: {key} must be a positive integer, got {value!r}")
        return value

    n_layers = integer(_get(cfg, where, "num_hidden_layers", "n_layer", "num_layers"),
                       "num_hidden_layers", "n_layer", "num_layers")
    kv = integer(kv, "num_key_value_heads", "n_head_kv", "num_kv_heads")
    head_dim = integer(head_dim, "head_dim")
    ff = integer(ff, "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")
    vocab = integer(_get(cfg, where, "vocab_size"), "vocab_size")
    max_pos = integer(max_pos, "max_position_embeddings", "n_positions", "seq_length")
    if sliding is not None:
        sliding = integer(sliding, "sliding_window")
    tie = cfg.get("tie_word_embeddings", tied_default)
    if not isinstance(tie, bool):
        raise UserError(f"model config {where}: tie_word_embeddings must be true or false, got {tie!r}")
    try:
        return ModelSpec(
            name=name,
            n_layers=n_layers,
            d_model=d,
            n_heads=h,
            n_kv_heads=kv,
            head_dim=head_dim,
            d_ff=ff,
            vocab_size=vocab,
            gated_mlp=mtype in _GATED_TYPES,
            tied_embeddings=tie,
            norm="layernorm" if mtype in _PLAIN_TYPES else "rmsnorm",
            linear_bias=mtype in ("gpt_neox", "gpt2", "gptj", "opt", "phi", "starcoder2", "gpt_bigcode"),
            qkv_bias=mtype == "qwen2",
            max_position=max_pos,
            sliding_window=sliding,
            source=f"config.json at {where}",
        )
    except TypeError as e:  # a wrongly typed field reached the comparisons in __post_init__
        raise UserError(f"model config {where}: a field has the wrong type ({e})") from None
    except UserError as e:  # ModelSpec's own checks: name the file
        raise UserError(f"model config {where}: {e}") from None


def load_config_file(path: str | Path) -> ModelSpec:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    cfg = read_json(p, "model config")   # a regular file of sane size, checked before reading
    name = p.parent.name or p.stem
    return spec_from_config(cfg, name, str(p))


def load_model_spec(name_or_path) -> ModelSpec:
    """A built-in spec by name, a ModelSpec as is, or a Hugging Face config.json (file or folder)."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    s = str(name_or_path)
    key = s.strip().lower()
    if not key:  # not "the folder we are in" (Path("") is the current folder)
        raise UserError("the model is empty; give a built-in name (see `sparq-sim models list`) or a config.json path")
    if key in BUILTIN:
        return BUILTIN[key]
    if s.endswith(".json") or "/" in s or Path(s).is_dir():
        return load_config_file(s)
    raise UserError(f"unknown model {s!r}{closest(key, BUILTIN)} (see `sparq-sim models list`, "
                    f"or pass a path to a Hugging Face config.json)")


def model_names() -> list[str]:
    return list(BUILTIN)


__all__ = ["ModelSpec", "BUILTIN", "DEFAULT_MODEL", "load_model_spec", "spec_from_config", "model_names", "replace",
           "math"]
