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
from .implementations import calibration_block, fit, get_implementation, predict_kernel_times
from .strategies import get_strategy

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


def load_measurements(path):
    """Read and validate a measurement CSV; every problem is one line naming the file, the row and the column."""
    import pandas as pd

    p = input_file(path, "measurement file", "a CSV file")
    try:
        df = pd.read_csv(p)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as e:
        raise UserError(f"measurement file {str(p)!r} cannot be read as CSV: {' '.join(str(e).split())}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"measurement file {str(p)!r}: missing column(s) {', '.join(missing)} "
                        f"(the schema: {', '.join(SCHEMA)})")
    twice = [c for c in SCHEMA if f"{c}.1" in df.columns]  # pandas renames a repeated header to NAME.1
    if twice:
        raise UserError(f"measurement file {str(p)!r}: column {twice[0]} appears more than once in the header")
    if len(df) == 0:
        raise UserError(f"measurement file {str(p)!r} has no rows")
    for c in ("hardware", "kernel", "strategy", "dtype"):
        bad = df[c].isna() | (df[c].astype(str).str.strip() == "")
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise UserError(f"measurement file {str(p)!r} row {i + 2}: column {c} is empty")
    for c in INT_COLUMNS + ["time_s"] + [c for c in ("r", "k", "time_stderr_s") if c in df.columns]:
        v = _to_numbers(df[c])
        bad = v.isna() & df[c].notna() if c in ("r", "k", "time_stderr_s") else v.isna()
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise UserError(f"measurement file {str(p)!r} row {i + 2}: column {c} must be a number, got "
                            f"{df[c].iloc[i]!r}")
        df[c] = v
    for c in INT_COLUMNS + [c for c in ("r", "k") if c in df.columns]:
        given = df[c].notna() if c in ("r", "k") else True  # r and k are blank where the strategy has none
        bad = given & ((df[c] < 1) | (df[c] != np.floor(df[c])) | (df[c] > 1e9))
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise UserError(f"measurement file {str(p)!r} row {i + 2}: column {c} must be a positive whole "
                            f"number{' (or blank)' if c in ('r', 'k') else ''}, got {df[c].iloc[i]!r}")
        if c in INT_COLUMNS:
            df[c] = df[c].astype(np.int64)
    bad = ~np.isfinite(df["time_s"]) | (df["time_s"] <= 0) | (df["time_s"] > MAX_TIME_S)
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise UserError(f"measurement file {str(p)!r} row {i + 2}: time_s must be positive, finite and at most "
                        f"{MAX_TIME_S:g} s, got {df['time_s'].iloc[i]!r}")
    if "time_stderr_s" in df.columns:
        bad = df["time_stderr_s"].notna() & ~((df["time_stderr_s"] >= 0) & np.isfinite(df["time_stderr_s"]))
        if bad.any():
            i = int(np.argmax(bad.to_numpy()))
            raise UserError(f"measurement file {str(p)!r} row {i + 2}: time_stderr_s must be finite and not "
                            f"negative (or blank), got {df['time_stderr_s'].iloc[i]!r}")
    bad = (df["n_heads"] % df["n_kv_heads"]) != 0
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise UserError(f"measurement file {str(p)!r} row {i + 2}: n_kv_heads {df['n_kv_heads'].iloc[i]} does not "
                        f"divide n_heads {df['n_heads'].iloc[i]} (each KV head serves a whole group of query heads)")
    for i, (kern, strat, dt) in enumerate(zip(df["kernel"], df["strategy"], df["dtype"])):
        try:
            parse_dtype(dt)
            if kern == MODEL_STEP:  # a whole decode step of a real model: predicted by `predict`, not a kernel model
                get_strategy(strat)
                if "model" not in df.columns or not isinstance(df["model"].iloc[i], str):
                    raise UserError(f"a {MODEL_STEP} row needs a model column (a built-in name or config path)")
                continue
            impl = get_implementation(kern)
        except UserError as e:
            raise UserError(f"measurement file {str(p)!r} row {i + 2}: {e}") from None
        if impl.strategy != strat:
            raise UserError(f"measurement file {str(p)!r} row {i + 2}: kernel {kern} implements {impl.strategy}, "
                            f"but the row says strategy {strat!r}")
        if strat == "sparq":
            r, k = df["r"].iloc[i] if "r" in df else np.nan, df["k"].iloc[i] if "k" in df else np.nan
            if not (r >= 1 and k >= 1) or r > df["head_dim"].iloc[i] or k > df["seq_len"].iloc[i]:
                raise UserError(f"measurement file {str(p)!r} row {i + 2}: a sparq row needs 1 <= r <= head_dim "
                                f"and 1 <= k <= seq_len, got r={r!r}, k={k!r}")
    return df


_PROFILE_KEYS: list[tuple[str, str]] | None = None


def resolve_device(name: str) -> HardwareProfile:
    """A profile for a measurement's hardware column: a profile name or alias, or a device name that contains one
    ('NVIDIA A10G' -> a10g, 'AMD EPYC 7763 64-Core Processor (30 threads)' -> epyc-7763; longest match wins)."""
    global _PROFILE_KEYS
    try:
        return load_hardware(name)
    except UserError:
        pass
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


def _model_step_times(df, hw: HardwareProfile) -> np.ndarray:
    """`predict`'s decode-step time for each model-step row (its model, batch, context, strategy, dtype)."""
    from .predict import predict_columns

    out = np.empty(len(df))
    for i, (m, B, S, strat, dt) in enumerate(zip(df["model"], df["batch"], df["seq_len"], df["strategy"], df["dtype"])):
        out[i] = predict_columns(hardware=hw, model=m, seq_len=int(S), batch=int(B), strategies=[strat],
                                 dtype=parse_dtype(dt))["time_s"][0]
    return out


def calibrate_from_measurements(df, hw: HardwareProfile, source: str):
    df = df[df["kernel"] != MODEL_STEP]
    if len(df) == 0:
        raise UserError(f"nothing to fit: calibrate fits kernel rows, and the file holds only {MODEL_STEP} rows")
    params = fit(df["kernel"].to_numpy(), _rows(df), df["time_s"].to_numpy(), hw)
    return params, calibration_block(params, hw, source, len(df))


SHAPE = ["hardware", "batch", "seq_len", "n_heads", "n_kv_heads", "head_dim", "dtype"]


def validate(df, hw: HardwareProfile, holdout: str | None = None, baseline: str | None = None):
    """Predict every row; per-row relative error; summaries overall and per kernel; speedups over the dense kernel.

    With `holdout`, kernels are fitted on one part of the rows and judged on the rest (`split` column says which).
    Returns (rows DataFrame, summary dict)."""
    df = df.copy()
    rows = _rows(df)
    step = (df["kernel"] == MODEL_STEP).to_numpy()
    if holdout:
        fit_rows = parse_holdout(holdout, df)
        use = fit_rows & ~step
        params = fit(df["kernel"].to_numpy()[use], {c: v[use] for c, v in rows.items()},
                     df["time_s"].to_numpy()[use], hw) if use.any() else {}
        missing = sorted(set(df["kernel"][~step]) - set(params))
        if missing:
            raise UserError(f"--holdout {holdout!r} leaves no rows to fit kernel(s) {', '.join(missing)}")
        df["split"] = np.where(fit_rows, "fit", "test")
    else:
        params = None
        df["split"] = "test"
    pred = np.full(len(df), np.nan)
    if (~step).any():
        pred[~step] = predict_kernel_times(df["kernel"].to_numpy()[~step], {c: v[~step] for c, v in rows.items()},
                                           hw, params)
    if step.any():
        pred[step] = _model_step_times(df[step], hw)
    df["predicted_time_s"] = pred
    df["rel_err"] = df["predicted_time_s"] / df["time_s"] - 1.0

    # speedup of each kernel over the dense baseline kernel measured at the same shape
    dense_kernels = [k for k in dict.fromkeys(df["kernel"])
                     if k != MODEL_STEP and get_implementation(k).strategy == "dense"]
    base = baseline or ("attn-torch" if "attn-torch" in dense_kernels else (dense_kernels[0] if dense_kernels else None))
    if base is not None:
        b = df[df["kernel"] == base][SHAPE + ["time_s", "predicted_time_s"]].rename(
            columns={"time_s": "_bm", "predicted_time_s": "_bp"}).drop_duplicates(SHAPE)
        df = df.merge(b, on=SHAPE, how="left")
        df["measured_speedup"] = df["_bm"] / df["time_s"]
        df["predicted_speedup"] = df["_bp"] / df["predicted_time_s"]
        df["speedup_err"] = df["predicted_speedup"] / df["measured_speedup"] - 1.0
        df = df.drop(columns=["_bm", "_bp"])
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

    summary = {"hardware": hw.name, "profile_digest": hw.digest, "holdout": holdout, "baseline_kernel": base,
               "calibrated_profile": bool(hw.calibration),
               "overall": summarise(test),
               "by_strategy": {s: summarise(g) for s, g in test.groupby("strategy", sort=False)},
               "by_kernel": {k: summarise(g) for k, g in test.groupby("kernel", sort=False)}}
    summary["mape"] = summary["overall"]["mape"]
    if params is not None:
        summary["fitted"] = calibration_block(params, hw, f"fitted on holdout {holdout}",
                                              int((df['split'] == 'fit').sum()))
    return df, summary
