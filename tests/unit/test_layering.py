"""The floors of ``analyses``: ``core`` imports no family and not the zoo (the zoo registers its
demos with ``core``), ``analyses`` never imports Panel, no module imports another's private
``_name``, and one dataset vocabulary (``digits8``, ``digits16``, ``digits32``; ``digits`` =
``digits8``) in every analysis. Read from the source with ``ast``, so a lazy import inside a
function counts as much as one at the top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANALYSES = ROOT / "analyses"
#: packages ``analyses.core`` must not import: the families, the zoo, the registry that lists them
ABOVE_CORE = (
    "analyses.zoo",
    "analyses.spectra",
    "analyses.orbits",
    "analyses.bounds",
    "analyses.connectivity",
    "analyses.registry",
)
#: ``from <our module> import _name`` that other owners still have to make public (module, name)
PENDING_PRIVATE = {
    ("analyses/core/store.py", "analyses.core.result", "_jsonable"),
    ("dashboard/components/model_picker.py", "dashboard.components.jobs", "_lower_priority"),
}


def _module_name(path: Path) -> tuple[str, str]:
    """The dotted name of the module at ``path`` and the package its relative imports start from."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str, str | None]]:
    """Every import in the file (or in ``source``, read as that file) as (line, absolute module,
    imported name or None), including ``importlib.import_module("...")`` / ``__import__("...")``
    with a literal name."""
    _, package = _module_name(path)
    found = []
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [(node.lineno, module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value, None))
    return found


def _targets(module: str, name: str | None) -> list[str]:
    """What an import brings in: the module, and ``module.name`` (``from .. import zoo``)."""
    return [module] if name is None else [module, f"{module}.{name}"]


def _within(target: str, packages: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in packages)


def _files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts)


def test_the_import_walker_resolves_relative_and_lazy_imports():
    """The walker itself: a relative ``from .. import zoo``, ``from ..zoo import x`` inside a
    function and ``importlib.import_module('analyses.zoo')`` all read as imports of the zoo."""
    probe = ROOT / "analyses" / "core" / "probe.py"  # never written: the source is given
    source = (
        "import importlib\nfrom .. import zoo\nfrom . import data\n\ndef f():\n"
        "    from ..zoo import load_demo\n    return importlib.import_module('analyses.zoo')\n"
    )
    found = _imports(probe, source)
    assert (3, "analyses.core", "data") in found and (6, "analyses.zoo", "load_demo") in found
    bad = [t for _, m, n in found for t in _targets(m, n) if _within(t, ABOVE_CORE)]
    assert bad == ["analyses.zoo", "analyses.zoo", "analyses.zoo.load_demo", "analyses.zoo"]


def test_core_imports_no_family_and_not_the_zoo():
    core = _files("analyses/core")
    assert len(core) > 10  # the walk found the package
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {target}"
        for p in core
        for line, module, name in _imports(p)
        for target in _targets(module, name)
        if _within(target, ABOVE_CORE)
    ]
    assert not bad, "\n".join(bad)


def test_analyses_never_imports_panel():
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {module}"
        for p in _files("analyses")
        for line, module, _name in _imports(p)
        if _within(module, ("panel",))
    ]
    assert not bad, "\n".join(bad)


def test_no_module_imports_a_private_name_from_another():
    """``from <an nnvitals module> import _name`` is a helper that should be public (or stay home)."""
    seen, bad = set(), []
    for p in _files("analyses", "dashboard"):
        where = str(p.relative_to(ROOT))
        for line, module, name in _imports(p):
            if name is None or not name.startswith("_") or name.startswith("__"):
                continue
            if not _within(module, ("analyses", "dashboard")):
                continue  # third-party internals (re._parser, torch._export) are another matter
            if (where, module, name) in PENDING_PRIVATE:
                seen.add((where, module, name))
                continue
            bad.append(f"{where}:{line} imports {name} from {module}")
    assert not bad, "\n".join(bad)
    assert seen == PENDING_PRIVATE, f"made public since: drop {sorted(PENDING_PRIVATE - seen)} from the list"


def test_views_use_only_public_plotting_helpers():
    from analyses.core import plotting

    for p in _files("analyses"):
        if p.name != "views.py":
            continue
        names = [n for _, m, n in _imports(p) if m == "analyses.core.plotting"]
        assert names and all(not n.startswith("_") and hasattr(plotting, n) for n in names), (p, names)


def test_the_zoo_registers_the_demos_with_core_on_import_analyses_without_torch():
    code = (
        "import sys, analyses\n"
        "from analyses.core import demo_source\n"
        "src = demo_source()\n"
        "print('torch' in sys.modules, list(src.models) == list(analyses.zoo.DEMO_MODELS),"
        " src.checkpoint('mlp').name)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "mlp.safetensors"]


def test_a_demo_name_loads_through_the_registered_source():
    from analyses.core import demo_source
    from analyses.core.subject import load_subject
    from analyses.zoo import load_demo

    subject = load_subject("mlp")
    assert subject.source_kind == "demo" and demo_source().load is load_demo
    model = subject.module()
    assert type(model).__name__ == "DigitsMLP" and not model.training


# --------------------------------------------------------------------------- one dataset vocabulary


def test_builtin_names_and_the_digits_alias():
    from analyses.core.data import BUILTIN_DATASETS, DIGITS_NAMES, as_dataset, builtin_name

    assert DIGITS_NAMES == {"digits8": 8, "digits16": 16, "digits32": 32}
    assert BUILTIN_DATASETS["digits"] == 8
    assert [builtin_name(n) for n in ("digits", "digits8", "digits16", "digits32", "x.npz", None)] == [
        "digits8",
        "digits8",
        "digits16",
        "digits32",
        None,
        None,
    ]
    assert as_dataset("digits8", split="test").fingerprint == as_dataset("digits", split="test").fingerprint
    assert as_dataset("digits8").x.shape[1:] == (1, 8, 8)


@pytest.mark.parametrize(
    ("path", "default"),
    [
        ("analyses.bounds.analysis:IBPTightness", "digits8"),
        ("analyses.bounds.analysis:LipschitzBounds", "digits8"),
        ("analyses.connectivity.analysis:ModeConnectivity", "digits8"),
        ("analyses.orbits.analysis:OrbitAnalysis", "digits16"),
    ],
)
def test_every_analysis_names_its_default_data_explicitly(path, default):
    import importlib

    module, name = path.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert cls.param["data"].default == default
    assert "'digits'" in cls.param["data"].doc  # the alias is documented where the data is


def test_digits_means_8x8_in_orbits_too():
    import torch

    from analyses.orbits.analysis import OrbitAnalysis

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    alias, explicit = (
        OrbitAnalysis(model=model, data=d, max_samples=8).dataset()[0] for d in ("digits", "digits8")
    )
    assert alias.x.shape[1:] == (1, 8, 8) and alias.fingerprint == explicit.fingerprint
    assert OrbitAnalysis(model=model, max_samples=8).dataset()[0].x.shape[1:] == (1, 16, 16)
