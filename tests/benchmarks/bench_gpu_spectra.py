"""Spectra at LLM scale: a generated LLaMA-shaped fp16 checkpoint, sharded like Hugging Face.

What it measures (issue 14 targets on one H200, 32 blocks = LLaMA-7B shapes, 224 matrices, 13 GB):

- ESD of the whole checkpoint: ``SpectralAnalysis(model=DIR, device=DEV)`` (target <= 15 s);
- ESD + FARMS: the same with ``farms=True`` (target <= 40 s);
- peak host memory each run added beyond the page cache (``VmHWM`` minus the baseline taken
  after CUDA is loaded; see tests/gpu/bench_util.py; target < 3 GB);
- WeightWatcher 0.7.7 on one block (7 matrices, as ``nn.Linear`` layers) on the same device,
  when ``weightwatcher`` is importable: the time ratio (target >= 20x) and the largest alpha
  difference (both with the KS xmin rule);
- diagnostics for tuning: one Gram eigensolve of each shape on one stream and eight on eight
  threads' own streams at once, FARMS of one matrix with its small window eigensolves on the
  host and on the device, the reader's statistics;
- a 70B-shaped estimate: one LLaMA-2-70B block (hidden 8192, MLP 28672, grouped-query k/v
  1024 x 8192) generated and analysed, times 80 blocks, next to the time to read 80 blocks'
  bytes at the rate this machine read that block cold from disk.

    python tests/benchmarks/bench_gpu_spectra.py                      # CPU: 1 block, hidden 1024
    python tests/benchmarks/bench_gpu_spectra.py --device cuda --blocks 32 --hidden 4096 --json out.json

Timings are single runs (a 13 GB run is its own warm-up-free measurement), after one small
warm-up run of the analysis on the same device.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
import bench_util as U  # noqa: E402

U.repo_on_path()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from llama_checkpoint import layout, make_checkpoint  # noqa: E402

WW_SMALL_N = 20  # WeightWatcher fits ESDs of fewer eigenvalues with another estimator


def _write_70b_block(d: Path, hidden: int, inter: int, kv: int, device: str) -> dict:
    """One LLaMA-2-70B-shaped block (grouped-query attention: k/v of kv x hidden)."""
    import json
    import struct

    from llama_checkpoint import _tensor

    items = [
        ("model.layers.0.self_attn.q_proj.weight", (hidden, hidden)),
        ("model.layers.0.self_attn.k_proj.weight", (kv, hidden)),
        ("model.layers.0.self_attn.v_proj.weight", (kv, hidden)),
        ("model.layers.0.self_attn.o_proj.weight", (hidden, hidden)),
        ("model.layers.0.mlp.gate_proj.weight", (inter, hidden)),
        ("model.layers.0.mlp.up_proj.weight", (inter, hidden)),
        ("model.layers.0.mlp.down_proj.weight", (hidden, inter)),
    ]
    d.mkdir(parents=True, exist_ok=True)
    header, off = {}, 0
    for name, shape in items:
        n = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = d / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for i, (_, shape) in enumerate(items):
            t = _tensor(shape, 7919 + i, device).cpu().contiguous()
            f.write(t.view(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return {"path": path, "bytes": off, "shapes": [s for _, s in items]}


def _run(model, device, **kw):
    from analyses import SpectralAnalysis

    return SpectralAnalysis(model=model, device=device, cache=False, show_progress=False, **kw).run()


def _ww_alpha_diff(res, ww_df) -> tuple[float, int]:
    t = res.table[res.table["status"] == "ok"]
    ours = dict(zip(t["name"].str.removesuffix(".weight"), t["alpha"]))
    n_ev = dict(zip(t["name"].str.removesuffix(".weight"), t["num_evals"]))
    diffs = [
        abs(ours[n] - a)
        for n, a in zip(ww_df["longname"], ww_df["alpha"])
        if n in ours and n_ev[n] >= WW_SMALL_N and np.isfinite(a) and np.isfinite(ours[n])
    ]
    return (max(diffs) if diffs else float("nan")), len(diffs)


def bench_eigh(device: str, shapes: list[tuple[int, int]], copies: int = 8) -> None:
    """One Gram eigensolve per shape on one stream, then ``copies`` at once on their own threads."""
    from analyses.core.device import thread_stream
    from analyses.spectra import kernels as K

    for shape in shapes:
        w = torch.randn(shape, device=device)
        t1, _ = U.timed(lambda w=w: K.batched_eigenvalues(w[None]).cpu(), device)
        ws = [torch.randn(shape, device=device) for _ in range(copies)]
        U.sync(device)

        def worker(m):
            with thread_stream(device):
                K.batched_eigenvalues(m[None]).cpu()

        t0 = time.perf_counter()
        ts = [threading.Thread(target=worker, args=(m,)) for m in ws]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        U.sync(device)
        tc = time.perf_counter() - t0
        U.figure(
            f"eigensolve {shape[0]}x{shape[1]} one matrix", t1, "s", per_matrix_concurrent=round(tc / copies, 4),
            concurrency_speedup=round(t1 * copies / tc, 2),
        )  # fmt: skip
        del ws


def bench_farms_small_eigh(device: str, shape: tuple[int, int]) -> None:
    from analyses.spectra import farms as FA
    from analyses.spectra import kernels as K

    w = torch.randn(shape, device=device)
    FA.farms_eigenvalues(w)  # warm
    t_host, ev_h = U.timed(lambda: FA.farms_eigenvalues(w).cpu(), device)
    old = K.SMALL_EIGH_ON_HOST
    K.SMALL_EIGH_ON_HOST = False
    try:
        FA.farms_eigenvalues(w)
        t_dev, ev_d = U.timed(lambda: FA.farms_eigenvalues(w).cpu(), device)
    finally:
        K.SMALL_EIGH_ON_HOST = old
    U.figure(
        f"FARMS windows of one {shape[0]}x{shape[1]}, small eigensolves on the host", t_host, "s",
        on_device_s=round(t_dev, 4), max_rel_diff=float(((ev_h - ev_d).abs() / ev_h.abs().clamp_min(1e-12)).max()),
    )  # fmt: skip


def bench_fit(n: int = 4096) -> None:
    from analyses.spectra import kernels as K

    ev = torch.from_numpy(np.sort(np.random.default_rng(0).pareto(2.5, n) + 1))
    t, _ = U.timed(lambda: K.fit_power_law(ev, "ks"))
    ev2 = torch.from_numpy(np.sort(np.random.default_rng(1).pareto(2.5, 10000) + 1))
    t2, _ = U.timed(lambda: K.fit_power_law(ev2, "ks"))
    U.figure(f"power-law KS fit of {n} eigenvalues (host)", t, "s", fit_10000_s=round(t2, 4))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--shards", type=int, default=None, help="files (default one per 2 GB, at least 2)")
    ap.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--no-farms", action="store_true")
    ap.add_argument("--no-ww", action="store_true", help="skip WeightWatcher even when importable")
    ap.add_argument(
        "--ww-hidden", type=int, default=None, help="hidden size of the WW block (default --hidden)"
    )
    ap.add_argument("--est70b", choices=["full", "small", "off"], default=None,
                    help="70B-shaped block: full shapes, scaled down 16x, or off (default: full on CUDA, small else)")  # fmt: skip
    ap.add_argument(
        "--diagnostics", action="store_true", help="eigensolve concurrency, FARMS host/device, fit times"
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoint")
    args = ap.parse_args(argv)

    from analyses.core.device import prepare_device

    dev = str(prepare_device(args.device))
    cuda = dev.startswith("cuda")
    base_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="nnv-gpu-spectra-"))
    ck = base_dir / f"llama-{args.blocks}x{args.hidden}"
    payload: dict = {"benchmark": "gpu_spectra", "device": dev, "blocks": args.blocks, "hidden": args.hidden}
    try:
        # ---------------------------------------------------------------- checkpoint
        if ck.exists():
            shutil.rmtree(ck)
        t_gen, info = U.timed(
            lambda: make_checkpoint(ck, args.blocks, args.hidden, shards=args.shards, device=dev), dev
        )
        gb = info["bytes"] / 1e9
        U.figure(
            "checkpoint generated",
            t_gen,
            "s",
            gb=round(gb, 2),
            matrices=info["matrices"],
            shards=len(info["files"]),
        )
        # a small warm-up of the analysis on this device (libraries, kernels, thread pool)
        _run(str(ck), dev, layers=r"layers\.0\.self_attn\.q_proj")

        # ---------------------------------------------------------------- ESD
        base = U.reset_peak()
        t_esd, res = U.timed(lambda: _run(str(ck), dev), dev)
        rss_esd = (U.peak() - base) / 1e9
        ok_rows = int((res.table["status"] == "ok").sum())
        full = args.blocks == 32 and args.hidden == 4096
        U.figure(f"spectra ESD, {info['matrices']} matrices, {gb:.2f} GB fp16", t_esd, "s",
                 target="<= 15 s at 32 x 4096" if full else "", ok=(t_esd <= 15) if full else None,
                 analysed=ok_rows, per_matrix_s=round(t_esd / max(1, info["matrices"]), 4),
                 reader=res.meta.get("reader"))  # fmt: skip
        U.figure("peak host RSS added by the ESD run", rss_esd, "GB", target="< 3 GB", ok=rss_esd < 3)
        payload["esd_alpha_mean"] = float(res.table["alpha"].mean())

        # ---------------------------------------------------------------- ESD + FARMS
        if not args.no_farms:
            base = U.reset_peak()
            t_farms, resf = U.timed(lambda: _run(str(ck), dev, farms=True), dev)
            rss_farms = (U.peak() - base) / 1e9
            U.figure(f"spectra ESD + FARMS, {info['matrices']} matrices", t_farms, "s",
                     target="<= 40 s at 32 x 4096" if full else "", ok=(t_farms <= 40) if full else None,
                     per_matrix_s=round(t_farms / max(1, info["matrices"]), 4))  # fmt: skip
            U.figure(
                "peak host RSS added by the ESD + FARMS run",
                rss_farms,
                "GB",
                target="< 3 GB",
                ok=rss_farms < 3,
            )
            d = np.abs(resf.table["alpha_plain"].to_numpy(float) - res.table["alpha"].to_numpy(float))
            payload["farms_vs_esd_alpha_plain_max_diff"] = float(np.nanmax(d))

        # ---------------------------------------------------------------- WeightWatcher on one block
        if not args.no_ww:
            bench_ww(dev, args.ww_hidden or args.hidden)

        # ---------------------------------------------------------------- 70B-shaped estimate
        mode = args.est70b or ("full" if cuda else "small")
        if mode != "off":
            est_70b(dev, base_dir, mode, farms=not args.no_farms)

        # ---------------------------------------------------------------- diagnostics
        if args.diagnostics:
            shapes = sorted({s for s in info["shapes"]})
            bench_eigh(dev, shapes, copies=8 if cuda else 2)
            if not args.no_farms:
                bench_farms_small_eigh(dev, max(shapes, key=math.prod))
            bench_fit()
    finally:
        if not args.keep:
            shutil.rmtree(ck, ignore_errors=True)
            if not args.dir:
                shutil.rmtree(base_dir, ignore_errors=True)
    U.write_json(args.json, payload)
    return 0


def bench_ww(dev: str, hidden: int) -> None:
    try:
        with _quiet():
            import weightwatcher as ww
    except Exception as e:  # not installed: say so, do not fail
        U.figure("WeightWatcher 0.7.7 one block", None, "s", note=f"not importable ({type(e).__name__})")
        return
    from torch import nn

    shapes = [(n, s) for n, s in layout(1, hidden) if len(s) == 2]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            for name, (rows, cols) in shapes:
                short = name.removeprefix("model.layers.0.").removesuffix(".weight").replace(".", "_")
                self.add_module(short, nn.Linear(cols, rows, bias=False))

        def forward(self, x):  # pragma: no cover - never run
            return x

    from llama_checkpoint import _tensor

    block = Block()
    with torch.no_grad():
        for i, (name, shape) in enumerate(shapes):
            short = name.removeprefix("model.layers.0.").removesuffix(".weight").replace(".", "_")
            getattr(block, short).weight.copy_(_tensor(shape, 555 + i, dev).float().cpu())
    t_ours, ours = U.timed(lambda: _run(block, dev), dev)
    t_ours2, ours = U.timed(lambda: _run(block, dev), dev)
    t_ours = min(t_ours, t_ours2)
    with _quiet():
        t_ww, df = U.timed(lambda: ww.WeightWatcher(model=block).analyze(), dev)
    diff, n = _ww_alpha_diff(ours, df)
    ratio = t_ww / t_ours if t_ours > 0 else float("nan")
    U.figure(f"WeightWatcher 0.7.7 / ours, one {hidden}-wide block (7 matrices)", ratio, "x",
             target=">= 20x at equal alphas", ok=ratio >= 20 and diff <= 1e-3 if hidden >= 4096 else None,
             ours_s=round(t_ours, 4), ww_s=round(t_ww, 3), max_alpha_diff=diff, matched=n)  # fmt: skip


class _quiet:
    def __enter__(self):
        import contextlib
        import io
        import logging
        import warnings

        self._stack = contextlib.ExitStack()
        buf = io.StringIO()
        self._stack.enter_context(contextlib.redirect_stdout(buf))
        self._stack.enter_context(contextlib.redirect_stderr(buf))
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        self._prev = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        import logging

        logging.disable(self._prev)
        self._stack.close()
        return False


def est_70b(dev: str, base_dir: Path, mode: str, farms: bool) -> None:
    """One LLaMA-2-70B block measured; 80 of them estimated (compute) next to reading 80 blocks."""
    from llama_checkpoint import drop_page_cache

    hidden, inter, kv, blocks = (8192, 28672, 1024, 80) if mode == "full" else (512, 1792, 64, 80)
    d = base_dir / f"llama70b-block-{mode}"
    t_gen, blk = U.timed(lambda: _write_70b_block(d, hidden, inter, kv, dev), dev)
    drop_page_cache([blk["path"]])
    t0 = time.perf_counter()
    with open(blk["path"], "rb") as f:
        while f.read(1 << 26):
            pass
    t_cold = time.perf_counter() - t0
    read_rate = blk["bytes"] / t_cold  # bytes/s, cold when the drop worked
    t_esd, res = U.timed(lambda: _run(str(blk["path"]), dev), dev)
    t_f = float("nan")
    if farms:
        t_f, _ = U.timed(lambda: _run(str(blk["path"]), dev, farms=True), dev)
    total_bytes = blk["bytes"] * blocks
    read_s = total_bytes / read_rate
    est = t_esd * blocks
    U.figure(f"70B-shaped estimate ({mode} shapes): ESD of {blocks} blocks", est, "s",
             per_block_s=round(t_esd, 3), block_gb=round(blk["bytes"] / 1e9, 2),
             est_with_farms_s=round(t_f * blocks, 1) if farms else None,
             read_all_cold_s=round(read_s, 1), cold_read_gb_s=round(read_rate / 1e9, 2),
             bound="compute" if est >= read_s else "disk", generated_s=round(t_gen, 1),
             analysed=int((res.table["status"] == "ok").sum()))  # fmt: skip
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
