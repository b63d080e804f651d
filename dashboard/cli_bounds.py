"""``nnvitals ibp`` and ``nnvitals lipschitz``: certified-bound analyses in batch.

::

    nnvitals ibp MODEL [--data digits|digits16|digits32|FILE.npz] [--eps E] [--eps-sweep 0.001,0.01,...]
                 [--spec margin|identity] [--relu local|linear] [--data-range LO,HI] [--max-samples N]
                 --out DIR
    nnvitals lipschitz MODEL [--data ...] [--mixes N] [--no-per-layer] [--sharpen] [--iters N]
                 [--data-range LO,HI] [--max-samples N] --out DIR

``ibp`` writes ``DIR/ibp.csv`` (per layer: tightness, box width, ReLU stability), ``DIR/summary.json``
(output tightness, clean and certified accuracy), ``DIR/ibp.nnv`` and the figures (tightness per
layer, ReLU stability, and with ``--eps-sweep`` tightness and certified accuracy vs eps).
``lipschitz`` writes ``DIR/lipschitz.csv`` (per layer: own constant, upper bound, lower bounds),
``DIR/jacobian_norms.csv`` (per sample), ``DIR/summary.json``, ``DIR/lipschitz.nnv`` and the
figures (bounds per layer, gap, histogram of Jacobian norms). Models must be runnable: a ``.pt2``
export, a demo name or ``package.module:factory``. A negative eps, data outside ``--data-range``
or an op the bounds do not support: one line ``nnvitals: error: ...``, exit code 1.
"""

from __future__ import annotations

import argparse

from .cli import (
    OK,
    OutputSet,
    _files_line,
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


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _numbers(text: str) -> list[float]:
    try:
        items = [float(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas (0.001,0.01,0.1), got {text!r}"
        ) from None
    if not items:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return items


def _common(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    p.add_argument(
        "model", metavar="MODEL", help="runnable model: .pt2 export, demo name or package.module:factory"
    )
    a = p.add_argument_group("analysis")
    a.add_argument(
        "--data", default="digits", help="digits (8x8 bundled digits), digits16, digits32, or FILE.npz with "
        "arrays x (N, ...) and y (N,) (default digits)",
    )  # fmt: skip
    a.add_argument(
        "--data-range", type=_number_pair("0,1"), default=(0.0, 1.0), metavar="LO,HI",
        help="range of valid inputs; the data must lie in it, boxes are clipped to it (default 0,1)",
    )  # fmt: skip
    a.add_argument(
        "--max-samples",
        type=_int_at_least(1),
        default=256,
        metavar="N",
        help="samples per split (default 256)",
    )
    a.add_argument("--seed", type=int, default=0, help="seed of the sample subset and random starts")
    return a


def add_bounds_parsers(sub) -> None:
    """Register ``ibp`` and ``lipschitz`` on the ``nnvitals`` subcommand parser."""
    from analyses.bounds.ibp import RELU_MODES, SPECS

    p = sub.add_parser(
        "ibp",
        help="IBP tightness per layer, ReLU stability, certified accuracy at eps",
        description="Interval bound propagation through MODEL around each sample (L-inf ball of radius "
        "--eps): local tightness per layer, ReLU stability, clean and certified accuracy; writes "
        "DIR/ibp.csv, DIR/summary.json, DIR/ibp.nnv and the figures.",
    )
    a = _common(p)
    a.add_argument("--eps", type=_number, default=0.01, help="L-inf input radius, >= 0 (default 0.01)")
    a.add_argument(
        "--eps-sweep", type=_numbers, default=[], metavar="LIST",
        help="also measure at these eps (tightness and certified accuracy vs eps), e.g. 0.001,0.01,0.1",
    )  # fmt: skip
    a.add_argument(
        "--spec", choices=list(SPECS), default="margin", help="outputs: margins (default) or logits"
    )
    a.add_argument("--relu", choices=list(RELU_MODES), default="local", help="local (default) or linear")
    execution_options(p)
    output_options(p)
    p.set_defaults(func=cmd_ibp)

    q = sub.add_parser(
        "lipschitz",
        help="Lipschitz upper bound (product of layer norms) vs lower bound (Jacobian norms)",
        description="Certified upper bound (product of the layers' operator norms) and empirical lower "
        "bound (largest input-Jacobian spectral norm over train, test and midpoints) per layer; writes "
        "DIR/lipschitz.csv, DIR/jacobian_norms.csv, DIR/summary.json, DIR/lipschitz.nnv and the figures.",
    )
    b = _common(q)
    b.add_argument(
        "--mixes", type=_int_at_least(0), default=256, metavar="N",
        help="midpoints 0.5 x1 + 0.5 x2 of random pairs probed (default 256)",
    )  # fmt: skip
    b.add_argument("--no-per-layer", action="store_true", help="lower bound at the output only (faster)")
    b.add_argument("--sharpen", action="store_true", help="sharpen the lower bound by gradient ascent")
    b.add_argument(
        "--iters", type=_int_at_least(1), default=1000, metavar="N", help="most power-iteration steps"
    )
    execution_options(q)
    output_options(q)
    q.set_defaults(func=cmd_lipschitz)


def _make(cls, args: argparse.Namespace, **kw):
    kw.update(
        model=args.model,
        data=args.data,
        data_range=args.data_range,
        max_samples=args.max_samples,
        seed=args.seed,
        **execution_kwargs(args),
    )
    return build_analysis(cls, **kw)


def cmd_ibp(args: argparse.Namespace) -> int:
    """Run IBPTightness; write the table, summary, result and figures."""
    from analyses.bounds.analysis import IBPTightness

    with OutputSet(args.out) as output:
        analysis = _make(
            IBPTightness, args, eps=args.eps, eps_sweep=list(args.eps_sweep), spec=args.spec, relu=args.relu
        )
        analysis.torch_device()
        result = analysis.run()
        from analyses.bounds.views import ibp_figures, ibp_summary_text
        from analyses.core.export import save_table, write_summary

        out = output.dir
        files = [save_table(result.table, out / "ibp.csv"), write_summary(result, out / "summary.json")]
        files.append(write_result(result, out / "ibp.nnv"))
        files += _write_figures(ibp_figures(result), out, args.formats)
    _say(args, f"IBP tightness of {args.model} on {args.data}:")
    for line in ibp_summary_text(result).splitlines():
        _say(args, "  " + line)
    _say(args, _files_line(args.out, files))
    return OK


def cmd_lipschitz(args: argparse.Namespace) -> int:
    """Run LipschitzBounds; write the tables, summary, result and figures."""
    import pandas as pd

    from analyses.bounds.analysis import LipschitzBounds

    with OutputSet(args.out) as output:
        analysis = _make(
            LipschitzBounds, args, mixes=args.mixes, per_layer=not args.no_per_layer, sharpen=args.sharpen,
            iters=args.iters,
        )  # fmt: skip
        analysis.torch_device()
        result = analysis.run()
        from analyses.bounds.views import lipschitz_figures, lipschitz_summary_text
        from analyses.core.export import save_table, write_summary

        per_sample = pd.DataFrame(
            [
                {"split": s, "row": i, "jacobian_norm": float(v)}
                for s in result.splits
                for i, v in enumerate(result.jacobian_norms(s))
            ]
        )
        out = output.dir
        files = [
            save_table(result.table, out / "lipschitz.csv"),
            save_table(per_sample, out / "jacobian_norms.csv"),
        ]
        files.append(write_summary(result, out / "summary.json"))
        files.append(write_result(result, out / "lipschitz.nnv"))
        files += _write_figures(lipschitz_figures(result), out, args.formats)
    _say(args, f"Lipschitz bounds of {args.model} on {args.data}:")
    for line in lipschitz_summary_text(result).splitlines():
        _say(args, "  " + line)
    _say(args, _files_line(args.out, files))
    return OK
