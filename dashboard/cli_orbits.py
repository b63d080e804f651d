"""``nnvitals orbits``: NERO plots of one or more models along a group orbit, in batch.

::

    nnvitals orbits MODEL [MODEL ...] --data digits|FILE.npz --group rotation|shift|scale|flip|rotation-flip
                    [--steps N] [--shift-range R] [--shift-step S] [--scale-range LO,HI] [--scale-step S]
                    [--score probability|correct|margin|consensus] [--classes 0,1,...] [--max-samples N]
                    --out DIR

Writes ``DIR/orbits.csv`` (one row per model, sample and group element), ``DIR/summary.json``
(per model the mean score and the gap between the best and worst element), ``DIR/orbits.nnv``
(the result, for notebooks and the app) and the figures (SVG and offline HTML by default).
Models must be runnable: a ``.pt2`` export, a demo name or ``package.module:factory``.
"""

from __future__ import annotations

import argparse

from .cli import (
    OK,
    OutputSet,
    _files_line,
    _float_above,
    _int_at_least,
    _number_pair,
    _say,
    _write_figures,
    build_analysis,
    execution_kwargs,
    execution_options,
    output_options,
    write_result,
)


def _classes(text: str) -> list[int]:
    try:
        items = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected class indices separated by commas (0,3,7), got {text!r}"
        ) from None
    if not items or any(i < 0 for i in items):
        raise argparse.ArgumentTypeError(f"expected class indices >= 0 separated by commas, got {text!r}")
    return items


def add_orbits_parser(sub) -> None:
    from analyses.orbits.kernels import GROUPS, SCORES

    p = sub.add_parser(
        "orbits",
        help="NERO plots: model scores along rotation / shift / scale / flip orbits",
        description="Scores of one or more models on every sample transformed by every sampled group "
        "element; writes DIR/orbits.csv, DIR/summary.json, DIR/orbits.nnv and the figures.",
    )
    p.add_argument(
        "models", nargs="+", metavar="MODEL", help="runnable model: .pt2 export, demo name or module:factory"
    )
    a = p.add_argument_group("analysis")
    a.add_argument(
        "--data", default="digits", help="digits (16x16 bundled digits), digits8, digits32, or FILE.npz with "
        "x (N,C,H,W) floats in [0, 1] and y ints (default digits)",
    )  # fmt: skip
    a.add_argument(
        "--split", choices=("test", "train", "all"), default="test", help="part of the bundled digits"
    )
    a.add_argument("--group", choices=list(GROUPS), default="rotation", help="the group (default rotation)")
    a.add_argument(
        "--steps", type=_int_at_least(1), default=72, help="rotation angles from 0 degrees (default 72)"
    )
    a.add_argument(
        "--shift-range", type=_float_above(0), default=4.0, metavar="PX", help="largest |dx|, |dy|"
    )
    a.add_argument("--shift-step", type=_float_above(0), default=1.0, metavar="PX", help="shift grid step")
    a.add_argument(
        "--scale-range",
        type=_number_pair("0.5,1.5", positive_ordered=True),
        default=(0.5, 1.5),
        metavar="LO,HI",
        help="zoom range",
    )
    a.add_argument("--scale-step", type=_float_above(0), default=0.05, help="zoom step")
    a.add_argument("--score", choices=list(SCORES), default="probability", help="what each point records")
    a.add_argument("--classes", type=_classes, default=[], metavar="LIST", help="only these classes (0,3,7)")
    a.add_argument(
        "--max-samples", type=_int_at_least(1), default=None, metavar="N", help="at most N samples"
    )
    a.add_argument("--seed", type=int, default=0, help="seed of the --max-samples subset")
    execution_options(p)
    output_options(p)
    p.set_defaults(func=cmd_orbits)


def _analysis(args: argparse.Namespace):
    from analyses.orbits.analysis import OrbitAnalysis

    return build_analysis(
        OrbitAnalysis,
        model=list(args.models),
        data=args.data,
        split=args.split,
        group=args.group,
        steps=args.steps,
        shift_range=args.shift_range,
        shift_step=args.shift_step,
        scale_range=args.scale_range,
        scale_step=args.scale_step,
        score=args.score,
        classes=args.classes,
        max_samples=args.max_samples,
        seed=args.seed,
        **execution_kwargs(args),
    )


def cmd_orbits(args: argparse.Namespace) -> int:
    """Run OrbitAnalysis; write the table, summary, result and figures."""
    with OutputSet(args.out) as output:
        analysis = _analysis(args)
        analysis.torch_device()
        result = analysis.run()
        from analyses.core.export import save_table, write_summary
        from analyses.orbits.views import main_figures, summary_text

        out = output.dir
        files = [save_table(result.table, out / "orbits.csv"), write_summary(result, out / "summary.json")]
        files.append(write_result(result, out / "orbits.nnv"))
        files += _write_figures(main_figures(result), out, args.formats)
    s = result.summary
    _say(args, f"{s['group']} orbit, {s['elements']} elements x {s['samples']} samples of {s['data']}:")
    for line in summary_text(result).splitlines():
        _say(args, "  " + line)
    _say(args, _files_line(args.out, files))
    return OK
