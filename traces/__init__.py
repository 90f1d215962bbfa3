"""Attention traces: what a strategy fetched, step by step, in a real model (written by `sparq-sim record`).

A trace is one Apache Parquet file. It imports pyarrow and numpy only (never torch), so the simulator can replay it.

Rows: one per (decode step, layer, KV head, sequence of the batch). Columns (SCHEMA, version SCHEMA_VERSION):

| column      | type          | meaning                                                                                    |
|-------------|---------------|--------------------------------------------------------------------------------------------|
| step        | int32         | decode step, 0 = the first token fed after the prompt                                      |
| layer       | int32         | transformer layer                                                                          |
| kv_head     | int32         | KV head within the layer                                                                   |
| batch       | int32         | sequence within the batch (0 when the batch is 1)                                          |
| seq_len     | int32         | S: tokens in this sequence's cache at this step, the new one included (no padding)         |
| k           | int32         | the strategy's budget k at this step (registry recipe for S; 0 = not used; SnapKV: the     |
|             |               | cache it attended, its kept prompt positions plus the tokens generated since)              |
| r           | int32         | key components read over all S: SparQ's, Loki's, Double Sparsity's r (0 = not used)       |
| positions   | list<int32>   | token positions whose rows were fetched, sorted, in [0, seq_len): all S for dense; SparQ's |
|             |               | k positions of Step 2; H2O's cached tokens; sinks + window; FlexGen's top-k rows of V;     |
|             |               | Quest's tokens of the chosen pages; Loki's and Double Sparsity's top-k; SnapKV's cache;    |
|             |               | DSA's top-k (the same for every KV head of the layer)                                      |
| components  | list<int32>   | SparQ's r query components (Step 1 reads these columns of K over all S); Loki's leading    |
|             |               | principal components 0 .. r-1; Double Sparsity's label channels; empty otherwise           |
| alpha       | float32, null | SparQ's approximate softmax mass on the k positions (mean over the query heads of the      |
|             |               | group); null for the other strategies                                                      |
| oracle_mass | float32       | exact softmax mass on `positions` (mean over the group's query heads)                      |
| out_rel_err | float32       | ||y - y_dense|| / ||y_dense|| of the group's attention outputs, y_dense = dense attention  |
|             |               | on the same q, K, V at this step                                                           |

The elements a row moved follow from strategy, seq_len, len(positions) and len(components) with
`sparq_sim.simulator.strategies.traffic_components` (k = len(positions), r = len(components)); for Quest the first
`QUEST_DENSE_LAYERS` layers run dense and their rows list every position; DSA's indexer cache is the layer's, counted
once, with the rows of KV head 0 (its width from the metadata's `calibration.index_dim`).

File metadata: key ``sparq_sim.trace`` holds a JSON object with schema_version, created, model (name, source and the
spec: layers, heads, KV heads, head_dim, ...), strategy, params (compression and explicit overrides), dtypes (kv,
compute), task (name, sample count, score, score_name), batch_size, steps, packages (python, torch, transformers,
pyarrow, numpy, sparq_sim versions) and anything else the recorder adds (Loki and Double Sparsity: `calibration`,
the text they were calibrated on and, per layer and KV head, Double Sparsity's channels or the share of the keys'
variance in Loki's first r components; DSA: its indexer's heads and `index_dim`, the training text and its KL
before and after). Strategy names are the registry's.

Writing is atomic (a temporary file beside the target, renamed when complete; an interrupted run leaves nothing).
`sparq-sim record` over several decode batches also keeps the batches done in OUTPUT.partial (`traces.partial`) for
`--resume`; that file is never a trace and is removed once the trace is in place.
The reader checks the schema and the values and names what is wrong in a one-line `UserError`.
"""

from .format import (METADATA_KEY, REQUIRED_METADATA, SCHEMA, SCHEMA_VERSION, Trace, TraceWriter, read_trace,
                     validate_table, write_trace)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "METADATA_KEY", "REQUIRED_METADATA", "Trace", "TraceWriter", "read_trace",
           "write_trace", "validate_table"]
