"""`sparq-sim predict` and `sparq-sim ledger`: one decode step (or a whole generation), per strategy and per
operator."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ..simulator.errors import UserError
from . import (ACT, BATCH, COMP, DEVICES, DTYPE, FMT, GPU, HW_FILE, K, KLAYOUT, KV_DTYPE, KVLOC, LW, MODEL, OUT, PAGE,
               QUIET, R, SEQ, STRATS, WLOC, _emit, _given, _hardware_arg, app)

PREDICT_TABLE_MAX_ROWS = 100_000  # a table is for reading; larger sweeps go to CSV, JSON or Parquet (streamed)


@app.command(epilog="Examples:\n\n  sparq-sim predict --gpu a100 --seq 4096\n\n"
             "  sparq-sim predict --gpu a100,h100 --seq 1k:128k:x2 --batch 1,16 --strategies dense,sparq -f csv\n\n"
             "  sparq-sim predict --model llama3-8b --compression 4,8,16 --format json -o pred.json\n\n"
             "  sparq-sim predict --gpu ipu --dtype fp16 --devices 4 --kv-location streaming\n\n"
             "  sparq-sim predict --gpu a100,h100 --seq 1:1000000 --batch 1,8 -o sweep.parquet\n\n"
             "  sparq-sim predict --gpu h100 --model llama3-8b --prompt-len 8k --gen-len 512 --batch 16\n\n"
             "  sparq-sim predict --gpu a100-40gb --model llama2-70b --devices 2 --pipeline 2 --batch 32\n\n"
             "Large sweeps: CSV, JSON and Parquet are evaluated and written in chunks of about 128k rows, so memory "
             "stays bounded whatever the number of rows (Parquet: one row group per chunk; a file is renamed into "
             "place only when complete). The table refuses more than 100,000 rows: use -f csv or -o FILE.parquet.")

def predict(gpu: Optional[str] = GPU, hardware_file: Optional[str] = HW_FILE, model: str = MODEL, seq: str = SEQ,
            batch: str = BATCH, strategies: str = STRATS, compression: str = COMP, dtype: str = DTYPE,
            kv_dtype: Optional[str] = KV_DTYPE, act: Optional[str] = ACT, devices: str = DEVICES, r: Optional[str] = R, k: Optional[str] = K,
            local_window: Optional[str] = LW, page_size: Optional[str] = PAGE, k_layout: str = KLAYOUT,
            kv_location: str = KVLOC, weights_location: str = WLOC,
            format: Optional[str] = typer.Option(None, "--format", "-f", help="table, json, csv or parquet (default: "
                                                 "from --output's suffix, else table). parquet needs --output."),
            output: Optional[str] = typer.Option(None, "--output", "-o", help="Write to this file (atomically) "
                                                 "instead of standard output; FILE.parquet writes Parquet."),
            legend: bool = typer.Option(True, "--legend/--no-legend", help="Explain the table's columns and the "
                                        "strategies' accuracy under it (table format)."),
            gen_len: Optional[str] = typer.Option(None, "--gen-len", help="Whole generations of this many tokens: "
                                                  "time to first token, mean decode step as the context grows, "
                                                  "end-to-end time and throughput (each step summed exactly)."),
            prompt_len: Optional[str] = typer.Option(None, "--prompt-len", help="With --gen-len: the prompt's "
                                                     "length(s), the context when decoding starts (default: --seq)."),
            weights_on_device: str = typer.Option("1", "--weights-on-device", help="Share of the weights kept on "
                                                  "the device (0-1; list allowed); the rest stays in host memory and "
                                                  "streams over the host link each step, overlapped (FlexGen)."),
            kv_on_device: str = typer.Option("1", "--kv-on-device", help="Share of the KV cache kept on the device "
                                             "(0-1; list allowed); the rest as --weights-on-device."),
            weights_on_disk: str = typer.Option("0", "--weights-on-disk", help="Share of the weights on the disk "
                                                "behind host memory (0-1; profiles with a disk tier, e.g. t4): "
                                                "read at the disk's rate, then over the host link (FlexGen)."),
            kv_on_disk: str = typer.Option("0", "--kv-on-disk", help="Share of the KV cache on the disk (0-1); its "
                                           "new rows written at the disk's write rate."),
            pipeline: str = typer.Option("1", "--pipeline", "--pp", help="Pipeline-parallel stages, each of --devices "
                                         "tensor-parallel devices (list allowed): the layers split between them."),
            microbatches: Optional[str] = typer.Option(None, "--microbatches", help="With --pipeline: micro-batches "
                                                       "of the batch in flight (default: one per stage)."),
            mla_decode: Optional[str] = typer.Option(None, "--mla-decode", help="Multi-head latent attention "
                                                     "(deepseek-v3): absorbed (default: attention over the cached "
                                                     "latent) or unabsorbed (rows expanded per head each step)."),
            quiet: bool = QUIET):
    """Predict bytes moved, time and speedup of one decode step (or a whole generation) for each strategy."""
    from ..simulator.output import (STREAM_FORMATS, csv_chunks, json_chunks, render_table, resolve_format,
                                   write_parquet, write_text)
    from ..simulator.predict import DEFAULT_CHUNK_ROWS, decoded, sweep

    fmt = resolve_format(format, output, STREAM_FORMATS)
    if fmt == "parquet" and not output:
        raise UserError("--format parquet writes a file: give --output FILE.parquet")
    if prompt_len is not None:
        if gen_len is None:
            raise UserError("--prompt-len goes with --gen-len (a whole generation); for one decode step give --seq")
        seq = _given(prompt_len, "--prompt-len", "the prompt's length(s)")
    sw = sweep(hardware=_hardware_arg(gpu, hardware_file), model=model, seq_len=seq, batch=batch,
               strategies=strategies, compression=compression, dtype=dtype, kv_dtype=kv_dtype, devices=devices, r=r,
               k=k, local_window=local_window, page_size=page_size, k_layout=k_layout, kv_location=kv_location,
               weights_location=weights_location, gen_len=_given(gen_len, "--gen-len", "tokens to generate"),
               mla_decode=mla_decode, act_dtype=act, weights_on_device=weights_on_device,
               kv_on_device=kv_on_device, pipeline=pipeline,
               microbatches=_given(microbatches, "--microbatches", "micro-batches in flight"),
               weights_on_disk=weights_on_disk, kv_on_disk=kv_on_disk)
    for note in sw.warnings:
        sys.stderr.write(f"warning: {note}\n")
    if fmt in ("parquet", "csv", "json"):
        from ..common.progress import Progress

        # a sweep of several chunks written to a file says how far it is (a table or a pipe stays as it is)
        with Progress(sw.rows, "predict", quiet=quiet or not output or sw.rows <= DEFAULT_CHUNK_ROWS,
                      unit="rows") as bar:
            def chunks():
                for c in sw.chunks():
                    yield c
                    bar.advance(len(c["time_s"]))
            if fmt == "parquet":
                write_parquet(output, chunks(), row_group_rows=DEFAULT_CHUNK_ROWS // 2)  # small cases: merged
            else:
                write_text(output, (csv_chunks if fmt == "csv" else json_chunks)(decoded(c) for c in chunks()))
    else:
        if sw.rows > PREDICT_TABLE_MAX_ROWS:
            raise UserError(f"the sweep has {sw.rows:,} rows, too many for a table (at most "
                            f"{PREDICT_TABLE_MAX_ROWS:,}); write them with -f csv or -o FILE.parquet (both stream)")
        from ..simulator import explain
        from ..simulator.output import PREDICT_GENERATION_TABLE, PREDICT_HEADER_COLUMNS, PREDICT_TABLE
        cols = decoded(sw.columns())
        text = render_table(cols, PREDICT_TABLE if sw.gen_len is None else PREDICT_GENERATION_TABLE,
                            title=explain.header(cols, auto_dtype=dtype.strip().lower() == "auto"),
                            drop_constant=PREDICT_HEADER_COLUMNS, titled=True)
        if not cols["fits_at_end" if sw.gen_len is not None else "fits"].all():
            text += ("NO in 'fits': weights + KV cache exceed device memory (try --devices N, --pipeline N or "
                     "--kv-location host)\n")
        if legend:
            notes = explain.legend(cols) + [n for c in dict.fromkeys(cols["compression"].tolist())
                                            if (n := explain.accuracy_note(dict.fromkeys(cols["strategy"].tolist()),
                                                                           c))]
            text += "".join(explain.wrap(n) for n in notes)
        _emit(text, output)


@app.command(epilog="Example:\n\n  sparq-sim ledger --gpu h100 --seq 8192 --strategies sparq --phase decode")
def ledger(gpu: Optional[str] = GPU, hardware_file: Optional[str] = HW_FILE, model: str = MODEL, seq: str = SEQ,
           batch: str = BATCH, strategies: str = typer.Option("sparq", "--strategies", help="Comma list or all."),
           compression: str = COMP, dtype: str = DTYPE, kv_dtype: Optional[str] = KV_DTYPE,
           act: Optional[str] = ACT,
           devices: int = typer.Option(1, "--devices", "-n", help="Tensor-parallel devices."),
           r: Optional[int] = R, k: Optional[int] = K,
           local_window: Optional[int] = LW, page_size: Optional[int] = PAGE, k_layout: str = KLAYOUT,
           kv_location: str = KVLOC, weights_location: str = WLOC,
           phase: str = typer.Option("decode", "--phase", help="decode, prefill or both."),
           weights_on_device: str = typer.Option("1", "--weights-on-device", help="Share of the weights kept on "
                                                 "the device (0-1); the rest streams from host memory."),
           kv_on_device: str = typer.Option("1", "--kv-on-device", help="Share of the KV cache kept on the device "
                                            "(0-1)."),
           weights_on_disk: str = typer.Option("0", "--weights-on-disk", help="Share of the weights on the disk "
                                               "behind host memory (0-1; profiles with a disk tier)."),
           kv_on_disk: str = typer.Option("0", "--kv-on-disk", help="Share of the KV cache on the disk (0-1)."),
           format: Optional[str] = FMT, output: Optional[str] = OUT):
    """Per-operator ledger of one step: bytes by kind and tier, FLOPs, time and bound of every operator."""
    from ..simulator.output import records, render_table, resolve_format, to_csv, to_json
    from ..simulator.ledger_table import ledger as ledger_frame

    if phase not in ("decode", "prefill", "both"):
        raise UserError(f"--phase must be decode, prefill or both, got {phase!r}")
    from ..simulator.ranges import parse_axis
    for flag, value, lowest in (("--devices", devices, 1), ("--r", r, 1), ("--k", k, 1),
                                ("--local-window", local_window, 0), ("--page-size", page_size, 1)):
        if value is not None:
            parse_axis(value, flag, minimum=lowest)  # the bounds predict checks: at least `lowest`, at most 1e15
    fmt = resolve_format(format, output)
    df = ledger_frame(hardware=_hardware_arg(gpu, hardware_file), model=model, seq_len=seq, batch=batch,
                      strategies=strategies, compression=compression, dtype=dtype, kv_dtype=kv_dtype, devices=devices,
                      r=r, k=k, local_window=local_window, page_size=page_size, k_layout=k_layout,
                      kv_location=kv_location, weights_location=weights_location,
                      phases=("decode", "prefill") if phase == "both" else (phase,), act_dtype=act,
                      weights_on_device=weights_on_device, kv_on_device=kv_on_device,
                      weights_on_disk=weights_on_disk, kv_on_disk=kv_on_disk)
    df["tiers"] = df["tier_bytes"].map(lambda d: ",".join(f"{k}={v:.0f}" for k, v in d.items()))
    cols = {c: df[c].to_numpy() for c in df.columns if c != "tier_bytes"}
    if fmt == "json":
        text = to_json(records({**cols, "tier_bytes": df["tier_bytes"].to_numpy()}))
    elif fmt == "csv":
        text = to_csv(cols)
    else:
        cols = _with_totals(df)
        fmt_b = lambda v: f"{v / 1e6:.3f}"  # noqa: E731
        spec = [("hardware", "hardware", str), ("strategy", "strategy", str), ("phase", "phase", str),
                ("op", "op", str), ("layers", "layers", lambda v: "-" if v != v else f"{v:g}"), ("weights MB", "weight_bytes", fmt_b),
                ("act MB", "act_read_bytes", lambda v: "-"), ("KV rd MB", "kv_read_bytes", fmt_b),
                ("KV wr MB", "kv_write_bytes", fmt_b), ("meta MB", "meta_read_bytes", lambda v: "-"),
                ("GFLOP", "flops", lambda v: f"{v / 1e9:.3f}"), ("FLOP/B", "arithmetic_intensity", lambda v: f"{v:.2f}"),
                ("ms", "time_s", lambda v: f"{v * 1e3:.4f}"), ("ideal ms", "ideal_time_s", lambda v: f"{v * 1e3:.4f}"),
                ("bound", "bound", str), ("tiers MB", "tiers", str)]
        cols["act_total"] = cols["act_read_bytes"] + cols["act_write_bytes"]
        cols["meta_total"] = cols["meta_read_bytes"] + cols["meta_write_bytes"]
        spec[6] = ("act MB", "act_total", fmt_b)
        spec[9] = ("meta MB", "meta_total", fmt_b)
        text = render_table(cols, spec, title="per-operator ledger: bytes (MB) and FLOPs per step, all layers; one "
                            "total row per strategy and phase", drop_constant=("hardware",))
    _emit(text, output)


def _with_totals(df) -> dict:
    """The ledger's columns for its table: every operator, then after each (hardware, strategy, phase) a total row
    (bytes, FLOPs and times summed; tiers in MB like the byte columns)."""
    import numpy as np

    sums = ["weight_bytes", "act_read_bytes", "act_write_bytes", "kv_read_bytes", "kv_write_bytes", "meta_read_bytes",
            "meta_write_bytes", "bytes", "flops", "time_s", "ideal_time_s"]
    rows = []
    for _, g in df.groupby(["hardware", "strategy", "phase"], sort=False):
        for _, r in g.iterrows():
            rows.append({**r.to_dict(), "tiers": ",".join(f"{k}={v / 1e6:.3f}" for k, v in r["tier_bytes"].items())})
        tot = {c: g[c].sum() for c in sums}
        tiers: dict = {}
        for d in g["tier_bytes"]:
            for k, v in d.items():
                tiers[k] = tiers.get(k, 0.0) + v
        rows.append({**g.iloc[0].to_dict(), **tot, "op": "total", "layers": np.nan, "bound": "-",
                     "arithmetic_intensity": tot["flops"] / tot["bytes"] if tot["bytes"] else 0.0,
                     "tiers": ",".join(f"{k}={v / 1e6:.3f}" for k, v in tiers.items())})
    keys = [c for c in rows[0] if c != "tier_bytes"]
    return {c: np.asarray([r[c] for r in rows], dtype=object if isinstance(rows[0][c], str) else None)
            for c in keys}
