"""Axis values from the command line: comma lists and ranges, e.g. '1,4,16', '1024:131072:x2', '1k:8k:+1k'.

    START:STOP:xF   geometric, multiply by F     (1024:131072:x2 -> 1024, 2048, ..., 131072)
    START:STOP:+N   arithmetic, add N            (1:8:+1; a bare step N means +N)
    START:STOP      arithmetic, step 1
STOP is included when the steps land on it. Integer axes take k / M suffixes (4k = 4096, 1M = 1048576).
"""

from __future__ import annotations

import math
import re

from .errors import UserError

MAX_AXIS_VALUES = 10_000_000
MAX_VALUE = 1e15  # beyond any real context, batch or device count; exact in int64 and float64 (products of two such
#                   values, batch x context, are formed in float64: simulator/predict.py)

_SUFFIX = {"k": 1024, "K": 1024, "m": 1024**2, "M": 1024**2}


def _number(text: str, what: str, integer: bool) -> float:
    t = text.strip()
    mult = 1
    if integer and t and t[-1] in _SUFFIX:
        mult, t = _SUFFIX[t[-1]], t[:-1]
    try:
        v = float(t) * mult
    except ValueError:
        raise UserError(f"{what}: {text.strip()!r} is not a number (accepted: values like 4096, 4k, "
                        f"lists 1,4,16, ranges 1024:131072:x2)") from None
    if not math.isfinite(v):
        raise UserError(f"{what}: {text.strip()!r} is not a finite number")
    if abs(v) > MAX_VALUE:
        raise UserError(f"{what}: {text.strip()!r} is too large (at most {MAX_VALUE:.0e})")
    if integer:
        if v != int(v):
            raise UserError(f"{what}: {text.strip()!r} is not a whole number")
        return int(v)
    return v


_PARSED: dict = {}   # (text, what, integer, minimum) -> the values parsed from it (what parse_axis returns)
_PARSED_MAX_VALUES = 4096   # kept only when at most this many values (a single call's axes, not a sweep's ranges)


def parse_axis(value, what: str, integer: bool = True, minimum: float | None = None) -> list:
    """A list of numbers from a scalar, a list, or a string of comma-separated values and ranges."""
    # a string, or an int or float (parsed from its str()): the values depend on that text alone, so they are kept
    kind = type(value)
    key = (value if kind is str else str(value), what, integer, minimum) if kind in (str, int, float) else None
    if key is not None:
        hit = _PARSED.get(key)
        if hit is not None:
            return list(hit)
    out = _parse_axis(value, what, integer, minimum)
    if key is not None and len(out) <= _PARSED_MAX_VALUES:
        if len(_PARSED) >= 512:
            _PARSED.clear()
        _PARSED[key] = tuple(out)
    return out


def _parse_axis(value, what: str, integer: bool, minimum: float | None) -> list:
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    elif isinstance(value, str):
        parts = value.split(",")
    else:
        parts = [str(value)]
    out: list = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            fields = part.split(":")
            if len(fields) not in (2, 3):
                raise UserError(f"{what}: bad range {part!r} (accepted: START:STOP, START:STOP:+N, START:STOP:xF)")
            start = _number(fields[0], what, integer)
            stop = _number(fields[1], what, integer)
            step = fields[2].strip() if len(fields) == 3 else "+1"
            m = re.fullmatch(r"([x*+]?)(.+)", step)
            op, amount = m.group(1) or "+", _number(m.group(2), what, False)
            if stop < start:
                raise UserError(f"{what}: empty range {part!r} (STOP {stop} is below START {start})")
            values = []
            v = start
            if op in "x*":
                if amount <= 1 or start <= 0:
                    raise UserError(f"{what}: geometric range {part!r} needs START > 0 and factor > 1")
                while v <= stop * (1 + 1e-12):
                    values.append(int(round(v)) if integer else v)
                    v *= amount
                    if len(values) > MAX_AXIS_VALUES:
                        break
            else:
                if amount <= 0:
                    raise UserError(f"{what}: range {part!r} needs a positive step")
                n = int(math.floor((stop - start) / amount + 1e-9)) + 1
                if n > MAX_AXIS_VALUES:
                    raise UserError(f"{what}: range {part!r} has {n} values; at most {MAX_AXIS_VALUES} are accepted")
                values = [start + i * amount for i in range(n)]
                if integer:
                    if amount != int(amount):
                        raise UserError(f"{what}: step of {part!r} must be a whole number")
                    values = [int(x) for x in values]
            out.extend(values)
        else:
            out.append(_number(part, what, integer))
        if len(out) > MAX_AXIS_VALUES:
            raise UserError(f"{what}: more than {MAX_AXIS_VALUES} values")
    if not out:
        raise UserError(f"{what}: no values given")
    if minimum is not None:
        bad = [v for v in out if v < minimum]
        if bad:
            raise UserError(f"{what} must be at least {minimum:g}, got {bad[0]:g}")
    seen = set()
    uniq = []
    for v in out:  # keep order, drop repeats
        if v not in seen:
            seen.add(v)
            uniq.append(v)
    return uniq


def parse_names(value, what: str) -> list[str]:
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = str(value).split(",")
    items = [i.strip() for i in items if i.strip()]
    if not items:
        raise UserError(f"{what}: no value given")
    return list(dict.fromkeys(items))
