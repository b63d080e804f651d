"""The ``nnvitals`` command line: batch analyses that write tables and figures.

::

    nnvitals spectra MODEL --out DIR [--farms] [--xmin-rule ks|median|peak] [--layers REGEX]
                         [--randomize] [--farms-rows N] [--farms-q-ratio Q] [--farms-windows K]
                         [--dtype float32|float64] [--device cpu] [--dask local|ADDRESS]
                         [--no-cache] [--formats svg,html,png,pdf] [--quiet]
    nnvitals spectra-compare MODEL_A MODEL_B --out DIR [--metric alpha] [--labels A,B] [...]
    nnvitals orbits MODEL [MODEL ...] --data digits|FILE.npz --group rotation|shift|scale|flip|rotation-flip
                         [--steps N] [--score probability|correct|margin|consensus] --out DIR
                         (see dashboard/cli_orbits.py)
    nnvitals serve [--port PORT] [--address A] [...]   (see dashboard/serve.py)
    nnvitals --version

``MODEL`` is a checkpoint path (.safetensors, .pt/.pth state dict, .pt2), a Hugging Face
directory, a demo model name (``mlp``, ``cnn``, ``mlp-untrained``, ``cnn-untrained``, ``rot-cnn``, ``rot-cnn-aug``, ``rot-cnn-c4``) or
``package.module:factory``.

Outputs: every analysis command writes its files into a hidden folder inside ``--out`` (so
on the same filesystem) and moves them into place only once the whole set is written, the
summary files last: an interrupted run (Ctrl-C) or a failed write (a full disk) leaves the
previous complete set, or nothing, and no partial folder. A file that cannot be written is
one line naming it and the reason (``nnvitals: error: out/esd_grid.png: cannot write (No
space left on device)``), exit code 1.

Errors: anything wrong with the input prints one line ``nnvitals: error: <message>`` on
stderr, never a traceback. Exit codes: 0 success, 1 bad input (a missing or unreadable
model, an output path that is a file, ...), 2 bad usage (unknown option, bad option value),
3 a bug in nnvitals (set ``NNVITALS_DEBUG=1`` to see its traceback), 130 interrupted.

Heavy imports (torch, HoloViews, Panel) happen inside the commands, so ``--help`` and
``--version`` stay instant; Panel is only imported by ``serve``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

PROG = "nnvitals"
FORMATS = ("svg", "html", "png", "pdf")
DEFAULT_FORMATS = "svg,html"
#: exit codes
OK, INPUT_ERROR, USAGE_ERROR, BUG, INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """Bad command-line usage (argparse errors, bad option values): exit code 2."""


class InputError(Exception):
    """Bad input the CLI itself detects before loading anything (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nnvitals")
    except Exception:  # not installed as a distribution: the source tree's version
        from analyses import __version__

        return __version__


# --------------------------------------------------------------------------- option types
def _int_at_least(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"expected an integer {rng}, got {v}")
        return v

    return parse


def _float_in(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected a number in [{lo}, {hi}], got {v}")
        return v

    return parse


def _float_above(lo: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number > {lo:g}, got {text!r}") from None
        if not v > lo:
            raise argparse.ArgumentTypeError(f"expected a number > {lo:g}, got {v:g}")
        return v

    return parse


def _number_pair(example: str, positive_ordered: bool = False) -> Callable[[str], tuple[float, float]]:
    """``LO,HI`` as two floats (with ``positive_ordered``: 0 < LO <= HI)."""

    def parse(text: str) -> tuple[float, float]:
        try:
            lo, hi = (float(t) for t in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected two numbers LO,HI (e.g. {example}), got {text!r}"
            ) from None
        if positive_ordered and not 0 < lo <= hi:
            raise argparse.ArgumentTypeError(f"expected 0 < LO <= HI, got {text!r}")
        return lo, hi

    return parse


def _regex(text: str) -> str:
    """A layer-name pattern, checked by the linear-time matcher the analysis uses (never ``re``)."""
    from analyses.core.pattern import PatternError, compile_pattern, shown

    try:
        compile_pattern(text, "--layers")
    except PatternError as e:
        raise argparse.ArgumentTypeError(f"{shown(text)}: {e.reason}") from None
    return text


def _formats(text: str) -> list[str]:
    items = [t.strip().lower().lstrip(".") for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(bad) or '(none)'}; expected a comma-separated list of {', '.join(FORMATS)}"
        )
    return list(dict.fromkeys(items))


def _dask(text: str) -> str:
    text = text.strip()
    if text in ("threads", "local") or "://" in text:
        return text
    if re.fullmatch(r"[\w.\-]+:\d+", text):  # HOST:PORT
        return f"tcp://{text}"
    raise argparse.ArgumentTypeError(f"expected 'local' or a scheduler address tcp://HOST:PORT, got {text!r}")


def _labels(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two labels separated by a comma (A,B), got {text!r}")
    return parts[0], parts[1]


# --------------------------------------------------------------------------- parser
def _spectra_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``spectra`` and ``spectra-compare`` (SpectralAnalysis parameters)."""
    a = p.add_argument_group("analysis")
    a.add_argument(
        "--farms", action="store_true", help="also measure alpha with FARMS fixed-aspect-ratio windows"
    )
    a.add_argument(
        "--xmin-rule",
        choices=("ks", "median", "peak"),
        default="ks",
        help="how the power-law xmin is chosen: ks (WeightWatcher), median (TempBalance), peak (AlphaPruning)",
    )
    a.add_argument(
        "--layers", type=_regex, default="", metavar="REGEX", help="analyse only weights whose name matches"
    )
    a.add_argument(
        "--randomize", action="store_true", help="also compute the ESD of each element-wise shuffled matrix"
    )
    a.add_argument(
        "--farms-rows",
        type=_int_at_least(2),
        default=100,
        metavar="N",
        help="FARMS window rows (default 100)",
    )
    a.add_argument(
        "--farms-q-ratio",
        type=_float_in(0.01, 100.0),
        default=2.0,
        metavar="Q",
        help="FARMS window cols / rows (default 2)",
    )
    a.add_argument(
        "--farms-windows",
        type=_int_at_least(1, 100),
        default=10,
        metavar="K",
        help="FARMS windows per axis (default 10)",
    )
    execution_options(p)
    output_options(p)


def execution_options(p: argparse.ArgumentParser) -> None:
    """--dtype, --device, --dask, --no-cache: shared by every analysis command."""
    r = p.add_argument_group("execution")
    r.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="kernel precision")
    r.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N, mps")
    r.add_argument(
        "--dask", type=_dask, default=None, metavar="local|ADDRESS",
        help="run on Dask: 'local' (a LocalCluster) or a scheduler address tcp://HOST:PORT (default: threads)",
    )  # fmt: skip
    r.add_argument("--no-cache", action="store_true", help="recompute even if a cached result exists")


def output_options(p: argparse.ArgumentParser) -> None:
    """--out, --formats, --quiet: shared by every analysis command."""
    o = p.add_argument_group("output")
    o.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for tables and figures")
    o.add_argument(
        "--formats", type=_formats, default=_formats(DEFAULT_FORMATS), metavar="LIST",
        help=f"figure formats, comma-separated from {','.join(FORMATS)} (default {DEFAULT_FORMATS})",
    )  # fmt: skip
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Read the vital signs of trained neural networks (see 'nnvitals COMMAND --help').",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sp = sub.add_parser(
        "spectra",
        help="heavy-tailed spectral analysis (ESD, power-law alpha, FARMS) of every weight matrix",
        description="Spectral analysis of every weight matrix of MODEL; writes DIR/spectra.csv, "
        "DIR/summary.json, DIR/spectra.nnv (the result, for notebooks and the app) and the main figures.",
    )
    sp.add_argument(
        "model", metavar="MODEL", help="checkpoint path, Hugging Face directory, demo name or module:factory"
    )
    _spectra_options(sp)
    sp.set_defaults(func=cmd_spectra)

    cp = sub.add_parser(
        "spectra-compare",
        help="compare the spectral metrics of two models layer by layer",
        description="Spectral analysis of two models, matched by layer name; writes DIR/compare.csv "
        "(metrics of both and their deltas), both summaries and the comparison figure.",
    )
    cp.add_argument("model_a", metavar="MODEL_A")
    cp.add_argument("model_b", metavar="MODEL_B")
    cp.add_argument("--metric", default="alpha", help="metric of the comparison figure (default alpha)")
    cp.add_argument(
        "--labels", type=_labels, default=None, metavar="A,B", help="names of the two models in figures"
    )
    _spectra_options(cp)
    cp.set_defaults(func=cmd_spectra_compare)

    from .cli_orbits import add_orbits_parser

    add_orbits_parser(sub)
    from .cli_connectivity import add_connectivity_parser

    add_connectivity_parser(sub)
    from .cli_bounds import add_bounds_parsers

    add_bounds_parsers(sub)

    sv = sub.add_parser(
        "serve",
        help="the web app (Panel) on the demo models, uploads and --allow-dir files",
        description="Serve the nnvitals web app.",
    )
    from .serve import add_serve_arguments

    add_serve_arguments(sv)
    sv.set_defaults(func=cmd_serve)
    return parser


# --------------------------------------------------------------------------- helpers
def _out_dir(path: Path) -> Path:
    """Create the output directory (checked before the model is read: a typo fails fast)."""
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path}: is a file; expected a directory (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {path}: cannot create the directory ({e.strerror or e})") from None
    return path


#: name prefix of the folder a command's files are written into before they move into place
STAGE_PREFIX = ".nnvitals-partial-"


def _is_marker(name: str) -> bool:
    """Summary files say a set is complete: they are removed first and moved in last."""
    return name.startswith("summary") and name.endswith(".json")


@contextlib.contextmanager
def _sigint_deferred(reraise: bool = True) -> Iterator[None]:
    """Hold Ctrl-C for the few renames that swap a set of files (main thread only); raise it after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    except (ValueError, OSError):  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if seen and reraise:
        raise KeyboardInterrupt


class OutputSet:
    """The files of one command, written together or not at all.

    ``with OutputSet(args.out) as out:`` checks ``--out`` at once (a file, or a place that cannot
    be written, fails before the model is read); ``out.dir`` is a hidden folder inside it (same
    filesystem) that the command writes into. Leaving the block normally moves every file into
    place (the summary files last, with Ctrl-C held for those renames); leaving it by an
    exception (Ctrl-C included) removes the folder, and ``--out`` itself if this run created it
    and it is empty, so an interrupted or failed run leaves the previous complete set or
    nothing. A file that could not be written is reported by the name it was to have in
    ``--out``.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._created = not os.path.lexists(self.path)
        _out_dir(self.path)
        self._stage: Path | None = None
        self._probe()

    def _probe(self) -> None:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.path))
        except OSError as e:
            self._remove_if_created()
            raise InputError(f"--out {self.path}: cannot write there ({e.strerror or e})") from None

    @property
    def dir(self) -> Path:
        """The folder to write this command's files into (created on first use)."""
        if self._stage is None:
            try:
                self._stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=self.path))
            except OSError as e:
                raise InputError(f"--out {self.path}: cannot write there ({e.strerror or e})") from None
        return self._stage

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is None:
            self._commit()
            return False
        mapped = self._final_error(error)
        with _sigint_deferred(reraise=False):
            self._discard()
        if mapped is not None:
            raise mapped from None
        return False

    def _final(self, staged: Path) -> Path | None:
        if self._stage is None:
            return None
        try:
            return self.path / Path(staged).relative_to(self._stage)
        except ValueError:
            return None

    def _final_error(self, error: BaseException) -> Exception | None:
        """A write error under the staging folder, renamed to the file's place in ``--out``."""
        from analyses.core.export import OutputWriteError

        if isinstance(error, OutputWriteError):
            final = self._final(error.path)
            return OutputWriteError(final, error.reason) if final is not None else None
        if isinstance(error, OSError) and getattr(error, "filename", None):
            final = self._final(Path(os.fsdecode(error.filename)))
            if final is not None:
                return OutputWriteError(final, " ".join(str(error.strerror or error).split()))
        return None

    def _commit(self) -> None:
        stage = self._stage
        if stage is None:
            return
        names = sorted(p.name for p in stage.iterdir())
        for n in names:
            target = self.path / n
            if target.is_dir() and not target.is_symlink():
                self._discard()
                raise InputError(f"{target}: is a directory; cannot replace it with an output file")
        order = [n for n in names if not _is_marker(n)] + [n for n in names if _is_marker(n)]
        try:
            with _sigint_deferred():
                for n in names:
                    if _is_marker(n):  # the old set stops claiming to be complete first
                        (self.path / n).unlink(missing_ok=True)
                for n in order:
                    os.replace(stage / n, self.path / n)
                stage.rmdir()
                self._stage = None
        except OSError as e:
            self._discard()
            where = self._final(Path(os.fsdecode(e.filename))) if e.filename else None
            raise InputError(
                f"{where or self.path}: cannot move into place ({' '.join(str(e.strerror or e).split())})"
            ) from None

    def _discard(self) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None
        self._remove_if_created()

    def _remove_if_created(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if empty


def execution_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The analysis parameters set by :func:`execution_options` (and --quiet)."""
    return dict(
        dtype=args.dtype,
        device=args.device,
        runner=args.dask or "threads",
        cache=not args.no_cache,
        show_progress=not args.quiet and sys.stderr.isatty(),
    )


def build_analysis(cls: type, **kw: Any):
    """``cls(**kw)``; a parameter value Param refuses (and the option types did not catch) is a usage error."""
    from analyses.core.errors import NNVitalsError

    try:
        return cls(**kw)
    except NNVitalsError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None


def _analysis(model: str, args: argparse.Namespace):
    from analyses.spectra.analysis import SpectralAnalysis

    return build_analysis(
        SpectralAnalysis,
        model=model,
        farms=args.farms,
        xmin_rule=args.xmin_rule,
        layers=args.layers,
        randomize=args.randomize,
        farms_rows=args.farms_rows,
        farms_q_ratio=args.farms_q_ratio,
        farms_windows=args.farms_windows,
        **execution_kwargs(args),
    )


def _run(model: str, args: argparse.Namespace):
    analysis = _analysis(model, args)
    analysis.torch_device()  # a bad --device fails before the model is read
    return analysis.run()


def _say(args: argparse.Namespace, text: str = "") -> None:
    if not getattr(args, "quiet", False):
        print(text, flush=True)


def write_result(result: Any, path: Path) -> Path:
    """The result's ``.nnv`` file (a write error names the file)."""
    from analyses.core.export import save_result

    return save_result(result, path)


def _write_figures(figures: dict[str, Any], out: Path, formats: Sequence[str]) -> list[Path]:
    from analyses.core.export import save_figure

    written = []
    for stem, fig in figures.items():
        for fmt in formats:
            written.append(save_figure(fig, out / f"{stem}.{fmt}"))
    return written


def _fmt(x: Any, spec: str = ".2f") -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return format(x, spec) if x == x and abs(x) != float("inf") else "n/a"


def _files_line(out: Path, files: Sequence[Path]) -> str:
    names = [p.name for p in files]
    return f"wrote {len(names)} files to {out}/: {', '.join(names)}"


def spectra_report(result, max_notable: int = 8) -> list[str]:
    """A few lines a person reads after a run: counts, mean alpha, notable and skipped layers."""
    t = result.table
    ok = t[t["status"] == "ok"]
    skipped = t[t["status"] != "ok"]
    subject = result.meta.get("subject", {})
    params = result.meta.get("params", {})
    how = "cached result" if result.meta.get("cached") else f"{_fmt(result.meta.get('seconds'), '.1f')} s"
    s = result.summary
    lines = [
        f"spectra of {subject.get('label', '?')} ({subject.get('source', '?')}): {len(t)} weights, "
        f"{len(ok)} analysed, {len(skipped)} skipped [{how}]",
        f"mean alpha {_fmt(s.get('alpha'))} (xmin rule {params.get('xmin_rule', '?')}"
        + (", FARMS" if params.get("farms") else "")
        + f"), mean alpha_weighted {_fmt(s.get('alpha_weighted'))}, mean log_norm {_fmt(s.get('log_norm'))}",
    ]
    notable = ok[ok["warning"].fillna("").astype(str) != ""]
    if len(notable):
        lines.append(f"notable layers ({len(notable)}; alpha < 2 over-trained, > 6 under-trained):")
        for _, r in notable.head(max_notable).iterrows():
            lines.append(f"  {r['name']}  alpha {_fmt(r['alpha'])}  {r['warning']}")
        if len(notable) > max_notable:
            lines.append(f"  ... and {len(notable) - max_notable} more (see spectra.csv)")
    else:
        lines.append("notable layers: none (every fitted alpha is between 2 and 6)")
    if len(skipped):
        shown = ", ".join(f"{r['name']} ({r['skip_reason']})" for _, r in skipped.head(3).iterrows())
        more = f", ... and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        lines.append(f"skipped: {shown}{more}")
    return lines


# --------------------------------------------------------------------------- commands
def cmd_spectra(args: argparse.Namespace) -> int:
    """``nnvitals spectra``: run SpectralAnalysis, write table, summary, result and figures."""
    with OutputSet(args.out) as output:
        result = _run(args.model, args)
        # plotting libraries load only once there is something to plot
        from analyses.core.export import save_table, write_summary
        from analyses.spectra.views import main_figures

        out = output.dir
        files = [save_table(result.table, out / "spectra.csv"), write_summary(result, out / "summary.json")]
        files.append(write_result(result, out / "spectra.nnv"))
        files += _write_figures(main_figures(result), out, args.formats)
    for line in spectra_report(result):
        _say(args, line)
    _say(args, _files_line(args.out, files))
    return OK


def cmd_spectra_compare(args: argparse.Namespace) -> int:
    """``nnvitals spectra-compare``: both analyses, a per-layer delta table and the comparison figure."""
    with OutputSet(args.out) as output:
        res_a, res_b, table, labels, files = _compare(args, output)
    delta = table[f"{args.metric}_delta"]
    matched = int(delta.notna().sum())
    _say(args, f"compared {labels[0]} (A) with {labels[1]} (B): {matched} layers matched by name, "
               f"{len(table) - matched} in only one")  # fmt: skip
    if matched:
        _say(args, f"mean {args.metric}: A {_fmt(table[f'{args.metric}_a'].mean())}, "
                   f"B {_fmt(table[f'{args.metric}_b'].mean())}, mean delta (B - A) {_fmt(delta.mean())}")  # fmt: skip
        top = table.loc[delta.abs().sort_values(ascending=False).index[: min(5, matched)]]
        _say(args, f"largest changes in {args.metric}:")
        for _, r in top.iterrows():
            _say(args, f"  {r['name']}  {_fmt(r[f'{args.metric}_a'])} -> {_fmt(r[f'{args.metric}_b'])}")
    _say(args, _files_line(args.out, files))
    return OK


def _compare(args: argparse.Namespace, output: OutputSet):
    res_a = _run(args.model_a, args)
    res_b = _run(args.model_b, args)
    from analyses.core.errors import NNVitalsError
    from analyses.core.export import save_table, write_summary
    from analyses.spectra.views import COMPARE_METRICS, compare_models, compare_table

    for r in (res_a, res_b):
        if args.metric not in r.table.columns:
            numeric = [c for c in r.table.columns if r.table[c].dtype.kind == "f"]
            raise NNVitalsError(
                f"--metric {args.metric}: not a spectra column; expected one of {', '.join(numeric)}"
            )
    labels = args.labels or (
        res_a.meta.get("subject", {}).get("label", "A"),
        res_b.meta.get("subject", {}).get("label", "B"),
    )
    if labels[0] == labels[1]:
        labels = (f"{labels[0]} (A)", f"{labels[1]} (B)")
    metrics = tuple(dict.fromkeys((args.metric, *COMPARE_METRICS)))
    table = compare_table(res_a, res_b, metrics)
    out = output.dir
    files = [save_table(table, out / "compare.csv")]
    files.append(write_summary(res_a, out / "summary_a.json"))
    files.append(write_summary(res_b, out / "summary_b.json"))
    fig = compare_models(res_a, res_b, metric=args.metric, labels=labels)
    files += _write_figures({f"compare_{args.metric}": fig}, out, args.formats)
    return res_a, res_b, table, labels, files


def cmd_serve(args: argparse.Namespace) -> int:
    """``nnvitals serve``: the Panel app (see :mod:`dashboard.serve`; Panel is imported there)."""
    from .serve import run_serve

    return run_serve(args)


# --------------------------------------------------------------------------- entry point
def _fail(message: str, code: int) -> int:
    one_line = " ".join(str(message).split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr, flush=True)
    return code


def _terminated(signum, frame) -> NoReturn:
    """SIGTERM (``kill``, a job scheduler's time limit) ends a run like Ctrl-C: outputs cleaned up."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnvitals`` console script; returns the exit code."""
    debug = os.environ.get("NNVITALS_DEBUG", "") not in ("", "0")
    try:
        signal.signal(signal.SIGTERM, _terminated)
    except (ValueError, OSError):  # not the main thread (called from Python): leave it alone
        pass
    if not debug:
        # numeric warnings (log of 0 in a histogram, ...) are not the user's business
        warnings.simplefilter("ignore", RuntimeWarning)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            raise UsageError(
                f"a command is required: spectra, spectra-compare, orbits or serve (see '{PROG} --help')"
            )
        t0 = time.perf_counter()
        code = args.func(args)
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
