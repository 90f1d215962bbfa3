"""Model specs: the shapes that decide bytes and FLOPs of a decode step.

Built-in specs carry their Hugging Face `config.json` values; any local `config.json` (or a folder holding one) loads
too. head_dim is explicit (Gemma 7B: 16 heads x 256 = 4096 != hidden 3072), KV heads are explicit (GQA), the MLP is
gated (SwiGLU/GeGLU: three matrices) or plain (two), and tied embeddings share the lm_head matrix with the embedding.

The shapes of today's models, each a field with its config.json key:
- Local and global layers (Gemma 2/3, Mistral v0.1, Phi-3): `sliding_window` positions for local layers; with
  `global_every` = n, every n-th layer (1-based: layers n-1, 2n-1, ...) attends to the whole context (Gemma 2: n = 2,
  HF's `layer_idx % 2`; Gemma 3: n = 6, `sliding_window_pattern`); without it every layer is local.
- Mixture of experts (Mixtral, Qwen3-MoE, DeepSeek-V3): `n_experts` routed experts of width `d_ff_expert`, each token
  routed to `experts_per_token`, plus `n_shared_experts` always-on experts of the same width; the first
  `dense_layers` layers keep a dense MLP of width d_ff (DeepSeek's first_k_dense_replace); a router d_model x E.
- Multi-head latent attention (DeepSeek-V2/V3): the cache holds one latent of `kv_lora_rank` plus a decoupled RoPE
  key of `qk_rope_head_dim` per token and layer, shared by all heads; queries and keys have head_dim = qk_nope +
  qk_rope; values `v_head_dim`. `q_lora_rank` > 0: queries go through a low-rank projection too.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

from .errors import UserError, closest, read_json
from .strategies import DSA_INDEX_DIM, DSA_INDEX_HEADS


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
    global_every: int | None = None    # with sliding_window: every n-th layer is global (Gemma 2: 2, Gemma 3: 6)
    norms_per_layer: int = 2           # Gemma 2/3 add post-attention and post-MLP norms: 4
    qk_norm: bool = False              # RMSNorm on each head's q and k (Qwen3, Gemma 3): 2 x head_dim weights
    # mixture of experts (0 = a dense MLP of d_ff in every layer)
    n_experts: int = 0
    experts_per_token: int = 0
    n_shared_experts: int = 0
    d_ff_expert: int = 0
    dense_layers: int = 0              # the first layers keep a dense MLP of d_ff (DeepSeek: first_k_dense_replace)
    # multi-head latent attention (0 = standard attention)
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    mla_absorb: bool = True            # decode absorbed (attention over the latent) or unabsorbed (rows expanded)
    # DeepSeek Sparse Attention's lightning indexer (0 = the default of `indexer()`): heads and key width
    index_heads: int = 0
    index_head_dim: int = 0
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
        for f in ("norms_per_layer", "n_experts", "experts_per_token", "n_shared_experts", "d_ff_expert",
                  "dense_layers", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim", "index_heads",
                  "index_head_dim"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > 10**9:
                raise UserError(f"model {self.name!r}: {f} must be a whole number >= 0, got {v!r}")
        if self.global_every is not None and (isinstance(self.global_every, bool) or
                                              not isinstance(self.global_every, int) or self.global_every < 1):
            raise UserError(f"model {self.name!r}: global_every must be a positive integer or null")
        if self.global_every is not None and self.sliding_window is None:
            raise UserError(f"model {self.name!r}: global_every needs a sliding_window for the other layers")
        if self.n_experts:
            if not 1 <= self.experts_per_token <= self.n_experts or self.d_ff_expert < 1:
                raise UserError(f"model {self.name!r}: a mixture of experts needs 1 <= experts_per_token <= "
                                f"n_experts and d_ff_expert >= 1 (got {self.experts_per_token} of {self.n_experts}, "
                                f"width {self.d_ff_expert})")
            if self.dense_layers > self.n_layers:
                raise UserError(f"model {self.name!r}: dense_layers {self.dense_layers} exceeds n_layers "
                                f"{self.n_layers}")
        elif self.experts_per_token or self.n_shared_experts or self.dense_layers:
            raise UserError(f"model {self.name!r}: experts_per_token, n_shared_experts and dense_layers need "
                            f"n_experts >= 1")
        for f in ("gated_mlp", "tied_embeddings", "linear_bias", "qkv_bias", "qk_norm", "mla_absorb"):
            if not isinstance(getattr(self, f), bool):
                raise UserError(f"model {self.name!r}: {f} must be true or false, got {getattr(self, f)!r}")
        if not isinstance(self.source, str):
            raise UserError(f"model {self.name!r}: source must be a string, got {self.source!r}")
        if self.kv_lora_rank:
            if not 1 <= self.qk_rope_head_dim < self.head_dim or self.v_head_dim < 1:
                raise UserError(f"model {self.name!r}: latent attention needs 1 <= qk_rope_head_dim < head_dim and "
                                f"v_head_dim >= 1 (got {self.qk_rope_head_dim}, {self.head_dim}, {self.v_head_dim})")
        elif self.q_lora_rank or self.qk_rope_head_dim or self.v_head_dim:
            raise UserError(f"model {self.name!r}: q_lora_rank, qk_rope_head_dim and v_head_dim are for latent "
                            f"attention (kv_lora_rank >= 1)")

    def __hash__(self):   # the ledger's caches look a spec up several times a prediction: a few fields, not all
        return self._hash

    @cached_property
    def _hash(self) -> int:   # computed once (the spec is frozen)
        return hash((self.name, self.n_layers, self.d_model, self.n_heads, self.head_dim))

    @property
    def group_size(self) -> int:
        """g: query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    # --- parameter counts (elements) -------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def qk_nope_head_dim(self) -> int:
        return self.head_dim - self.qk_rope_head_dim

    @property
    def value_dim(self) -> int:
        """Width of one head's value (and of its attention output)."""
        return self.v_head_dim if self.is_mla else self.head_dim

    def indexer(self) -> tuple[int, int]:
        """DSA's lightning indexer on this model: (H_I heads, d_I key width). A config's index_n_heads and
        index_head_dim (DeepSeek-V3.2), else DeepSeek-V3.2's 64 x 128 scaled down: at most half the query heads,
        at most the key width (which gives 64 x 128 on DeepSeek-V3)."""
        d_key = self.kv_lora_rank + self.qk_rope_head_dim if self.is_mla else self.head_dim
        return (self.index_heads or min(DSA_INDEX_HEADS, max(1, self.n_heads // 2)),
                self.index_head_dim or min(DSA_INDEX_DIM, d_key))

    def indexer_params(self) -> int:
        """Weights of one layer's indexer (elements): q_I (H_I x d_I) from the query input, one key (d_I) and the
        heads' weights (H_I) from the layer input. DeepSeek-V3.2 (MLA): q from the query latent (q_lora_rank), k and
        w from the hidden state. Standard attention (as `sparq_ref` builds it): q and w from the layer's post-rotary
        queries (H d_h), the key from its keys (H_kv d_h), and a bias on w (H_I)."""
        hi, di = self.indexer()
        if self.is_mla:
            return (self.q_lora_rank or self.d_model) * hi * di + self.d_model * di + self.d_model * hi
        return self.n_heads * self.head_dim * (hi * di + hi) + self.n_kv_heads * self.head_dim * di + hi

    def layer_windows(self) -> list[int | None]:
        """Each layer's attention window: None = the whole context, else the sliding window."""
        if self.sliding_window is None:
            return [None] * self.n_layers
        if self.global_every is None:
            return [self.sliding_window] * self.n_layers
        return [None if (i + 1) % self.global_every == 0 else self.sliding_window for i in range(self.n_layers)]

    @property
    def moe_layers(self) -> int:
        return self.n_layers - self.dense_layers if self.is_moe else 0

    # --- parameter counts (elements) -------------------------------------------------------------------------
    @property
    def norm_params(self) -> int:
        return self.d_model * (2 if self.norm == "layernorm" else 1)

    @property
    def attn_params(self) -> int:
        """q, k, v, o projections of one layer, with their biases (MLA: its low-rank projections and their norms)."""
        if self.is_mla:
            H, r = self.n_heads, self.qk_rope_head_dim
            q = (self.d_model * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * H * self.head_dim
                 if self.q_lora_rank else self.d_model * H * self.head_dim)
            kv = (self.d_model * (self.kv_lora_rank + r) + self.kv_lora_rank
                  + self.kv_lora_rank * H * (self.qk_nope_head_dim + self.v_head_dim))
            return q + kv + H * self.v_head_dim * self.d_model
        qkv_out = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        p = self.d_model * qkv_out + self.n_heads * self.head_dim * self.d_model
        if self.linear_bias:
            p += qkv_out + self.d_model
        elif self.qkv_bias:
            p += qkv_out
        if self.qk_norm:
            p += 2 * self.head_dim
        return p

    def _mlp(self, width: int) -> int:
        n_in = 2 if self.gated_mlp else 1
        p = (n_in + 1) * self.d_model * width
        if self.linear_bias:
            p += n_in * width + self.d_model
        return p

    @property
    def mlp_params(self) -> int:
        """A dense MLP of width d_ff (every layer of a dense model; DeepSeek's first layers)."""
        return self._mlp(self.d_ff)

    @property
    def expert_params(self) -> int:
        """One expert (routed or shared)."""
        return self._mlp(self.d_ff_expert) if self.is_moe else 0

    @property
    def router_params(self) -> int:
        return self.d_model * self.n_experts

    @property
    def moe_params(self) -> int:
        """The MLP of one MoE layer: router, every routed expert and the shared ones."""
        return self.router_params + (self.n_experts + self.n_shared_experts) * self.expert_params

    @property
    def mlp_params_all_layers(self) -> int:
        return (self.n_layers - self.moe_layers) * self.mlp_params + self.moe_layers * self.moe_params

    @property
    def layer_params(self) -> int:
        """One layer (an MoE model's: the mean over its layers)."""
        return self.attn_params + self.norms_per_layer * self.norm_params + self.mlp_params_all_layers / self.n_layers

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
        return (self.n_layers * (self.attn_params + self.norms_per_layer * self.norm_params)
                + self.mlp_params_all_layers + self.norm_params + self.embedding_params + head)

    @property
    def active_params(self) -> int:
        """Parameters one token uses: an MoE layer's router, experts_per_token routed experts and the shared ones."""
        if not self.is_moe:
            return self.n_params
        active = self.router_params + (self.experts_per_token + self.n_shared_experts) * self.expert_params
        return self.n_params - self.moe_layers * (self.moe_params - active)

    def kv_elements_per_token(self) -> int:
        """Elements one token adds to the cache, all layers: K and V per KV head, or MLA's latent + RoPE key."""
        if self.is_mla:
            return self.n_layers * (self.kv_lora_rank + self.qk_rope_head_dim)
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(group_size=self.group_size, n_params=self.n_params, active_params=self.active_params,
                 kv_elements_per_token=self.kv_elements_per_token())
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
    _llama("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, 131072,
           "Qwen/Qwen2.5-7B config.json (GQA g=7, q/k/v biases; use_sliding_window false)", qkv_bias=True),
    _llama("qwen3-8b", 36, 4096, 32, 8, 12288, 151936, 40960,
           "Qwen/Qwen3-8B config.json (head_dim 128, q/k norms)", head_dim=128, qk_norm=True),
    _llama("phi3-mini", 32, 3072, 32, 32, 8192, 32064, 4096,
           "microsoft/Phi-3-mini-4k-instruct config.json (sliding_window 2047 in every layer)", sliding_window=2047),
    _llama("gemma2-9b", 42, 3584, 16, 8, 14336, 256000, 8192,
           "google/gemma-2-9b config.json (head_dim 256, GeGLU, tied; sliding_window 4096 on every other layer, "
           "4 norms per layer)", head_dim=256, tied_embeddings=True, sliding_window=4096, global_every=2,
           norms_per_layer=4),
    _llama("gemma3-12b", 48, 3840, 16, 8, 15360, 262208, 131072,
           "google/gemma-3-12b-pt config.json, text model (head_dim 256, tied; sliding_window 1024 on 5 of every 6 "
           "layers, q/k norms, 4 norms per layer; the vision tower is left out)", head_dim=256, tied_embeddings=True,
           sliding_window=1024, global_every=6, norms_per_layer=4, qk_norm=True),
    _llama("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768,
           "mistralai/Mixtral-8x7B-v0.1 config.json (8 experts of 14336, 2 per token)", n_experts=8,
           experts_per_token=2, d_ff_expert=14336),
    _llama("mixtral-8x22b", 56, 6144, 48, 8, 16384, 32768, 65536,
           "mistralai/Mixtral-8x22B-v0.1 config.json (8 experts of 16384, 2 per token)", n_experts=8,
           experts_per_token=2, d_ff_expert=16384),
    _llama("qwen3-30b-a3b", 48, 2048, 32, 4, 6144, 151936, 40960,
           "Qwen/Qwen3-30B-A3B config.json (128 experts of 768, 8 per token; head_dim 128, q/k norms)", head_dim=128,
           qk_norm=True, n_experts=128, experts_per_token=8, d_ff_expert=768),
    _llama("deepseek-v3", 61, 7168, 128, 128, 18432, 129280, 163840,
           "deepseek-ai/DeepSeek-V3 config.json (MLA: kv_lora_rank 512, q_lora_rank 1536, qk_rope 64, qk_nope 128, "
           "v 128; 256 routed experts of 2048, 8 per token, 1 shared; the first 3 layers dense, d_ff 18432; the "
           "multi-token-prediction module is left out)", head_dim=192, n_experts=256, experts_per_token=8,
           n_shared_experts=1, d_ff_expert=2048, dense_layers=3, kv_lora_rank=512, q_lora_rank=1536,
           qk_rope_head_dim=64, v_head_dim=128),
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
_GATED_TYPES = {"llama", "mistral", "gemma", "gemma2", "gemma3_text", "qwen2", "qwen3", "phi3", "olmo", "olmo2",
                "granite", "cohere", "starcoder2_gated", "internlm2", "yi", "deepseek", "mixtral", "qwen2_moe",
                "qwen3_moe", "deepseek_v2", "deepseek_v3", "deepseek_v32"}
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
    if mtype == "gemma3" and isinstance(cfg.get("text_config"), dict):   # the multimodal config: its text model
        cfg = dict(cfg["text_config"], model_type="gemma3_text")
        mtype = "gemma3_text"
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
    tied_default = mtype in ("gpt2", "gemma", "gemma2", "gemma3_text", "opt", "gpt_bigcode", "bloom", "falcon")
    max_pos = _get(cfg, where, "max_position_embeddings", "n_positions", "seq_length", default=2048, required=False)
    sliding = cfg.get("sliding_window") if mtype in ("mistral", "mixtral", "qwen2", "qwen3", "gemma2", "gemma3_text",
                                                     "phi3", "starcoder2") else None
    if mtype in ("qwen2", "qwen3") and not cfg.get("use_sliding_window", False):
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
    extra = _modern_fields(cfg, mtype, where, n_layers, sliding, integer)
    if "head_dim" in extra:
        head_dim = extra.pop("head_dim")
    if "sliding_window" in extra:   # layer_types says every layer is global
        sliding = extra.pop("sliding_window")
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
            **extra,
        )
    except TypeError as e:  # a wrongly typed field reached the comparisons in __post_init__
        raise UserError(f"model config {where}: a field has the wrong type ({e})") from None
    except UserError as e:  # ModelSpec's own checks: name the file
        raise UserError(f"model config {where}: {e}") from None


def _layer_pattern(cfg: dict, mtype: str, where: str, n_layers: int, sliding) -> dict:
    """Which layers are global: Gemma 2 alternates; Gemma 3 has `sliding_window_pattern` (or `layer_types`)."""
    if sliding is None:
        return {}
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        full = [i for i, t in enumerate(types) if t == "full_attention"]
        if len(types) != n_layers or any(t not in ("full_attention", "sliding_attention") for t in types):
            raise UserError(f"model config {where}: layer_types must list full_attention or sliding_attention for "
                            f"each of the {n_layers} layers")
        if not full:
            return {}
        if len(full) == n_layers:
            return {"sliding_window": None}
        n = full[0] + 1
        if full != [i for i in range(n_layers) if (i + 1) % n == 0]:
            raise UserError(f"model config {where}: global layers {full[:6]}... are not every n-th layer; accepted: "
                            f"a periodic pattern (every n-th layer global) or all of one kind")
        return {"global_every": n}
    if mtype == "gemma2":
        return {"global_every": 2}
    if mtype == "gemma3_text":
        n = cfg.get("sliding_window_pattern", 6)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"model config {where}: sliding_window_pattern must be a positive integer, got {n!r}")
        return {"global_every": n}
    return {}


def _modern_fields(cfg: dict, mtype: str, where: str, n_layers: int, sliding, integer) -> dict:
    """The fields of `ModelSpec` for local/global layers, q/k norms, experts and latent attention, from config.json
    (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3, Gemma 2/3, Qwen3)."""
    out = _layer_pattern(cfg, mtype, where, n_layers, sliding)
    if mtype in ("gemma2", "gemma3_text"):
        out["norms_per_layer"] = 4
    if mtype in ("qwen3", "qwen3_moe", "gemma3_text"):
        out["qk_norm"] = True
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")
    needed = {"mixtral": "num_local_experts", "qwen2_moe": "num_experts", "qwen3_moe": "num_experts",
              "deepseek_v2": "n_routed_experts", "deepseek_v3": "n_routed_experts",
              "deepseek_v32": "n_routed_experts"}.get(mtype)
    if needed and not experts:
        raise UserError(f"model config {where}: missing field {needed!r} ({mtype} is a mixture of experts)")
    if experts:
        out["n_experts"] = integer(experts, "num_local_experts", "num_experts", "n_routed_experts")
        out["experts_per_token"] = integer(cfg.get("num_experts_per_tok"), "num_experts_per_tok")
        width = cfg.get("moe_intermediate_size") if mtype != "mixtral" else cfg.get("intermediate_size")
        out["d_ff_expert"] = integer(width, "moe_intermediate_size", "intermediate_size")
        shared = cfg.get("n_shared_experts") or 0
        if mtype == "qwen2_moe" and cfg.get("shared_expert_intermediate_size"):
            w = integer(cfg["shared_expert_intermediate_size"], "shared_expert_intermediate_size")
            if w % out["d_ff_expert"]:
                raise UserError(f"model config {where}: shared_expert_intermediate_size {w} is not a multiple of "
                                f"moe_intermediate_size {out['d_ff_expert']}; accepted: a multiple (counted as that "
                                f"many shared experts)")
            shared = w // out["d_ff_expert"]
        out["n_shared_experts"] = integer(shared, "n_shared_experts") if shared else 0
        dense = cfg.get("first_k_dense_replace") or 0
        only = cfg.get("mlp_only_layers") or []
        step = cfg.get("decoder_sparse_step", 1) or 1
        if only or step != 1:
            if step != 1 or not isinstance(only, list) or sorted(only) != list(range(len(only))):
                raise UserError(f"model config {where}: dense MLP layers other than the first ones "
                                f"(mlp_only_layers {only}, decoder_sparse_step {step}) are not supported; accepted: "
                                f"the first n layers dense")
            dense = len(only)
        out["dense_layers"] = integer(dense, "first_k_dense_replace") if dense else 0
    if cfg.get("kv_lora_rank"):
        out["kv_lora_rank"] = integer(cfg["kv_lora_rank"], "kv_lora_rank")
        out["q_lora_rank"] = integer(cfg["q_lora_rank"], "q_lora_rank") if cfg.get("q_lora_rank") else 0
        rope = integer(cfg.get("qk_rope_head_dim"), "qk_rope_head_dim")
        nope = integer(cfg.get("qk_nope_head_dim"), "qk_nope_head_dim")
        out.update(qk_rope_head_dim=rope, head_dim=rope + nope,
                   v_head_dim=integer(cfg.get("v_head_dim"), "v_head_dim"))
    if cfg.get("index_n_heads") or cfg.get("index_head_dim"):   # DeepSeek-V3.2's lightning indexer
        out["index_heads"] = integer(cfg.get("index_n_heads"), "index_n_heads")
        out["index_head_dim"] = integer(cfg.get("index_head_dim"), "index_head_dim")
    return out


def load_config_file(path: str | Path) -> ModelSpec:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    cfg = read_json(p, "model config")   # a regular file of sane size, checked before reading
    name = p.parent.name or p.stem
    return spec_from_config(cfg, name, str(p))


# Hugging Face ids of the built-ins (base and instruction-tuned repositories share a config's shapes)
HF_ALIASES: dict[str, str] = {
    "meta-llama/llama-2-7b-hf": "llama2-7b", "meta-llama/llama-2-7b-chat-hf": "llama2-7b",
    "meta-llama/llama-2-13b-hf": "llama2-13b", "meta-llama/llama-2-13b-chat-hf": "llama2-13b",
    "meta-llama/llama-2-70b-hf": "llama2-70b", "meta-llama/llama-2-70b-chat-hf": "llama2-70b",
    "meta-llama/meta-llama-3-8b": "llama3-8b", "meta-llama/meta-llama-3-8b-instruct": "llama3-8b",
    "meta-llama/meta-llama-3-70b": "llama3-70b", "meta-llama/meta-llama-3-70b-instruct": "llama3-70b",
    "meta-llama/llama-3.1-8b": "llama3.1-8b", "meta-llama/llama-3.1-8b-instruct": "llama3.1-8b",
    "meta-llama/meta-llama-3.1-8b": "llama3.1-8b", "meta-llama/meta-llama-3.1-8b-instruct": "llama3.1-8b",
    "meta-llama/llama-3.1-70b": "llama3.1-70b", "meta-llama/llama-3.1-70b-instruct": "llama3.1-70b",
    "meta-llama/meta-llama-3.1-70b": "llama3.1-70b", "meta-llama/meta-llama-3.1-70b-instruct": "llama3.1-70b",
    "meta-llama/llama-3.1-405b": "llama3.1-405b", "meta-llama/llama-3.1-405b-instruct": "llama3.1-405b",
    "meta-llama/meta-llama-3.1-405b": "llama3.1-405b", "meta-llama/meta-llama-3.1-405b-instruct": "llama3.1-405b",
    "mistralai/mistral-7b-v0.1": "mistral-7b", "mistralai/mistral-7b-instruct-v0.1": "mistral-7b",
    "google/gemma-7b": "gemma-7b", "google/gemma-7b-it": "gemma-7b",
    "qwen/qwen2.5-7b": "qwen2.5-7b", "qwen/qwen2.5-7b-instruct": "qwen2.5-7b",
    "qwen/qwen3-8b": "qwen3-8b", "qwen/qwen3-8b-base": "qwen3-8b",
    "microsoft/phi-3-mini-4k-instruct": "phi3-mini",
    "google/gemma-2-9b": "gemma2-9b", "google/gemma-2-9b-it": "gemma2-9b",
    "google/gemma-3-12b-pt": "gemma3-12b", "google/gemma-3-12b-it": "gemma3-12b",
    "mistralai/mixtral-8x7b-v0.1": "mixtral-8x7b", "mistralai/mixtral-8x7b-instruct-v0.1": "mixtral-8x7b",
    "mistralai/mixtral-8x22b-v0.1": "mixtral-8x22b", "mistralai/mixtral-8x22b-instruct-v0.1": "mixtral-8x22b",
    "qwen/qwen3-30b-a3b": "qwen3-30b-a3b", "qwen/qwen3-30b-a3b-base": "qwen3-30b-a3b",
    "deepseek-ai/deepseek-v3": "deepseek-v3", "deepseek-ai/deepseek-v3-base": "deepseek-v3",
    "deepseek-ai/deepseek-v3-0324": "deepseek-v3",
    "eleutherai/pythia-1.4b": "pythia-1.4b", "eleutherai/pythia-6.9b": "pythia-6.9b",
    "huggingfacetb/smollm2-135m": "smollm2-135m", "huggingfacetb/smollm2-135m-instruct": "smollm2-135m",
    "codellama/codellama-34b-hf": "codellama-34b",
    "facebook/opt-6.7b": "opt-6.7b", "facebook/opt-13b": "opt-13b", "facebook/opt-30b": "opt-30b",
}
_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hf_cache_dir() -> Path:
    """Where the Hugging Face hub keeps downloads: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    (huggingface_hub's own order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home) / "hub"


def cached_config(repo_id: str) -> Path | None:
    """The config.json of `repo_id` in the local Hugging Face cache (the snapshot refs/main points at, else the newest),
    or None. Reads the disk only: no network call, ever."""
    folder = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snaps = folder / "snapshots"
    if not snaps.is_dir():
        return None
    ref = folder / "refs" / "main"
    if ref.is_file():
        try:
            p = snaps / ref.read_text(encoding="utf-8").strip() / "config.json"
            if p.is_file():
                return p
        except (OSError, UnicodeDecodeError):
            pass
    found = sorted((p for p in snaps.glob("*/config.json") if p.is_file()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _from_hub_id(s: str) -> ModelSpec | None:
    """A Hugging Face id (org/name): its config.json from the local cache, else the built-in it aliases."""
    if not _HF_ID.fullmatch(s) or s.lower().endswith(".json") or Path(s).exists():
        return None
    cfg = cached_config(s)
    if cfg is not None:
        return replace(spec_from_config(read_json(cfg, "model config"), s.split("/")[-1], str(cfg)),
                       source=f"{s} config.json from the local Hugging Face cache ({cfg})")
    if s.lower() in HF_ALIASES:
        return BUILTIN[HF_ALIASES[s.lower()]]
    raise UserError(f"model {s!r} is neither in the local Hugging Face cache ({hf_cache_dir()}) nor a known alias of "
                    f"a built-in (see `sparq-sim models list`); sparq-sim never downloads: fetch its config.json "
                    f"(huggingface-cli download {s} config.json) and pass --model path/to/config.json")


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
    hub = _from_hub_id(s)
    if hub is not None:
        return hub
    if s.endswith(".json") or "/" in s or Path(s).is_dir():
        return load_config_file(s)
    raise UserError(f"unknown model {s!r}{closest(key, BUILTIN)} (see `sparq-sim models list`, "
                    f"or pass a path to a Hugging Face config.json)")


def model_names() -> list[str]:
    return list(BUILTIN)


__all__ = ["ModelSpec", "BUILTIN", "DEFAULT_MODEL", "load_model_spec", "spec_from_config", "model_names", "replace",
           "math"]
