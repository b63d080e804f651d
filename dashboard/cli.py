"""The ``nnvitals`` command line: batch analyses that write tables and figures.

::

    nnvitals COMMAND MODEL... --out DIR [options]   (one COMMAND per entry of analyses/registry.py)
    nnvitals track CHECKPOINTS... --out DIR [--analyses spectra,ibp] [--baseline STEP] [--architecture A]
    nnvitals report MODEL --out DIR [--model-b B] [--analyses LIST] [--data D] [--overrides JSON]
    nnvitals spectra-compare MODEL_A MODEL_B --out DIR [--metric alpha] [--labels A,B] [spectra options]
    nnvitals serve [--port PORT] [...]   (see dashboard/serve.py);   nnvitals --version

Each analysis command is generated from its registry entry and its class's Param parameters: a
Selector is a choice, a Boolean a flag (``--no-NAME`` when it defaults to True), an Integer or
Number a typed value with Param's bounds in its help, a list or tuple of numbers or choices
comma-separated (a list of anything else, like ``--also MODEL``: the option repeated), ``doc``
its help; left out, the class's default. Param checks every value: one it refuses is the usage
error ``argument --OPTION: <Param's message>``, before anything is read or written.

``MODEL``: a checkpoint (.safetensors, .pt/.pth state dict, .pt2), a Hugging Face directory, a
demo name (``mlp``, ``cnn``, ``rot-cnn``, ...) or ``package.module:factory``. A command writes
``DIR/<stem>.csv``, ``DIR/summary.json``, ``DIR/<stem>.nnv``, its entry's figures and a few family
files (:data:`EXTRA_FILES`; ``track`` also ``DIR/report.html``) as one set
(:class:`~dashboard.outputs.OutputSet`): an interrupted run or a failed write leaves the previous
complete set or nothing, and a file that cannot be written is one line naming it. ``report`` runs
every analysis that applies to MODEL and writes their tables and one offline HTML report
(:mod:`dashboard.cli_report`, built by :mod:`analyses.core.report`). Bad input: one line
``nnvitals: error: <message>``, never a traceback. Exit codes: 0 success, 1 bad input, 2 bad
usage (unknown option, bad option value), 3 a bug in nnvitals (``NNVITALS_DEBUG=1`` shows its
traceback), 130 interrupted. ``--help`` and ``--version`` import
no torch (a command's ``--help`` imports its analysis class); only ``serve`` imports Panel.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from analyses.registry import ENTRIES, Entry, resolve

from .outputs import InputError, OutputSet

PROG = "nnvitals"
FORMATS = ("svg", "html", "png", "pdf")
DEFAULT_FORMATS = "svg,html"
#: exit codes
OK, INPUT_ERROR, USAGE_ERROR, BUG, INTERRUPTED = 0, 1, 2, 3, 130
COMMANDS = {e.command: e for e in ENTRIES}
#: the analyses ``nnvitals report`` runs: every entry whose command takes a model (not a series)
REPORTED = tuple(e for e in ENTRIES if e.positional and e.positional[0].param == "model")
#: the HTML report of ``report`` and ``track``
REPORT_NAME = "report.html"


class UsageError(Exception):
    """Bad command-line usage (argparse errors, bad option values): exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def version_text() -> str:
    try:
        from importlib.metadata import version

        return version("nnvitals")
    except Exception:  # not installed as a distribution: the source tree's version
        from analyses import __version__

        return __version__


# --------------------------------------------------------------------------- option types
def converter(what: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that only converts text (Param checks the value)."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def choice_list(objects: Sequence[Any]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = _split(text)
        if not items or any(t not in objects for t in items):
            raise ValueError(text)
        return items

    return parse


def _formats(text: str) -> list[str]:
    items = [t.lower().lstrip(".") for t in _split(text)]
    bad = [t for t in items if t not in FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(bad) or '(none)'}; expected a comma-separated list of {', '.join(FORMATS)}"
        )
    return list(dict.fromkeys(items))


def _dask(text: str) -> str:
    from analyses.core.runner import parse_spec  # the one Dask address parser

    try:
        return parse_spec(text, cli=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def json_object(text: str) -> dict:
    """A JSON object (``{"orbits": {"data": "digits8"}}``); anything else is a ValueError."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


def _labels(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two labels separated by a comma (A,B), got {text!r}")
    return parts[0], parts[1]


#: CLI-side parsing (and metavar) of parameters whose text needs more than their Param type
OPTION_TYPES: dict[str, tuple[Callable[[str], Any], str]] = {"runner": (_dask, "local|ADDRESS")}


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _bounds(p: Any) -> str:
    """Param's bounds of a Number in words: ``from 1 to 3600``, ``at least 2``, ``above 0``."""
    lo, hi = p.bounds or (None, None)
    inc_lo, inc_hi = getattr(p, "inclusive_bounds", (True, True))
    if lo is not None and hi is not None and inc_lo and inc_hi:
        return f"from {_num(lo)} to {_num(hi)}"
    parts = [f"{'at least' if inc_lo else 'above'} {_num(lo)}"] if lo is not None else []
    parts += [f"{'at most' if inc_hi else 'below'} {_num(hi)}"] if hi is not None else []
    return " and ".join(parts)


def param_option(group: Any, entry: Entry, name: str) -> None:
    """Add parameter ``name`` of ``entry``'s class to ``group`` (see the module docstring)."""
    import param

    p = entry.analysis_class.param[name]
    notes = []
    kw: dict[str, Any] = dict(dest=name, default=copy.deepcopy(p.default))
    if isinstance(p, param.Boolean):
        kw["action"] = "store_false" if p.default else "store_true"
    elif isinstance(p, param.ListSelector):
        kw.update(type=converter(f"a comma-separated list of {', '.join(map(str, p.objects))}",
                                  choice_list(p.objects)), metavar="LIST")  # fmt: skip
        notes.append(f"comma-separated from {','.join(map(str, p.objects))}")
    elif isinstance(p, param.Selector):
        kw["choices"] = list(p.objects)
    elif isinstance(p, param.Number):
        whole = isinstance(p, param.Integer)
        kw.update(type=converter("a whole number" if whole else "a number", int if whole else float))
        kw["metavar"] = "N" if whole else "X"
        notes.append(_bounds(p))
    elif isinstance(p, param.NumericTuple):
        kw.update(type=converter(f"{p.length} numbers separated by commas",
                                  lambda t: tuple(float(x) for x in t.split(","))), metavar="LO,HI")  # fmt: skip
    elif isinstance(p, param.Dict):
        kw.update(type=converter("a JSON object", json_object), metavar="JSON")
    elif isinstance(p, param.List) and p.item_type in (int, float, (int, float)):
        item = int if p.item_type is int else float
        what = "whole numbers" if item is int else "numbers"
        kw.update(type=converter(f"{what} separated by commas", lambda t: [item(x) for x in _split(t)]))
        kw["metavar"] = "LIST"
    elif isinstance(p, param.List):
        kw.update(action="append", metavar=name.upper().rstrip("S"))
        notes.append("repeatable")
    else:
        kw["type"], kw["metavar"] = OPTION_TYPES.get(name, (str, name.upper()))
    if p.default is not None and p.default != [] and not isinstance(p, param.Boolean):
        notes.append(
            f"default {','.join(map(_num, p.default)) if isinstance(p.default, list | tuple) else _num(p.default)}"
        )
    doc = ("Turns off: " if kw.get("action") == "store_false" else "") + " ".join((p.doc or "").split())
    doc = doc.replace("%", "%%")
    kw["help"] = doc + (f" ({'; '.join(n for n in notes if n)})" if any(notes) else "")
    group.add_argument(entry.option_name(name), **kw)


# --------------------------------------------------------------------------- parser
def analysis_options(p: argparse.ArgumentParser, entry: Entry) -> None:
    """The options of ``entry``'s parameters (basic, execution, advanced) and the output options."""
    basic, execution, advanced = entry.options()
    for title, names in (("analysis", basic), ("execution", execution), ("advanced", advanced)):
        group = p.add_argument_group(title)
        for name in names:
            param_option(group, entry, name)
        if title == "analysis" and entry.command in EXTRA_OPTIONS:
            EXTRA_OPTIONS[entry.command][0](group)
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for tables and figures")
    o.add_argument(
        "--formats", type=_formats, default=_formats(DEFAULT_FORMATS), metavar="LIST",
        help=f"figure formats, comma-separated from {','.join(FORMATS)} (default {DEFAULT_FORMATS})",
    )  # fmt: skip
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary on stdout")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``nnvitals`` parser; with ``command``, only that subcommand gets its options (the
    others' analysis classes stay unimported; ``""``: none, for ``--help`` and ``--version``)."""
    parser = _Parser(
        prog=PROG,
        description="Read the vital signs of trained neural networks (see 'nnvitals COMMAND --help').",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version_text()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    full = {*COMMANDS, "spectra-compare", "report", "serve"} if command is None else {command}
    for e in ENTRIES:
        sp = sub.add_parser(e.command, help=e.help, description=e.description)
        sp.set_defaults(func=f"cmd_{e.command.replace('-', '_')}")
        if e.command in full:
            for pos in e.positional:
                sp.add_argument(pos.param, metavar=pos.metavar, nargs=pos.nargs, help=pos.help)
            analysis_options(sp, e)
        if e.command == "spectra":  # spectra-compare: two spectra runs and a per-layer comparison
            cp = sub.add_parser("spectra-compare", help="compare the spectral metrics of two models layer by "
                                "layer", description="Spectral analysis of two models, matched by layer name; "
                                "writes DIR/compare.csv (metrics of both and their deltas), both summaries and "
                                "the comparison figure.")  # fmt: skip
            cp.set_defaults(func="cmd_spectra_compare")
            if "spectra-compare" in full:
                cp.add_argument("model_a", metavar="MODEL_A")
                cp.add_argument("model_b", metavar="MODEL_B")
                cp.add_argument(
                    "--metric", default="alpha", help="metric of the comparison figure (default alpha)"
                )
                cp.add_argument(
                    "--labels", type=_labels, metavar="A,B", help="names of the two models in figures"
                )
                analysis_options(cp, e)
    rp = sub.add_parser(
        "report",
        help="every analysis that applies to MODEL, in one offline HTML report",
        description="Runs every analysis that applies to MODEL (spectra always; "
        f"{', '.join(e.command for e in REPORTED if e.runnable)} when MODEL is runnable: a .pt2 export, a demo "
        "name or package.module:factory; connectivity with --model-b) and writes each one's tables "
        "(DIR/<analysis>.csv and its other CSVs), its result (DIR/<analysis>.nnv), DIR/summary.json and "
        "DIR/report.html: headline numbers, figures and summary of each, and why any did not run.",
    )
    rp.set_defaults(func="cmd_report")
    if "report" in full:
        report_arguments(rp)
    sv = sub.add_parser(
        "serve",
        help="the web app (Panel) on the demo models, uploads and --allow-dir files",
        description="Serve the nnvitals web app.",
    )
    sv.set_defaults(func="cmd_serve")
    if "serve" in full:
        from .serve import add_serve_arguments

        add_serve_arguments(sv)
    return parser


# --------------------------------------------------------------------------- family extras
def _connectivity_options(group: Any) -> None:
    group.add_argument("--test-data", default=None, metavar="FILE.npz", help="test split for --data FILE.npz")


def _connectivity_kwargs(args: argparse.Namespace, kw: dict[str, Any]) -> None:
    """``--data FILE.npz [--test-data FILE.npz]`` as the data dict; ``--also`` models after A and B."""
    from analyses.core.data import BUILTIN_DATASETS

    data = kw.get("data", "digits")
    if args.test_data is not None:
        if data in BUILTIN_DATASETS:
            raise UsageError("--test-data: only with --data FILE.npz (the built-in digits have a test split)")
        kw["data"] = {"train": data, "test": args.test_data}
    elif data not in BUILTIN_DATASETS:
        kw["data"] = {"train": data}
    if kw.get("models"):
        kw["models"] = [kw.pop("model"), kw.pop("model_b"), *kw["models"]]


def _jacobian_norms(result: Any) -> dict[str, Any]:
    import pandas as pd

    rows = [{"split": s, "row": i, "jacobian_norm": float(v)}
            for s in result.splits for i, v in enumerate(result.jacobian_norms(s))]  # fmt: skip
    return {"jacobian_norms.csv": pd.DataFrame(rows)}


def _aligned_b(result: Any) -> dict[str, Any]:
    from safetensors.torch import save

    aligned = save({k: v.contiguous() for k, v in result.permuted_b.items()})
    return {"layers.csv": result.layers, "model_b_aligned.safetensors": aligned}


def _no_options(group: Any) -> None:
    return None


def _track_kwargs(args: argparse.Namespace, kw: dict[str, Any]) -> None:
    """One CHECKPOINTS argument is the series (a directory or a series.json); several, its files."""
    series = list(kw.get("series") or [])
    kw["series"] = series[0] if len(series) == 1 else series


#: CLI-only options of a command (added to its analysis group) and how they change its parameters
EXTRA_OPTIONS = {
    "connectivity": (_connectivity_options, _connectivity_kwargs),
    "track": (_no_options, _track_kwargs),
}
#: files a command writes besides table, summary, result and figures: tables after the table
EXTRA_FILES = {"lipschitz": _jacobian_norms, "connectivity": _aligned_b}


def _parameters(entry: Entry, args: argparse.Namespace) -> dict[str, Any]:
    """The parameter values given on the command line (positional arguments included)."""
    basic, execution, advanced = entry.options()
    names = [p.param for p in entry.positional] + basic + execution + advanced
    kw = {n: getattr(args, n) for n in names if hasattr(args, n)}
    kw["show_progress"] = not args.quiet and sys.stderr.isatty()
    return kw


def make_analysis(entry: Entry, args: argparse.Namespace, **override: Any):
    """``entry``'s analysis with the command line's values: a value Param refuses is a usage error
    naming the option (Param's own message), before anything is read or written."""
    from analyses.core.errors import NNVitalsError

    cls = entry.analysis_class
    kw = _parameters(entry, args) | override
    for name in [n for part in entry.options() for n in part]:
        value = kw[name]
        if value is cls.param[name].default or name in override:
            continue
        try:
            cls(**{name: value})  # Param's own check and words, the same as in Python
        except ValueError as e:
            what = f"argument {entry.option_name(name)}: {' '.join(str(e).split())}"
            raise UsageError(f"{what} (see '{PROG} {args.command} --help')") from None
    if entry.command in EXTRA_OPTIONS:
        EXTRA_OPTIONS[entry.command][1](args, kw)
    try:
        analysis = cls(**kw)
    except NNVitalsError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None
    analysis.torch_device()  # a bad --device fails before the model is read
    return analysis


def say(args: argparse.Namespace, text: str = "") -> None:
    if not getattr(args, "quiet", False):
        print(text, flush=True)


def write_result(result: Any, path: Path) -> Path:
    """The result's ``.nnv`` file (a write error names the file)."""
    from analyses.core.export import save_result

    return save_result(result, path)


def _write_figures(figures: dict[str, Any], out: Path, formats: Sequence[str]) -> list[Path]:
    from analyses.core.export import save_figure

    return [save_figure(fig, out / f"{stem}.{fmt}") for stem, fig in figures.items() for fmt in formats]


def format_number(x: Any, spec: str = ".2f") -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return format(x, spec) if x == x and abs(x) != float("inf") else "n/a"


def files_line(out: Path, files: Sequence[Path]) -> str:
    names = [p.name for p in files]
    return f"wrote {len(names)} files to {out}/: {', '.join(names)}"


# --------------------------------------------------------------------------- commands
def run_command(args: argparse.Namespace) -> int:
    """Any registry command: run its analysis, write table, summary, ``.nnv``, its extra files and
    its figures as one set, then print its headline and summary text."""
    entry = COMMANDS[args.command]
    analysis = make_analysis(entry, args)
    with OutputSet(args.out) as output:
        result = analysis.run()
        # plotting libraries load only once there is something to plot
        from analyses.core.export import save_bytes, save_table, write_summary

        out, stem = output.dir, entry.stem
        extra = EXTRA_FILES[entry.command](result) if entry.command in EXTRA_FILES else {}
        tables = {n: v for n, v in extra.items() if not isinstance(v, bytes)}
        files = [save_table(result.table, out / f"{stem}.csv")]
        files += [save_table(table, out / name) for name, table in tables.items()]
        files += [write_summary(result, out / "summary.json"), write_result(result, out / f"{stem}.nnv")]
        files += [save_bytes(v, out / n) for n, v in extra.items() if n not in tables]
        figures = resolve(entry.figures)(result)
        files += _write_figures(figures, out, args.formats)
        text = resolve(entry.summary)(result)
        if entry.command in HTML_REPORTS:
            files.append(HTML_REPORTS[entry.command](result, figures, text, files, out / REPORT_NAME))
    if entry.headline:
        context = {**analysis.param.values(), **{p.param: getattr(args, p.param) for p in entry.positional}}
        say(args, entry.headline.format(**context | result.summary))
        text = "\n".join("  " + line for line in text.splitlines())
    say(args, text)
    say(args, files_line(args.out, files))
    return OK


def cmd_spectra(args: argparse.Namespace) -> int:
    """``nnvitals spectra`` (a name of its own, so a test can stand in for it)."""
    return run_command(args)


def cmd_spectra_compare(args: argparse.Namespace) -> int:
    """``nnvitals spectra-compare``: both analyses, a per-layer delta table and the comparison figure."""
    entry = COMMANDS["spectra"]
    analyses = [make_analysis(entry, args, model=m) for m in (args.model_a, args.model_b)]
    with OutputSet(args.out) as output:
        res_a, res_b = (a.run() for a in analyses)
        table, labels, files = _compare(args, output.dir, res_a, res_b)
    m = args.metric
    delta = table[f"{m}_delta"]
    matched = int(delta.notna().sum())
    say(args, f"compared {labels[0]} (A) with {labels[1]} (B): {matched} layers matched by name, "
               f"{len(table) - matched} in only one")  # fmt: skip
    if matched:
        say(args, f"mean {m}: A {format_number(table[f'{m}_a'].mean())}, "
                   f"B {format_number(table[f'{m}_b'].mean())}, mean delta (B - A) {format_number(delta.mean())}")  # fmt: skip
        top = table.loc[delta.abs().sort_values(ascending=False).index[: min(5, matched)]]
        say(args, f"largest changes in {m}:")
        for _, r in top.iterrows():
            say(args, f"  {r['name']}  {format_number(r[f'{m}_a'])} -> {format_number(r[f'{m}_b'])}")
    say(args, files_line(args.out, files))
    return OK


def _compare(args: argparse.Namespace, out: Path, res_a, res_b):
    from analyses.core.errors import NNVitalsError
    from analyses.core.export import save_table, write_summary
    from analyses.spectra.views import COMPARE_METRICS, compare_models, compare_table

    for r in (res_a, res_b):
        if args.metric not in r.table.columns:
            numeric = [c for c in r.table.columns if r.table[c].dtype.kind == "f"]
            raise NNVitalsError(
                f"--metric {args.metric}: not a spectra column; expected one of {', '.join(numeric)}"
            )
    labels = args.labels or tuple(
        r.meta.get("subject", {}).get("label", k) for r, k in ((res_a, "A"), (res_b, "B"))
    )
    if labels[0] == labels[1]:
        labels = (f"{labels[0]} (A)", f"{labels[1]} (B)")
    metrics = tuple(dict.fromkeys((args.metric, *COMPARE_METRICS)))
    table = compare_table(res_a, res_b, metrics)
    files = [save_table(table, out / "compare.csv")]
    files += [write_summary(res_a, out / "summary_a.json"), write_summary(res_b, out / "summary_b.json")]
    fig = compare_models(res_a, res_b, metric=args.metric, labels=labels)
    files += _write_figures({f"compare_{args.metric}": fig}, out, args.formats)
    return table, labels, files


# --------------------------------------------------------------------------- report and track (dashboard/cli_report.py)
def report_arguments(p: argparse.ArgumentParser) -> None:
    from .cli_report import report_arguments as add

    add(p)


def cmd_report(args: argparse.Namespace) -> int:
    """``nnvitals report`` (:func:`dashboard.cli_report.cmd_report`)."""
    from .cli_report import cmd_report as run

    return run(args)


def _track_report(*args: Any) -> Path:
    from .cli_report import track_report

    return track_report(*args)


HTML_REPORTS = {"track": _track_report}


def cmd_serve(args: argparse.Namespace) -> int:
    """``nnvitals serve``: the Panel app (see :mod:`dashboard.serve`; Panel is imported there)."""
    from .serve import run_serve

    return run_serve(args)


# --------------------------------------------------------------------------- entry point
def _fail(message: str, code: int) -> int:
    one_line = " ".join(str(message).split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr, flush=True)
    return code


_SIGNALS_SEEN: list[int] = []  # the signals of this run (cleared by :func:`main`)


def _interrupted(signum, frame) -> NoReturn:
    """Ctrl-C, and SIGTERM (``kill``, a job scheduler's time limit), end a run: outputs cleaned up.

    The signal is also recorded: a KeyboardInterrupt raised while a compiled extension converts
    its arguments can be swallowed there and come out as another error (matplotlib's pybind11
    ``affine_transform`` then raises "incompatible function arguments"). A run that was signalled
    is reported as interrupted whatever error ended it.
    """
    _SIGNALS_SEEN.append(signum)
    raise KeyboardInterrupt


def _handle_signals() -> dict[int, Any]:
    """Install :func:`_interrupted` for SIGINT and SIGTERM; returns the handlers it replaced."""
    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, _interrupted)
        except (ValueError, OSError):  # not the main thread (called from Python): leave it alone
            pass
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnvitals`` console script; returns the exit code."""
    _SIGNALS_SEEN.clear()
    previous = _handle_signals()
    try:
        return _main(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _main(argv: Sequence[str] | None) -> int:
    debug = os.environ.get("NNVITALS_DEBUG", "") not in ("", "0")
    if not debug:
        # numeric warnings (log of 0 in a histogram, ...) are not the user's business
        warnings.simplefilter("ignore", RuntimeWarning)
    argv_given = argv  # None: the console script (a process of its own), not a call from Python
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser(next((a for a in argv if not a.startswith("-")), "")).parse_args(argv)
        if getattr(args, "func", None) is None:
            names = ", ".join([*COMMANDS, "spectra-compare", "report", "serve"])
            raise UsageError(f"a command is required: {names} (see '{PROG} --help')")
        if argv_given is None and args.command != "serve":
            # a batch run in its own process: freed tensors are reused, not re-faulted every pass
            from analyses.core.allocator import hold_freed_memory

            hold_freed_memory()
        t0 = time.perf_counter()
        code = globals().get(args.func, run_command)(args)  # cmd_NAME where one exists
        if debug:
            print(f"{PROG}: {args.command} took {time.perf_counter() - t0:.2f} s", file=sys.stderr)
        return code
    except UsageError as e:
        return _fail(str(e), USAGE_ERROR)
    except InputError as e:
        return _fail(str(e), INPUT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", INTERRUPTED)
    except Exception as e:
        if _SIGNALS_SEEN:  # the signal's KeyboardInterrupt was turned into this error on its way
            return _fail("interrupted", INTERRUPTED)
        if debug:
            raise
        from analyses.core.errors import NNVitalsError

        if isinstance(e, NNVitalsError):
            return _fail(str(e), INPUT_ERROR)
        if isinstance(e, OSError):
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            return _fail(f"{where}{e.strerror or e}", INPUT_ERROR)
        return _fail(
            f"internal error, this is a bug in nnvitals ({type(e).__name__}: {e}); "
            "set NNVITALS_DEBUG=1 to see the traceback",
            BUG,
        )


if __name__ == "__main__":
    sys.exit(main())
