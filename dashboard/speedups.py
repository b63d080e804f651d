"""Cheaper serialization of Bokeh models for the server (same output, less CPU per session).

Bokeh serializes a model with ``HasProps.query_properties_with_values(include_defaults=False)``:
it keeps the properties that were set (plus unstable and themed defaults), yet it first computes
the value of *every* property, and an unset property's value is its default, built anew
(``PropertyDescriptor._get_default`` -> ``instance_default`` -> ``themed_default``, a copy of a
container or a new model each time). A figure has a few hundred properties across its models, a
page several thousand: in a served session that waste was a third of the CPU of showing the page
(measured with py-spy; see tests/benchmarks/bench_serve.py), paid on the event loop while every
other session waits.

:func:`install` replaces that method with one that looks up only the properties it will keep. The
result is the same dictionary in the same order (``tests/unit/test_server_process.py`` compares
both on a whole rendered page); the single difference is that a *required* property left unset on
a model that is not serialized with defaults no longer raises while it is skipped (Bokeh's own
validation still reports such models). With ``include_defaults=True`` or ``include_undefined=True``
Bokeh's own method runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bokeh.core.has_props import HasProps
from bokeh.core.property.wrappers import PropertyValueContainer

_ORIGINAL = HasProps.query_properties_with_values


def _query_properties_with_values(
    self: HasProps,
    query: Callable[[Any], bool],
    *,
    include_defaults: bool = True,
    include_undefined: bool = False,
) -> dict[str, Any]:
    if include_defaults or include_undefined:
        return _ORIGINAL(self, query, include_defaults=include_defaults, include_undefined=include_undefined)
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


_query_properties_with_values.__doc__ = _ORIGINAL.__doc__


def install() -> None:
    """Use :func:`_query_properties_with_values` for every Bokeh model (idempotent)."""
    HasProps.query_properties_with_values = _query_properties_with_values  # type: ignore[method-assign]


def uninstall() -> None:
    """Bokeh's own method again (tests compare both)."""
    HasProps.query_properties_with_values = _ORIGINAL  # type: ignore[method-assign]
