"""A single-configuration prediction (issue 16: <= 1 ms a call) takes a faster path through the same formulas, and
keeps nothing from one call to the next that could go stale.

- One grid point runs the ledger on Python numbers and times every operator in one stack: its row is, to the last bit,
  the row of the same point inside a sweep (every column, every strategy), for pipeline and tensor parallelism,
  offload, several memory tiers, sliding windows, latent attention, a mixture of experts and whole generations.
- The DataFrame of `predict`, built from one block per dtype, is pandas' constructor's frame of the same columns
  (columns, dtypes, values; strings as the options of pandas make them).
- What is kept between calls is keyed on what it depends on: parsed axis values (by their text, so -0.0 is not 0.0
  and True is not 1), a sweep's cases (by the built-in names, numbers and words they were parsed from: never a file, a
  folder or an object, and never a call that failed), short text columns of the DataFrame (by their strings; each
  frame gets a copy), model specs (a spec's hash uses a few fields: specs equal in those but different elsewhere
  give their own results). A user's profile file is read again on every call, so an edit shows at once; a list
  argument changed between calls gives the new values; the columns a call returns are its own (writing into them
  changes no later result).
"""

from __future__ import annotations

import itertools
import math
import re

import warnings

import numpy as np
import pandas as pd
import pytest

import sparq_sim
from sparq_sim.hardware_profiles import PROFILE_DIR
from sparq_sim.simulator import cases as CS
from sparq_sim.simulator import predict as P
from sparq_sim.simulator import strategies as S_
from sparq_sim.simulator.errors import UserError
from sparq_sim.simulator.frame import frame
from sparq_sim.simulator.models import load_model_spec, replace
from sparq_sim.simulator.ranges import parse_axis

CASES = [
    dict(hardware="a100"),
    dict(hardware="h100", model="llama3-8b", strategies="quest,sparq,h2o"),   # dense not asked for
    dict(hardware="a100-40gb", model="llama2-70b", devices=2, pipeline=2),
    dict(hardware="a100-40gb", model="llama2-70b", devices=2, pipeline=4, microbatches=3),
    dict(hardware="l4", kv_location="host"),
    dict(hardware="t4", model="opt-30b", dtype="fp16", weights_on_device=0.2, kv_on_device=0.5),
    dict(hardware="ipu", dtype="fp16", devices=4),   # two device tiers: the cache's tier chosen per point
    dict(hardware="ipu", dtype="fp16", kv_location="streaming"),
    dict(hardware="h100", model="gemma3-12b"),       # sliding windows
    dict(hardware="h200", model="deepseek-v3", dtype="fp8", devices=8),
    dict(hardware="h200", model="deepseek-v3", dtype="fp8", devices=8, mla_decode="unabsorbed"),
    dict(hardware="a100", model="mixtral-8x7b", devices=2),
    dict(hardware="h100", model="llama3-8b", dtype="int4-g128", act_dtype="bf16", kv_dtype="fp8", k_layout="once"),
    dict(hardware="a100", r=16, k=300, local_window=20, page_size=32),
    dict(hardware="h100", model="llama3-8b", gen_len=9),
]


def _same(a, b) -> bool:
    if isinstance(a, P.Labels):
        return a.tolist() == b.tolist()
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_one_configuration_is_its_row_of_a_sweep_to_the_last_bit(kw):
    points = [(1, 4096), (7, 4096), (1, 1000), (64, 32768)]
    sweep = P.predict_columns(seq_len="1000,4096,32768", batch="1,7,64", **kw)
    ns = len(S_.parse_strategies(kw.get("strategies")))
    for batch, seq in points:
        one = P.predict_columns(seq_len=seq, batch=batch, **kw)
        rows = np.flatnonzero((sweep["batch"] == batch) & (sweep["seq_len"] == seq))
        assert len(rows) == ns == len(one["time_s"])
        for c, v in one.items():
            want = v.take(np.arange(ns)) if isinstance(v, P.Labels) else v
            got = sweep[c].take(rows) if isinstance(sweep[c], P.Labels) else sweep[c][rows]
            assert _same(want, got), (kw, batch, seq, c)


def _constructor_frame(cols):
    """What `predict` returned before it built its frame from blocks: pandas' constructor on the columns."""
    small = len(cols["time_s"]) <= 10_000
    return pd.DataFrame({c: (v.decode().astype(str) if small else pd.Categorical.from_codes(v.codes, v.categories))
                         if isinstance(v, P.Labels) else v for c, v in cols.items()})


@pytest.mark.parametrize("options", [{}, {"mode.string_storage": "python"}, {"future.infer_string": False}],
                         ids=["default", "python-strings", "object-strings"])
def test_the_frame_is_the_constructors_frame_of_the_columns(options):
    """`predict` builds its DataFrame from one block per dtype (issue 16): the same frame as pandas' constructor on
    the same columns, whatever the pandas options that decide the strings' dtype: columns, dtypes, values, index."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # a context past the model's; pandas' deprecation of an option
        with pd.option_context(*[x for kv in options.items() for x in kv]) if options else warnings.catch_warnings():
            for kw in (dict(seq_len=4096), dict(hardware="h200", model="deepseek-v3", seq_len=[1024, 4096], gen_len=3,
                                                strategies="sparq,quest"),
                       dict(hardware="a100,h100", seq_len="1024:131072:+256", batch="1,2,4")):   # > 10,000 rows
                cols = P.predict_columns(**kw)
                got, want = frame(cols), _constructor_frame(cols)
                pd.testing.assert_frame_equal(got, want, check_exact=True)
                assert list(got.dtypes) == list(want.dtypes) and got.columns.dtype == want.columns.dtype
                assert len(got._mgr.blocks) == len(want._mgr.blocks)
                if len(got) <= 10_000:
                    assert got.equals(sparq_sim.predict(**kw))


def test_a_frame_written_into_changes_no_later_frame():
    """A short text column is converted once and handed out as a copy over the same (immutable) Arrow data: writing
    into one frame, in place or through pandas, changes that frame only."""
    first = sparq_sim.predict(hardware="a100", seq_len=4096, strategies="sparq,h2o")
    want = sparq_sim.predict(hardware="a100", seq_len=4096, strategies="sparq,h2o")
    first.loc[0, "hardware"] = "mine"
    first["strategy"].array[1] = "other"
    first.iloc[1, first.columns.get_loc("bound")] = "nothing"
    assert first.loc[0, "hardware"] == "mine"
    again = sparq_sim.predict(hardware="a100", seq_len=4096, strategies="sparq,h2o")
    pd.testing.assert_frame_equal(again, want, check_exact=True)
    assert "mine" not in again["hardware"].tolist() and "other" not in again["strategy"].tolist()
    assert "nothing" not in again["bound"].tolist()


def test_text_columns_of_the_same_bytes_but_other_codes_are_kept_apart():
    """Codes of other widths or byte orders can be the same bytes (eight int8 codes and two int32 ones; 1 and 256 in
    int16 of either byte order): each column keeps its own strings."""
    bounds = ("memory", "compute", "link", "overhead")
    eight = P.Labels(np.array([0, 0, 0, 0, 1, 0, 0, 0], dtype=np.int8), bounds)
    two = P.Labels(np.array([0, 1], dtype=np.int32), bounds)
    assert eight.codes.tobytes() == two.codes.tobytes()
    cats = tuple(f"c{i}" for i in range(300))
    big, little = P.Labels(np.array([0, 1], dtype=">i2"), cats), P.Labels(np.array([0, 256], dtype="<i2"), cats)
    assert big.codes.tobytes() == little.codes.tobytes()
    for labels in (eight, two, big, little):
        got = frame({"s": labels, "time_s": np.zeros(len(labels.codes))})
        assert got["s"].tolist() == labels.tolist()


def test_parsed_axes_are_kept_by_their_text():
    assert parse_axis(1, "--seq") == [1]
    with pytest.raises(UserError):
        parse_axis(True, "--seq")            # equal to 1 and hashed alike, but not a number of the axis
    assert math.copysign(1, parse_axis(0.0, "--share", integer=False)[0]) == 1
    assert math.copysign(1, parse_axis(-0.0, "--share", integer=False)[0]) == -1   # -0.0 == 0.0, its text is not
    assert parse_axis("0", "--seq") == [0]
    with pytest.raises(UserError, match="--seq must be at least 1"):
        parse_axis("0", "--seq", minimum=1)   # the same text with a minimum
    with pytest.raises(UserError, match="--batch must be at least 1"):
        parse_axis("0", "--batch", minimum=1)
    got = parse_axis("1k,4k", "--seq")
    got.append(5)                             # the caller's list: changing it changes nothing kept
    assert parse_axis("1k,4k", "--seq") == [1024, 4096]
    assert parse_axis(4096.0, "--seq") == parse_axis("4096", "--seq") == [4096]


def test_a_list_argument_changed_between_calls_gives_the_new_values():
    seqs = [4096]
    first = P.predict_columns(seq_len=seqs)
    seqs[0] = 8192
    second = P.predict_columns(seq_len=seqs)
    assert set(first["seq_len"]) == {4096} and set(second["seq_len"]) == {8192}
    assert (second["kv_read_bytes"] > first["kv_read_bytes"]).all()


def test_the_columns_returned_are_the_callers_own():
    first = P.predict_columns(seq_len=4096)
    want = {c: (v.tolist() if isinstance(v, P.Labels) else v.copy()) for c, v in first.items()}
    for c, v in first.items():
        if not isinstance(v, P.Labels):
            assert v.flags.writeable, c
            v[...] = 0
    again = P.predict_columns(seq_len=4096)
    for c, v in again.items():
        assert (v.tolist() == want[c]) if isinstance(v, P.Labels) else np.array_equal(v, want[c]), c


def test_a_profile_file_edited_between_calls_is_read_again(tmp_path):
    text = (PROFILE_DIR / "a100-80gb.yaml").read_text().replace("name: a100-80gb", "name: my-a100")
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    before = P.predict_columns(hardware=str(f), seq_len=4096)
    assert "bandwidth: 2039 GB/s" in text
    f.write_text(text.replace("bandwidth: 2039 GB/s", "bandwidth: 1019.5 GB/s"))
    after = P.predict_columns(hardware=str(f), seq_len=4096)
    assert (after["ideal_time_s"] > before["ideal_time_s"] * 1.5).all()
    f.write_text(text)
    back = P.predict_columns(hardware=str(f), seq_len=4096)
    assert np.array_equal(back["time_s"], before["time_s"])


def test_the_cases_of_builtin_names_are_parsed_once_and_give_the_fresh_parses_rows():
    first = P.sweep(hardware="a100", model="llama3-8b", seq_len=4096, strategies="sparq,h2o", devices=2)
    again = P.sweep(hardware="a100", model="llama3-8b", seq_len="1k,8k", batch=[3, 5], compression=4,
                    strategies="sparq,h2o", devices=2)
    assert again.cases == first.cases and all(a is b for a, b in zip(again.cases, first.cases))   # kept
    assert again.seqs.tolist() == [1024, 8192] and again.batches.tolist() == [3, 5] and again.comps.tolist() == [4.0]
    kept = again.columns()
    CS._PARSED_CASES.clear()
    fresh = P.sweep(hardware="a100", model="llama3-8b", seq_len="1k,8k", batch=[3, 5], compression=4,
                    strategies="sparq,h2o", devices=2)
    assert fresh.cases[0] is not first.cases[0]
    for c, v in fresh.columns().items():
        assert _same(kept[c], v), c
    # what a context beyond the model's is told is the call's own
    with pytest.warns(UserWarning, match="exceeds llama3-8b's maximum"):
        P.predict_columns(hardware="a100", model="llama3-8b", seq_len=100_000, strategies="sparq,h2o", devices=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.predict_columns(hardware="a100", model="llama3-8b", seq_len=4096, strategies="sparq,h2o", devices=2)


def test_what_a_kept_case_is_known_by():
    args = lambda **kw: tuple(kw.get(a, d) for a, d in (("strategies", None), ("devices", 1), ("r", None)))  # noqa
    key = CS._categorical_key
    assert key("a100", "llama2-7b", args()) == key("a100", "llama2-7b", args()) is not None
    assert key("a100,h100", ["llama2-7b", "llama3-8b"], args()) is not None   # lists of built-in names too
    one, one_f, true, listed = (key("a100", "llama2-7b", args(devices=v)) for v in (1, 1.0, True, [1]))
    assert len({one, one_f, true, listed}) == 4   # equal as numbers, parsed apart (True is not a number of devices)
    assert key("a100", "llama2-7b", args(strategies=["sparq", "h2o"])) != key("a100", "llama2-7b", args())
    # files, folders, objects: their meaning may change between two calls, so they are parsed every time
    for hw, model in (("/tmp/mine.yaml", "llama2-7b"), ("mine.yml", "llama2-7b"), ("a100", "models/x/config.json"),
                      ("a100", "my-folder"), ("a100", "meta-llama/Llama-2-7b-hf"),
                      (sparq_sim.load_hardware("a100"), "llama2-7b"), ("a100", load_model_spec("llama2-7b")),
                      ("a100,/tmp/x.yaml", "llama2-7b")):
        assert key(hw, model, args()) is None, (hw, model)
    assert key("a100", "llama2-7b", args(r=np.int64(8))) is None   # a numpy number: not one of the plain kinds


def test_kept_cases_never_change_what_another_call_parses_to():
    # a list is not split at commas, a string is: the list of one string stays an error after the string's call
    for arg, value in (("strategies", "sparq,h2o"), ("hardware", "a100,h100"), ("devices", "1,2"),
                       ("dtype", "bf16,fp16"), ("k_layout", "twice")):
        P.predict_columns(seq_len=4096, **{arg: value})
        with pytest.raises(UserError):
            P.predict_columns(seq_len=4096, **{arg: [value] if arg != "k_layout" else ["twice"]})
    # a share of -0.0 is -0.0, of 0.0 is 0.0, in either order
    for first, second in ((-0.0, 0.0), (0.0, -0.0)):
        CS._PARSED_CASES.clear()
        for share in (first, second):
            got = P.predict_columns(hardware="t4", seq_len=4096, weights_on_disk=share, kv_on_disk=share)
            assert math.copysign(1, got["weights_on_disk"][0]) == math.copysign(1, share)


def test_a_call_with_a_wrong_categorical_argument_is_never_kept():
    # errors of a case's fixed quantities too (raised while the arguments are parsed): the next call is its own
    for bad in (dict(kv_location=["auto"]), dict(weights_location=("auto",)), dict(kv_location="nosuch"),
                dict(devices=3), dict(hardware="ipu", dtype="bf16")):
        CS._PARSED_CASES.clear()
        with pytest.raises(UserError):
            P.sweep(seq_len=2048, **bad)
        assert not CS._PARSED_CASES, bad
        assert len(P.predict_columns(seq_len=2048)["time_s"]) == len(S_.STRATEGY_NAMES)
    for _ in range(2):
        with pytest.raises(UserError, match="--r 999 exceeds head_dim"):
            P.sweep(hardware="a100", seq_len=4096, r=999)
    with pytest.raises(UserError, match="--seq must be at least 1"):   # a wrong number with kept cases: its error
        P.sweep(hardware="a100", seq_len=0, r=16)
    P.sweep(hardware="a100", seq_len=4096, r=16)
    with pytest.raises(UserError, match="--seq must be at least 1"):
        P.sweep(hardware="a100", seq_len=0, r=16)
    with pytest.raises(UserError, match="--compression must be at least 1"):
        P.sweep(hardware="a100", seq_len=4096, r=16, compression=0.5)


def test_a_model_folder_edited_between_calls_is_read_again(tmp_path, monkeypatch):
    import json

    cfg = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
           "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 128256,
           "max_position_embeddings": 8192}
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine" / "config.json").write_text(json.dumps(cfg))
    before = P.predict_columns(model="mine", seq_len=4096, strategies="dense")
    (tmp_path / "mine" / "config.json").write_text(json.dumps(dict(cfg, num_key_value_heads=32)))
    after = P.predict_columns(model="mine", seq_len=4096, strategies="dense")
    assert after["kv_read_bytes"][0] == pytest.approx(4 * before["kv_read_bytes"][0])


def test_model_specs_alike_in_their_hash_give_their_own_results():
    m = load_model_spec("llama2-7b")
    gqa = replace(m, n_kv_heads=8)   # same name and sizes: the same hash, a cache of a quarter the size
    assert hash(gqa) == hash(m) and gqa != m
    for first, second in ((m, gqa), (gqa, m)):
        a = sparq_sim.predict_columns(model=first, seq_len=4096, strategies="dense")
        b = sparq_sim.predict_columns(model=second, seq_len=4096, strategies="dense")
        ratio = (a["kv_read_bytes"] / b["kv_read_bytes"])[0]
        assert ratio == pytest.approx(4.0 if first is m else 0.25)


GEOMETRIES = [128, 64, S_.KVGeometry(576, 512, shared=True), S_.KVGeometry(576, 512, shared=True, columns_whole=True)]
OVERRIDES = [{}, {"r": 16, "k": 300}, {"k": 301, "page_size": 32}, {"local_window": 20, "k": 200}, {"sinks": 4},
             {"r": 600}, {"k": 5000}, {"local_window": 999, "k": 100}, {"r": 2.5}]


def _bits(x):
    a = np.asarray(x)
    return a.dtype, (a.view(np.uint64) if a.dtype == np.float64 else a).tolist()


@pytest.mark.parametrize("strategy", list(S_.STRATEGY_NAMES) + ["streamingllm"])
def test_the_strategy_formulas_on_numbers_are_their_one_element_arrays_to_the_last_bit(strategy):
    """A single configuration resolves parameters and counts traffic on numbers (Python floats and ints, not 0-d
    arrays): the same formulas as on arrays, so every value is the one-element array's, and a bad override the same
    error."""
    for geo, S, C, over in itertools.product(GEOMETRIES, [1, 7, 4096, 131072], [1, 3.3, 8], OVERRIDES):
        try:
            want = S_.resolve_params(strategy, np.array([S]), geo, C, **over)
        except UserError as e:
            with pytest.raises(UserError, match=re.escape(str(e))):
                S_.resolve_params(strategy, S, geo, C, **over)
            continue
        for Sx in (S, np.int64(S)):
            got = S_.resolve_params(strategy, Sx, geo, C, **over)
            assert {c: _bits(v) for c, v in got.items()} == {c: _bits(v[0]) for c, v in want.items()}
            assert all(np.ndim(v) == 0 and not isinstance(v, np.ndarray) for v in got.values())
            for f, args in ((S_.traffic_components, (geo,)), (S_.elements_moved, (geo,)), (S_.cache_tokens, ()),
                            (S_.extra_cache_elements, (geo,))):
                one, arr = f(strategy, Sx, *args, got), f(strategy, np.array([S]), *args, want)
                if f is S_.traffic_components:
                    assert [(n, kind, _bits(e)) for n, kind, e in one] == \
                        [(n, kind, _bits(np.broadcast_to(e, (1,))[0])) for n, kind, e in arr]
                else:
                    assert _bits(one) == _bits(np.broadcast_to(arr, (1,))[0]), f.__name__


def test_a_spec_hash_is_its_key_fields_computed_once_and_anew_for_a_changed_spec():
    m = load_model_spec("llama2-7b")
    key = lambda s: hash((s.name, s.n_layers, s.d_model, s.n_heads, s.head_dim))  # noqa: E731
    assert hash(m) == key(m) == hash(m)
    for other in (replace(m, name="other"), replace(m, n_layers=8), replace(m, head_dim=64, d_model=2048)):
        assert hash(other) == key(other) != hash(m)


@pytest.mark.parametrize("kw", [dict(hardware="a100"), dict(hardware="l4", kv_location="host"),
                                dict(hardware="a100", weights_location="host"),
                                dict(hardware="t4", model="opt-30b", dtype="fp16", weights_on_device=0.2,
                                     kv_on_device=0.5, weights_on_disk=0.3, kv_on_disk=0.1),
                                dict(hardware="ipu", dtype="fp16", devices=4),
                                dict(hardware="h100", model="llama3-8b", dtype="int4-g128", act_dtype="bf16")],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_the_stacked_timing_is_each_operators_own(kw):
    """`roofline.time_ops` times operators stacked and leaves out a memory tier no byte passes (`Placement.idle`);
    `time_op` times one operator over every tier. Each operator's times and bound are the same to the last bit, for
    caches on the device and the host, offloaded and disk shares, two device tiers and weight-only quantisation."""
    from sparq_sim.simulator.roofline import time_op, time_ops

    keep: dict = {}
    sw = P.sweep(seq_len=4096, batch=3, **kw)
    B, S, C = sw._grid(0, 1)
    P.evaluate_case(sw.cases[0], list(sw.strategies), B, S, C, None, None, keep_ops=keep)
    case = sw.cases[0]
    devices = P.Parallel.of(case.model, case.devices).devices
    idle = 0
    for strat, (pl, timed) in keep.items():
        ops = [op for op, _ in timed]
        stacked = time_ops(ops, case.hw, pl, case.prec, devices, 1)
        idle += sum(pl.idle(t, np.broadcast_to(pl.kv, (len(ops), 1))) for t in range(len(pl.tiers)))
        for i, op in enumerate(ops):
            one = time_op(op, case.hw, pl, case.prec, devices)
            for got, want in ((stacked.time_s[i], one.time_s), (stacked.ideal_s[i], one.ideal_s),
                              (stacked.bound[i], one.bound)):
                assert _bits(np.ravel(got)[0]) == _bits(np.ravel(want)[0]), (strat, op.name)
    if kw == dict(hardware="a100"):
        assert idle > 0   # the host link carries nothing here: it was left out, and the times are the same
