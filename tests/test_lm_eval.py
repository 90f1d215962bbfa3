"""`evaluate --lm-eval` (issue 13): lm-evaluation-harness tasks on a model whose decode steps run a strategy, offline
with task files of our own (lm-eval's YAML + local JSON lines) and the tiny random Llama of conftest.

Dense is lm-eval's own HFLM to within float rounding (its loglikelihoods and greedy flags request by request, and the
metric of a whole task); a sparse strategy moves fewer elements and says so; bad input is one line before the model
loads."""

from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("lm_eval")
torch = pytest.importorskip("torch")

from conftest import lm_eval_tasks  # noqa: E402
from sparq_sim.cli import main  # noqa: E402

@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return lm_eval_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))


@pytest.fixture(scope="module")
def loaded(tiny):
    from sparq_sim.sparq_ref.model import load_model

    return load_model(str(tiny))


def test_dense_loglikelihoods_are_hflms(loaded):
    """Request by request: dense through prefill + teacher-forced decode steps equals HFLM's one forward pass."""
    from lm_eval.models.huggingface import HFLM

    from sparq_sim.sparq_ref.harness import strategy_lm_class
    from sparq_sim.sparq_ref.hf import StrategyConfig

    ours = strategy_lm_class()(loaded, StrategyConfig("dense"), batch_size=3, max_length=64)
    theirs = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=3, max_length=64)
    g = torch.Generator().manual_seed(0)
    reqs = []
    for n_ctx, n_cont in [(5, 1), (9, 4), (3, 7), (20, 2), (60, 10), (1, 30)]:   # the last two are truncated
        toks = torch.randint(0, 256, (n_ctx + n_cont,), generator=g).tolist()
        reqs.append((None, toks[:n_ctx], toks[n_ctx:]))
    a, b = ours._loglikelihood_tokens(reqs), theirs._loglikelihood_tokens(reqs)
    assert [x[1] for x in a] == [x[1] for x in b]
    assert [x[0] for x in a] == pytest.approx([x[0] for x in b], rel=1e-4, abs=1e-4)
    assert ours.transfer()[0] == ours.transfer()[1] > 0      # dense touches what dense touches


def test_sparse_decode_steps_score_the_continuation(loaded):
    """SparQ at 1/8 on long contexts: other log-probabilities than dense, fewer elements moved; the continuation's
    first token is predicted by the dense prefill, so a one-token continuation scores exactly as dense."""
    from sparq_sim.sparq_ref.harness import strategy_lm_class
    from sparq_sim.sparq_ref.hf import StrategyConfig

    cls = strategy_lm_class()
    dense = cls(loaded, StrategyConfig("dense"), batch_size=2, max_length=512)
    sparq = cls(loaded, StrategyConfig("sparq", 8), batch_size=2, max_length=512)
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(0, 256, (300,), generator=g).tolist()
    reqs = [(None, toks[:280], toks[280:]), (None, toks[:299], toks[299:])]
    d, s = dense._loglikelihood_tokens(reqs), sparq._loglikelihood_tokens(reqs)
    assert s[0][0] != pytest.approx(d[0][0], rel=1e-6)
    assert s[1][0] == pytest.approx(d[1][0], rel=1e-5, abs=1e-5)
    touched, dense_el = sparq.transfer()
    assert 0 < touched < 0.5 * dense_el


def test_evaluate_lm_eval_end_to_end(tiny, task_dir, loaded, capsys):
    """The command on two local tasks (multiple choice and generation): dense's metrics are those lm-eval's own HFLM
    gives on the same model; every row says its metric, documents and measured transfer."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    args = ["evaluate", "--model", str(tiny), "--lm-eval", "local_mc,local_gen", "--lm-eval-include", str(task_dir),
            "--strategies", "dense,sparq,h2o", "--compression", "8", "--samples", "4", "--length", "256",
            "--batch-size", "2", "-f", "json", "-q"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert out.err == ""
    doc = json.loads(out.out)
    assert doc["lm_eval"]["tasks"] == ["local_mc", "local_gen"] and doc["lm_eval"]["limit"] == 4
    rows = {(r["task"], r["strategy"]): r for r in doc["rows"]}
    assert sorted(rows) == sorted((t, s) for t in ("local_mc", "local_gen") for s in ("dense", "sparq", "h2o"))
    assert rows["local_mc", "dense"]["score_name"] == "acc" and rows["local_gen", "dense"]["score_name"] == \
        "exact_match"
    for r in doc["rows"]:
        assert r["samples"] == 4 and r["source"] == "lm-eval"
        assert r["transfer_ratio"] == (1.0 if r["strategy"] == "dense" else pytest.approx(r["transfer_ratio"]))
        assert 0 < r["transfer_ratio"] <= 1
    assert rows["local_mc", "sparq"]["transfer_ratio"] < 1 and rows["local_gen", "h2o"]["transfer_ratio"] < 1

    hf = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=2, max_length=256)
    ref = evaluator.simple_evaluate(model=hf, tasks=["local_mc", "local_gen"], limit=4, bootstrap_iters=0,
                                    task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                                    log_samples=False)
    assert rows["local_mc", "dense"]["score"] == ref["results"]["local_mc"]["acc,none"]
    assert rows["local_gen", "dense"]["score"] == ref["results"]["local_gen"]["exact_match,none"]


@pytest.mark.parametrize("extra,match", [
    (["--lm-eval", "local_mcq"], "--lm-eval: local_mcq is not among lm-eval's or "),
    (["--lm-eval", "local_mc", "--tasks", "passkey"], "give --tasks (the built-in tasks) or --lm-eval"),
    (["--lm-eval", "local_mc", "--ray"], "--lm-eval runs in one process"),
    (["--lm-eval", " , "], "--lm-eval is empty"),
    (["--fewshot", "2"], "--lm-eval-include and --fewshot go with --lm-eval TASKS"),
    (["--lm-eval", "local_mc", "--lm-eval-include", "/etc/hostname"], "--lm-eval-include '/etc/hostname' is not a "
                                                                      "folder"),
    (["--lm-eval", "local_mc", "--fewshot", "-1"], "--fewshot must be a whole number >= 0"),
])
def test_bad_input_is_one_line_before_the_model_loads(task_dir, capsys, extra, match):
    args = ["evaluate", "--model", "/nonexistent/model", "--lm-eval-include", str(task_dir), "-q"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err


def test_a_sampling_task_is_refused_in_one_line(tiny, tmp_path, capsys):
    lm_eval_tasks(tmp_path, sample=True)
    assert main(["evaluate", "--model", str(tiny), "--lm-eval", "local_gen", "--lm-eval-include", str(tmp_path),
                 "--strategies", "dense", "--samples", "1", "--length", "128", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this lm-eval task samples (do_sample / temperature > 0)" in err, err


def test_a_context_beyond_the_models_positions_is_one_line(tiny, task_dir, capsys):
    assert main(["evaluate", "--model", str(tiny), "--lm-eval", "local_mc", "--lm-eval-include", str(task_dir),
                 "--length", "100000", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--length 100000 does not fit tiny-llama" in err and "4096 positions" in err, err


def test_a_task_lm_eval_cannot_run_is_one_line_and_a_fault_of_ours_is_not_hidden(tiny, tmp_path, capsys,
                                                                                   monkeypatch):
    lm_eval_tasks(tmp_path)
    (tmp_path / "bad.yaml").write_text((tmp_path / "mc.yaml").read_text().replace("local_mc", "bad_tmpl")
                                       .replace('doc_to_text: "{{question}}"', 'doc_to_text: "{{question.nope()}}"'))
    args = ["evaluate", "--model", str(tiny), "--lm-eval-include", str(tmp_path), "--strategies", "dense",
            "--samples", "1", "--length", "128", "-q"]
    assert main(args + ["--lm-eval", "bad_tmpl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lm-eval bad_tmpl: lm-eval could not run the task: UndefinedError" in err, err
    from sparq_sim.sparq_ref.harness import strategy_lm_class

    def broken(self, requests, disable_tqdm=False, override_bs=None):
        raise RuntimeError("a fault in sparq-sim's own code")

    monkeypatch.setattr(strategy_lm_class(), "_loglikelihood_tokens", broken)
    with pytest.raises(RuntimeError, match="a fault in sparq-sim's own code"):
        from sparq_sim.sparq_ref.commands import evaluate
        evaluate(str(tiny), None, "dense", "1", 1, "json", None, length=128, lm_eval="local_mc",
                 lm_eval_include=str(tmp_path), progress=False)


def test_without_lm_eval_it_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)    # `import lm_eval` fails as when it is not installed
    assert main(["evaluate", "--lm-eval", "hellaswag", "--samples", "1", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'sparq-sim[lm-eval]'" in err, err
