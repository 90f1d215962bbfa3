"""Ctrl-C in the long-running commands (record, measure, evaluate): a complete output file or none, and one line.

- `interruptible(describe)`: the body of a command. The first SIGINT raises KeyboardInterrupt as usual; further ones
  are ignored while the command cleans up (temporary files removed), so a second Ctrl-C cannot leave one behind. The
  KeyboardInterrupt leaves as `Interrupted(describe())`, whose message says what is on disk; the CLI prints
  ``interrupted: <message>`` and exits with status 130, no traceback.
- `deferred()`: a commit section (the rename that puts a finished file in place, and the bookkeeping that says so).
  A SIGINT arriving inside is held and delivered when the section ends, so "written" and "not written" are never
  both half true.
- `checkpoint(point)`: a test hook. With ``SPARQ_SIM_TEST_INTERRUPT=POINT[:N]`` in the environment, the N-th time
  (default 1) the code passes `checkpoint(POINT)` the process sends itself a real SIGINT. Points: ``load`` (before
  the model is loaded), ``step`` (after a decode step), ``batch`` (after a decode batch of `record` is saved to its
  partial file), ``point`` (after a measurement of `measure`), ``write`` (the output is written but not yet renamed
  into place), ``written`` (just after the rename).

Standard library only: the CLI imports this module for every command.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Callable

TEST_ENV = "SPARQ_SIM_TEST_INTERRUPT"


class Interrupted(Exception):
    """Ctrl-C stopped a command; the message (one line) says what was kept on disk. Exit status 130."""


class Terminated(BaseException):
    """SIGTERM, SIGHUP or SIGQUIT stopped a command. A BaseException, like KeyboardInterrupt, so that no `except
    Exception` swallows it and every cleanup that runs for Ctrl-C (temporary files removed) runs for it too; the CLI
    prints one line and exits with 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


TERMINATING = tuple(getattr(signal, s) for s in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, s))


def _terminate(signum, frame):
    ignore_signals()   # one is enough: the cleanups run undisturbed
    raise Terminated(signum)


def catch_termination() -> dict:
    """Turn SIGTERM, SIGHUP and SIGQUIT into `Terminated` (where they still have their default action: a signal the
    parent ignored, as under nohup, stays ignored). Returns the handlers before, for `restore_signals`."""
    if not _main_thread():
        return {}
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT,) + TERMINATING}
    for s in TERMINATING:
        if saved[s] == signal.SIG_DFL:
            signal.signal(s, _terminate)
    return saved


def restore_signals(saved: dict) -> None:
    """Put back the handlers `catch_termination` found."""
    if not _main_thread():
        return
    for s, h in saved.items():
        try:
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        except (ValueError, OSError, TypeError):
            pass


def ignore_signals() -> None:
    """On the way out (done, failed or interrupted): a late Ctrl-C or SIGTERM must not turn a finished command into
    a traceback or a death by signal while Python shuts down."""
    if not _main_thread():
        return
    for s in (signal.SIGINT,) + TERMINATING:
        try:
            signal.signal(s, signal.SIG_IGN)
        except (ValueError, OSError):
            pass


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _first_only(signum, frame):
    """The first Ctrl-C interrupts; the ones after it are ignored until the command has cleaned up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextmanager
def interruptible(describe: Callable[[], str]):
    """Run a command body: a KeyboardInterrupt inside becomes `Interrupted(describe())` once cleanups have run.

    The handler is installed only over Python's default one (a SIGINT ignored by the parent, as for `nohup` or a
    background job, stays ignored), and the previous handler is restored on the way out.
    """
    old = None
    if _main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        old = signal.signal(signal.SIGINT, _first_only)
    try:
        yield
    except KeyboardInterrupt:
        if _main_thread() and old is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # raised some other way (the test hook): same rule
        raise Interrupted(describe()) from None
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


@contextmanager
def deferred():
    """Hold SIGINT for the duration of the block; deliver it (raise KeyboardInterrupt) when the block completes.

    Works whichever thread the operating system hands the signal to: CPython runs Python-level handlers in the main
    thread only, and this replaces the handler rather than masking the signal.
    """
    if not _main_thread():
        yield
        return
    held: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    except BaseException:
        signal.signal(signal.SIGINT, old)
        raise
    signal.signal(signal.SIGINT, old)
    if held:
        if callable(old):
            old(signal.SIGINT, None)
        elif old == signal.SIG_DFL:
            raise KeyboardInterrupt


_counts: dict[str, int] = {}


def checkpoint(point: str) -> None:
    """Test hook: a real SIGINT to this process at the N-th pass through `point` (see the module docstring)."""
    spec = os.environ.get(TEST_ENV)
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name.strip() != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] != (int(n) if n.strip() else 1):
        return
    if callable(signal.getsignal(signal.SIGINT)):
        signal.raise_signal(signal.SIGINT)   # the handler runs before this returns: KeyboardInterrupt from here
    else:
        raise KeyboardInterrupt
