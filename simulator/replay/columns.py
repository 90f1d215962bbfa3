"""The parts of the replayed traffic, the ledger operators that carry them, and the output columns of `replay`."""

from __future__ import annotations

from ..strategies import INDEX_READ, INDEX_WRITE, KV_READ, KV_WRITE, META_READ, META_WRITE

K_LAYOUTS = ("twice", "once")
LEVELS = ("run", "step", "layer", "row")
PARTS = ("k_columns", "k_rows", "v_rows", "metadata", "kv_write")
PART_OF = {"k_columns": "k_columns", "k_rows": "k_rows", "k_all": "k_rows", "v_rows": "v_rows", "v_all": "v_rows",
           "kv_append": "kv_write", "v_mean_read": "metadata", "v_mean_write": "metadata",
           "score_stats_read": "metadata", "score_stats_write": "metadata", "page_minmax": "metadata",
           "label_read": "metadata", "label_write": "metadata", "index_keys_read": "metadata",
           "index_key_write": "metadata"}
FIELD_OF_KIND = {KV_READ: "kv_read", KV_WRITE: "kv_write", META_READ: "meta_read", META_WRITE: "meta_write",
                 INDEX_READ: "meta_read", INDEX_WRITE: "meta_write"}
# the ledger operator (ledger.attention_decode_ops) that carries each component, per strategy
OP_OF = {
    "dense": {"kv_append": "kv_append", "k_all": "attn_scores", "v_all": "attn_values"},
    "sparq": {"kv_append": "kv_append", "k_columns": "sparq_approx_scores", "k_rows": "sparq_exact_scores",
              "v_rows": "sparq_values", "v_mean_read": "sparq_mean_value", "v_mean_write": "sparq_mean_value"},
    "h2o": {"kv_append": "kv_append", "k_rows": "attn_scores", "v_rows": "attn_values",
            "score_stats_read": "h2o_score_update", "score_stats_write": "h2o_score_update"},
    "lm-infinite": {"kv_append": "kv_append", "k_rows": "attn_scores", "v_rows": "attn_values"},
    "flexgen": {"kv_append": "kv_append", "k_all": "attn_scores", "v_rows": "attn_values"},
    "quest": {"kv_append": "kv_append", "page_minmax": "quest_page_scores", "k_rows": "attn_scores",
              "v_rows": "attn_values"},
    "loki": {"kv_append": "kv_append", "k_columns": "loki_approx_scores", "k_rows": "attn_scores",
             "v_rows": "attn_values"},
    "double-sparsity": {"kv_append": "kv_append", "label_read": "ds_approx_scores", "label_write": "ds_approx_scores",
                        "k_rows": "attn_scores", "v_rows": "attn_values"},
    "snapkv": {"kv_append": "kv_append", "k_rows": "attn_scores", "v_rows": "attn_values"},
    "dsa": {"kv_append": "kv_append", "index_key_write": "dsa_index_project", "index_keys_read": "dsa_index_scores",
            "k_rows": "attn_scores", "v_rows": "attn_values"},
}

RUN_COLUMNS = [
    "trace", "hardware", "model", "strategy", "compression", "k_layout", "granularity_bytes", "page_size", "cache",
    "kv_dtype", "kv_tier", "steps", "layers", "batch", "kv_heads", "rows", "events", "seq_len_max",
    "bytes_touched", "bytes_formula", "ratio", *(f"{p}_bytes" for p in PARTS), "bytes_on_chip", "bytes_memory",
    "bytes_dense", "bytes_dense_formula", "transfer_ratio", "pages_touched", "k_copy_write_bytes",
    "attention_time_s", "time_s", "mean_attention_time_s", "mean_step_time_s", "dense_attention_time_s",
    "dense_time_s", "speedup_vs_dense", "attention_speedup_vs_dense",
]
# the columns summed per step and per layer (and, over the steps, per run)
SUM_COLS = ["bytes_touched", "bytes_formula", *(f"{p}_bytes" for p in PARTS), "bytes_on_chip", "bytes_dense",
            "bytes_dense_formula", "pages_touched", "k_copy_write_bytes"]
