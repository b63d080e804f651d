"""One self-contained, offline HTML report of several analyses (``nnvitals report``, ``nnvitals track``).

A report is a title, a few intro lines and one :class:`Section` per analysis: its headline
numbers, its figures (HoloViews objects, rendered with bokeh so they keep zoom, pan and hover),
its summary text and the files it wrote; or, for an analysis that did not run, the one-line
reason. :func:`report_html` builds the page: BokehJS is inlined once for every figure (no CDN, no
``http(s)`` script or stylesheet: the file opens with no network, DESIGN.md "No external network
access at run time, including in the browser"); a figure bokeh cannot draw falls back to an
inline matplotlib SVG, and one that neither can draw is a line saying so, never a failed report.
:func:`headline_numbers` picks a result's headline numbers from its summary. Nothing here
imports Panel or any analysis family: callers build the sections.
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Section", "headline_numbers", "outside_urls", "report_html", "value_text", "write_report"]


@dataclass
class Section:
    """One analysis in a report.

    ``title``: its heading; ``anchor``: its id in the page (``section-<anchor>``); ``numbers``:
    headline (label, value) pairs; ``figures``: HoloViews objects by name; ``summary``: its
    summary text (shown as written); ``files``: the file names it wrote next to the report;
    ``reason``: why it did not run (then ``status`` says whether it was not applicable or failed).
    """

    title: str
    anchor: str
    numbers: Sequence[tuple[str, Any]] = ()
    figures: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    files: Sequence[str] = ()
    reason: str | None = None
    status: str = "ran"  # "ran", "not applicable", "failed"
    note: str = ""


def _value(v: Any) -> str:
    """A headline value in words: numbers with 4 significant digits, NaN as n/a."""
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    try:
        f = float(v)  # numpy scalars
    except (TypeError, ValueError):
        return str(v)
    return _value(int(f) if float(f).is_integer() and "int" in type(v).__name__ else f)


def value_text(v: Any) -> str:
    """A headline value as the report writes it (4 significant digits, NaN as n/a)."""
    return _value(v)


def headline_numbers(
    summary: Mapping[str, Any], keys: Iterable[str] = (), limit: int = 8
) -> list[tuple[str, Any]]:
    """(key, value) of ``summary``'s headline numbers: ``keys`` in that order where present, else
    its first ``limit`` top-level numbers (a nested ``{"models": {name: {...}}}`` is read for its
    first model)."""
    keys = list(keys)
    flat: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, Mapping) and k == "models" and v:
            first = next(iter(v.values()))
            if isinstance(first, Mapping):
                flat.update({kk: vv for kk, vv in first.items() if kk not in flat})
        elif k not in flat:
            flat[k] = v
    if keys:
        return [(k, flat[k]) for k in keys if k in flat and not isinstance(flat[k], Mapping | list | tuple)]
    nums = [(k, v) for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return nums[:limit]


# --------------------------------------------------------------------------- figures
def _element(fig: Any) -> Any:
    """The HoloViews object of a figure (an explorer's ``layout``); anything else is a TypeError."""
    import holoviews as hv

    from .export import ensure_backends

    ensure_backends()
    if isinstance(fig, hv.core.dimension.Dimensioned):
        return fig
    layout = getattr(fig, "layout", None)
    if isinstance(layout, hv.core.dimension.Dimensioned):
        return layout
    raise TypeError(f"a {type(fig).__name__} is not a HoloViews element, overlay or layout")


def _bokeh_model(fig: Any) -> Any:
    from .export import bokeh_model

    return bokeh_model(_element(fig))


def _svg(fig: Any) -> str:
    """``fig`` as an inline SVG element (matplotlib), the fallback where bokeh cannot draw it."""
    import holoviews as hv
    import matplotlib.pyplot as plt

    obj = _element(fig)
    if not isinstance(obj, hv.Layout | hv.NdLayout | hv.GridSpace):
        obj = hv.Layout([obj]).opts(backend="matplotlib", fig_inches=(6.0, 4.0), sublabel_format="")
    mfig = hv.render(obj, backend="matplotlib")
    try:
        buf = io.StringIO()
        mfig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None}, facecolor="white")
    finally:
        plt.close(mfig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # the element alone (no XML prolog or doctype)


def _render(sections: Sequence[Section]) -> tuple[dict[tuple[int, str], str], str, str]:
    """Every figure of every section: its markup by (section index, name), the bokeh script that
    draws them and the inline BokehJS (head markup)."""
    markup: dict[tuple[int, str], str] = {}
    models, keys = [], []
    for i, s in enumerate(sections):
        for name, fig in s.figures.items():
            try:
                models.append(_bokeh_model(fig))
                keys.append((i, name))
            except Exception as e:  # noqa: BLE001 (a figure that bokeh cannot draw: try matplotlib)
                try:
                    markup[(i, name)] = f'<div class="svg">{_svg(fig)}</div>'
                except Exception as e2:  # noqa: BLE001
                    why = " ".join(str(e2 or e).split()) or type(e2).__name__
                    markup[(i, name)] = (
                        f'<p class="reason">figure {html.escape(name)}: not drawn ({html.escape(why)})</p>'
                    )
    if not models:
        return markup, "", ""
    from bokeh.embed import components
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.resources import INLINE

    from .export import in_own_document

    script, divs = in_own_document(lambda: components(models))
    bundle = bundle_for_objs_and_resources(models, INLINE)
    bundle.js_files, bundle.css_files = [], []  # inline: BokehJS itself is in the raw scripts
    js, css = bundle
    for key, div in zip(keys, divs, strict=True):
        markup[key] = f'<div class="plot">{div}</div>'
    return markup, script, f"{css}\n{js}"


# --------------------------------------------------------------------------- page
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1.5em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.intro { color: #555; margin: 0.2em 0; }
nav ul { padding-left: 1.2em; } nav li { margin: 0.15em 0; }
.badge { display: inline-block; font-size: 0.8em; padding: 0.05em 0.5em; border-radius: 0.6em;
         margin-left: 0.5em; vertical-align: middle; }
.badge.ran { background: #e3f1e6; color: #1d5e2c; } .badge.failed { background: #f8e1e1; color: #8a1c1c; }
.badge.na { background: #eee; color: #555; }
table.numbers { border-collapse: collapse; margin: 0.6em 0; }
table.numbers th, table.numbers td { border: 1px solid #ddd; padding: 0.2em 0.7em; text-align: left; }
table.numbers td { font-variant-numeric: tabular-nums; }
pre.summary { background: #f7f7f7; padding: 0.8em; overflow-x: auto; white-space: pre-wrap; }
.reason { color: #8a1c1c; } .files { color: #555; font-size: 0.9em; }
.plot, .svg { margin: 1em 0; } .svg svg { max-width: 100%; height: auto; }
"""


def _status_class(status: str) -> str:
    return {"ran": "ran", "failed": "failed"}.get(status, "na")


def report_html(title: str, sections: Sequence[Section], intro: Sequence[str] = ()) -> str:
    """The report page (see the module docstring)."""
    markup, script, head = _render(sections)
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        head,
        "</head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
    ]
    out += [f'<p class="intro">{esc(line)}</p>' for line in intro]
    out.append("<nav><ul>")
    for s in sections:
        out.append(
            f'<li><a href="#section-{esc(s.anchor)}">{esc(s.title)}</a>'
            f'<span class="badge {_status_class(s.status)}">{esc(s.status)}</span></li>'
        )
    out.append("</ul></nav>")
    for i, s in enumerate(sections):
        out.append(f'<section id="section-{esc(s.anchor)}" class="analysis {_status_class(s.status)}">')
        out.append(
            f'<h2>{esc(s.title)}<span class="badge {_status_class(s.status)}">{esc(s.status)}</span></h2>'
        )
        if s.reason:
            out.append(f'<p class="reason">{esc(s.reason)}</p>')
        if s.note:
            out.append(f'<p class="intro">{esc(s.note)}</p>')
        if s.numbers:
            out.append('<table class="numbers"><tbody>')
            out += [f"<tr><th>{esc(str(k))}</th><td>{esc(_value(v))}</td></tr>" for k, v in s.numbers]
            out.append("</tbody></table>")
        if s.summary:
            out.append(f'<pre class="summary">{esc(s.summary)}</pre>')
        out += [markup[(i, name)] for name in s.figures if (i, name) in markup]
        if s.files:
            out.append(f'<p class="files">files: {esc(", ".join(s.files))}</p>')
        out.append("</section>")
    out += [script, "</body>", "</html>", ""]
    return "\n".join(out)


def write_report(
    path: str | os.PathLike, title: str, sections: Sequence[Section], intro: Sequence[str] = ()
) -> Path:
    """Write :func:`report_html` to ``path`` (atomically; a write error names the file)."""
    from .export import save_bytes

    return save_bytes(report_html(title, sections, intro).encode("utf-8"), path)


def outside_urls(text: str) -> list[str]:
    """The ``src``/``href`` (and the like) attributes of the page's tags that point outside the
    file: any URL with a scheme other than ``data:``, or starting ``//`` (script bodies are not
    tags and are not read)."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Links(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(
                v for k, v in attrs if k in ("src", "href", "srcset", "data", "action", "poster") and v
            )

    parser = Links()
    parser.feed(text)
    parser.close()
    outside = re.compile(r"^\s*([a-z][a-z0-9+.-]*:|//)", re.I)
    return [u for u in found if outside.match(u) and not u.strip().lower().startswith("data:")]
