"""Accuracy tasks that need no download: text repetition, pass-key retrieval, bits per character.

Default text: prose paragraphs of the documentation strings in the Python standard library's own sources (found with
`sys.stdlib_module_names` and `importlib.util.find_spec`, read with `ast`, never imported), which every Python install
carries. `text=FILE` uses the user's own text (paragraphs split at blank lines).

- repetition (the SparQ paper's Repetition task): a passage, then an instruction to repeat it and the first words of the
  passage as a cue; score = characters of the passage reproduced, greedily, before the first divergence
  (capped by the generation length: 64 tokens by default).
- passkey (Mohtashami & Jaggi 2023): a five-digit pass key hidden at a chosen depth of filler text, asked for at the
  end; score = 1 when the first number generated is the key, else 0 (mean = accuracy).
- bpc: bits per character of held-out text: a context of `length` tokens, then `score_tokens` tokens of the following
  text under teacher forcing; each is predicted by a decode step running the strategy. Lower is better.

Lengths are in tokens of the model's tokenizer. Models trained on the standard library's source (most code-trained
LMs) may have seen these texts; the comparison that matters is each strategy against dense on the same samples.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..simulator.errors import UserError, closest

TASKS = ("repetition", "passkey", "bpc")
TASK_INFO = {
    "repetition": ("characters", True),
    "passkey": ("accuracy", True),
    "bpc": ("bits_per_char", False),
}
DEFAULT_LENGTH = 1024      # context tokens: affordable on two CPU cores with the 135M model
DEFAULT_NEW_TOKENS = {"repetition": 64, "passkey": 8, "bpc": 64}


def parse_tasks(value) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value or [])
    out = []
    for it in items:
        it = str(it).strip().lower()
        if not it:
            continue
        if it == "all":
            out.extend(t for t in TASKS if t not in out)
            continue
        if it not in TASKS:
            raise UserError(f"unknown task {it!r}{closest(it, TASKS)} (accepted: all, {', '.join(TASKS)})")
        if it not in out:
            out.append(it)
    if not out:
        raise UserError(f"no task given (accepted: all, {', '.join(TASKS)})")
    return out


# ----------------------------------------------------------------------------------------------------------------
# texts


def _prose(p: str) -> str | None:
    if ">>>" in p or "::" in p:
        return None
    p = " ".join(p.split())
    if len(p) < 200 or sum(c.isalpha() or c == " " for c in p) / len(p) < 0.85:
        return None
    return p


@functools.lru_cache(maxsize=1)
def stdlib_paragraphs() -> tuple[str, ...]:
    """Prose paragraphs (>= 200 characters) of the docstrings in the standard library's sources, in a stable order."""
    out: list[str] = []
    seen: set[str] = set()
    for name in sorted(m for m in getattr(sys, "stdlib_module_names", ()) if not m.startswith("_")):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        try:
            tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8", errors="replace"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for para in re.split(r"\n\s*\n", doc or ""):
                    p = _prose(para)
                    if p and p not in seen:
                        seen.add(p)
                        out.append(p)
    if sum(map(len, out)) < 20_000:
        raise UserError("this Python install carries too little standard-library source text for the default tasks; "
                        "pass --text FILE with a text of your own")
    return tuple(out)


def file_paragraphs(path: str | Path) -> tuple[str, ...]:
    from ..simulator.errors import input_file

    p = input_file(path, "--text", "a UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--text {str(p)!r} cannot be read as UTF-8 text: {e}") from None
    paras = tuple(" ".join(x.split()) for x in re.split(r"\n\s*\n", text) if x.strip())
    if sum(map(len, paras)) < 2_000:
        raise UserError(f"--text {str(p)!r} is too short ({sum(map(len, paras))} characters; at least 2000 needed)")
    return paras


def _passage(paras, tokenizer, n_tokens: int, rng: random.Random) -> str:
    """Consecutive paragraphs from a random start, cut at a sentence end near n_tokens tokens."""
    start = rng.randrange(len(paras))
    parts, n = [], 0
    i = start
    while n < n_tokens:
        para = paras[i % len(paras)]
        parts.append(para)
        n += len(tokenizer(para, add_special_tokens=False).input_ids) + 1
        i += 1
        if i - start > len(paras):
            break
    text = "\n\n".join(parts)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    text = tokenizer.decode(ids[:n_tokens])
    cut = max(text.rfind(". "), text.rfind(".\n"))
    if cut > 0.9 * len(text):
        return text[:cut + 1]
    return text[:text.rfind(" ")] if text.rfind(" ") > 0.9 * len(text) else text


# ----------------------------------------------------------------------------------------------------------------
# samples


@dataclass
class Sample:
    task: str
    prompt: str
    target: str        # repetition: the text to reproduce; passkey: the key; bpc: the held-out continuation
    meta: dict


def make_samples(task: str, tokenizer, n: int, *, length: int = DEFAULT_LENGTH, seed: int = 0,
                 text: str | Path | None = None, depth: float | None = None) -> list[Sample]:
    """n samples of `task` with a context of about `length` tokens. depth (0..1): where the pass key sits
    (default: spread over 0.1..0.9 across samples)."""
    if task not in TASKS:
        parse_tasks(task)
    if n < 1:
        raise UserError(f"--samples must be at least 1, got {n}")
    if length < 64:
        raise UserError(f"--length must be at least 64 tokens, got {length}")
    paras = file_paragraphs(text) if text is not None else stdlib_paragraphs()
    rng = random.Random(f"{task}:{seed}")
    out = []
    for i in range(n):
        if task == "repetition":
            passage = _passage(paras, tokenizer, length, rng)
            cue = " ".join(passage.split(" ")[:8])
            prompt = f"{passage}\n\nRepeat the text above, word for word.\n\n{cue}"
            out.append(Sample(task, prompt, passage[len(cue):], {"passage_chars": len(passage)}))
        elif task == "passkey":
            key = str(rng.randrange(10000, 100000))
            d = depth if depth is not None else (0.1 + 0.8 * (i / max(1, n - 1)) if n > 1 else 0.5)
            if not 0 <= d <= 1:
                raise UserError(f"--depth must be between 0 and 1, got {d}")
            filler = _passage(paras, tokenizer, length, rng)
            cut = filler.rfind(". ", 0, int(len(filler) * d) + 1)
            cut = cut + 2 if cut >= 0 else 0
            needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
            body = filler[:cut] + needle + filler[cut:]
            prompt = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
                      "memorize it. I will quiz you about the important information there.\n\n" + body +
                      "\n\nWhat is the pass key? The pass key is")
            out.append(Sample(task, prompt, key, {"depth": d}))
        else:  # bpc
            passage = _passage(paras, tokenizer, length + 2 * DEFAULT_NEW_TOKENS["bpc"], rng)
            ids = tokenizer(passage, add_special_tokens=False).input_ids
            ctx = tokenizer.decode(ids[:length])
            cut = ctx.rfind(" ")
            out.append(Sample(task, passage[:cut], passage[cut:], {}))
    return out


# ----------------------------------------------------------------------------------------------------------------
# scoring


def repetition_score(generated: str, target: str) -> int:
    """Characters of target reproduced before the first divergence."""
    n = 0
    for a, b in zip(generated, target):
        if a != b:
            break
        n += 1
    return n


def repetition_diverged(generated: str, target: str) -> bool:
    return repetition_score(generated, target) < min(len(generated), len(target))


def passkey_score(generated: str, key: str) -> float:
    m = re.search(r"\d+", generated)
    return float(m is not None and m.group(0) == key)
