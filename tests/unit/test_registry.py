"""The analysis registry and the CLI generated from it: every entry resolves, every user-facing
parameter is an option with its doc, and every bound the CLI enforces is Param's own."""

from __future__ import annotations

import subprocess
import sys

import param
import pytest

import analyses
from analyses.core.analysis import Analysis
from analyses.core.result import Result
from analyses.core.runner import parse_spec
from analyses.registry import ENTRIES, NOT_OPTIONS, resolve
from dashboard import cli

COMMANDS = [e.command for e in ENTRIES]


def _help(capsys, command: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


# --------------------------------------------------------------------------- registry
@pytest.mark.parametrize("entry", ENTRIES, ids=COMMANDS)
def test_every_entry_resolves(entry):
    cls = entry.analysis_class
    assert issubclass(cls, Analysis) and cls.analysis_name
    assert issubclass(entry.result_class, Result)
    assert callable(resolve(entry.figures)) and callable(resolve(entry.summary))
    names = set(cls.param)
    assert {p.param for p in entry.positional} <= names
    assert set(entry.basic) <= names and set(entry.cli_names) <= names
    # what analyses exports is the class the registry names
    assert getattr(analyses, cls.__name__) is cls and cls.__name__ in analyses.__all__
    assert getattr(analyses, entry.result_class.__name__) is entry.result_class


def test_commands_and_options_are_unique():
    assert len(set(COMMANDS)) == len(COMMANDS) and not {"serve", "spectra-compare"} & set(COMMANDS)
    for e in ENTRIES:
        basic, execution, advanced = e.options()
        names = basic + execution + advanced
        assert len(set(names)) == len(names) and not set(names) & NOT_OPTIONS
        flags = [e.option_name(n) for n in names]
        assert len(set(flags)) == len(flags), e.command
        assert not {"--out", "--formats", "--quiet", "--help"} & set(flags)


PAGED = [e for e in ENTRIES if e.page is not None]


@pytest.mark.parametrize("entry", PAGED, ids=[e.command for e in PAGED])
def test_every_page_path_imports(entry):
    page = resolve(entry.page)
    assert isinstance(page, type) and page.__module__.startswith("dashboard.pages.")
    if entry.page_of is not None:
        assert entry.page_of in {e.command for e in PAGED}


def test_every_entry_has_a_page_and_page_of_points_at_one():
    """An entry without a page (the navigation skips it) is a command only: no tab, no page_of,
    and no other entry is shown on its page."""
    pageless = [e.command for e in ENTRIES if e.page is None]
    assert pageless == []
    for e in ENTRIES:
        if e.page is None:
            assert e.tab is None and e.page_of is None
        assert e.page_of not in pageless


def test_track_entry_and_its_options():
    entry = cli.COMMANDS["track"]
    assert entry.analysis_class.__name__ == "Trajectory" and entry.stem == "trajectory"
    assert [(p.param, p.nargs) for p in entry.positional] == [("series", "+")]
    basic, execution, advanced = entry.options()
    assert basic == ["architecture", "analyses", "baseline", "data", "overrides"]
    assert "model" not in basic + execution + advanced and "series" not in basic + execution + advanced
    args = cli.build_parser("track").parse_args(
        ["track", "a", "b", "--analyses", "spectra,ibp", "--baseline", "10", "--architecture", "mlp",
         "--overrides", '{"ibp": {"eps": 0.05}}', "--out", "o"]
    )  # fmt: skip
    assert args.series == ["a", "b"] and args.analyses == ["spectra", "ibp"] and args.baseline == 10
    assert args.overrides == {"ibp": {"eps": 0.05}} and args.architecture == "mlp"
    kw = cli._parameters(entry, args)
    cli._track_kwargs(args, kw)
    assert kw["series"] == ["a", "b"]
    one = cli.build_parser("track").parse_args(["track", "runs/ckpts", "--out", "o"])
    kw = cli._parameters(entry, one)
    cli._track_kwargs(one, kw)
    assert kw["series"] == "runs/ckpts" and kw["overrides"] == {} and kw["analyses"] == []


@pytest.mark.parametrize("text", ["{bad", "[1, 2]", '"ibp"', "3"])
def test_overrides_must_be_a_json_object(text, capsys):
    with pytest.raises(cli.UsageError, match="argument --overrides: expected a JSON object"):
        cli.build_parser("track").parse_args(["track", "d", "--overrides", text, "--out", "o"])


def test_the_report_runs_every_entry_that_takes_one_model():
    assert [e.command for e in cli.REPORTED] == [e.command for e in ENTRIES if e.command != "track"]
    assert {e.command for e in ENTRIES if e.runnable} == {"orbits", "ibp", "lipschitz"}
    for e in cli.REPORTED:
        assert e.numbers and len(set(e.numbers)) == len(e.numbers), e.command


def test_reading_the_registry_imports_neither_torch_nor_panel():
    code = "import sys, analyses, analyses.registry, dashboard.cli; print('torch' in sys.modules, 'panel' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------- generated options
@pytest.mark.parametrize("entry", ENTRIES, ids=COMMANDS)
def test_every_user_facing_parameter_is_in_help_with_its_doc(entry, capsys):
    text = _help(capsys, entry.command)
    flat = "".join(text.split())  # help wraps lines (at spaces and hyphens)
    basic, execution, advanced = entry.options()
    assert basic and len(basic + execution + advanced) >= 8
    for name in basic + execution + advanced:
        flag = entry.option_name(name)
        assert f"  {flag}" in text, (entry.command, flag)
        doc = entry.analysis_class.param[name].doc
        assert doc and "".join(doc.split()) in flat, (entry.command, name)


def _out_of_bounds() -> list[tuple[str, str, object]]:
    cases = []
    for e in ENTRIES:
        basic, execution, advanced = e.options()
        for name in basic + execution + advanced:
            p = e.analysis_class.param[name]
            if not isinstance(p, param.Number) or p.bounds is None:
                continue
            lo, hi = p.bounds
            step = 1 if isinstance(p, param.Integer) else 0.5
            if lo is not None:
                cases.append((e.command, name, lo - step))
            if hi is not None:
                cases.append((e.command, name, hi + step))
    return cases


@pytest.mark.parametrize(("command", "name", "value"), _out_of_bounds(), ids=lambda v: str(v))
def test_an_out_of_bound_value_is_refused_with_params_own_words(
    command, name, value, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NNVITALS_DEBUG", raising=False)
    entry = cli.COMMANDS[command]
    with pytest.raises(ValueError) as refused:
        entry.analysis_class(**{name: value})
    positional = ["mlp"] * len(entry.positional)
    flag = entry.option_name(name)
    code = cli.main([command, *positional, f"{flag}={value}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.USAGE_ERROR and len(err) == 1
    assert err[0].startswith(f"nnvitals: error: argument {flag}: ") and str(refused.value) in err[0], err
    assert not (tmp_path / "o").exists()


def test_steps_5000_is_refused_by_the_cli_and_the_class_alike(tmp_path, capsys):
    from analyses import OrbitAnalysis

    with pytest.raises(ValueError, match="must be at most 3600") as refused:
        OrbitAnalysis(steps=5000)
    assert cli.main(["orbits", "rot-cnn", "--steps", "5000", "--out", str(tmp_path / "d")]) == 2
    assert str(refused.value) in capsys.readouterr().err


def test_flags_lists_and_tuples_parse_one_way():
    def parse(*argv):
        return cli.build_parser(argv[0]).parse_args([*argv, "--out", "o"])

    a = parse("lipschitz", "mlp", "--no-per-layer", "--sharpen", "--data-range", "0,255")
    assert a.per_layer is False and a.sharpen is True and a.data_range == (0.0, 255.0)
    b = parse("ibp", "mlp", "--eps-sweep", "0.001, 0.01,0.1")
    assert b.eps_sweep == [0.001, 0.01, 0.1] and b.eps == 0.01  # left out: the class's default
    c = parse("connectivity", "a", "b", "--also", "c", "--also", "d", "--no-merge")
    assert (c.model, c.model_b, c.models, c.merge) == ("a", "b", ["c", "d"], False)
    d = parse("spectra", "mlp", "--layer-types", "linear,conv2d", "--no-cache", "--dask", "h:8786")
    assert d.layer_types == ["linear", "conv2d"] and d.cache is False and d.runner == "tcp://h:8786"


@pytest.mark.parametrize("text", ["local", "threads", "h:8786", "tcp://h:1", "tls://h:1", "nonsense", "h:x"])
def test_one_dask_address_parser(text):
    """The CLI's --dask, serve's --dask and the runner read an address the same way."""
    import argparse

    from dashboard import serve

    try:
        want = parse_spec(text)
    except ValueError:
        want = None
    for option in (cli._dask, serve._dask):
        if want is None:
            with pytest.raises(argparse.ArgumentTypeError, match="expected 'local' or a scheduler address"):
                option(text)
        else:
            assert option(text) == want


# --------------------------------------------------------------------------- labels and task settings
LABELLED = [e for e in ENTRIES if e.family in ("spectra", "bounds", "connectivity")]


@pytest.mark.parametrize("entry", LABELLED, ids=[e.command for e in LABELLED])
def test_family_parameters_carry_their_own_labels(entry):
    """Every option a family declares has a ``label`` of its own (the page's wording), not Param's
    name-derived one; the execution options (analyses.core) keep theirs."""
    cls = entry.analysis_class
    basic, _, advanced = entry.options()
    own = [n for n in basic + advanced if n not in Analysis.param]
    assert own and all(cls.param[n].owner.__module__.startswith(f"analyses.{entry.family}.") for n in own)
    for name in own:
        p = cls.param[name]
        assert p._label, (entry.command, name)
        assert p.label and p.label.strip() == p.label, (entry.command, name)


def _changed(cls, name):
    """A valid value of parameter ``name`` other than its default."""
    p = cls.param[name]
    if isinstance(p, param.Boolean):
        return not p.default
    if isinstance(p, param.Selector) and not isinstance(p, param.ListSelector):
        return next(o for o in p.objects if o != p.default)
    if isinstance(p, param.Number):
        lo, hi = p.bounds or (None, None)
        v = (p.default or 1) + (1 if isinstance(p, param.Integer) else 0.5)
        return v if hi is None or v <= hi else (lo if lo is not None else p.default)
    return None


@pytest.mark.parametrize("entry", LABELLED, ids=[e.command for e in LABELLED])
def test_task_settings_are_frozen_picklable_and_follow_the_parameters(entry):
    """Tasks read a frozen dataclass built from the parameters (tasks may run on Dask workers)."""
    import dataclasses
    import pickle

    cls = entry.analysis_class
    fields = {f.name for f in dataclasses.fields(cls().settings())}
    kw = {n: _changed(cls, n) for n in fields if n in cls.param and n not in ("device", "allow_tf32")}
    kw = {n: v for n, v in kw.items() if v is not None}
    analysis = cls(**kw)
    s = analysis.settings()
    assert dataclasses.is_dataclass(s) and kw, entry.command
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.device = "cuda"
    assert pickle.loads(pickle.dumps(s)) == s
    for name, value in kw.items():
        assert getattr(s, name) == value, (entry.command, name)
    assert s.device == analysis.device and s.dtype == analysis.dtype and s.allow_tf32 is False
    if entry.family == "bounds" and hasattr(s, "lo"):
        assert (s.lo, s.hi) == tuple(analysis.data_range)
