"""The server's cheaper Bokeh methods (dashboard.speedups) against Bokeh's own: whole rendered
pages serialize to the same document, every model class gets the same per-class facts and the
same construction state, refused values the same messages."""

from __future__ import annotations

import json
import re

import pytest

pn = pytest.importorskip("panel")

from bokeh.core.has_props import HasProps  # noqa: E402
from bokeh.core.property.container import Dict  # noqa: E402
from bokeh.core.property.descriptors import PropertyDescriptor  # noqa: E402
from bokeh.core.property.either import Either  # noqa: E402
from bokeh.core.property.primitive import Int, String  # noqa: E402
from bokeh.core.property.wrappers import PropertyValueContainer  # noqa: E402
from bokeh.core.serialization import Serializer  # noqa: E402
from bokeh.document import Document  # noqa: E402
from bokeh.model import Model  # noqa: E402

from dashboard import speedups  # noqa: E402


@pytest.fixture(autouse=True)
def bokeh_own_methods_after(tmp_path, monkeypatch):
    """Every test starts and ends with Bokeh's own methods and settings."""
    monkeypatch.setenv("NNVITALS_CACHE", str(tmp_path / "cache"))
    speedups.uninstall()
    speedups.unpin_settings()
    yield
    speedups.uninstall()
    speedups.unpin_settings()


def _page(slug: str, theme: str | None = None) -> tuple[Document, list]:
    """A page's models as a served session holds them: its settings and main column, rendered
    (in a document with one of Bokeh's built-in themes when ``theme`` names one)."""
    from bokeh.themes import built_in_themes

    from dashboard.app import page_specs

    spec = {s.slug: s for s in page_specs()}[slug]
    page = spec.factory()
    doc = Document()
    if theme:
        doc.theme = built_in_themes[theme]
    doc.add_root(pn.Column(page.controls, page.main).get_root(doc))
    return doc, list(doc.models)


def _canonical(doc: Document) -> str:
    """The document's roots as JSON, buffers inline, with model ids and Panel's object names
    ("Column00347") and uuids numbered by first appearance and run times left out: two builds of a page
    differ in those only."""
    text = json.dumps(Serializer(deferred=False).encode(doc.roots), sort_keys=True)
    text = re.sub(r"(in|took) \d+(\.\d+)? (ms|s)\b", r"\1 T", text)  # how long the run took
    ids: dict[str, str] = {}
    pattern = r'(?<=[":])(p\d+|[A-Z][A-Za-z]*\d{5}|[0-9a-f]{32})(?=")'  # "p12", "__ref:p12", ...
    return re.sub(pattern, lambda m: ids.setdefault(m.group(0), f"ID{len(ids)}"), text)


@pytest.mark.parametrize(
    "slug, theme", [("spectra", None), ("vitals", None), ("orbits", None), ("spectra", "dark_minimal")]
)
def test_a_rendered_page_serializes_as_with_bokehs_own_methods(slug, theme):
    _page(slug)  # its results in the store: the next two builds read them
    own_doc, own_models = _page(slug, theme)  # Bokeh's methods and settings
    own = _canonical(own_doc)
    own_themed = [m.themed_values() for m in own_models]
    speedups.install()
    speedups.pin_settings()
    fast_doc, fast_models = _page(slug, theme)
    fast = _canonical(fast_doc)
    assert len(own_models) > 40, len(own_models)
    assert sorted(type(m).__name__ for m in fast_models) == sorted(type(m).__name__ for m in own_models)
    assert fast == own
    themed = [m.themed_values() for m in fast_models]
    assert sum(v is not None for v in themed) == sum(v is not None for v in own_themed)
    assert (sum(v is not None for v in themed) > 20) == bool(theme), theme  # the theme reached the models


def _model_classes() -> list[type[HasProps]]:
    import panel.models  # noqa: F401  (Panel's own model classes)

    return sorted(Model.model_class_reverse_map.values(), key=lambda c: (c.__module__, c.__qualname__))


def test_per_class_facts_are_bokehs_for_every_model_class():
    """What the replacements keep per class is what Bokeh computes per instance."""
    classes = _model_classes()
    assert len(classes) > 400, len(classes)  # Bokeh's models and Panel's
    made = 0
    for cls in classes:
        own_overrides = speedups._ORIGINAL["_overridden_defaults"].__func__(cls)
        assert dict(speedups._overridden_defaults(cls)) == own_overrides, cls
        try:
            obj = cls()
        except Exception:  # an abstract model, or one with required properties
            continue
        made += 1
        rule = [n for n in cls.properties(_with_props=True) if obj.lookup(n).has_unstable_default(obj)]
        assert [n for n, _ in speedups.unstable_descriptors(cls)] == rule, cls
    assert made > 300, made


def _state(obj: HasProps) -> tuple:
    def shape(values: dict) -> dict:
        return {k: type(v).__name__ for k, v in values.items()}

    return (
        shape(obj._property_values),
        shape(obj._unstable_default_values),
        shape(obj._unstable_themed_values),
        obj._initialized,
    )


def test_a_new_model_is_in_the_state_bokeh_leaves_it():
    """Every model class that builds without arguments, and a few with them: the same properties
    set, the same unstable defaults filled in, each of them a new value of its own."""
    from bokeh.models import ColumnDataSource, HoverTool, Scatter, TableColumn
    from bokeh.plotting import figure

    cases = [(cls, {}) for cls in _model_classes()] + [
        (ColumnDataSource, {"data": {"x": [1, 2]}}),
        (HoverTool, {"tooltips": [("x", "@x")]}),
        (Scatter, {"x": "x", "y": 2, "size": 5}),
        (TableColumn, {"field": "a", "title": "A"}),
        (figure, {"width": 300, "tools": "tap"}),
    ]
    compared = 0
    for cls, kwargs in cases:
        try:
            own = cls(**kwargs)
        except Exception:
            continue
        speedups.install()
        try:
            fast, again = cls(**kwargs), cls(**kwargs)
        finally:
            speedups.uninstall()
        assert _state(fast) == _state(own), cls
        for name, value in fast._unstable_default_values.items():
            if isinstance(value, (PropertyValueContainer, HasProps)):  # a list, a dict, a model
                assert again._unstable_default_values[name] is not value, (cls, name)  # not shared
        compared += 1
    assert compared > 300, compared


def test_serialization_builds_no_defaults_it_leaves_out():
    """Serializing a whole rendered page gives Bokeh's own output without building the default
    value of every property it then leaves out (a third of the CPU of showing a page)."""
    doc, _ = _page("spectra")
    defaults = []
    original = PropertyDescriptor.instance_default

    def counting(self, obj):  # a default value built
        defaults.append(self.name)
        return original(self, obj)

    def encode() -> str:  # buffers differ by id and address only
        rep = Serializer().encode(doc.roots)
        return re.sub(r"Buffer\(id=.*?\)\)", "BUF", json.dumps(rep, default=str, sort_keys=True))

    PropertyDescriptor.instance_default = counting
    try:
        speedups.install()
        fast = encode()  # first: it must not build defaults Bokeh's own pass would then keep
        fast_defaults = len(defaults)
        speedups.uninstall()
        defaults.clear()
        slow = encode()
        slow_defaults = len(defaults)
    finally:
        PropertyDescriptor.instance_default = original
    assert fast == slow
    assert slow_defaults > 1000, slow_defaults  # what Bokeh's own method computes and drops
    assert fast_defaults * 50 < slow_defaults, (fast_defaults, slow_defaults)  # themed ones only


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1},
        {},
        {1: 1},
        {"a": "x"},
        {1: "x", "b": 2},
        [("a", 1)],
        None,
    ],
)
@pytest.mark.parametrize("detail", [True, False])
def test_dict_validation_accepts_and_refuses_as_bokeh_does(value, detail):
    prop = Dict(String, Either(Int, Dict(String, Int)))

    def outcome() -> str:
        try:
            prop.validate(value, detail)
        except ValueError as e:
            return f"refused: {e}"
        return "accepted"

    own = outcome()
    speedups.install()
    assert outcome() == own
    assert (own == "accepted") == (isinstance(value, dict) and all(isinstance(k, str) for k in value)
                                   and all(isinstance(v, int) for v in value.values()))  # fmt: skip


def test_pinned_settings_keep_their_start_up_values(monkeypatch):
    from bokeh.settings import settings

    monkeypatch.delenv("BOKEH_SIMPLE_IDS", raising=False)
    pinned = speedups.pin_settings()
    assert set(pinned) == set(speedups.PINNED_SETTINGS)
    assert pinned["simple_ids"] is True
    monkeypatch.setenv("BOKEH_SIMPLE_IDS", "false")
    assert settings.simple_ids() is True  # pinned: the environment is no longer read
    speedups.unpin_settings()
    assert settings.simple_ids() is False  # Bokeh reads it again


def test_another_major_bokeh_release_keeps_its_own_methods(monkeypatch):
    import bokeh

    assert speedups.supported("3.9.2") and speedups.supported("3.5.0")
    assert not speedups.supported("4.0.0") and not speedups.supported("dev")
    monkeypatch.setattr(bokeh, "__version__", "4.0.0")
    assert speedups.install() is False
    assert HasProps.__init__ is speedups._ORIGINAL["__init__"]
    monkeypatch.setattr(bokeh, "__version__", "3.9.2")
    assert speedups.install() is True
    assert HasProps.__init__ is speedups._has_props_init
