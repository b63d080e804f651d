"""Connectivity: linear mode connectivity and permutation alignment (Git Re-Basin, REPAIR, Ito et al. 2024).

``spec`` infers which parameter axes share a permutation from the torch.export graph;
``matching`` aligns model B to model A (weight / activation matching, MergeMany);
``path`` evaluates stacked interpolated models (BatchNorm reset, REPAIR), with ``chain`` running
plain layer chains at all points in one pass and ``bnreset`` resetting BatchNorm in any model with
hooks;
``barrier`` defines the loss and accuracy barriers; ``analysis`` holds :class:`ModeConnectivity`.
"""
