"""The listings: `sparq-sim strategies`, `hardware list|show`, `models list|show`."""

from __future__ import annotations

from typing import Optional

import typer

from ..simulator.errors import UserError
from . import FMT, _emit, app, hardware_app, models_app


def _listing_format(fmt: Optional[str]) -> str:
    """--format of the list and show commands: table (the default) or json."""
    f = "table" if fmt is None else fmt.strip().lower()
    if f not in ("table", "json"):
        raise UserError(f"unknown --format {fmt!r}; accepted: table, json")
    return f


@app.command()

def strategies(format: Optional[str] = FMT):
    """List the attention strategies of the registry."""
    format = _listing_format(format)
    from ..simulator.strategies import STRATEGIES
    from ..simulator.output import to_json
    if format == "json":
        _emit(to_json([s.__dict__ for s in STRATEGIES.values()]), None)
        return
    lines = [f"{s.name:12s} {s.title}: {s.summary} [params: {', '.join(s.params) or '-'}] ({s.reference})"
             for s in STRATEGIES.values()]
    _emit("\n".join(lines) + "\n", None)


@hardware_app.command("list")
def hardware_list(format: Optional[str] = FMT):
    """List the bundled hardware profiles."""
    format = _listing_format(format)
    from ..hardware_profiles import list_profiles
    from ..simulator.output import to_json
    profs = list_profiles()
    if format == "json":
        _emit(to_json([p.to_dict() for p in profs]), None)
        return
    lines = [f"{'name':16s} {'kind':4s} {'memory':>10s} {'peak BW':>11s} {'eff':>5s} {'bf16/fp16':>11s}  aliases"]
    for p in profs:
        t = p.memory[0]
        mm = p.matrix.peak_flops
        f16 = mm.get("bf16", mm.get("fp16", 0))
        cap = sum(x.capacity_bytes for x in p.memory)
        lines.append(f"{p.name:16s} {p.kind:4s} {cap / 1e9:8.1f}GB {t.bandwidth_Bps / 1e9:7.0f}GB/s "
                     f"{t.efficiency:5.2f} {f16 / 1e12:6.1f}TFLOP/s  {', '.join(p.aliases)}".rstrip())
    _emit("\n".join(lines) + "\n", None)


@hardware_app.command("show")
def hardware_show(name: str = typer.Argument(..., help="Profile name, alias or YAML path."),
                  format: Optional[str] = typer.Option("yaml", "--format", "-f", help="yaml (the file) or json.")):
    """Show one profile: the YAML file with its sources, or the parsed SI values as JSON."""
    from ..hardware_profiles import load_hardware
    from ..simulator.output import to_json
    p = load_hardware(name)
    if format == "json":
        _emit(to_json(p.to_dict()), None)
    elif format == "yaml":
        with open(p.path, encoding="utf-8") as f:
            _emit(f"# {p.path} (sha256 {p.digest})\n" + f.read(), None)
    else:
        raise UserError(f"unknown --format {format!r}; accepted: yaml, json")


@models_app.command("list")
def models_list(format: Optional[str] = FMT):
    """List the built-in model specs."""
    format = _listing_format(format)
    from ..simulator.models import BUILTIN
    from ..simulator.output import to_json
    if format == "json":
        _emit(to_json([m.to_dict() for m in BUILTIN.values()]), None)
        return
    lines = [f"{'name':14s} {'params':>8s} {'layers':>6s} {'d_model':>7s} {'heads':>5s} {'kv':>3s} {'d_h':>4s} "
             f"{'d_ff':>6s} {'vocab':>7s} {'mlp':6s} {'tied':4s} {'KV/token':>10s}"]
    for m in BUILTIN.values():
        lines.append(f"{m.name:14s} {m.n_params / 1e9:7.2f}B {m.n_layers:6d} {m.d_model:7d} {m.n_heads:5d} "
                     f"{m.n_kv_heads:3d} {m.head_dim:4d} {m.d_ff:6d} {m.vocab_size:7d} "
                     f"{'gated' if m.gated_mlp else 'plain':6s} {'yes' if m.tied_embeddings else 'no':4s} "
                     f"{m.kv_elements_per_token() * 2 / 1024:7.1f}KiB")
    _emit("\n".join(lines) + "\n", None)


@models_app.command("show")
def models_show(name: str = typer.Argument(..., help="Built-in name or path to a config.json / model folder."),
                format: Optional[str] = FMT):
    """Show one model spec (parameters, KV bytes per token in bf16)."""
    format = _listing_format(format)
    from ..simulator.models import load_model_spec
    from ..simulator.output import to_json
    m = load_model_spec(name)
    d = m.to_dict()
    if format == "json":
        _emit(to_json(d), None)
        return
    lines = [f"{key:22s} {v}" for key, v in d.items()]
    lines.append(f"{'kv_bytes_per_token':22s} {m.kv_elements_per_token() * 2} (bf16)")
    _emit("\n".join(lines) + "\n", None)
