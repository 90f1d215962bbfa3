"""`sparq-sim`: the command line. Thin: parse, call the core, render.

Heavy modules (pandas, torch, plotly) are imported inside the commands that need them, so `predict` starts fast.
Bad input prints one line `error: ...` to stderr and exits with status 2.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional

import typer

from ..simulator.errors import UserError
from ..simulator.interrupt import Interrupted, Terminated, catch_termination, ignore_signals, restore_signals

app = typer.Typer(
    name="sparq-sim",
    help="Bytes, time and speedup of SparQ and other sparse-attention methods in LLM decoding, per device.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
hardware_app = typer.Typer(help="List and show hardware profiles.", no_args_is_help=True, rich_markup_mode=None)
models_app = typer.Typer(help="List and show model specs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(hardware_app, name="hardware")
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            v = metadata.version("sparq-sim")
        except metadata.PackageNotFoundError:   # run from a checkout that was never installed
            v = "unknown (not installed)"
        _emit(f"sparq-sim {v}\n", None)
        raise typer.Exit(0)


@app.callback()
def _main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")) -> None:
    """Bytes, time and speedup of SparQ and other sparse-attention methods in LLM decoding, per device."""

# --- shared options ---------------------------------------------------------------------------------------------------
GPU = typer.Option(None, "--gpu", "--hardware", help="Device profile(s), comma list: a100, h100, h200, ipu, ... "
                   "(see `sparq-sim hardware list`). Default a100.")
HW_FILE = typer.Option(None, "--hardware-file", help="Your own profile YAML (same schema as hardware_profiles/).")
MODEL = typer.Option("llama2-7b", "--model", "-m", help="Model(s), comma list: built-in name or a Hugging Face "
                     "config.json path (see `sparq-sim models list`).")
SEQ = typer.Option("4096", "--seq", "-s", help="Context length(s): 4096, 1k,4k, 1024:131072:x2.")
BATCH = typer.Option("1", "--batch", "-b", help="Batch size(s): 1, 1,8,64, 1:64:x2.")
STRATS = typer.Option("all", "--strategies", help="Comma list of dense, sparq, h2o, flexgen, lm-infinite, quest; "
                      "or all.")
COMP = typer.Option("8", "--compression", "-c", help="Target compression C (list or range); sets r = d_h/C, "
                    "k = S/(2C) for SparQ, k = S/C for the others.")
DTYPE = typer.Option("auto", "--dtype", "--weights", help="Weights (and, unless --act, activations): auto (bf16 "
                     "where the device has it, else fp16), fp32, bf16, fp16, fp8, int8, int4, nvfp4, mxfp4; a scale "
                     "group as int4-g32 (scale bytes counted; int4 alone: groups of 128).")
KV_DTYPE = typer.Option(None, "--kv-dtype", "--kv", help="KV cache format (default: --dtype), e.g. fp8, int4-g32.")
ACT = typer.Option(None, "--act", help="Activations and the matrix arithmetic (default: as the weights' usual "
                   "kernels run: int4 computes in fp16, int8/fp8 W8A8); bf16 with quantised weights = weight-only.")
DEVICES = typer.Option("1", "--devices", "-n", help="Tensor-parallel devices (list allowed).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress or status lines on stderr (results and errors "
                     "still).")
R = typer.Option(None, "--r", help="SparQ: query components r (overrides the recipe).")
K = typer.Option(None, "--k", help="Positions / cache tokens k (overrides the recipe).")
LW = typer.Option(None, "--local-window", help="Local window l (SparQ default k/4, H2O k/2).")
PAGE = typer.Option(None, "--page-size", help="Quest page size (default 16).")
KLAYOUT = typer.Option("twice", "--k-layout", help="SparQ K storage: twice (extra S-contiguous copy) or once.")
KVLOC = typer.Option("auto", "--kv-location", help="Where the KV cache lives: auto (first tier with room), a tier "
                     "of the profile (hbm, sram, streaming, ...) or host (stream it over the host link).")
WLOC = typer.Option("auto", "--weights-location", help="Where the weights live (same choices as --kv-location).")
FMT = typer.Option(None, "--format", "-f", help="table, json or csv (default: from --output's suffix, else table).")
OUT = typer.Option(None, "--output", "-o", help="Write to this file (atomically) instead of standard output.")


def _emit(text: str, output: Optional[str]) -> None:
    from ..simulator.output import write_atomic, write_stdout
    if output:
        write_atomic(output, text)
    else:
        write_stdout(text)


def _given(value: Optional[str], flag: str, what: str = "a value") -> Optional[str]:
    """None stays None (the flag was not given); an empty or blank value is an error, never "not given"."""
    if value is not None and not str(value).strip():
        raise UserError(f"{flag} is empty; give {what} (or leave {flag} out)")
    return value


def _hardware_arg(gpu: Optional[str], hardware_file: Optional[str]):
    _given(hardware_file, "--hardware-file", "a profile YAML file")
    items = []
    if gpu is not None:
        from ..simulator.ranges import parse_names
        items += parse_names(gpu, "--gpu")
    if hardware_file:
        items.append(hardware_file if hardware_file.endswith((".yaml", ".yml")) or "/" in hardware_file
                     else "./" + hardware_file)
    return items or ["a100"]
def _command_line(ctx: typer.Context, name: str) -> str:
    """The running command as the user gave it (options set on the command line only), for self-describing output."""
    import shlex

    words = ["sparq-sim", name]
    for p in ctx.command.params:
        src = ctx.get_parameter_source(p.name)
        if src is None or getattr(src, "name", "") != "COMMANDLINE":
            continue
        v = ctx.params.get(p.name)
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            words += [p.opts[0], str(item)]
    return " ".join(shlex.quote(w) for w in words)



# the commands register themselves on `app` when imported, in the order `--help` lists them
from . import predict, listings, measurements, reference, report_replay  # noqa: E402,F401


def _one_line(msg: str) -> str:
    """The message as one printable line: a value quoted from a file may hold newlines or other line breaks
    (\\x1e, \\u2028, ...) and control characters; they are shown escaped."""
    if msg.isprintable():
        return msg
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the typer app, turning bad input into one line on stderr and exit status 2; Ctrl-C into one
    line and 130; SIGTERM, SIGHUP and SIGQUIT into one line and 128 + the signal (temporary files removed on the way);
    a failing standard output into one line and 2; a reader that went away (`| head`) into a quiet 0."""
    for stream in (sys.stdout, sys.stderr):   # a name a terminal cannot show (PYTHONIOENCODING=ascii) is escaped
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    saved = catch_termination()
    shown = warnings.showwarning
    warnings.showwarning = _warning_line   # a warning is one line, "warning: ...", as the CLI's errors are
    try:
        return _run(argv)
    finally:
        warnings.showwarning = shown
        if argv is None:   # the sparq-sim process: a late signal must not become a traceback or a death by signal
            ignore_signals()
        else:              # called in-process (tests, notebooks): leave the caller's handlers as they were
            restore_signals(saved)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    _say(f"warning: {message}\n")


def _say(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):   # stderr closed or failing too: the status still tells
        pass


def _quiet_stdout() -> None:
    """Standard output failed or went away: point it at /dev/null so that Python's own flush at exit stays quiet."""
    try:
        sys.stdout = open(os.devnull, "w")
    except OSError:
        pass


def _run(argv: list[str] | None) -> int:
    from ..simulator.output import ReaderGone

    try:
        rv = app(args=argv, prog_name="sparq-sim", standalone_mode=False)
        if rv == 130:   # typer turns a Ctrl-C into Exit(130) and, not standalone, returns the code
            _say("interrupted\n")
            return 130
        if sys.stdout is not None:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                raise ReaderGone() from None
            except OSError as e:
                raise UserError(f"cannot write to standard output: {e.strerror or e}") from None
    except UserError as e:
        _say(f"error: {_one_line(str(e))}\n")
        return 2
    except Interrupted as e:  # record, measure, evaluate: what was kept on disk
        _say(f"interrupted: {e}\n")
        return 130
    except KeyboardInterrupt:
        _say("interrupted\n")
        return 130
    except Terminated as e:
        _say(f"terminated by {e.name}; no output file was left half-written\n")
        return 128 + e.signum
    except (BrokenPipeError, ReaderGone):  # the reader (e.g. `head`) went away: not an error
        _quiet_stdout()
        return 0
    except OSError as e:   # the environment failed under a command (an I/O error, a file gone): one line all the same
        _quiet_stdout()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _say(f"error: {_one_line(e.strerror or str(e))}{where}\n")
        return 2
    except Exception as e:  # click's exceptions (typer vendors its own copy of click in recent releases)
        kind = type(e).__name__
        if kind == "NoArgsIsHelpError":  # a bare group: show its help
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                sys.stdout.write(ctx.get_help() + "\n")
            return 0
        if kind == "Abort":
            _say("interrupted\n")
            return 130
        if kind == "Exit":
            code = int(getattr(e, "exit_code", 0) or 0)
            if code == 130:   # typer turns a Ctrl-C into Exit(130) on its own
                _say("interrupted\n")
            return code
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            msg = " ".join(e.format_message().split())
            _say(f"error: {msg} (see `sparq-sim --help`)\n")
            return 2
        raise
    return rv if isinstance(rv, int) else 0
