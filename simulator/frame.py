"""The pandas DataFrame of `predict`: its columns (numpy arrays and `Labels`) as one 2-D block per dtype, so a single
configuration's frame costs a fraction of pandas' constructor (issue 16), the same frame to the last value."""

from __future__ import annotations

import numpy as np

from .predict import Labels

_BLOCKS: list = []          # [create_dataframe_from_blocks, using_string_dtype] once looked up; [] where missing
_COLUMN_INDEX: dict = {}    # (column names, string dtype) -> their Index, copied for each frame


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
    elif text.storage == "pyarrow":   # what _from_sequence does with strings, less its check that they are: every
        import pyarrow as pa          # text column's strings in one Arrow array, each column a slice of it

        every = pa.array([v.categories[c] for _, v in labels for c in v.codes.tolist()], type=pa.large_string())
        blocks = [(kind(every.slice(i * n, n), dtype=text), np.array([j])) for i, (j, _) in enumerate(labels)]
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
