import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import re  # noqa: E402

import pytest  # noqa: E402

# what long commands write to stderr besides results and errors (common/progress.py, not on a terminal)
PROGRESS_LINE = re.compile(r"^[\w .()-]+: \d+% \([\d,]+/[\d,]+( [\w -]+)?\), \d+:\d{2}(:\d{2})? elapsed"
                           r"(, about \d+:\d{2}(:\d{2})? left)?$|^loading model .* \.\.\.$|^indexing lm-eval's tasks \.\.\.$")


def without_progress(err: str) -> list[str]:
    """The lines of stderr that are not progress or status lines (those may come first, never after)."""
    lines = err.splitlines()
    rest = [line for line in lines if not PROGRESS_LINE.match(line)]
    assert lines[len(lines) - len(rest):] == rest, err   # progress only before the other lines
    return rest


# lm-eval tasks of our own (tests/test_lm_eval.py, tests/test_devices.py)
LM_EVAL_DOCS = [{"question": f"Item {i}: the colour of the sky on a clear day is", "choices": [" green", " red", " blue"],
         "answer": i % 3} for i in range(4)]


def lm_eval_tasks(folder, sample: bool = False):
    """Two lm-eval tasks of our own in `folder` over LM_EVAL_DOCS (JSON lines): local_mc (multiple choice, acc) and
    local_gen (generation, exact match; sampling when `sample`). Returns the folder (lm-eval's include_path)."""
    import json

    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in LM_EVAL_DOCS))
    (folder / "mc.yaml").write_text(f"""task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (folder / "gen.yaml").write_text(f"""task: local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: {"true" if sample else "false"}
  temperature: {"0.7" if sample else "0.0"}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    return folder


def assert_same_trace(path_a, path_b, rows: int):
    """Two trace files hold the same rows, in the same row groups, and the same metadata but for when they were made;
    returns the first's trace."""
    import json

    import pyarrow.parquet as pq

    from sparq_sim.traces import read_trace

    a, b = read_trace(path_a), read_trace(path_b)
    assert a.table.num_rows == rows and a.table.equals(b.table)
    ma, mb = dict(a.metadata), dict(b.metadata)
    ma.pop("created"), mb.pop("created")
    assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)
    fa, fb = pq.ParquetFile(path_a).metadata, pq.ParquetFile(path_b).metadata
    assert [fa.row_group(i).num_rows for i in range(fa.num_row_groups)] == \
        [fb.row_group(i).num_rows for i in range(fb.num_row_groups)]
    return a


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A 2-layer Llama (GQA 4/2 heads) with random weights and a byte-level tokenizer, saved like any model folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = {c: i for i, c in enumerate(ByteLevel.alphabet())}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>",
                                                pad_token="<|endoftext|>")
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=128, max_position_embeddings=4096)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
