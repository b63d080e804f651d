"""Certified-bound analyses: IBP tightness and Lipschitz bounds, on the model's exported graph.

Kernels: :mod:`.graph` (export -> typed steps), :mod:`.ibp` (interval propagation, tightness),
:mod:`.lipschitz` (layer operator norms, Jacobian-norm lower bounds). Analysis objects:
:class:`~analyses.bounds.analysis.IBPTightness` and :class:`~analyses.bounds.analysis.LipschitzBounds`.
"""

from __future__ import annotations

__all__ = ["IBPResult", "IBPTightness", "LipschitzBounds", "LipschitzResult"]


def __getattr__(name):  # lazy: importing the package does not import torch.export machinery
    if name in __all__:
        from . import analysis

        return getattr(analysis, name)
    raise AttributeError(name)
