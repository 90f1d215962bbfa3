"""Progress of long commands (common/progress.py): a line per tenth off a terminal, a bar with the time left on
one, a status line before a model loads, --quiet for none of it; results and errors are never mixed in."""

import io
import re

from conftest import PROGRESS_LINE, without_progress

from sparq_sim.cli import main
from sparq_sim.common.progress import Progress, status


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_one_line_when_it_starts_and_one_per_tenth():
    out = io.StringIO()
    with Progress(1000, "record sparq", stream=out, unit="decode steps") as bar:
        for _ in range(1000):
            bar.advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and all(PROGRESS_LINE.match(x) for x in lines), lines
    assert lines[0].startswith("record sparq: 0% (0/1,000 decode steps), 0:00 elapsed")
    assert lines[5].startswith("record sparq: 50% (500/1,000 decode steps)") and "left" in lines[5]
    assert lines[-1].startswith("record sparq: 100% (1,000/1,000 decode steps)") and "left" not in lines[-1]


def test_a_jump_over_several_tenths_is_one_line():
    out = io.StringIO()
    with Progress(10, "x", stream=out) as bar:
        bar.advance(7)
        bar(3)                      # callable, as the reference's decode loop takes it
    assert [x.split(":")[1].split("(")[0].strip() for x in out.getvalue().splitlines()] == ["0%", "70%", "100%"]


def test_on_a_terminal_a_bar_with_the_time_left_cleared_at_the_end():
    out = Tty()
    bar = Progress(4, "measure", stream=out, unit="points")
    bar.__enter__()
    bar.start -= 10.0               # ten seconds in
    bar.done = 1
    text = bar.line()
    assert re.match(r"measure \[#{6}\.{18}\] 1/4 points\s+25%  0:10 elapsed, eta 0:30$", text), text
    bar.__exit__(None, None, None)
    assert out.getvalue().startswith("\rmeasure [") and out.getvalue().endswith("\r")
    assert "\n" not in out.getvalue()


def test_quiet_says_nothing_and_a_closed_stderr_stops_nothing():
    out = io.StringIO()
    with Progress(5, "x", quiet=True, stream=out) as bar:
        bar.advance(5)
    status("loading model m ...", quiet=True, stream=out)
    assert out.getvalue() == ""
    closed = io.StringIO()
    closed.close()
    with Progress(5, "x", stream=closed) as bar:   # standard error gone: the work goes on
        bar.advance(5)
    status("loading ...", stream=closed)


def test_a_large_sweep_to_a_file_reports_progress_and_quiet_silences_it(tmp_path, capsys, monkeypatch):
    """A sweep of several chunks (here of 1,000 rows) written to a file."""
    import sparq_sim.simulator.predict as P

    monkeypatch.setattr(P, "DEFAULT_CHUNK_ROWS", 1000)
    args = ["predict", "--gpu", "a100", "--model", "llama3.1-8b", "--seq", "1:5000", "--strategies", "dense,sparq",
            "-o", str(tmp_path / "s.csv")]
    assert main(args) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert 3 <= len(lines) <= 11 and all(PROGRESS_LINE.match(x) for x in lines), err
    assert lines[-1].startswith("predict: 100% (10,000/10,000 rows)")
    assert without_progress(err) == []
    assert main(args + ["--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(args[:-2] + ["-f", "csv"]) == 0          # to standard output: the rows only
    assert capsys.readouterr().err == ""
