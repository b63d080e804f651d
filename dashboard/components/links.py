"""Links that reproduce a view: the page, the model, the changed settings and the selection in the URL.

A link reads like ``?page=spectra&model=mlp&farms=true&select=fc2.weight``:

- ``page``: the page's slug (as in the navigation);
- ``model``: the sidebar's model, a demo name or a file under the server's ``--allow-dir`` (its
  path). A model uploaded in a session is never put in a link (uploads belong to that session
  only), and a link's path is opened only when it lies inside the allowed directories;
- every setting whose value differs from what the page opens with, by its parameter's name
  (``farms=true``, ``xmin_rule=peak``; a name two analyses of one page share is written
  ``command.name`` for the second), and the page's own choices (Orbits' ``compare`` models,
  Bounds' ``data``, a plot's metric);
- the selection: ``select=`` (Spectra: layer names, comma-separated; Orbits: a sample's
  position, with ``element=``; Bounds: a histogram bar; Connectivity: a point of the path).

The app (:func:`dashboard.app.build_app`) opens a link: the page, the model through the picker,
the settings into the page's widgets before its first run, the selection once its result is
shown. Everything in a link is checked: an unknown page or setting is ignored with a note, a bad
value is one line naming the setting and what was expected (the page keeps its own value), a
refused model is said so; nothing in a link raises.

A page offers its settings as :class:`Field` objects (``page.link_fields()``, see
:class:`dashboard.components.page.AnalysisPage`); a page without them (the Vitals view) carries
just the page and the model. :class:`LinkBar` is the sidebar's "Copy link" button with the link
in a text field (for copying by hand where the clipboard is not allowed).
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import panel as pn
import param

from analyses.core.errors import NNVitalsError
from analyses.zoo import DEMO_MODELS

from .model_picker import ROOT_PREFIX, resolve_allowed, shown
from .settings_form import param_problem, typed_value

#: the keys every link may hold (the rest are a page's settings and selection)
PAGE_KEY, MODEL_KEY = "page", "model"
#: the keys of a selection (which ones a page reads: its ``link_selection_keys``)
SELECTION_KEYS = ("select", "element")
#: the longest query a link may have, and the most keys
MAX_QUERY_CHARS = 8192
MAX_KEYS = 64
#: characters left as they are in a link (readable names, lists and paths)
SAFE = ",:/"
#: how many choices a message lists at most
MAX_LISTED = 8
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _listed(choices: list[str]) -> str:
    more = f", … ({len(choices)} in all)" if len(choices) > MAX_LISTED else ""
    return ", ".join(choices[:MAX_LISTED]) + more


# --------------------------------------------------------------------------- values as text
def value_text(value: Any) -> str:
    """A value as a link writes it: ``true``/``false``, numbers as Python prints them, lists
    comma-separated, None as ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if not value.is_integer() or abs(value) >= 1e16 else str(value)
    if isinstance(value, list | tuple):
        return ",".join(value_text(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _options(widget: Any) -> list[Any]:
    opts = getattr(widget, "options", None)
    if isinstance(opts, Mapping):
        return list(opts.values())
    return list(opts or [])


def _choice(text: str, choices: list[Any]) -> Any:
    """The choice written ``text`` (as :func:`value_text` writes it); raises ValueError."""
    for c in choices:
        if value_text(c) == text:
            return c
    raise ValueError(f"expected one of {_listed([value_text(c) for c in choices])}")


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in TRUE:
        return True
    if t in FALSE:
        return False
    raise ValueError("expected true or false")


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def link_choice(text: str, choices: Sequence[int], what: str) -> tuple[int | None, str | None]:
    """A link's ``select=`` value read as one of a page's integer ``choices``: ``(value, None)``, or
    ``(None, problem)`` with the one line the link note shows (``what`` names a choice, e.g.
    "a bar of the histogram"; a range is given by its ends, other choices are listed)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is not None and value in choices:
        return value, None
    if isinstance(choices, range):
        expected = f"from {choices.start} to {choices.stop - 1}"
    else:
        expected = "(" + ", ".join(str(c) for c in choices) + ")"
    return None, f"Link: select={text[:40]}: expected {what} {expected}"


def parse_for_widget(widget: Any, text: str) -> Any:
    """``text`` as ``widget``'s value (its kind decides: a checkbox takes true/false, a choice one of
    its options, a multi-choice several, comma-separated); raises ValueError saying what was
    expected."""
    if isinstance(widget, pn.widgets.Checkbox | pn.widgets.Toggle | pn.widgets.Switch):
        return _bool(text)
    if isinstance(widget, pn.widgets.IntInput | pn.widgets.IntSlider):
        return _int(text)
    if isinstance(widget, pn.widgets.FloatInput | pn.widgets.FloatSlider):
        return _float(text)
    multi = (
        pn.widgets.MultiChoice
        | pn.widgets.MultiSelect
        | pn.widgets.CheckButtonGroup
        | pn.widgets.CheckBoxGroup
    )
    if isinstance(widget, multi):
        items = [t for t in text.split(",") if t.strip()] if text.strip() else []
        return [_choice(t.strip(), _options(widget)) for t in items]
    if isinstance(widget, pn.widgets.Select | pn.widgets.RadioButtonGroup | pn.widgets.RadioBoxGroup):
        return _choice(text, _options(widget))
    return text  # a text input: the setting's own check says what is wrong


def parse_for_param(p: param.Parameter, text: str) -> Any:
    """``text`` as a value of parameter ``p`` (a page's own view choice); raises ValueError."""
    if isinstance(p, param.ListSelector):
        items = [t.strip() for t in text.split(",") if t.strip()]
        return [_choice(t, list(p.objects)) for t in items]
    if isinstance(p, param.Selector):
        return _choice(text, list(p.objects))
    if isinstance(p, param.Boolean):
        return _bool(text)
    if isinstance(p, param.Integer):
        return _int(text)
    if isinstance(p, param.Number):
        return _float(text)
    return text


# --------------------------------------------------------------------------- a page's settings
@dataclass
class Field:
    """One setting a link may carry: a widget (``widget``), or a parameter ``name`` of ``owner`` (a
    page's own view choice). ``param``: the analysis parameter the widget sets (checked with
    Param's own check); ``models``: the values are models (uploads are never written)."""

    key: str
    label: str
    widget: Any = None
    owner: Any = None
    name: str = ""
    param: param.Parameter | None = None
    models: bool = False

    def value(self) -> Any:
        return self.widget.value if self.widget is not None else getattr(self.owner, self.name)

    def text(self) -> str:
        return value_text(self.value())

    def parse(self, text: str) -> Any:
        """``text`` as this setting's value; raises ValueError saying what was expected."""
        if self.widget is not None:
            value = parse_for_widget(self.widget, text)
        else:
            value = parse_for_param(self.owner.param[self.name], text)
        if self.param is not None:
            typed = typed_value(self.param, value) if isinstance(self.widget, pn.widgets.TextInput) else value
            problem = param_problem(self.param, typed)
            if problem is not None:
                raise ValueError(problem)
        return value

    def set(self, value: Any) -> None:
        if self.widget is not None:
            if self.widget.value != value:
                self.widget.value = value
        elif getattr(self.owner, self.name) != value:
            setattr(self.owner, self.name, value)


def page_fields(page: Any) -> dict[str, Field]:
    """The settings a page's links carry, by key (none for a page without ``link_fields``)."""
    fields = getattr(page, "link_fields", None)
    return fields() if callable(fields) else {}


def bad_value(f: Field, text: str, problem: str) -> str:
    return f"Link: “{f.label}” ({f.key}={shown(text, 60)}): {problem}; kept {f.text() or 'empty'}."


def apply_settings(page: Any, values: Mapping[str, str]) -> list[str]:
    """Set ``values`` (key -> text) into ``page``'s settings, in the page's order; returns one note per
    key that is unknown and per value that is refused (the setting then keeps its value)."""
    fields = page_fields(page)
    notes = []
    title = getattr(page, "title", "") or "this"
    unknown = [k for k in values if k not in fields]
    if unknown:
        names = ", ".join(shown(k, 40) for k in unknown[:MAX_LISTED])
        known = _listed(list(fields)) or "none"
        notes.append(f"Link: no setting {names} on the {title} page (ignored; its settings: {known}).")
    for key, f in fields.items():
        if key not in values:
            continue
        text = values[key]
        try:
            f.set(f.parse(text))
        except (ValueError, NNVitalsError) as e:
            notes.append(bad_value(f, text, str(e)))
    return notes


def changed_settings(
    page: Any, baseline: Mapping[str, str], notes: list[str] | None = None
) -> dict[str, str]:
    """The page's settings whose value differs from ``baseline`` (what the page opened with), as text.
    A model-valued setting keeps only what a link may name (``notes`` says what was left out)."""
    out = {}
    picker = getattr(page, "picker", None)
    for key, f in page_fields(page).items():
        value = f.value()
        if f.models:
            many = isinstance(value, list | tuple)
            kept = [v for v in (value if many else [value]) if v is None or model_in_link(v, picker)]
            if len(kept) < (len(value) if many else 1):
                if notes is not None:
                    notes.append(
                        f"The link leaves “{f.label}” out: an uploaded model is kept for this session only."
                    )
                if not many:
                    continue
            value = kept if many else value
        text = value_text(value)
        if key not in baseline or text != baseline[key]:
            out[key] = text
    return out


# --------------------------------------------------------------------------- models
def is_upload(model: Any, upload_dirs: tuple[Path, ...] = ()) -> bool:
    """Whether ``model`` is a file uploaded to (or made in) a session: under one of ``upload_dirs``
    or a server process's upload folder (``nnvitals-uploads-*``)."""
    if not isinstance(model, str | Path) or str(model) in DEMO_MODELS:
        return False
    p = Path(str(model))
    if any(part.startswith(ROOT_PREFIX) for part in p.parts):
        return True
    return any(p == d or p.is_relative_to(d) for d in upload_dirs)


def model_in_link(model: Any, picker: Any = None) -> bool:
    """Whether a link may name ``model``: a demo name, or a path under the picker's allowed
    directories that is not an upload."""
    if isinstance(model, str) and model in DEMO_MODELS:
        return True
    if not isinstance(model, str | Path):
        return False
    uploads = (Path(picker.upload_dir),) if picker is not None else ()
    if is_upload(model, uploads):
        return False
    if picker is None:
        return False
    try:
        resolve_allowed(str(model), picker.allow_dirs)
    except NNVitalsError:
        return False
    return True


def model_text(picker: Any) -> tuple[str | None, str | None]:
    """What a link writes for the picker's model: (text, None), or (None, why it is left out)."""
    model = picker.model
    if model_in_link(model, picker):
        return str(model), None
    if isinstance(model, str | Path) and is_upload(model, (Path(picker.upload_dir),)):
        return None, "The link leaves the model out: an uploaded model is kept for this session only."
    return (
        None,
        "The link leaves the model out: it is neither a demo model nor a file under the server's allowed directories.",
    )


def check_model(text: str, picker: Any) -> tuple[str | None, str | None]:
    """A link's model: (what to pick, None), or (None, one line saying why it is refused)."""
    if text in DEMO_MODELS:
        return text, None
    head = f"Link: model {shown(text, 80)} refused"
    if is_upload(text, (Path(picker.upload_dir),)):
        return None, f"{head}: an uploaded model is kept in its own session only; upload it again."
    if not getattr(picker, "allow_dirs", ()):
        return None, f"{head}: expected a demo model ({_listed(list(DEMO_MODELS))})."
    try:
        real = resolve_allowed(text, picker.allow_dirs)
    except NNVitalsError as e:
        return None, f"{head}: {e}"
    if is_upload(real, (Path(picker.upload_dir),)):
        return None, f"{head}: an uploaded model is kept in its own session only; upload it again."
    return str(real), None


# --------------------------------------------------------------------------- links as text
@dataclass
class Link:
    """A link read from a URL: its page, model, settings and selection (all as text, unchecked but
    the page), and the notes of what was ignored."""

    page: str | None = None
    model: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    selection: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the model the picker was given (a demo name or the real path; None when refused or absent)
    model_picked: str | None = None

    @property
    def empty(self) -> bool:
        return self.page is None and self.model is None and not self.settings and not self.selection


def encode(
    page: str | None,
    model: str | None = None,
    settings: Mapping[str, str] | None = None,
    selection: Mapping[str, str] | None = None,
) -> str:
    """A link's query: ``?page=spectra&model=mlp&farms=true&select=fc2.weight``."""
    items: list[tuple[str, str]] = []
    if page:
        items.append((PAGE_KEY, page))
    if model:
        items.append((MODEL_KEY, model))
    items += list((settings or {}).items())
    items += list((selection or {}).items())
    return "?" + urllib.parse.urlencode(items, safe=SAFE, quote_via=urllib.parse.quote)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def parse_query(query: str | Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """A query (``"?a=b&c=d"`` or Panel's ``session_args``: name -> list of bytes) as key -> text
    (the first value of a key); and the notes on what was refused."""
    notes: list[str] = []
    if isinstance(query, Mapping):
        pairs = [
            (_text(k), _text(v[0] if isinstance(v, list | tuple) and v else v)) for k, v in query.items()
        ]
        size = sum(len(k) + len(v) + 2 for k, v in pairs)
    else:
        text = str(query).lstrip("?")
        size = len(text)
        if size > MAX_QUERY_CHARS:
            return {}, [f"Link: longer than {MAX_QUERY_CHARS} characters (ignored)."]
        try:
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_KEYS)
        except ValueError:
            return {}, [f"Link: more than {MAX_KEYS} parts (ignored)."]
    if size > MAX_QUERY_CHARS:
        return {}, [f"Link: longer than {MAX_QUERY_CHARS} characters (ignored)."]
    if len(pairs) > MAX_KEYS:
        return {}, [f"Link: more than {MAX_KEYS} parts (ignored)."]
    out: dict[str, str] = {}
    for k, v in pairs:
        if k.startswith("bokeh-"):  # the server's own
            continue
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,80}", k) or any(not c.isprintable() for c in v):
            notes.append(
                f"Link: part {shown(k, 40)} is not a setting name or holds control characters (ignored)."
            )
            continue
        out.setdefault(k, v)
    return out, notes


def read_link(query: str | Mapping[str, Any], pages: Mapping[str, str]) -> Link:
    """A link's parts (see :class:`Link`); ``pages``: slug -> title of the app's pages. An unknown
    page is left out with a note."""
    values, notes = parse_query(query)
    link = Link(notes=notes)
    page = values.pop(PAGE_KEY, None)
    if page is not None:
        if page in pages:
            link.page = page
        else:
            link.notes.append(
                f"Link: no page {shown(page, 40)} (pages: {', '.join(pages)}); opened the first page."
            )
    model = values.pop(MODEL_KEY, None)
    if model is not None and model.strip():
        link.model = model.strip()
    link.selection = {k: values.pop(k) for k in SELECTION_KEYS if k in values}
    link.settings = values
    return link


# --------------------------------------------------------------------------- a page's link
def page_selection(page: Any) -> dict[str, str]:
    sel = getattr(page, "link_selection", None)
    try:
        return dict(sel()) if callable(sel) else {}
    except Exception:  # a page between results: no selection to write
        return {}


def view_query(app: Any) -> tuple[str, list[str]]:
    """The query of the view ``app`` shows now (page, model, changed settings, selection) and the
    notes of what a link cannot carry (an uploaded model)."""
    notes: list[str] = []
    model, why = model_text(app.picker)
    if why:
        notes.append(why)
    page = app.shown_page()
    settings: dict[str, str] = {}
    selection: dict[str, str] = {}
    if page is not None:
        baseline = getattr(page, "link_baseline", None) or {}
        settings = changed_settings(page, baseline, notes)
        selection = page_selection(page)
    return encode(app.page, model, settings, selection), notes


# --------------------------------------------------------------------------- the sidebar's bar
#: the browser copies the field's link itself (a click is the user's gesture the clipboard asks
#: for); where the clipboard is not allowed the field is selected for copying by hand
COPY_JS = """
const button = source;
const text = field.value;
const done = () => { button.label = 'Copied'; setTimeout(() => { button.label = 'Copy link'; }, 1500); };
const byHand = () => {
  const el = document.querySelectorAll('.nnv-link-field input');
  for (const e of el) { e.focus(); e.select(); }
  button.label = 'Select and copy the link';
};
if (navigator.clipboard && window.isSecureContext) {
  navigator.clipboard.writeText(text).then(done, byHand);
} else {
  byHand();
}
"""


class LinkBar(pn.viewable.Viewer):
    """The "Copy link" button, the link in a read-only text field, and the notes of the last link
    opened (or why the link leaves something out)."""

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.button = pn.widgets.Button(
            name="Copy link", button_type="primary", button_style="outline", width=110,
            css_classes=["nnv-copy-link"],
        )  # fmt: skip
        self.field = pn.widgets.TextInput(
            value="", disabled=False, sizing_mode="stretch_width", css_classes=["nnv-link-field"],
            description="A link to this view: the page, the model, the changed settings and the selection",
        )  # fmt: skip
        # the button is the callback's own ``source``: Panel keeps callbacks in a registry keyed
        # weakly by their button, and a button among the callback's args would keep itself (and
        # this bar) alive for good, one per session
        self.button.js_on_click(args={"field": self.field}, code=COPY_JS)
        self.note = pn.pane.Alert(
            "", alert_type="warning", visible=False, css_classes=["nnv-link-note"], margin=(5, 10),
            sizing_mode="stretch_width",
        )  # fmt: skip
        self._opened: list[str] = []
        self._layout = pn.Column(
            pn.Row(self.button, self.field, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
            css_classes=["nnv-link"],
        )

    def __panel__(self):
        return self._layout

    def show_notes(self, notes: list[str]) -> None:
        """Show the notes of the link this session opened (what was ignored or refused)."""
        lines = [n for n in notes if n]
        self._opened = lines
        text = "\n".join(f"- {shown(line, 400)}" for line in lines)
        if self.note.object != text:
            self.note.object = text
        self.note.visible = bool(lines)

    def set_link(self, url: str) -> None:
        if self.field.value != url:
            self.field.value = url


def base_url() -> str:
    """This session's address without its query (from the request that opened it), or '' outside a
    served session (the link is then relative: ``?page=…``)."""
    loc = pn.state.location if pn.state.curdoc is not None else None
    if loc is None or not getattr(loc, "hostname", ""):
        return ""
    port = f":{loc.port}" if getattr(loc, "port", "") else ""
    return f"{loc.protocol}//{loc.hostname}{port}{loc.pathname or '/'}"
