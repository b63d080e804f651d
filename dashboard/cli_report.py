"""``nnvitals report`` and the HTML report of ``nnvitals track``.

``report`` runs every analysis that applies to MODEL (:data:`dashboard.cli.REPORTED`: spectra
always, the runnable ones when MODEL is runnable, connectivity with ``--model-b``), writes each
one's tables and result, and one offline HTML report built by :mod:`analyses.core.report`; an
analysis that cannot run is listed in the report with its one-line reason. ``track`` writes its
report with :func:`track_report`. The generated commands, their options and the entry point are in
:mod:`dashboard.cli`, which imports this module only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analyses.registry import ENTRIES, Entry, resolve

from .cli import (
    COMMANDS,
    EXTRA_FILES,
    OK,
    REPORT_NAME,
    REPORTED,
    OutputSet,
    UsageError,
    choice_list,
    converter,
    files_line,
    format_number,
    json_object,
    param_option,
    say,
    version_text,
    write_result,
)


def report_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``nnvitals report`` (execution options worded as every command's)."""
    names = [e.command for e in REPORTED]
    p.add_argument("model", metavar="MODEL", help="checkpoint path, Hugging Face directory, .pt2 export, "
                   "demo name or module:factory")  # fmt: skip
    g = p.add_argument_group("analysis")
    g.add_argument("--model-b", default=None, metavar="MODEL_B",
                   help="a second model of the same architecture: adds connectivity (MODEL to MODEL_B)")  # fmt: skip
    g.add_argument(
        "--analyses", default=None, metavar="LIST",
        type=converter(f"a comma-separated list of {', '.join(names)}", choice_list(names)),
        help=f"only these analyses, comma-separated from {', '.join(names)} (default: every one that applies)",
    )  # fmt: skip
    g.add_argument("--data", default=None, metavar="DATA",
                   help="data of every analysis that takes data (default: a demo model's own digits, "
                   "else each analysis's default)")  # fmt: skip
    g.add_argument("--overrides", default={}, metavar="JSON", type=converter("a JSON object", json_object),
                   help="parameters per analysis, as JSON, e.g. '{\"ibp\": {\"eps\": 0.05}, "
                   "\"orbits\": {\"steps\": 8}}'")  # fmt: skip
    e = p.add_argument_group("execution")
    for name in ("dtype", "device", "cache"):
        param_option(e, COMMANDS["spectra"], name)
    o = p.add_argument_group("output")
    o.add_argument(
        "--out", required=True, type=Path, metavar="DIR", help="directory for the tables and the report"
    )
    o.add_argument("-q", "--quiet", action="store_true", help="no progress lines and no summary on stdout")


#: parameters ``--overrides`` never sets (the report sets them itself)
_REPORT_OWN = frozenset({"name", "model", "model_b", "models", "show_progress", "runner"})


def _one_line(e: BaseException) -> str:
    from analyses.core.errors import NNVitalsError

    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, NNVitalsError) else f"{type(e).__name__}: {text} (unexpected; please report)"


def _report_params(args: argparse.Namespace, data: Any) -> dict[str, dict[str, Any]]:
    """The parameters of each analysis the report may run: execution options, data and overrides,
    each checked by the class itself (a bad one is a usage error naming --overrides), before any run."""
    from analyses.core.data import BUILTIN_DATASETS

    names = [e.command for e in REPORTED]
    over = args.overrides or {}
    for key, value in over.items():
        if key not in names:
            raise UsageError(
                f"argument --overrides: unknown analysis {key!r}; expected one of {', '.join(names)}"
            )
        if not isinstance(value, dict):
            raise UsageError(
                f"argument --overrides: {key}: expected a JSON object of parameters, got {value!r}"
            )
    params: dict[str, dict[str, Any]] = {}
    for e in REPORTED:
        cls = e.analysis_class
        kw: dict[str, Any] = {"dtype": args.dtype, "device": args.device, "cache": args.cache}
        if data is not None and "data" in cls.param:
            kw["data"] = data
            if e.command == "connectivity" and data not in BUILTIN_DATASETS:
                kw["data"] = {"train": data}  # a file: as the connectivity command reads --data
        for name, value in over.get(e.command, {}).items():
            if name in _REPORT_OWN or name not in cls.param:
                allowed = ", ".join(n for n in cls.param if n not in _REPORT_OWN)
                raise UsageError(f"argument --overrides: {e.command}: {name!r} is not a parameter to set here; "
                                 f"expected one of {allowed}")  # fmt: skip
            kw[name] = value
        try:
            cls(**kw)  # Param's own check and words
        except ValueError as err:
            raise UsageError(f"argument --overrides: {e.command}: {' '.join(str(err).split())}") from None
        params[e.command] = kw | {"show_progress": False}
    COMMANDS["spectra"].analysis_class(**params["spectra"]).torch_device()  # a bad --device: one line, now
    return params


def _report_data(args: argparse.Namespace) -> tuple[Any, str]:
    """The data of the report's analyses and how it was chosen: --data, else a demo model's own
    digits (``digitsN``), else each analysis's default (None)."""
    if args.data is not None:
        return args.data, f"data: {args.data}"
    from analyses.zoo import demo_image_size

    size = demo_image_size(args.model)
    if size:
        return f"digits{size}", f"data: digits{size} (the demo model's own digits)"
    return None, "data: each analysis's default"


def _applies(entry: Entry, args: argparse.Namespace, runnable: str | None) -> str | None:
    """Why ``entry`` does not apply to the report's model (None: it applies)."""
    if len(entry.positional) > 1 and getattr(args, entry.positional[1].param, None) is None:
        return f"not applicable: needs a second model; give --{entry.positional[1].param.replace('_', '-')} B"
    if entry.runnable and runnable is not None:
        return f"not applicable: {runnable}"
    return None


def _runnable(model: str) -> str | None:
    """None when ``model`` runs (a .pt2, demo name or module:factory), else why not; a model that
    cannot be read at all is an error (one line naming it)."""
    from analyses.core.errors import NNVitalsError
    from analyses.core.subject import load_subject

    subject = load_subject(model)
    try:
        module = subject.module()
    except NNVitalsError as e:
        return f"MODEL {model} cannot run ({_one_line(e)})"
    if module is None:
        return (f"needs a runnable model and MODEL {model} holds weights only "
                "(give a .pt2 export, a demo name or package.module:factory)")  # fmt: skip
    return None


def _tables(entry: Entry, result: Any) -> dict[str, Any]:
    """The CSV tables ``entry``'s single command writes: ``<stem>.csv`` and its family's other tables."""
    import pandas as pd

    extra = EXTRA_FILES[entry.command](result) if entry.command in EXTRA_FILES else {}
    return {f"{entry.stem}.csv": result.table} | {
        n: t for n, t in extra.items() if isinstance(t, pd.DataFrame)
    }


def cmd_report(args: argparse.Namespace) -> int:
    """``nnvitals report``: every analysis that applies to MODEL, their tables and one HTML report.

    Spectra always; the analyses marked ``runnable`` in the registry when MODEL runs; connectivity
    with --model-b. One that does not apply or fails is a section with its one-line reason and the
    others still run; exit 0 when at least one ran (none: one line naming each reason)."""
    from analyses.core.errors import Cancelled, NNVitalsError

    if args.analyses:
        chosen = [e for e in REPORTED if e.command in args.analyses]
    else:
        chosen = list(REPORTED)
    data, data_line = _report_data(args)
    params = _report_params(args, data)
    with OutputSet(args.out) as output:
        runnable = _runnable(args.model)  # an unreadable MODEL: one line, nothing written
        from analyses.core.export import json_safe, save_bytes, save_table, summary_dict
        from analyses.core.report import Section, headline_numbers, write_report

        out = output.dir
        sections, files, summaries = [], [], {}
        for e in chosen:
            reason = _applies(e, args, runnable)
            if reason is not None:
                sections.append(Section(e.title, e.command, reason=reason, status="not applicable"))
                summaries[e.command] = {"status": "not applicable", "reason": reason}
                say(args, f"{e.command}: {reason}")
                continue
            t0 = time.perf_counter()
            kw = {p.param: getattr(args, p.param, None) for p in e.positional}
            try:
                result = e.analysis_class(**kw, **params[e.command]).run()
                figures = resolve(e.figures)(result)
                text = resolve(e.summary)(result)
            except (KeyboardInterrupt, Cancelled):
                raise
            except Exception as err:  # one analysis failed: listed with its reason, the others go on
                reason = f"failed: {_one_line(err)}"
                sections.append(Section(e.title, e.command, reason=reason, status="failed"))
                summaries[e.command] = {"status": "failed", "reason": reason}
                say(args, f"{e.command}: {reason}")
                continue
            own = [save_table(t, out / name) for name, t in _tables(e, result).items()]
            own.append(write_result(result, out / f"{e.stem}.nnv"))
            files += own
            numbers = headline_numbers(result.summary, e.numbers)
            sections.append(Section(e.title, e.command, numbers=numbers, figures=figures, summary=text,
                                    files=[p.name for p in own]))  # fmt: skip
            summaries[e.command] = {"status": "ran", **summary_dict(result)}
            say(args, f"{e.command}: ran in {time.perf_counter() - t0:.1f} s; " + ", ".join(
                f"{k} {format_number(v, '.4g') if not isinstance(v, str) else v}" for k, v in numbers[:4]))  # fmt: skip
        ran = [s for s in sections if s.status == "ran"]
        if not ran:
            why = "; ".join(f"{s.anchor}: {s.reason}" for s in sections) or "no analysis chosen"
            raise NNVitalsError(f"report {args.model}: no analysis ran ({why})")
        intro = [f"model: {args.model}"] + ([f"model B: {args.model_b}"] if args.model_b else [])
        intro += [data_line, f"{len(ran)} of {len(sections)} analyses ran; nnvitals {version_text()}"]
        files.append(write_report(out / REPORT_NAME, f"nnvitals report: {args.model}", sections, intro))
        doc = {"analysis": "report", "model": args.model, "model_b": args.model_b, "data": data,
               "analyses": summaries, "version": version_text()}  # fmt: skip
        text = json.dumps(json_safe(doc), indent=2, sort_keys=True, allow_nan=False) + "\n"
        files.append(save_bytes(text.encode("utf-8"), out / "summary.json"))
    say(args, files_line(args.out, files))
    return OK


#: the trajectory's figures by the analysis they show (a stem not listed goes to the overview)
TRACK_FIGURES = {
    "alpha_heatmap": "spectra", "mean_alpha": "spectra", "certified_accuracy": "ibp", "ibp_tightness": "ibp",
    "lipschitz": "lipschitz", "lipschitz_ratio": "lipschitz", "nero_gap": "orbits", "barrier": "connectivity",
}  # fmt: skip


def track_report(result: Any, figures: dict[str, Any], text: str, files: Sequence[Path], path: Path) -> Path:
    """``track``'s HTML report: an overview (series, summary text, files) and a section per analysis
    (its headline at the first and the last checkpoint, its figures, its failures), also for one
    that did not apply."""
    from analyses.core.report import Section, headline_numbers, write_report

    s = result.summary
    unit = result.unit
    errors = s.get("errors", [])
    overview = Section(
        "Series",
        "series",
        numbers=[
            ("checkpoints", len(result.steps)),
            (f"first {unit}", result.steps[0] if result.steps else None),
            (f"last {unit}", result.steps[-1] if result.steps else None),
            *headline_numbers(s, COMMANDS["track"].numbers),
            ("failed runs", len(errors)),
        ],  # fmt: skip
        figures={k: f for k, f in figures.items() if k not in TRACK_FIGURES},
        summary=text,
        files=[p.name for p in files] + [path.name],
        note=f"baseline: {unit} {s['baseline']}" if s.get("baseline") is not None else "",
    )
    sections = [overview]
    titles = {e.command: e.title for e in ENTRIES}
    for kind in [*s.get("analyses", []), *s.get("not_applicable", {})]:
        mine = [x for x in errors if str(x.get("analysis", "")).startswith(kind)]
        failed = "; ".join(f"{x['checkpoint']}: {x['message']}" for x in mine[:3])
        figs = {k: f for k, f in figures.items() if TRACK_FIGURES.get(k) == kind}
        if kind in s.get("not_applicable", {}):
            why = f"not applicable: {s['not_applicable'][kind]}"
            sections.append(Section(titles.get(kind, kind), kind, reason=why, status="not applicable"))
            continue
        h = s.get("headline", {}).get(kind)
        numbers = []
        if h:
            numbers = [("metric", h["metric"]), (f"at {unit} {h['first_step']}", h["first"]),
                       (f"at {unit} {h['last_step']}", h["last"]), ("change", h["change"])]  # fmt: skip
        status = "ran" if h or figs else "failed"
        reason = f"failed on {len(mine)} run(s): {failed}" if mine else None
        sections.append(Section(titles.get(kind, kind), kind, numbers=numbers, figures=figs, reason=reason,
                                status=status))  # fmt: skip
    title = f"nnvitals track: {s.get('series', '')}"
    intro = [f"{len(result.steps)} checkpoints, {unit}s {', '.join(map(str, result.steps))}",
             f"nnvitals {version_text()}"]  # fmt: skip
    return write_report(path, title, sections, intro)


#: commands that also write an HTML report (``DIR/report.html``) of their result
