"""nnvitals analyses: kernels, Param analysis objects and HoloViews views (never Panel).

>>> from analyses import SpectralAnalysis
>>> res = SpectralAnalysis(model="mlp").run()
>>> res.table[["name", "alpha", "warning"]]
"""

__version__ = "0.1.0"

from .core.errors import NNVitalsError  # noqa: E402
from .core.subject import load_subject  # noqa: E402

__all__ = [
    "ConnectivityResult",
    "IBPResult",
    "IBPTightness",
    "LipschitzBounds",
    "LipschitzResult",
    "ModeConnectivity",
    "NNVitalsError",
    "OrbitAnalysis",
    "OrbitResult",
    "SpectralAnalysis",
    "SpectralResult",
    "load_subject",
    "__version__",
]


def __getattr__(name):  # lazy: importing analyses stays cheap for the CLI's --help
    if name in ("SpectralAnalysis", "SpectralResult"):
        from .spectra import analysis

        return getattr(analysis, name)
    if name in ("IBPTightness", "IBPResult", "LipschitzBounds", "LipschitzResult"):
        from .bounds import analysis

        return getattr(analysis, name)
    if name in ("ModeConnectivity", "ConnectivityResult"):
        from .connectivity import analysis

        return getattr(analysis, name)
    if name in ("OrbitAnalysis", "OrbitResult"):
        from .orbits import analysis

        return getattr(analysis, name)
    raise AttributeError(name)
