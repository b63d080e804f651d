"""Run fuzz cases in persistent worker subprocesses: timeout, peak RSS and marker checks per case.

The parent keeps a small pool of workers (``python -m tests.fuzz.harness --worker``), each a
fresh interpreter that imports nnvitals, builds nothing and warms every target up once. For
each case the parent sends ``(family, index)``; the worker rebuilds the case from the seed,
writes its files into the case directory, resets its peak-RSS counter (``5`` into
``/proc/self/clear_refs``), runs the target and reports the outcome with ``VmHWM``. The parent
enforces the wall-clock limit (kills the worker's process group and starts a new worker), kills
a worker whose RSS passes a hard cap, and checks the case's marker directory.

A case PASSES when its target returns or raises ``NNVitalsError`` with a one-line message
that carries no raw file bytes (no control characters, not over 1,000 characters, no canary
string from the file); it FAILS on any other exception (uncaught), on a run over the time
limit (10 s), a hang (killed), peak RSS over 1 GB, a crash of the worker, or a marker file.

Reproduce one case in-process with its traceback::

    .venv/bin/python -m tests.fuzz.harness --repro pt2-0012-expr-str-os-system [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TIME_LIMIT = 10.0  # s: a case that runs longer fails
RSS_LIMIT = 1 << 30  # bytes: a case whose peak RSS is higher fails
RSS_KILL = 2 << 30  # bytes: a worker whose RSS passes this is killed on the spot
MAX_MESSAGE = 1000  # characters
STATUSES = (
    "pass",
    "uncaught",
    "bad_message",
    "over_time",
    "hang",
    "memory",
    "crash",
    "marker",
    "writer_error",
    "skipped",
)
FAILING = {"uncaught", "bad_message", "over_time", "hang", "memory", "crash", "marker", "writer_error"}


# ============================================================================ /proc helpers
def _status_kb(pid: int | str, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else 0


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_reset_works() -> bool:
    """Allocate and free 64 MB, reset, and check that VmHWM came back down."""
    blob = bytearray(64 << 20)
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    del blob
    gc.collect()
    before = _status_kb("self", "VmHWM")
    if not reset_peak():
        return False
    after = _status_kb("self", "VmHWM")
    return after < before - 32 * 1024 or after <= _status_kb("self", "VmRSS") + 1024


# ============================================================================ worker
def _frames(tb) -> list[tuple[str, int, str]]:
    return [(f.filename, f.lineno or 0, f.name) for f in traceback.extract_tb(tb)]


def _short(path: str) -> str:
    p = str(path)
    for root, tag in ((str(REPO) + "/", ""), ("site-packages/", "")):
        if root in p:
            return tag + p.split(root, 1)[1]
    return p


def _origin(frames: list[tuple[str, int, str]]) -> str:
    """The innermost frame in nnvitals' own code (analyses/ or dashboard/)."""
    for fn, line, name in reversed(frames):
        s = _short(fn)
        if s.startswith(("analyses/", "dashboard/")):
            return f"{s}:{line} in {name}"
    return ""


def message_problem(msg: str, canary: str) -> str:
    """Why an NNVitalsError message breaks the rules ('' when it does not)."""
    if "\n" in msg or "\r" in msg:
        return "message spans several lines"
    if len(msg) > MAX_MESSAGE:
        return f"message is {len(msg)} characters long"
    if canary in msg:
        return "message quotes raw file content"
    bad = [c for c in msg if not c.isprintable()]
    if bad:
        return f"message holds control characters {sorted({repr(c) for c in bad})[:3]}"
    return ""


def _run_one(req: dict, seed: int, base: Path, send: Callable[[dict], None]) -> dict:
    from analyses.core.errors import NNVitalsError

    from . import generators as G

    case = G.make_case(req["family"], req["index"])
    case_dir, marker_dir = Path(req["dir"]), Path(req["marker_dir"])
    marker = marker_dir / "MARKER"
    out: dict[str, Any] = {"ev": "done"}
    if case.needs == "gcc" and not G.have_so(base):
        out.update(outcome="skipped", notes=["no C compiler: shared-object payload not built"])
        return out
    t0 = time.perf_counter()
    try:
        kw, notes = G.write_case(case, seed, case_dir, base, marker)
    except BaseException as e:  # a bug in the generator, not in nnvitals
        out.update(
            outcome="writer_error",
            exc_type=type(e).__name__,
            exc_line=str(e)[:300],
            traceback=traceback.format_exc()[-4000:],
        )
        return out
    out["write_s"] = round(time.perf_counter() - t0, 3)
    out["notes"] = notes
    os.environ["NNV_FUZZ_MARKER"] = str(marker_dir / "MARKER-so")
    cwd = os.getcwd()
    os.chdir(case_dir)
    gc.collect()
    reset_peak()
    rss0 = _status_kb("self", "VmRSS")
    send({"ev": "start"})
    t0 = time.perf_counter()
    try:
        G.TARGETS[case.target](kw, base)
        out["outcome"] = "returned"
    except NNVitalsError as e:
        msg = str(e)
        frames = _frames(e.__traceback__)
        out["origin"] = _origin(frames)
        out.update(
            outcome="nnv_error",
            exc_type=type(e).__name__,
            exc_line=msg[:2000],
            msg_problem=message_problem(msg, G.CANARY),
        )
    except BaseException as e:  # noqa: BLE001 - everything else is a finding
        frames = _frames(e.__traceback__)
        inner = frames[-1] if frames else ("?", 0, "?")
        first = (str(e).splitlines() or [""])[0]
        out.update(
            outcome="uncaught",
            exc_type=f"{type(e).__module__}.{type(e).__qualname__}".removeprefix("builtins."),
            exc_line=repr(first[:300])[1:-1],
            where=f"{_short(inner[0])}:{inner[1]} in {inner[2]}",
            origin=_origin(frames),
            traceback="".join(traceback.format_exception(e))[-6000:],
        )
    out["elapsed"] = round(time.perf_counter() - t0, 4)
    out["peak_kb"] = _status_kb("self", "VmHWM")
    out["rss0_kb"] = rss0
    os.chdir(cwd)
    os.environ.pop("NNV_FUZZ_MARKER", None)
    del kw
    gc.collect()
    out["rss_after_kb"] = _status_kb("self", "VmRSS")
    return out


def worker_main(seed: int, base: Path, warm: bool = True) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the library prints goes to the worker's log, not the protocol pipe
    lock = threading.Lock()

    def send(obj: dict) -> None:
        with lock:
            proto.write(json.dumps(obj) + "\n")
            proto.flush()

    import faulthandler
    import warnings

    faulthandler.register(signal.SIGUSR1)  # the parent asks for a stack dump before killing a hung case
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    from . import generators as G

    reset_ok = peak_reset_works()
    warm_error = ""
    if warm:
        try:
            G.warm_up(base)
        except Exception as e:  # noqa: BLE001 - reported, the cases will show the details
            warm_error = f"{type(e).__name__}: {e}"[:300]
    gc.collect()
    gc.freeze()  # what warm-up left is permanent: later full collections only scan a case's objects
    reset_peak()
    send(
        {
            "ev": "hello",
            "pid": os.getpid(),
            "reset_ok": reset_ok,
            "baseline_kb": _status_kb("self", "VmRSS"),
            "warm_error": warm_error,
        }
    )
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "quit":
            break
        send(_run_one(req, seed, base, send))


# ============================================================================ parent
@dataclass
class CaseResult:
    case_id: str
    family: str
    kind: str
    target: str
    desc: str
    status: str = "pass"
    problems: list[str] = field(default_factory=list)
    outcome: str = ""
    exc_type: str = ""
    exc_line: str = ""
    where: str = ""
    origin: str = ""
    traceback: str = ""
    elapsed: float = 0.0
    write_s: float = 0.0
    peak_kb: int = 0
    rss0_kb: int = 0
    baseline_kb: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    @property
    def above_baseline_mb(self) -> float:
        return max(0, self.peak_kb - self.baseline_kb) / 1024


class _Worker:
    def __init__(self, wid: int, seed: int, base: Path, run_dir: Path, q: queue.Queue, warm: bool):
        self.wid = wid
        self.q = q
        self.log_path = run_dir / f"worker-{wid}-{time.monotonic_ns()}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env.update(
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONFAULTHANDLER="1",
            TQDM_DISABLE="1",
            NNVITALS_CACHE=str(run_dir / "cache"),
        )
        cwd = run_dir / "cwd"
        cwd.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "tests.fuzz.harness",
            "--worker",
            "--seed",
            str(seed),
            "--base",
            str(base),
        ]
        if not warm:
            cmd.append("--no-warm")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.ready = False
        self.baseline_kb = 0
        self.reset_ok = True
        self.cases_run = 0
        self.job: dict | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.q.put((self, json.loads(line)))
            except json.JSONDecodeError:
                continue
        self.q.put((self, {"ev": "eof"}))

    def send(self, obj: dict) -> bool:
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except OSError:
            return False

    def stack(self) -> list[tuple[str, int, str]]:
        """The worker's Python stack (innermost first), dumped by faulthandler on SIGUSR1."""
        try:
            size = self.log_path.stat().st_size
            os.kill(self.proc.pid, signal.SIGUSR1)
        except OSError:
            return []
        for _ in range(20):
            time.sleep(0.05)
            with contextlib.suppress(OSError):
                if self.log_path.stat().st_size > size:
                    break
        time.sleep(0.1)
        with open(self.log_path, "rb") as f:
            f.seek(size)
            text = f.read().decode("utf-8", "replace")
        return [(m[1], int(m[2]), m[3]) for m in re.finditer(r'File "([^"]+)", line (\d+) in (\S+)', text)]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)

    def quit(self) -> None:
        self.send({"op": "quit"})
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


def _copy_case(src: Path, dst: Path, limit: int = 200 << 20) -> None:
    """Copy a case directory for reproduction, keeping symlinks and describing FIFOs/sockets."""
    dst.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        return
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        q = dst / rel
        try:
            st = p.lstat()
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            q.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.symlink(os.readlink(p), q)
        elif stat.S_ISDIR(st.st_mode):
            q.mkdir(parents=True, exist_ok=True)
        elif stat.S_ISREG(st.st_mode):
            q.parent.mkdir(parents=True, exist_ok=True)
            if st.st_size <= limit:
                shutil.copyfile(p, q)
            else:
                q.with_name(q.name + ".TOO-BIG.txt").write_text(f"{st.st_size} bytes, not kept\n")
        else:
            kind = (
                "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "special"
            )
            q.parent.mkdir(parents=True, exist_ok=True)
            q.with_name(q.name + f".{kind}.txt").write_text(f"{rel} is a {kind} (recreate it to reproduce)\n")


def run_cases(
    cases: list,
    *,
    seed: int = 0,
    workers: int = 2,
    base: Path | None = None,
    time_limit: float = TIME_LIMIT,
    timeout: float | None = None,
    rss_limit: int = RSS_LIMIT,
    rss_kill: int = RSS_KILL,
    save_failures: Path | None = None,
    progress: Callable[[int, int, CaseResult], None] | None = None,
    recycle: int = 400,
    startup_timeout: float = 300.0,
    write_timeout: float = 180.0,
    warm: bool = True,
    fresh_process: bool = False,
) -> list[CaseResult]:
    """Run ``cases`` (from :mod:`tests.fuzz.generators`) in ``workers`` subprocesses; one result each.

    ``warm=False`` skips the workers' warm-up run of every target (for cases that never import
    the analyses); otherwise the first case of a fresh worker would pay for lazy imports.
    ``fresh_process=True`` runs every case in a new worker (what the harness falls back to when
    the kernel cannot reset VmHWM); each worker's baseline is then its RSS after imports.
    """
    from . import generators as G

    timeout = time_limit + 5.0 if timeout is None else timeout
    workers = max(1, min(int(workers), 2))
    run_dir = Path(tempfile.mkdtemp(prefix="nnv-fuzz-"))
    own_base = base is None
    base = Path(base) if base is not None else run_dir / "base"
    if not (base / "READY").exists():
        G.build_base(base)
    results: dict[int, CaseResult] = {}
    pending = list(range(len(cases)))
    pending.reverse()
    q: queue.Queue = queue.Queue()
    pool: list[_Worker] = []
    per_case_process = fresh_process
    done = 0
    fatal: list[str] = []

    def start(wid: int) -> _Worker:
        return _Worker(wid, seed, base, run_dir, q, warm=warm and not per_case_process)

    def finish(w: _Worker, res: CaseResult) -> None:
        nonlocal done
        job = w.job
        w.job = None
        marker_dir = job["marker_dir"]
        markers = sorted(p.name for p in marker_dir.iterdir()) if marker_dir.exists() else []
        fallback = base / "markers" / "so-fallback"
        if fallback.exists():
            markers.append("so-fallback")
            fallback.unlink()
        if markers:
            res.problems.insert(0, f"marker file appeared: {', '.join(markers)} (payload code ran)")
            res.status = "marker"
        if save_failures is not None and res.failed:
            dst = Path(save_failures) / res.case_id
            _copy_case(job["dir"], dst / "files")
            (dst / "case.json").write_text(json.dumps(asdict(res) | {"seed": seed}, indent=2))
            (dst / "REPRO.txt").write_text(
                f".venv/bin/python -m tests.fuzz.harness --repro {res.case_id} --seed {seed}\n"
            )
        shutil.rmtree(job["dir"], ignore_errors=True)
        shutil.rmtree(marker_dir, ignore_errors=True)
        results[job["i"]] = res
        done += 1
        if progress:
            progress(done, len(cases), res)

    def new_result(i: int) -> CaseResult:
        c = cases[i]
        return CaseResult(c.case_id, c.family, c.kind, c.target, c.desc)

    def classify(res: CaseResult, msg: dict, w: _Worker) -> None:
        res.outcome = msg.get("outcome", "")
        for k in ("exc_type", "exc_line", "where", "origin", "traceback"):
            setattr(res, k, msg.get(k, "") or "")
        res.elapsed = msg.get("elapsed", 0.0)
        res.write_s = msg.get("write_s", 0.0)
        res.peak_kb = msg.get("peak_kb", 0)
        res.rss0_kb = msg.get("rss0_kb", 0)
        res.baseline_kb = w.baseline_kb
        res.notes = msg.get("notes", []) or []
        if res.outcome == "skipped":
            res.status = "skipped"
            return
        if res.outcome == "writer_error":
            res.status = "writer_error"
            res.problems.append(f"generator failed: {res.exc_type}: {res.exc_line}")
            return
        if res.outcome == "uncaught":
            res.problems.append(f"uncaught {res.exc_type}: {res.exc_line}")
        if res.peak_kb * 1024 > rss_limit:
            res.problems.append(f"peak RSS {res.peak_kb / 1024:.0f} MB over {rss_limit / 2**20:.0f} MB")
        if res.elapsed > time_limit:
            res.problems.append(f"took {res.elapsed:.1f} s (limit {time_limit:g} s)")
        if res.outcome == "nnv_error" and msg.get("msg_problem"):
            res.problems.append(f"bad NNVitalsError message: {msg['msg_problem']}")
        if res.outcome == "uncaught":
            res.status = "uncaught"
        elif res.peak_kb * 1024 > rss_limit:
            res.status = "memory"
        elif res.elapsed > time_limit:
            res.status = "over_time"
        elif res.outcome == "nnv_error" and msg.get("msg_problem"):
            res.status = "bad_message"

    def kill_result(w: _Worker, status: str, why: str) -> None:
        job = w.job
        res = new_result(job["i"])
        res.status = status
        res.problems.append(why)
        if status in ("hang", "memory") and w.proc.poll() is None:
            stack = w.stack()  # innermost first
            if stack:
                res.where = f"{_short(stack[0][0])}:{stack[0][1]} in {stack[0][2]}"
                res.origin = _origin(list(reversed(stack)))
                res.traceback = "\n".join(f"{_short(f)}:{n} in {fn}" for f, n, fn in stack[:40])
        res.peak_kb = max(job.get("peak_seen", 0), _status_kb(w.proc.pid, "VmHWM"))
        res.baseline_kb = w.baseline_kb
        res.elapsed = round(time.monotonic() - job["t_start"], 2) if job.get("t_start") else 0.0
        w.kill()
        finish(w, res)

    try:
        pool = [start(i) for i in range(workers)]
        t_boot = time.monotonic()
        last_poll = 0.0
        while len(results) < len(cases):
            # hand out work
            for w in pool:
                if w.ready and w.job is None and pending:
                    i = pending.pop()
                    c = cases[i]
                    cdir = run_dir / "cases" / f"{i:05d}"
                    mdir = run_dir / "markers" / f"{i:05d}"
                    cdir.mkdir(parents=True, exist_ok=True)
                    mdir.mkdir(parents=True, exist_ok=True)
                    w.job = {
                        "i": i,
                        "dir": cdir,
                        "marker_dir": mdir,
                        "phase": "write",
                        "t_sent": time.monotonic(),
                    }
                    if not w.send(
                        {
                            "op": "case",
                            "family": c.family,
                            "index": c.index,
                            "dir": str(cdir),
                            "marker_dir": str(mdir),
                        }
                    ):
                        pending.append(i)
                        w.job = None
            try:
                w, msg = q.get(timeout=0.05)
            except queue.Empty:
                w, msg = None, None
            now = time.monotonic()
            if msg is not None and w in pool:
                ev = msg.get("ev")
                if ev == "hello":
                    w.ready, w.baseline_kb, w.reset_ok = True, msg["baseline_kb"], msg["reset_ok"]
                    if msg.get("warm_error"):
                        fatal.append(f"worker warm-up failed: {msg['warm_error']}")
                    if not w.reset_ok and not per_case_process:
                        per_case_process = True  # VmHWM cannot be reset: one fresh process per case
                elif ev == "start" and w.job is not None:
                    w.job.update(phase="run", t_start=now)
                elif ev == "done" and w.job is not None:
                    res = new_result(w.job["i"])
                    classify(res, msg, w)
                    finish(w, res)
                    w.cases_run += 1
                    grown = msg.get("rss_after_kb", 0) - w.baseline_kb > 512 * 1024
                    if per_case_process or grown or w.cases_run >= recycle:
                        w.quit()
                        pool[pool.index(w)] = start(w.wid)
                elif ev == "eof":
                    code = w.proc.wait()
                    if w.job is not None:
                        sig = -code if code < 0 else 0
                        why = (
                            f"worker died (signal {signal.Signals(sig).name})"
                            if sig
                            else f"worker exited {code}"
                        )
                        kill_result(w, "crash", why)
                    elif not w.ready:
                        fatal.append(f"worker {w.wid} exited during start-up (code {code}); see {run_dir}")
                    pool[pool.index(w)] = start(w.wid)
            if fatal and not any(x.ready for x in pool) and now - t_boot > 5:
                raise RuntimeError("; ".join(fatal))
            if not any(x.ready for x in pool) and now - t_boot > startup_timeout:
                raise RuntimeError(
                    f"fuzz workers did not start within {startup_timeout:.0f} s; logs in {run_dir}"
                )
            # deadlines and the RSS guard
            poll = now - last_poll > 0.1
            if poll:
                last_poll = now
            for w in list(pool):
                job = w.job
                if job is None:
                    continue
                if job["phase"] == "run":
                    if poll:
                        rss = _status_kb(w.proc.pid, "VmRSS")
                        job["peak_seen"] = max(job.get("peak_seen", 0), _status_kb(w.proc.pid, "VmHWM"))
                        if rss * 1024 > rss_kill:
                            kill_result(
                                w,
                                "memory",
                                f"killed: RSS {rss / 1024:.0f} MB passed the {rss_kill / 2**20:.0f} MB cap",
                            )
                            pool[pool.index(w)] = start(w.wid)
                            continue
                    if now - job["t_start"] > timeout:
                        kill_result(w, "hang", f"killed after {timeout:g} s (no result)")
                        pool[pool.index(w)] = start(w.wid)
                elif now - job["t_sent"] > write_timeout and w.ready:
                    kill_result(w, "writer_error", f"writing the case took over {write_timeout:g} s")
                    pool[pool.index(w)] = start(w.wid)
    finally:
        for w in pool:
            if w.proc.poll() is None:
                w.quit()
        shutil.rmtree(run_dir / "cases", ignore_errors=True)
        if own_base:
            shutil.rmtree(base, ignore_errors=True)
        if not fatal:
            shutil.rmtree(run_dir, ignore_errors=True)
    return [results[i] for i in range(len(cases))]


# ============================================================================ reports
def summarize(results: list[CaseResult]) -> dict[str, dict[str, Any]]:
    """Per family: cases, passed, counts per failure status, max peak RSS, slowest case."""
    out: dict[str, dict[str, Any]] = {}
    by: dict[str, list[CaseResult]] = defaultdict(list)
    for r in results:
        by[r.family].append(r)
    by["ALL"] = list(results)
    for fam, rs in by.items():
        c = Counter(r.status for r in rs)
        ran = [r for r in rs if r.status != "skipped"]
        peak = max(ran, key=lambda r: r.peak_kb, default=None)
        slow = max(ran, key=lambda r: r.elapsed, default=None)
        out[fam] = {
            "cases": len(rs),
            "passed": c["pass"],
            "skipped": c["skipped"],
            "failed": sum(c[s] for s in FAILING),
            "uncaught": c["uncaught"],
            "over_10s": sum(1 for r in rs if r.elapsed > TIME_LIMIT and r.status != "hang") + c["hang"],
            "hangs": c["hang"],
            "memory": c["memory"],
            "marker": c["marker"],
            "bad_message": c["bad_message"],
            "crash": c["crash"],
            "writer_error": c["writer_error"],
            "max_peak_mb": round(peak.peak_mb, 1) if peak else 0.0,
            "max_above_baseline_mb": round(max((r.above_baseline_mb for r in ran), default=0.0), 1),
            "baseline_mb": round(max((r.baseline_kb for r in ran), default=0) / 1024, 1),
            "slowest": f"{slow.elapsed:.2f}s {slow.case_id}" if slow else "",
        }
    return out


def format_table(results: list[CaseResult]) -> str:
    s = summarize(results)
    head = (
        f"{'family':<12} {'cases':>5} {'pass':>5} {'uncgt':>5} {'>10s':>5} {'hang':>5} "
        f"{'mem':>4} {'mark':>4} "
        f"{'msg':>4} {'crash':>5} {'skip':>4} {'peak MB':>8} {'+base MB':>8}  slowest"
    )
    lines = [head, "-" * len(head)]
    for fam, v in s.items():
        if fam == "ALL":
            lines.append("-" * len(head))
        lines.append(
            f"{fam:<12} {v['cases']:>5} {v['passed']:>5} {v['uncaught']:>5} {v['over_10s']:>5} "
            f"{v['hangs']:>5} "
            f"{v['memory']:>4} {v['marker']:>4} {v['bad_message']:>4} {v['crash']:>5} {v['skipped']:>4} "
            f"{v['max_peak_mb']:>8.0f} {v['max_above_baseline_mb']:>8.0f}  {v['slowest']}"
        )
    return "\n".join(lines)


def group_failures(results: list[CaseResult]) -> list[dict[str, Any]]:
    """Failures grouped by cause: (status, exception type, where in nnvitals it surfaced)."""
    groups: dict[tuple, list[CaseResult]] = defaultdict(list)
    for r in results:
        if not r.failed:
            continue
        loc = r.origin or r.where
        if r.status == "uncaught":
            key = (r.status, r.exc_type, loc)
        elif r.status == "bad_message":
            key = (r.status, r.exc_type, loc or r.family)
        elif r.status in ("hang", "memory", "over_time") and loc:
            key = (r.status, "", loc)
        else:
            key = (r.status, "", r.family)
        groups[key].append(r)
    out = []
    for (status, exc, loc), rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        ex = rs[0]
        out.append(
            {
                "status": status,
                "exc_type": exc,
                "location": loc,
                "count": len(rs),
                "families": dict(Counter(r.family for r in rs)),
                "kinds": sorted({r.kind for r in rs})[:12],
                "example": ex.case_id,
                "example_desc": ex.desc,
                "example_problem": "; ".join(ex.problems)[:400],
                "example_where": ex.where,
            }
        )
    return out


def format_failures(results: list[CaseResult], limit: int = 400) -> str:
    lines = []
    for g in group_failures(results):
        fams = ", ".join(f"{k} {v}" for k, v in g["families"].items())
        lines.append(
            f"[{g['status']}] {g['exc_type']} at {g['location'] or g['example_where']} "
            f"— {g['count']} cases ({fams})"
        )
        lines.append(f"    e.g. {g['example']}: {g['example_desc']}")
        lines.append(f"    {g['example_problem']}")
        lines.append(f"    kinds: {', '.join(g['kinds'])}")
    fails = [r for r in results if r.failed]
    if fails:
        lines.append("")
        lines.append(f"failing cases ({len(fails)}):")
        for r in fails[:limit]:
            where = f" @ {r.origin or r.where}" if r.where else ""
            lines.append(f"  {r.case_id} [{r.target}] {r.status}: {'; '.join(r.problems)[:240]}{where}")
        if len(fails) > limit:
            lines.append(f"  ... and {len(fails) - limit} more")
    return "\n".join(lines)


# ============================================================================ command line
def repro(case_id: str, seed: int, base: Path | None, keep: Path | None) -> int:
    """Write one case and run its target in this process, printing the traceback."""
    from analyses.core.errors import NNVitalsError

    from . import generators as G

    case = G.find_case(case_id)
    tmp = Path(tempfile.mkdtemp(prefix="nnv-fuzz-repro-"))
    base = base or tmp / "base"
    if not (base / "READY").exists():
        print(f"building base files in {base} ...", file=sys.stderr)
        G.build_base(base)
    cdir = keep or tmp / "case"
    cdir.mkdir(parents=True, exist_ok=True)
    mdir = tmp / "markers"
    mdir.mkdir()
    print(f"{case.case_id} [{case.target}]: {case.desc}")
    kw, notes = G.write_case(case, seed, cdir, base, mdir / "MARKER")
    print(
        f"files in {cdir}{'' if keep else ' (removed at the end; --keep DIR keeps them)'}; "
        f"target arguments: {kw!r}"[:2000]
    )
    if notes:
        print("notes:", "; ".join(notes))
    os.environ["NNV_FUZZ_MARKER"] = str(mdir / "MARKER-so")
    t0 = time.perf_counter()
    code = 0
    try:
        G.TARGETS[case.target](kw, base)
        print("returned normally")
    except NNVitalsError as e:
        print(f"NNVitalsError: {e}")
        problem = message_problem(str(e), G.CANARY)
        if problem:
            print(f"BAD MESSAGE: {problem}")
            code = 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    print(f"{time.perf_counter() - t0:.2f} s, peak RSS {_status_kb('self', 'VmHWM') / 1024:.0f} MB")
    if any(mdir.iterdir()):
        print(f"MARKER APPEARED: {sorted(p.name for p in mdir.iterdir())}")
        code = 1
    if keep is None:
        shutil.rmtree(tmp, ignore_errors=True)  # --keep DIR keeps the case's files
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-warm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", type=Path, default=None, help="directory of base files (built when missing)")
    ap.add_argument("--repro", metavar="CASE_ID", help="run one case in this process and print its traceback")
    ap.add_argument("--keep", type=Path, default=None, help="with --repro: write the case's files here")
    ap.add_argument("--list", type=int, metavar="N", help="list the first N cases of a run")
    a = ap.parse_args(argv)
    if a.worker:
        worker_main(a.seed, a.base, warm=not a.no_warm)
        return 0
    if a.repro:
        return repro(a.repro, a.seed, a.base, a.keep)
    if a.list:
        from . import generators as G

        for c in G.build_cases(a.list):
            print(f"{c.case_id:<60} [{c.target}] {c.desc}")
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
