"""HoloViews views of an :class:`~analyses.orbits.analysis.OrbitResult` (NERO plots, reference §2).

- :func:`aggregate_plot`: the aggregate NERO plot, models overlaid. Rotation orbits are drawn in
  polar form (direction = angle, radius = mean score, rings every 0.2): a circle means
  equivariant. Scale orbits and unbounded scores (logit margin) are drawn against the group
  parameter; flips as bars; shifts (two parameters) as :func:`heatmap`.
- :func:`heatmap`: a two-parameter orbit (dx, dy) as a grid, viridis fixed to [0, 1].
- :func:`sample_scatter`: every sample's orbit vector reduced to 2-D (PCA, or t-SNE), coloured
  by the mean or the variance of its scores; tap a point to select a sample.
- :func:`individual_plot`: one sample's scores along the orbit, a marker at the chosen element.
- :func:`detail_view`: that sample transformed by the chosen element, with the model's class
  probabilities there.
- :func:`orbit_explorer`: all of the above linked (tap a sample; pick an element).

Styled for bokeh and matplotlib alike; no Panel import here. Sized so that a page lays two
rows of them out in the main column of a 1280 px wide window (about 940 px): the aggregate plot
and the scatter side by side, then a sample's plot, its image and its class probabilities.
Legends sit outside the polar plots (below them), titles stay short (how to use a plot belongs in
the page's notes), and tooltips name what they show in plain words.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd

from ..core.errors import NNVitalsError
from ..core.plotting import apply_opts, format_number, grid_layout, message_panel, style_line, style_panel

__all__ = [
    "MODEL_COLORS",
    "OrbitExplorer",
    "aggregate_plot",
    "class_probabilities",
    "detail_view",
    "embed_samples",
    "heatmap",
    "individual_plot",
    "main_figures",
    "orbit_explorer",
    "sample_scatter",
    "summary_text",
    "transformed_image",
]

#: models overlaid in distinct colours (Paul Tol's colour-blind safe "bright" scheme)
MODEL_COLORS = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")
SCORE_LABELS = {
    "probability": "true-class probability",
    "correct": "accuracy",
    "margin": "logit margin",
    "consensus": "consensus probability",
}
BOUNDED = {"probability", "correct", "consensus"}
#: side in pixels of the polar plots' drawing area: the aggregate one, and a sample's own
POLAR_SIDE = 330
SAMPLE_POLAR_SIDE = 290
#: bokeh sizes of the other panels (toolbar included)
SCATTER_SIZE = dict(width=500, height=400)
LINE_SIZE = dict(width=400, height=360)
SAMPLE_SIZE = dict(width=340, height=320)
IMAGE_SIZE = dict(width=250, height=250)
PROBS_SIZE = dict(width=300, height=270)
#: pixels per character of a legend label (9pt) and per entry for its glyph and spacing
LEGEND_CHAR_PX, LEGEND_ENTRY_PX = 6.0, 40
#: most characters of a model's name in a title
NAME_CHARS = 22


#: the groups whose two elements are drawn as bars
FLIPS = ("flip", "time-flip")
#: x axis titles of the line plots, by element column
AXIS_LABELS = {"scale": "scale factor", "angle": "angle (degrees)", "shift": "shift (samples)"}


def _check(result) -> None:
    if not hasattr(result, "scores") or not hasattr(result, "elements"):
        raise NNVitalsError(
            f"result: got {type(result).__name__}; expected an OrbitResult (OrbitAnalysis.run())"
        )


def _color(i: int) -> str:
    return MODEL_COLORS[i % len(MODEL_COLORS)]


def _score_label(result) -> str:
    return SCORE_LABELS.get(result.meta.get("score", "probability"), "score")


def _polar(result) -> bool:
    return result.group in ("rotation", "rotation-flip") and result.meta.get("score") in BOUNDED


def _curve_title(classes) -> str:
    """``all classes``, ``classes 3, 8`` or, for more than three, ``5 classes`` (titles stay short)."""
    if not classes:
        return "all classes"
    return f"classes {', '.join(map(str, classes))}" if len(classes) <= 3 else f"{len(classes)} classes"


def _short(name: str, chars: int = NAME_CHARS) -> str:
    """A model's name cut to ``chars`` characters for a title (the full name is in the legend)."""
    name = str(name)
    return name if len(name) <= chars else name[: chars - 1] + "…"


def _tip(text: str) -> str:
    """A literal for a bokeh tooltip (its ``@``/``$`` fields and ``{}`` formats not interpreted)."""
    return text.replace("@", "").replace("$", "").replace("{", "(").replace("}", ")")


# --------------------------------------------------------------------------- polar machinery
def _polar_frame(title: str) -> hv.Overlay:
    """Rings at 0.2 .. 1.0 and spokes every 45 degrees, labelled (few elements: legends stay on)."""
    t = np.linspace(0, 2 * np.pi, 181)
    inner = hv.Path([np.c_[r * np.cos(t), r * np.sin(t)] for r in (0.2, 0.4, 0.6, 0.8)], ["x", "y"])
    outer = hv.Path([np.c_[np.cos(t), np.sin(t)]], ["x", "y"])
    deg = np.arange(0, 360, 45)
    c, sn = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    spokes = hv.Path([np.array([[0.0, 0.0], [x, y]]) for x, y in zip(c, sn)], ["x", "y"])
    rings = hv.Labels({"x": [0.02] * 5, "y": [0.23, 0.43, 0.63, 0.83, 1.03], "text": ["0.2", "0.4", "0.6", "0.8", "1.0"]},
                      ["x", "y"], "text")  # fmt: skip
    angles = hv.Labels({"x": 1.13 * c, "y": 1.13 * sn, "text": [f"{d}°" for d in deg]}, ["x", "y"], "text")
    return hv.Overlay(
        [
            style_line(inner, "#BBBBBB", 0.7, "dotted"),
            style_line(outer, "#BBBBBB", 1.0),
            style_line(spokes, "#DDDDDD", 0.7),
            apply_opts(
                rings,
                None,
                dict(text_color="#888888", text_font_size="7pt", text_align="left"),
                dict(color="#888888", size=7, horizontalalignment="left"),
            ),
            apply_opts(
                angles, None, dict(text_color="#666666", text_font_size="8pt"), dict(color="#666666", size=8)
            ),
        ]
    )


def _size_to_frame(plot, element) -> None:
    """Bokeh hook: the figure's size follows its fixed square frame, legend below included (a set
    height would squeeze the frame to make room for the legend, and the circle would flatten)."""
    plot.state.width = None
    plot.state.height = None


def _legend_below(obj, width: float) -> dict:
    """Bokeh options of a legend under the plot, outside the data (inside, a corner can cover a
    curve), in as many columns as fit ``width`` pixels."""
    labels = list(
        dict.fromkeys(el.label for el in (obj if isinstance(obj, hv.Overlay) else [obj]) if el.label)
    )
    widest = max((len(t) for t in labels), default=10) * LEGEND_CHAR_PX + LEGEND_ENTRY_PX
    cols = int(max(1, min(len(labels) or 1, width // widest)))
    return dict(
        legend_position="bottom",
        legend_cols=cols,
        legend_opts={"background_fill_alpha": 0.0, "border_line_alpha": 0.0, "label_text_font_size": "9pt"},
    )


def _with_hook(obj, hook):
    """``obj`` with the bokeh ``hook`` run after the hooks it has already (the shared panel's)."""
    have = hv.Store.lookup_options("bokeh", obj, "plot").kwargs.get("hooks") or []
    return obj.opts(backend="bokeh", hooks=[*[h for h in have if h is not hook], hook])


def _polar_panel(over, title: str, side: int = POLAR_SIDE, legend: bool = True):
    """A square polar panel, its legend below the circle (inside, it would cover part of it)."""
    lim = (-1.25, 1.25)
    panel = style_panel(
        over,
        title,
        "",
        "",
        legend="bottom" if legend else None,
        xaxis=None,
        yaxis=None,
        xlim=lim,
        ylim=lim,
        show_grid=False,
        padding=0,
    ).opts(
        backend="bokeh",
        frame_width=side,
        frame_height=side,
        width=None,
        height=None,
        **(_legend_below(over, side) if legend else {}),
    )
    return _with_hook(panel, _size_to_frame).opts(backend="matplotlib", fig_inches=(4.6, 5.0), aspect="equal")


def _polar_curve(
    angles: np.ndarray,
    values: np.ndarray,
    label: str,
    color: str,
    dash: str = "solid",
    score: str = "score",
    flip: str | None = None,
):
    """A closed polar line (the first point repeated at 360 degrees); its tooltip says the model,
    the angle (and the flip) and the score in words."""
    a = np.append(angles, angles[0] + 360.0)
    v = np.append(values, values[0])
    r = np.clip(v, 0.0, None)
    df = pd.DataFrame(
        {
            "x": r * np.cos(np.radians(a)),
            "y": r * np.sin(np.radians(a)),
            "angle": np.mod(a, 360.0),
            "score": v,
        }
    )
    curve = hv.Curve(df, "x", ["y", "angle", "score"], label=label)
    tips = [("Model", _tip(label)), ("Angle", "@angle{0.[0]}°"), (score.capitalize(), "@score{0.000}")]
    if flip is not None:
        tips.insert(2, ("Flip", flip))
    return apply_opts(style_line(curve, color, 2.2, dash), bokeh=dict(tools=["hover"], hover_tooltips=tips))


# --------------------------------------------------------------------------- aggregate
def aggregate_plot(result, classes: list[int] | None = None, models: list[str] | None = None) -> hv.Overlay:
    """The aggregate NERO plot: mean score per group element, one line per model."""
    _check(result)
    els = result.elements
    models = models or result.models
    ylabel = _score_label(result)
    title = f"Mean {ylabel}" + (f", {_curve_title(classes)}" if classes else " (all classes)")
    if result.group == "rotation-flip" and _polar(result):  # one legend entry per model: dashes say the flip
        title = "Mean score" + (f", {_curve_title(classes)}" if classes else "") + " (dashed: mirrored)"
    if result.group == "shift":
        return heatmap(result, models[0], classes)
    curves = []
    for name in models:
        i = result.models.index(name)
        curve = result.aggregate(name, classes)
        if result.group in ("rotation", "rotation-flip") and _polar(result):
            for f in (0, 1) if result.group == "rotation-flip" else (0,):
                keep = els.params["flip"] == f if result.group == "rotation-flip" else slice(None)
                curves.append(
                    _polar_curve(
                        els.params["angle"][keep],
                        curve[keep],
                        name,
                        _color(i),
                        "dashed" if f else "solid",
                        ylabel,
                        None if result.group == "rotation" else ("mirrored" if f else "upright"),
                    )
                )
        elif result.group in FLIPS:
            df = pd.DataFrame(
                {"flip": [els.label(j) for j in range(len(els))], "score": curve, "model": name}
            )
            curves.append(df)
        else:
            col = els.columns()[0]
            x, xl = els.params[col], AXIS_LABELS.get(col, col)
            line = hv.Curve((x, curve), xl, ylabel, label=name)
            curves.append(apply_opts(style_line(line, _color(i), 2.0), bokeh=dict(tools=["hover"])))
    if result.group in FLIPS:
        df = pd.concat(curves, ignore_index=True)
        # grouped by model (its name has room under its pair of bars), coloured as in the other plots
        df["color"] = df["model"].map({m: _color(result.models.index(m)) for m in models})
        flip_dim = hv.Dimension("flip", values=[els.label(j) for j in range(len(els))])
        bars = hv.Bars(df, ["model", flip_dim], ["score", "color"])
        bars = apply_opts(
            bars,
            dict(ylim=(0, 1.05) if result.meta.get("score") in BOUNDED else None),
            dict(
                color=hv.dim("color"),
                xrotation=30,
                tools=["hover"],
                default_tools=["save", "reset"],
                hover_tooltips=[
                    ("Model", "@model"),
                    ("Flip", "@flip"),
                    (ylabel.capitalize(), "@score{0.000}"),
                ],
            ),
        )
        bars = style_panel(bars, title, "model, flip", ylabel, legend=None).opts(backend="bokeh", **LINE_SIZE)
        return bars.opts(backend="matplotlib", hooks=[_mpl_bar_colors])
    if _polar(result):
        return _polar_panel(_polar_frame(title) * hv.Overlay(curves), title)
    extra = {"ylim": (0, 1.02)} if result.meta.get("score") in BOUNDED else {}
    return style_panel(
        hv.Overlay(curves), title, curves[0].kdims[0].label, ylabel, legend="bottom", **extra
    ).opts(backend="bokeh", **LINE_SIZE, **_legend_below(hv.Overlay(curves), LINE_SIZE["width"] - 80))


def heatmap(
    result, model: str | int = 0, classes: list[int] | None = None, row: int | None = None
) -> hv.Image:
    """A shift orbit as a (dx, dy) grid of mean scores (or one sample's when ``row`` is given)."""
    _check(result)
    if result.group != "shift":
        raise NNVitalsError(f"heatmap: needs a shift orbit, this result walks a {result.group} orbit")
    els = result.elements
    name = result.models[model] if isinstance(model, int) else model
    vals = result.scores(name)[row] if row is not None else result.aggregate(name, classes)
    dxs, dys = np.unique(els.params["dx"]), np.unique(els.params["dy"])
    grid = np.full((len(dys), len(dxs)), np.nan)
    grid[np.searchsorted(dys, els.params["dy"]), np.searchsorted(dxs, els.params["dx"])] = vals
    step_x = dxs[1] - dxs[0] if len(dxs) > 1 else 1.0
    step_y = dys[1] - dys[0] if len(dys) > 1 else 1.0
    bounds = (dxs[0] - step_x / 2, dys[0] - step_y / 2, dxs[-1] + step_x / 2, dys[-1] + step_y / 2)
    # image rows run top to bottom: flip so dy grows downwards on screen as it does in the image
    img = hv.Image(grid[::-1], bounds=bounds, kdims=["dx", "dy"], vdims=[_score_label(result)])
    bounded = result.meta.get("score") in BOUNDED
    what = f"sample {int(result.samples[row])}" if row is not None else _curve_title(classes)
    tips = [("Shift", "($x{0.[00]}, $y{0.[00]}) px"), (_score_label(result).capitalize(), "@image{0.000}")]
    img = apply_opts(
        img,
        dict(cmap="viridis", colorbar=True, clim=(0.0, 1.0) if bounded else (None, None)),
        dict(tools=["hover"], hover_tooltips=tips, invert_yaxis=True),
        dict(invert_yaxis=True, fig_inches=(4.8, 4.2)),
    )
    title = f"{_short(name)}: {what}" if row is not None else f"{_short(name)}, {what}"
    return style_panel(img, title, "dx (pixels)", "dy (pixels)", legend=None, padding=0).opts(
        backend="bokeh", **(LINE_SIZE if row is None else SAMPLE_SIZE)
    )


# --------------------------------------------------------------------------- samples
def embed_samples(result, model: str | int = 0, method: str = "pca", seed: int = 0) -> np.ndarray:
    """``(N, 2)`` coordinates of each sample's orbit vector (its scores along the orbit).

    ``pca``: projection on the two leading principal components (SVD of the centred matrix);
    ``tsne``: scikit-learn's t-SNE (perplexity adapted to small sets), seeded.
    """
    s = np.asarray(result.scores(model), dtype=np.float64)
    if len(s) < 2:
        return np.zeros((len(s), 2))
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (len(s) - 1) / 3)))
        return TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(s)
    if method != "pca":
        raise NNVitalsError(f"method {method!r}: expected 'pca' or 'tsne'")
    c = s - s.mean(axis=0)
    u, sv, _ = np.linalg.svd(c, full_matrices=False)
    out = u[:, :2] * sv[:2]
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out


def _sample_frame(result, model, method: str, color: str) -> pd.DataFrame:
    xy = embed_samples(result, model, method)
    s = result.scores(model)
    return pd.DataFrame(
        {
            "pc1": xy[:, 0],
            "pc2": xy[:, 1],
            "sample": result.samples,
            "label": result.labels,
            "mean": s.mean(axis=1),
            "variance": s.var(axis=1),
        }
    )


def sample_scatter(result, model: str | int = 0, method: str = "pca", color: str = "mean") -> hv.Points:
    """Each sample's orbit vector in 2-D, coloured by the ``mean`` or ``variance`` of its scores."""
    _check(result)
    if color not in ("mean", "variance"):
        raise NNVitalsError(f"color {color!r}: expected 'mean' or 'variance'")
    name = result.models[model] if isinstance(model, int) else model
    df = _sample_frame(result, name, method, color)
    axes = ("PC 1", "PC 2") if method == "pca" else ("t-SNE 1", "t-SNE 2")
    vd = [color, "sample", "label"] + [c for c in ("mean", "variance") if c != color]
    pts = hv.Points(df, ["pc1", "pc2"], vd)
    clim = (0.0, 1.0) if color == "mean" and result.meta.get("score") in BOUNDED else (None, None)
    tips = [
        ("Sample", "@sample (label @label)"),
        ("Mean score", "@mean{0.000}"),
        ("Score variance", "@variance{0.0000}"),
    ]
    pts = apply_opts(
        pts,
        dict(color=color, cmap="viridis", colorbar=True, clim=clim),
        dict(
            tools=["tap", "hover"],
            hover_tooltips=tips,
            size=7,
            line_color="white",
            line_width=0.4,
            nonselection_alpha=0.35,
            selection_line_color="#CC3311",
            selection_line_width=2.0,
        ),  # fmt: skip
        dict(s=18),
    )
    title = f"{_short(name, 18)}: samples, {color} score"
    return style_panel(pts, title, axes[0], axes[1], legend=None).opts(backend="bokeh", **SCATTER_SIZE)


def individual_plot(
    result, row: int, element: int | None = None, models: list[str] | None = None, legend: bool = True
):
    """The NERO plot of one sample (``row``: its position in the result), all models overlaid.
    ``legend=False`` for a page showing it under the aggregate plot's legend (the same colours)."""
    _check(result)
    els = result.elements
    models = models or result.models
    n = len(result.samples)
    if not 0 <= row < n:
        raise NNVitalsError(f"sample row {row}: expected 0..{n - 1}")
    title = f"Sample {int(result.samples[row])} (label {int(result.labels[row])})"
    if result.group == "rotation-flip" and _polar(result):
        title = f"Sample {int(result.samples[row])} (dashed: mirrored)"
    if result.group == "shift":
        return heatmap(result, models[0], row=row)
    parts = []
    for name in models:
        i = result.models.index(name)
        vals = result.scores(name)[row]
        if _polar(result):
            flips = (0, 1) if result.group == "rotation-flip" else (0,)
            for f in flips:
                keep = els.params["flip"] == f if result.group == "rotation-flip" else slice(None)
                parts.append(
                    _polar_curve(
                        els.params["angle"][keep],
                        vals[keep],
                        name,
                        _color(i),
                        "dashed" if f else "solid",
                        _score_label(result),
                        None if len(flips) == 1 else ("mirrored" if f else "upright"),
                    )
                )
            if element is not None:
                a, r = float(els.params["angle"][element]), max(0.0, float(vals[element]))
                dot = hv.Points([(r * math.cos(math.radians(a)), r * math.sin(math.radians(a)))], ["x", "y"])
                parts.append(
                    apply_opts(dot, dict(color=_color(i)), dict(size=11, line_color="black"), dict(s=60))
                )
        else:
            x = np.arange(len(els)) if result.group in FLIPS else els.params[els.columns()[0]]
            xl = AXIS_LABELS.get(els.columns()[0], els.columns()[0])
            ticks = [(j, els.label(j)) for j in range(len(els))] if result.group in FLIPS else None
            parts.append(
                apply_opts(
                    style_line(hv.Curve((x, vals), xl, _score_label(result), label=name), _color(i), 2.0),
                    dict(xticks=ticks) if ticks else None,
                    bokeh=dict(tools=["hover"]),
                )
            )
            if element is not None:
                dot = hv.Points([(float(x[element]), float(vals[element]))], [xl, _score_label(result)])
                parts.append(
                    apply_opts(dot, dict(color=_color(i)), dict(size=11, line_color="black"), dict(s=60))
                )
    # the chosen element is the marker (and the next panel's title): the title stays short
    if _polar(result):
        return _polar_panel(_polar_frame(title) * hv.Overlay(parts), title, SAMPLE_POLAR_SIDE, legend)
    extra = {"ylim": (0, 1.02)} if result.meta.get("score") in BOUNDED else {}
    xl = parts[0].kdims[0].label
    over = style_panel(
        hv.Overlay(parts), title, xl, _score_label(result), legend="bottom" if legend else None, **extra
    )
    below = _legend_below(hv.Overlay(parts), SAMPLE_SIZE["width"] - 80) if legend else {}
    return over.opts(backend="bokeh", **SAMPLE_SIZE, **below)


def transformed_image(result, row: int, element: int = 0):
    """Sample ``row`` (its position in the result) under group element ``element``, in gray."""
    _check(result)
    els = result.elements
    if not 0 <= element < len(els):
        raise NNVitalsError(f"element {element}: expected 0..{len(els) - 1}")
    what = f"Sample {int(result.samples[row])} at {els.label(element)}"
    if result.images is None:
        return message_panel(what, "the result did not keep its images").opts(backend="bokeh", **IMAGE_SIZE)
    if getattr(result, "signals", False):
        return _signal_panel(result.transformed(row, element), what)
    gray = result.transformed(row, element).mean(axis=0)
    h, w = gray.shape
    im = hv.Image(gray[::-1], bounds=(0, 0, w, h), kdims=["x", "y"], vdims=["intensity"])
    im = apply_opts(
        im,
        dict(cmap="gray", clim=(0.0, 1.0), xaxis=None, yaxis=None),
        dict(tools=[], default_tools=[]),
        dict(fig_inches=(3.0, 3.0)),
    )
    im = style_panel(im, what, "", "", legend=None, padding=0, show_grid=False)
    return im.opts(backend="bokeh", toolbar=None, **IMAGE_SIZE)


def _signal_panel(sig: np.ndarray, what: str):
    """A transformed 1-D signal ``(C, L)``: one line per channel against the sample index."""
    t = np.arange(sig.shape[-1])
    lines = [
        style_line(hv.Curve((t, sig[c]), "sample", "value", label=f"channel {c}"), _color(c), 1.6)
        for c in range(sig.shape[0])
    ]
    over = style_panel(
        hv.Overlay(lines), what, "sample", "value", legend="bottom" if len(lines) > 1 else None
    )
    return over.opts(backend="bokeh", **IMAGE_SIZE)


def _mpl_bar_colors(plot, element) -> None:
    """Matplotlib hook: per-bar colours from the ``color`` column (its Bars ignore colour dims)."""
    ax = plot.handles.get("axis")
    if ax is not None:
        for patch, c in zip(ax.patches, element.dimension_values("color")):
            patch.set_facecolor(c)


def class_probabilities(result, row: int, element: int = 0, model: str | int = 0):
    """The model's class probabilities for sample ``row`` at ``element`` (label green, top-1 red)."""
    _check(result)
    name = result.models[model] if isinstance(model, int) else model
    probs = result.probs(name)
    if probs is None:
        return message_panel(f"{_short(name)}: class probabilities", "not kept for a result this large").opts(
            backend="bokeh", **PROBS_SIZE
        )
    p = probs[row, element]
    label, pred = int(result.labels[row]), int(np.argmax(p))
    colors = ["#228833" if k == label else ("#CC3311" if k == pred else "#BBBBBB") for k in range(len(p))]
    df = pd.DataFrame({"class": [str(k) for k in range(len(p))], "probability": p, "color": colors})
    bars = hv.Bars(df, "class", ["probability", "color"])
    tips = [("Class", "@class"), ("Probability", "@probability{0.000}")]
    bars = apply_opts(
        bars,
        dict(ylim=(0, 1.02)),
        dict(color=hv.dim("color"), tools=["hover"], default_tools=["save", "reset"], hover_tooltips=tips),
    )
    ylabel = f"{_short(name, 16)}: probability"
    bars = style_panel(bars, f"Predicts {pred} (label {label})", "class", ylabel, legend=None)
    bars = bars.opts(backend="bokeh", **PROBS_SIZE)
    return bars.opts(backend="matplotlib", hooks=[_mpl_bar_colors])  # after style_panel, which sets hooks


def detail_view(result, row: int, element: int = 0, model: str | int = 0) -> hv.Layout:
    """Sample ``row`` under group element ``element`` and the model's class probabilities there."""
    panels = [transformed_image(result, row, element), class_probabilities(result, row, element, model)]
    return grid_layout(panels, 2, (4.0, 3.6))


# --------------------------------------------------------------------------- linked explorer
@dataclass
class OrbitExplorer:
    """Linked orbit views: tap a sample in the scatter, its NERO plot and detail follow.

    - ``layout``: aggregate plot, sample scatter, individual plot, transformed sample + probabilities;
    - ``selection``: :class:`holoviews.streams.Selection1D` on the scatter (row positions);
    - ``element``: a stream whose ``position`` is the index of the group element shown; a page
      binds a slider to it (``explorer.element.event(position=k)``), :meth:`show` does both.
    """

    layout: hv.Layout
    selection: hv.streams.Selection1D
    element: hv.streams.Stream
    model: str = ""
    panels: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.layout, self.selection, self.element))

    @property
    def row(self) -> int:
        idx = self.selection.index or [0]
        return int(idx[0])

    def show(self, row: int | None = None, element: int | None = None) -> None:
        """Select sample ``row`` and/or element ``element`` (as tapping and sliding would)."""
        if row is not None:
            self.selection.event(index=[int(row)])
        if element is not None:
            self.element.event(position=int(element))

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.layout._repr_mimebundle_(include, exclude)

    def __panel__(self):
        return self.layout


#: the chosen orbit position (its stream parameter is not called "element": HoloViews passes an
#: argument of that name to the callbacks of operations applied to a DynamicMap)
ElementStream = hv.streams.Stream.define("OrbitPosition", position=0)


def orbit_explorer(
    result, model: str | int = 0, method: str = "pca", color: str = "mean", classes: list[int] | None = None
) -> OrbitExplorer:
    """All orbit views of a result, linked (see :class:`OrbitExplorer`)."""
    _check(result)
    name = result.models[model] if isinstance(model, int) else model
    agg = aggregate_plot(result, classes)
    scatter = sample_scatter(result, name, method, color)
    pts = scatter if isinstance(scatter, hv.Points) else scatter.get(0)
    selection = hv.streams.Selection1D(source=pts, index=[0])
    element = ElementStream(position=0)
    n = len(result.samples)

    def _row(index) -> int:
        for i in index or []:
            if 0 <= int(i) < n:
                return int(i)
        return 0

    last = len(result.elements) - 1

    def _individual(index, position):
        return individual_plot(result, _row(index), min(max(0, int(position)), last), legend=False)

    def _image(index, position):
        return transformed_image(result, _row(index), min(max(0, int(position)), last))

    def _probs(index, position):
        return class_probabilities(result, _row(index), min(max(0, int(position)), last), name)

    ind = hv.DynamicMap(_individual, streams=[selection, element])
    img = hv.DynamicMap(_image, streams=[selection, element])
    bars = hv.DynamicMap(_probs, streams=[selection, element])

    def _forget(**_):
        for dmap in (ind, img, bars):
            dmap.data.clear()

    selection.add_subscriber(_forget, precedence=10)
    element.add_subscriber(_forget, precedence=10)
    layout = hv.Layout([agg, scatter, ind, img, bars]).cols(3)
    return OrbitExplorer(
        layout,
        selection,
        element,
        name,
        {"aggregate": agg, "scatter": scatter, "individual": ind, "image": img, "probabilities": bars},
    )


# --------------------------------------------------------------------------- CLI figures
def summary_text(result) -> str:
    """One line per model: mean score and the gap between the best and worst element."""
    lines = []
    for name, s in result.summary.get("models", {}).items():
        line = f"{name}: mean {format_number(s['mean_score'], '.3f')}, gap {format_number(s['gap'], '.3f')}"
        line += f" (best {s['best']}, worst {s['worst']})"
        if "gap_at_90" in s:
            line += f", gap at multiples of 90° {format_number(s['gap_at_90'], '.2g')}"
        lines.append(line)
    return "\n".join(lines)


def main_figures(result) -> dict[str, Any]:
    """The figures the CLI writes, by file stem: ``aggregate`` (all models), per model a
    ``samples_<i>`` scatter, and for shift orbits a ``heatmap_<i>`` per model."""
    _check(result)
    figs: dict[str, Any] = {"aggregate": aggregate_plot(result)}
    for i, name in enumerate(result.models):
        figs[f"samples_{i}"] = sample_scatter(result, name)
        if result.group == "shift":
            figs[f"heatmap_{i}"] = heatmap(result, name)
    if result.group != "shift":
        # the sample with the widest swing along the orbit, in the first model
        row = int(np.argmax(np.ptp(result.scores(0), axis=1)))
        figs["individual_widest"] = individual_plot(result, row)
    return figs
