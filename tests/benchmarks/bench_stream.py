"""Streaming benchmark: peak memory of SpectralAnalysis on a ~3 GB float32 safetensors checkpoint.

A synthetic checkpoint of many 4096 x 256 float32 matrices (4 MiB each, so the compute stays
cheap and the run measures streaming, not eigensolves) is written to a temporary directory
tensor by tensor, following the documented safetensors layout (8-byte little-endian header
length, JSON header with dtype / shape / data_offsets, raw little-endian bytes), never holding
more than one tensor in memory. A fresh subprocess then warms up (imports and one tiny demo
analysis), records its baseline memory just before ``run()``, and runs the analysis while a
background thread samples ``/proc/self/status`` every 10 ms.

Reported: the peak above the baseline of VmRSS (anonymous + file-backed + shared pages) and,
separately, of RssAnon (the process's own heap: page-cache effects excluded); VmHWM (the
kernel's peak RSS, reset just before ``run()`` where ``/proc/self/clear_refs`` allows) and
``ru_maxrss``. Target: peak VmRSS < 1.5 GB above the baseline. The file is deleted at the end.

Run: ``python tests/benchmarks/bench_stream.py [--quick] [--gb 3] [--dir /tmp]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common as C
import torch

torch.set_num_threads(C.THREADS)

TARGET_BYTES = 1.5e9  # peak VmRSS above baseline
ROWS, COLS = 4096, 256  # 4 MiB of float32 per matrix
MB = 1e6


# --------------------------------------------------------------------------- writing the checkpoint
def write_checkpoint(path: Path, n: int, seed: int = 0) -> int:
    """Write ``n`` random ROWS x COLS float32 matrices as a .safetensors file; returns its size."""
    nbytes = ROWS * COLS * 4
    header = {
        f"blocks.{i}.proj.weight": {
            "dtype": "F32",
            "shape": [ROWS, COLS],
            "data_offsets": [i * nbytes, (i + 1) * nbytes],
        }
        for i in range(n)
    }
    header["__metadata__"] = {"format": "pt", "note": "nnvitals streaming benchmark"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad with spaces so the data starts 8-byte aligned
    g = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _ in range(n):
            t = torch.randn(ROWS, COLS, generator=g) / COLS**0.5
            f.write(t.numpy().astype("<f4", copy=False).tobytes())
    return path.stat().st_size


# --------------------------------------------------------------------------- the measuring child
def _status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem, VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


class Sampler(threading.Thread):
    """Samples /proc/self/status every ``interval`` seconds and keeps the peak of each field."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak: dict[str, int] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for k, v in _status().items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        for k, v in _status().items():  # a last sample after the run
            self.peak[k] = max(self.peak.get(k, 0), v)


def child(path: str) -> None:
    from analyses import SpectralAnalysis

    # warm-up: imports and lazy library state (SciPy LAPACK, thread pools, pandas) are not streaming
    SpectralAnalysis(model="mlp", cache=False, show_progress=False).run()
    analysis = SpectralAnalysis(model=path, xmin_rule="ks", cache=False, show_progress=False)
    hwm_reset = True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (the peak-RSS counter) to the current RSS
    except OSError:
        hwm_reset = False
    base = _status()
    base_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = Sampler(0.01)
    sampler.start()
    t0 = time.perf_counter()
    res = analysis.run()
    seconds = time.perf_counter() - t0
    sampler.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    table = res.table
    print(
        json.dumps(
            {
                "seconds": seconds,
                "layers_ok": int((table["status"] == "ok").sum()),
                "layers": len(table),
                "baseline": base,
                "peak": sampler.peak,
                "samples": sampler.samples,
                "hwm_reset": hwm_reset,
                "ru_maxrss_before": base_maxrss,
                "ru_maxrss": maxrss,
            }
        ),
        flush=True,
    )


# --------------------------------------------------------------------------- the parent
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 300 MB checkpoint instead of 3 GB")
    ap.add_argument("--gb", type=float, default=None, help="checkpoint size in GB (default 3, quick 0.3)")
    ap.add_argument("--dir", default=None, help="where to write the temporary checkpoint (default: $TMPDIR)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    gb = args.gb if args.gb is not None else (0.3 if args.quick else 3.0)
    n = max(1, round(gb * 1e9 / (ROWS * COLS * 4)))
    tmp = Path(tempfile.mkdtemp(prefix="nnvitals-bench-stream-", dir=args.dir))
    try:
        path = tmp / "synthetic.safetensors"
        t_write, _, size = C.timed(lambda: write_checkpoint(path, n))
        print(f"wrote {path} ({size / 1e9:.2f} GB, {n} matrices of {ROWS}x{COLS} float32) in {t_write:.1f} s")
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(path)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            raise SystemExit(f"bench_stream: the measuring subprocess failed (exit {proc.returncode})")
        m = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base, peak = m["baseline"], m["peak"]
    d_rss = peak["VmRSS"] - base["VmRSS"]
    d_anon = peak["RssAnon"] - base["RssAnon"]
    d_file = peak.get("RssFile", 0) - base.get("RssFile", 0)
    d_hwm = peak["VmHWM"] - base["VmRSS"]
    d_maxrss = m["ru_maxrss"] - base["VmRSS"]
    met = d_rss < TARGET_BYTES
    print(
        f"stream {size / 1e9:.2f} GB safetensors: peak VmRSS +{d_rss / MB:.0f} MB above baseline "
        f"{base['VmRSS'] / MB:.0f} MB (target < {TARGET_BYTES / 1e9:.1f} GB: {'met' if met else 'MISSED'}); "
        f"RssAnon +{d_anon / MB:.0f} MB, RssFile +{d_file / MB:.0f} MB; "
        f"{m['layers_ok']} matrices in {m['seconds']:.1f} s ({size / 1e9 / m['seconds']:.2f} GB/s)",
        flush=True,
    )
    hwm = "VmHWM reset before run()" if m["hwm_reset"] else "VmHWM NOT reset (lifetime peak)"
    print(
        f"  kernel peaks: VmHWM +{d_hwm / MB:.0f} MB ({hwm}), ru_maxrss {m['ru_maxrss'] / MB:.0f} MB "
        f"= +{d_maxrss / MB:.0f} MB over the baseline RSS (ru_maxrss before run(): "
        f"{m['ru_maxrss_before'] / MB:.0f} MB); {m['samples']} samples at 10 ms",
        flush=True,
    )
    C.emit_json(
        {
            "benchmark": "stream",
            "mode": "quick" if args.quick else "full",
            "results": [
                {
                    "name": f"stream {size / 1e9:.2f} GB",
                    "file_bytes": size,
                    "matrices": n,
                    "seconds": m["seconds"],
                    "peak_rss_above_baseline": d_rss,
                    "peak_anon_above_baseline": d_anon,
                    "peak_file_above_baseline": d_file,
                    "vmhwm_above_baseline": d_hwm,
                    "ru_maxrss": m["ru_maxrss"],
                    "baseline": base,
                    "peak": peak,
                    "target": f"peak VmRSS above baseline < {TARGET_BYTES:.0f} bytes",
                    "target_met": met,
                }
            ],
            "targets_missed": [] if met else [f"stream {size / 1e9:.2f} GB"],
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
