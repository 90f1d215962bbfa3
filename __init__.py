"""sparq-sim: bytes, time and speedup of SparQ Attention and other KV-sparse attention methods in LLM decoding.

The public API (imported lazily, so `sparq-sim` starts fast):

    predict(hardware=..., model=..., seq_len=..., batch=..., strategies=..., compression=..., ...) -> DataFrame
    predict_columns(...)          the same as numpy columns, without pandas
    ledger(...)                   per-operator bytes, FLOPs and time of one decode step (and prefill)
    replay(traces, hardware=...)  bytes a recorded trace really touches (layout, granularity, pages, cache), time, speedup
    load_hardware(name_or_path)   a bundled hardware profile by name/alias, or a YAML file
    load_model_spec(name_or_path) a built-in model spec, or a Hugging Face config.json
    STRATEGY_NAMES, STRATEGIES    the one registry of attention strategies
    UserError                     raised for bad input (one-line message)
    report.figures(...)           the plotly figures of `sparq-sim report`, for notebooks
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "predict": "simulator.predict",
    "predict_columns": "simulator.predict",
    "ledger": "simulator.ledger_table",
    "load_hardware": "hardware_profiles",
    "list_profiles": "hardware_profiles",
    "load_model_spec": "simulator.models",
    "ModelSpec": "simulator.models",
    "STRATEGY_NAMES": "simulator.strategies",
    "STRATEGIES": "simulator.strategies",
    "UserError": "simulator.errors",
    "replay": "simulator.replay",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name == "report":  # the plotly report module (imports plotly only when used)
        import importlib

        return importlib.import_module(".report", __name__)
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sparq_sim' has no attribute {name!r}")
