"""sparq_ref commands and tasks without a model: input checking, texts, scoring, torch-free imports."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sparq_sim.simulator.errors import UserError
from sparq_sim.sparq_ref import commands as C
from sparq_sim.sparq_ref import tasks as T


class CharTokenizer:
    """One token per character: enough to build samples without a model."""

    def __call__(self, text, add_special_tokens=False):
        return SimpleNamespace(input_ids=[ord(c) for c in text])

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def test_commands_module_imports_no_torch():
    code = ("import sys, sparq_sim.sparq_ref.commands, sparq_sim.sparq_ref.tasks; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_parse_compression():
    assert C.parse_compression("1,2, 4,8,16,8") == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert C.parse_compression([8]) == [8.0]
    for bad, msg in (("0.5", "at least 1"), ("x", "not a number"), ("", "empty"), ("nan", "at least 1")):
        with pytest.raises(UserError, match=msg):
            C.parse_compression(bad)


@pytest.mark.parametrize("kwargs, msg", [
    ({"tasks": "repeat"}, "unknown task 'repeat'; did you mean 'repetition'"),
    ({"strategies": "sparc"}, "unknown strategy 'sparc'"),
    ({"compression": "1,0"}, "--compression '0' must be at least 1"),
    ({"fmt": "xml"}, "--format 'xml' is not one of table, json, csv"),
    ({"samples": 0}, "--samples must be a whole number >= 1"),
    ({"length": 10}, "--length must be a whole number >= 64"),
    ({"text": "/no/such/file.txt"}, "--text '/no/such/file.txt' does not exist"),
    ({"depth": 1.5}, "--depth must be a number between 0"),
    ({"output": "/no/such/dir/e.json"}, "folder '/no/such/dir' does not exist"),
])
def test_evaluate_rejects_bad_input_before_loading(kwargs, msg):
    with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        C.evaluate(**kwargs)


@pytest.mark.parametrize("kwargs, msg", [
    ({"task": "repetition,passkey"}, "--task takes one task"),
    ({"steps": 0}, "--steps must be a whole number >= 1"),
    ({"output": "/no/such/dir/t.parquet"}, "folder '/no/such/dir' does not exist"),
    ({"strategy": "bogus"}, "unknown strategy 'bogus'"),
])
def test_record_rejects_bad_input(kwargs, msg, tmp_path):
    kwargs.setdefault("output", str(tmp_path / "t.parquet"))
    with pytest.raises(UserError, match=msg):
        C.record(**kwargs)


def test_record_rejects_a_folder_as_output(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        C.record(output=str(tmp_path))


def test_stdlib_text_is_there():
    paras = T.stdlib_paragraphs()
    assert len(paras) > 100 and all(len(p) >= 200 for p in paras)


def test_samples_repetition():
    (s,) = T.make_samples("repetition", CharTokenizer(), 1, length=600)
    assert "Repeat the text above, word for word." in s.prompt
    cue = s.prompt.rsplit("\n\n", 1)[1]
    passage = s.prompt.split("\n\nRepeat the text above")[0]
    assert passage == cue + s.target                        # the target is the rest of the passage
    assert 500 <= len(passage) <= 600


def test_samples_passkey_depths():
    ss = T.make_samples("passkey", CharTokenizer(), 3, length=2000)
    depths = []
    for s in ss:
        assert s.target.isdigit() and len(s.target) == 5
        assert s.prompt.count(s.target) == 2 and s.prompt.endswith("The pass key is")
        depths.append(s.prompt.index(f"The pass key is {s.target}") / len(s.prompt))
    assert depths == sorted(depths) and depths[0] < 0.25 and depths[-1] > 0.75


def test_samples_bpc_and_user_text(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("\n\n".join(f"Paragraph {i} says something plain about the number {i}." * 5 for i in range(40)))
    (s,) = T.make_samples("bpc", CharTokenizer(), 1, length=300, text=f)
    assert "Paragraph" in s.prompt and s.target.startswith(" ") and len(s.target) > 100
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(UserError, match="too short"):
        T.make_samples("bpc", CharTokenizer(), 1, text=short)
    with pytest.raises(UserError, match="does not exist"):
        T.make_samples("bpc", CharTokenizer(), 1, text=tmp_path / "none.txt")


def test_samples_are_reproducible():
    a = T.make_samples("passkey", CharTokenizer(), 2, length=300, seed=5)
    b = T.make_samples("passkey", CharTokenizer(), 2, length=300, seed=5)
    c = T.make_samples("passkey", CharTokenizer(), 2, length=300, seed=6)
    assert [x.prompt for x in a] == [x.prompt for x in b] != [x.prompt for x in c]


def test_scores():
    assert T.repetition_score("abcdef", "abcxef") == 3
    assert T.repetition_score("abc", "abcdef") == 3
    assert not T.repetition_diverged("abc", "abcdef") and T.repetition_diverged("abd", "abcdef")
    assert T.passkey_score(" 12345. Remember", "12345") == 1.0
    assert T.passkey_score(" 1234", "12345") == 0.0
    assert T.passkey_score(" no number", "12345") == 0.0
    assert T.parse_tasks("all") == list(T.TASKS)
    with pytest.raises(UserError, match="no task"):
        T.parse_tasks(" , ")
