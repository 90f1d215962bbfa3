"""Model specs: built-ins against published parameter counts, and Hugging Face config.json loading."""

import json

import pytest

from sparq_sim.simulator.errors import UserError
from sparq_sim.simulator.models import BUILTIN, load_model_spec

# published parameter counts (model cards), to 0.5%
PUBLISHED = {"llama2-7b": 6.74e9, "llama2-13b": 13.0e9, "llama2-70b": 69.0e9, "llama3-8b": 8.03e9,
             "llama3-70b": 70.6e9, "mistral-7b": 7.24e9, "gemma-7b": 8.54e9, "pythia-1.4b": 1.41e9,
             "pythia-6.9b": 6.86e9, "smollm2-135m": 0.1345e9}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_counts(name):
    assert BUILTIN[name].n_params == pytest.approx(PUBLISHED[name], rel=5e-3)


def test_smollm2_matches_the_bundled_model():
    m = BUILTIN["smollm2-135m"]  # HuggingFaceTB/SmolLM2-135M-Instruct's config
    assert (m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.d_model, m.vocab_size) == (30, 9, 3, 64, 576, 49152)
    assert m.group_size == 3 and m.tied_embeddings


def test_hf_config_json_llama3(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
           "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
           "max_position_embeddings": 8192, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = load_model_spec(str(tmp_path))  # a model folder
    assert m.n_params == BUILTIN["llama3-8b"].n_params
    assert load_model_spec(str(tmp_path / "config.json")).n_kv_heads == 8


def test_hf_config_gpt_neox_is_plain_mlp_with_biases(tmp_path):
    cfg = {"model_type": "gpt_neox", "hidden_size": 2048, "num_attention_heads": 16, "num_hidden_layers": 24,
           "intermediate_size": 8192, "vocab_size": 50304, "tie_word_embeddings": False}
    f = tmp_path / "config.json"
    f.write_text(json.dumps(cfg))
    m = load_model_spec(str(f))
    assert not m.gated_mlp and m.linear_bias and m.norm == "layernorm"
    assert m.n_params == BUILTIN["pythia-1.4b"].n_params


@pytest.mark.parametrize("cfg,match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"model_type": "llama"}), "missing field 'hidden_size'"),
    (json.dumps({"model_type": "mixtral", "num_local_experts": 8, "hidden_size": 64, "num_attention_heads": 8,
                 "num_hidden_layers": 2, "vocab_size": 10, "intermediate_size": 128}), "num_experts_per_tok"),
    (json.dumps({"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "hidden_size": 64,
                 "num_attention_heads": 8, "num_hidden_layers": 4, "vocab_size": 10, "moe_intermediate_size": 32,
                 "mlp_only_layers": [2]}), "first ones"),
    (json.dumps({"model_type": "gemma3_text", "hidden_size": 64, "num_attention_heads": 8, "num_hidden_layers": 3,
                 "vocab_size": 10, "sliding_window": 16,
                 "layer_types": ["full_attention", "sliding_attention", "full_attention"]}), "every n-th"),
    (json.dumps({"model_type": "t5", "hidden_size": 8}), "unsupported model_type"),
    (json.dumps({"model_type": "llama", "hidden_size": "big", "num_attention_heads": 8}), "hidden_size"),
    (json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8, "num_hidden_layers": -1,
                 "vocab_size": 10}), "n_layers"),
])
def test_bad_config_json(tmp_path, cfg, match):
    f = tmp_path / "config.json"
    f.write_text(cfg)
    with pytest.raises(UserError, match=match):
        load_model_spec(str(f))


def test_unknown_model_suggests_closest():
    with pytest.raises(UserError, match=r"llama2-7b.*sparq-sim models list"):
        load_model_spec("llama2-7")
