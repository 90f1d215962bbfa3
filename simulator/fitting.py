"""Fitting the implementation models to measurements.

Three uses, one routine (`fit_costs`): an implementation's relative costs (host time, stream / gather efficiencies
relative to each profile's achieved bandwidth, top-k bytes per element) fitted on its measured rows, which may come from
several devices of one kind, each predicted with its own profile.
  - `fit`: one device, per kernel (what `validate --holdout` and `calibrate MEASURED.csv` do), returned as the absolute
    parameters of that profile;
  - `fit_defaults`: every shipped dataset (or all but one, for leave-one-dataset-out), the defaults written at the end
    of data/implementations.yaml by `sparq-sim calibrate --defaults`;
  - the framework families' host cost per op, from the implementations whose host cost the rows identify.

Since time = overlap(host, device) >= host on a GPU, the host cost is the fastest call when the rows show a floor (calls
with twice the device work taking barely longer: `host_floor_seen`; or a fastest call more than HOST_EVIDENCE times
its fitted device time), else it keeps its prior; the device terms are fitted by least squares on relative
error on the rows more than `host_margin` above the host cost, each parameter scaled by its prior and pulled toward it
with the weight of `prior_rows` rows, so a parameter the data cannot see keeps its prior. On a CPU (time = host +
device) one linear fit over every row. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from ..hardware_profiles import HardwareProfile
from .errors import UserError
from .implementations import (Implementation, _bandwidth, _cache_speedup, absolute_params, default_costs, features,
                              get_implementation, op_model, op_times, overlapped, prior_costs)

FLOOR_SPAN = 2.0       # a host floor shows as calls with at least twice the device work ...
FLOOR_FLAT = 1.25      # ... taking less than 25 % longer than the fastest call,
HOST_EVIDENCE = 2.0    # or as a fastest call taking more than twice its fitted device time
CLIP = (0.05, 20.0)    # a fitted parameter stays between 1/20 and 20 times its prior
DEVICE_TERMS = (("stream", "stream_bytes", "inv_stream"), ("unsplit", "unsplit_stream_bytes", "inv_unsplit"),
                ("gather", "gather_bytes", "inv_gather"), ("topk_bytes", "topk_elements", "topk_s"))


def _ridge(M: np.ndarray, y: np.ndarray, prior_rows: float) -> np.ndarray:
    """min |M x - y|^2 + prior_rows |x - 1|^2: each column is in units of its prior, so x = 1 is the prior."""
    n = M.shape[1]
    return np.linalg.solve(M.T @ M + prior_rows * np.eye(n), M.T @ y + prior_rows * np.ones(n))


def fit_costs(impl: Implementation, parts: list[tuple[HardwareProfile, dict, np.ndarray]],
              families: dict | None = None, prior_rows: float = 0.3, host_margin: float = 1.5,
              start: dict | None = None) -> dict:
    """Relative costs of one implementation fitted on measured rows from one or more devices of one kind.

    `parts`: (profile, rows, measured seconds) per device. The fit starts from, and is pulled toward, `start` (default:
    the priors with the `families`' host cost per op). Returns the costs (host_s, stream, unsplit, gather, topk_bytes)
    with `rows` and `host_identified` (whether the rows show a host floor)."""
    hw0 = parts[0][0]
    if any(hw.kind != hw0.kind for hw, _, _ in parts):
        raise UserError(f"kernel {impl.name}: one fit spans one kind of device")
    prior = dict(start) if start is not None else prior_costs(impl, hw0, families)
    t = np.concatenate([np.asarray(tt, dtype=np.float64) for _, _, tt in parts])
    if len(t) == 0:
        raise UserError("nothing to fit: no measurement rows")
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise UserError("measured times must be positive and finite")
    cols, dev_fixed = {c: [] for c, _, _ in DEVICE_TERMS}, []
    for hw, rows, tt in parts:
        f = features(impl, rows, hw)
        p0 = absolute_params(impl, hw, dict(prior, host_s=0.0))
        speed = _cache_speedup(f, hw)
        for c, fkey, pkey in DEVICE_TERMS:
            cols[c].append(f[fkey] * p0[pkey] / (speed if c != "topk_bytes" else 1.0))
        dev_fixed.append(np.full(len(tt), p0["device_fixed_s"]))
    F = {c: np.concatenate(v) for c, v in cols.items()}
    dev_fixed = np.concatenate(dev_fixed)
    used = [c for c, _, _ in DEVICE_TERMS if F[c].any()]
    M_all = np.stack([F[c] for c in used], axis=1) if used else np.zeros((len(t), 0))

    def fit_device(sel, host=None):
        """Multipliers on the prior device terms (and on the host cost when `host` is None: the CPU's sum)."""
        if not sel.any() or (not used and host is not None):
            return np.ones(len(used)), host
        if host is None:   # time = host + device: host is a free column, any value from zero up
            h0 = max(prior["host_s"], 1e-9)
            M = np.concatenate([np.full((len(t), 1), h0), M_all], axis=1)[sel] / t[sel, None]
            x = _ridge(M, 1.0 - dev_fixed[sel] / t[sel], prior_rows)
            return np.clip(x[1:], *CLIP), max(float(x[0]), 0.0) * h0
        M = M_all[sel] / t[sel, None]
        return np.clip(_ridge(M, 1.0 - dev_fixed[sel] / t[sel], prior_rows), *CLIP), host

    identified = False
    if overlapped(hw0):
        work = dev_fixed + M_all.sum(axis=1)       # device time at the priors: what the rows ask of the device
        host = float(t.min())
        x, _ = fit_device(t > host_margin * host, host)
        fastest = int(np.argmin(t))
        # a floor: calls with twice the work barely slower, or a fastest call far above its fitted device time
        if host_floor_seen(work, t) or t[fastest] > HOST_EVIDENCE * (dev_fixed + M_all @ x)[fastest]:
            identified = True
        else:   # no floor in the rows: the host cost is not seen; keep the prior below every measured call
            host = float(min(prior["host_s"], t.min()))
            x, _ = fit_device(t > host_margin * host, host)
    else:
        x, host = fit_device(np.ones(len(t), dtype=bool))
        identified = True
    out = dict(prior, host_s=host)
    for c, v in zip(used, x):   # x multiplies the prior time of a term: efficiencies divide, top-k bytes multiply
        out[c] = prior[c] * v if c == "topk_bytes" else prior[c] / v
    out.update(rows=int(len(t)), host_identified=identified)
    return out


def host_floor_seen(work: np.ndarray, t: np.ndarray, span: float = FLOOR_SPAN, flat: float = FLOOR_FLAT) -> bool:
    """Whether the rows show a host floor: two calls whose device work differs by `span` or more (at the priors) yet
    whose times differ by less than `flat`, the faster of them the fastest call measured (so it is the floor, not a
    plateau of the device). Without such a pair the fastest call may be device bound, and taking it as the host cost
    would carry a device time to other devices as software."""
    order = np.argsort(t)
    fastest = order[0]
    near = t <= flat * t[fastest]
    return bool(np.any(near & (work >= span * work[fastest])) or np.any(near & (work * span <= work[fastest])))


def _fit_op_scale(impl: Implementation, rows: dict, t: np.ndarray, hw: HardwareProfile, prior_rows: float) -> dict:
    """Op model: one factor per primitive on its measured cost (1 = the micro-benchmark's figure), least squares on
    relative error, pulled toward 1 with the weight of `prior_rows` rows so a primitive the rows cannot see keeps 1."""
    times = {op: v for op, v in op_times(impl, rows, hw).items() if np.any(v > 0)}
    cols = list(times)
    M = np.stack([times[c] for c in cols], axis=1) / t[:, None]
    x = np.clip(_ridge(M, np.ones(len(t)), prior_rows), *CLIP)
    return {"op_scale": {c: float(v) for c, v in zip(cols, x)}}


def fit(kernels, rows: dict, measured_s, hw: HardwareProfile, prior_rows: float = 0.3, host_margin: float = 1.5,
        defaults: dict | None = None) -> dict:
    """Fit each kernel's costs on one device. Returns {kernel: absolute parameters on `hw`} (see params_for)."""
    kernels = np.asarray(kernels, dtype=object)
    t_all = np.asarray(measured_s, dtype=np.float64)
    if len(t_all) == 0:
        raise UserError("nothing to fit: no measurement rows")
    if np.any(~np.isfinite(t_all)) or np.any(t_all <= 0):
        raise UserError("measured times must be positive and finite")
    params = {}
    for name in dict.fromkeys(kernels.tolist()):
        impl = get_implementation(name)
        sel = kernels == name
        sub = {c: np.asarray(v)[sel] for c, v in rows.items()}
        if op_model(impl, hw):
            params[name] = _fit_op_scale(impl, sub, t_all[sel], hw, prior_rows)
            continue
        # start from what the kernel costs on this device before the fit (the fitted defaults, the priors)
        start = default_costs(impl, hw, defaults)
        start["host_s"] *= (hw.calibration or {}).get("host_scale", 1.0)
        costs = fit_costs(impl, [(hw, sub, t_all[sel])], prior_rows=prior_rows, host_margin=host_margin, start=start)
        params[name] = absolute_params(impl, hw, costs)
    return params


def fit_defaults(parts: dict[tuple[str, str], list[tuple[str, HardwareProfile, dict, np.ndarray]]]) -> dict:
    """The fitted defaults from kernel rows of several datasets.

    `parts`: (kernel, device kind) -> [(dataset, profile, rows, seconds), ...]. First the implementations whose host
    cost the rows identify give each family's host cost per op (the median over its implementations; '*' the median
    over all, per kind); then every implementation is fitted with those family costs as its host prior."""
    per_op: dict[tuple[str, str], list[float]] = {}
    for (kernel, kind), items in parts.items():
        impl = get_implementation(kernel)
        c = fit_costs(impl, [(hw, rows, t) for _, hw, rows, t in items], families={})
        if c["host_identified"] and impl.host_ops > 0:
            per_op.setdefault((impl.family, kind), []).append(c["host_s"] / impl.host_ops)
            per_op.setdefault(("*", kind), []).append(c["host_s"] / impl.host_ops)
    families: dict[str, dict[str, float]] = {}
    for (fam, kind), v in sorted(per_op.items()):
        families.setdefault(fam, {})[kind] = float(np.median(v))
    impls: dict[str, dict[str, dict]] = {}
    for (kernel, kind), items in sorted(parts.items()):
        impl = get_implementation(kernel)
        c = fit_costs(impl, [(hw, rows, t) for _, hw, rows, t in items], families)
        c["datasets"] = sorted({ds for ds, _, _, _ in items})
        impls.setdefault(kernel, {})[kind] = c
    return {"implementations": impls, "families": families}


def calibration_block(params: dict, hw: HardwareProfile, source: str, rows: int) -> dict:
    """The `calibration:` block of a profile YAML for fitted parameters (efficiencies relative to peak bandwidth)."""
    kernels = {}
    for name, p in params.items():
        impl = get_implementation(name)
        if "op_scale" in p and "fixed_s" not in p:   # op model: factors on the micro-benchmarked costs
            kernels[name] = {"op_scale": {op: round(v, 4) for op, v in p["op_scale"].items()}}
            continue
        bw, _ = _bandwidth(impl, hw)
        kernels[name] = {"fixed": f"{p['fixed_s'] * 1e6:.4g} us", "device_fixed": f"{p['device_fixed_s'] * 1e6:.4g} us",
                         "stream_efficiency": round(float(1.0 / (bw * p["inv_stream"])), 4),
                         "unsplit_efficiency": round(float(1.0 / (bw * p["inv_unsplit"])), 4),
                         "gather_efficiency": round(float(1.0 / (bw * p["inv_gather"])), 4),
                         "topk_per_element": f"{p['topk_s'] * 1e9:.4g} ns"}
    return {"source": source, "rows": int(rows), "kernels": kernels}


def fit_stack(stack, items: list, families: dict | None = None, prior_rows: float = 1.0, iterations: int = 40) -> dict:
    """A software stack's costs fitted on whole-model rows: `items` = [(RowBase, measured seconds), ...].

    Least squares on the log of predicted / measured time over the costs in log space (Gauss-Newton with a numerical
    Jacobian, damped), pulled toward the priors with the weight of `prior_rows` rows per factor e (log e = 1), each
    cost kept within its physical range (stacks.BOUNDS; a host cost within 1/50 and 50 times its prior). Costs no
    row is sensitive to keep their priors."""
    from .stacks import BOUNDS, STACK_COSTS, prior_stack_costs, row_time

    prior = prior_stack_costs(stack, families)
    names = [n for n in STACK_COSTS if prior[n] > 0]
    logp0 = np.log(np.array([prior[n] for n in names]))
    lo = np.array([np.log(BOUNDS[n][0]) if n in BOUNDS else logp0[j] - np.log(50.0) for j, n in enumerate(names)])
    hi = np.array([np.log(BOUNDS[n][1]) if n in BOUNDS else logp0[j] + np.log(50.0) for j, n in enumerate(names)])
    meas = np.log(np.array([t for _, t in items], dtype=np.float64))

    def residuals(logp):
        c = dict(prior, **{n: float(np.exp(v)) for n, v in zip(names, logp)})
        return np.log(np.array([row_time(stack, c, b) for b, _ in items])) - meas

    x = logp0.copy()
    h = 1e-3
    r = residuals(x)
    J0 = np.stack([(residuals(x + h * np.eye(len(x))[j]) - r) / h for j in range(len(x))], axis=1)
    active = np.abs(J0).max(axis=0) > 1e-6 if len(x) else np.zeros(0, dtype=bool)
    lam = 1e-2
    cost = r @ r + prior_rows * ((x - logp0) @ (x - logp0))
    for _ in range(iterations):
        J = np.stack([(residuals(x + h * np.eye(len(x))[j]) - r) / h if active[j] else np.zeros(len(r))
                      for j in range(len(x))], axis=1)
        A = J.T @ J + prior_rows * np.eye(len(x)) + lam * np.eye(len(x))
        g = J.T @ r + prior_rows * (x - logp0)
        step = -np.linalg.solve(A, g) * active
        x_new = np.clip(x + step, lo, hi)
        r_new = residuals(x_new)
        cost_new = r_new @ r_new + prior_rows * ((x_new - logp0) @ (x_new - logp0))
        if cost_new < cost:
            x, r, cost, lam = x_new, r_new, cost_new, lam / 3
            if np.abs(step).max() < 1e-5:
                break
        else:
            lam *= 5
            if lam > 1e6:
                break
    out = dict(prior, **{n: float(np.exp(v)) for n, v in zip(names, x)})
    out["rows"] = len(items)
    out["fitted"] = [n for n, a in zip(names, active) if a]
    return out


MIN_KERNEL_ROWS = 6   # a kernel with at least this many rows on the device also gets a fit of its own
HUBER = 0.25          # log errors beyond this count linearly in the device fit (about 28 % off)


def fit_device(df, hw: HardwareProfile, defaults: dict | None = None, host_prior: float = 1.0,
               bandwidth_prior: float = 0.05) -> dict:
    """Few-shot calibration of a device: the two factors that travel least, fitted on whatever rows were measured
    there, with every implementation's and stack's costs kept at their defaults.

    host_scale multiplies every host cost (a faster or slower host CPU and Python), bandwidth_scale the achieved
    memory bandwidth of the profile (a datasheet or efficiency that does not hold). Three dense rows at three lengths
    identify both when one of them is host bound; a factor the rows cannot see stays at 1. Host costs are the
    software's and travel well, so the host factor is held toward 1 with the weight of `host_prior` rows per factor
    e; a profile's bandwidth is often the assumption (an IPU's streaming memory), so that pull is light
    (`bandwidth_prior`). Least squares on the log error (linear beyond HUBER, so that a few rows the model cannot
    explain do not drag the factors), over a grid from 1/20 to 20 refined twice.
    Returns {'host_scale', 'bandwidth_scale', 'rows', 'mape_before', 'mape_after'}."""
    import dataclasses

    from .fidelity import ROW_SHAPE, _base, predict_rows
    from .implementations import combine, kernel_time_parts
    from .stacks import get_stack, row_time, scaled_base, stack_costs

    t = df["time_s"].to_numpy(dtype=np.float64)
    kern = (df["level"] == "kernel").to_numpy() if "level" in df.columns else np.ones(len(df), dtype=bool)
    base = dataclasses.replace(hw, calibration=dict(hw.calibration or {}, host_scale=1.0, bandwidth_scale=1.0))
    # kernel rows: their parts at factors 1, scaled below (a kernel's time is linear in both factors' inverses)
    cols = {c: df[c].to_numpy()[kern] for c in ROW_SHAPE}
    if "page_size" in df.columns:
        cols["page_size"] = df["page_size"].to_numpy()[kern]
    parts = kernel_time_parts(df["kernel"].to_numpy()[kern], cols, base, None, defaults) if kern.any() else None
    # whole-model rows: their stack-independent parts at factors 1, scaled to first order at each trial
    whole = [(i, get_stack(str(df["kernel"].iloc[i])), _base(df, i, base)) for i in np.flatnonzero(~kern)]
    costs = {s.name: stack_costs(s, defaults) for _, s, _ in whole}

    def predictions(eta, beta):
        out = np.empty(len(t))
        if parts is not None:
            out[kern] = combine(parts, base, eta, beta)
        for i, s, b in whole:
            out[i] = row_time(s, costs[s.name], scaled_base(b, eta, beta))
        return out

    def loss(eta, beta):   # Huber on the log errors: rows the model cannot explain do not drag the factors
        r = np.abs(np.log(predictions(eta, beta) / t))
        huber = np.where(r <= HUBER, r ** 2, 2 * HUBER * r - HUBER ** 2)
        return float(huber.sum() + host_prior * np.log(eta) ** 2 + bandwidth_prior * np.log(beta) ** 2)

    eta0 = (hw.calibration or {}).get("host_scale", 1.0)
    beta0 = (hw.calibration or {}).get("bandwidth_scale", 1.0)
    best, span = (0.0, 0.0), np.log(20.0)
    for _ in range(3):   # a coarse grid, then two finer ones around the best point (log factors)
        grid = np.linspace(-span, span, 21)
        scores = [(loss(eta0 * np.exp(best[0] + a), beta0 * np.exp(best[1] + b)), a, b) for a in grid for b in grid]
        _, a, b = min(scores)
        best, span = (best[0] + a, best[1] + b), span / 8
    eta, beta = eta0 * float(np.exp(best[0])), beta0 * float(np.exp(best[1]))
    # the errors before and after, exactly (the search scaled whole-model rows to first order)
    fitted = dataclasses.replace(hw, calibration=dict(hw.calibration or {}, host_scale=eta, bandwidth_scale=beta))
    before = np.mean(np.abs(predict_rows(df, hw, defaults) / t - 1))
    after = np.mean(np.abs(predict_rows(df, fitted, defaults) / t - 1))
    return {"host_scale": round(eta, 4), "bandwidth_scale": round(beta, 4), "rows": int(len(t)),
            "mape_before": float(before), "mape_after": float(after)}
