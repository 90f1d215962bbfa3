"""Whole generations (`predict --gen-len`, issue 12): time to first token, the mean decode step as the context grows,
end-to-end time and throughput. Checked against an independent route: one `predict` per context, summed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sparq_sim.cli import main
from sparq_sim.simulator import predict as P


def _by_strategy(df):
    return {s: row for s, row in zip(df["strategy"], df.to_dict("records"))}


def test_the_generation_is_the_exact_sum_of_its_decode_steps():
    S, N, B = 1000, 37, 4
    gen = _by_strategy(P.predict(hardware="h100", model="llama3-8b", seq_len=S, batch=B, gen_len=N,
                                 strategies="dense,sparq,h2o"))
    steps = P.predict(hardware="h100", model="llama3-8b", seq_len=list(range(S + 1, S + N)), batch=B,
                      strategies="dense,sparq,h2o")
    first = _by_strategy(P.predict(hardware="h100", model="llama3-8b", seq_len=S, batch=B,
                                   strategies="dense,sparq,h2o"))
    e2e = {}
    for s, row in gen.items():
        mine = steps[steps["strategy"] == s]["time_s"].to_numpy()
        assert len(mine) == N - 1
        assert row["ttft_s"] == pytest.approx(first[s]["prefill_time_s"], rel=1e-12)
        assert row["tpot_s"] == pytest.approx(mine.mean(), rel=1e-12)
        e2e[s] = first[s]["prefill_time_s"] + mine.sum()
        assert row["e2e_time_s"] == pytest.approx(e2e[s], rel=1e-12)
        assert row["throughput_tokens_s"] == pytest.approx(B * N / e2e[s], rel=1e-12)
        assert row["gen_len"] == N
        # the per-step columns still describe the step at the prompt's length
        assert row["time_s"] == pytest.approx(first[s]["time_s"], rel=1e-12)
    for s in gen:
        assert gen[s]["e2e_speedup_vs_dense"] == pytest.approx(e2e["dense"] / e2e[s], rel=1e-12)


def test_decode_steps_grow_with_the_context():
    """A longer generation means later steps at longer contexts: tpot grows with N for dense."""
    tpot = [P.predict(hardware="a100", seq_len=4096, gen_len=n, strategies="dense")["tpot_s"].iloc[0]
            for n in (2, 1000, 4000)]
    assert tpot[0] < tpot[1] < tpot[2]


def test_generations_are_the_same_whatever_the_chunking(monkeypatch):
    kw = dict(hardware="a100,h100", seq_len="512:4096:x2", batch="1,8", gen_len=64, compression="4,8")
    whole = P.predict_columns(**kw)
    monkeypatch.setattr(P, "GENERATION_CHUNK_POINTS", 100)   # generation split across many pieces
    parts = P.concat_columns(list(P.sweep(**kw).chunks(5)))  # and the sweep streamed in chunks of 5 points
    for c in P.GENERATION_COLUMNS + ["time_s", "strategy"]:
        a, b = whole[c], parts[c]
        a, b = (a.decode(), b.decode()) if isinstance(a, P.Labels) else (a, b)
        np.testing.assert_array_equal(a, b, err_msg=c)


def test_without_dense_asked_the_speedup_is_still_against_dense():
    both = _by_strategy(P.predict(hardware="a100", seq_len=8192, gen_len=128, strategies="dense,sparq"))
    alone = P.predict(hardware="a100", seq_len=8192, gen_len=128, strategies="sparq")
    assert list(alone["strategy"]) == ["sparq"]
    assert alone["e2e_speedup_vs_dense"].iloc[0] == pytest.approx(both["sparq"]["e2e_speedup_vs_dense"], rel=1e-12)
    assert both["sparq"]["e2e_speedup_vs_dense"] > 1


def test_one_token_is_the_prefill_alone():
    row = P.predict(hardware="a100", seq_len=2048, gen_len=1, strategies="dense").iloc[0]
    assert row["e2e_time_s"] == row["ttft_s"] == row["prefill_time_s"] and np.isnan(row["tpot_s"])


def test_the_cache_can_outgrow_memory_during_the_generation():
    """A prompt that fits, a generation that does not: fits stays the prompt's, fits_at_end says so."""
    df = P.predict(hardware="a100", model="llama2-7b", seq_len=4096, batch=16, gen_len=4096, strategies="dense")
    row = df.iloc[0]
    assert bool(row["fits"]) and not bool(row["fits_at_end"])


def test_a_context_beyond_the_model_is_a_warning_not_an_error():
    with pytest.warns(UserWarning, match="exceeds llama3-8b's maximum of 8,192"):
        P.predict(model="llama3-8b", seq_len=8000, gen_len=500, strategies="dense")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.predict(model="llama3-8b", seq_len=7000, gen_len=500, strategies="dense")


def test_the_cli_prints_the_generation_and_its_warning(capsys):
    rc = main(["predict", "--gpu", "h100", "--model", "llama3-8b", "--prompt-len", "8k", "--gen-len", "512",
               "--batch", "16"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    head = out.splitlines()[0]
    assert head.startswith("generation of llama3-8b on h100") and "prompt 8192" in head and "512 tokens" in head
    for needle in ("ttft ms", "tpot ms", "e2e s", "tok/s", "e2e speedup", "fits at end", "ttft = the prompt"):
        assert needle in out
    assert err.count("\n") == 1 and err.startswith("warning: a context of 8,703 tokens exceeds llama3-8b")


@pytest.mark.parametrize("args, needle", [
    (["--prompt-len", "1024"], "--prompt-len goes with --gen-len"),
    (["--gen-len", "0"], "--gen-len"),
    (["--gen-len", "8,16"], "--gen-len takes one value"),
    (["--gen-len", "x"], "--gen-len"),
])
def test_bad_generation_arguments_are_one_line(capsys, args, needle):
    rc = main(["predict", *args])
    out, err = capsys.readouterr()
    assert rc == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_report_offers_the_end_to_end_speedup():
    from sparq_sim import report

    figs = report.figures(hardware="h100", model="llama3.1-8b", seq_len="1k,8k", batch="1", gen_len=64,
                          strategies="dense,sparq")
    menu = figs["speedup-seq"].layout.updatemenus[-1]
    labels = [b.label for b in menu.buttons]
    assert labels[-1] == "whole generation of 64 tokens (e2e)"
    ys = menu.buttons[-1].args[0]["y"][0]   # the sparq line's end-to-end speedups, by context
    want = P.predict(hardware="h100", model="llama3.1-8b", seq_len=[1024, 8192], batch=1, gen_len=64,
                     strategies="dense,sparq")
    want = want[want["strategy"] == "sparq"]["e2e_speedup_vs_dense"].tolist()
    assert list(ys) == pytest.approx(want, rel=1e-12)
    plain = report.figures(hardware="h100", model="llama3.1-8b", seq_len="1k,8k", batch="1", strategies="dense,sparq")
    assert len(plain["speedup-seq"].layout.updatemenus[-1].buttons) == len(labels) - 1
