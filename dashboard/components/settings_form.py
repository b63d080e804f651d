"""An analysis's settings as sidebar widgets, generated from its Param parameters.

Which parameters are shown, and where, comes from the analysis's registry entry
(:mod:`analyses.registry`): its ``basic`` parameters first, in that order, every other option of
its command in a collapsed "Advanced" card. Left out: what the server decides for every visitor
(:data:`SERVER_ONLY`) and the parameters the page sets with controls of its own (``own``).

A widget's kind follows the parameter's type (:func:`widget_for`), its label is the parameter's
``label``, its help the parameter's ``doc``; a page declares a different kind only where it truly
differs (``widget_types``, e.g. :data:`RADIO`). Numbers get no start/end: the browser would clamp a
typed value without a word. Nothing typed is replaced either: a valid value goes into the analysis
object at once, every invalid one is listed under the settings (one line each, in the widgets'
words) and the page's Run refuses to run until it is fixed. Set in Python, the analysis's values
show in the widgets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import panel as pn
import param

#: parameters a visitor never sets: the server's (where and how analyses run, its store)
SERVER_ONLY = frozenset({"runner", "cache", "cache_dir", "num_workers", "allow_tf32"})
#: the options of a choice shown as a row of buttons (a ``widget_types`` entry)
RADIO = {"type": pn.widgets.RadioButtonGroup, "button_style": "outline"}
#: width of a setting widget in the sidebar (300 px wide)
WIDGET_WIDTH = 230


def widget_for(p: param.Parameter, value: Any, spec: Any = None, **kw: Any) -> pn.widgets.Widget:
    """A widget for parameter ``p`` showing ``value``: Boolean -> checkbox, Selector -> select,
    ListSelector -> multi-choice, Integer/Number -> typed input, anything else -> text (tuples and
    lists as comma-separated numbers). ``spec``: a widget class or a dict of widget options with an
    optional ``type`` (a page's ``widget_types`` entry)."""
    options = dict(spec) if isinstance(spec, dict) else ({"type": spec} if spec is not None else {})
    kind = options.pop("type", None)
    kw = {"name": p.label, "description": p.doc, "width": WIDGET_WIDTH, **kw, **options}
    if isinstance(p, param.ListSelector):
        kind, kw["options"] = kind or pn.widgets.MultiChoice, list(p.objects)
    elif isinstance(p, param.Selector):
        kind, kw["options"] = kind or pn.widgets.Select, list(p.objects)
    elif isinstance(p, param.Boolean):
        kind = kind or pn.widgets.Checkbox
    elif isinstance(p, param.Integer):
        kind = kind or pn.widgets.IntInput
    elif isinstance(p, param.Number):
        kind = kind or pn.widgets.FloatInput
    else:
        kind = kind or pn.widgets.TextInput
    kw = {k: v for k, v in kw.items() if k in kind.param}  # a checkbox has no description
    return kind(value=shown_value(p, value) if kind is pn.widgets.TextInput else value, **kw)


def shown_value(p: param.Parameter, value: Any) -> Any:
    """``value`` as a text widget shows it: numbers comma-separated, None as ''."""
    if isinstance(p, param.Tuple | param.List) and isinstance(value, tuple | list):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "" if value is None else value if isinstance(value, str) else str(value)


def typed_value(p: param.Parameter, text: Any) -> Any:
    """What a text widget holds as the parameter's value: ``'0.5, 1.5'`` -> ``(0.5, 1.5)`` for a
    tuple, a list of numbers for a list; anything else as typed (the check then says what is wrong)."""
    if isinstance(text, str) and not text.strip() and p.allow_None:
        return None
    if not isinstance(text, str) or not isinstance(p, param.Tuple | param.List):
        return text
    try:
        items = [float(t) for t in text.replace("(", " ").replace(")", " ").replace(",", " ").split()]
    except ValueError:
        return text
    if isinstance(p, param.List):
        return items
    return tuple(items) if len(items) == getattr(p, "length", len(items)) else text


def param_problem(p: param.Parameter, value: Any) -> str | None:
    """What Param says is wrong with ``value`` for ``p`` (without its class-and-name prefix), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value}"
    try:
        p._validate(value)
    except (ValueError, TypeError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        return re.sub(r"^\w+ parameter '[\w.]+' ", "", text).rstrip(".")
    except Exception as e:  # a parameter's own check (e.g. a refused layer pattern)
        return str(e).splitlines()[0]
    return None


class SettingsForm:
    """The setting widgets of ``analysis`` (see the module docstring): ``basic`` (a column) and
    ``advanced`` (a collapsed card whose widgets join the page when it is first opened).

    ``entry``: the analysis's registry entry; ``own``: parameters the page shows itself;
    ``advanced``: parameters of the entry's ``basic`` that this page shows under Advanced;
    ``widget_types``: name -> widget class or options (see :func:`widget_for`); ``custom``: name
    -> a widget of the page's own, placed here but kept in step by the page; ``check``: values ->
    {name (or "a/b"): problem}, the default asks Param; ``on_change``: called after every change.
    """

    def __init__(
        self,
        analysis: param.Parameterized,
        entry: Any,
        own: tuple[str, ...] = (),
        advanced: tuple[str, ...] = (),
        widget_types: dict[str, Any] | None = None,
        custom: dict[str, pn.widgets.Widget] | None = None,
        check: Callable[[dict[str, Any]], dict[str, str]] | None = None,
        on_change: Callable[[], None] | None = None,
    ):
        self.analysis = analysis
        self._check = check
        self._on_change = on_change
        basic, execution, more = entry.options()
        hidden = SERVER_ONLY | set(own)
        self.basic_names = [n for n in basic if n not in hidden and n not in advanced]
        self.advanced_names = [
            n for n in (*[n for n in basic if n in advanced], *more, *execution) if n not in hidden
        ]
        custom = dict(custom or {})
        #: names whose widget the page keeps in step itself
        self.custom = {n for n in custom if n in self.basic_names + self.advanced_names}
        types = widget_types or {}
        self.widgets: dict[str, pn.widgets.Widget] = {}
        for name in self.basic_names + self.advanced_names:
            if name in custom:
                self.widgets[name] = custom[name]
                continue
            w = widget_for(analysis.param[name], getattr(analysis, name), types.get(name))
            w.param.watch(self._changed, "value")
            self.widgets[name] = w
        synced = [n for n in self.widgets if n not in self.custom]
        if synced:  # set in Python (a notebook, a test): the widgets follow
            analysis.param.watch(self._from_analysis, synced)
        self.labels = {n: analysis.param[n].label for n in analysis.param if n != "name"}
        self.problems = pn.pane.Alert(
            "", alert_type="danger", visible=False, css_classes=["nnv-setting-problems"], margin=(5, 10)
        )
        self.basic = pn.Column(*(self.widgets[n] for n in self.basic_names), width=250)
        self.advanced = pn.Card(
            title="Advanced", collapsed=True, width=255, visible=bool(self.advanced_names)
        )
        self.advanced.param.watch(self._open_advanced, "collapsed")

    # ------------------------------------------------------------------ values
    def values(self) -> dict[str, Any]:
        """The settings as the widgets hold them (typed values, valid or not)."""
        out = {}
        for name, w in self.widgets.items():
            if name not in self.custom:
                p = self.analysis.param[name]
                out[name] = typed_value(p, w.value) if isinstance(w, pn.widgets.TextInput) else w.value
        return out

    def check(self, values: dict[str, Any] | None = None) -> dict[str, str]:
        """Every invalid setting: {name (or "a/b" for two that clash): what is wrong}."""
        values = self.values() if values is None else values
        if self._check is not None:
            return self._check(values)
        out = {}
        for name, value in values.items():
            problem = param_problem(self.analysis.param[name], value)
            if problem is not None:
                out[name] = problem
        return out

    def label(self, key: str) -> str:
        """A problem's key in the widgets' words ("shift_range/shift_step" -> both labels)."""
        return " / ".join(self.labels.get(k, k) for k in key.split("/"))

    def in_words(self, text: str) -> str:
        """A message naming parameters, with the widgets' labels instead ('lower “Shift step (px)”')."""
        names = "|".join(sorted(self.widgets, key=len, reverse=True))
        return re.sub(rf"\b({names})\b", lambda m: f"“{self.labels[m.group(1)]}”", text)

    def problem_lines(self) -> list[str]:
        """Every invalid setting, one line each (label: what was expected, what was typed)."""
        return [f"{self.label(k)}: {self.in_words(msg)}" for k, msg in self.check().items()]

    # ------------------------------------------------------------------ both ways
    def _changed(self, *_: Any) -> None:
        """A setting changed: keep the valid ones in the analysis, list every invalid one (the
        widget keeps what was typed; nothing is replaced)."""
        values = self.values()
        problems = self.check(values)
        bad = {k for key in problems for k in key.split("/")}
        good = {k: v for k, v in values.items() if k not in bad and getattr(self.analysis, k) != v}
        if good:
            self.analysis.param.update(**good)
        lines = [f"{self.label(k)}: {self.in_words(msg)}" for k, msg in problems.items()]
        self.problems.object = "\n".join(f"- {line}" for line in lines)
        self.problems.visible = bool(lines)
        if self._on_change is not None:
            self._on_change()

    def _from_analysis(self, *events: Any) -> None:
        for e in events:
            w = self.widgets[e.name]
            p = self.analysis.param[e.name]
            shown = shown_value(p, e.new) if isinstance(w, pn.widgets.TextInput) else e.new
            if w.value != shown and self.values()[e.name] != e.new:
                w.value = shown

    def _open_advanced(self, event: Any) -> None:
        """The advanced widgets join the page when the card is first opened (a lighter first page)."""
        if not event.new and not self.advanced.objects:
            self.advanced.objects = [pn.Column(*(self.widgets[n] for n in self.advanced_names), width=240)]
