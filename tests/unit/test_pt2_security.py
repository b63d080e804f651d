"""A ``.pt2`` is untrusted: nnvitals looks inside before PyTorch does, and nothing in it runs.

The payloads (tests/evil_pt2.py) are live: a bare ``torch.export.load`` runs each of them (checked
here in a subprocess, so the test proves the refusal tests test something). Through
``load_subject``, an analysis, a Hugging Face directory and the CLI (tests/cli/test_cli_pt2.py), each is refused with one line
and its marker never appears. Plain exports of every shape we make still load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from evil_pt2 import write_payloads, write_plain

from analyses.core.errors import NNVitalsError
from analyses.core.pt2check import check_pt2, guard_ok, sym_expr_ok, target_ok
from analyses.core.subject import load_subject

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    d = tmp_path_factory.mktemp("evil")
    marker = d / "MARKER"
    return write_payloads(d, marker), marker


def _bare_torch_runs(path: Path, marker: Path) -> bool:
    """Load (and run) ``path`` with bare PyTorch in a subprocess; whether the marker appeared."""
    code = textwrap.dedent(
        f"""
        import torch
        try:
            m = torch.export.load({str(path)!r}).module()
            m(torch.randn(2, 4))
        except Exception:
            pass
        """
    )
    marker.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


def test_the_payloads_run_code_under_bare_torch(payloads):
    files, marker = payloads
    live = {k for k in ("expr_str", "guards_code", "opaque_obj", "aotinductor") if k in files}
    ran = {k for k in live if _bare_torch_runs(files[k], marker)}
    assert ran == live, f"payloads that no longer run under bare torch: {sorted(live - ran)}"


@pytest.mark.parametrize("kind", ["expr_str", "guards_code", "opaque_obj", "aotinductor", "target"])
def test_load_subject_refuses_the_payload_and_nothing_runs(payloads, kind):
    files, marker = payloads
    if kind not in files:
        pytest.skip("no C compiler for the shared-object payload")
    marker.unlink(missing_ok=True)
    with pytest.raises(NNVitalsError, match="refused") as err:
        load_subject(files[kind])
    msg = str(err.value)
    assert "\n" not in msg and str(files[kind]) in msg
    assert not marker.exists()


def test_an_analysis_and_a_hugging_face_directory_refuse_it(payloads, tmp_path):
    from analyses.bounds import IBPTightness

    files, marker = payloads
    with pytest.raises(NNVitalsError, match="refused"):
        IBPTightness(model=str(files["expr_str"]), cache=False, show_progress=False).run()
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "mlp"}))
    (hf / "model.pt2").write_bytes(files["guards_code"].read_bytes())
    with pytest.raises(NNVitalsError, match="refused"):
        load_subject(hf)
    assert not marker.exists()


# --------------------------------------------------------------------------- plain exports still load
class _TwoInputs(torch.nn.Module):
    def forward(self, x, y):
        return (x[:, :4] * 2).sum(1) + y.flatten(1).mean(1)


class _Flatten(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.2)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.view(x.shape[0], -1))


def _export(model, args, dynamic=None) -> torch.export.ExportedProgram:
    return torch.export.export(model.eval(), args, dynamic_shapes=dynamic)


def test_plain_exports_of_many_shapes_pass_the_check(tmp_path):
    b = torch.export.Dim("b", min=2, max=1000)
    cases = {
        "mlp": write_plain(tmp_path / "mlp.pt2"),
    }
    programs = {
        "guards": _export(
            _TwoInputs(),
            (torch.randn(6, 8), torch.randn(6, 2, 3)),
            ({0: b, 1: torch.export.Dim("l", min=5)}, {0: b}),
        ),
        "auto": _export(
            _TwoInputs(),
            (torch.randn(6, 8), torch.randn(6, 2, 3)),
            ({0: b}, {0: b, 1: torch.export.Dim.AUTO}),
        ),
        "cnn-bn-fixed": _export(_Flatten(), (torch.randn(3, 1, 8, 8),)),
        "cnn-bn-dynamic": _export(_Flatten(), (torch.randn(3, 1, 8, 8),), ({0: torch.export.Dim("n")},)),
    }
    for name, ep in programs.items():
        cases[name] = tmp_path / f"{name}.pt2"
        torch.export.save(ep, str(cases[name]))
    for name, path in cases.items():
        check_pt2(path)  # raises on refusal
        subject = load_subject(path)
        assert subject.weights() or name in ("guards", "auto"), name
    with zipfile.ZipFile(cases["guards"]) as z:
        doc = json.loads(z.read(next(n for n in z.namelist() if n.endswith("models/model.json"))))
    assert doc["guards_code"], "the guarded export should carry a guard for the check to accept"


# --------------------------------------------------------------------------- the grammars
@pytest.mark.parametrize(
    "text",
    [
        "Symbol('s31', positive=True, integer=True)",
        "Mul(Integer(3), Symbol('s94', positive=True, integer=True))",
        "Add(Symbol('s0', positive=True, integer=True), Integer(-1))",
        "FloorDiv(Symbol('s0', integer=True), Integer(2))",
        "Pow(Symbol('s0', integer=True), Integer(2))",
        "Float('0.5', precision=53)",
        "StrictLessThan(Integer(2), Symbol('u0', integer=True))",
        "s0 + 2*s1 - 1",
        "Max(1, s0)//2",
        "oo",
    ],
)
def test_shape_expressions_are_accepted(text):
    assert sym_expr_ok(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('id')",
        "Symbol('s0').__class__",
        "s0.__class__",
        "eval('1')",
        "Symbol('x; import os', integer=True)",
        "Pow(Integer(10), Integer(1000000000))",
        "LShift(Integer(1), Integer(100000))",
        "Integer(10)**Integer(99999)",
        "Lambda(s0, s0)",
        "s0[0]",
        "Float('1e999999', precision=53) + 'a'",
        "(" * 100 + "s0" + ")" * 100,
    ],
)
def test_anything_else_in_a_shape_expression_is_refused(text):
    assert sym_expr_ok(text) is not None


def test_guards_and_targets():
    assert guard_ok("L['x'].size()[0] == L['y'].size()[0]") is None
    assert guard_ok("2 <= L['x'].size()[0]") is None
    assert guard_ok("L['x'].size()[1] % 8 == 0") is None
    for bad in (
        "__import__('os').system('id') == 0",
        "L['x'].__class__",
        "L['x\"+1+\"'].size()[0] == 1",
        "torch.load('x') == 0",
        "L.x == 1",
        "(lambda: 1)() == 1",
    ):
        assert guard_ok(bad) is not None, bad
    assert target_ok("torch.ops.aten.linear.default")
    assert target_ok("torch.ops.higher_order.cond")
    assert target_ok("_operator.getitem")
    assert target_ok("torch.sym_max")
    for bad in (
        "torch.serialization.os.system",
        "torch.load",
        "_operator.attrgetter",
        "torch.ops.aten.__class__.default",
        "builtins.eval",
        "#custom",
        "torch.ops.load_library",
    ):
        assert not target_ok(bad), bad
