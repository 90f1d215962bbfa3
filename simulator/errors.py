"""The one exception type for bad user input.

Anything the user can get wrong (a flag, a profile file, a config.json, a range) raises `UserError` with one line that
names the bad value and what is accepted. The CLI prints that line and exits with status 2; no traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UserError(ValueError):
    """Bad input from the user: the message is one line, shown as is."""


def input_file(path, what: str, expected: str):
    """The Path of an input file that exists and is not a folder; else one line: "{what} 'x' does not exist" or
    "{what} 'x' is a folder, expected {expected}"."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a folder, expected {expected}")
    return p


def read_json(p, what: str):
    """The parsed JSON of file `p`; anything that stops it (unreadable, not UTF-8, not JSON, a number too long to
    convert, nesting deeper than Python's stack) is one line naming `what` and the file."""
    import json

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
