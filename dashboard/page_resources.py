"""The scripts a served page loads: Bokeh's bundles the app uses, without the two it never does.

Panel lists every Bokeh bundle in a served page, and MathJax whenever the page has a Markdown
pane ("it may need MathJax"). nnvitals draws no TeX and no WebGL (plots are drawn on a 2D canvas,
see ``dashboard.app._canvas_plots``), so two of the page's scripts are dead weight:

- ``bokeh-mathjax.min.js``: 1.8 MB, the largest script of the page;
- ``bokeh-gl.min.js``: 0.2 MB.

Every new browser downloads, parses and compiles them (a tenth of its CPU for the first page, a
third of the JavaScript it is sent), and the server sends them: with many colleagues opening the
app at once, that is time before anyone's first plot (issue 11). :func:`install` wraps the
function Panel's server calls to list a page's resources so that those two are left out.
"""

from __future__ import annotations

from typing import Any

#: Bokeh bundles a served nnvitals page never needs
UNUSED_BUNDLES = ("bokeh-mathjax", "bokeh-gl")

_ORIGINAL: Any = None


def _lean_bundle(roots: Any, resources: Any, *args: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("enable_mathjax", False)
    if resources is not None and hasattr(resources, "components"):
        keep = [c for c in resources.components if c not in UNUSED_BUNDLES]
        if keep != list(resources.components):
            resources = resources.clone(components=keep)
    return _ORIGINAL(roots, resources, *args, **kwargs)


def install() -> None:
    """Leave the unused bundles out of every page the server sends (idempotent)."""
    global _ORIGINAL
    from panel.io import server

    if _ORIGINAL is None:
        _ORIGINAL = server.bundle_resources
        server.bundle_resources = _lean_bundle
