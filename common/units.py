"""Units: bytes per element of each number format, and parsing of quantities such as '2039 GB/s' or '2.5 us'.

SI internally (bytes, seconds, B/s, FLOP/s); decimal prefixes for GB, TB/s, TFLOP/s as vendors quote them, binary ones
(KiB, MiB, GiB) when written so.
"""

from __future__ import annotations

import math
import re

from .errors import UserError

# Bytes per element of each number format's payload. int4 and the 4-bit floats pack two values per byte.
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "fp4": 0.5,     # e2m1, the matrix units' 4-bit float (a profile's fp4 peak); stored as nvfp4 or mxfp4
    "nvfp4": 0.5,
    "mxfp4": 0.5,
}

# Quantised formats carry scales: (bytes of one group's scales, default group size, whether the group can change).
# A format "int4-g32" sets the group; the bytes per element are then payload + scale bytes / group.
# - int4: an fp16 scale and an int4 zero point per group of 128 (GPTQ and AWQ's defaults, asymmetric): 2.5 B / 128.
#   int4-g32 counts 2.5 B per 32; gpt-fast's int4 keeps a bf16 scale and a bf16 zero per 32 (4 B): 0.625 B per weight
#   where int4-g32 counts 0.578.
# - int8: per output channel by default (one fp16 scale per row of d_in >= 576 weights: under 0.4 %, left out);
#   int8-g128 counts an fp16 scale per 128.
# - fp8: per tensor by default (nothing per element); fp8-g128 counts an fp32 scale per 128 (DeepSeek-V3's blocks).
# - nvfp4: an fp8 (e4m3) scale per 16 values (NVIDIA, "Introducing NVFP4", 2025; the per-tensor fp32 scale is left
#   out); mxfp4: an e8m0 scale per 32 (OCP Microscaling Formats v1.0, 2023). Both blocks are fixed by the format.
GROUP_SCALES: dict[str, tuple[float, int | None, bool]] = {
    "int4": (2.5, 128, True), "int8": (2.0, None, True), "fp8": (4.0, None, True),
    "nvfp4": (1.0, 16, False), "mxfp4": (1.0, 32, False), "fp4": (1.0, 32, False),
}
_GROUP = re.compile(r"^([a-z0-9]+)-g(\d+)$")


def split_dtype(name: str) -> tuple[str, int | None]:
    """'int4-g32' -> ('int4', 32); 'int4' -> ('int4', 128), its default group; 'bf16' -> ('bf16', None)."""
    m = _GROUP.match(name)
    if m:
        return m.group(1), int(m.group(2))
    return name, GROUP_SCALES.get(name, (0.0, None, False))[1]


def base_dtype(name: str) -> str:
    """The number format of a dtype name without its group ('int4-g32' -> 'int4')."""
    return split_dtype(name)[0]


def dtype_bytes(name: str) -> float:
    """Bytes per element, scales included: payload + scale bytes / group."""
    base, group = split_dtype(name)
    scale = GROUP_SCALES.get(base, (0.0, None, False))[0]
    return DTYPE_BYTES[base] + (scale / group if group else 0.0)

# Which matrix-unit precision a number format computes in (the 4-bit floats on fp4 units). Weight-only int4 and int8
# kernels (GPTQ/AWQ, gpt-fast) dequantise to fp16: ledger.Precision gives them fp16 activations.
COMPUTE_DTYPE: dict[str, str] = {
    "fp32": "fp32",
    "tf32": "tf32",
    "bf16": "bf16",
    "fp16": "fp16",
    "fp8": "fp8",
    "int8": "int8",
    "int4": "int4",
    "fp4": "fp4",
    "nvfp4": "fp4",
    "mxfp4": "fp4",
}

# Weight-only quantised matmuls do not stream their weights at the 16-bit kernels' rate: they dequantise on the fly.
# gpt-fast's README (pytorch-labs/gpt-fast@32971d3, A100 80GB table, Llama-2-7B, batch 1) reports 1397 GB/s of weights
# for bf16, 1069 GB/s for int8 and 862 GB/s for int4 (group 32) weight-only: 0.77 and 0.62 of the bf16 rate. The
# realistic roofline reads int8 and int4 weights at that share of the achieved bandwidth (fp8 matmuls run natively on
# the devices that list fp8, so they keep the full rate: an assumption).
WEIGHT_STREAM_EFFICIENCY: dict[str, float] = {"int8": 0.77, "int4": 0.62}
# Weight-only kernels of formats gpt-fast does not measure (fp8 and the 4-bit floats dequantised for 16-bit
# activations, e.g. Marlin-style kernels on a device without fp4 units) take the rate of the format of the same width:
# an assumption.
WEIGHT_ONLY_EFFICIENCY: dict[str, float] = {"int8": 0.77, "fp8": 0.77, "int4": 0.62, "fp4": 0.62, "nvfp4": 0.62,
                                            "mxfp4": 0.62}

DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "f32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16", "half": "fp16", "f16": "fp16",
    "float8": "fp8", "e4m3": "fp8", "fp8_e4m3": "fp8", "e2m1": "fp4",
    "q8": "int8", "q4": "int4",
}


def parse_dtype(value: str, what: str = "dtype") -> str:
    """A number format by name or alias, optionally with a scale group ('int4-g32'); returns the canonical name."""
    v = str(value).strip().lower()
    m = _GROUP.match(v)
    base = DTYPE_ALIASES.get(m.group(1) if m else v, m.group(1) if m else v)
    if base not in DTYPE_BYTES:
        raise UserError(f"unknown {what} {value!r}; accepted: {', '.join(DTYPE_BYTES)} (quantised ones with a scale "
                        f"group: int4-g32, int8-g128, fp8-g128)")
    if not m:
        return base
    group = int(m.group(2))
    spec = GROUP_SCALES.get(base)
    if spec is None or not spec[2]:
        fixed = f" ({base} has a fixed block of {spec[1]})" if spec else ""
        raise UserError(f"{what} {value!r}: {base} takes no scale group{fixed}; accepted groups on int4, int8 and fp8")
    if not 1 <= group <= 1 << 20:
        raise UserError(f"{what} {value!r}: the group must be between 1 and 1048576 elements")
    return f"{base}-g{group}"


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
