"""The one exception type for bad user input.

Anything the user can get wrong (a flag, a profile file, a config.json, a range) raises `UserError` with one line that
names the bad value and what is accepted. The CLI prints that line and exits with status 2; no traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(ValueError):
    """Bad input from the user: the message is one line, shown as is."""


MiB = 1 << 20
# the largest input of each kind read whole into memory: far beyond any real one, far below what would exhaust it
MAX_INPUT_BYTES = {"hardware file": 4 * MiB, "model config": 64 * MiB, "--evaluation": 256 * MiB,
                   "--text": 256 * MiB, "measurement file": 8192 * MiB, "--measured": 8192 * MiB}


def input_file(path, what: str, expected: str, max_bytes: int | None = None):
    """The Path of an input file that exists and is a regular file no larger than `max_bytes` (default: the cap of
    MAX_INPUT_BYTES for `what`, none for a kind not listed), checked before a byte is read; else one line naming the
    file: it does not exist, is a folder, is not a regular file (a FIFO, a device such as /dev/zero or /dev/urandom,
    a socket: reading one could block or never end), or is too large."""
    import os
    import stat
    from pathlib import Path

    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UserError(f"{what} {str(p)!r} does not exist") from None
    except OSError as e:
        raise UserError(f"{what} {str(p)!r} cannot be read: {e.strerror or e}") from None
    except ValueError:   # a NUL byte in the name
        raise UserError(f"{what} {str(p)!r} is not a usable file name (it holds a NUL byte)") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {str(p)!r} is a folder, expected {expected}")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {str(p)!r} is not a regular file (a FIFO, a device or a socket), expected {expected}")
    cap = max_bytes if max_bytes is not None else MAX_INPUT_BYTES.get(what)
    if cap is not None and st.st_size > cap:
        raise UserError(f"{what} {str(p)!r} is {st.st_size / MiB:.1f} MiB; at most {cap / MiB:.0f} MiB accepted")
    return p


def read_json(p, what: str):
    """The parsed JSON of file `p`; anything that stops it (unreadable, not UTF-8, not JSON, a number too long to
    convert, nesting deeper than Python's stack) is one line naming `what` and the file."""
    import json

    p = input_file(p, what, "a JSON file")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {str(p)!r} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {str(p)!r} is not valid JSON: {e.msg} at line {e.lineno}") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, nesting deeper than Python's stack
        why = "nested too deeply" if isinstance(e, RecursionError) else " ".join(str(e).split(";")[0].split())
        raise UserError(f"{what} {str(p)!r} cannot be parsed as JSON: {why}") from None


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """', did you mean a or b' for the nearest of `choices`, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?"
