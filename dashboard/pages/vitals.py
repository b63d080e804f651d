"""The Vitals page (the app's landing page): one model's vital signs at a glance.

For the sidebar's model, one card per analysis (:data:`KINDS`): Spectra always; Orbits, IBP
tightness and Lipschitz when the model runs (a demo model or a ``.pt2`` export); Connectivity when
the model has a demo partner of the same architecture (else the card says what it needs). A card
shows the analysis's headline numbers (picked as ``nnvitals report`` picks them:
:func:`analyses.core.report.headline_numbers` over the registry entry's ``numbers``), a warning
colour and one line per reading that is off (:data:`RULES`, the one place the thresholds live), a
small plot of the result and a button that opens the analysis's page.

Cards read the result store only: a card looks up the result its page would show for this model
with the page's default settings (the same store key; or the key ``nnvitals report`` would use),
so building the page computes nothing, and a card whose result is not stored says "not run yet".
**Run what is missing** runs the missing analyses (with the pages' defaults, so their pages then
open from the store) in a :class:`~dashboard.components.jobs.JobPanel` (progress, Cancel), and each
card fills as its analysis finishes.

Cost per session: this page is built for every new browser session, so building it does no torch
work and loads no model. Making a store key needs the model's fingerprint (and the data's), so the
keys are made once per model and process, off the event loop (:data:`LOOKUP_WORKERS` threads of
their own), and remembered (:func:`lookup`); results read from the store are remembered by key
(:data:`RESULT_MEMO` of them). A session opening on a model already looked up fills its cards
while the page is built, from memory. The small plots are inline SVG drawn here from the result's
table (a few hundred bytes each, no bokeh document per card), except the Spectra card's: the one
with a result from start-up is a plain Bokeh figure on a canvas (:func:`card_figure`, milliseconds
to build), so the landing page shows a real plot. The analyses' own views are one click away on
their pages.
"""

from __future__ import annotations

import html
import logging
import math
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import panel as pn
import param

from analyses import registry
from analyses.core.errors import Cancelled, NNVitalsError
from analyses.core.report import headline_numbers, value_text
from analyses.zoo import DEMO_MODELS

from .. import style
from ..components.jobs import JobPanel, in_server, loop_timer
from ..components.page import model_label, page_head, section_heading
from ..components.timer import SessionTimer
from ..settings import AppSettings

log = logging.getLogger("nnvitals.app")

#: the cards, in order (registry commands)
KINDS = ("spectra", "orbits", "ibp", "lipschitz", "connectivity")
#: headline numbers a card shows (the first of the entry's ``numbers`` the result has)
CARD_NUMBERS = 4
#: threads that make store keys (model and data fingerprints) for every session
LOOKUP_WORKERS = 2
#: results read from the store kept in memory (by key), shared by the sessions
RESULT_MEMO = 64


# --------------------------------------------------------------------------- warning rules
@dataclass(frozen=True)
class Rule:
    """A reading that is off: ``key`` of the ``kind``'s headline numbers below ``low`` or above
    ``high``; ``why`` is what the card says (``{value}`` is the reading)."""

    kind: str
    key: str
    low: float | None = None
    high: float | None = None
    why: str = ""

    def broken(self, value: Any) -> bool:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        if not math.isfinite(v):
            return False
        return (self.low is not None and v < self.low) or (self.high is not None and v > self.high)


#: Every warning threshold of the page, in one place.
#:
#: - Spectra ``alpha`` (mean power-law exponent over the analysed layers) outside 2..6: WeightWatcher
#:   reads alpha < 2 as over-trained (over-fit, very heavy tails) and alpha > 6 as under-trained.
#: - IBP ``certified_accuracy`` below 0.5 at the page's eps (0.01): fewer than half the samples are
#:   certified; ``tightness`` below 0.01: the interval bounds are 100 times looser than the
#:   local linear bound (Mao et al. 2024; 1 = exact).
#: - Lipschitz ``ratio`` (certified upper / empirical lower bound) above 10: the certified bound is
#:   an order of magnitude above anything the data shows, it says little about the function.
#: - Orbits ``gap`` (NERO: mean score at the best group element minus at the worst) above 0.2: the
#:   model's score moves by more than 0.2 along the orbit; it is far from invariant.
#: - Connectivity ``barrier_matched`` (loss barrier on the linear path after weight matching) above
#:   0.1: no low-loss path between the two models even after alignment.
RULES: tuple[Rule, ...] = (
    Rule("spectra", "alpha", low=2.0, why="alpha {value} below 2: over-trained layers (WeightWatcher)"),
    Rule("spectra", "alpha", high=6.0, why="alpha {value} above 6: under-trained layers (WeightWatcher)"),
    Rule("ibp", "certified_accuracy", low=0.5, why="certified accuracy {value} below 0.5"),
    Rule("ibp", "tightness", low=0.01, why="tightness {value} below 0.01: interval bounds very loose"),
    Rule("lipschitz", "ratio", high=10.0, why="upper / lower bound {value} above 10: the bound is loose"),
    Rule("orbits", "gap", high=0.2, why="NERO gap {value} above 0.2: far from invariant"),
    Rule("connectivity", "barrier_matched", high=0.1, why="matched barrier {value} above 0.1: no low-loss path"),
)  # fmt: skip


def warnings_for(kind: str, numbers: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> list[str]:
    """The warning lines of ``kind``'s headline numbers (:data:`RULES`), one per broken rule."""
    values = dict(numbers)
    return [
        r.why.format(value=value_text(values[r.key]))
        for r in RULES
        if r.kind == kind and r.key in values and r.broken(values[r.key])
    ]


# --------------------------------------------------------------------------- what applies
def runnable(model: Any) -> bool:
    """Whether ``model`` runs, from its name alone (no file is opened): a demo model or a ``.pt2``."""
    if isinstance(model, str) and model in DEMO_MODELS:
        return True
    return isinstance(model, str | os.PathLike) and Path(str(model)).suffix.lower() == ".pt2"


def page_slug(kind: str) -> str:
    """The app's page of analysis ``kind`` (as :func:`dashboard.app.page_specs` names it)."""
    e = registry.entry(kind)
    return e.command if e.page_of else e.family


def partner_of(model: Any, sources: Sequence[Any]) -> Any | None:
    """Model B of the Connectivity card: the Connectivity page's default for ``model``."""
    from .connectivity import partner

    return partner(model, list(sources))


def page_analyses(kind: str, model: Any, model_b: Any = None) -> list[Any]:
    """The analysis objects whose stored result the ``kind`` card shows, first the one the page would
    run with its defaults (what "Run what is missing" runs), then the one ``nnvitals report`` would
    run. Building them may open the model (the data it takes): call off the event loop.
    Raises :class:`NNVitalsError` when the page would not run (the data the model needs)."""
    common = {"show_progress": False}
    if kind == "spectra":
        from analyses.spectra.analysis import SpectralAnalysis

        return [SpectralAnalysis(model=model, **common)]
    from analyses.zoo import demo_image_size

    size = demo_image_size(model)
    cli_data = f"digits{size}" if size else None
    if kind in ("ibp", "lipschitz"):
        from analyses.bounds.analysis import IBPTightness, LipschitzBounds

        from .bounds import DEFAULT_SWEEP, data_fit

        data, problem = data_fit(model)
        if problem:
            raise NNVitalsError(problem)
        shared = dict(model=model, data=data, data_range=(0.0, 1.0), max_samples=128, **common)
        if kind == "ibp":
            out = [IBPTightness(eps=0.01, eps_sweep=list(DEFAULT_SWEEP), **shared)]
            cli = IBPTightness
        else:
            out = [LipschitzBounds(mixes=128, **shared)]
            cli = LipschitzBounds
        return out + [cli(model=model, **({"data": cli_data} if cli_data else {}), **common)]
    if kind == "orbits":
        from analyses.orbits.analysis import OrbitAnalysis
        from analyses.orbits.fitting import common_data

        from .orbits import PAGE_DEFAULTS

        fit = common_data([model])
        data = fit.data if fit is not None else "digits16"
        cli = OrbitAnalysis(model=[model], **({"data": cli_data} if cli_data else {}), **common)
        return [OrbitAnalysis(model=[model], data=data, **PAGE_DEFAULTS, **common), cli]
    if kind == "connectivity":
        from analyses.connectivity.analysis import ModeConnectivity

        from .connectivity import ConnectivityPage

        data = ConnectivityPage._data_for([model, model_b])
        return [
            ModeConnectivity(model_a=model, model_b=model_b, data=data, **common),
            ModeConnectivity(
                model=model, model_b=model_b, **({"data": cli_data} if cli_data else {}), **common
            ),
        ]
    raise NNVitalsError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")


# --------------------------------------------------------------------------- store lookups
@dataclass(frozen=True)
class Partner:
    """Model B still to choose (by the Connectivity page's rule) among ``sources``."""

    sources: tuple[Any, ...]


@dataclass
class Reading:
    """What a card shows: ``state`` "ok" (``result``), "missing" (``analysis`` runs it), "na" (does
    not apply: ``reason``), "error" (``reason``) or "looking" (the lookup is under way)."""

    kind: str
    state: str
    result: Any = None
    analysis: Any = None
    reason: str = ""
    model_b: Any = None
    keys: tuple[str, ...] = field(default=())


_memo_lock = threading.Lock()
#: (kind, model token, model B token) -> (store keys, the first one's analysis) or ("na"/"error", reason)
_keys: dict[tuple, tuple] = {}
#: store key -> result read from the store
_results: OrderedDict[str, Any] = OrderedDict()
_lookup_pool: ThreadPoolExecutor | None = None


def _token(model: Any) -> Any:
    """What identifies ``model`` across sessions: a demo's name, a file's path with its size and
    modification time; None for anything else (not remembered)."""
    if model is None:
        return ""
    if isinstance(model, str) and model in DEMO_MODELS:
        return model
    if isinstance(model, str | os.PathLike):
        try:
            st = os.stat(model)
        except OSError:
            return None
        return (str(model), st.st_mtime_ns, st.st_size)
    return None


def _store_root() -> Path:
    from analyses.core.store import default_root

    return default_root()


def _stored(key: str) -> Any | None:
    """The result stored under ``key`` (remembered once read), or None."""
    from analyses.core.store import ResultStore

    store = ResultStore(_store_root())
    if not store.path(key).is_file():
        with _memo_lock:
            _results.pop(key, None)
        return None
    with _memo_lock:
        if key in _results:
            _results.move_to_end(key)
            return _results[key]
    result = store.get(key)
    if result is not None:
        remember(key, result)
    return result


def remember(key: str, result: Any) -> None:
    """Keep ``result`` (stored under ``key``) in memory for the next sessions."""
    with _memo_lock:
        _results[key] = result
        _results.move_to_end(key)
        while len(_results) > RESULT_MEMO:
            _results.popitem(last=False)


def _mem_key(kind: str, model: Any, model_b: Any) -> tuple | None:
    a, b = _token(model), _token(model_b)
    return None if a is None or b is None else (kind, a, b, str(_store_root()))


def quick_reading(kind: str, model: Any, model_b: Any = None) -> Reading | None:
    """The card's reading from memory alone (keys made earlier in this process), else None."""
    mk = _mem_key(kind, model, model_b)
    with _memo_lock:
        known = _keys.get(mk) if mk is not None else None
    if known is None:
        return None
    if known[0] in ("na", "error"):
        return Reading(kind, known[0], reason=known[1], model_b=model_b)
    keys, analysis = known
    for key in keys:
        result = _stored(key)
        if result is not None:
            return Reading(kind, "ok", result=result, model_b=model_b, keys=keys)
    return Reading(kind, "missing", analysis=analysis, model_b=model_b, keys=keys)


def lookup(kind: str, model: Any, model_b: Any = None) -> Reading:
    """The card's reading: its stored result, or what would run it (see :func:`page_analyses`).
    Makes the store keys (opens the model to fingerprint it): call off the event loop."""
    quick = quick_reading(kind, model, model_b)
    if quick is not None:
        return quick
    mk = _mem_key(kind, model, model_b)
    try:
        objs = page_analyses(kind, model, model_b)
        keys = tuple(dict.fromkeys(o.cache_key() for o in objs))
    except NNVitalsError as e:
        reason = " ".join(str(e).split())
        if mk is not None:
            with _memo_lock:
                _keys[mk] = ("error", reason)
        return Reading(kind, "error", reason=reason, model_b=model_b)
    if mk is not None:
        with _memo_lock:
            _keys[mk] = (keys, objs[0])
    for key in keys:
        result = _stored(key)
        if result is not None:
            return Reading(kind, "ok", result=result, model_b=model_b, keys=keys)
    return Reading(kind, "missing", analysis=objs[0], model_b=model_b, keys=keys)


def _pool() -> ThreadPoolExecutor:
    global _lookup_pool
    with _memo_lock:
        if _lookup_pool is None:
            _lookup_pool = ThreadPoolExecutor(LOOKUP_WORKERS, thread_name_prefix="nnvitals-vitals")
        return _lookup_pool


def warm(model: Any, sources: Sequence[Any] = ()) -> dict[str, str]:
    """Look every card of ``model`` up now (what a server does at start for its default model, so the
    first session's cards fill from memory): kind -> state. Computes nothing."""
    out = {}
    for kind in KINDS:
        entry = registry.entry(kind)
        if entry.runnable and not runnable(model):
            continue
        b = None
        if kind == "connectivity":
            b = partner_of(model, list(sources) or list(DEMO_MODELS))
            if b is None:
                continue
        out[kind] = lookup(kind, model, b).state
    return out


# --------------------------------------------------------------------------- small plots
SPARK_W, SPARK_H = 240, 64
#: Paul Tol's bright scheme (as the analyses' views)
SPARK_COLORS = ("#4477AA", "#EE6677", "#228833")


def sparkline(
    series: Sequence[tuple[Sequence[float], str]],
    *,
    logy: bool = False,
    band: tuple[float, float] | None = None,
    bars: bool = False,
    title: str = "",
) -> str:
    """A small inline SVG of one or more series (values at evenly spaced x), with an optional
    shaded ``band`` of y values (the range a reading should stay in); "" when nothing is finite."""

    def tf(v: float) -> float:
        return math.log10(v) if logy else v

    clean = [([tf(v) if (math.isfinite(v) and (v > 0 or not logy)) else math.nan for v in vals], c)
             for vals, c in series if len(vals)]  # fmt: skip
    finite = [v for vals, _ in clean for v in vals if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    if band is not None and not logy:  # the whole band in view
        lo, hi = min(lo, band[0]), max(hi, band[1])
    if bars:
        lo = min(lo, 0.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 4.0
    w, h = SPARK_W, SPARK_H

    def y(v: float) -> float:
        return h - pad - (v - lo) / (hi - lo) * (h - 2 * pad)

    parts = [f'<svg class="nnv-vital-spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">']
    if title:
        parts.append(f"<title>{html.escape(title)}</title>")
    if band is not None and not logy:
        y0, y1 = y(min(max(band[1], lo), hi)), y(max(min(band[0], hi), lo))
        parts.append(f'<rect x="0" y="{y0:.1f}" width="{w}" height="{max(y1 - y0, 0):.1f}" fill="#e3f1e6"/>')
    for vals, color in clean:
        n = len(vals)
        xs = [pad + (w - 2 * pad) * (i + 0.5) / n for i in range(n)] if bars else (
            [pad + (w - 2 * pad) * i / max(n - 1, 1) for i in range(n)])  # fmt: skip
        if bars:
            bw = max((w - 2 * pad) / n * 0.7, 1.0)
            base = y(max(lo, 0.0))
            for x, v in zip(xs, vals, strict=True):
                if math.isfinite(v):
                    top = y(v)
                    parts.append(f'<rect x="{x - bw / 2:.1f}" y="{min(top, base):.1f}" width="{bw:.1f}" '
                                 f'height="{abs(base - top):.1f}" fill="{color}"/>')  # fmt: skip
            continue
        pts = " ".join(f"{x:.1f},{y(v):.1f}" for x, v in zip(xs, vals, strict=True) if math.isfinite(v))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
    parts.append("</svg>")
    return "".join(parts)


def _col(table: Any, name: str) -> list[float]:
    if table is None or name not in getattr(table, "columns", ()):
        return []
    return [float(v) for v in np.asarray(table[name], dtype=float)]


def card_plot(kind: str, result: Any) -> str:
    """The card's small plot of ``result`` (inline SVG; "" when the result has nothing to draw)."""
    try:
        t = result.table
        if kind == "spectra":
            ok = t[t["status"] == "ok"] if "status" in t.columns else t
            return sparkline([(_col(ok, "alpha"), SPARK_COLORS[0])], bars=True, band=(2.0, 6.0),
                             title="alpha per layer (green: 2..6)")  # fmt: skip
        if kind == "ibp":
            return sparkline([(_col(t, "tightness"), SPARK_COLORS[0])], logy=True,
                             title="tightness per layer (log)")  # fmt: skip
        if kind == "lipschitz":
            return sparkline([(_col(t, "upper"), SPARK_COLORS[1]), (_col(t, "lower_max"), SPARK_COLORS[0])],
                             logy=True, title="upper (red) and lower (blue) bound per layer (log)")  # fmt: skip
        if kind == "orbits":
            first = t[t["model"] == t["model"].iloc[0]] if len(t) else t
            means = first.groupby("element", sort=True)["score"].mean()
            return sparkline([(list(means.to_numpy(dtype=float)), SPARK_COLORS[0])],
                             title="mean score along the orbit")  # fmt: skip
        if kind == "connectivity":
            split = result.summary.get("split", "test")
            rows = t[(t["split"] == split)] if "split" in t.columns else t
            if "pair" in rows.columns and len(rows):
                rows = rows[rows["pair"] == rows["pair"].iloc[0]]
            series = []
            for path, color in (("naive", SPARK_COLORS[1]), ("matched", SPARK_COLORS[0])):
                r = rows[rows["path"] == path].sort_values("lam")
                series.append((_col(r, "loss"), color))
            return sparkline(series, title="loss along the path: naive (red), matched (blue)")
    except Exception as e:  # noqa: BLE001 - a plot that cannot be drawn leaves the numbers
        log.debug("vitals: no small plot for %s (%s)", kind, e)
    return ""


#: cards whose small plot is a Bokeh figure on a canvas (:func:`card_figure`) instead of inline SVG:
#: Spectra's, the card that has a result from start-up, so the landing page shows a real plot
CANVAS_KINDS = frozenset({"spectra"})


def card_figure(kind: str, result: Any) -> Any:
    """The small plot of a card of :data:`CANVAS_KINDS`, as a plain Bokeh figure (no HoloViews:
    milliseconds to build); None when the result has nothing to draw. Spectra: alpha per layer as
    bars over the green 2..6 band, the sparkline's look."""
    from bokeh.models import BoxAnnotation, Range1d
    from bokeh.plotting import figure

    try:
        if kind != "spectra":
            return None
        t = result.table
        ok = t[t["status"] == "ok"] if "status" in t.columns else t
        vals = [v for v in _col(ok, "alpha") if math.isfinite(v)]
    except Exception as e:  # noqa: BLE001 - a plot that cannot be drawn leaves the numbers
        log.debug("vitals: no small plot for %s (%s)", kind, e)
        return None
    if not vals:
        return None
    lo, hi = min(0.0, *vals), max(6.0, *vals)
    pad = 0.06 * (hi - lo)
    fig = figure(
        width=SPARK_W, height=SPARK_H, toolbar_location=None, tools="", min_border=2,
        outline_line_color=None, x_range=Range1d(-0.6, len(vals) - 0.4), y_range=Range1d(lo - pad, hi + pad),
        title=None,
    )  # fmt: skip
    fig.axis.visible = False
    fig.grid.visible = False
    fig.add_layout(BoxAnnotation(bottom=2.0, top=6.0, fill_color="#e3f1e6", fill_alpha=1.0, level="underlay"))
    fig.vbar(x=list(range(len(vals))), top=vals, width=0.7, color=SPARK_COLORS[0])
    return fig


# --------------------------------------------------------------------------- cards
#: card frame by state: the colour of its left border and background
CARD_STYLES = {
    "ok": {"border-left": "5px solid #228833", "background": "#f4faf5"},
    "warn": {"border-left": "5px solid #d9a400", "background": "#fff8e1"},
    "missing": {"border-left": "5px solid #BBBBBB", "background": "#f7f7f7"},
    "na": {"border-left": "5px solid #dddddd", "background": "#fbfbfb"},
    "error": {"border-left": "5px solid #EE6677", "background": "#fdf1f2"},
    "looking": {"border-left": "5px solid #dddddd", "background": "#fbfbfb"},
}
#: the cards' inner styles (the HTML pane renders in shadow DOM, where the page's CSS does not reach)
CARD_CSS = """
.nnv-vital-numbers { margin: 0.2em 0; border-collapse: collapse; font-variant-numeric: tabular-nums; }
.nnv-vital-numbers th { text-align: left; font-weight: normal; color: #5f6b77; padding: 0 0.8em 0 0; }
.nnv-vital-numbers td { padding: 0; font-weight: 600; }
.nnv-vital-numbers tr.nnv-vital-off td { color: #9a5b00; }
.nnv-vital-warning { color: #7a4b00; margin: 0.2em 0; font-size: 0.9em; }
.nnv-vital-status { color: #5f6b77; margin: 0.2em 0; font-size: 0.9em; }
.nnv-vital-title { margin: 0 0 0.2em 0; color: #1f4e79; font-size: 1.1em; font-weight: 600; }
"""


#: a card's names of the headline numbers (others: the key with spaces for underscores)
NUMBER_LABELS = {
    "unstable_fraction": "unstable ReLUs",
    "upper": "upper bound",
    "lower": "lower bound",
    "ratio": "upper / lower",
    "lower_mean": "mean lower bound",
    "gap": "NERO gap",
    "barrier_naive": "barrier, naive",
    "barrier_matched": "barrier, matched",
    "acc_barrier_naive": "accuracy barrier, naive",
    "acc_barrier_matched": "accuracy barrier, matched",
}


def number_label(key: str) -> str:
    """What a card calls the headline number ``key`` (plain words, not a column name)."""
    return NUMBER_LABELS.get(key, key.replace("_", " "))


def card_state(reading: Reading) -> tuple[str, list[tuple[str, Any]], list[str]]:
    """(frame state, headline numbers, warning lines) of a card."""
    if reading.state != "ok":
        return reading.state, [], []
    entry = registry.entry(reading.kind)
    numbers = headline_numbers(reading.result.summary, entry.numbers)[:CARD_NUMBERS]
    # a rule may read a number the card does not list first: check every headline number
    every = headline_numbers(reading.result.summary, entry.numbers)
    warns = warnings_for(reading.kind, every)
    return ("warn" if warns else "ok"), numbers, warns


def card_html(reading: Reading, model_name: str = "") -> str:
    """The inside of a card: title, numbers (the ones off marked), warnings or status, small plot."""
    entry = registry.entry(reading.kind)
    state, numbers, warns = card_state(reading)
    esc = html.escape
    out = [f'<div class="nnv-vital-title">{esc(entry.title)}</div>']
    if state in ("ok", "warn"):
        off = {r.key for r in RULES if r.kind == reading.kind}
        bad = {k for k, v in numbers if k in off and warnings_for(reading.kind, [(k, v)])}
        rows = "".join(
            f'<tr class="{"nnv-vital-off" if k in bad else ""}"><th title="{esc(k)}">{esc(number_label(k))}</th><td>{esc(value_text(v))}</td></tr>'
            for k, v in numbers
        )
        out.append(f'<table class="nnv-vital-numbers">{rows}</table>')
        out += [f'<div class="nnv-vital-warning">⚠ {esc(w)}</div>' for w in warns]
        if reading.kind == "connectivity" and reading.model_b is not None:
            out.append(f'<div class="nnv-vital-status">with {esc(_name(reading.model_b))}</div>')
        if reading.kind not in CANVAS_KINDS:  # those draw theirs on a canvas beside (Card.figure)
            out.append(card_plot(reading.kind, reading.result))
    elif state == "missing":
        out.append('<div class="nnv-vital-status">not run yet</div>')
    elif state == "looking":
        out.append('<div class="nnv-vital-status">looking up earlier results …</div>')
    else:
        out.append(f'<div class="nnv-vital-status">{esc(reading.reason)}</div>')
    return "".join(out)


def _name(model: Any) -> str:
    return model_label(model)


class Card:
    """One analysis's card: an HTML pane (numbers, warnings, plot) and a button to its page."""

    def __init__(self, kind: str, on_open: Callable[[str], None]):
        self.kind = kind
        self.reading = Reading(kind, "looking")
        self._lock = threading.RLock()
        entry = registry.entry(kind)
        self.html = pn.pane.HTML(
            card_html(self.reading), stylesheets=[CARD_CSS], sizing_mode="stretch_width",
            css_classes=["nnv-vital-body"], margin=(4, 8),
        )  # fmt: skip
        self.button = pn.widgets.Button(
            name=f"Open {entry.title}", button_type="primary", button_style="outline",
            css_classes=["nnv-vital-open", f"nnv-vital-open-{kind}"], margin=(0, 8, 8, 8), width=170,
        )  # fmt: skip
        self.button.on_click(lambda _e: on_open(kind))
        self.figure = pn.pane.Bokeh(None, margin=(0, 8, 6, 8))  # CANVAS_KINDS' small plot
        # shown and hidden through a column of its own: the Bokeh pane keeps its visibility with the figure
        self.figure_box = pn.Column(self.figure, visible=False, margin=0)
        self._drawn: Any = None  # the result self.figure shows
        self.layout = pn.Column(
            self.html, self.figure_box, self.button, width=300, margin=6, styles=dict(CARD_STYLES["looking"]),
            css_classes=["nnv-vital", f"nnv-vital-{kind}", "nnv-vital-looking"],
        )  # fmt: skip

    def show(self, reading: Reading, model_name: str = "") -> None:
        # one card at a time: the session's poll and the end of a run may show it from two threads,
        # and a text from one with the frame of the other was seen (numbers in a "not run" frame)
        with self._lock:
            self.reading = reading
            state = card_state(reading)[0]
            self.html.object = card_html(reading, model_name)
            if self.kind in CANVAS_KINDS:
                result = reading.result if state in ("ok", "warn") else None
                if result is not self._drawn:  # a new figure only for a new result
                    self._drawn = result
                    fig = card_figure(self.kind, result) if result is not None else None
                    if fig is not None or self.figure.object is not None:
                        self.figure.object = fig
                    self.figure_box.visible = fig is not None
            self.layout.param.update(
                styles=dict(CARD_STYLES[state]),
                css_classes=["nnv-vital", f"nnv-vital-{self.kind}", f"nnv-vital-{state}"],
            )

    def show_again_if(self, state: str) -> None:
        """Show the card's reading again if it is still in ``state`` (checked and shown at once)."""
        with self._lock:
            if self.reading.state == state:
                self.show(self.reading)


# --------------------------------------------------------------------------- page
class VitalsPage(pn.viewable.Viewer):
    """The landing page (see the module docstring): ``VitalsPage(model="mlp")`` in a notebook."""

    slug = "vitals"
    title = "Vitals"

    model = param.Parameter(default=None, doc="The model whose vital signs are shown (the picker's).")

    def __init__(
        self,
        model: Any = None,
        picker: Any = None,
        settings: AppSettings | None = None,
        app: Any = None,
        background: bool | None = None,
        **params: Any,
    ):
        """``background``: look up the store off this thread (default: in a served session)."""
        super().__init__(**params)
        self.picker, self.app = picker, app
        self.settings = settings or AppSettings()
        self._background = in_server() if background is None else background
        self._lock = threading.Lock()
        self._inbox: list[tuple[int, Reading]] = []
        self._generation = 0
        self._poller: SessionTimer | None = None
        self.cards = {k: Card(k, self.open_page) for k in KINDS}
        self.runs = JobPanel(background=background)
        self._run_button = pn.widgets.Button(
            name="Run what is missing", button_type="primary", sizing_mode="stretch_width",
            css_classes=["nnv-vital-run"], disabled=True,
        )  # fmt: skip
        self._run_button.on_click(lambda _e: self.run_missing())
        self.runs.param.watch(self._on_running, "running")
        self._missing_text = pn.pane.Markdown("", css_classes=["nnv-note"], styles=style.NOTE, margin=(0, 10))
        self.analysing = pn.pane.Markdown("", css_classes=["nnv-analysing"], margin=(0, 10))
        self.controls = pn.Column(
            section_heading("Vital signs"),
            self._missing_text,
            self._run_button,
            sizing_mode="stretch_width",
            css_classes=["nnv-controls"],
        )
        head = page_head(
            "## Vital signs\nOne card per analysis for the model picked in the sidebar: its headline "
            "numbers from earlier runs, a warning colour where a reading is off, a small plot, and "
            "the button to its page. Cards of analyses not run yet fill with **Run what is missing**."
        )
        self.grid = pn.FlexBox(*(c.layout for c in self.cards.values()), css_classes=["nnv-vital-cards"],
                               sizing_mode="stretch_width")  # fmt: skip
        self.main = pn.Column(
            head, self.analysing, self.runs, self.grid, sizing_mode="stretch_width",
            css_classes=["nnv-page", "nnv-vitals"],
        )  # fmt: skip
        if picker is not None:
            picker.param.watch(self._on_picker, ["model"])
            model = picker.model if model is None else model
        self.model = self.settings.default_model if model is None else model
        if self._background:
            pn.state.on_session_destroyed(lambda _ctx: self.close())
        self.refresh()

    # ------------------------------------------------------------------ model and lookups
    def _on_picker(self, event: Any) -> None:
        self.model = event.new
        self.refresh()

    def model_name(self, model: Any) -> str:
        if self.picker is not None:
            return self.picker.name_of(model)
        return _name(model)

    def _sources(self) -> list[Any]:
        if self.picker is not None:
            return list(self.picker.sources.values())
        return list(DEMO_MODELS)

    def plan(self) -> dict[str, Reading | tuple[Any, Any]]:
        """Per card: a reading that needs no lookup (does not apply), or (model, model B) to look up."""
        model = self.model
        out: dict[str, Any] = {}
        runs = runnable(model)
        for kind in KINDS:
            entry = registry.entry(kind)
            if entry.runnable and not runs:
                out[kind] = Reading(kind, "na", reason="needs a runnable model: a demo model or a .pt2 export "
                                    "(this file holds weights only)")  # fmt: skip
            elif kind == "connectivity" and "dashboard.pages.connectivity" not in sys.modules:
                # its model B comes from the Connectivity page's rule; importing that page is slow
                # the first time (torch, the connectivity analysis): done with the lookup
                out[kind] = (model, Partner(tuple(self._sources())))
            elif kind == "connectivity":
                out[kind] = self._pair(model, partner_of(model, self._sources()))
            else:
                out[kind] = (model, None)
        return out

    def refresh(self) -> None:
        """Look the picked model's results up again (cards fill from memory at once where they can,
        the rest when the lookup is done)."""
        with self._lock:
            self._generation += 1
            gen = self._generation
            self._inbox.clear()
        name = self.model_name(self.model)
        self.analysing.object = f"Model: **{_md(name)}**"
        todo = []
        for kind, what in self.plan().items():
            if isinstance(what, Reading):
                self.cards[kind].show(what)
                continue
            quick = None if isinstance(what[1], Partner) else quick_reading(kind, *what)
            if quick is not None:
                self.cards[kind].show(quick)
            else:
                self.cards[kind].show(Reading(kind, "looking"))
                todo.append((kind, what))
        self._update_missing()
        if not todo:
            return
        if not self._background:
            for kind, (a, b) in todo:
                self.cards[kind].show(self._safe_lookup(kind, a, b))
            self._update_missing()
            return
        for kind, (a, b) in todo:
            fut = _pool().submit(self._safe_lookup, kind, a, b)
            fut.add_done_callback(lambda f, g=gen: self._post(g, f.result()))
        self._start_polling()

    @staticmethod
    def _pair(model: Any, model_b: Any) -> Reading | tuple[Any, Any]:
        if model_b is None:
            return Reading("connectivity", "na", reason="needs a second model of the same architecture: "
                           "open Connectivity and choose model B")  # fmt: skip
        return (model, model_b)

    @classmethod
    def _safe_lookup(cls, kind: str, model: Any, model_b: Any) -> Reading:
        try:
            if isinstance(model_b, Partner):
                what = cls._pair(model, partner_of(model, model_b.sources))
                if isinstance(what, Reading):
                    return what
                model_b = what[1]
            return lookup(kind, model, model_b)
        except Exception as e:  # a bug: the card says so, the log has the traceback
            log.error("vitals: looking up %s failed", kind, exc_info=e)
            return Reading(
                kind, "error", reason=f"internal error, a bug in nnvitals ({type(e).__name__}: {e})"
            )

    def _post(self, generation: int, reading: Reading) -> None:
        """A reading from another thread: shown by the session's next poll (if still current)."""
        with self._lock:
            if generation == self._generation:
                self._inbox.append((generation, reading))

    def _start_polling(self) -> None:
        if self._poller is None:
            self._poller = loop_timer(self.poll)
        if not self._poller.running:
            try:
                self._poller.start()
            except Exception as e:  # noqa: BLE001 - no session to poll in: apply with poll()
                log.debug("vitals: no poller (%s)", e)

    def poll(self) -> None:
        """Show the readings that arrived (what the session's timer does every POLL_MS)."""
        with self._lock:
            items = [r for g, r in self._inbox if g == self._generation]
            self._inbox.clear()
            waiting = any(c.reading.state == "looking" for c in self.cards.values())
        for reading in items:
            self.cards[reading.kind].show(reading)
        if items:
            self._update_missing()
        still = any(c.reading.state == "looking" for c in self.cards.values())
        if not (still or waiting or self.runs.running) and self._poller is not None and self._poller.running:
            self._poller.stop()

    def missing(self) -> list[str]:
        """The cards whose analysis applies but is not in the store."""
        return [k for k, c in self.cards.items() if c.reading.state == "missing"]

    def _update_missing(self) -> None:
        missing = self.missing()
        looking = any(c.reading.state == "looking" for c in self.cards.values())
        self._run_button.disabled = not missing or self.runs.running
        if looking:
            text = "Looking up earlier results …"
        elif missing:
            titles = ", ".join(registry.entry(k).title for k in missing)
            text = f"Not run yet: {titles}."
        else:
            text = "Every analysis that applies has been run."
        self._missing_text.object = text

    # ------------------------------------------------------------------ running
    def run_missing(self) -> None:
        """Run the analyses whose cards say "not run yet" (the pages' default settings), one after
        another in the job panel (progress, Cancel); each card fills when its analysis finishes."""
        todo = [(k, self.cards[k].reading) for k in self.missing()]
        if not todo:
            return
        with self._lock:
            gen = self._generation
        titles = {k: registry.entry(k).title for k, _ in todo}

        def work(progress, cancel):
            done = {}
            for i, (kind, reading) in enumerate(todo):
                cancel.check()

                def sub(d: int, t: int, label: str, i=i, kind=kind) -> None:
                    progress(i, len(todo), f"{titles[kind]}: {label or ''} {d}/{t}".strip())

                progress(i, len(todo), titles[kind])
                try:
                    result = reading.analysis.run(progress=sub, cancel=cancel)
                except (Cancelled, KeyboardInterrupt):
                    raise
                except NNVitalsError as e:
                    res = Reading(kind, "error", reason=" ".join(str(e).split()), model_b=reading.model_b)
                else:
                    for key in reading.keys[:1]:
                        remember(key, result)
                    res = Reading(kind, "ok", result=result, model_b=reading.model_b, keys=reading.keys)
                done[kind] = res
                self._deliver(gen, res)
                progress(i + 1, len(todo), titles[kind])
            return done

        for kind, _ in todo:
            card = self.cards[kind]
            card.html.object = card_html(card.reading).replace("not run yet", "queued to run …")
        self._run_button.disabled = True
        self.runs.submit(
            f"Vital signs of {self.model_name(self.model)}",
            work,
            lambda done, g=gen: self._runs_done(g, done),
            on_error=lambda _m: self._update_missing(),
        )
        if self.runs.running:
            self._start_polling()

    def _on_running(self, event: Any) -> None:
        """A run ended (done, failed or cancelled): cards still without a result say so again."""
        if event.new:
            return
        for card in self.cards.values():
            card.show_again_if("missing")
        self._update_missing()

    def _deliver(self, generation: int, reading: Reading) -> None:
        if self._background:
            self._post(generation, reading)
        elif generation == self._generation:
            self.cards[reading.kind].show(reading)

    def _runs_done(self, generation: int, done: dict[str, Reading]) -> None:
        if generation != self._generation:  # another model was picked meanwhile
            return
        for reading in done.values():  # anything the poll has not shown yet
            if self.cards[reading.kind].reading.state in ("missing", "looking"):
                self.cards[reading.kind].show(reading)
        self._update_missing()

    # ------------------------------------------------------------------ navigation
    def open_page(self, kind: str) -> None:
        """Open ``kind``'s page (in the app; in a notebook there is no other page)."""
        if self.app is not None:
            self.app.page = page_slug(kind)

    def close(self) -> None:
        self.runs.close("page closed")
        with self._lock:
            self._generation += 1
        if self._poller is not None and self._poller.running:
            try:
                self._poller.stop()
            except Exception:  # noqa: BLE001 - the session is gone already
                pass

    def __panel__(self):
        if self.picker is not None:
            return self.main
        return pn.Row(pn.Column(self.controls, width=300), self.main, sizing_mode="stretch_width")


def _md(text: str) -> str:
    from ..components.model_picker import markdown_text

    return markdown_text(text)


__all__ = [
    "KINDS",
    "RULES",
    "Reading",
    "Rule",
    "VitalsPage",
    "card_html",
    "lookup",
    "page_analyses",
    "page_slug",
    "quick_reading",
    "runnable",
    "sparkline",
    "warm",
    "warnings_for",
]
