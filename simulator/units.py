"""Units and number formats: they live in `sparq_sim.common.units` (below both `hardware_profiles` and `simulator`);
re-exported here so that the simulator's `from .units import ...` keep working."""

from __future__ import annotations

from ..common.units import (COMPUTE_DTYPE, DTYPE_ALIASES, DTYPE_BYTES, UNIT_EXAMPLES, WEIGHT_STREAM_EFFICIENCY,
                            format_bytes, format_seconds, parse_dtype, parse_quantity)

__all__ = ["DTYPE_BYTES", "COMPUTE_DTYPE", "WEIGHT_STREAM_EFFICIENCY", "DTYPE_ALIASES", "UNIT_EXAMPLES",
           "parse_dtype", "parse_quantity", "format_bytes", "format_seconds"]
