"""``nnvitals track CHECKPOINTS --out DIR``: the analyses over a checkpoint series, its table,
figures and an offline HTML report.

The series is made here: the demo MLP's architecture trained on the digits for 20 steps, a
``.safetensors`` state dict at steps 0, 10 and 20 (as tests/integration/test_trajectory.py). Real
runs in subprocesses with tiny settings through ``--overrides``; bad input in this process.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_helpers import assert_one_error_line, run_all
from safetensors.torch import save_file

from analyses.core.data import load_digits
from analyses.core.result import Result
from analyses.trajectory.result import COLUMNS, TrajectoryResult
from analyses.trajectory.views import main_figures, summary_text
from analyses.zoo.models import DigitsMLP

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = (0, 10, 20)
TINY = {
    "spectra": {"farms_windows": 4},
    "ibp": {"max_samples": 16},
    "lipschitz": {"max_samples": 16, "mixes": 4},
    "connectivity": {"points": 3, "max_iter": 5},
}
RAN = ("spectra", "ibp", "lipschitz", "connectivity")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict[str, subprocess.CompletedProcess], Path]:
    d = tmp_path_factory.mktemp("track-cli")
    series = d / "series"
    series.mkdir()
    train = load_digits(split="train")
    torch.manual_seed(0)
    model = DigitsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(STEPS[-1] + 1):
        if step in STEPS:
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, series / f"step_{step}.safetensors")
        idx = torch.randint(len(train.x), (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
        opt.step()
    out = d / "out"
    files = [series / f"step_{s}.safetensors" for s in STEPS]
    cases = {
        "track": ["track", series, "--architecture", "mlp", "--analyses", ",".join(RAN), "--baseline", "0",
                  "--overrides", json.dumps(TINY), "--formats", "svg", "--out", out / "track"],
        "files": ["track", *files, "--formats", "svg", "--out", out / "files"],
    }  # fmt: skip
    return run_all(cases, d / "cache"), d


class _Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.links: list[str] = []
        self.ids: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href", "srcset", "data", "action") and v]
        if tag == "section":
            self.ids.append(dict(attrs).get("id", ""))


def _section(text: str, anchor: str) -> str:
    start = text.index(f'<section id="section-{anchor}"')
    return text[start : text.index("</section>", start)]


def _offline(text: str) -> None:
    links = _Page(text).links
    assert not [
        u for u in links if re.match(r"\s*([a-z][a-z0-9+.-]*:|//)", u, re.I) and not u.startswith("data:")
    ]
    assert all(u.startswith("#section-") for u in links), links
    assert "Bokeh" in text and "<script src" not in text and "<link" not in text


def test_track_writes_table_summary_result_figures_and_report(runs):
    done, d = runs
    run = done["track"]
    assert run.returncode == 0, run.stderr
    out = d / "out" / "track"
    res = Result.load(out / "trajectory.nnv")
    assert isinstance(res, TrajectoryResult) and res.steps == list(STEPS) and res.baseline == 0
    table = pd.read_csv(out / "trajectory.csv", keep_default_na=False)
    assert list(table.columns) == [*COLUMNS, "delta"] and len(table) == len(res.table)
    assert set(table["analysis"]) == set(RAN) and set(table["step"]) == set(STEPS)
    at0 = table[(table["step"] == 0) & (table["analysis"] == "spectra") & (table["metric"] == "alpha")]
    assert (at0["delta"].astype(float) == 0).all()  # the baseline against itself
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["steps"] == list(STEPS) and summary["analyses"] == list(RAN) and summary["errors"] == []
    stems = list(main_figures(res))
    assert {"alpha_heatmap", "mean_alpha", "certified_accuracy", "lipschitz", "barrier"} <= set(stems)
    for stem in stems:
        assert "<svg" in (out / f"{stem}.svg").read_text()[:3000], stem
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["trajectory.csv", "summary.json", "trajectory.nnv", "report.html",
                            *[f"{s}.svg" for s in stems]])  # fmt: skip
    # the summary text (the loaded result lists its analyses in another order: line by line)
    lines = summary_text(res).splitlines()
    assert len(lines) == 1 + len(RAN) and all(line in run.stdout.splitlines() for line in lines)
    assert "wrote" in run.stdout

    page = (out / "report.html").read_text()
    _offline(page)
    assert _Page(page).ids == ["section-series", *[f"section-{a}" for a in RAN]]
    overview = _section(page, "series")
    assert all(html.escape(line) in overview for line in lines) and "baseline: step 0" in overview
    for a in RAN:
        sec = _section(page, a)
        h = summary["headline"][a]
        assert 'badge ran">ran' in sec and 'class="plot"' in sec, a
        assert f"<th>metric</th><td>{h['metric']}</td>" in sec, a
        assert f"<th>at step {h['first_step']}</th><td>{h['first']:.4g}</td>" in sec, a
        assert f"<th>at step {h['last_step']}</th><td>{h['last']:.4g}</td>" in sec, a
    assert page.count('class="plot"') == len(stems)


def test_checkpoint_files_without_architecture_run_spectra_and_list_the_rest(runs):
    done, d = runs
    run = done["files"]
    assert run.returncode == 0, run.stderr
    out = d / "out" / "files"
    res = Result.load(out / "trajectory.nnv")
    assert res.steps == list(STEPS) and res.analyses == ["spectra"]
    assert set(pd.read_csv(out / "trajectory.csv")["analysis"]) == {"spectra"}
    page = (out / "report.html").read_text()
    _offline(page)
    skipped = ["ibp", "lipschitz", "orbits", "connectivity"]
    assert _Page(page).ids == ["section-series", "section-spectra", *[f"section-{a}" for a in skipped]]
    for a in skipped:
        sec = _section(page, a)
        assert "not applicable" in sec and "architecture" in sec and 'class="plot"' not in sec, a
    assert "ibp: not run" in run.stdout


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["{d}/no-such-dir"], 1, "no-such-dir: no such directory"),
        (
            ["{s}", "--analyses", "spectra,wavelets"],
            2,
            "argument --analyses: expected a comma-separated list",
        ),
        (["{s}", "--overrides", "{spectra: 1"], 2, "argument --overrides: expected a JSON object"),
        (["{s}", "--overrides", '["ibp"]'], 2, "argument --overrides: expected a JSON object"),
        (["{s}", "--overrides", '{"wavelets": {}}'], 1, "overrides: unknown analysis 'wavelets'"),
        (
            ["{s}", "--architecture", "mlp", "--overrides", '{"ibp": {"epsilon": 1}}'],
            1,
            "'epsilon' is not a parameter",
        ),
        (["{s}", "--baseline", "5"], 1, "step 5: not in series"),
        (["{s}", "--baseline", "ten"], 2, "argument --baseline: expected a whole number"),
        (["{s}", "--analyses", "ibp"], 1, "need a runnable model"),
        ([], 2, "the following arguments are required: CHECKPOINTS"),
    ],
    ids=[
        "missing-dir",
        "analyses",
        "json",
        "json-list",
        "key",
        "param",
        "baseline",
        "baseline-text",
        "weights",
        "none",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys, monkeypatch, args, code, text):
    from dashboard import cli

    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NNVITALS_DEBUG", raising=False)
    d = runs[1]
    argv = [a.replace("{d}", str(d)).replace("{s}", str(d / "series")) for a in args]
    got = cli.main(["track", *argv, "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert got == code, (argv, got, captured.err)
    assert_one_error_line(captured.err, text)
    assert captured.out == "" and not (tmp_path / "o").exists()
