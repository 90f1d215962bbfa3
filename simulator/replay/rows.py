"""One trace on one device: the batches' rows turned into bytes, timed with the ledger's attention operators and the
roofline, and summed into the rows of each `level` (run, step, layer, row)."""

from __future__ import annotations

import numpy as np

from ...hardware_profiles import HardwareProfile
from ..errors import UserError
from .cache import _CacheModel
from .columns import FIELD_OF_KIND, OP_OF, PART_OF, PARTS, SUM_COLS
from .flatten import _Flat
from .geometry import _copy_write, _geometry
from .metadata import _Setup
from .source import _Dims
from .traffic import _traffic


# ---------------------------------------------------------------------------------------------------------------------
# sums over batches


class _KeySums:
    """Per-key sums of row values that arrive batch by batch, equal bit for bit to one `np.bincount` over all the rows
    in order: each key's total so far comes first, then the new rows in order, as bincount adds them."""

    def __init__(self, cols):
        self.cols = list(cols)
        self.keys = np.zeros(0, dtype=np.int64)
        self.sums = {c: np.zeros(0) for c in self.cols}
        self.seq_max = np.zeros(0, dtype=np.int64)

    def add(self, key_rows, values: dict, seq_len=None):
        keys = np.union1d(self.keys, key_rows)
        old = np.searchsorted(keys, self.keys)
        new = np.searchsorted(keys, key_rows)
        idx = np.concatenate([old, new])
        for c in self.cols:
            w = np.concatenate([self.sums[c], np.asarray(values[c], dtype=np.float64)])
            self.sums[c] = np.bincount(idx, weights=w, minlength=len(keys))
        if seq_len is not None:
            m = np.zeros(len(keys), dtype=np.int64)
            m[old] = self.seq_max
            np.maximum.at(m, new, seq_len)
            self.seq_max = m
        self.keys = keys


# ---------------------------------------------------------------------------------------------------------------------
# the attention operators and the summaries


def _unit_ops(st: _Setup, hw, strategy, f: _Flat, rows, mem_bytes: dict, kinds: dict, prec, tp, L1=None, NB=None):
    """Ledger attention operators of `strategy` for the given trace rows, with the replayed bytes, summed per
    (step, layer). Returns (keys of the (step, layer) groups: step * L1 + layer, list of Op with per-group arrays).
    L1, NB: more than the largest layer and batch index of the trace (default: of `f`)."""
    from ..ledger import Op, attention_decode_ops

    m = st.model
    L1 = int(f.layer.max()) + 1 if L1 is None else L1
    NB = int(f.batch.max()) + 1 if NB is None else NB
    # one unit per (step, layer, batch): KV heads summed
    ukey = (f.step[rows] * L1 + f.layer[rows]) * NB + f.batch[rows]
    uniq, uinv = np.unique(ukey, return_inverse=True)
    nu = len(uniq)
    heads = np.bincount(uinv, minlength=nu)
    S_u = np.zeros(nu, dtype=np.int64)
    np.maximum.at(S_u, uinv, f.seq_len[rows])
    k_u = np.bincount(uinv, weights=f.k_formula[rows], minlength=nu) / heads
    r_u = np.bincount(uinv, weights=f.r_formula[rows], minlength=nu) / heads
    params = {"k": k_u, "r": r_u, "local_window": np.zeros(nu), "sinks": np.zeros(nu),
              "page_size": np.full(nu, float(st.quest_page)), "index_dim": np.full(nu, float(st.index_dim))}
    ops = attention_decode_ops(m, tp, strategy, np.ones(nu), S_u, params, prec, 1)
    # the cache and metadata bytes are the trace's, not the formula's: each operator's summed from the components
    by_op = {op.name: i for i, op in enumerate(ops)}
    fields = ("kv_read", "kv_write", "meta_read", "meta_write")
    measured = [{fld: np.zeros(nu) for fld in fields} for _ in ops]
    for name, b in mem_bytes.items():
        got = measured[by_op[OP_OF[strategy][name]]]
        fld = FIELD_OF_KIND[kinds[name]]
        got[fld] = got[fld] + np.bincount(uinv, weights=b, minlength=nu)
    ops = [op._replace(**got) for op, got in zip(ops, measured)]
    # (step, layer) groups
    sl = uniq // NB
    gk, ginv = np.unique(sl, return_inverse=True)
    out = []
    for op in ops:
        agg = {}
        for fld in ("flops", "act_read", "act_write") + fields:
            v = np.broadcast_to(np.asarray(getattr(op, fld), dtype=np.float64), (nu,))
            agg[fld] = np.bincount(ginv, weights=v, minlength=len(gk))
        # weights (Loki's projection, MLA's expansion) are read once per layer, whatever the batch
        agg["weight"] = np.zeros(len(gk))
        np.maximum.at(agg["weight"], ginv, np.broadcast_to(np.asarray(op.weight, dtype=np.float64), (nu,)))
        out.append(Op(op.phase, op.name, op.group, op.unit, 1, op.launches, **agg))
    return gk, out


class _Replayer:
    """One trace on one device: fed the trace's batches in order (`add`), summarised at the end (`finish`).

    Rows are counted batch by batch; sums per step and per layer follow the rows' order exactly (`_KeySums`); the
    attention time of each (step, layer) is timed within its batch (a batch holds whole (step, layer) groups); the run's
    totals add the steps' sums. Memory: the batch, plus a few numbers per step and per (step, layer) (and, at level
    'row', the output rows; with --cache, the cache model's state)."""

    def __init__(self, st: _Setup, dims: _Dims, hw: HardwareProfile, k_layout, granularity, page_size, cache,
                 kv_location, levels):
        from ..ledger import Parallel, Precision, block_ops, head_ops
        from ..predict import predict_columns
        from ..roofline import tier_table

        self.st, self.dims, self.hw, self.levels = st, dims, hw, levels
        self.k_layout, self.page_size, self.cache = k_layout, page_size, cache
        g = self.g = _geometry(st, hw, k_layout, granularity, page_size)
        m = st.model
        self.prec = prec = Precision.of(st.dtype, st.kv_dtype)
        self.tp = tp = Parallel.of(m, 1)
        self.G_bytes = g.G / 8
        self.e_bytes = g.e / 8
        n_batch = dims.NB

        # placement and the rest of the step, from predict (same model, batch, longest context)
        def placed(strategy):
            kw = dict(hardware=hw, model=m, seq_len=int(dims.seq_len_max), batch=n_batch, strategies=[strategy],
                      compression=max(st.compression, 1.0) if strategy != "dense" else 1.0, dtype=st.dtype,
                      kv_dtype=st.kv_dtype, k_layout=k_layout, kv_location=kv_location,
                      page_size=st.quest_page if strategy == "quest" else None)
            cols = predict_columns(**kw)
            return (float(cols["time_s"][0] - cols["attention_time_s"][0]), cols["kv_location"].decode()[0])

        self.rest_s, self.kv_tier = placed(st.strategy)
        self.dense_rest_s, self.dense_tier = placed("dense")
        self.names, self.peak, self.achieved, _ = tier_table(hw)
        if cache:
            before, after = block_ops("decode", m, tp, np.float64(n_batch), prec)
            per_layer = lambda ops: sum(float(np.sum(op.bytes_total())) for op in ops if op.layers == m.n_layers)  # noqa: E731
            emb = sum(float(np.sum(op.bytes_total())) for op in before if op.layers != m.n_layers)
            head = sum(float(np.sum(op.bytes_total())) for op in head_ops("decode", m, tp, np.float64(n_batch), prec))
            self.after_bytes = per_layer(after)
            fills = ((emb, head), per_layer(before))
            self.cache_model = _CacheModel(st, g, hw, dims, fills, dense=False)
            self.dense_cache_model = _CacheModel(st, g, hw, dims, fills, dense=True)
        self.sl_keys, self.att, self.datt, self.row_parts = [], [], [], []
        self.step_sums = _KeySums(SUM_COLS)
        self.layer_sums = _KeySums(SUM_COLS)
        self.n_rows = self.events = self.seq_len_max = 0

    def _placement(self, tier):
        from ..roofline import Placement

        return Placement(self.names, self.peak, self.achieved, 0, self.names.index(tier), 0)

    def _timed(self, f, strategy_parts, hits, tier):
        """Attention operators per (step, layer) of the batch: time and activation bytes, keyed step * L1 + layer."""
        from ..roofline import time_op

        sl_time = {}
        act = {}
        for strategy, rows, part in strategy_parts:
            mem = {}
            for name, s in part.sectors.items():
                b = np.asarray(s, dtype=np.float64) * self.G_bytes
                if name in hits:
                    b = b - hits[name][rows]
                mem[name] = b
            keys, ops = _unit_ops(self.st, self.hw, strategy, f, rows, mem, part.kinds, self.prec, self.tp,
                                  self.dims.L1, self.dims.NB)
            pl = self._placement(tier)
            t = sum(time_op(op, self.hw, pl, self.prec, 1).time_s for op in ops)
            a = sum(op.act_read + op.act_write for op in ops)
            for k_, tv, av in zip(keys.tolist(), np.broadcast_to(t, keys.shape).tolist(),
                                  np.broadcast_to(a, keys.shape).tolist()):
                sl_time[k_] = sl_time.get(k_, 0.0) + tv
                act[k_] = act.get(k_, 0.0) + av
        return sl_time, act

    def add(self, f: _Flat) -> None:
        """One batch: whole (step, layer) groups, sorted, after every earlier batch's groups."""
        st, g = self.st, self.g
        G_bytes, e_bytes = self.G_bytes, self.e_bytes
        parts, dense = _traffic(st, g, f)
        dense_parts = [("dense", np.arange(f.n), dense)]

        # per row: sectors -> bytes
        touched = {p: np.zeros(f.n) for p in PARTS}
        formula = np.zeros(f.n)
        pages = np.zeros(f.n)
        for _, rows, part in parts:
            for name, s in part.sectors.items():
                touched[PART_OF[name]][rows] += s * G_bytes
                formula[rows] += part.elements[name] * e_bytes
            pages[rows] += part.pages
        dense_touched = sum(s for s in dense.sectors.values()) * G_bytes
        dense_formula = sum(e for e in dense.elements.values()) * e_bytes
        copy_write = np.zeros(f.n)
        if st.strategy == "sparq" and self.k_layout == "twice":
            for s, rows, _ in parts:
                if s == "sparq":
                    copy_write[rows] = _copy_write(g, f.seq_len[rows]) * G_bytes

        # attention operators per (step, layer) without KV bytes first (their activations feed the cache model)
        sl_key = f.step * self.dims.L1 + f.layer
        sl_unique = np.unique(sl_key)
        hits, dense_hits = {}, {}
        if self.cache:
            _, act = self._timed(f, parts, {}, self.kv_tier)
            _, dact = self._timed(f, dense_parts, {}, self.dense_tier)
            fill_after = np.array([self.after_bytes + act.get(k_, 0.0) for k_ in sl_unique.tolist()])
            dfill_after = np.array([self.after_bytes + dact.get(k_, 0.0) for k_ in sl_unique.tolist()])
            hits = self.cache_model.run(f, parts, fill_after)
            dense_hits = self.dense_cache_model.run(f, dense_parts, dfill_after)
        sl_time, _ = self._timed(f, parts, hits, self.kv_tier)
        dsl_time, _ = self._timed(f, dense_parts, dense_hits, self.dense_tier)
        on_chip = sum(hits.values()) if hits else np.zeros(f.n)

        bytes_touched = sum(touched.values())
        row_cols = {
            "step": f.step, "layer": f.layer, "batch": f.batch, "kv_head": f.kv_head, "seq_len": f.seq_len,
            "n_positions": f.n_pos, "n_components": f.n_comp, "members": f.members,
            "bytes_touched": bytes_touched, "bytes_formula": formula,
            **{f"{p}_bytes": touched[p] for p in PARTS},
            "bytes_on_chip": on_chip, "bytes_dense": dense_touched, "bytes_dense_formula": dense_formula,
            "pages_touched": pages, "k_copy_write_bytes": copy_write,
        }
        self.sl_keys.append(sl_unique)
        self.att.append(np.array([sl_time[k_] for k_ in sl_unique.tolist()]))
        self.datt.append(np.array([dsl_time[k_] for k_ in sl_unique.tolist()]))
        if "row" in self.levels:
            d = dict(row_cols)
            d["ratio"] = d["bytes_touched"] / d["bytes_formula"]
            d["bytes_memory"] = d["bytes_touched"] - d["bytes_on_chip"]
            d["transfer_ratio"] = d["bytes_touched"] / d["bytes_dense"]
            self.row_parts.append(d)
        if "step" in self.levels or "run" in self.levels:
            self.step_sums.add(f.step, row_cols, f.seq_len)
        if "layer" in self.levels:
            self.layer_sums.add(f.layer, row_cols)
        self.n_rows += f.n
        self.events += f.events
        self.seq_len_max = max(self.seq_len_max, int(f.seq_len.max()))

    def finish(self) -> dict:
        st, dims, m = self.st, self.dims, self.st.model
        L1 = dims.L1
        rest_s, dense_rest_s = self.rest_s, self.dense_rest_s
        sl_unique = np.concatenate(self.sl_keys)
        att = np.concatenate(self.att)
        datt = np.concatenate(self.datt)
        steps_u = sl_unique // L1
        layers_u = sl_unique % L1
        ident = {"trace": st.trace_name, "hardware": self.hw.name, "model": m.name, "strategy": st.strategy,
                 "compression": st.compression, "k_layout": self.k_layout, "granularity_bytes": self.G_bytes,
                 "page_size": int(self.page_size or 0), "cache": bool(self.cache), "kv_dtype": st.kv_dtype,
                 "kv_tier": self.kv_tier}
        out = {}

        def finish(d):
            d["ratio"] = d["bytes_touched"] / d["bytes_formula"]
            d["bytes_memory"] = d["bytes_touched"] - d["bytes_on_chip"]
            d["transfer_ratio"] = d["bytes_touched"] / d["bytes_dense"]
            d["speedup_vs_dense"] = d["dense_time_s"] / d["time_s"]
            d["attention_speedup_vs_dense"] = d["dense_attention_time_s"] / d["attention_time_s"]
            return d

        if "row" in self.levels:
            parts = self.row_parts
            out["row"] = (ident, {c: np.concatenate([np.asarray(p[c]) for p in parts]) for c in parts[0]})
        for level, acc, key_sl in (("step", self.step_sums, steps_u), ("layer", self.layer_sums, layers_u)):
            if level not in self.levels:
                continue
            ku = acc.keys
            d = {level: ku}
            for c in SUM_COLS:
                d[c] = acc.sums[c]
            kinv = np.searchsorted(ku, key_sl)
            d["attention_time_s"] = np.bincount(kinv, weights=att, minlength=len(ku))
            d["dense_attention_time_s"] = np.bincount(kinv, weights=datt, minlength=len(ku))
            if level == "step":
                d["seq_len_max"] = acc.seq_max
                d["time_s"] = d["attention_time_s"] + rest_s
                d["dense_time_s"] = d["dense_attention_time_s"] + dense_rest_s
            else:  # a layer's share of the rest of the step: 1 / n_layers of it, in every step it ran
                n_steps = np.bincount(kinv, minlength=len(ku))
                d["time_s"] = d["attention_time_s"] + n_steps * rest_s / m.n_layers
                d["dense_time_s"] = d["dense_attention_time_s"] + n_steps * dense_rest_s / m.n_layers
            out[level] = (ident, finish(d))
        if "run" in self.levels:
            n_steps = len(self.step_sums.keys)
            # the run's totals: the steps' sums (each exact over its rows in order), added up
            d = {c: np.array([float(np.sum(self.step_sums.sums[c]))]) for c in SUM_COLS}
            d["attention_time_s"] = np.array([float(att.sum())])
            d["dense_attention_time_s"] = np.array([float(datt.sum())])
            d["time_s"] = d["attention_time_s"] + n_steps * rest_s
            d["dense_time_s"] = d["dense_attention_time_s"] + n_steps * dense_rest_s
            d["mean_attention_time_s"] = d["attention_time_s"] / n_steps
            d["mean_step_time_s"] = d["time_s"] / n_steps
            d.update(steps=np.array([n_steps]), layers=np.array([dims.n_layers]),
                     batch=np.array([dims.n_batches]), kv_heads=np.array([dims.n_kv_heads]),
                     rows=np.array([self.n_rows]), events=np.array([self.events]),
                     seq_len_max=np.array([self.seq_len_max]))
            out["run"] = (ident, finish(d))
        return out


def _replay_one(st: _Setup, hw: HardwareProfile, k_layout, granularity, page_size, cache, kv_location, levels):
    """The whole trace held in `st.flat` (from `_trace_setup`) on one device, in one batch."""
    f = st.flat
    if f.n == 0:
        raise UserError(f"trace {st.trace_name!r} has no rows")
    rp = _Replayer(st, _Dims.of_flat(f), hw, k_layout, granularity, page_size, cache, kv_location, levels)
    rp.add(f)
    return rp.finish()
