"""Golden predictions: the numbers of a fixed grid, compared with the files in tests/golden/.

After an intended change, regenerate with `python tests/golden/regenerate.py` and review the diff.
"""

import csv
import io
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from regenerate import GRIDS, HERE, render  # noqa: E402


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("name", list(GRIDS))
def test_golden(name):
    path = HERE / f"{name}.csv"
    assert path.exists(), f"missing {path}: run python tests/golden/regenerate.py"
    want, got = _rows(path.read_text()), _rows(render(GRIDS[name]))
    assert len(got) == len(want) and list(got[0]) == list(want[0])
    for i, (g, w) in enumerate(zip(got, want)):
        for col in w:
            try:
                a, b = float(g[col]), float(w[col])
            except ValueError:
                assert g[col] == w[col], f"{name} row {i} {col}: {g[col]!r} != golden {w[col]!r}"
                continue
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15), f"{name} row {i} {col}: {a} != golden {b}"
