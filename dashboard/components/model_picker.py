"""The sidebar's model picker: demo zoo, uploads, and files under the server's ``--allow-dir``.

Every page analyses the model picked here. Sources, in one select grouped by origin:

- **Demo models** from :mod:`analyses.zoo` (always there; the app opens on one).
- **Uploaded**: ``.safetensors``, ``.pt/.pth/.bin`` state dicts and ``.pt2`` exports dropped
  on the upload area. Chunks are written straight to a folder of the session (never held whole
  in memory) under one folder per server process (:func:`upload_root`), refused past the size
  limit with a message that says so, and bounded against forged clients: at most
  :data:`MAX_PARTIAL_UPLOADS` uploads in progress per session, at most
  :data:`SESSION_UPLOADS` times the size limit on disk per session, a partial upload idle for
  :data:`PARTIAL_IDLE_S` seconds dropped, malformed chunk numbers refused. A complete file is
  checked to be a model off the server's event loop (:func:`check_executor`); a file that fails
  the check is deleted and the reader's message shown (any other failure: "could not read NAME
  as a model", with the traceback in the server log), and the drop area is reset. Uploads are
  deleted when the session closes, the process's folder when the process exits, and folders
  left by a killed server when the next one starts. Another session never sees them.
- **Server files**: model files (and Hugging Face style directories) found under the
  directories the server was started with (``--allow-dir``). A typed path is accepted only when,
  with every symlink resolved, it lies inside one of them (``..``, NUL and control characters
  refused outright); the model is then opened with ``confine=`` those directories, so every file
  it reads (the shards, config and weights of a Hugging Face directory too) must lie inside.
  The listing only looks at directory entries (it never opens a file, so a FIFO cannot block
  it) and offers a Hugging Face directory only when the files it would read are regular files
  inside the allowed directories.

``model`` holds what an analysis takes (a demo name or an absolute path), ``label`` the name to
show, and ``sources`` every choice (label -> model) for pages that pick a second model.

One truth: the sidebar's select always shows :attr:`ModelPicker.model` (set in Python too), and
every page analyses it (Orbits compares it with models chosen on the page, Connectivity takes it as
model A). A page that opens on a demo of its own (Orbits' rotation models, Connectivity's pair)
does so with :meth:`ModelPicker.suggest`, which changes the picker's model only while nobody chose
one (:attr:`ModelPicker.chosen`): the sidebar then shows the page's model, never another one.
:meth:`ModelPicker.name_of` is how a page names a model: as the sidebar's select does.
"""

from __future__ import annotations

import atexit
import html
import logging
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
import unicodedata
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import panel as pn
import param
from panel.io.state import set_curdoc

from analyses.core.errors import NNVitalsError
from analyses.core.subject import load_subject
from analyses.zoo import DEMO_MODELS

from ..style import NOTE
from .jobs import _lower_priority, in_server
from .on_loop import next_tick

log = logging.getLogger("nnvitals.app")

#: files a user may upload or pick (the readers in analyses.core.formats)
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".pt2")
#: bytes per upload chunk sent over the websocket
CHUNK_BYTES = 4 * 1000 * 1000
#: how far and how much the server-file listing walks
LIST_MAX_DEPTH = 4
LIST_MAX_FILES = 500
#: directory entries the listing looks at, at most (a huge tree is listed in part)
LIST_MAX_ENTRIES = 20_000
#: longest path accepted from the path box
MAX_PATH_CHARS = 4096
#: uploads one session may have in progress at once
MAX_PARTIAL_UPLOADS = 3
#: a session's uploads may take this many times the upload limit on disk, all together
SESSION_UPLOADS = 4
#: a partial upload that received nothing for this many seconds is dropped
PARTIAL_IDLE_S = 60.0
#: refused uploads remembered per session (so their late chunks are dropped quietly)
MAX_REFUSED = 32
#: threads that check uploaded files and picked paths (shared by every session)
CHECK_THREADS = 2
#: name of the folder of one server process's uploads: prefix, pid, random part
ROOT_PREFIX = "nnvitals-uploads-"
_ROOT_RE = re.compile(rf"^{ROOT_PREFIX}(\d+)-[A-Za-z0-9_]+$")


def shown(text: Any, limit: int = 120) -> str:
    """``text`` as it may appear in a message: printable characters only, at most ``limit`` long."""
    s = "".join(c if c.isprintable() else "?" for c in str(text))
    return s if len(s) <= limit else s[: limit - 1] + "…"


# --------------------------------------------------------------------------- allowed directories
def check_allow_dirs(dirs: Iterable[str | os.PathLike]) -> tuple[Path, ...]:
    """``--allow-dir`` values as resolved directories; a missing or non-directory path is an error."""
    out: list[Path] = []
    for d in dirs:
        p = Path(d).expanduser()
        if not p.exists():
            raise NNVitalsError(f"--allow-dir {d}: no such directory")
        if not p.is_dir():
            raise NNVitalsError(f"--allow-dir {d}: not a directory")
        r = p.resolve()
        if r not in out:
            out.append(r)
    return tuple(out)


def _check_typed(text: str) -> str:
    """``text`` stripped, or an error for what no path on the server can hold or what is too long."""
    if "\x00" in text:
        raise NNVitalsError(
            "path: holds a NUL character; give the path of a model under an allowed directory"
        )
    text = text.strip()
    if not text:
        raise NNVitalsError("path: empty; give a file under one of the allowed directories")
    if len(text) > MAX_PATH_CHARS:
        raise NNVitalsError(
            f"path: longer than {MAX_PATH_CHARS} characters; give a file under one of the allowed directories"
        )
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise NNVitalsError(
            f"path {shown(text)}: holds control characters; give a file under one of the allowed directories"
        )
    return text


def _inside(real: Path, roots: Sequence[Path]) -> bool:
    return any(real == r or real.is_relative_to(r) for r in roots)


def resolve_allowed(path: str | os.PathLike, allow_dirs: Sequence[Path]) -> Path:
    """The real path of ``path`` when it lies inside one of ``allow_dirs``; else an error.

    ``..`` components, NUL and control characters and paths over :data:`MAX_PATH_CHARS` are
    refused before anything is resolved; symlinks are resolved and the target must still be
    inside an allowed directory (a link pointing out is refused). A relative path is taken
    relative to each allowed directory in turn; ``~`` is not expanded. Only a regular file or a
    directory is accepted (never a FIFO, socket or device). Looks at the path only: a
    directory's contents are checked when it is opened (``load_subject(..., confine=)``).
    """
    text = _check_typed(str(path))
    if not allow_dirs:
        raise NNVitalsError(
            f"{shown(text)}: the server allows no directories (start it with --allow-dir DIR)"
        )
    p = Path(text)
    if ".." in p.parts:
        raise NNVitalsError(
            f"{shown(text)}: '..' is not allowed in a path; give a path inside an allowed directory"
        )
    roots = [Path(d).resolve() for d in allow_dirs]
    candidates = [p] if p.is_absolute() else [r / p for r in roots]
    for cand in candidates:
        try:
            real = cand.resolve(strict=True)
            st = os.stat(real)
        except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a name too long or unencodable
            continue
        if _inside(real, roots):
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise NNVitalsError(
                    f"{shown(text)}: not a regular file or directory (a pipe, device or socket)"
                )
            return real
        raise NNVitalsError(
            f"{shown(text)}: outside the allowed directories ({', '.join(map(str, roots))}); "
            "symlinks pointing out of them are refused"
        )
    hint = " ('~' is not expanded: give the path itself)" if text.startswith("~") else ""
    raise NNVitalsError(
        f"{shown(text)}: no such file under the allowed directories ({', '.join(map(str, roots))}){hint}"
    )


def _regular_inside(p: Path, roots: Sequence[Path]) -> bool:
    """True when ``p`` (links resolved) is a regular file inside ``roots``; looks, never opens."""
    try:
        real = p.resolve(strict=True)
        return stat.S_ISREG(os.stat(real).st_mode) and _inside(real, roots)
    except (OSError, RuntimeError, ValueError):
        return False


def _is_model_dir(d: Path, roots: Sequence[Path], names: Iterable[str] | None = None) -> bool:
    """True when ``d`` is a Hugging Face style directory whose files a confined load would accept.

    The same files as :func:`analyses.core.subject.load_subject` reads: ``config.json`` and every
    ``*.safetensors``, else the first of ``pytorch_model.bin``/``model.pt``; each must be a
    regular file inside ``roots`` (a link out, a FIFO or a device is not listed).
    """
    names = sorted(os.listdir(d) if names is None else names)
    if not _regular_inside(d / "config.json", roots):
        return False
    shards = [n for n in names if n.endswith(".safetensors")]
    if shards:
        return all(_regular_inside(d / n, roots) for n in shards)
    for cand in ("pytorch_model.bin", "model.pt"):
        if cand in names:
            return _regular_inside(d / cand, roots)
    return False


def list_model_files(allow_dirs: Sequence[Path]) -> dict[str, str]:
    """Model files and Hugging Face directories under ``allow_dirs``: display label -> real path.

    Walks at most :data:`LIST_MAX_DEPTH` levels, looks at :data:`LIST_MAX_ENTRIES` entries and
    lists at most :data:`LIST_MAX_FILES`; symlinks are listed only when their target is a regular
    file inside an allowed directory. Never opens a file (a FIFO cannot block it).
    """
    return _list_files(allow_dirs, MODEL_SUFFIXES, model_dirs=True)


def list_data_files(allow_dirs: Sequence[Path]) -> dict[str, str]:
    """``.npz`` data files under ``allow_dirs`` (same walk and limits as :func:`list_model_files`)."""
    return _list_files(allow_dirs, (".npz",), model_dirs=False)


def _list_files(allow_dirs: Sequence[Path], suffixes: tuple[str, ...], model_dirs: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    roots = [Path(d).resolve() for d in allow_dirs]
    seen = 0
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            seen += len(dirnames) + len(filenames)
            if seen > LIST_MAX_ENTRIES:
                log.warning("listing %s: stopped after %d entries", root, LIST_MAX_ENTRIES)
                return out
            depth = len(here.relative_to(root).parts)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if depth >= LIST_MAX_DEPTH:
                dirnames[:] = []
            if model_dirs and here != root and _is_model_dir(here, roots, filenames):
                out[f"{root.name}/{here.relative_to(root)}/"] = str(here)
                dirnames[:] = []
                continue
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(suffixes):
                    continue
                try:
                    real = resolve_allowed(here / name, roots)
                except NNVitalsError:
                    continue
                if not real.is_file():
                    continue
                out[f"{root.name}/{(here / name).relative_to(root)}"] = str(real)
                if len(out) >= LIST_MAX_FILES:
                    return out
    return out


# --------------------------------------------------------------------------- upload folders
def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux); None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read(4096).rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _owner_alive(root: Path, pid: int) -> bool:
    """True while the process that made ``root`` may still run (pid alive, same start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not the one that made our folder
        return False
    try:
        with open(root / ".owner", "rb") as f:
            started = f.read(64).decode().strip()
    except (OSError, UnicodeDecodeError):
        return True  # no record: assume it is still running
    now = _process_start(pid)
    return not (started and now and started != now)


def remove_stale_upload_roots(base: str | os.PathLike) -> list[Path]:
    """Remove the upload folders under ``base`` whose server process is gone (even a SIGKILLed one).

    Only directories named ``nnvitals-uploads-<pid>-<random>``, owned by this user and not a
    symlink, whose ``pid`` no longer runs (or runs a process started later) are removed.
    """
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for e in entries:
        m = _ROOT_RE.match(e.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            st = os.lstat(e.path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or (uid is not None and st.st_uid != uid):
            continue
        path = Path(e.path)
        if _owner_alive(path, int(m.group(1))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the upload folder %s of a server that is no longer running", path)
        removed.append(path)
    return removed


def make_upload_root(base: str | os.PathLike | None = None) -> Path:
    """A new folder for this process's uploads under ``base`` (the temporary directory), made
    after removing the folders of servers that are no longer running."""
    base = Path(base) if base is not None else Path(tempfile.gettempdir())
    remove_stale_upload_roots(base)
    root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=base))
    started = _process_start(os.getpid())
    if started:
        (root / ".owner").write_text(started)
    return root


_root: Path | None = None
_root_lock = threading.Lock()


def upload_root() -> Path:
    """This process's upload folder (made on first use; removed when the process exits)."""
    global _root
    with _root_lock:
        if _root is None or not _root.is_dir():
            _root = make_upload_root()
            atexit.register(shutil.rmtree, _root, ignore_errors=True)
        return _root


# --------------------------------------------------------------------------- checks off the event loop
_checks: ThreadPoolExecutor | None = None
_checks_lock = threading.Lock()


def check_executor() -> ThreadPoolExecutor:
    """The threads that check uploaded files and picked paths (never the server's event loop)."""
    global _checks
    with _checks_lock:
        if _checks is None:
            _checks = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="nnvitals-check")
        return _checks


@dataclass(frozen=True)
class Outcome:
    """What a check gave: its value, or the one-line message shown instead."""

    value: Any = None
    error: str | None = None


def _attempt(work: Callable[[], Any], what: str, low_priority: bool = False) -> Outcome:
    """Run ``work``: its value, the message of an NNVitalsError, or for anything else a line
    naming ``what`` (the traceback goes to the log at WARNING for the operator)."""
    if low_priority:
        _lower_priority()
    try:
        return Outcome(value=work())
    except NNVitalsError as e:
        return Outcome(error=str(e))
    except Exception as e:
        log.warning("checking %s failed", what, exc_info=True)
        return Outcome(error=f"could not read {what} as a model ({type(e).__name__})")


def run_off_loop(work: Callable[[], Any], done: Callable[[Outcome], None], what: str) -> Future | None:
    """``work()`` on :func:`check_executor`, then ``done(outcome)`` back in this session (the
    next tick of its document, holding its lock). Outside a server both run here and now."""
    if not in_server():
        done(_attempt(work, what))
        return None
    doc = pn.state.curdoc

    def finished(fut: Future) -> None:
        outcome = fut.result() if not fut.cancelled() else Outcome(error=f"{what}: check cancelled")

        def apply() -> None:
            with set_curdoc(doc):
                try:
                    done(outcome)
                except Exception:
                    log.warning("showing the check of %s failed", what, exc_info=True)

        if not next_tick(doc, apply):  # from the check's thread, through the event loop
            log.debug("session closed before the check of %s ended", what)  # its folder goes with it

    fut = check_executor().submit(_attempt, work, what, True)
    fut.add_done_callback(finished)
    return fut


# --------------------------------------------------------------------------- uploads
def safe_filename(name: str) -> str:
    """A file name without directories or unusual characters (keeps the suffix)."""
    base = Path(str(name).replace("\\", "/")).name
    base = re.sub(r"[^\w.\-+]", "_", base).lstrip(".") or "upload"
    return base[:120]


def format_mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes < 1e9 else f"{nbytes / 1e9:.2f} GB"


def _num(n: int) -> str:
    return str(n) if abs(n) < 10**15 else ("-" if n < 0 else "") + "a huge number"


class UploadTooLarge(NNVitalsError):
    """An upload past the size limit."""


@dataclass
class _Partial:
    """An upload in progress: chunks are written at their offsets into ``part``."""

    final: Path
    part: Path
    fd: int | None
    total: int
    reserved: int
    received: set[int] = field(default_factory=set)
    end: int = 0
    last: float = field(default_factory=time.monotonic)


@dataclass
class _Refused:
    """A refused or dropped upload whose late chunks are ignored (``reason`` told once more)."""

    total: int
    seen: set[int]
    last: float = field(default_factory=time.monotonic)
    reason: str | None = None


class UploadSink:
    """Writes chunked uploads to ``directory``, refusing anything past ``max_bytes``.

    Chunks may be handled by several threads and out of order (Panel's thread pool), so each
    is written at its own offset into a hidden part file, renamed to the file's name once all
    its chunks have arrived. What a forged client can hold is bounded: ``max_partial`` uploads
    in progress (one open file each), ``session_bytes`` on disk for every upload of the session
    together (default :data:`SESSION_UPLOADS` times ``max_bytes``), and an upload that receives
    nothing for ``idle_s`` seconds is dropped (its file closed and deleted) by a background
    sweep. Chunk numbers outside ``1..total``, a count below 1 and a chunk longer than
    ``chunk_bytes`` are refused with a message.
    """

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        chunk_bytes: int = CHUNK_BYTES,
        *,
        max_partial: int = MAX_PARTIAL_UPLOADS,
        session_bytes: int | None = None,
        idle_s: float = PARTIAL_IDLE_S,
    ):
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.chunk_bytes = int(chunk_bytes)
        self.max_partial = int(max_partial)
        self.session_bytes = int(
            session_bytes if session_bytes is not None else SESSION_UPLOADS * self.max_bytes
        )
        self.idle_s = float(idle_s)
        self._lock = threading.Lock()
        self._open: dict[str, _Partial] = {}
        self._refused: OrderedDict[str, _Refused] = OrderedDict()
        self._closed = False

    def limit_text(self) -> str:
        return format_mb(self.max_bytes)

    # ------------------------------------------------------------------ chunks
    def receive(self, name: str, chunk: int, total: int, data: bytes) -> Path | None:
        """Store one chunk (1-based) of ``total``; the file's path once complete, else None.

        Raises :class:`UploadTooLarge` (once per file) when the file is past the limit, and
        :class:`NNVitalsError` for a name that is not a model file, a malformed chunk, too many
        uploads at once, the session's byte budget, or an upload dropped while idle.
        """
        fname = safe_filename(name)
        if total < 1 or not 1 <= chunk <= total:
            raise NNVitalsError(
                f"{fname}: malformed upload (chunk {_num(chunk)} of {_num(total)}); "
                "expected chunks numbered from 1 to their count"
            )
        if len(data) > self.chunk_bytes:
            raise NNVitalsError(
                f"{fname}: malformed upload (chunk {_num(chunk)} is larger than a chunk of "
                f"{format_mb(self.chunk_bytes)})"
            )
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise NNVitalsError(f"{fname}: upload refused: this session has closed")
            self._sweep_locked(now)
            ref = self._refused.get(fname)
            if ref is not None:
                if chunk not in ref.seen and total == ref.total:  # a late chunk of a refused upload
                    ref.seen.add(chunk)
                    ref.last = now
                    reason, ref.reason = ref.reason, None
                    if len(ref.seen) >= ref.total:
                        self._refused.pop(fname, None)
                    if reason:
                        raise NNVitalsError(reason)
                    return None
                self._refused.pop(fname, None)  # a chunk seen before: the same name uploaded again
            st = self._open.get(fname)
            if st is not None and (chunk in st.received or total != st.total):
                self._discard_locked(fname)  # a new upload of that name: start over
                st = None
            if st is None:
                st = self._start_locked(fname, chunk, total)
            offset = (chunk - 1) * self.chunk_bytes
            end = offset + len(data)
            if end > self.max_bytes:
                self._refuse_locked(fname, total, {*st.received, chunk})
                raise UploadTooLarge(self._too_large(fname))
            try:  # under the lock: the sweep never closes a handle while it is written to
                os.pwrite(st.fd, data, offset)
            except OSError as e:
                self._refuse_locked(fname, total, {*st.received, chunk})
                log.warning("upload %s: writing to %s failed", fname, self.directory, exc_info=True)
                raise NNVitalsError(f"{fname}: could not be stored on the server ({e.strerror})") from None
            st.received.add(chunk)
            st.end = max(st.end, end)
            st.last = now
            if len(st.received) < st.total:
                return None
            self._open.pop(fname, None)
            os.close(st.fd)
            st.fd = None
            try:
                os.replace(st.part, st.final)
            except OSError as e:
                st.part.unlink(missing_ok=True)
                log.warning("upload %s: renaming into %s failed", fname, self.directory, exc_info=True)
                raise NNVitalsError(f"{fname}: could not be stored on the server ({e.strerror})") from None
            return st.final

    def _too_large(self, fname: str) -> str:
        return (
            f"{fname}: larger than the upload limit of {self.limit_text()}; "
            "ask the server's operator to raise --max-upload-mb, or put the file in a "
            "directory the server allows (--allow-dir)"
        )

    def _start_locked(self, fname: str, chunk: int, total: int) -> _Partial:
        seen = {chunk}
        if not fname.lower().endswith(MODEL_SUFFIXES):
            self._refuse_locked(fname, total, seen)
            raise NNVitalsError(
                f"{fname}: not a model file; expected {', '.join(MODEL_SUFFIXES)} "
                "(.pt/.pth/.bin as state dicts)"
            )
        if (total - 1) * self.chunk_bytes > self.max_bytes:
            self._refuse_locked(fname, total, seen)
            raise UploadTooLarge(self._too_large(fname))
        if len(self._open) >= self.max_partial:
            self._refuse_locked(fname, total, seen)
            raise NNVitalsError(
                f"{fname}: refused: this session already has {len(self._open)} uploads in progress "
                f"(at most {self.max_partial}); wait for them to finish"
            )
        reserved = min(total * self.chunk_bytes, self.max_bytes)
        used = self._disk_bytes() + sum(max(p.reserved - p.end, 0) for p in self._open.values())
        if used + reserved > self.session_bytes:
            self._refuse_locked(fname, total, seen)
            raise NNVitalsError(
                f"{fname}: refused: this session's uploads would take more than "
                f"{format_mb(self.session_bytes)} on the server; open a new session to upload more"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        part = self.directory / f".{fname}.{secrets.token_hex(6)}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        st = _Partial(final=self.directory / fname, part=part, fd=fd, total=total, reserved=reserved)
        self._open[fname] = st
        _sweeper.add(self)
        return st

    def _disk_bytes(self) -> int:
        total = 0
        try:
            for e in os.scandir(self.directory):
                try:
                    s = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(s.st_mode):
                    total += s.st_size
        except OSError:
            pass
        return total

    def _refuse_locked(self, fname: str, total: int, seen: set[int], reason: str | None = None) -> None:
        self._discard_locked(fname)
        if total > 1 or reason:
            self._refused[fname] = _Refused(total=total, seen=set(seen), reason=reason)
            self._refused.move_to_end(fname)
            while len(self._refused) > MAX_REFUSED:
                self._refused.popitem(last=False)

    def _discard_locked(self, fname: str) -> None:
        st = self._open.pop(fname, None)
        if st is None:
            return
        if st.fd is not None:
            os.close(st.fd)
            st.fd = None
        st.part.unlink(missing_ok=True)

    # ------------------------------------------------------------------ housekeeping
    def sweep(self, now: float | None = None) -> None:
        """Drop partial uploads idle for more than ``idle_s`` (and forget old refusals)."""
        with self._lock:
            self._sweep_locked(time.monotonic() if now is None else now)

    def _sweep_locked(self, now: float) -> None:
        for fname, st in list(self._open.items()):
            if now - st.last > self.idle_s:
                log.info("upload %s: nothing received for %.0f s, dropped", fname, self.idle_s)
                self._refuse_locked(
                    fname,
                    st.total,
                    st.received,
                    reason=f"{fname}: upload stalled (nothing received for {self.idle_s:.0f} s) and was "
                    "dropped; upload it again",
                )
        for fname, ref in list(self._refused.items()):
            if now - ref.last > max(self.idle_s, 30.0):
                self._refused.pop(fname, None)

    @property
    def in_progress(self) -> int:
        """Uploads in progress (each holds one open file)."""
        return len(self._open)

    def close(self) -> None:
        """Close and delete every partial upload; later chunks are refused."""
        with self._lock:
            self._closed = True
            for fname in list(self._open):
                self._discard_locked(fname)
            self._refused.clear()
        _sweeper.discard(self)


class _Sweeper:
    """One daemon thread that sweeps every sink with partial uploads (so an upload a client
    abandons is dropped even if that session never sends anything again)."""

    def __init__(self) -> None:
        self._sinks: weakref.WeakSet[UploadSink] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, sink: UploadSink) -> None:
        with self._lock:
            self._sinks.add(sink)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="nnvitals-upload-sweep", daemon=True)
                self._thread.start()
        self._wake.set()  # look at the new sink's idle limit now

    def discard(self, sink: UploadSink) -> None:
        with self._lock:
            self._sinks.discard(sink)

    def _run(self) -> None:
        while True:
            with self._lock:
                sinks = list(self._sinks)
            idle = min((s.idle_s for s in sinks), default=PARTIAL_IDLE_S)
            self._wake.wait(min(max(idle / 4, 0.05), 5.0))
            self._wake.clear()
            for s in sinks:
                try:
                    s.sweep()
                except Exception:  # never let one sink stop the sweep of the others
                    log.warning("sweeping uploads of %s failed", s.directory, exc_info=True)
                if not s.in_progress:
                    self.discard(s)


_sweeper = _Sweeper()


def _chunk_fields(data: Any) -> tuple[str, int, int, bytes]:
    """(name, chunk, total, bytes) of an upload event, or an error for a malformed one."""
    try:
        name, chunk, total, raw = data["name"], data["chunk"], data["total_chunks"], data["data"]
        if not isinstance(name, str) or not all(type(v) is int for v in (chunk, total)):
            raise TypeError
        payload = bytes(memoryview(raw))
    except (KeyError, TypeError, IndexError, ValueError):
        raise NNVitalsError(
            "upload: malformed chunk message; expected a file name, chunk numbers and the chunk's bytes"
        ) from None
    return name, chunk, total, payload


class UploadDropper(pn.widgets.FileDropper):
    """A FileDropper that streams each chunk to an :class:`UploadSink` instead of memory."""

    def __init__(self, sink: UploadSink, on_file, on_error, **params):
        params.setdefault("chunk_size", sink.chunk_bytes)
        super().__init__(**params)
        self._sink, self._on_file, self._on_error = sink, on_file, on_error

    def _process_event(self, event) -> None:
        if getattr(event, "event_name", None) != "upload_event":
            return  # a file removed from the drop area: nothing to undo
        name = "upload"
        try:
            name, chunk, total, data = _chunk_fields(event.data)
            path = self._sink.receive(name, chunk, total, data)
        except NNVitalsError as e:
            self._on_error(str(e))
            return
        except Exception as e:  # a bug: the user gets a line, the operator the traceback
            log.warning("upload %s: storing a chunk failed", shown(name), exc_info=True)
            self._on_error(f"{safe_filename(name)}: could not be stored on the server ({type(e).__name__})")
            return
        if path is not None:
            self._on_file(path, safe_filename(name))


# --------------------------------------------------------------------------- the picker
def _demo_options() -> dict[str, str]:
    return {f"{name} — {desc}": name for name, desc in DEMO_MODELS.items()}


def _markdown_text(text: str) -> str:
    """``text`` shown literally in a Markdown pane (no HTML, no emphasis from file names)."""
    text = html.escape(" ".join(str(text).splitlines()), quote=False)
    return re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", text)


#: the public name (pages show model names with it)
markdown_text = _markdown_text


class ModelPicker(pn.viewable.Viewer):
    """Picks the model every page analyses (see the module docstring)."""

    model = param.Parameter(default="mlp", doc="Demo model name or absolute path of the model.")
    label = param.String(default="mlp", doc="Name of the model as shown to the user.")
    sources = param.Dict(default={}, doc="Every model on offer: label -> model.")
    message = param.String(default="", doc="The last upload or path message.")
    chosen = param.Boolean(
        default=False,
        doc="A model was chosen (in the sidebar, by an upload or path, or handed on by a page); "
        "until then a page may open on a demo of its own (suggest).",
    )

    def __init__(
        self,
        allow_dirs: Sequence[Path] = (),
        max_upload_mb: float = 512,
        default: str = "mlp",
        upload_dir: str | os.PathLike | None = None,
        **params: Any,
    ):
        super().__init__(**params)
        self.allow_dirs = tuple(Path(d).resolve() for d in allow_dirs)
        self.max_upload_mb = max_upload_mb
        self._own_tmp = upload_dir is None
        self._tmp = (
            Path(upload_dir) if upload_dir else Path(tempfile.mkdtemp(prefix="session-", dir=upload_root()))
        )
        self._closed = False
        self._quiet = False
        self._suggesting = False
        self._uploaded: dict[str, str] = {}
        self._server_files: dict[str, str] = list_model_files(self.allow_dirs) if self.allow_dirs else {}
        self.sink = UploadSink(self._tmp, int(max_upload_mb * 1000 * 1000))

        self._select = pn.widgets.Select(name="Model", sizing_mode="stretch_width", css_classes=["nnv-model"])
        self._refresh_options(select=default)
        self._select.param.watch(self._on_select, "value")
        self.param.watch(self._on_model, "model")

        mb = max_upload_mb
        self._limit = f"{int(mb)}MB" if float(mb).is_integer() else f"{int(math.ceil(mb * 1000))}KB"
        self._dropper = self._new_dropper()
        self._msg = pn.pane.Alert("", alert_type="info", visible=False, sizing_mode="stretch_width")
        self._upload_note = pn.pane.Markdown(
            f"Upload `.safetensors`, `.pt`/`.pth` state dict or `.pt2` (up to {self.sink.limit_text()}; "
            "kept for this session only).",
            css_classes=["nnv-note"],
            styles=NOTE,
            margin=(0, 10),
        )
        parts: list[Any] = [self._select, self._upload_note, self._dropper]
        if self.allow_dirs:
            self._path = pn.widgets.TextInput(
                name="Path on the server",
                placeholder=f"a file under {self.allow_dirs[0]}",
                sizing_mode="stretch_width",
            )
            self._path.param.watch(self._on_path, "value")
            self._rescan = pn.widgets.Button(name="Rescan server files", button_style="outline", width=170)
            self._rescan.on_click(lambda _e: self.rescan())
            dirs = ", ".join(f"`{d}`" for d in self.allow_dirs)
            parts += [
                pn.pane.Markdown(
                    f"Server files under {dirs}", css_classes=["nnv-note"], styles=NOTE, margin=(0, 10)
                )
            ]
            parts += [self._path, self._rescan]
        parts.append(self._msg)
        self._layout = pn.Column(*parts, sizing_mode="stretch_width", css_classes=["nnv-picker"])
        if in_server():
            pn.state.on_session_destroyed(lambda _ctx: self.close())

    def __panel__(self):
        return self._layout

    def _new_dropper(self) -> UploadDropper:
        return UploadDropper(
            self.sink,
            self._uploaded_file,
            self._upload_error,
            multiple=False,
            max_file_size=self._limit,
            layout="compact",
            previews=[],
            sizing_mode="stretch_width",
            height=90,
            css_classes=["nnv-upload"],
        )

    def _reset_dropper(self) -> None:
        """A fresh, empty drop area in place of the old one (which may show "Upload complete"
        for a file that was refused; its client also stops sending the rest of that file)."""
        old, new = self._dropper, self._new_dropper()
        self._dropper = new
        objects = list(self._layout.objects)
        if old in objects:
            objects[objects.index(old)] = new
            self._layout.objects = objects

    # ------------------------------------------------------------------ options
    def _groups(self) -> dict[str, dict[str, str]]:
        groups = {"Demo models": _demo_options()}
        if self._uploaded:
            groups["Uploaded (this session)"] = dict(self._uploaded)
        if self._server_files:
            groups["Server files"] = dict(self._server_files)
        return groups

    def _refresh_options(self, select: str | None = None) -> None:
        groups = self._groups()
        flat = {label: value for g in groups.values() for label, value in g.items()}
        current = select if select is not None else self._select.value
        if current not in flat.values():
            current = next(iter(flat.values()))
        self._quiet = True  # the value set here is applied below, not checked again
        try:
            self._select.param.update(groups=groups, value=current)
        finally:
            self._quiet = False
        self.sources = {self._short(label): value for label, value in flat.items()}
        self._apply(current)

    @staticmethod
    def _short(label: str) -> str:
        return label.split(" — ")[0]

    @staticmethod
    def _label_of(value: str) -> str:
        """Demo models by name, files by file name (directories with a trailing slash)."""
        if value in DEMO_MODELS:
            return value
        p = Path(str(value))
        return f"{p.name}/" if p.is_dir() else p.name

    def _apply(self, value: str) -> None:
        self.param.update(model=value, label=self._label_of(value))

    def _on_select(self, event) -> None:
        if self._quiet or event.new is None or event.new == self.model:
            return
        if event.new in self._server_files.values() and event.new not in self._uploaded.values():
            self._check_path(event.new, listed=True)  # the listing may be old: check what is there now
        else:
            self._apply(event.new)

    def _on_model(self, event) -> None:
        """The model changed (picked, uploaded, handed on, or set in Python): it counts as chosen
        unless a page suggested it, and the select shows it (one truth, whoever set it)."""
        if not self._suggesting:
            self.chosen = True
        if self._select.value != event.new and event.new in self.sources.values():
            self._quiet = True
            try:
                self._select.value = event.new
            finally:
                self._quiet = False
        if self.label != self._label_of(event.new):
            self.label = self._label_of(event.new)

    def suggest(self, model: str) -> bool:
        """Pick demo model ``model`` for a page that opens on a demo of its own, unless a model was
        chosen already (:attr:`chosen`; a suggestion does not count as a choice). True when the
        picker's model is ``model`` now."""
        if self.chosen or model not in DEMO_MODELS or model not in self.sources.values():
            return self.model == model
        self._suggesting = True
        self._quiet = True
        try:
            self._select.value = model
            self._apply(model)
        finally:
            self._quiet = False
            self._suggesting = False
        return self.model == model

    def name_of(self, model: Any) -> str:
        """How the sidebar names ``model``: its label in the select (without a demo's description),
        else its file or demo name."""
        for label, value in self.sources.items():
            if value == model:
                return label
        return self._label_of(str(model)) if isinstance(model, str | os.PathLike) else type(model).__name__

    def select(self, model: str) -> None:
        """Pick ``model`` (a demo name, an uploaded file's path or an allowed server path)."""
        if model in DEMO_MODELS or model in self._uploaded.values() or model in self._server_files.values():
            self._select.value = model
            return
        self._pick_path(model)

    def add_file(self, path: str | os.PathLike, label: str | None = None) -> None:
        """Offer a model file this session made (e.g. an interpolated model saved by a page) in the
        "Uploaded (this session)" group and pick it; keep it in :attr:`upload_dir` to have it
        deleted with the session."""
        path = Path(path)
        label = f"{label or path.name} (this session)"
        self._uploaded = {k: v for k, v in self._uploaded.items() if v != str(path)}
        self._uploaded[label] = str(path)
        self._refresh_options(select=str(path))

    def rescan(self) -> None:
        """List the server files again (after files were added under ``--allow-dir``)."""
        self._server_files = list_model_files(self.allow_dirs)
        self._refresh_options()

    # ------------------------------------------------------------------ server paths
    def _on_path(self, event) -> None:
        if event.new:
            self._pick_path(event.new)

    def _pick_path(self, text: Any) -> None:
        try:
            _check_typed(str(text))  # what no path can hold is answered at once
        except NNVitalsError as e:
            self._say(str(e), "danger")
            return
        self._check_path(str(text))

    def _check_path(self, text: str, listed: bool = False) -> None:
        """Resolve ``text`` inside the allowed directories and open it confined to them (off the
        event loop); pick it when it is a model, else show why and keep the current model.
        ``listed``: picked from the select (no message when it is still acceptable)."""

        def work() -> Path:
            real = resolve_allowed(text, self.allow_dirs)
            load_subject(real, allow_factory=False, confine=self.allow_dirs)
            return real

        run_off_loop(work, lambda outcome: self._path_checked(text, outcome, listed), shown(text))

    def _path_checked(self, text: str, outcome: Outcome, listed: bool) -> None:
        if self._closed:
            return
        if outcome.error is not None:
            self._say(outcome.error, "danger")
            if self._select.value != self.model:  # a listed file that is no longer acceptable
                self._quiet = True
                try:
                    self._select.value = self.model
                finally:
                    self._quiet = False
            return
        real: Path = outcome.value
        if listed and str(real) == text:
            if self._select.value == text:  # (unless another pick came meanwhile)
                self._apply(text)
            return
        label = f"{real.name}{'/' if real.is_dir() else ''}"
        if str(real) not in self._server_files.values():
            self._server_files[label] = str(real)
        self._say(f"Picked {label} from the server.", "success")
        self._refresh_options(select=str(real))

    # ------------------------------------------------------------------ uploads
    def _uploaded_file(self, path: Path, name: str) -> None:
        """A complete upload: checked off the event loop, then offered (or deleted with a message)."""
        path = Path(path)

        def work() -> int:
            subject = load_subject(path, allow_factory=False, label=name)
            n = len(subject.weights())
            if n == 0:
                raise NNVitalsError(f"{name}: holds no weight matrices to analyse")
            return n

        if in_server():
            self._say(f"Checking {name} …", "info")
        run_off_loop(work, lambda outcome: self._upload_checked(path, name, outcome), name)

    def _upload_checked(self, path: Path, name: str, outcome: Outcome) -> None:
        if self._closed:
            path.unlink(missing_ok=True)
            return
        if outcome.error is not None:
            path.unlink(missing_ok=True)
            message = outcome.error.replace(str(path), name).replace(str(self._tmp), "uploads")
            log.info("upload %s refused: %s", name, message)
            self._reset_dropper()
            self._say(message, "danger")
            return
        n = outcome.value
        label = f"{name} (upload)"
        self._uploaded = {k: v for k, v in self._uploaded.items() if v != str(path)}
        self._uploaded[label] = str(path)
        self._say(f"Uploaded {name}: {n} weight tensors.", "success")
        try:
            size = format_mb(path.stat().st_size)
        except OSError:
            size = "?"
        log.info("upload %s (%s) into %s", name, size, self._tmp)
        self._refresh_options(select=str(path))

    def _upload_error(self, message: str) -> None:
        self._reset_dropper()  # first: once the message shows, the new drop area is there
        self._say(message, "danger")

    def _say(self, text: str, kind: str = "info") -> None:
        text = shown(" ".join(str(text).splitlines()), limit=500)
        self.message = text
        self._msg.param.update(object=_markdown_text(text), alert_type=kind, visible=bool(text))

    # ------------------------------------------------------------------ lifetime
    @property
    def upload_dir(self) -> Path:
        return self._tmp

    def close(self) -> None:
        """Delete this session's uploads (called when the session closes)."""
        self._closed = True
        self.sink.close()
        if self._own_tmp and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)
            log.info("deleted session uploads %s", self._tmp)
