"""The architecture matrix (issue 13): every architecture researchers bring x the five analyses.

Eight small architectures (``tests/archs.py``: MLP + LayerNorm + GELU, ResNet-18 with BatchNorm,
ResNet-20 with LayerNorm and with GroupNorm, MobileNetV2-style, ViT with
``nn.MultiheadAttention``, a GPT-style decoder on token ids, a Conv1d net on ``(N, C, L)``
signals), each briefly trained from two seeds on digits-derived data, exported to ``.pt2`` with a
dynamic batch axis and pointed at with ``.npz`` data files, as a researcher would run them:
``nnvitals COMMAND MODEL.pt2 --data D.npz --out DIR`` (connectivity: both seeds, ``--data`` the
train file and ``--test-data`` the test file).

Every cell either runs and writes its outputs (its tables, ``summary.json``, its ``.nnv``), or
is refused in exactly one line: exit code 1, stderr the single line ``nnvitals: error: ...``, no
traceback and not the "internal error" of a bug. :data:`EXPECTED` is what the issue demands:
everything runs, except Orbits on token ids (there is no orbit of a token sequence), which is
refused with a one-line reason. Cells that fail today only because an operator or input kind
another part of issue 13 adds is still missing are in :data:`PENDING` and marked
``xfail(strict=True)``: once that lands they pass, and the strict mark makes the stale entry fail
until it is removed.

The cells run the analysis the CLI makes from the same command line (``dashboard.cli``'s parser and
``make_analysis``) and write its files the CLI's way, but not its figures (rendering them takes most
of a run of these tiny models); a refusal is run again through the whole CLI, whose exit code and
stderr are checked. :func:`test_cli_writes_every_output` runs the whole CLI, figures included, once
per analysis. Run with ``-s`` to see the matrix printed at the end.
"""

from __future__ import annotations

import json
import re

import archs
import pytest
from archs import ANALYSES, ARCHS, TABLES

pytestmark = pytest.mark.usefixtures("one_thread")

RUNS, REFUSES = "runs", "refuses"

#: What every cell must do (issue 13, "Must show"): run, or refuse in one line.
EXPECTED: dict[tuple[str, str], str] = {(arch, analysis): RUNS for arch in ARCHS for analysis in ANALYSES} | {
    ("gpt", "orbits"): REFUSES,  # no group orbit of a token sequence: a one-line reason
}

#: A refusal's line names why: the kind of input (token ids, integers) the analysis cannot take.
REFUSAL_REASON = re.compile(r"token|integer", re.IGNORECASE)

#: Cells that fail today for an operator or input kind another part of issue 13 is adding.
PENDING: dict[tuple[str, str], str] = {}

#: The outcome of every cell run so far: (architecture, analysis) -> archs.Outcome.
MATRIX: dict[tuple[str, str], archs.Outcome] = {}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every architecture trained from both seeds, exported, with its data files; prints the matrix after."""
    yield archs.write(tmp_path_factory.mktemp("archs"))
    if MATRIX:
        print("\n" + format_matrix(MATRIX))


def format_matrix(matrix: dict[tuple[str, str], archs.Outcome]) -> str:
    """A text table: architecture x analysis -> ran (seconds) / refused / bug, then the lines."""
    width = max(map(len, ARCHS)) + 2
    rows = ["".ljust(width) + "".join(a.ljust(14) for a in ANALYSES)]
    notes = []
    for arch in ARCHS:
        cells = []
        for analysis in ANALYSES:
            o = matrix.get((arch, analysis))
            if o is None:
                cells.append("-")
                continue
            cells.append(f"{o.kind} {o.seconds:.1f}s" if o.kind == "ran" else o.kind)
            if o.kind != "ran":
                notes.append(f"  {arch} x {analysis}: {o.kind}: {o.reason}")
        rows.append(arch.ljust(width) + "".join(c.ljust(14) for c in cells))
    return "\n".join(rows + notes)


def _cells():
    for arch in ARCHS:
        for analysis in ANALYSES:
            reason = PENDING.get((arch, analysis))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(arch, analysis, marks=marks, id=f"{arch}-{analysis}")


def _check_outputs(analysis: str, out) -> None:
    """The files a run writes (figures aside): its tables, summary.json and its .nnv result."""
    for name in TABLES[analysis]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary, dict) and summary
    assert (out / f"{analysis}.nnv").stat().st_size > 0


def _check_refusal(outcome: archs.Outcome) -> None:
    """Exactly one line, ``nnvitals: error: <reason>``, exit code 1, no traceback."""
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 1, outcome.stderr
    assert len(lines) == 1 and lines[0].startswith("nnvitals: error: "), outcome.stderr
    assert "Traceback" not in outcome.stderr and "internal error" not in outcome.stderr
    assert REFUSAL_REASON.search(lines[0]), lines[0]


def test_the_table_covers_the_matrix():
    assert set(ARCHS) == {
        "mlp-ln-gelu", "resnet18-bn", "resnet20-ln", "resnet20-gn", "mobilenetv2", "vit", "gpt", "conv1d"
    }  # fmt: skip
    assert len(EXPECTED) == len(ARCHS) * len(ANALYSES) == 40
    assert [c for c, v in EXPECTED.items() if v == REFUSES] == [("gpt", "orbits")]
    assert set(PENDING) <= set(EXPECTED) and all(EXPECTED[c] == RUNS for c in PENDING)


@pytest.mark.parametrize("arch, analysis", list(_cells()))
def test_cell(files, arch, analysis, tmp_path):
    out = tmp_path / "out"
    outcome = archs.run_cell(archs.argv(analysis, files[arch], out))
    MATRIX[arch, analysis] = outcome
    assert outcome.kind != "bug", f"{arch} x {analysis} is a bug, not a refusal:\n{outcome.stderr}"
    if EXPECTED[arch, analysis] == RUNS:
        assert outcome.kind == "ran", f"{arch} x {analysis} refused: {outcome.line}"
        _check_outputs(analysis, out)
    else:
        assert outcome.kind == "refused", f"{arch} x {analysis} ran; expected a one-line refusal"
        _check_refusal(outcome)
        assert not (out / "summary.json").exists()  # a refused run leaves no outputs


@pytest.mark.parametrize("analysis", ANALYSES)
def test_cli_writes_every_output(files, analysis, tmp_path):
    """The whole CLI on the MLP with LayerNorm + GELU: exit 0, tables, summary, result and figures."""
    out = tmp_path / "out"
    outcome = archs.run_cli(archs.argv(analysis, files["mlp-ln-gelu"], out))
    assert (outcome.kind, outcome.code) == ("ran", 0), outcome.stderr
    _check_outputs(analysis, out)
    assert list(out.glob("*.svg")), sorted(p.name for p in out.iterdir())


def test_a_refusal_through_the_cli_is_one_line(files, tmp_path):
    """Orbits on token ids, through the whole CLI: one line, exit 1, nothing written."""
    out = tmp_path / "out"
    outcome = archs.run_cli(archs.argv("orbits", files["gpt"], out))
    assert outcome.kind == "refused"
    _check_refusal(outcome)
    assert not out.exists() or not any(out.iterdir())
