"""Golden results: predict grids, replay of the example traces and validate on the shipped datasets, compared with the
files in tests/golden/ (relative tolerance 1e-9: any change in a number is visible).

After an intended change, regenerate with `python tests/golden/regenerate.py` (or only a group: `... validate`) and
review the diff.
"""

import csv
import io
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from regenerate import HERE, goldens  # noqa: E402

GOLDENS = goldens()
REL = 1e-9


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def _same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=REL, abs_tol=1e-15)


def _compare_csv(name, got_text, want_text):
    want, got = _rows(want_text), _rows(got_text)
    assert len(got) == len(want), f"{name}: {len(got)} rows, golden has {len(want)}"
    assert want and list(got[0]) == list(want[0]), f"{name}: columns differ from the golden file's"
    for i, (g, w) in enumerate(zip(got, want)):
        for col in w:
            try:
                a, b = float(g[col]), float(w[col])
            except ValueError:
                assert g[col] == w[col], f"{name} row {i} {col}: {g[col]!r} != golden {w[col]!r}"
                continue
            assert _same_number(a, b), f"{name} row {i} {col}: {a} != golden {b}"


def _compare_json(where, got, want):
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), f"{where}: keys {list(got)} != golden {list(want)}"
        for k in want:
            _compare_json(f"{where}.{k}", got[k], want[k])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != golden {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            _compare_json(f"{where}[{i}]", g, w)
    elif isinstance(want, float) or (isinstance(want, int) and isinstance(got, float)):
        assert isinstance(got, (int, float)) and not isinstance(got, bool) and _same_number(float(got), float(want)), \
            f"{where}: {got!r} != golden {want!r}"
    else:
        assert got == want and type(got) is type(want), f"{where}: {got!r} != golden {want!r}"


@pytest.mark.parametrize("fname", list(GOLDENS))
def test_golden(fname):
    path = HERE / fname
    assert path.exists(), f"missing {path}: run python tests/golden/regenerate.py"
    got = GOLDENS[fname][1]()
    if fname.endswith(".json"):
        _compare_json(fname, json.loads(got), json.loads(path.read_text()))
    else:
        _compare_csv(fname, got, path.read_text())


def test_every_golden_file_is_checked():
    on_disk = {p.name for p in HERE.iterdir() if p.suffix in (".csv", ".json")}
    assert on_disk <= set(GOLDENS), f"golden files nobody checks: {sorted(on_disk - set(GOLDENS))}"
