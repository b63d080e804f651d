"""The files of one ``nnvitals`` command, written as one set (:class:`OutputSet`).

A command writes into a hidden staging folder inside ``--out``; leaving the ``with`` block
normally moves every file into place (the summary files, which say a set is complete, removed
first and moved in last, with Ctrl-C held for those renames), leaving it by an exception removes
the staging folder. An interrupted run or a failed write thus leaves the previous complete set or
nothing, and a file that cannot be written is named by its place in ``--out``. Problems with
``--out`` itself are :class:`InputError` (the CLI's exit code 1). Imports nothing heavy: the CLI's
``--help`` stays instant.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["STAGE_PREFIX", "InputError", "OutputSet"]


class InputError(Exception):
    """Bad input the CLI itself detects before loading anything (exit code 1)."""


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
