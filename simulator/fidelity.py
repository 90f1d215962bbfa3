"""Fidelity that travels: the shipped datasets as one body of evidence, the fitted defaults, leave-one-dataset-out.

Every shipped dataset (data/datasets/*.csv) measured something at one level: a kernel call, one decode step of a
whole model, or a whole generation. `predict_rows` predicts any rows at their level (kernels through their
implementation models, whole models through their software stack and `predict`). `fit_all` fits the costs that
travel (implementations.py, stacks.py) on the rows of the datasets it is given: the fitted defaults are
`fit_all(every dataset)`, written into data/implementations.yaml by `sparq-sim calibrate --defaults`; judging a
dataset "held out" means `fit_all(every other dataset)` and predicting it, so nothing fitted on a dataset is judged
on that dataset. `validate_all` prints both per dataset: the uncalibrated error (the shipped defaults) and the
leave-one-dataset-out error. Pure numpy/pandas.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..hardware_profiles import HardwareProfile
from .fitting import fit_defaults, fit_stack
from .implementations import IMPLEMENTATIONS_FILE, STACK_EFFICIENCIES, get_implementation, predict_kernel_times
from .measured import dataset_names, dataset_path, load_measurements, resolve_device
from .stacks import get_stack, row_base, row_time, stack_costs
from .units import parse_dtype

ROW_SHAPE = ("batch", "seq_len", "n_heads", "n_kv_heads", "head_dim", "dtype", "r", "k")


@lru_cache(maxsize=None)
def load_dataset(name: str):
    """A shipped dataset, validated (rows with a skip reason are listed in .attrs['skipped'])."""
    return load_measurements(dataset_path(name))


def _value(df, col, i, default=None):
    if col not in df.columns:
        return default
    v = df[col].iloc[i]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return default
    return v


_BASES: dict = {}


def _base(df, i, hw: HardwareProfile):
    """The stack-independent part of a whole-model row's prediction (cached: fitting evaluates it many times)."""
    dtype = parse_dtype(df["dtype"].iloc[i])
    key = (hw.name, hw.digest, hw.bandwidth_scale, (hw.calibration or {}).get("host_scale", 1.0),
           str(df["model"].iloc[i]), df["level"].iloc[i], int(df["batch"].iloc[i]), int(df["seq_len"].iloc[i]), _value(df, "gen_len", i), df["strategy"].iloc[i],
           parse_dtype(_value(df, "weights", i, dtype)), parse_dtype(_value(df, "kv_dtype", i, dtype)),
           int(_value(df, "devices", i, 1)), _value(df, "k", i), _value(df, "page_size", i),
           float(_value(df, "weights_on_device", i, 1.0)), float(_value(df, "kv_on_device", i, 1.0)),
           float(_value(df, "weights_on_disk", i, 0.0)), float(_value(df, "kv_on_disk", i, 0.0)))
    if key not in _BASES:
        (model, level, batch, seq, gen, strat, weights, kv_dtype, devices, k, page, w_on, kv_on, w_dk, kv_dk) = key[4:]
        _BASES[key] = row_base(hw, model, level, batch, seq, int(gen) if gen is not None else None, strat, weights,
                               kv_dtype, devices, int(k) if k is not None and strat != "dense" else None,
                               int(page) if page is not None else None, w_on, kv_on, w_dk, kv_dk)
    return _BASES[key]


def profiles_of(df, hw: HardwareProfile | None = None) -> list[HardwareProfile]:
    """The profile of each row: `hw` for all, or each row's hardware column resolved."""
    if hw is not None:
        return [hw] * len(df)
    cache = {}
    return [cache.setdefault(h, resolve_device(h)) for h in df["hardware"].astype(str)]


def predict_rows(df, hw: HardwareProfile | None = None, defaults: dict | None = None,
                 params: dict | None = None) -> np.ndarray:
    """Predicted time_s of every row at its level. `defaults` replaces the shipped fitted defaults (leave-one-out);
    `params` holds per-kernel parameters fitted on this device (validate --holdout)."""
    hws = profiles_of(df, hw)
    out = np.full(len(df), np.nan)
    level = df["level"].to_numpy()
    kern = (level == "kernel")
    names = np.array([h.name for h in hws], dtype=object)
    for name in dict.fromkeys(names[kern].tolist()):
        sel = kern & (names == name)
        prof = hws[int(np.argmax(sel))]
        rows = {c: df[c].to_numpy()[sel] for c in ROW_SHAPE}
        if "page_size" in df.columns:
            rows["page_size"] = df["page_size"].to_numpy()[sel]
        out[sel] = predict_kernel_times(df["kernel"].to_numpy()[sel], rows, prof, params, defaults)
    for i in np.flatnonzero(~kern):
        stack = get_stack(str(df["kernel"].iloc[i]))
        out[i] = row_time(stack, stack_costs(stack, defaults), _base(df, i, hws[i]))
    return out


def fit_all(names: list[str]) -> dict:
    """The costs that travel, fitted on the judged rows of the named datasets: kernel implementations per device
    kind, framework families' host cost per op, software stacks."""
    kparts: dict = {}
    sparts: dict = {}
    for name in names:
        df = load_dataset(name)
        hws = profiles_of(df)
        for i, (kern, level) in enumerate(zip(df["kernel"], df["level"])):
            if level == "kernel":
                kparts.setdefault((kern, hws[i].kind, hws[i].name, name), []).append(i)
            else:
                sparts.setdefault(str(kern), []).append((name, i, hws[i]))
    grouped: dict = {}
    for (kern, kind, hwname, name), idx in kparts.items():
        df = load_dataset(name)
        sub = df.iloc[idx]
        rows = {c: sub[c].to_numpy() for c in ROW_SHAPE}
        if "page_size" in sub.columns:
            rows["page_size"] = sub["page_size"].to_numpy()
        grouped.setdefault((kern, kind), []).append((name, resolve_device(hwname), rows, sub["time_s"].to_numpy()))
    defaults = fit_defaults(grouped)
    defaults["stacks"] = {}
    for stack_name, items in sorted(sparts.items()):
        stack = get_stack(stack_name)
        if stack.roofline_only:
            continue
        bases = [(_base(load_dataset(n), i, h), float(load_dataset(n)["time_s"].iloc[i])) for n, i, h in items]
        c = fit_stack(stack, bases, defaults["families"])
        c["datasets"] = sorted({n for n, _, _ in items})
        defaults["stacks"][stack_name] = c
    defaults["datasets"] = list(names)
    return defaults


def _pairs_speedup_err(df, pred: np.ndarray) -> float | None:
    """Mean |predicted / measured speedup - 1| over rows paired with a dense row of the same shape (kernel rows: the
    baseline kernel attn-torch or the first dense kernel; whole-model rows: the same stack, model, level and run)."""
    d = df.assign(_pred=pred)
    key = ["hardware", "level", "batch", "seq_len", "n_heads", "n_kv_heads", "head_dim", "dtype"]
    key += [c for c in ("model", "weights", "gen_len") if c in d.columns]
    d[key] = d[key].astype(str)
    errs = []
    kern = d[d["level"] == "kernel"]
    if len(kern):
        dense = [k for k in dict.fromkeys(kern["kernel"]) if get_implementation(k).strategy == "dense"]
        base = "attn-torch" if "attn-torch" in dense else (dense[0] if dense else None)
        if base is not None:
            errs += _paired(kern, kern["kernel"] == base, key)
    whole = d[d["level"] != "kernel"]
    if len(whole):
        errs += _paired(whole, whole["strategy"] == "dense", key + ["kernel"])
    return float(np.mean(np.abs(errs))) if errs else None


def _paired(d, is_base, key) -> list[float]:
    b = d[is_base].groupby(key, as_index=False)[["time_s", "_pred"]].mean().rename(
        columns={"time_s": "_bm", "_pred": "_bp"})
    m = d[~is_base].merge(b, on=key, how="inner")
    if not len(m):
        return []
    return list((m["_bp"] / m["_pred"]) / (m["_bm"] / m["time_s"]) - 1.0)


def judge(name: str, defaults: dict | None = None) -> dict:
    df = load_dataset(name)
    pred = predict_rows(df, defaults=defaults)
    err = pred / df["time_s"].to_numpy() - 1.0
    return {"rows": int(len(df)), "mape": float(np.mean(np.abs(err))), "pred": pred, "err": err,
            "speedup_mape": _pairs_speedup_err(df, pred)}


def validate_all(names: list[str] | None = None) -> list[dict]:
    """One row per dataset: rows judged, levels, MAPE with the shipped defaults (uncalibrated) and with the defaults
    fitted on every other dataset (leave one dataset out), and the error of speedups over dense where there are
    pairs (leave one out)."""
    every = dataset_names()
    names = names or every
    out = []
    for name in names:
        df = load_dataset(name)
        unc = judge(name)
        loo = judge(name, fit_all([n for n in every if n != name]))
        out.append({"dataset": name, "level": ",".join(dict.fromkeys(df["level"])), "rows": unc["rows"],
                    "skipped": len(df.attrs.get("skipped", [])),
                    "mape_uncalibrated": unc["mape"], "mape_leave_one_out": loo["mape"],
                    "speedup_mape": loo["speedup_mape"], "speedup_mape_uncalibrated": unc["speedup_mape"]})
    return out


FITTED_MARKER = "# --- fitted defaults "


def _time(s: float) -> str:
    return f"{s * 1e6:.4g} us"


def fitted_block_text(defaults: dict, source: str) -> str:
    """The `fitted:` block of data/implementations.yaml (YAML text) for fitted defaults."""
    def flow(d: dict) -> str:
        return "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"

    lines = [FITTED_MARKER + "-" * (120 - len(FITTED_MARKER)),
             "# Written by `sparq-sim calibrate --defaults` (do not edit by hand; rerun it after changing a dataset, a",
             "# profile or a model above): the costs that travel, fitted on the judged rows of every shipped dataset.",
             "# Implementations: per device kind, host = host time per call (the software's), stream / unsplit /",
             "# gather = efficiencies relative to the profile's achieved bandwidth, topk_bytes = bytes-equivalent per",
             "# top-k element; families: the host cost per op of each framework family ('*': all of a kind), from the",
             "# implementations whose rows show a host floor; stacks: see simulator/stacks.py.",
             "fitted:",
             f"  source: \"{source}\"",
             "  families:"]
    for fam, kinds in sorted(defaults["families"].items()):
        lines.append(f"    '{fam}': {flow({k: _time(v) for k, v in sorted(kinds.items())})}")
    lines.append("  implementations:")
    for name, kinds in sorted(defaults["implementations"].items()):
        lines.append(f"    {name}:")
        for kind, c in sorted(kinds.items()):
            d = {"host": _time(c["host_s"])}
            d.update({f: f"{c[f]:.4g}" for f in ("stream", "unsplit", "gather", "topk_bytes")})
            d.update(rows=c["rows"], datasets="[" + ", ".join(c["datasets"]) + "]")
            lines.append(f"      {kind}: {flow(d)}")
    lines.append("  stacks:")
    for name, c in sorted(defaults["stacks"].items()):
        d = {"host_per_layer": _time(c["host_per_layer_s"])}
        d.update({f: f"{c[f]:.4g}" for f in STACK_EFFICIENCIES})
        d["cpu_attention"] = f"{c['cpu_attention_Bps'] / 1e9:.4g} GB/s"
        d.update(rows=c["rows"], datasets="[" + ", ".join(c["datasets"]) + "]")
        lines.append(f"    {name}: {flow(d)}")
    return "\n".join(lines) + "\n"


def with_fitted_block(yaml_text: str, block: str) -> str:
    """data/implementations.yaml with its fitted block (everything from the marker on) replaced by `block`."""
    at = yaml_text.find(FITTED_MARKER)
    head = yaml_text if at < 0 else yaml_text[:at]
    return head.rstrip("\n") + "\n" + block


def refit_defaults(source_note: str) -> tuple[dict, str]:
    """Fit the defaults on every shipped dataset; returns them and the new text of data/implementations.yaml."""
    names = dataset_names()
    defaults = fit_all(names)
    rows = sum(len(load_dataset(n)) for n in names)
    source = (f"sparq-sim calibrate --defaults on {rows} judged rows of {len(names)} datasets "
              f"({', '.join(names)}); {source_note}")
    text = with_fitted_block(IMPLEMENTATIONS_FILE.read_text(encoding="utf-8"), fitted_block_text(defaults, source))
    return defaults, text
