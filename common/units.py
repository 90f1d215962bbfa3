"""Units: bytes per element of each number format, and parsing of quantities such as '2039 GB/s' or '2.5 us'.

SI internally (bytes, seconds, B/s, FLOP/s); decimal prefixes for GB, TB/s, TFLOP/s as vendors quote them, binary ones
(KiB, MiB, GiB) when written so.
"""

from __future__ import annotations

import math
import re

from .errors import UserError

# Bytes per element of each number format. int4 packs two values per byte.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}

# Which compute unit precision a weight format runs its matmuls in. Weight-only int4 dequantises to fp16
# (assumption: the usual weight-only kernels, e.g. GPTQ/AWQ, compute in fp16).
COMPUTE_DTYPE: dict[str, str] = {
    "fp32": "fp32",
    "tf32": "tf32",
    "bf16": "bf16",
    "fp16": "fp16",
    "fp8": "fp8",
    "int8": "int8",
    "int4": "fp16",
}

# Weight-only quantised matmuls do not stream their weights at the 16-bit kernels' rate: they dequantise on the fly.
# gpt-fast's README (pytorch-labs/gpt-fast@32971d3, A100 80GB table, Llama-2-7B, batch 1) reports 1397 GB/s of weights
# for bf16, 1069 GB/s for int8 and 862 GB/s for int4 (group 32) weight-only: 0.77 and 0.62 of the bf16 rate. The
# realistic roofline reads int8 and int4 weights at that share of the achieved bandwidth (fp8 matmuls run natively on
# the devices that list fp8, so they keep the full rate: an assumption).
WEIGHT_STREAM_EFFICIENCY: dict[str, float] = {"int8": 0.77, "int4": 0.62}

DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "f32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16", "half": "fp16", "f16": "fp16",
    "float8": "fp8", "e4m3": "fp8", "fp8_e4m3": "fp8",
    "q8": "int8", "q4": "int4",
}


def parse_dtype(value: str, what: str = "dtype") -> str:
    v = str(value).strip().lower()
    v = DTYPE_ALIASES.get(v, v)
    if v not in DTYPE_BYTES:
        raise UserError(f"unknown {what} {value!r}; accepted: {', '.join(DTYPE_BYTES)}")
    return v


_PREFIX = {
    "": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

# dimension -> regex of the unit part after the prefix
_UNITS = {
    "bytes": re.compile(r"^(?P<p>Ki|Mi|Gi|Ti|[kKMGTP]?)B$"),
    "bandwidth": re.compile(r"^(?P<p>Ki|Mi|Gi|Ti|[kKMGTP]?)B/s$"),
    "flops": re.compile(r"^(?P<p>[kKMGTP]?)(FLOP|OP)/s$"),
    "time": re.compile(r"^(?P<u>s|ms|us|µs|ns)$"),
}
_NUMBER = re.compile(r"^\s*(?P<n>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*(?P<u>\S*)\s*$")

UNIT_EXAMPLES = {
    "bytes": "a size such as '80 GB', '40 MiB' or a number of bytes",
    "bandwidth": "a bandwidth such as '2039 GB/s' or a number of bytes per second",
    "flops": "a rate such as '312 TFLOP/s' or a number of operations per second",
    "time": "a duration such as '2.5 us' or a number of seconds",
}


def parse_quantity(value, dimension: str) -> float:
    """'2039 GB/s' -> 2.039e12. A bare number is taken as SI base units. Raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError(f"expected {UNIT_EXAMPLES[dimension]}, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            out = float(value)
        except OverflowError:
            raise ValueError(f"number too large: {str(value)[:20]}...") from None
    elif isinstance(value, str):
        m = _NUMBER.match(value)
        if not m:
            raise ValueError(f"expected {UNIT_EXAMPLES[dimension]}, got {value!r}")
        number, unit = float(m.group("n")), m.group("u")
        if unit == "":
            out = number
        elif dimension == "time":
            if unit not in _TIME:
                raise ValueError(f"expected {UNIT_EXAMPLES[dimension]}, got {value!r}")
            out = number * _TIME[unit]
        else:
            um = _UNITS[dimension].match(unit)
            if not um:
                raise ValueError(f"expected {UNIT_EXAMPLES[dimension]}, got {value!r}")
            out = number * _PREFIX[um.group("p")]
    else:
        raise ValueError(f"expected {UNIT_EXAMPLES[dimension]}, got {type(value).__name__} {value!r}")
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"expected a finite, non-negative value ({UNIT_EXAMPLES[dimension]}), got {value!r}")
    return out


def format_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def format_seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.3g} s"
    if t >= 1e-3:
        return f"{t * 1e3:.3g} ms"
    return f"{t * 1e6:.3g} us"
