"""Figure and table export shared by the CLI, notebooks and the app.

- :func:`save_figure`: a HoloViews object to ``.svg``, ``.png`` or ``.pdf`` through the
  matplotlib backend (no browser needed), or to a standalone, offline ``.html`` file through
  bokeh with BokehJS inlined (the file loads nothing from the network: DESIGN.md, "No external
  network access at run time, including in the browser").
- :func:`save_table`: a DataFrame to CSV.
- :func:`write_summary`: a result's ``summary`` and ``meta`` as JSON (numpy types converted,
  NaN written as ``null`` so any JSON reader accepts the file).
- :func:`save_result` / :func:`save_bytes`: a result's ``.nnv`` file, or any bytes.

Every file is written to a temporary name in the same directory and renamed into place, so
an interrupted export never leaves a truncated file under the final name. A file that cannot
be written (no space left, a read-only or missing place, ...) raises :class:`OutputWriteError`:
one line naming the file and the reason. Nothing here
imports Panel, and the session's current HoloViews backend is left as it was (a notebook
user on bokeh can export an SVG and keep working in bokeh).
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd

from .errors import NNVitalsError

#: figure formats by suffix: rendered through matplotlib, or bokeh for HTML
MPL_FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
HTML_SUFFIXES = (".html", ".htm")
FIGURE_SUFFIXES = (*MPL_FORMATS, ".html")
#: resolution of PNG exports (SVG and PDF are vector)
PNG_DPI = 150


def ensure_backends(matplotlib: bool = True) -> None:
    """Register the bokeh and matplotlib HoloViews backends, keeping the current backend.

    Imports the plotting modules instead of calling ``hv.extension`` (which prints notebook
    JavaScript); if no backend was loaded yet, bokeh becomes the current one. With
    ``matplotlib=False`` only bokeh's (matplotlib's takes ~0.5 s to import: the server's first
    page request does without it, and the first view with matplotlib options loads it).
    """
    store = hv.Store
    prev = store.current_backend if store.renderers else None
    if "bokeh" not in store.renderers:
        import holoviews.plotting.bokeh  # noqa: F401
    if matplotlib and "matplotlib" not in store.renderers:
        import holoviews.plotting.mpl  # noqa: F401
    target = prev if prev in store.renderers else "bokeh"
    if store.current_backend != target:
        store.set_current_backend(target)


class OutputWriteError(NNVitalsError):
    """A file that could not be written: ``path`` and the operating system's ``reason``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: cannot write ({reason})")


def _reason(e: OSError) -> str:
    return " ".join(str(e.strerror or e).split())


def write_into(f: io.BufferedIOBase, write: Callable[[io.BufferedIOBase], None], path: Path) -> None:
    """``write(f)`` then flush; an OS error on the way (ENOSPC, EIO, EFBIG, ...) becomes an
    :class:`OutputWriteError` naming ``path`` (the file the user asked for, not a temporary name)."""
    try:
        write(f)
        f.flush()
    except OSError as e:
        raise OutputWriteError(path, _reason(e)) from None


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Create ``path``'s directory, write through ``write(fileobj)`` to a temp file, rename into place."""
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise NNVitalsError(f"{path}: cannot write there, {parent} is a file, not a directory")
    if path.is_dir():
        raise NNVitalsError(f"{path}: is a directory; expected a file name")
    tmp = parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never follow or clobber an existing file; mode 0o666 minus the umask, as open()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise OutputWriteError(path, _reason(e)) from None
    try:
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            write_into(f, write, path)
        os.replace(tmp, path)
    except OSError as e:  # closing (a last flush) or renaming
        Path(tmp).unlink(missing_ok=True)
        raise OutputWriteError(path, _reason(e)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _holoviews_object(obj: Any, path: Path) -> Any:
    if isinstance(obj, hv.core.dimension.Dimensioned):
        return obj
    layout = getattr(obj, "layout", None)  # e.g. views.LinkedExplorer
    if isinstance(layout, hv.core.dimension.Dimensioned):
        return layout
    raise NNVitalsError(
        f"{path}: cannot save a {type(obj).__name__}; expected a HoloViews element, overlay or layout"
    )


def _save_matplotlib(obj: Any, path: Path, fmt: str) -> None:
    import matplotlib.pyplot as plt

    if not isinstance(obj, hv.Layout | hv.NdLayout | hv.GridSpace):
        # a single panel: HoloViews wraps it in a layout that redraws the figure twice to fit
        # its aspect; a layout with an explicit size in inches skips that
        size = hv.Store.lookup_options("matplotlib", obj, "plot").kwargs.get("fig_inches")
        size = size if isinstance(size, tuple) else (6.0, 4.0)
        obj = hv.Layout([obj]).opts(backend="matplotlib", fig_inches=size, sublabel_format="")
    fig = hv.render(obj, backend="matplotlib")
    # no dates in the metadata: the same figure gives the same file
    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}.get(fmt, {})
    try:
        _atomic_write(
            path,
            lambda f: fig.savefig(
                f, format=fmt, dpi=PNG_DPI, bbox_inches="tight", metadata=metadata, facecolor="white"
            ),
        )
    finally:
        plt.close(fig)


def offline_html(model: Any, title: str) -> str:
    """A standalone HTML page for a bokeh model with everything inlined, nothing fetched.

    As ``bokeh.embed.file_html(model, INLINE)``, minus the external script and style URLs
    that loaded extension models (Panel's, once HoloViews imported it) add to every page even
    when the plot does not use them: in an offline file they are dead links.
    """
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.embed.elements import html_page_for_render_items
    from bokeh.embed.util import OutputDocumentFor, standalone_docs_json_and_render_items
    from bokeh.resources import INLINE

    def page() -> str:
        with OutputDocumentFor([model]) as doc:
            docs_json, render_items = standalone_docs_json_and_render_items(
                [model], suppress_callback_warning=True
            )
            bundle = bundle_for_objs_and_resources([doc], INLINE)
            bundle.js_files, bundle.css_files = [], []  # inline mode: BokehJS itself is in js_raw
            return html_page_for_render_items(bundle, docs_json, render_items, title=title)

    return in_own_document(page)


def in_own_document(fn: Callable[[], Any]) -> Any:
    """``fn()`` with a fresh bokeh document as ``bokeh.io.curdoc()``.

    HoloViews draws into ``curdoc()``, and Bokeh's embedding copies its JS callbacks. Inside a
    server that is a session's live page (whose theme HoloViews would set), or one destroyed with
    its session (Bokeh leaves a session's document current when a callback of it raised: exports
    then failed on it). Nothing raises out of Bokeh's ``patch_curdoc``, which would leave this
    document current too."""
    from bokeh.document import Document
    from bokeh.io.doc import patch_curdoc

    doc, out, error = Document(), None, None  # held here: Bokeh keeps only a weak reference
    with patch_curdoc(doc):
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - raised below, once the document is restored
            error = e
    if error is not None:
        raise error
    return out


def bokeh_model(obj: Any) -> Any:
    """``obj`` rendered as a bokeh model, in a document of its own (see :func:`in_own_document`)."""
    return in_own_document(lambda: hv.renderer("bokeh").get_plot_state(obj))


def _save_html(obj: Any, path: Path) -> None:
    model = bokeh_model(obj)
    html = offline_html(model, title=path.stem.replace("_", " "))
    _atomic_write(path, lambda f: f.write(html.encode("utf-8")))


def save_figure(obj: Any, path: str | os.PathLike) -> Path:
    """Write a HoloViews object to ``path``; the suffix picks the format.

    ``.svg`` / ``.png`` / ``.pdf``: rendered with matplotlib (PNG at 150 dpi). ``.html``: a
    standalone page rendered with bokeh, BokehJS inlined, so it opens offline and keeps
    zoom, pan and hover (linked selections need a live Python session, so an exported
    explorer shows its current selection). Missing directories are created. Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MPL_FORMATS and suffix not in HTML_SUFFIXES:
        raise NNVitalsError(
            f"{path}: unknown figure format {suffix or '(no suffix)'!r}; expected one of {', '.join(FIGURE_SUFFIXES)}"
        )
    obj = _holoviews_object(obj, path)
    ensure_backends()
    if suffix in HTML_SUFFIXES:
        _save_html(obj, path)
    else:
        _save_matplotlib(obj, path, MPL_FORMATS[suffix])
    return path


def save_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` (atomically, see the module docstring). Returns the path."""
    path = Path(path)
    return _atomic_write(path, lambda f: f.write(data))


def save_result(result: Any, path: str | os.PathLike) -> Path:
    """Write a result's ``.nnv`` file (:meth:`~analyses.core.result.Result.to_bytes`) to ``path``."""
    if not hasattr(result, "to_bytes"):
        raise NNVitalsError(f"{path}: expected an nnvitals result, got {type(result).__name__}")
    return save_bytes(result.to_bytes(), path)


def save_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as CSV (no index column) to ``path`` (suffix ``.csv``). Returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise NNVitalsError(f"{path}: tables are written as CSV; expected a .csv file name")
    if not isinstance(df, pd.DataFrame):
        raise NNVitalsError(f"{path}: expected a pandas DataFrame, got {type(df).__name__}")
    data = df.to_csv(index=False).encode("utf-8")
    return _atomic_write(path, lambda f: f.write(data))


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays, paths and tuples converted; NaN -> None, +-inf -> "inf"/"-inf"."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def summary_dict(result: Any) -> dict[str, Any]:
    """``{"analysis", "summary", "meta"}`` of a result, JSON-safe (see :func:`json_safe`)."""
    return json_safe(
        {
            "analysis": result.meta.get("analysis", getattr(result, "kind", "result")),
            "summary": dict(result.summary),
            "meta": dict(result.meta),
        }
    )


def write_summary(result: Any, path: str | os.PathLike) -> Path:
    """Write a result's summary and metadata as JSON to ``path`` (suffix ``.json``). Returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise NNVitalsError(f"{path}: summaries are written as JSON; expected a .json file name")
    if not hasattr(result, "summary") or not hasattr(result, "meta"):
        raise NNVitalsError(f"{path}: expected an nnvitals result, got {type(result).__name__}")
    text = json.dumps(summary_dict(result), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))
