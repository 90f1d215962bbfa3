"""Units and number formats: they live in `sparq_sim.common.units` (below both `hardware_profiles` and `simulator`);
re-exported here so that the simulator's `from .units import ...` keep working."""

from __future__ import annotations

from ..common.units import (COMPUTE_DTYPE, DTYPE_ALIASES, DTYPE_BYTES, GROUP_SCALES, UNIT_EXAMPLES,
                            WEIGHT_ONLY_EFFICIENCY, WEIGHT_STREAM_EFFICIENCY, base_dtype, dtype_bytes, format_bytes,
                            format_seconds, parse_dtype, parse_quantity, split_dtype)

__all__ = ["DTYPE_BYTES", "COMPUTE_DTYPE", "GROUP_SCALES", "WEIGHT_STREAM_EFFICIENCY", "WEIGHT_ONLY_EFFICIENCY",
           "DTYPE_ALIASES", "UNIT_EXAMPLES", "base_dtype", "dtype_bytes", "split_dtype", "parse_dtype",
           "parse_quantity", "format_bytes", "format_seconds"]
