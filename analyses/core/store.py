"""Content-addressed on-disk cache of results.

The key of an entry is the SHA-256 of the canonical JSON of (analysis, parameters, model
fingerprint, data fingerprint, package version), so a change to any of them is a miss.
Each file holds a header with the SHA-256 of its payload; an entry that fails that check or
does not parse is deleted and reported as a miss, so a damaged entry is recomputed, never
served. Writes go to a temporary file in the same directory and are renamed into place
(atomic on POSIX), so a crash mid-write never leaves a half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import NNVitalsError
from .result import Result, _jsonable

MAGIC = b"NNVSTORE1\n"


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

    def get(self, key: str) -> Result | None:
        """The stored result, or None when missing or damaged (a damaged file is removed)."""
        p = self.path(key)
        try:
            data = p.read_bytes()
        except OSError:
            return None
        try:
            if not data.startswith(MAGIC):
                raise NNVitalsError("bad header")
            digest, payload = data[len(MAGIC) : len(MAGIC) + 64], data[len(MAGIC) + 65 :]
            if hashlib.sha256(payload).hexdigest().encode() != digest:
                raise NNVitalsError("checksum mismatch")
            return Result.from_bytes(payload, source=str(p))
        except NNVitalsError:
            p.unlink(missing_ok=True)
            return None

    def put(self, key: str, result: Result) -> Path:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        payload = result.to_bytes()
        blob = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".nnv")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    def clear(self) -> int:
        n = 0
        for f in self.root.glob("*/*.nnv"):
            f.unlink(missing_ok=True)
            n += 1
        return n
