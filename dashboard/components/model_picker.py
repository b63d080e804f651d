"""The sidebar's model picker: demo zoo, uploads, and files under the server's ``--allow-dir``.

Every page analyses the model picked here. Sources, in one select grouped by origin:

- **Demo models** from :mod:`analyses.zoo` (always there; the app opens on one).
- **Uploaded**: ``.safetensors``, ``.pt/.pth/.bin`` state dicts and ``.pt2`` exports dropped
  on the upload area. Chunks are written straight to a temporary directory of the session
  (never held whole in memory), refused past the size limit with a message that says so, checked
  to be a model (else the reader's message is shown and the file deleted), and deleted when
  the session closes. Another session never sees them.
- **Server files**: model files (and Hugging Face style directories) found under the
  directories the server was started with (``--allow-dir``). A typed path is accepted only when,
  with every symlink resolved, it lies inside one of them; ``..`` is refused outright.

``model`` holds what an analysis takes (a demo name or an absolute path), ``label`` the name to
show, and ``sources`` every choice (label -> model) for pages that pick a second model.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import panel as pn
import param

from analyses.core.errors import NNVitalsError
from analyses.core.subject import load_subject
from analyses.zoo import DEMO_MODELS

from ..style import NOTE
from .jobs import in_server

log = logging.getLogger("nnvitals.app")

#: files a user may upload or pick (the readers in analyses.core.formats)
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".pt2")
#: bytes per upload chunk sent over the websocket
CHUNK_BYTES = 4 * 1000 * 1000
#: how far and how much the server-file listing walks
LIST_MAX_DEPTH = 4
LIST_MAX_FILES = 500


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


def resolve_allowed(path: str | os.PathLike, allow_dirs: Sequence[Path]) -> Path:
    """The real path of ``path`` when it lies inside one of ``allow_dirs``; else an error.

    ``..`` components are refused before anything is resolved; symlinks are resolved and the
    target must still be inside an allowed directory (a link pointing out is refused). A
    relative path is taken relative to each allowed directory in turn.
    """
    text = str(path).strip()
    if not text:
        raise NNVitalsError("path: empty; give a file under one of the allowed directories")
    if not allow_dirs:
        raise NNVitalsError(f"{text}: the server allows no directories (start it with --allow-dir DIR)")
    p = Path(text)
    if ".." in p.parts:
        raise NNVitalsError(f"{text}: '..' is not allowed in a path; give a path inside an allowed directory")
    roots = [Path(d).resolve() for d in allow_dirs]
    candidates = [p] if p.is_absolute() else [r / p for r in roots]
    for cand in candidates:
        try:
            real = cand.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            continue
        if any(real == r or real.is_relative_to(r) for r in roots):
            if not (real.is_file() or real.is_dir()):
                raise NNVitalsError(f"{text}: not a regular file or directory")
            return real
        raise NNVitalsError(
            f"{text}: outside the allowed directories ({', '.join(map(str, roots))}); "
            "symlinks pointing out of them are refused"
        )
    raise NNVitalsError(f"{text}: no such file under the allowed directories ({', '.join(map(str, roots))})")


def _is_model_dir(d: Path) -> bool:
    return (d / "config.json").is_file() and any(
        (d / n).is_file() for n in ("model.safetensors", "pytorch_model.bin", "model.pt")
    )


def list_model_files(allow_dirs: Sequence[Path]) -> dict[str, str]:
    """Model files and Hugging Face directories under ``allow_dirs``: display label -> real path.

    Walks at most :data:`LIST_MAX_DEPTH` levels and lists at most :data:`LIST_MAX_FILES`
    entries; symlinks are listed only when their target stays inside an allowed directory.
    """
    return _list_files(allow_dirs, MODEL_SUFFIXES, model_dirs=True)


def list_data_files(allow_dirs: Sequence[Path]) -> dict[str, str]:
    """``.npz`` data files under ``allow_dirs`` (same walk and limits as :func:`list_model_files`)."""
    return _list_files(allow_dirs, (".npz",), model_dirs=False)


def _list_files(allow_dirs: Sequence[Path], suffixes: tuple[str, ...], model_dirs: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for root in allow_dirs:
        root = Path(root).resolve()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            depth = len(here.relative_to(root).parts)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if depth >= LIST_MAX_DEPTH:
                dirnames[:] = []
            if model_dirs and here != root and _is_model_dir(here):
                out[f"{root.name}/{here.relative_to(root)}/"] = str(here)
                dirnames[:] = []
                continue
            for name in sorted(filenames):
                if name.startswith(".") or not name.lower().endswith(suffixes):
                    continue
                try:
                    real = resolve_allowed(here / name, allow_dirs)
                except NNVitalsError:
                    continue
                out[f"{root.name}/{(here / name).relative_to(root)}"] = str(real)
                if len(out) >= LIST_MAX_FILES:
                    return out
    return out


# --------------------------------------------------------------------------- uploads
def safe_filename(name: str) -> str:
    """A file name without directories or unusual characters (keeps the suffix)."""
    base = Path(str(name).replace("\\", "/")).name
    base = re.sub(r"[^\w.\-+]", "_", base).lstrip(".") or "upload"
    return base[:120]


def format_mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes < 1e9 else f"{nbytes / 1e9:.2f} GB"


class UploadTooLarge(NNVitalsError):
    """An upload past the size limit."""


class UploadSink:
    """Writes chunked uploads to ``directory``, refusing anything past ``max_bytes``.

    Chunks may be handled by several threads and out of order (Panel's thread pool), so each
    is written at its own offset; a file is complete when all its chunks have arrived.
    """

    def __init__(self, directory: Path, max_bytes: int, chunk_bytes: int = CHUNK_BYTES):
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.chunk_bytes = int(chunk_bytes)
        self._lock = threading.Lock()
        self._open: dict[str, dict[str, Any]] = {}

    def limit_text(self) -> str:
        return format_mb(self.max_bytes)

    def receive(self, name: str, chunk: int, total: int, data: bytes) -> Path | None:
        """Store one chunk (1-based) of ``total``; the file's path once complete, else None.

        Raises :class:`UploadTooLarge` (once per file) when the file is past the limit, and
        :class:`NNVitalsError` for a name that is not a model file.
        """
        fname = safe_filename(name)
        with self._lock:
            st = self._open.get(name)
            if st is None:
                st = self._start(name, fname, total)
            if st["rejected"]:
                st["seen"] += 1
                if st["seen"] >= total:
                    self._open.pop(name, None)
                return None
            offset = (chunk - 1) * self.chunk_bytes
            end = offset + len(data)
            if end > self.max_bytes or (total - 1) * self.chunk_bytes > self.max_bytes:
                self._reject(name, st)
                if st["seen"] >= total:
                    self._open.pop(name, None)
                raise UploadTooLarge(
                    f"{fname}: larger than the upload limit of {self.limit_text()}; "
                    "ask the server's operator to raise --max-upload-mb, or put the file in a "
                    "directory the server allows (--allow-dir)"
                )
            fd = st["fd"]
        os.pwrite(fd, data, offset)
        with self._lock:
            st["received"].add(chunk)
            st["seen"] += 1
            st["bytes"] += len(data)
            if len(st["received"]) < total:
                return None
            self._open.pop(name, None)
            os.close(fd)
            st["fd"] = None
            return st["path"]

    def _start(self, name: str, fname: str, total: int) -> dict[str, Any]:
        if not fname.lower().endswith(MODEL_SUFFIXES):
            st = {"rejected": True, "seen": 1, "fd": None, "path": None}
            if total > 1:
                self._open[name] = st
            raise NNVitalsError(
                f"{fname}: not a model file; expected {', '.join(MODEL_SUFFIXES)} "
                "(.pt/.pth/.bin as state dicts)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / fname
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        st = {"path": path, "fd": fd, "received": set(), "seen": 0, "bytes": 0, "rejected": False}
        self._open[name] = st
        return st

    def _reject(self, name: str, st: dict[str, Any]) -> None:
        st["rejected"] = True
        st["seen"] += 1
        if st.get("fd") is not None:
            os.close(st["fd"])
            st["fd"] = None
        if st.get("path") is not None:
            Path(st["path"]).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            for st in self._open.values():
                if st.get("fd") is not None:
                    os.close(st["fd"])
            self._open.clear()


class UploadDropper(pn.widgets.FileDropper):
    """A FileDropper that streams each chunk to an :class:`UploadSink` instead of memory."""

    def __init__(self, sink: UploadSink, on_file, on_error, **params):
        params.setdefault("chunk_size", sink.chunk_bytes)
        super().__init__(**params)
        self._sink, self._on_file, self._on_error = sink, on_file, on_error

    def _process_event(self, event) -> None:
        if event.event_name != "upload_event":
            return  # a file removed from the drop area: nothing to undo
        d = event.data
        try:
            path = self._sink.receive(d["name"], int(d["chunk"]), int(d["total_chunks"]), bytes(d["data"]))
        except NNVitalsError as e:
            self._on_error(str(e))
            return
        if path is not None:
            self._on_file(path, safe_filename(d["name"]))


# --------------------------------------------------------------------------- the picker
def _demo_options() -> dict[str, str]:
    return {f"{name} — {desc}": name for name, desc in DEMO_MODELS.items()}


class ModelPicker(pn.viewable.Viewer):
    """Picks the model every page analyses (see the module docstring)."""

    model = param.Parameter(default="mlp", doc="Demo model name or absolute path of the model.")
    label = param.String(default="mlp", doc="Name of the model as shown to the user.")
    sources = param.Dict(default={}, doc="Every model on offer: label -> model.")
    message = param.String(default="", doc="The last upload or path message.")

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
        self._tmp = Path(upload_dir) if upload_dir else Path(tempfile.mkdtemp(prefix="nnvitals-upload-"))
        self._own_tmp = upload_dir is None
        self._uploaded: dict[str, str] = {}
        self._server_files: dict[str, str] = list_model_files(self.allow_dirs) if self.allow_dirs else {}
        self.sink = UploadSink(self._tmp, int(max_upload_mb * 1000 * 1000))

        self._select = pn.widgets.Select(name="Model", sizing_mode="stretch_width", css_classes=["nnv-model"])
        self._refresh_options(select=default)
        self._select.param.watch(self._on_select, "value")

        mb = max_upload_mb
        limit = f"{int(mb)}MB" if float(mb).is_integer() else f"{int(math.ceil(mb * 1000))}KB"
        self._dropper = UploadDropper(
            self.sink,
            self._uploaded_file,
            self._upload_error,
            multiple=False,
            max_file_size=limit,
            layout="compact",
            previews=[],
            sizing_mode="stretch_width",
            height=90,
        )
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
        self._select.param.update(groups=groups, value=current)
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
        if event.new is not None and event.new != self.model:
            self._apply(event.new)

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

    def _pick_path(self, text: str) -> None:
        try:
            real = resolve_allowed(text, self.allow_dirs)
            load_subject(real, allow_factory=False)
        except NNVitalsError as e:
            self._say(str(e), "danger")
            return
        label = f"{real.name}{'/' if real.is_dir() else ''}"
        if str(real) not in self._server_files.values():
            self._server_files[label] = str(real)
        self._say(f"Picked {label} from the server.", "success")
        self._refresh_options(select=str(real))

    # ------------------------------------------------------------------ uploads
    def _uploaded_file(self, path: Path, name: str) -> None:
        try:
            subject = load_subject(path, allow_factory=False, label=name)
            n = len(subject.weights())
            if n == 0:
                raise NNVitalsError(f"{name}: holds no weight matrices to analyse")
        except NNVitalsError as e:
            path.unlink(missing_ok=True)
            self._say(str(e).replace(str(path), name), "danger")
            return
        label = f"{name} (upload)"
        self._uploaded = {k: v for k, v in self._uploaded.items() if v != str(path)}
        self._uploaded[label] = str(path)
        self._say(f"Uploaded {name}: {n} weight tensors.", "success")
        log.info("upload %s (%s) into %s", name, format_mb(path.stat().st_size), self._tmp)
        self._refresh_options(select=str(path))

    def _upload_error(self, message: str) -> None:
        self._say(message, "danger")

    def _say(self, text: str, kind: str = "info") -> None:
        self.message = text
        self._msg.param.update(object=text, alert_type=kind, visible=bool(text))

    # ------------------------------------------------------------------ lifetime
    @property
    def upload_dir(self) -> Path:
        return self._tmp

    def close(self) -> None:
        """Delete this session's uploads (called when the session closes)."""
        self.sink.close()
        if self._own_tmp and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)
            log.info("deleted session uploads %s", self._tmp)
