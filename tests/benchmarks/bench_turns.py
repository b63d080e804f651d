"""What taking turns costs: two runs that call a model, from two "sessions" (threads) at once.

Of the runs that call or trace a model one computes at a time (``analyses.core.threads.MODEL_TURN``:
a model called while another thread traced broke the trace). This times, in one process:

- ``alone``: each run by itself, one after the other (the floor; every run is on a new thread,
  as in the other two: a thread's first kernels cost it a few tenths of a second);
- ``turns``: both started together, as two app sessions would (what nnvitals does);
- ``overlap``: both together with the turn switched off in this process (what nnvitals did
  before, and may break: measured only to price the turn).

and prints the wall time of the pair and each run's latency, with the ratios turns / overlap.
Usage: ``python tests/benchmarks/bench_turns.py [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from _common import THREADS, emit_json, fmt_s  # noqa: E402

from analyses import IBPTightness, OrbitAnalysis  # noqa: E402
from analyses.core import threads  # noqa: E402


def _runs():
    return {
        "orbits": lambda: OrbitAnalysis(
            model="rot-cnn", steps=36, max_samples=400, cache=False, show_progress=False
        ),
        "ibp": lambda: IBPTightness(
            model="resnet20-ln-a", max_samples=1000, cache=False, show_progress=False
        ),
    }


def _together(makers: dict) -> dict:
    objs = {k: make() for k, make in makers.items()}
    for o in objs.values():  # data and models loaded before the clock starts, as in a session
        o.subject()
    took: dict[str, float] = {}
    t0 = time.perf_counter()

    def one(name: str) -> None:
        objs[name].run()
        took[name] = time.perf_counter() - t0

    ts = [threading.Thread(target=one, args=(k,)) for k in objs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return {"pair_s": time.perf_counter() - t0, **{f"{k}_s": v for k, v in took.items()}}


@contextlib.contextmanager
def _no_turn():
    hold = threads.ModelTurn.hold

    @contextlib.contextmanager
    def free(self, cancel=None, on_wait=None):
        yield None

    threads.ModelTurn.hold = free
    try:
        yield
    finally:
        threads.ModelTurn.hold = hold


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    makers = _runs()
    for make in makers.values():  # warm: imports, data, first traces
        make().run()
    rows: dict[str, list[dict]] = {"alone": [], "turns": [], "overlap": []}
    for _ in range(3 if args.quick else 7):  # interleaved, medians kept
        alone = {}
        for k, make in makers.items():  # one after the other, each on a new thread as the others
            alone[f"{k}_s"] = _together({k: make})["pair_s"]
        alone["pair_s"] = sum(alone.values())
        rows["alone"].append(alone)
        rows["turns"].append(_together(makers))
        with _no_turn():
            rows["overlap"].append(_together(makers))
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in rows.items()}
    for mode, m in med.items():
        print(f"{mode:8s} pair {fmt_s(m['pair_s'])}, orbits done at {fmt_s(m['orbits_s'])}, "
              f"ibp done at {fmt_s(m['ibp_s'])}")  # fmt: skip
    ratios = {f"turns/overlap {k}": med["turns"][k] / med["overlap"][k] for k in med["turns"]}
    ratios["turns/alone pair_s"] = med["turns"]["pair_s"] / med["alone"]["pair_s"]
    print(", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    emit_json(
        {
            "benchmark": "turns",
            "mode": "quick" if args.quick else "full",
            "results": {f"{mode}_{k}": v for mode, m in med.items() for k, v in m.items()},
            "ratios": ratios,
            "targets_missed": [],
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
