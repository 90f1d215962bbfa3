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
    w = max(map(len, STRATEGIES))
    lines = [f"{s.name:{w}s} {s.title}: {s.summary} [params: {', '.join(s.params) or '-'}] ({s.reference})"
             + (f" [also: {', '.join(s.aliases)}]" if s.aliases else "") for s in STRATEGIES.values()]
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
    def attention(m):
        kind = (f"MLA {m.kv_lora_rank}+{m.qk_rope_head_dim}" if m.is_mla else
                "MHA" if m.n_kv_heads == m.n_heads else "MQA" if m.n_kv_heads == 1 else f"GQA g={m.group_size}")
        if m.sliding_window is not None:
            kind += (f", window {m.sliding_window}" if m.global_every is None else
                     f", window {m.sliding_window} ({m.global_every - 1} of {m.global_every} layers)")
        return kind

    def mlp(m):
        base = "gated" if m.gated_mlp else "plain"
        if not m.is_moe:
            return f"{base} {m.d_ff}"
        shared = f" +{m.n_shared_experts} shared" if m.n_shared_experts else ""
        return f"MoE {m.experts_per_token}/{m.n_experts} x {m.d_ff_expert}{shared}"

    rows = [("name", "params", "active", "layers", "d_model", "heads", "kv", "d_h", "attention", "mlp", "vocab",
             "context", "tied", "KV/token")]
    for m in BUILTIN.values():
        rows.append((m.name, f"{m.n_params / 1e9:.2f}B", f"{m.active_params / 1e9:.2f}B", str(m.n_layers),
                     str(m.d_model), str(m.n_heads), str(m.n_kv_heads), str(m.head_dim), attention(m), mlp(m),
                     str(m.vocab_size), f"{m.max_position:,}", "yes" if m.tied_embeddings else "no",
                     f"{m.kv_elements_per_token() * 2 / 1024:.1f}KiB"))
    right = {1, 2, 3, 4, 5, 6, 7, 10, 11, 13}
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines += ["KV/token: bf16 K and V (MLA: its latent row) one token adds in every layer; a windowed layer keeps at "
              "most its window.", "active: parameters one token uses (MoE: its experts only). --model also takes a "
              "Hugging Face id (local cache, or the aliases in `sparq-sim models show NAME`) or a config.json."]
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
    from ..simulator.models import HF_ALIASES
    ids = [i for i, n in HF_ALIASES.items() if n == m.name]
    if ids:
        lines.append(f"{'hugging_face_ids':22s} {', '.join(ids)} (--model takes these too)")
    _emit("\n".join(lines) + "\n", None)
