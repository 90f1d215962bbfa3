"""Progress of long commands on standard error: what they are doing, how far, and how long is left.

On a terminal, one line redrawn in place (at most ten times a second): the task, a bar, done/total, percent, time
elapsed and an estimate of the time left (elapsed / done x remaining), cleared when the work ends. Not on a terminal
(a log, a CI job), one plain line when the work starts and one each time another tenth is done, so a log shows that
the command is alive without a flood. `status()` says what happens before the counting starts ("loading model ...":
a command's first words come within a second). `quiet` silences all of it; results and errors are never part of it.
Pure Python, no dependency: the simulator core and the reference commands share it.
"""

from __future__ import annotations

import sys
import time

REDRAW_S = 0.1      # a terminal line is redrawn at most this often
BAR_WIDTH = 24


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def status(message: str, quiet: bool = False, stream=None) -> None:
    """One line saying what the command is doing now (before progress can be counted)."""
    if quiet:
        return
    out = stream if stream is not None else sys.stderr
    try:
        out.write(message + "\n")
        out.flush()
    except (OSError, ValueError):   # a closed or failing standard error must not stop the work
        pass


class Progress:
    """Counts done units of `total`; `advance(n)` after each piece of work. A context manager; also callable
    (`bar(n)` = `bar.advance(n)`), so it can be handed to code that takes a progress callback."""

    def __init__(self, total: int, what: str, quiet: bool = False, stream=None, unit: str = ""):
        self.total = max(int(total), 0)
        self.what = what
        self.quiet = quiet
        self.unit = f" {unit}" if unit else ""
        self.out = stream if stream is not None else sys.stderr
        try:
            self.tty = bool(self.out.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.done = 0
        self.start = time.monotonic()
        self._drawn = 0.0
        self._tenth = -1
        self._width = 0

    # -- the text ------------------------------------------------------------------------------------------------
    def line(self, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self.start
        frac = self.done / self.total if self.total else 1.0
        left = (elapsed / self.done * (self.total - self.done)) if self.done else None
        eta = "eta --:--" if left is None else f"eta {_clock(left)}"
        if self.tty:
            full = int(frac * BAR_WIDTH)
            bar = "#" * full + "." * (BAR_WIDTH - full)
            return (f"{self.what} [{bar}] {self.done:,}/{self.total:,}{self.unit} {frac:4.0%}  "
                    f"{_clock(elapsed)} elapsed, {eta}")
        tail = "" if left is None or self.done >= self.total else f", about {_clock(left)} left"
        return f"{self.what}: {frac:.0%} ({self.done:,}/{self.total:,}{self.unit}), {_clock(elapsed)} elapsed{tail}"

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self.quiet = True   # standard error went away: stop reporting, keep working

    # -- the counting ------------------------------------------------------------------------------------------------
    def __enter__(self):
        self.start = time.monotonic()
        self._show(force=True)
        return self

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + int(n), self.total) if self.total else self.done + int(n)
        self._show()

    __call__ = advance

    def _show(self, force: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            if force or now - self._drawn >= REDRAW_S or self.done >= self.total:
                text = self.line(now)
                pad = max(self._width - len(text), 0)
                self._write("\r" + text + " " * pad)
                self._width = len(text)
                self._drawn = now
            return
        tenth = int(10 * self.done / self.total) if self.total else 10
        if force or tenth > self._tenth:
            self._tenth = tenth
            self._write(self.line(now) + "\n")

    def close(self) -> None:
        if not self.quiet and self.tty and self._width:
            self._write("\r" + " " * self._width + "\r")   # the line goes; what the command prints stays clean
            self._width = 0

    def __exit__(self, *exc):
        self.close()
        return False
