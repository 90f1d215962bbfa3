"""The plotly report (`sparq-sim report`, `sparq_sim.report`): figures, the HTML file, and the page in a real browser.

The browser test needs Debian's chromium (`apt-get install -y chromium`); it is skipped only when chromium is absent
outside CI (CI=true makes it run, and fail if chromium is missing).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import sparq_sim
from sparq_sim import report
from sparq_sim.cli import main

SMALL = dict(hardware="a100,h100", seq_len="1k,4k,16k", batch="1,16")
EXPECTED = ["roofline-a100-80gb", "roofline-h100-sxm", "bytes", "speedup-seq", "speedup-batch", "capacity"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small evaluation JSON, two synthetic traces (Parquet) and a measurement CSV in the published schema."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    d = tmp_path_factory.mktemp("report-inputs")
    rows = []
    for task, full in (("repetition", 213.0), ("passkey", 1.0)):
        rows.append(dict(task=task, strategy="dense", compression=1, score=full, transfer_ratio=1.0))
        for strat, loss in (("sparq", 0.01), ("h2o", 0.2), ("lm-infinite", 0.25)):
            for c in (2, 4, 8):
                rows.append(dict(task=task, strategy=strat, compression=c, score=full * (1 - loss * np.log2(c)),
                                 transfer_ratio=1 / c))
    (d / "eval.json").write_text(json.dumps({"rows": rows}))
    rng = np.random.default_rng(0)
    traces = []
    for strat in ("sparq", "h2o"):
        step, layer, head = (a.ravel() for a in np.meshgrid(np.arange(4), np.arange(6), np.arange(3), indexing="ij"))
        n = step.size
        t = pa.table({"step": step, "layer": layer, "kv_head": head, "seq_len": np.full(n, 256),
                      "alpha": rng.uniform(0.6, 1.0, n), "out_rel_err": rng.lognormal(-4, 1, n)})
        t = t.replace_schema_metadata({"strategy": json.dumps(strat), "params": json.dumps({"r": 8, "k": 32})})
        pq.write_table(t, d / f"{strat}.parquet")
        traces.append(str(d / f"{strat}.parquet"))
    lines = ["hardware,kernel,strategy,k_layout,batch,seq_len,n_heads,n_kv_heads,head_dim,dtype,r,k,time_s,"
             "time_stderr_s"]
    for B in (1, 16):
        for S in (1024, 4096):
            dense = 2.0e-4 + B * S * 32 * 128 * 2 * 2 / 5e11
            lines.append(f"NVIDIA A10G,attn-torch,dense,,{B},{S},32,32,128,float16,,,{dense},1e-6")
            for kernel, layout, f in (("sparq-attn-triton", "twice", 0.4), ("sparq-attn-torch-oneK", "once", 0.9)):
                lines.append(f"NVIDIA A10G,{kernel},sparq,{layout},{B},{S},32,32,128,float16,32,128,{dense * f},1e-6")
    (d / "measured.csv").write_text("\n".join(lines) + "\n")
    return dict(evaluation=str(d / "eval.json"), trace=traces, measured=str(d / "measured.csv"))


@pytest.fixture(autouse=True)
def pyarrow_trace_reader(monkeypatch):
    """The synthetic traces carry only what the report reads: read them with pyarrow even once traces/ exists."""
    monkeypatch.setattr(report, "_trace_reader", lambda: None)


def _points(fig) -> int:
    return sum(sum(v is not None for v in (tr.y if tr.y is not None else [])) for tr in fig.data)


def test_figures_validate_and_hold_data(inputs):
    figs = report.figures(**SMALL, **inputs)
    assert list(figs) == EXPECTED + ["accuracy", "trace-layers", "measured-time", "measured-speedup"]
    for name, fig in figs.items():  # plotly.graph_objects.Figure validated every attribute
        assert _points(fig) > 0, name
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text, name


def test_every_control_matches_its_figure(inputs):
    """Each dropdown or button sets per-trace values for exactly the figure's traces, and every option shows data."""
    figs = report.figures(hardware="a100,h100", model="llama2-7b,llama3-8b", seq_len="1k,8k", batch="1,8",
                          compression="4,8", **inputs)
    for name, fig in figs.items():
        n = len(fig.data)
        for menu in fig.layout.updatemenus or ():
            for button in menu.buttons:
                restyle = button.args[0] or {}
                for key, value in restyle.items():
                    if isinstance(value, (list, tuple)):
                        assert len(value) == n, (name, button.label, key)
                if "visible" in restyle:
                    shown = [tr for tr, v in zip(fig.data, restyle["visible"]) if v is True]
                    assert any(tr.y is not None and any(y is not None for y in tr.y) and tr.x[0] is not None
                               for tr in shown), (name, button.label)


def test_roofline_has_roofs_and_every_strategy():
    fig = report.figures(hardware="h100", seq_len="4k", batch="1")["roofline-h100-sxm"]
    names = [tr.name for tr in fig.data]
    assert any(n.startswith("hbm peak") for n in names)
    assert any(n.startswith("matrix") and "bf16" in n for n in names)
    assert any(n.startswith("vector") for n in names)
    for strat in ("dense", "sparq", "h2o", "flexgen", "lm-infinite", "quest"):
        assert strat in names
    assert not any(n.startswith("host") for n in names)  # nothing is offloaded: no host-link roof
    sparq = next(tr for tr in fig.data if tr.name == "sparq")
    ops = {row[0] for row in sparq.customdata}
    assert {"sparq_approx_scores", "sparq_top_k", "sparq_exact_scores", "sparq_values"} <= ops


def test_model_dropdown_switches_visibility():
    fig = report.figures(hardware="a100", model="llama2-7b,llama3-8b", seq_len="1k,8k", batch="1,8")["speedup-seq"]
    menus = [m for m in fig.layout.updatemenus if m.type == "dropdown"]
    labels = [b.label for b in menus[0].buttons]
    assert labels == ["llama2-7b · batch 1", "llama2-7b · batch 8", "llama3-8b · batch 1", "llama3-8b · batch 8"]
    shown = [sum(bool(v) for v in b.args[0]["visible"]) for b in menus[0].buttons]
    assert len(set(shown)) == 1 and shown[0] < len(fig.data)


def test_bytes_stack_to_total():
    df = report._predict_frame(report._request("a100", "llama2-7b", "4k", "1", None, 8, "bf16", None, 1, None, None,
                                               None, None, "twice", "auto", "auto", None, None, None))
    fig = report.figures(hardware="a100", model="llama2-7b", seq_len="4k", batch="1")["bytes"]
    stacked = np.sum([np.asarray(tr.y, dtype=float) for tr in fig.data], axis=0)
    np.testing.assert_allclose(stacked, df["total_bytes"].to_numpy(), rtol=1e-12)


def test_microbench_prediction_is_attention_roofline():
    import pandas as pd

    df = pd.DataFrame([dict(hardware="NVIDIA A10G", kernel="attn-torch", strategy="dense", k_layout="", batch=64,
                            seq_len=4096, n_heads=32, n_kv_heads=32, head_dim=128, dtype="float16", r=np.nan,
                            k=np.nan, time_s=1e-3)])
    t = report.predict_microbench_times(df)[0]
    hw = sparq_sim.load_hardware("a10g")
    kv = 2 * 64 * 32 * 4096 * 128 * 2  # K and V of the whole batch, fp16
    t_mem = kv / hw.memory[0].achieved_Bps
    assert t_mem < t < t_mem * 1.2  # streaming K and V, plus a little activation traffic and launch overhead
    assert report.profile_for_device("AMD EPYC 7763 64-Core Processor (30 threads)").name == "epyc-7763"
    assert report.profile_for_device("NVIDIA A10G").name == "a10g"
    assert report.profile_for_device("Some Unknown Accelerator") is None


def test_measured_rows_use_implementation_models_where_known():
    import pandas as pd

    base = dict(hardware="NVIDIA A10G", strategy="dense", k_layout="", batch=4, seq_len=4096, n_heads=32,
                n_kv_heads=32, head_dim=128, dtype="float16", r=np.nan, k=np.nan, time_s=1e-3, time_stderr_s=0.0)
    df = pd.DataFrame([dict(base, kernel="my-own-kernel"), dict(base, kernel="attn-torch")])
    notes: list[str] = []
    pred, source = report.predict_measured(df, notes)
    assert np.isfinite(pred).all()
    assert source[0] == "attention roofline" and "my-own-kernel" in notes[0]
    assert source[1] == "implementation models"


def test_cli_writes_one_self_contained_file(tmp_path, inputs, capsys):
    out = tmp_path / "r.html"
    rc = main(["report", "-o", str(out), "--gpu", "a100", "--seq", "1k,8k", "--batch", "1,8",
               "--evaluation", inputs["evaluation"], "--measured", inputs["measured"],
               "--trace", inputs["trace"][0], "--trace", inputs["trace"][1]])
    assert rc == 0
    assert "wrote" in capsys.readouterr().err
    text = out.read_text(encoding="utf-8")
    # plotly.js inlined exactly once, every chart present, the header names the profile version and digest
    assert len(re.findall(r"\* plotly\.js v\d", text)) == 1
    assert text.count("class='sparq-chart'") == 9
    prof = sparq_sim.load_hardware("a100")
    assert prof.digest in text and "sparq-sim report --gpu a100" in text
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind


def test_report_needs_no_external_url(tmp_path):
    out = tmp_path / "r.html"
    report.write_report(out, hardware="a100", seq_len="4k", batch="1")
    text = out.read_text(encoding="utf-8")
    tags = re.findall(r"<(script|link|img|iframe|embed|object|source|video|audio)\b([^>]*)>", text, flags=re.I)
    for tag, attrs in tags:
        assert not re.search(r"\b(src|href|data)\s*=", attrs, flags=re.I), f"<{tag}{attrs}> loads something"
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", text.split("<script", 1)[0], flags=re.I)  # CSS
    assert "cdn.plot.ly/plotly" not in text and "MathJax.js" not in text


@pytest.mark.parametrize("args, message", [
    (["--evaluation", "missing.json"], "--evaluation 'missing.json' does not exist"),
    (["--trace", "missing.parquet"], "--trace 'missing.parquet' does not exist"),
    (["--measured", "missing.csv"], "--measured 'missing.csv' does not exist"),
    (["--r", "4,8"], "--r takes one value"),
    (["--seq", "0"], "--seq"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    rc = main(["report", "-o", str(tmp_path / "r.html"), "--gpu", "a100", "--seq", "4k", "--batch", "1"] + args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "r.html").exists()


def test_bad_input_files_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    notcsv = tmp_path / "x.csv"
    notcsv.write_text("a,b\n1,2\n")
    for args, message in ((["--evaluation", str(bad)], "is not valid JSON"),
                          (["--trace", str(bad)], "cannot be read as Parquet"),
                          (["--measured", str(notcsv)], "no column 'hardware'")):
        rc = main(["report", "-o", str(tmp_path / "r.html"), "--gpu", "a100", "--seq", "4k", "--batch", "1"] + args)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err


# --- the page in a real headless browser ------------------------------------------------------------------------------

_HEAD_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push('error: ' + (e.message || e)); });
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + e.reason); });
(function () { var ce = console.error; console.error = function () {
  window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); };
})();
</script>"""

_TAIL_PROBE = """<script>
window.addEventListener('load', function () { setTimeout(async function () {
  var out = {errors: window.__errors, charts: [], external: [], presses: 0};
  var divs = Array.prototype.slice.call(document.querySelectorAll('div.sparq-chart'));
  // press every button of every dropdown as a click would, last to first: the page ends as it opened
  for (var d = 0; d < divs.length; d++) {
    var menus = (divs[d].layout && divs[d].layout.updatemenus) || [];
    for (var m = 0; m < menus.length; m++) {
      var buttons = menus[m].buttons || [];
      for (var b = buttons.length - 1; b >= 0; b--) {
        try { await Plotly[buttons[b].method].apply(null, [divs[d]].concat(buttons[b].args)); out.presses += 1; }
        catch (err) { window.__errors.push(divs[d].id + ' button ' + buttons[b].label + ': ' + err); }
      }
    }
  }
  performance.getEntriesByType('resource').forEach(function (r) {
    if (!/^(file|data|blob|about):/.test(r.name)) out.external.push(r.name); });
  divs.forEach(function (div) {
    var values = 0;
    (div.data || []).forEach(function (t) {
      if (t.visible === false || t.visible === 'legendonly') return;
      (t.y || []).forEach(function (v) { if (v !== null && v !== undefined) values += 1; });
    });
    out.charts.push({id: div.id, svg: !!div.querySelector('svg.main-svg'), values: values,
      drawn: div.querySelectorAll('.scatterlayer .point, .scatterlayer .js-line, .barlayer .point').length});
  });
  var pre = document.createElement('pre'); pre.id = 'probe-result';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
}, 300); });
</script>"""


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.mark.slow
def test_report_loads_in_headless_chromium(tmp_path, inputs):
    browser = chromium_binary()
    if browser is None:
        if in_ci():
            pytest.fail("chromium is not installed, and CI must run the browser test: "
                        "apt-get update && apt-get install -y chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium); the test runs whenever CI=true")
    out = tmp_path / "r.html"
    report.write_report(out, **SMALL, **inputs)
    page = out.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + _HEAD_PROBE, 1).replace("</body>", _TAIL_PROBE + "</body>"),
                      encoding="utf-8")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
           "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any attempt to reach a host fails
           "--window-size=1400,1000", "--virtual-time-budget=20000", "--dump-dom", probed.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout, flags=re.S)
    assert m, f"the page did not finish loading (exit {proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(html.unescape(m.group(1)))
    assert result["errors"] == []
    assert result["external"] == []
    assert result["presses"] > 20  # the dropdowns and buttons were all pressed
    ids = [c["id"] for c in result["charts"]]
    assert ids == ["chart-" + name for name in EXPECTED + ["accuracy", "trace-layers", "measured-time",
                                                          "measured-speedup"]]
    for chart in result["charts"]:
        assert chart["svg"] and chart["values"] > 0 and chart["drawn"] > 0, chart
