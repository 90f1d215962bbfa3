"""Measurements: the schema of measured decode-attention timings, loading them, and validating predictions.

The measurement schema is the columns of the SparQ paper's released microbenchmark data
(`data/datasets/sparq-paper-a10g.csv`): hardware, kernel, strategy, k_layout, batch, seq_len, n_heads, n_kv_heads,
head_dim, dtype, r, k, time_s (whole-batch time of one call), time_stderr_s. Extra columns are kept.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..hardware_profiles import HardwareProfile, load_hardware
from .errors import UserError, input_file
from .fitting import calibration_block, fit
from .implementations import get_implementation
from .strategies import COMPONENT_STRATEGIES, get_strategy

MODEL_STEP = "model-step"  # rows timing a whole decode step of a real model (sparq-sim measure --model-step)
from .units import parse_dtype

SCHEMA = ["hardware", "kernel", "strategy", "k_layout", "batch", "seq_len", "n_heads", "n_kv_heads", "head_dim",
          "dtype", "r", "k", "time_s", "time_stderr_s"]
REQUIRED = [c for c in SCHEMA if c not in ("k_layout", "r", "k", "time_stderr_s")]
INT_COLUMNS = ["batch", "seq_len", "n_heads", "n_kv_heads", "head_dim"]
DATASETS_DIR = Path(__file__).resolve().parent.parent / "data" / "datasets"


def dataset_names() -> list[str]:
    return sorted(p.stem for p in DATASETS_DIR.glob("*.csv"))


def dataset_path(name: str) -> Path:
    p = DATASETS_DIR / f"{name}.csv"
    if not p.exists():
        raise UserError(f"unknown dataset {name!r}; accepted: {', '.join(dataset_names())}")
    return p


MAX_TIME_S = 1e6  # a timed decode step or kernel call of more than ~11 days is a unit mistake, not a measurement


def _to_numbers(col):
    """pd.to_numeric(errors='coerce'), but a cell such as a 400-digit integer (OverflowError in pandas) becomes inf."""
    import pandas as pd

    try:
        return pd.to_numeric(col, errors="coerce")
    except (OverflowError, ValueError):
        def one(x):
            try:
                return float(x)
            except (TypeError, ValueError, OverflowError):
                return float("nan")
        return col.map(one).astype(np.float64)


LEVELS = ("kernel", "step", "e2e")
# columns of whole-model rows (level step / e2e) and of the shipped datasets; all optional
OPTIONAL = ["level", "model", "weights", "kv_dtype", "gen_len", "page_size", "devices", "weights_on_device",
            "kv_on_device", "weights_on_disk", "kv_on_disk", "reported", "source", "skip"]


def load_measurements(path):
    """Read and validate a measurement CSV; every problem is one line naming the file, the row and the column.

    Rows with a reason in the `skip` column are not judged: they are left out of the returned frame and listed in
    `df.attrs['skipped']` as (CSV line, reason). `level` says what a row measured (kernel: one call of a kernel;
    step: one decode step of a whole model; e2e: a whole generation); without the column, rows are kernels (and
    `model-step` rows steps). Whole-model rows name a software stack in `kernel` and a model in `model`."""
    import pandas as pd

    p = input_file(path, "measurement file", "a CSV file")
    try:
        df = pd.read_csv(p)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as e:
        raise UserError(f"measurement file {str(p)!r} cannot be read as CSV: {' '.join(str(e).split())}") from None
    _check_header(df, p)
    if len(df) == 0:
        raise UserError(f"measurement file {str(p)!r} has no rows")
    df, skipped = _check_rows(df, p, 2)
    if len(df) == 0:
        raise UserError(f"measurement file {str(p)!r}: every row has a skip reason; nothing to judge")
    # attrs are deep-copied by every pandas operation: only small things go there
    df.attrs["skipped"] = skipped
    df.attrs["path"] = str(p)
    return df


def measurement_chunks(path, chunk_rows: int):
    """A measurement CSV read and validated `chunk_rows` rows at a time (the same checks and messages as
    `load_measurements`, rows named by their line in the file): yields (frame, skipped) per chunk, so a file of any
    length is checked in bounded memory."""
    import pandas as pd

    p = input_file(path, "measurement file", "a CSV file")

    def fail_read(e):
        raise UserError(f"measurement file {str(p)!r} cannot be read as CSV: {' '.join(str(e).split())}") from None

    errors = (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError)
    try:
        reader = pd.read_csv(p, chunksize=chunk_rows)
    except errors as e:
        fail_read(e)
    line, judged, seen = 2, 0, 0
    with reader:
        while True:
            try:
                df = next(reader)
            except StopIteration:
                break
            except errors as e:
                fail_read(e)
            if seen == 0:
                _check_header(df, p)
            seen += len(df)
            n = len(df)
            df, skipped = _check_rows(df.reset_index(drop=True), p, line)
            line += n
            judged += len(df)
            yield df, skipped
    if seen == 0:
        raise UserError(f"measurement file {str(p)!r} has no rows")
    if judged == 0:
        raise UserError(f"measurement file {str(p)!r}: every row has a skip reason; nothing to judge")


def _check_header(df, p) -> None:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"measurement file {str(p)!r}: missing column(s) {', '.join(missing)} "
                        f"(the schema: {', '.join(SCHEMA)}; optional: {', '.join(OPTIONAL)})")
    twice = [c for c in SCHEMA + OPTIONAL if f"{c}.1" in df.columns]  # pandas renames a repeated header to NAME.1
    if twice:
        raise UserError(f"measurement file {str(p)!r}: column {twice[0]} appears more than once in the header")


def _check_rows(df, p, line0: int):
    """The row checks of a measurement frame whose first row is line `line0` of the file -> (the rows to judge,
    [(line, skip reason)])."""
    df["_line"] = np.arange(len(df)) + line0
    skipped = []
    if "skip" in df.columns:
        reason = df["skip"].astype(object).where(df["skip"].notna(), "").astype(str).str.strip()
        skipped = list(zip(df["_line"][reason != ""].tolist(), reason[reason != ""].tolist()))
        df = df[reason == ""].reset_index(drop=True)
        if len(df) == 0:
            return df.drop(columns=["_line"]), skipped

    def fail(i, msg):
        raise UserError(f"measurement file {str(p)!r} row {int(df['_line'].iloc[i])}: {msg}")

    def first(bad):
        return int(np.argmax(np.asarray(bad)))

    for c in ("hardware", "kernel", "strategy", "dtype"):
        bad = df[c].isna() | (df[c].astype(str).str.strip() == "")
        if bad.any():
            fail(first(bad), f"column {c} is empty")
    from .strategies import ALIASES
    df["strategy"] = df["strategy"].astype(str).str.strip().replace(ALIASES)   # streamingllm -> lm-infinite
    if "level" in df.columns:
        df["level"] = df["level"].astype(object).where(df["level"].notna(), "").astype(str).str.strip()
        df.loc[df["level"] == "", "level"] = np.where(df["kernel"][df["level"] == ""] == MODEL_STEP, "step", "kernel")
    else:
        df["level"] = np.where(df["kernel"] == MODEL_STEP, "step", "kernel")
    bad = ~df["level"].isin(LEVELS)
    if bad.any():
        fail(first(bad), f"unknown level {df['level'].iloc[first(bad)]!r}; accepted: {', '.join(LEVELS)}")
    optional_numbers = [c for c in ("r", "k", "time_stderr_s", "gen_len", "page_size", "devices",
                                    "weights_on_device", "kv_on_device", "weights_on_disk", "kv_on_disk")
                        if c in df.columns]
    for c in INT_COLUMNS + ["time_s"] + optional_numbers:
        v = _to_numbers(df[c])
        bad = v.isna() & df[c].notna() if c in optional_numbers else v.isna()
        if bad.any():
            fail(first(bad), f"column {c} must be a number, got {df[c].iloc[first(bad)]!r}")
        df[c] = v
    for c in INT_COLUMNS + [c for c in ("r", "k", "gen_len", "page_size", "devices") if c in df.columns]:
        given = df[c].notna() if c not in INT_COLUMNS else True  # optional ones are blank where not used
        bad = given & ((df[c] < 1) | (df[c] != np.floor(df[c])) | (df[c] > 1e9))
        if bad.any():
            fail(first(bad), f"column {c} must be a positive whole number{'' if c in INT_COLUMNS else ' (or blank)'}"
                             f", got {df[c].iloc[first(bad)]!r}")
        if c in INT_COLUMNS:
            df[c] = df[c].astype(np.int64)
    for c in ("weights_on_device", "kv_on_device", "weights_on_disk", "kv_on_disk"):
        if c in df.columns:
            bad = df[c].notna() & ~((df[c] >= 0) & (df[c] <= 1))
            if bad.any():
                fail(first(bad), f"column {c} must be a fraction from 0 to 1 (or blank), got "
                                 f"{df[c].iloc[first(bad)]!r}")
    for what in ("weights", "kv"):   # on the device, on the disk, and the rest in host memory
        if f"{what}_on_disk" in df.columns:
            on = df[f"{what}_on_device"].fillna(1.0) if f"{what}_on_device" in df.columns else 1.0
            bad = on + df[f"{what}_on_disk"].fillna(0.0) > 1 + 1e-9
            if bad.any():
                i = first(bad)
                fail(i, f"{what}_on_device and {what}_on_disk add up to more than 1 (the rest is in host memory), "
                        f"got {df[f'{what}_on_disk'].iloc[i]!r} on the disk")
    bad = ~np.isfinite(df["time_s"]) | (df["time_s"] <= 0) | (df["time_s"] > MAX_TIME_S)
    if bad.any():
        fail(first(bad), f"time_s must be positive, finite and at most {MAX_TIME_S:g} s, got "
                         f"{df['time_s'].iloc[first(bad)]!r}")
    if "time_stderr_s" in df.columns:
        bad = df["time_stderr_s"].notna() & ~((df["time_stderr_s"] >= 0) & np.isfinite(df["time_stderr_s"]))
        if bad.any():
            fail(first(bad), f"time_stderr_s must be finite and not negative (or blank), got "
                             f"{df['time_stderr_s'].iloc[first(bad)]!r}")
    bad = (df["n_heads"] % df["n_kv_heads"]) != 0
    if bad.any():
        i = first(bad)
        fail(i, f"n_kv_heads {df['n_kv_heads'].iloc[i]} does not divide n_heads {df['n_heads'].iloc[i]} "
                f"(each KV head serves a whole group of query heads)")
    from .stacks import get_stack

    # names are checked once per distinct combination (a file of millions of rows repeats a few), conditions on the
    # numbers with array operations; the first failing row is named
    n = len(df)
    col = (lambda c: df[c].to_numpy() if c in df.columns else np.full(n, np.nan))  # noqa: E731
    has_model = np.array([isinstance(v, str) and v.strip() != "" for v in col("model")], dtype=bool)
    keys = ["kernel", "strategy", "dtype", "level"] + [c for c in ("weights", "kv_dtype") if c in df.columns]
    combos = df[keys].astype(str).drop_duplicates()
    for i in combos.index:
        kern, strat, dt, level = (str(df[c].iloc[i]) for c in ("kernel", "strategy", "dtype", "level"))
        try:
            parse_dtype(dt)
            if level != "kernel":   # a whole model under a software stack: predicted through `predict`
                get_strategy(strat)
                get_stack(kern)
                for c in ("weights", "kv_dtype"):
                    if c in df.columns and isinstance(df[c].iloc[i], str):
                        parse_dtype(df[c].iloc[i], c)
                continue
            impl = get_implementation(kern)
        except UserError as e:
            fail(i, str(e))
        if impl.strategy != strat:
            fail(i, f"kernel {kern} implements {impl.strategy}, but the row says strategy {strat!r}")
    if "k_layout" in df.columns:   # K stored twice or once (the -oneK kernels say so in their name), or blank
        lay = df["k_layout"].astype(object).where(df["k_layout"].notna(), "").astype(str).str.strip()
        bad = ~lay.isin(["", "twice", "once"])
        if bad.any():
            fail(first(bad), f"column k_layout must be twice, once or blank, got {lay.iloc[first(bad)]!r}")
    if "model" in df.columns:      # one model per row: a comma list would be read as two models
        bad = np.array([isinstance(v, str) and "," in v for v in df["model"]], dtype=bool)
        if bad.any():
            fail(first(bad), f"column model holds {df['model'].iloc[first(bad)]!r}: one model per row (a built-in "
                             f"name or a config.json path)")
    level, strat = df["level"].to_numpy(), df["strategy"].to_numpy()
    r, k, gen = col("r").astype(np.float64), col("k").astype(np.float64), col("gen_len").astype(np.float64)
    whole = level != "kernel"
    checks = [
        (whole & ~has_model, lambda i: f"a {level[i]} row needs a model column (a built-in name or config path)"),
        ((level == "e2e") & ~(gen >= 1), lambda i: "an e2e row needs gen_len (tokens generated per sequence)"),
        (~whole & np.isin(strat, COMPONENT_STRATEGIES) & ~((r >= 1) & (k >= 1) & (r <= df["head_dim"].to_numpy())
                                                           & (k <= df["seq_len"].to_numpy())),
         lambda i: f"a {strat[i]} row needs 1 <= r <= head_dim and 1 <= k <= seq_len, got r={r[i]!r}, k={k[i]!r}"),
        (np.isin(strat, ["h2o", "quest", "lm-infinite", "flexgen", "snapkv", "dsa"]) & ~(k >= 1),
         lambda i: f"a {strat[i]} row needs k (the attended-token budget)"),
    ]
    bad_row = [(first(bad), msg) for bad, msg in checks if bad.any()]
    if bad_row:
        i, msg = min(bad_row, key=lambda x: x[0])
        fail(i, msg(i))
    return df.drop(columns=["_line"]), skipped



_PROFILE_KEYS: list[tuple[str, str]] | None = None


def resolve_device(name: str) -> HardwareProfile:
    """A profile for a measurement's hardware column: a profile name or alias, or a device name that contains one
    ('NVIDIA A10G' -> a10g, 'AMD EPYC 7763 64-Core Processor (30 threads)' -> epyc-7763; longest match wins)."""
    global _PROFILE_KEYS
    try:
        return load_hardware(name)
    except UserError:
        if str(name).endswith((".yaml", ".yml")) or "/" in str(name):   # a path: its own error says what is wrong
            raise
    if _PROFILE_KEYS is None:
        from ..hardware_profiles import list_profiles
        keys = [(re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-"), p.name)
                for p in list_profiles() for key in (p.name, *p.aliases)]
        _PROFILE_KEYS = sorted(keys, key=lambda kv: -len(kv[0]))
    norm = "-" + re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") + "-"
    for key, prof in _PROFILE_KEYS:
        if len(key) >= 3 and f"-{key}-" in norm:
            return load_hardware(prof)
    raise UserError(f"measured hardware {name!r} maps to no profile; pass --hardware NAME "
                    f"(see `sparq-sim hardware list`)")


def parse_holdout(spec: str, df):
    """'batch:1,4' -> rows to fit on (batch 1 or 4) and rows to judge (the rest); '0.5' -> a seeded random half."""
    spec = spec.strip()
    try:
        frac = float(spec)
    except ValueError:
        frac = None
    if frac is not None:
        if not 0 < frac < 1:
            raise UserError(f"--holdout fraction must be between 0 and 1, got {spec}")
        rng = np.random.default_rng(0)
        fit_rows = rng.random(len(df)) < frac
    else:
        if ":" not in spec:
            raise UserError(f"--holdout must be COLUMN:VALUES (e.g. batch:1,4) or a fraction, got {spec!r}")
        col, values = spec.split(":", 1)
        if col not in df.columns:
            raise UserError(f"--holdout column {col!r} is not in the measurements (columns: {', '.join(df.columns)})")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        fit_rows = df[col].astype(str).isin(vals).to_numpy()
        if df[col].dtype.kind in "if":
            try:
                fit_rows = df[col].isin([float(v) for v in vals]).to_numpy()
            except ValueError:
                raise UserError(f"--holdout values for {col} must be numbers, got {values!r}") from None
    if fit_rows.all() or not fit_rows.any():
        raise UserError(f"--holdout {spec!r} leaves nothing to {'judge' if fit_rows.all() else 'fit on'}")
    return fit_rows


def _rows(df) -> dict:
    return {c: df[c].to_numpy() for c in ("batch", "seq_len", "n_heads", "n_kv_heads", "head_dim", "dtype",
                                          "r", "k")}


def calibrate_from_measurements(df, hw: HardwareProfile, source: str, defaults: dict | None = None):
    """Calibrate a device on its measurements: first the device (host speed and achieved memory bandwidth: the
    factors of `fitting.fit_device`, which any kernel and stack use, so three rows of one kernel calibrate them all),
    then each kernel measured on at least MIN_KERNEL_ROWS rows on its own, on top of that. Returns (per-kernel
    parameters, the profile's `calibration:` block, the device fit)."""
    import dataclasses

    from .fitting import MIN_KERNEL_ROWS, fit_device

    device = fit_device(df, hw, defaults)
    cal = dict(hw.calibration or {}, host_scale=device["host_scale"], bandwidth_scale=device["bandwidth_scale"])
    hw_dev = dataclasses.replace(hw, calibration=cal)
    kern = df[df["level"] == "kernel"] if "level" in df.columns else df[df["kernel"] != MODEL_STEP]
    counts = kern["kernel"].value_counts()
    kern = kern[kern["kernel"].isin(counts[counts >= MIN_KERNEL_ROWS].index)]
    params = fit(kern["kernel"].to_numpy(), _rows(kern), kern["time_s"].to_numpy(), hw_dev, defaults=defaults) \
        if len(kern) else {}
    block = calibration_block(params, hw_dev, source, len(df))
    block["host_scale"], block["bandwidth_scale"] = device["host_scale"], device["bandwidth_scale"]
    return params, block, device


SHAPE = ["hardware", "batch", "seq_len", "n_heads", "n_kv_heads", "head_dim", "dtype"]


def validate(df, hw: HardwareProfile | None, holdout: str | None = None, baseline: str | None = None,
             defaults: dict | None = None):
    """Predict every row at its level; per-row relative error; summaries overall and per kernel; speedups over dense.

    `hw` None: each row's hardware column names its profile. With `holdout`, kernels are fitted on one part of the
    rows and judged on the rest (`split` column says which). `defaults` replaces the shipped fitted defaults (a
    leave-one-dataset-out judgement). Returns (rows DataFrame, summary dict)."""
    from .fidelity import predict_rows

    attrs = dict(df.attrs)
    df = df.copy()
    if "level" not in df.columns:
        df["level"] = np.where(df["kernel"] == MODEL_STEP, "step", "kernel")
    rows = _rows(df)
    kern = (df["level"] == "kernel").to_numpy()
    if holdout:
        if hw is None:
            raise UserError("--holdout fits one device: give --hardware (or a file of one device)")
        fit_rows = parse_holdout(holdout, df)
        use = fit_rows & kern
        params = fit(df["kernel"].to_numpy()[use], {c: v[use] for c, v in rows.items()},
                     df["time_s"].to_numpy()[use], hw, defaults=defaults) if use.any() else {}
        missing = sorted(set(df["kernel"][kern]) - set(params))
        if missing:
            raise UserError(f"--holdout {holdout!r} leaves no rows to fit kernel(s) {', '.join(missing)}")
        df["split"] = np.where(fit_rows, "fit", "test")
    else:
        params = None
        df["split"] = "test"
    df["predicted_time_s"] = predict_rows(df, hw, defaults, params)
    df["rel_err"] = df["predicted_time_s"] / df["time_s"] - 1.0

    # speedup of each kernel over the dense baseline kernel measured at the same shape
    dense_kernels = [k for k in dict.fromkeys(df["kernel"][kern])
                     if get_implementation(k).strategy == "dense"]
    base = baseline or ("attn-torch" if "attn-torch" in dense_kernels else (dense_kernels[0] if dense_kernels else None))
    if base is not None:
        b = df[df["kernel"] == base][SHAPE + ["time_s", "predicted_time_s"]].rename(
            columns={"time_s": "_bm", "predicted_time_s": "_bp"}).drop_duplicates(SHAPE)
        df = df.merge(b, on=SHAPE, how="left")
        df["measured_speedup"] = df["_bm"] / df["time_s"]
        df["predicted_speedup"] = df["_bp"] / df["predicted_time_s"]
        df["speedup_err"] = df["predicted_speedup"] / df["measured_speedup"] - 1.0
        df = df.drop(columns=["_bm", "_bp"])
    df.attrs.update(attrs)
    test = df[df["split"] == "test"]

    def summarise(part):
        err = part["rel_err"].to_numpy()
        ratio = part["predicted_time_s"].to_numpy() / part["time_s"].to_numpy()
        out = {"rows": int(len(part)), "mape": float(np.mean(np.abs(err))) if len(part) else math.nan,
               "worst_rel_err": float(err[np.argmax(np.abs(err))]) if len(part) else math.nan,
               "geomean_ratio": float(np.exp(np.mean(np.log(ratio)))) if len(part) else math.nan}
        if "speedup_err" in part and part["speedup_err"].notna().any():
            se = part["speedup_err"].dropna().to_numpy()
            out["speedup_mape"] = float(np.mean(np.abs(se)))
        return out

    names = sorted(set(df["hardware"].astype(str))) if hw is None else [hw.name]
    summary = {"hardware": ",".join(names), "profile_digest": hw.digest if hw is not None else "",
               "holdout": holdout, "baseline_kernel": base,
               "calibrated_profile": bool(hw is not None and hw.calibration),
               "defaults": "shipped" if defaults is None else "fitted without this dataset",
               "skipped_rows": len(attrs.get("skipped", [])),
               "overall": summarise(test),
               "by_level": {lv: summarise(g) for lv, g in test.groupby("level", sort=False)},
               "by_strategy": {s: summarise(g) for s, g in test.groupby("strategy", sort=False)},
               "by_kernel": {k: summarise(g) for k, g in test.groupby("kernel", sort=False)}}
    summary["mape"] = summary["overall"]["mape"]
    if params is not None:
        summary["fitted"] = calibration_block(params, hw, f"fitted on holdout {holdout}",
                                              int((df['split'] == 'fit').sum()))
    return df, summary


VALIDATE_CHUNK_ROWS = 131_072   # rows of a measurement file read, checked and predicted at a time (validate_stream)


class _Errors:
    """Running totals of one group of rows for `summarise`: the same figures without holding the rows."""

    def __init__(self):
        self.rows, self.abs_sum, self.log_sum, self.worst, self.sp_rows, self.sp_sum = 0, 0.0, 0.0, 0.0, 0, 0.0

    def add(self, err, ratio, speedup_err):
        if len(err):
            self.rows += len(err)
            self.abs_sum += float(np.abs(err).sum())
            self.log_sum += float(np.log(ratio).sum())
            w = float(err[np.argmax(np.abs(err))])
            if abs(w) > abs(self.worst) or self.rows == len(err):
                self.worst = w
        se = speedup_err[~np.isnan(speedup_err)] if speedup_err is not None else np.zeros(0)
        self.sp_rows += len(se)
        self.sp_sum += float(np.abs(se).sum())

    def summary(self) -> dict:
        out = {"rows": self.rows, "mape": self.abs_sum / self.rows if self.rows else math.nan,
               "worst_rel_err": self.worst if self.rows else math.nan,
               "geomean_ratio": math.exp(self.log_sum / self.rows) if self.rows else math.nan}
        if self.sp_rows:
            out["speedup_mape"] = self.sp_sum / self.sp_rows
        return out


class StreamedValidation:
    """`validate` of a measurement file of any length in bounded memory (no holdout; the shipped defaults).

    The first pass checks every row (so nothing is written before a bad row is found), notes the kernels and the
    devices, and predicts the dense kernels' rows, keeping one baseline time per shape; `rows()` is the second pass:
    chunks of per-row results (the columns of `validate`'s frame, in file order) while the summary accumulates, read
    from `summary` once `rows()` is exhausted. Memory: a chunk of rows and the baselines' distinct shapes."""

    def __init__(self, path, hw: HardwareProfile | None, chunk_rows: int | None = None,
                 baseline: str | None = None, one_device: bool = False):
        import pandas as pd

        from .fidelity import predict_rows

        self.path, self.hw = path, hw
        self.chunk_rows = int(chunk_rows if chunk_rows is not None else VALIDATE_CHUNK_ROWS)
        kernels: dict = {}
        dense: dict = {}
        hardware: dict = {}
        self.skipped = 0
        for df, skipped in measurement_chunks(path, self.chunk_rows):
            self.skipped += len(skipped)
            if not len(df):
                continue
            if hw is None:
                for h in dict.fromkeys(df["hardware"].astype(str)):
                    if h not in hardware:
                        hardware[h] = resolve_device(h)
            kern = (df["level"] == "kernel").to_numpy()
            for k in dict.fromkeys(df["kernel"][kern]):
                kernels.setdefault(k, get_implementation(k).strategy == "dense")
            is_dense = kern & df["kernel"].isin([k for k, d in kernels.items() if d]).to_numpy()
            if is_dense.any():
                part = df[is_dense].reset_index(drop=True)
                part["_bp"] = predict_rows(part, hw)
                for k, g in part.groupby("kernel", sort=False):
                    rows = g[SHAPE + ["time_s", "_bp"]].rename(columns={"time_s": "_bm"})
                    dense[k] = pd.concat([dense[k], rows]).drop_duplicates(SHAPE) if k in dense else \
                        rows.drop_duplicates(SHAPE)
        dense_kernels = [k for k, d in kernels.items() if d]
        self.base = baseline or ("attn-torch" if "attn-torch" in dense_kernels else
                                 (dense_kernels[0] if dense_kernels else None))
        self._base_rows = dense.get(self.base) if self.base is not None else None
        if hw is None and one_device:   # the file's one device (validate without --hardware)
            if len(hardware) > 1:
                raise UserError(f"the measurements hold several devices ({', '.join(sorted(hardware))}); choose one "
                                f"with --hardware")
            hw = self.hw = next(iter(hardware.values()))
        self.hardware_names = sorted(hardware) if hw is None else [hw.name]
        self.summary: dict | None = None

    def rows(self):
        from .fidelity import predict_rows

        groups = {"overall": {"": _Errors()}, "by_level": {}, "by_strategy": {}, "by_kernel": {}}
        for df, _ in measurement_chunks(self.path, self.chunk_rows):
            if not len(df):
                continue
            df["split"] = "test"
            df["predicted_time_s"] = predict_rows(df, self.hw)
            df["rel_err"] = df["predicted_time_s"] / df["time_s"] - 1.0
            if self._base_rows is not None:
                df = df.merge(self._base_rows, on=SHAPE, how="left")
                df["measured_speedup"] = df["_bm"] / df["time_s"]
                df["predicted_speedup"] = df["_bp"] / df["predicted_time_s"]
                df["speedup_err"] = df["predicted_speedup"] / df["measured_speedup"] - 1.0
                df = df.drop(columns=["_bm", "_bp"])
            err = df["rel_err"].to_numpy()
            ratio = df["predicted_time_s"].to_numpy() / df["time_s"].to_numpy()
            se = df["speedup_err"].to_numpy() if "speedup_err" in df else None
            groups["overall"][""].add(err, ratio, se)
            for key, col in (("by_level", "level"), ("by_strategy", "strategy"), ("by_kernel", "kernel")):
                values = df[col].to_numpy()
                for v in dict.fromkeys(values.tolist()):
                    sel = values == v
                    groups[key].setdefault(v, _Errors()).add(err[sel], ratio[sel], se[sel] if se is not None else None)
            yield df
        self.summary = {
            "hardware": ",".join(self.hardware_names), "profile_digest": self.hw.digest if self.hw else "",
            "holdout": None, "baseline_kernel": self.base,
            "calibrated_profile": bool(self.hw is not None and self.hw.calibration), "defaults": "shipped",
            "skipped_rows": self.skipped, "overall": groups["overall"][""].summary(),
            **{key: {v: e.summary() for v, e in groups[key].items()} for key in ("by_level", "by_strategy",
                                                                                  "by_kernel")}}
        self.summary["mape"] = self.summary["overall"]["mape"]
