"""The one exception type for bad user input: it lives in `sparq_sim.common.errors` (below both `hardware_profiles`
and `simulator`); re-exported here so that the simulator's `from .errors import ...` keep working."""

from __future__ import annotations

from ..common.errors import MAX_INPUT_BYTES, MiB, UserError, closest, input_file, read_json

__all__ = ["UserError", "closest", "input_file", "read_json", "MAX_INPUT_BYTES", "MiB"]
