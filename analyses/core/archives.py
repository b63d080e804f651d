"""Bounds on what a zip archive may cost before anything inflates or parses it.

PyTorch's ``.pt`` (``torch.save``), ``.pt2`` (``torch.export.save``) and numpy's ``.npz`` are
zip archives. Their readers trust the sizes an archive declares: a 3 MB ``.pt`` whose
``data.pkl`` is stored deflated can declare gigabytes and is inflated whole. Every archive
nnvitals opens goes through :func:`check_zip` first, which reads only the central directory
and refuses archives that are too many, too big or too compressed to be an honest checkpoint.
Nothing here inflates a member.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import NNVitalsError

#: most members an archive may hold (a checkpoint holds one per tensor storage)
MAX_MEMBERS = 200_000
#: largest uncompressed size of one deflated member: honest writers (torch.save,
#: torch.export.save) store tensors uncompressed; only small metadata is ever deflated
MAX_DEFLATED_MEMBER = 64 * 1024 * 1024
#: largest total uncompressed size of all deflated members together
MAX_DEFLATED_TOTAL = 256 * 1024 * 1024
#: a deflated member may expand at most this many times (zip bombs expand ~1000x)
MAX_RATIO = 200


@dataclass(frozen=True)
class Member:
    """One archive member as its central directory declares it."""

    name: str
    size: int  # uncompressed
    compressed: int
    stored: bool


def check_zip(
    source: str | Path | bytes,
    where: str,
    *,
    max_member: int = MAX_DEFLATED_MEMBER,
    max_total: int = MAX_DEFLATED_TOTAL,
    max_ratio: int = MAX_RATIO,
) -> list[Member]:
    """The members of a zip archive, refused with one line when its declared sizes are not sane.

    ``source`` is a path or the archive's bytes; ``where`` names it in messages. Raises
    :class:`NNVitalsError` for anything that is not a readable zip, for more than
    :data:`MAX_MEMBERS` members, for duplicate or absolute names or ``..`` components, and for
    deflated members past ``max_member`` / ``max_total`` bytes or expanding more than ``max_ratio``
    times (defaults: :data:`MAX_DEFLATED_MEMBER`, :data:`MAX_DEFLATED_TOTAL`, :data:`MAX_RATIO`).
    """
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")
    except OSError as e:
        raise NNVitalsError(f"{where}: cannot read ({e.strerror})") from None
    try:
        with fh, zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError):
        raise NNVitalsError(f"{where}: damaged or not a zip archive") from None
    if len(infos) > MAX_MEMBERS:
        raise NNVitalsError(f"{where}: holds {len(infos)} archive members (at most {MAX_MEMBERS} are read)")
    members, seen, deflated = [], set(), 0
    for info in infos:
        name = info.filename
        if name in seen:
            raise NNVitalsError(f"{where}: damaged archive (a member name appears twice)")
        seen.add(name)
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or "\x00" in name:
            raise NNVitalsError(f"{where}: refused: an archive member has an unsafe name")
        stored = info.compress_type == zipfile.ZIP_STORED
        if stored and info.file_size != info.compress_size:
            raise NNVitalsError(f"{where}: damaged archive (a stored member's sizes disagree)")
        if not stored:
            deflated += info.file_size
            if (
                info.file_size > max_member
                or deflated > max_total
                or info.file_size > max_ratio * max(info.compress_size, 1) + 65536
            ):
                raise NNVitalsError(
                    f"{where}: refused: a compressed archive member would inflate to "
                    f"{info.file_size / 2**20:.0f} MiB (a zip bomb, or not a file PyTorch/numpy wrote)"
                )
        members.append(Member(name, info.file_size, info.compress_size, stored))
    return members
