"""The ground floor every analysis family stands on; it imports no family and not the zoo.

Demo models reach ``core`` the other way round: a package that ships some (the zoo,
:mod:`analyses.zoo`) registers a :class:`DemoSource` with :func:`register_demo_source` when it
is imported, and :func:`~analyses.core.subject.load_subject` asks :func:`demo_source` for the
names it does not find on disk. ``import analyses`` imports the zoo (cheaply: no torch), so the
demo names work wherever ``analyses`` is importable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

__all__ = ["DemoSource", "demo_source", "register_demo_source"]


class DemoSource:
    """Where demo models come from.

    ``models``: demo name -> one-line description (the order is the display order);
    ``checkpoint(name)``: the ``.safetensors`` file holding its weights;
    ``load(name)``: the ``torch.nn.Module`` with those weights, in eval mode.
    """

    __slots__ = ("checkpoint", "load", "models")

    def __init__(
        self, models: Mapping[str, str], checkpoint: Callable[[str], Path], load: Callable[[str], Any]
    ) -> None:
        self.models = models
        self.checkpoint = checkpoint
        self.load = load

    def __repr__(self) -> str:
        return f"DemoSource({len(self.models)} models)"


_SOURCE: DemoSource | None = None


def register_demo_source(source: DemoSource) -> None:
    """Make ``source`` the one that demo names are looked up in (the last registered wins)."""
    global _SOURCE
    if not isinstance(source, DemoSource):
        raise TypeError(f"register_demo_source: expected a DemoSource, got {type(source).__name__}")
    _SOURCE = source


def demo_source() -> DemoSource | None:
    """The registered :class:`DemoSource`, or None when no package has registered one."""
    return _SOURCE
