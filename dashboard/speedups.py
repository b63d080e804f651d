"""Cheaper Bokeh models for the server: the same models and output, less CPU per session.

A served session builds a few hundred Bokeh models (the template, the page, its plots) and
serializes them, all on the event loop while every other session waits. Profiles of that work
(py-spy on ``nnvitals serve`` while browsers open pages one after another, see
tests/benchmarks/bench_serve.py) show Bokeh recomputing, for every model or every property, facts
that depend only on the model's class, or building text it then throws away. :func:`install`
replaces those few methods with ones that keep the result and skip the waste:

- **Serialization** (``HasProps.query_properties_with_values`` with ``include_defaults=False``):
  Bokeh computes the value of *every* property, building each unset property's default anew (a
  copy of a container or a new model each time), then keeps only the ones that were set (plus
  unstable and themed defaults). The replacement looks up only the properties it keeps. The
  single difference: a *required* property left unset on a model that is not serialized with
  defaults no longer raises while it is skipped (Bokeh's own validation still reports such models).
- **Overridden defaults** (``HasProps._overridden_defaults``): merged over the class's MRO for
  every default of every new model; now once per class (read-only view: nothing writes to it).
- **Which properties need a default at construction** (in ``HasProps.__init__``): Bokeh asks
  every property of the class whether its default is unstable (a container or a model, built per
  instance) at every construction; the answer depends on the class alone and is now kept per class.
- **Theme values** (``HasProps.themed_values``, read for every default looked up): an instance
  attribute read that failed twice through ``__getattr__`` and raised when no theme applies (the
  usual case); now a dictionary lookup.
- **Dict validation** (``Dict.validate``): Bokeh formatted its error message, the nested type's
  text, before checking; now only when the value is refused (same message).
- **Settings** (:func:`pin_settings`, the server only): ``simple_ids``, ``serialize_include_defaults``
  and ``perform_error_diagnostics`` are read for every model made or serialized, each read copying
  Bokeh's configuration dictionaries and reading the environment; the server pins the values they
  have at start-up.

Properties, like Bokeh's own ``properties()`` and ``descriptors()`` caches, are assumed fixed once
a class exists. ``tests/unit/test_speedups.py`` compares every replacement with Bokeh's own method
on whole rendered pages (the same serialized document, the same events) and times both;
:func:`uninstall` restores Bokeh's methods.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from bokeh.core.has_props import HasProps
from bokeh.core.property.container import Dict
from bokeh.core.property.singletons import Intrinsic, Undefined
from bokeh.core.property.wrappers import PropertyValueContainer

# ---------------------------------------------------------------- serialization


def _query_properties_with_values(
    self: HasProps,
    query: Callable[[Any], bool],
    *,
    include_defaults: bool = True,
    include_undefined: bool = False,
) -> dict[str, Any]:
    if include_defaults or include_undefined:
        return _ORIGINAL["query_properties_with_values"](
            self, query, include_defaults=include_defaults, include_undefined=include_undefined
        )
    selected = set(self._property_values) | set(self._unstable_default_values)
    themed_values = self.themed_values()
    themed = set(themed_values) if themed_values is not None else set()
    selected |= themed
    unstable = self._unstable_default_values
    result: dict[str, Any] = {}
    for key in self.properties(_with_props=True):
        if key not in selected:
            continue
        descriptor = self.lookup(key)
        if not query(descriptor):
            continue
        value = descriptor.get_value(self)  # set, unstable or themed: no new default is built
        if key not in themed and key in unstable and isinstance(value, PropertyValueContainer):
            continue
        result[key] = value
    return result


# ---------------------------------------------------------------- per-class facts

_OVERRIDDEN: weakref.WeakKeyDictionary[type, MappingProxyType] = weakref.WeakKeyDictionary()
_UNSTABLE: weakref.WeakKeyDictionary[type, tuple] = weakref.WeakKeyDictionary()


def _overridden_defaults(cls: type[HasProps]) -> MappingProxyType:
    merged = _OVERRIDDEN.get(cls)
    if merged is None:
        merged = _OVERRIDDEN[cls] = MappingProxyType(_ORIGINAL["_overridden_defaults"].__func__(cls))
    return merged


def unstable_descriptors(cls: type[HasProps]) -> tuple:
    """``(name, descriptor)`` of the properties of ``cls`` whose default is built per instance, in
    Bokeh's order of ``properties()`` (what ``HasProps.__init__`` fills in for an unset property)."""
    found = _UNSTABLE.get(cls)
    if found is None:
        found = []
        for name in cls.properties(_with_props=True):
            descriptor = cls.lookup(name)
            # what Bokeh asks of every instance; the answer reads only the class (its lookup()
            # and its __overridden_defaults__), so the class answers in its place
            if descriptor.has_unstable_default(cls):
                found.append((name, descriptor))
        found = _UNSTABLE[cls] = tuple(found)
    return found


def _has_props_init(self: HasProps, **properties: Any) -> None:
    super(HasProps, self).__init__()
    self._property_values = {}
    self._unstable_default_values = {}
    self._unstable_themed_values = {}
    for name, value in properties.items():
        if value is Undefined or value is Intrinsic:
            continue
        setattr(self, name, value)
    for name, descriptor in unstable_descriptors(type(self)):
        if name not in properties:
            descriptor._get(self)  # fills in the unstable default, as Bokeh does
    self._initialized = True


def _themed_values(self: HasProps) -> dict[str, Any] | None:
    # Bokeh's getattr(self, "__themed_values__", None) fails twice (and raises) when no theme
    # applies, the usual case, on every default it looks up; apply_theme() sets it as a plain
    # instance attribute
    return self.__dict__.get("__themed_values__")


# ---------------------------------------------------------------- property types


def _dict_validate(self: Dict, value: Any, detail: bool = True) -> None:
    if isinstance(value, dict):
        super(Dict, self).validate(value, detail)
        key_ok, value_ok = self.keys_type.is_valid, self.values_type.is_valid
        if all(map(key_ok, value)) and all(map(value_ok, value.values())):
            return
    _ORIGINAL["validate"](self, value, detail)  # refused: Bokeh's own message


# ---------------------------------------------------------------- install

#: (owner, attribute, replacement); a classmethod stays one
_PATCHES: list[tuple[type, str, Any]] = [
    (HasProps, "query_properties_with_values", _query_properties_with_values),
    (HasProps, "_overridden_defaults", classmethod(_overridden_defaults)),
    (HasProps, "__init__", _has_props_init),
    (HasProps, "themed_values", _themed_values),
    (Dict, "validate", _dict_validate),
]
_ORIGINAL: dict[str, Any] = {name: owner.__dict__[name] for owner, name, _ in _PATCHES}
_query_properties_with_values.__doc__ = _ORIGINAL["query_properties_with_values"].__doc__
_has_props_init.__doc__ = _ORIGINAL["__init__"].__doc__
_themed_values.__doc__ = _ORIGINAL["themed_values"].__doc__

#: Bokeh settings read per model; the server pins them (:func:`pin_settings`)
PINNED_SETTINGS = ("simple_ids", "serialize_include_defaults", "perform_error_diagnostics")


#: the Bokeh releases the replacements were written for and are tested with (3.x)
SUPPORTED = (3,)


def supported(version: str | None = None) -> bool:
    """Whether this Bokeh (or ``version``) is one the replacements were written for."""
    import bokeh

    major = (version or bokeh.__version__).split(".")[0]
    return major.isdigit() and int(major) in SUPPORTED


def install() -> bool:
    """Use the replacements above for every Bokeh model (idempotent); with a Bokeh they were not
    written for (another major release), leave Bokeh as it is and return False."""
    if not supported():
        return False
    for owner, name, replacement in _PATCHES:
        setattr(owner, name, replacement)
    return True


def uninstall() -> None:
    """Bokeh's own methods again (tests compare both)."""
    for owner, name, _ in _PATCHES:
        setattr(owner, name, _ORIGINAL[name])


def pin_settings() -> dict[str, Any]:
    """Fix the Bokeh settings read for every model to their present values (the server's, at
    start-up: a later change of ``BOKEH_*`` variables then no longer applies); returns them."""
    from bokeh.settings import settings

    pinned = {}
    for name in PINNED_SETTINGS:
        setting = getattr(settings, name)
        pinned[name] = setting()
        setting.set_value(pinned[name])
    return pinned


def unpin_settings() -> None:
    """Bokeh reads its settings anew again."""
    from bokeh.settings import settings

    for name in PINNED_SETTINGS:
        getattr(settings, name).unset_value()
