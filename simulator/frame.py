"""The pandas DataFrame of `predict`: its columns (numpy arrays and `Labels`) as one 2-D block per dtype, so a single
configuration's frame costs a fraction of pandas' constructor (issue 16), the same frame to the last value."""

from __future__ import annotations

import numpy as np

from .predict import Labels

_BLOCKS: list = []          # [create_dataframe_from_blocks, using_string_dtype] once looked up; [] where missing
_COLUMN_INDEX: dict = {}    # (column names, string dtype) -> their Index, copied for each frame
_TEXT: dict = {}            # (string dtype, categories, codes as int64) of a short text column -> its array
_TEXT_ROWS = 256            # ... kept for columns of at most this many rows (a single configuration's: ten)


def frame(cols: dict):
    """The DataFrame of `predict`: string columns as pandas' str dtype (categoricals beyond 10,000 rows), the rest as
    they are. What `pd.DataFrame({name: column})` makes (same columns, dtypes, values and blocks), built from one 2-D
    block per numpy dtype, so a single configuration does not pay the constructor's checks and inference 49 times
    (issue 16: <= 1 ms a call). pandas 3's public block constructor (pandas.api.internals) with the string dtype its
    inference gives (StringDtype(na_value=nan), built as pandas' own constructor builds it); on a pandas without
    them, or with that inference turned off, the plain constructor."""
    import pandas as pd

    n = len(cols["time_s"])
    small = n <= 10_000
    if not _BLOCKS:
        try:
            from pandas._config import using_string_dtype
            from pandas.api.internals import create_dataframe_from_blocks
            _BLOCKS[:] = [create_dataframe_from_blocks, using_string_dtype]
        except ImportError:
            _BLOCKS.append(None)
    if _BLOCKS[0] is None or not _BLOCKS[1]():
        return pd.DataFrame({c: (v.decode().astype(str) if small else pd.Categorical.from_codes(v.codes, v.categories))
                             if isinstance(v, Labels) else v for c, v in cols.items()})
    text = pd.StringDtype(na_value=np.nan)
    kind = text.construct_array_type()
    labels = [(j, v) for j, v in enumerate(cols.values()) if isinstance(v, Labels)]
    if not small:
        blocks = [(pd.Categorical.from_codes(v.codes, v.categories), np.array([j])) for j, v in labels]
    elif text.storage == "pyarrow":
        blocks = [(a, np.array([j])) for a, (j, _) in zip(_arrow_texts([v for _, v in labels], n, text, kind), labels)]
    else:
        blocks = [(kind._from_sequence(v.decode(), dtype=text), np.array([j])) for j, v in labels]
    same: dict = {}
    for j, v in enumerate(cols.values()):
        if not isinstance(v, Labels):
            arrays, where = same.setdefault(v.dtype, ([], []))
            arrays.append(v)
            where.append(j)
    blocks += [(np.array(arrays, dtype=dtype).reshape(len(where), n), np.array(where))
               for dtype, (arrays, where) in same.items()]
    key = (tuple(cols), text)
    columns = _COLUMN_INDEX.get(key)
    if columns is None:
        columns = _COLUMN_INDEX.setdefault(key, pd.Index(list(cols)))
    return _BLOCKS[0](blocks, pd.RangeIndex(n), columns.copy())


def _arrow_texts(labels: list, n: int, text, kind) -> list:
    """Text columns of n rows as pandas' Arrow-backed string arrays: what _from_sequence makes of their strings, less
    its check that they are strings (the strings of all the columns converted in one Arrow array, each column a slice
    of it). A short column is kept by its strings (categories and codes) and handed out as a copy (the array's public
    `copy`: a new array over the same Arrow data, which is immutable; writing into one frame's column replaces that
    column's data only), so a loop of single-configuration calls converts each column once."""
    keys = [(text, tuple(v.categories), np.ascontiguousarray(v.codes, dtype=np.int64).tobytes())   # the codes' values
            if n <= _TEXT_ROWS else None for v in labels]
    got = [None if key is None else _TEXT.get(key) for key in keys]
    missing = [i for i, a in enumerate(got) if a is None]
    if missing:
        import pyarrow as pa

        every = pa.array([labels[i].categories[c] for i in missing for c in labels[i].codes.tolist()],
                         type=pa.large_string())
        if len(_TEXT) >= 1024:
            _TEXT.clear()
        for m, i in enumerate(missing):
            got[i] = kind(every.slice(m * n, n), dtype=text)
            if keys[i] is not None:
                _TEXT[keys[i]] = got[i]
    return [a if key is None else a.copy() for a, key in zip(got, keys)]
