"""``nnvitals report MODEL --out DIR``: every analysis that applies, its tables, one offline HTML report.

Real runs in subprocesses (tiny settings through ``--overrides``): the demo ``mlp`` (spectra,
orbits, IBP, Lipschitz run; connectivity is not applicable without ``--model-b``), a ``.pt2``
exported here with a second one as ``--model-b`` (connectivity runs; orbits fails on the default
16x16 digits and is listed with its reason while the others still run), a weights-only
``.safetensors`` (only spectra applies), and bad input (one line, non-zero exit, nothing
written). The report's IBP table is the single ``nnvitals ibp`` command's, byte for byte.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_helpers import assert_one_error_line, run_all
from safetensors.torch import save_file
from torch import nn

from analyses.registry import ENTRIES, resolve

pytestmark = pytest.mark.usefixtures("one_thread")

REPORTED = [e for e in ENTRIES if e.positional[0].param == "model"]
BY_COMMAND = {e.command: e for e in REPORTED}
TINY = {
    "orbits": {"max_samples": 8, "steps": 4},
    "ibp": {"max_samples": 16},
    "lipschitz": {"max_samples": 16, "mixes": 4},
    "connectivity": {"points": 3, "max_iter": 5},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict[str, subprocess.CompletedProcess], Path]:
    d = tmp_path_factory.mktemp("report-cli")
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for seed in (0, 1):
        torch.manual_seed(seed)
        conv = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
        ).eval()
        torch.export.save(torch.export.export(conv, (x,)), str(d / f"conv{seed}.pt2"))
        if seed == 0:
            save_file({k: v.contiguous() for k, v in conv.state_dict().items()}, d / "weights.safetensors")
    out, tiny = d / "out", json.dumps(TINY)
    cases = {
        "demo": ["report", "mlp", "--overrides", tiny, "--out", out / "demo"],
        "single_ibp": ["ibp", "mlp", "--data", "digits8", "--max-samples", "16", "--formats", "svg",
                       "--out", out / "single_ibp"],
        "pt2": ["report", d / "conv0.pt2", "--model-b", d / "conv1.pt2", "--overrides", tiny, "--out", out / "pt2"],
    }  # fmt: skip
    return run_all(cases, d / "cache"), d


@pytest.fixture
def run_here(runs, tmp_path, monkeypatch):
    """``nnvitals ARGS`` in this process (a fresh result store): (exit code, stdout, stderr)."""
    from dashboard import cli

    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NNVITALS_DEBUG", raising=False)

    def run(capsys, *args):
        code = cli.main([str(a) for a in args])
        got = capsys.readouterr()
        return code, got.out, got.err

    return run


class _Page(HTMLParser):
    """The tags of a page: every src/href-like attribute, the sections' ids, the scripts' srcs."""

    def __init__(self, text: str):
        super().__init__()
        self.links: list[str] = []
        self.ids: list[str] = []
        self.scripts = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href", "srcset", "data", "action") and v]
        if tag == "section":
            self.ids.append(a.get("id", ""))
        if tag == "script":
            self.scripts += 1


def _section(text: str, command: str) -> str:
    start = text.index(f'<section id="section-{command}"')
    return text[start : text.index("</section>", start)]


def _offline(text: str) -> None:
    page = _Page(text)
    outside = [
        u
        for u in page.links
        if re.match(r"\s*([a-z][a-z0-9+.-]*:|//)", u, re.I) and not u.startswith("data:")
    ]
    assert not outside, outside
    assert all(u.startswith("#section-") for u in page.links), page.links
    assert page.scripts >= 2 and "Bokeh" in text  # BokehJS inlined, no script src at all


def test_demo_model_report_has_every_analysis_and_the_tables(runs):
    done, out = runs[0], runs[1] / "out"
    run = done["demo"]
    assert run.returncode == 0, run.stderr
    d = out / "demo"
    ran = ("spectra", "orbits", "ibp", "lipschitz")
    for c in ran:
        e = BY_COMMAND[c]
        table = pd.read_csv(d / f"{e.stem}.csv")
        res = e.result_class.load(d / f"{e.stem}.nnv")
        assert len(table) == len(res.table) and list(table.columns) == list(res.table.columns), c
    assert set(pd.read_csv(d / "jacobian_norms.csv").columns) == {"split", "row", "jacobian_norm"}
    assert not (d / "connectivity.csv").exists()
    summary = json.loads((d / "summary.json").read_text())
    assert summary["data"] == "digits8" and summary["model"] == "mlp"
    assert {c: summary["analyses"][c]["status"] for c in BY_COMMAND} == {
        "spectra": "ran", "orbits": "ran", "ibp": "ran", "lipschitz": "ran", "connectivity": "not applicable"
    }  # fmt: skip
    assert summary["analyses"]["ibp"]["summary"]["samples"] == 16
    assert summary["analyses"]["orbits"]["summary"]["elements"] == 4

    text = (d / "report.html").read_text()
    _offline(text)
    page = _Page(text)
    assert page.ids == [f"section-{e.command}" for e in REPORTED]
    for c in ran:
        e = BY_COMMAND[c]
        sec = _section(text, c)
        assert 'badge ran">ran' in sec and 'class="plot"' in sec, c
        res = e.result_class.load(d / f"{e.stem}.nnv")
        # its summary text, as the single command prints it, and its headline numbers
        assert html.escape(resolve(e.summary)(res)) in sec, c
        first = e.numbers[0]
        assert f"<th>{first}</th>" in sec, (c, first)
    ibp = summary["analyses"]["ibp"]["summary"]
    assert f"<th>certified_accuracy</th><td>{ibp['certified_accuracy']:.4g}</td>" in _section(text, "ibp")
    conn = _section(text, "connectivity")
    assert "not applicable" in conn and "--model-b" in conn and 'class="plot"' not in conn
    assert "connectivity: not applicable" in run.stdout and "report.html" in run.stdout


def test_the_report_tables_are_the_single_commands_tables(runs):
    done, out = runs[0], runs[1] / "out"
    assert done["single_ibp"].returncode == 0, done["single_ibp"].stderr
    single = (out / "single_ibp" / "ibp.csv").read_bytes()
    assert single == (out / "demo" / "ibp.csv").read_bytes()


def test_pt2_pair_runs_connectivity_and_lists_the_failed_orbits(runs):
    done, out = runs[0], runs[1] / "out"
    run = done["pt2"]
    assert run.returncode == 0, run.stderr
    d = out / "pt2"
    for name in (
        "spectra.csv",
        "connectivity.csv",
        "layers.csv",
        "ibp.csv",
        "lipschitz.csv",
        "jacobian_norms.csv",
    ):
        assert (d / name).is_file(), name
    assert not (d / "orbits.csv").exists()
    summary = json.loads((d / "summary.json").read_text())["analyses"]
    assert summary["orbits"]["status"] == "failed" and summary["connectivity"]["status"] == "ran"
    text = (d / "report.html").read_text()
    _offline(text)
    assert [i for i in _Page(text).ids] == [f"section-{e.command}" for e in REPORTED]
    orbits = _section(text, "orbits")
    reason = summary["orbits"]["reason"]
    assert reason.startswith("failed: ") and "\n" not in reason and "Traceback" not in text
    assert html.escape(reason) in orbits and 'badge failed">failed' in orbits
    assert 'class="plot"' in _section(text, "connectivity")
    assert "orbits: failed:" in run.stdout


def test_weights_only_model_runs_spectra_and_says_why_not_the_rest(runs, run_here, tmp_path, capsys):
    d = tmp_path / "weights"
    code, out, err = run_here(capsys, "report", runs[1] / "weights.safetensors", "--out", d)
    assert code == 0, err
    assert sorted(p.name for p in d.iterdir()) == [
        "report.html",
        "spectra.csv",
        "spectra.nnv",
        "summary.json",
    ]
    text = (d / "report.html").read_text()
    _offline(text)
    assert _Page(text).ids == [f"section-{e.command}" for e in REPORTED]
    assert 'badge ran">ran' in _section(text, "spectra")
    for c in ("orbits", "ibp", "lipschitz"):
        sec = _section(text, c)
        assert "not applicable" in sec and "holds weights only" in sec, c
    assert "--model-b" in _section(text, "connectivity")
    assert "ibp: not applicable" in out and "wrote 4 files" in out


def test_nothing_ran_is_one_line_and_nothing_written(runs, run_here, tmp_path, capsys):
    d = tmp_path / "none"
    code, out, err = run_here(capsys, "report", runs[1] / "weights.safetensors", "--analyses", "ibp,lipschitz",
                              "--out", d, "-q")  # fmt: skip
    assert code == 1 and out == ""
    assert_one_error_line(err, "no analysis ran")
    assert "ibp: not applicable" in err and not d.exists()


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["{d}/no-such.safetensors"], 1, "no-such.safetensors: no such file"),
        (["mlp", "--out", "{d}/a_file"], 1, "--out"),
        (
            ["mlp", "--analyses", "spectra,wavelets"],
            2,
            "argument --analyses: expected a comma-separated list of spectra",
        ),
        (["mlp", "--overrides", "{ibp: 1"], 2, "argument --overrides: expected a JSON object"),
        (["mlp", "--overrides", "[1]"], 2, "argument --overrides: expected a JSON object"),
        (["mlp", "--overrides", '{"wavelets": {}}'], 2, "argument --overrides: unknown analysis 'wavelets'"),
        (
            ["mlp", "--overrides", '{"ibp": {"epsilon": 1}}'],
            2,
            "argument --overrides: ibp: 'epsilon' is not a parameter",
        ),
        (["mlp", "--overrides", '{"orbits": {"steps": 0}}'], 2, "argument --overrides: orbits:"),
        (["mlp", "--overrides", '{"ibp": 3}'], 2, "argument --overrides: ibp: expected a JSON object"),
        ([], 2, "the following arguments are required: MODEL"),
        (["mlp", "--device", "cuda:7"], 1, "cuda:7"),
    ],
    ids=[
        "missing",
        "out-is-file",
        "analyses",
        "json",
        "json-list",
        "key",
        "param",
        "value",
        "not-dict",
        "no-model",
        "device",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(runs, run_here, tmp_path, capsys, args, code, text):
    (tmp_path / "a_file").write_text("not a directory")
    args = [a.replace("{d}", str(runs[1])) if "{d}" in a and "a_file" not in a else a.replace("{d}", str(tmp_path))
            for a in args]  # fmt: skip
    if "--out" not in args:
        args += ["--out", str(tmp_path / "o")]
    got, out, err = run_here(capsys, "report", *args)
    assert got == code, (args, got, err)
    assert_one_error_line(err, text)
    assert out == "" and not (tmp_path / "o").exists()
    assert (tmp_path / "a_file").read_text() == "not a directory"


def test_the_report_opens_offline_in_a_browser(runs):
    """Every figure draws in Chromium with no request outside the file and no console error."""
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    done, out = runs[0], runs[1] / "out"
    assert done["pt2"].returncode == 0, done["pt2"].stderr
    path = out / "pt2" / "report.html"
    plots = path.read_text().count('class="plot"')
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        drawn = """() => Array.from(document.querySelectorAll('.plot')).filter(d => {
            const view = d.firstElementChild && d.firstElementChild.firstElementChild;
            return view && view.className.startsWith('bk-') && view.shadowRoot; }).length"""
        page.wait_for_function(f"({drawn})() === {plots}", timeout=30000)
        browser.close()
    assert plots >= 5
    assert [u for u in requests if not u.startswith(("file:", "data:", "blob:"))] == []
    assert errors == []


def test_the_report_builder_says_which_figure_it_could_not_draw(tmp_path):
    """analyses.core.report on its own: a figure neither bokeh nor matplotlib can draw is a line in
    its section (the others draw), text is escaped, and only tag attributes count as links."""
    import holoviews as hv

    from analyses.core.report import Section, headline_numbers, outside_urls, write_report

    sections = [
        Section("A <b>", "a", numbers=[("x", 1.234567), ("n", 3)], summary="s <1>",
                figures={"curve": hv.Curve([1, 2, 3]), "bad": object()}),
        Section("B", "b", reason="not applicable: needs <B>", status="not applicable"),
    ]  # fmt: skip
    text = write_report(tmp_path / "r.html", "T", sections, ["intro"]).read_text()
    assert text.count('class="plot"') == 1 and "figure bad: not drawn" in text
    assert "s &lt;1&gt;" in text and "A &lt;b&gt;" in text and "needs &lt;B&gt;" in text
    assert "<th>x</th><td>1.235</td>" in text and "<th>n</th><td>3</td>" in text
    assert _Page(text).ids == ["section-a", "section-b"] and outside_urls(text) == []
    page = '<script src="https://cdn.example/x.js"></script><a href="//h/x">a</a><img src="data:image/png;base64,AA">'
    assert outside_urls(page) == ["https://cdn.example/x.js", "//h/x"]
    assert outside_urls("<script>var t = '<img src=\"https://x\">';</script>") == []
    summary = {"a": 1, "models": {"m": {"gap": 0.5, "best": "0°"}}, "s": "x", "d": {"k": 1}}
    assert headline_numbers(summary, ("gap", "best", "a", "d", "missing")) == [
        ("gap", 0.5),
        ("best", "0°"),
        ("a", 1),
    ]
    assert headline_numbers(summary) == [("a", 1), ("gap", 0.5)]
