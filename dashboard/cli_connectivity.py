"""``nnvitals connectivity``: linear mode connectivity of two models, before and after alignment.

::

    nnvitals connectivity MODEL_A MODEL_B [--also MODEL ...] --data digits|digits16|digits32|FILE.npz
                          [--test-data FILE.npz] [--match weights|activations|none] [--points N]
                          [--bn-reset auto|on|off] [--repair] [--seed S] [--max-iter N] --out DIR

Writes ``DIR/connectivity.csv`` (loss and accuracy at every point of the naive and matched paths,
train and test), ``DIR/layers.csv`` (per layer: L2 distance and singular-vector alignment before
and after matching), ``DIR/summary.json`` (barriers), ``DIR/connectivity.nnv`` (the result),
``DIR/model_b_aligned.safetensors`` (B with its hidden units permuted to match A: the same
function, loadable into B's architecture) and the figures. At least one model must carry an
architecture (a demo name, a ``.pt2`` export or ``package.module:factory``); the other may be
weights only (``.safetensors``, ``.pt``).
"""

from __future__ import annotations

import argparse

from .cli import (
    OK,
    OutputSet,
    UsageError,
    _files_line,
    _int_at_least,
    _say,
    _write_figures,
    build_analysis,
    execution_kwargs,
    execution_options,
    output_options,
    write_result,
)


def add_connectivity_parser(sub) -> None:
    p = sub.add_parser(
        "connectivity",
        help="linear mode connectivity: loss barrier between two models, before and after weight matching",
        description="Loss and accuracy along the linear path between MODEL_A and MODEL_B, naive and after "
        "permutation alignment (Git Re-Basin); writes DIR/connectivity.csv, DIR/layers.csv, "
        "DIR/summary.json, DIR/connectivity.nnv, DIR/model_b_aligned.safetensors and the figures.",
    )
    p.add_argument("model_a", metavar="MODEL_A", help="demo name, .pt2 export, module:factory or checkpoint")
    p.add_argument("model_b", metavar="MODEL_B", help="a model of the same architecture")
    a = p.add_argument_group("analysis")
    a.add_argument(
        "--also", action="append", default=[], metavar="MODEL",
        help="a further model (repeatable): pairwise barriers, merging and the plane through three",
    )  # fmt: skip
    a.add_argument(
        "--data", default="digits", help="digits (8x8, train and test split), digits16, digits32, or FILE.npz "
        "with x and y (used as train data; default digits)",
    )  # fmt: skip
    a.add_argument("--test-data", default=None, metavar="FILE.npz", help="test split for --data FILE.npz")
    a.add_argument(
        "--match", choices=("weights", "activations", "none"), default="weights", help="alignment of B"
    )
    a.add_argument("--points", type=_int_at_least(2, 1001), default=25, help="points per path (default 25)")
    a.add_argument(
        "--bn-reset", choices=("auto", "on", "off"), default="auto", help="recompute BatchNorm stats"
    )
    a.add_argument("--repair", action="store_true", help="REPAIR: renormalise hidden units along the path")
    a.add_argument("--seed", type=int, default=0, help="seed of the matching order")
    a.add_argument("--max-iter", type=_int_at_least(1, 10000), default=100, help="weight matching sweeps")
    a.add_argument("--batch-size", type=_int_at_least(1), default=512, help="samples per forward pass")
    a.add_argument(
        "--engine", choices=("auto", "stacked", "vmap", "per-point"), default="auto",
        help="path evaluation: stacked (plain layer chains, all points in one pass), vmap, per-point; "
        "auto: stacked when the model allows it",
    )  # fmt: skip
    execution_options(p)
    output_options(p)
    p.set_defaults(func=cmd_connectivity)


def _data(args: argparse.Namespace):
    from analyses.core.data import BUILTIN_DATASETS

    if args.test_data is not None:
        if args.data in BUILTIN_DATASETS:
            raise UsageError("--test-data: only with --data FILE.npz (the built-in digits have a test split)")
        return {"train": args.data, "test": args.test_data}
    if args.data in BUILTIN_DATASETS:
        return args.data
    return {"train": args.data}


def _analysis(args: argparse.Namespace):
    from analyses.connectivity.analysis import ModeConnectivity

    kw = dict(
        data=_data(args), match=args.match, points=args.points, bn_reset=args.bn_reset, repair=args.repair,
        seed=args.seed, max_iter=args.max_iter, batch_size=args.batch_size, engine=args.engine,
        **execution_kwargs(args),
    )  # fmt: skip
    if args.also:
        return build_analysis(ModeConnectivity, models=[args.model_a, args.model_b, *args.also], **kw)
    return build_analysis(ModeConnectivity, model_a=args.model_a, model_b=args.model_b, **kw)


def cmd_connectivity(args: argparse.Namespace) -> int:
    """Run ModeConnectivity; write the tables, summary, result, aligned B and figures."""
    with OutputSet(args.out) as output:
        analysis = _analysis(args)
        analysis.torch_device()
        result = analysis.run()
        from safetensors.torch import save

        from analyses.connectivity.views import main_figures, summary_text
        from analyses.core.export import save_bytes, save_table, write_summary

        out = output.dir
        files = [
            save_table(result.table, out / "connectivity.csv"),
            save_table(result.layers, out / "layers.csv"),
        ]
        files.append(write_summary(result, out / "summary.json"))
        files.append(write_result(result, out / "connectivity.nnv"))
        aligned = save({k: v.contiguous() for k, v in result.permuted_b.items()})
        files.append(save_bytes(aligned, out / "model_b_aligned.safetensors"))
        files += _write_figures(main_figures(result), out, args.formats)
    s = result.summary
    _say(args, f"connectivity of {args.model_a} (A) and {args.model_b} (B), {s['points']} points per path:")
    for line in summary_text(result).splitlines():
        _say(args, "  " + line)
    _say(args, _files_line(args.out, files))
    return OK
