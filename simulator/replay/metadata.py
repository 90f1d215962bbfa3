"""What a trace's metadata says: the strategy, dtypes, model and parameters replay needs (`_Setup`), and the checks of
the rows against the model's shapes."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..strategies import DEFAULT_PAGE_SIZE, get_strategy
from ..units import parse_dtype
from .flatten import _Flat, _flatten


@dataclass
class _Setup:
    trace_name: str
    strategy: str
    compression: float
    model: object          # ModelSpec or None
    kv_dtype: str
    dtype: str
    quest_page: int
    reallocate: bool
    index_dim: int = 0          # DSA: the indexer key's width d_I
    flat: _Flat | None = None   # the whole trace (`_trace_setup`); replay itself walks it batch by batch


def _meta_setup(meta: dict, where: str, name: str, model, dtype, kv_dtype) -> _Setup:
    """Strategy, dtypes, model and parameters from a trace's metadata (and the overrides)."""
    from ..models import ModelSpec, load_model_spec, spec_from_config

    strategy = get_strategy(meta.get("strategy")).name
    params = meta.get("params") or {}
    dtypes = meta.get("dtypes") or {}
    try:
        kvd = parse_dtype(kv_dtype or dtypes.get("kv") or "bf16", "kv dtype")
        dt = parse_dtype(dtype or dtypes.get("compute") or kvd)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    spec = None
    if model is not None:
        spec = load_model_spec(model)
    else:
        m = meta.get("model") or {}
        fields = {k: m[k] for k in ModelSpec.__dataclass_fields__ if k in m}
        try:
            spec = ModelSpec(**fields)
        except (TypeError, UserError):
            try:
                spec = spec_from_config(m, m.get("name", "model"), where)
            except UserError:
                spec = None
    head_dim = spec.head_dim if spec is not None else (meta.get("model") or {}).get("head_dim")
    if not isinstance(head_dim, int) or head_dim < 1:
        raise UserError(f"{where}: metadata names no model head_dim the simulator can use; pass --model NAME or a "
                        f"config.json")
    if spec is None:
        raise UserError(f"{where}: the trace's model is not one the simulator knows; pass --model NAME or a "
                        f"config.json for its shapes")
    comp = params.get("compression", 1.0)
    try:
        comp = float(comp)
    except (TypeError, ValueError):
        comp = 1.0
    qp = params.get("page_size") or DEFAULT_PAGE_SIZE
    # DSA: the indexer the run trained (its calibration metadata), else the simulator's rule for the model
    di = (meta.get("calibration") or {}).get("index_dim") if strategy == "dsa" else None
    di = di if isinstance(di, int) and not isinstance(di, bool) and di >= 1 else spec.indexer()[1]
    return _Setup(name, strategy, comp, spec, kvd, dt, int(qp), bool(params.get("reallocate", True)), int(di))


def _check_ranges(st: _Setup, where: str, comp_max: int, kv_head_max: int, layer_max: int) -> None:
    spec = st.model
    if comp_max >= spec.head_dim:
        raise UserError(f"{where}: component {comp_max} is outside [0, head_dim = {spec.head_dim})")
    if kv_head_max >= spec.n_kv_heads:
        raise UserError(f"{where}: kv_head {kv_head_max} is outside [0, {spec.n_kv_heads}) KV heads of "
                        f"{spec.name}")
    if layer_max >= spec.n_layers:
        raise UserError(f"{where}: layer {layer_max} is outside [0, {spec.n_layers}) layers of "
                        f"{spec.name}")


def _check_flat(st: _Setup, flat: _Flat, where: str) -> None:
    if flat.n:
        _check_ranges(st, where, int(flat.comp.max(initial=-1)), int(flat.kv_head.max()), int(flat.layer.max()))


def _trace_setup(trace, model, dtype, kv_dtype) -> _Setup:
    """Setup and the whole flattened trace of a Trace held in memory."""
    where = f"trace {str(trace.path)!r}" if trace.path is not None else "trace"
    name = str(trace.path) if trace.path is not None else "<trace>"
    st = _meta_setup(trace.metadata, where, name, model, dtype, kv_dtype)
    flat = _flatten(trace, where)
    _check_flat(st, flat, where)
    st.flat = flat
    return st
