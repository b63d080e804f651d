"""nnvitals analyses: kernels, Param analysis objects and HoloViews views (never Panel).

>>> from analyses import SpectralAnalysis
>>> res = SpectralAnalysis(model="mlp").run()
>>> res.table[["name", "alpha", "warning"]]

The analysis and result classes are the ones :mod:`analyses.registry` declares; each is imported
on first use, so importing ``analyses`` (or the CLI's ``--help``) loads no torch.
"""

__version__ = "0.1.0"

from . import zoo  # noqa: E402, F401  (registers the demo models with analyses.core; no torch)
from .registry import exported_names as _exported_names  # noqa: E402

_LAZY = {
    **_exported_names(),
    "NNVitalsError": "analyses.core.errors:NNVitalsError",
    "load_subject": "analyses.core.subject:load_subject",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    path = _LAZY.get(name)
    if path is None:
        raise AttributeError(f"module 'analyses' has no attribute {name!r}")
    from .registry import resolve

    value = resolve(path)
    globals()[name] = value
    return value
