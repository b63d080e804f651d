"""Content-addressed on-disk cache of results.

The key of an entry is the SHA-256 of the canonical JSON of (analysis, parameters, model
fingerprint, data fingerprint, package version), so a change to any of them is a miss.
Each file holds a header with the key it was written for and the SHA-256 of its payload; an
entry that fails either check or does not parse is deleted and reported as a miss, so a damaged
or misplaced entry is recomputed, never served. Reads are bounded: only a regular file (no
symlink, FIFO or device) of at most :data:`MAX_ENTRY_BYTES` is read. Writes go to a temporary
file in the same directory and are renamed into place (atomic on POSIX), so a crash mid-write
never leaves a half entry; a write that fails (read-only or full disk, a directory in the way)
raises :class:`StoreWriteError`, which :meth:`Analysis.run` turns into a warning while it still
returns the finished result.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import NNVitalsError
from .result import Result, _jsonable

MAGIC = b"NNVSTORE2\n"
#: largest entry read back (results are tables and arrays of a few MB; anything bigger is not ours)
MAX_ENTRY_BYTES = 1024 * 1024 * 1024


class StoreWriteError(NNVitalsError):
    """The store could not keep a result (the result itself is fine)."""


def default_root() -> Path:
    env = os.environ.get("NNVITALS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nnvitals"


def make_key(**parts: Any) -> str:
    """Stable hex key from JSON-able parts (order-independent)."""
    blob = json.dumps(_jsonable(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultStore:
    """A directory of results addressed by :func:`make_key`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.nnv"

    def _read(self, p: Path) -> bytes | None:
        """The entry's bytes when it is a regular file within the size bound, else None."""
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
                return None
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read(MAX_ENTRY_BYTES + 1)
        except OSError:
            return None
        finally:
            os.close(fd)

    def get(self, key: str) -> Result | None:
        """The stored result, or None when missing, damaged or written for another key.

        A damaged or misplaced regular file is removed; anything else at the key (a symlink, a
        FIFO, a directory, a file over :data:`MAX_ENTRY_BYTES`) is left alone and not read.
        """
        p = self.path(key)
        data = self._read(p)
        if data is None:
            return None
        try:
            if not data.startswith(MAGIC) or len(data) > MAX_ENTRY_BYTES:
                raise NNVitalsError("bad header")
            head = len(MAGIC)
            stored_key, digest = data[head : head + 64], data[head + 65 : head + 129]
            payload = data[head + 130 :]
            if stored_key != key.encode():
                raise NNVitalsError("entry written for another key")
            if hashlib.sha256(payload).hexdigest().encode() != digest:
                raise NNVitalsError("checksum mismatch")
            result = Result.from_bytes(payload, source=str(p))
            if result.meta.get("store_key") not in (None, key):
                raise NNVitalsError("entry's metadata names another key")
            return result
        except NNVitalsError:
            p.unlink(missing_ok=True)
            return None

    def put(self, key: str, result: Result) -> Path:
        """Store ``result`` at ``key`` (atomically); :class:`StoreWriteError` when it cannot be kept."""
        p = self.path(key)
        result.meta["store_key"] = key
        payload = result.to_bytes()
        blob = MAGIC + key.encode() + b"\n" + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
        tmp = None
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".nnv")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except OSError as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            where = e.filename or p
            raise StoreWriteError(f"result store {where}: cannot write ({e.strerror or e})") from None
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise
        return p

    def clear(self) -> int:
        n = 0
        for f in self.root.glob("*/*.nnv"):
            f.unlink(missing_ok=True)
            n += 1
        return n
