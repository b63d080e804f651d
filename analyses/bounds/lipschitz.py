"""Lipschitz constants (2-norm): certified upper bounds layer by layer, empirical lower bounds.

Reference: Khromov & Singh, "Some Intriguing Aspects about Lipschitz Continuity of Neural
Networks" (ICLR 2024), section 3 (upper bound: product of layer norms; lower bound: the
largest input-Jacobian norm over data), and the reference sheet, section 4.

*Upper bound.* Every step gets its own constant ``L_s`` (:func:`layer_constant`) and the bound
of a node is propagated through the graph: ``U(s) = L_s U(input)`` for a step with one input,
``U(a + alpha b) = U(a) + |alpha| U(b)`` for an addition (a residual block ``x + f(x)`` gives
``U(x) (1 + L_f)``; a branch broadcast to ``k`` times its size counts ``sqrt(k)`` times),
``U(cat(a, b)) = sqrt(U(a)^2 + U(b)^2)`` for a concatenation, ``L sqrt(U(a)^2 + U(b)^2)`` for any other
step of two inputs (``Rule.compose``, :func:`compose`).

Layer constants (all exact operator norms unless noted):

* linear: spectral norm ``||W||_2``;
* convolution: the norm of the convolution *operator* on the traced input size, never of the
  reshaped kernel. Lanczos iteration on ``A^T A`` with ``conv`` and ``conv_transpose`` (the
  adjoint; ``output_padding`` restores the input size) for any zero padding, stride, dilation
  and groups. With circular padding and stride 1 the operator is block-circulant and its norm
  is exact by FFT (Sedghi, Gupta & Long 2019, Theorem 6: the maximum over frequencies of the
  singular values of the kernel's DFT, zero-padded to the input size). Other pre-paddings
  (circular with stride > 1, reflect, replicate) use Lanczos with the autograd adjoint;
* batch norm not folded into a conv: ``max |gamma / sqrt(var + eps)|``; folded: part of the conv;
* average pooling, adaptive average pooling, padding, spatial means: their operator norms by
  Lanczos with the autograd adjoint (``k x k``, stride ``k``: ``1 / k``);
* ReLU: 1; LeakyReLU(a): ``max(1, |a|)``; hardtanh / ReLU6 / clamp: 1; tanh: 1; sigmoid: 1/4;
  GELU ``Phi(sqrt 2) + sqrt 2 phi(sqrt 2) ~ 1.1289``; SiLU ~1.0998; hardswish 3/2 (``sup |f'|``);
  reshapes: 1; ``sum`` of ``k`` units: ``sqrt(k)``;
* layer / RMS norm: ``max |gamma| / sqrt(eps)``, global but reached only at zero variance (huge,
  and the table says so); a product or quotient of two tensors: none (``inf``, with the reason);
* max pooling: 1 when windows do not overlap. Overlapping windows: each input lies in at most
  ``m = prod_d min(k_d, ceil((dil_d (k_d - 1) + 1) / s_d))`` windows, so
  ``||maxpool(x) - maxpool(y)||^2 <= sum_windows max_i |x_i - y_i|^2 <= m ||x - y||^2`` and the
  constant is ``sqrt(m)`` (an upper bound, not exact).

*Local bounds* (:func:`network_bounds`): where a step has no useful global constant, the same
composition runs per sample over the IBP boxes of the L-inf ball of radius ``eps`` around each
sample (:func:`~analyses.bounds.ibp.interval_bounds`), each step contributing its constant on its
input box (``Rule.local_lipschitz``: layer norm ``max |gamma| / sqrt(v + eps)`` with ``v`` the least
variance over the box; ``a b``: ``sqrt(k_a max|b|^2 + k_b max|a|^2)``; smooth activations the largest
slope over the box; otherwise the global constant). The result bounds the Lipschitz constant of
the network on each sample's ball (not globally).

The iterative norms (Lanczos on ``A^T A``, :func:`lanczos_top`, "Lanczos on A^T A" in the method
column; the top Ritz pair of each step's tridiagonal matrix by LAPACK's bisection, not a dense
eigensolve) converge from below: the top Ritz pair of ``A^T A`` has a relative residual of at
most ``tol`` after convergence, and tests compare it with the exact FFT and
dense-matrix values. Norms are cached by the step's shapes and its parameters' fingerprints
(:func:`layer_constants`: a layer seen again costs one hash), convolutions of one shape run as one
grouped convolution, and each shape's last top singular vector warm-starts the next one. On the
CPU a float64 convolution norm takes most of its products in float32 (to a residual of
:data:`ROUGH_TOL`), then goes on in float64 from each operator's vector to the tolerance asked
for: the same value (a float64 Ritz value, from below), in about 60% of the time (ResNet-18 at
32x32: 10.9 s to 6.5-7.3 s, the network's bound equal to 12 digits).

*Lower bound.* ``max_x ||J_f(x)||_2`` over samples (also mean and RMS), for every node: the
spectral norm of each sample's input Jacobian, batched over samples (the Jacobians of
different samples are independent blocks). Small outputs (<= ``exact_max`` units): the full
Jacobian from one ``vjp`` vmapped over the output basis, then ``matrix_norm(ord=2)``. Larger
outputs: batched power iteration on ``J^T J`` with ``torch.func.vjp`` for ``J^T u`` and, for
``J v``, the vjp of that linear map (a JVP without re-running the forward pass). Optional sharpening
(:func:`sharpen`): gradient ascent on ``||J(x) v||`` from the worst samples.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.errors import NNVitalsError
from ..core.graph import kind_rule
from ..core.graph.ops import maxpool_constant
from .graph import AFFINE_KINDS, Graph, Step, apply, numel

# ---------------------------------------------------------------------------- operator norms


def lanczos_top(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    iters: int = 1000,
    tol: float = 1e-7,
    max_basis: int | None = None,
    reorth: str = "local",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenpairs of ``G`` symmetric positive semi-definite operators ``M_g`` at once (Lanczos).

    ``matvec`` maps a ``(G, n)`` batch to ``(M_1 v_1, ..., M_G v_G)``; ``start`` (``(G, n)``) holds the
    start vectors. Lanczos with full re-orthogonalisation builds the Krylov basis ``v, M v, M^2 v, ...``
    of each operator and takes the top Ritz value of the tridiagonal matrix: the largest Rayleigh
    quotient over that subspace, which never exceeds ``lambda_max`` and is at least the one block
    power iteration reaches from the same vector in as many products (Chebyshev acceleration: clustered
    top eigenvalues, common for convolutions, cost far fewer products). Each operator stops counting
    when its top Ritz pair ``(theta, y)`` satisfies ``||M y - theta y|| <= tol * theta`` (the residual
    ``rho`` is ``beta_k |s_k|``, no extra product) or after ``iters`` products. ``reorth="local"``
    (default) orthogonalises each new vector against the last two only (the three-term recurrence):
    the extreme Ritz values of Lanczos in floating point stay inside the spectrum and the top one
    converges as with full re-orthogonalisation (Paige 1976; lost orthogonality only adds copies of
    converged values), at ``O(n)`` per step instead of ``O(k n)`` memory traffic over the basis;
    ``reorth="full"`` orthogonalises against the whole basis. (Stopping on an
    estimate of the value's error instead, ``rho^2`` over the gap to the next Ritz value, stops early
    on a near-double top singular value: the gap of the Ritz values is not the true one.) A full
    basis (``max_basis`` vectors) restarts from the top Ritz vector. Returns ``(theta, y)``, shapes ``(G,)`` and ``(G, n)``.
    """
    g, n = start.shape
    dt = start.dtype
    if max_basis is None:  # the basis of all G operators within ~512 MiB
        max_basis = max(32, int(512 * 2**20 // (start.element_size() * n * g)))
    q = start / start.norm(dim=1, keepdim=True).clamp_min(1e-300)
    best = torch.zeros(g, dtype=torch.float64)
    vec = q.clone()
    done = torch.zeros(g, dtype=torch.bool)
    steps = 0
    while steps < iters and not bool(done.all()):
        m = min(max_basis, n, iters - steps)
        basis = torch.zeros((g, m + 1, n), dtype=dt, device=start.device)
        basis[:, 0] = q
        alpha = torch.zeros((g, m), dtype=torch.float64)
        beta = torch.zeros((g, m), dtype=torch.float64)
        s = torch.ones((g, 1), dtype=torch.float64)
        k = 0
        for j in range(m):
            w = matvec(basis[:, j])
            steps += 1
            alpha[:, j] = (w * basis[:, j]).sum(1).double().cpu()
            # against the whole basis (``full``) or the last two vectors (``local``: the three-term
            # recurrence; twice is enough either way)
            prev = basis[:, : j + 1] if reorth == "full" else basis[:, max(0, j - 1) : j + 1]
            for _ in range(2):
                w = w - torch.einsum("gkn,gk->gn", prev, torch.einsum("gkn,gn->gk", prev, w))
            b = w.norm(dim=1)
            beta[:, j] = b.double().cpu()
            k = j + 1
            theta, s = _top_ritz(alpha[:, :k], beta[:, : k - 1])
            best = torch.where(done, best, torch.maximum(best, theta))
            resid = beta[:, j] * s[:, -1].abs()
            scale = theta.abs().clamp_min(1e-300)
            done = done | (resid <= tol * scale) | (theta <= 0) | (beta[:, j] <= 1e-13 * scale)
            basis[:, j + 1] = w / b.clamp_min(1e-300).unsqueeze(1)
            if bool(done.all()) or steps >= iters:
                break
        vec = torch.einsum("gk,gkn->gn", s.to(dt).to(start.device), basis[:, :k])
        q = vec / vec.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return best.clamp_min(0), vec


def _top_ritz(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The top eigenpair of each of ``G`` symmetric tridiagonal matrices (diagonals ``alpha`` ``(G, k)``,
    off-diagonals ``beta`` ``(G, k - 1)``, float64 on the host): ``(theta (G,), s (G, k))``. LAPACK's
    bisection and inverse iteration for the one eigenpair (``scipy.linalg.eigh_tridiagonal``, ``O(k)``
    per matrix), not a dense ``eigh`` of all ``k`` (``O(k^3)``, most of a small operator's Lanczos time
    once ``k`` reaches 100); the dense one where LAPACK's selection fails."""
    from scipy.linalg import LinAlgError, eigh_tridiagonal

    g, k = alpha.shape
    if k == 1:
        return alpha[:, 0].clone(), torch.ones((g, 1), dtype=alpha.dtype)
    a, b = alpha.numpy(), beta.numpy()
    thetas, vecs = [], []
    try:
        for i in range(g):
            w, v = eigh_tridiagonal(a[i], b[i], select="i", select_range=(k - 1, k - 1))
            thetas.append(float(w[0]))
            vecs.append(torch.from_numpy(v[:, 0].copy()))
    except (LinAlgError, ValueError):
        tri = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
        ev, evec = torch.linalg.eigh(tri)
        return ev[:, -1], evec[:, :, -1]
    return torch.tensor(thetas, dtype=torch.float64), torch.stack(vecs)


def power_iteration(
    forward: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    in_shape: tuple[int, ...],
    iters: int = 1000,
    tol: float = 1e-7,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    block: int = 1,
    start: torch.Tensor | None = None,
) -> float | torch.Tensor:
    """Largest singular value of a linear operator ``A`` given ``A`` and ``A^T``: the square root of
    the top eigenvalue of ``A^T A`` by :func:`lanczos_top` (Krylov iteration from a seeded random
    vector, or ``start``), within ``tol`` (its stopping rule).

    ``block > 1`` runs ``block`` operators at once: ``forward`` and ``adjoint`` then take and return
    ``(block, *shape)`` batches whose row ``g`` belongs to operator ``g`` (e.g. several convolutions
    stacked as one grouped convolution), and the result is a tensor of ``block`` norms.
    """
    n = math.prod(in_shape)
    g = max(1, block)
    if start is None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        start = torch.randn((1, n), generator=gen, dtype=torch.float64).expand(g, n)
    start = start.reshape(g, n).to(device, dtype)

    def matvec(v):
        return adjoint(forward(v.reshape(g, *in_shape))).reshape(g, n)

    with torch.no_grad():
        theta, _ = lanczos_top(matvec, start, iters=iters, tol=tol)
    sig = theta.sqrt()
    return sig if block > 1 else float(sig[0])


def autograd_operator_norm(
    fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...], **kw
) -> float:
    """Operator norm of a linear ``fn`` (batch of one ``in_shape`` sample), adjoint by autograd."""
    dev, dt = kw.get("device", "cpu"), kw.get("dtype", torch.float32)
    kw = {k: v for k, v in kw.items() if k != "block"}
    with torch.no_grad():  # torch.func.vjp ignores no_grad; parameters of fn stay out of autograd
        _, adj = torch.func.vjp(fn, torch.zeros((1, *in_shape), device=dev, dtype=dt))
    return power_iteration(fn, lambda u: adj(u)[0], in_shape, **kw)


def conv_output_padding(
    in_size: tuple[int, ...], out_size: tuple[int, ...], kernel, stride, padding, dilation
) -> tuple[int, ...]:
    """``output_padding`` that makes ``conv_transpose`` return exactly ``in_size``."""
    return tuple(
        n - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
        for n, o, k, s, p, d in zip(in_size, out_size, kernel, stride, padding, dilation)
    )


def conv_operator_norm(
    weight: torch.Tensor,
    in_shape: tuple[int, ...],
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    **kw,
) -> float:
    """Spectral norm of the zero-padded convolution operator on inputs of shape ``in_shape``.

    Lanczos iteration on ``A^T A`` with ``conv`` as ``A`` and ``conv_transpose`` (same weight, stride,
    padding, dilation, groups, matching ``output_padding``) as ``A^T`` (module docstring).
    """
    return float(conv_operator_norms([weight], in_shape, stride, padding, dilation, groups, **kw)[0][0])


#: the float32 pass of a float64 convolution norm stops at this relative residual (conv_operator_norms)
ROUGH_TOL = 1e-6
#: how much of the random start vector the float64 pass adds to the float32 pass's vectors
REFINE_NOISE = 1e-6


def conv_operator_norms(
    weights: list[torch.Tensor],
    in_shape: tuple[int, ...],
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    iters: int = 1000,
    tol: float = 1e-7,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    start: torch.Tensor | None = None,
    warm_noise: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`conv_operator_norm` of ``G`` convolutions of one shape at once: ``(norms (G,), top right
    singular vectors (G, n))``. The ``G`` kernels are stacked into one grouped convolution (``G *
    groups`` groups on ``G`` stacked inputs), so every Lanczos step is one ``conv`` and one
    ``conv_transpose`` call for all of them; each operator's iteration is the one it would run alone
    (the same start vector: ``start`` (``(n,)``, a warm start) or the seeded random one)."""
    w0 = weights[0]
    nd = w0.ndim - 2
    rep = lambda v: (v,) * nd if isinstance(v, int) else tuple(v)  # noqa: E731
    stride, padding, dilation = rep(stride), rep(padding), rep(dilation)
    conv = F.conv1d if nd == 1 else F.conv2d
    convt = F.conv_transpose1d if nd == 1 else F.conv_transpose2d
    g = len(weights)
    w = torch.cat([wi.to(device, dtype) for wi in weights]) if g > 1 else w0.to(device, dtype)
    cin = in_shape[0]
    probe = torch.zeros((1, *in_shape), device=w.device, dtype=w.dtype)
    out_size = tuple(conv(probe, w0.to(device, dtype), None, stride, padding, dilation, groups).shape[2:])
    op = conv_output_padding(tuple(in_shape[1:]), out_size, w0.shape[2:], stride, padding, dilation)
    n = math.prod(in_shape)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rand = torch.randn((n,), generator=gen, dtype=torch.float64)

    def started(warm: torch.Tensor | None, noise: float) -> torch.Tensor:
        """``(g, n)`` start vectors: the random one, or ``warm`` (one row, or one per operator) with a
        little of it (no direction is missing)."""
        v = rand.reshape(1, n)
        if warm is not None:
            warm = warm.reshape(-1, n).double().cpu()
            v = warm / warm.norm(dim=1, keepdim=True).clamp_min(1e-300) + noise * v / rand.norm()
        return v.expand(g, n).to(w.device, w.dtype)

    spatial = tuple(in_shape[1:])

    def matvec_of(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def matvec(v):
            u = conv(v.reshape(1, g * cin, *spatial), weight, None, stride, padding, dilation, g * groups)
            back = convt(u, weight, None, stride, padding, op, g * groups, dilation)
            return back.reshape(g, n)

        return matvec

    with torch.no_grad():
        first = started(start, warm_noise)
        if w.dtype == torch.float64 and w.device.type == "cpu" and tol < ROUGH_TOL:
            # most products in float32 (CPU convolutions take a fraction of float64's time) to
            # ROUGH_TOL, then float64 from each operator's vector to ``tol``: the value is still the
            # top Ritz value of a float64 Krylov space, from below, with the residual asked for
            _, rough = lanczos_top(matvec_of(w.float()), first.float(), iters=iters, tol=ROUGH_TOL)
            first = started(rough, REFINE_NOISE)
        theta, vec = lanczos_top(matvec_of(w), first, iters=iters, tol=tol)
    return theta.sqrt(), vec


def conv_fft_norm(weight: torch.Tensor, spatial: tuple[int, ...], dilation=1, groups: int = 1) -> float:
    """Exact spectral norm of a *circular* convolution with stride 1 (Sedghi et al. 2019, Thm 6).

    The kernel (groups expanded to a block-diagonal dense kernel, dilation spread out) is placed
    on the ``spatial`` grid (indices mod n), transformed with an n-D FFT, and the answer is the
    largest singular value of the ``(c_out, c_in)`` matrices over all frequencies.
    """
    nd = weight.ndim - 2
    dil = (dilation,) * nd if isinstance(dilation, int) else tuple(dilation)
    w = weight.double()
    cout, cin_g = w.shape[:2]
    dense = torch.zeros((cout, cin_g * groups, *w.shape[2:]), dtype=w.dtype, device=w.device)
    og = cout // groups
    for g in range(groups):
        dense[g * og : (g + 1) * og, g * cin_g : (g + 1) * cin_g] = w[g * og : (g + 1) * og]
    grid = torch.zeros((cout, cin_g * groups, *spatial), dtype=w.dtype, device=w.device)
    for idx in torch.cartesian_prod(*[torch.arange(k) for k in w.shape[2:]]).reshape(-1, nd).tolist():
        pos = tuple((i * d) % n for i, d, n in zip(idx, dil, spatial))
        grid[(slice(None), slice(None), *pos)] += dense[(slice(None), slice(None), *idx)]
    spec = torch.fft.fftn(grid, dim=tuple(range(2, 2 + nd)))
    mats = spec.permute(*range(2, 2 + nd), 0, 1).reshape(-1, cout, cin_g * groups)
    return float(torch.linalg.svdvals(mats).max())


class _Norms:
    """The operator-norm estimators a rule's :meth:`~analyses.core.graph.Rule.lipschitz` uses,
    with this run's settings (iterations, tolerance, seed, and the weight's device and dtype)."""

    def __init__(self, kw: dict, convs: dict | None = None):
        self.kw = kw
        self.convs = convs or {}  # norms already computed in a batch: {request key: norm}

    def conv(self, weight, in_shape, stride, padding, dilation, groups) -> float:
        hit = self.convs.get(_conv_request(weight, in_shape, stride, padding, dilation, groups))
        if hit is not None:
            return hit
        return conv_operator_norm(weight, in_shape, stride, padding, dilation, groups, **self.kw)

    def conv_fft(self, weight, spatial, dilation, groups) -> float:
        return conv_fft_norm(weight, spatial, dilation, groups)

    def autograd(self, fn: Callable[[torch.Tensor], torch.Tensor], in_shape) -> float:
        return autograd_operator_norm(fn, in_shape, **self.kw)


class _Collect(_Norms):
    """Records the convolution norms a rule asks for, computing nothing (NaN): the first pass of
    :func:`layer_constants`, which then computes them in batches of one shape."""

    def __init__(self, kw: dict):
        super().__init__(kw)
        self.requests: list[tuple] = []
        self.used = False  # whether the rule asked for any norm (else its first answer is final)

    def conv(self, weight, in_shape, stride, padding, dilation, groups) -> float:
        self.used = True
        self.requests.append((weight, tuple(in_shape), stride, padding, dilation, groups))
        return math.nan

    def conv_fft(self, weight, spatial, dilation, groups) -> float:
        self.used = True
        return math.nan

    def autograd(self, fn, in_shape) -> float:
        self.used = True
        return math.nan


def _conv_request(weight, in_shape, stride, padding, dilation, groups) -> tuple:
    return (id(weight), tuple(in_shape), _plain(stride), _plain(padding), _plain(dilation), int(groups))


def _plain(v):
    return tuple(v) if isinstance(v, list | tuple) else v


def fingerprint(t: torch.Tensor) -> str:
    """Content hash of a tensor (shape, dtype, device, bytes): the cache key of its operator norm."""
    data = t.detach().reshape(-1).contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(t.shape), str(t.dtype), t.device.type)).encode())
    h.update(data.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


#: operator norms by (step signature, weight fingerprints, settings): a layer seen again (the same
#: weights, in another run, task or checkpoint) costs one hash
_CACHE: dict[tuple, tuple[float, str]] = {}
#: the last top singular vector per convolution shape: the warm start of the next one of that shape
_WARM: dict[tuple, torch.Tensor] = {}
_CACHE_MAX = 4096
_LOCK = threading.Lock()  # tasks of a run may share the cache from several threads


def clear_norm_cache() -> None:
    """Forget every cached operator norm and warm start."""
    _CACHE.clear()
    _WARM.clear()


def _step_key(step: Step, iters: int, tol: float, seed: int) -> tuple | None:
    """``(kind, shapes, every parameter: tensors by fingerprint, others by value, settings)``; ``None``
    when a parameter has no stable value (never cached)."""
    parts = []
    for k in sorted(step.params):
        v = step.params[k]
        if isinstance(v, torch.Tensor):
            parts.append((k, fingerprint(v)))
        elif v is None or isinstance(v, int | float | str | bool | tuple | list):
            parts.append((k, repr(v)))
        else:
            return None
    return (step.kind, tuple(step.in_shape), tuple(step.out_shape), tuple(parts), iters, float(tol), seed)


def _settings(step: Step, iters: int, tol: float, seed: int) -> dict:
    w = step.params.get("weight")
    kw = dict(iters=iters, tol=tol, seed=seed)
    if isinstance(w, torch.Tensor):
        kw.update(device=w.device, dtype=w.dtype)
    return kw


def layer_constant(step: Step, iters: int = 1000, tol: float = 1e-7, seed: int = 0) -> tuple[float, str]:
    """``(L_s, method)``: the step's own Lipschitz constant (2-norm) and how it was computed
    (the operator's rule in the graph layer's table). Cached by the step's shapes and parameters'
    fingerprints (:func:`layer_constants`).

    Additions and concatenations have no constant of their own (NaN): they combine branches.
    """
    return layer_constants([step], iters=iters, tol=tol, seed=seed)[step.name]


def layer_constants(
    steps: list[Step], iters: int = 1000, tol: float = 1e-7, seed: int = 0, warm: bool = True
) -> dict[str, tuple[float, str]]:
    """:func:`layer_constant` of many steps: ``{name: (L_s, method)}``, the same numbers, faster.

    Cached ones cost a hash; of the others, every convolution norm a rule asks for is computed in one
    batch with the others of its shape (:func:`conv_operator_norms`), warm-started (``warm``) from
    the last top singular vector of that shape, then the rules run with those norms.
    """
    out: dict[str, tuple[float, str]] = {}
    todo: list[tuple[Step, tuple | None, dict]] = []
    for s in steps:
        key = _step_key(s, iters, tol, seed)
        if key is not None and key in _CACHE:
            out[s.name] = _CACHE[key]
        else:
            todo.append((s, key, _settings(s, iters, tol, seed)))
    # requests hold their weight tensors until the rules' second pass is over, so a request key (the
    # weight's id) cannot be taken by a new tensor meanwhile
    groups: dict[tuple, list[tuple]] = {}
    first: dict[str, tuple[float, str]] = {}
    for s, _, kw in todo:
        col = _Collect(kw)
        res = kind_rule(s.kind).lipschitz(s, col)
        if not col.used:
            first[s.name] = res
        for req in col.requests:
            weight, in_shape, stride, padding, dilation, gr = req
            if not isinstance(weight, torch.Tensor):
                continue
            sig = (
                tuple(weight.shape), in_shape, _plain(stride), _plain(padding), _plain(dilation), int(gr),
                str(kw.get("device", "cpu")), kw.get("dtype", torch.float32),
            )  # fmt: skip
            groups.setdefault(sig, []).append(req)
    done: dict[tuple, float] = {}
    for sig, reqs in groups.items():
        uniq = {_conv_request(*r): r for r in reqs}
        reqs = list(uniq.values())
        weight, in_shape, stride, padding, dilation, gr = reqs[0]
        dev, dt = sig[-2], sig[-1]
        start = _WARM.get(sig) if warm else None
        norms, vecs = conv_operator_norms(
            [r[0] for r in reqs], in_shape, stride, padding, dilation, gr, iters=iters, tol=tol, seed=seed,
            device=dev, dtype=dt, start=start,
        )  # fmt: skip
        with _LOCK:
            _WARM[sig] = vecs[int(norms.argmax())].detach().clone()
        for r, v in zip(reqs, norms.tolist()):
            done[_conv_request(*r)] = v
    for s, key, kw in todo:
        res = first[s.name] if s.name in first else kind_rule(s.kind).lipschitz(s, _Norms(kw, done))
        out[s.name] = res
        if key is not None:
            with _LOCK:
                while len(_CACHE) >= _CACHE_MAX:
                    _CACHE.pop(next(iter(_CACHE)))
                _CACHE[key] = res
    return out


def compose(step: Step, const, ups: list):
    """The bound of the network up to ``step`` from its own constant and its inputs' bounds (numbers
    or per-sample tensors), by the operator's rule: ``L U`` for one input, ``U_a + |alpha| U_b`` for an
    addition, ``sqrt(sum U_i^2)`` for a concatenation (module docstring)."""
    return kind_rule(step.kind).compose(step, const, ups)


def local_constant(
    step: Step,
    boxes: list[tuple[torch.Tensor, torch.Tensor]],
    iters: int = 1000,
    tol: float = 1e-7,
    seed: int = 0,
) -> tuple[torch.Tensor | float, str]:
    """``(L_b, method)``: the step's Lipschitz constant on each sample's input box (``boxes``: its
    inputs' (lower, upper), batched), per sample, or one number when the global one is used."""
    w = step.params.get("weight")
    kw = dict(iters=iters, tol=tol, seed=seed)
    if isinstance(w, torch.Tensor):
        kw.update(device=w.device, dtype=w.dtype)
    return kind_rule(step.kind).local_lipschitz(step, boxes, _Norms(kw))


def network_bounds(
    graph: Graph,
    consts: dict[str, tuple[float, str]] | None = None,
    x: torch.Tensor | None = None,
    eps: float = 0.0,
    lo: float = -math.inf,
    hi: float = math.inf,
    **kw,
) -> dict[str, dict]:
    """Per step: its own constant and method (``consts``, else :func:`layer_constant`), the global
    upper bound of the network up to it (``upper``, ``inf`` after a step without a global constant,
    whose ``method`` says why), and, with samples ``x``, the local bounds on the L-inf boxes of radius
    ``eps`` around them (clipped to ``[lo, hi]``), through the IBP boxes of every step:
    ``local_constant`` (largest over samples), ``local_method`` and ``local_upper`` (the largest over
    samples of each sample's composed bound: a Lipschitz constant of the network on that sample's box).

    Without ``x`` the local entries are NaN (only the global bound and the empirical lower bound
    remain). Keys of each row: ``constant, method, upper, local_constant, local_method, local_upper``.
    """
    from .ibp import input_box, interval_bounds

    consts = dict(consts or {})
    missing = [s for s in graph.steps if s.name not in consts]
    if missing:
        consts.update(layer_constants(missing, **kw))
    up: dict[str, float] = {graph.input_name: 1.0}
    rows: dict[str, dict] = {}
    for s in graph.steps:
        const, method = consts[s.name]
        u = compose(s, const, [up[i] for i in s.inputs])
        up[s.name] = float(u)
        rows[s.name] = dict(
            constant=const, method=method, upper=float(u), local_constant=math.nan, local_method="",
            local_upper=math.nan,
        )  # fmt: skip
    if x is None:
        return rows
    with torch.no_grad():
        c0, r0 = input_box(x, eps, lo, hi)
        try:
            boxes = interval_bounds(graph, c0 - r0, c0 + r0)
        except NNVitalsError as e:  # e.g. a divisor whose interval holds 0: no local bound, say why
            for row in rows.values():
                row["local_method"] = str(e)
            return rows
        boxes[graph.input_name] = (c0 - r0, c0 + r0)
        loc: dict[str, torch.Tensor] = {
            graph.input_name: torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        }
        for s in graph.steps:
            gconst = consts[s.name][0]
            lc, lm = local_constant(s, [boxes[i] for i in s.inputs], **kw)
            if isinstance(lc, int | float) and math.isfinite(gconst) and lc > gconst:
                lc = gconst  # the global constant is a local one too
            elif isinstance(lc, torch.Tensor) and math.isfinite(gconst):
                lc = lc.clamp_max(gconst)
            u = compose(s, lc, [loc[i] for i in s.inputs])
            loc[s.name] = (
                u if isinstance(u, torch.Tensor) else torch.full_like(loc[graph.input_name], float(u))
            )
            row = rows[s.name]
            row["local_constant"] = float(lc.max()) if isinstance(lc, torch.Tensor) else float(lc)
            local = isinstance(lc, torch.Tensor) or lc != gconst or not math.isfinite(gconst)
            row["local_method"] = lm if local else "global constant"
            row["local_upper"] = float(loc[s.name].max())
    return rows


def upper_bounds(graph: Graph, **kw) -> dict[str, tuple[float, str, float]]:
    """``{step: (own constant, method, upper bound of the network up to it)}`` (module docstring); an
    ``inf`` constant (no global one: its method says why) makes every bound after it ``inf``."""
    rows = network_bounds(graph, **kw)
    return {k: (r["constant"], r["method"], r["upper"]) for k, r in rows.items()}


# ---------------------------------------------------------------------------- Jacobian norms


def jacobian_spectral_norms(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    iters: int = 50,
    exact_max: int = 64,
    seed: int = 0,
    tol: float = 1e-6,
) -> torch.Tensor:
    """``||J_fn(x_b)||_2`` for every sample ``b`` of the batch ``x``; ``fn`` acts per sample.

    Exact (full Jacobian by a vmapped ``vjp`` over the output basis) when the output has at
    most ``exact_max`` units per sample, else batched power iteration with ``J v`` / ``J^T u`` (module docstring).
    """
    b = x.shape[0]
    y, vjp_fn = torch.func.vjp(fn, x)
    k = numel(tuple(y.shape[1:]))
    if k <= exact_max:
        eye = torch.eye(k, dtype=y.dtype, device=y.device)
        basis = eye.unsqueeze(1).expand(k, b, k).reshape((k, b, *y.shape[1:]))
        (rows,) = torch.func.vmap(vjp_fn)(basis)  # (K, B, *in)
        jac = rows.reshape(k, b, -1).transpose(0, 1)  # (B, K, d)
        return _matrix_2norms(jac)
    # J v as the vjp of the (linear) map u -> J^T u: built once, no forward pass per iteration
    _, jvp_fn = torch.func.vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(y))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
    v = v / _norms(v).reshape((b,) + (1,) * (x.ndim - 1))
    sigma = torch.zeros(b, dtype=x.dtype, device=x.device)
    for _ in range(iters):
        (u,) = jvp_fn(v)
        new = _norms(u)
        (w,) = vjp_fn(u)
        nw = _norms(w).clamp_min(1e-30)
        v = w / nw.reshape((b,) + (1,) * (x.ndim - 1))
        done = bool(((new - sigma).abs() <= tol * new.clamp_min(1e-30)).all())
        sigma = new
        if done:
            break
    (u,) = jvp_fn(v)
    return torch.maximum(_norms(u), sigma)


def jacobian_start(
    graph: Graph, x: torch.Tensor, upto: str | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``(fn, z)``: the map whose input Jacobian the lower bound measures, and the batch to measure it at.

    Usually ``(graph.forward up to upto, x)``. A model on integer token ids (an embedding reads the
    input) has a zero Jacobian with respect to the ids, so the map starts at the embedding's output,
    where the perturbation lives (the embedding rule's constant is the identity there): ``z`` is the
    looked-up batch and ``fn`` runs the rest of the graph from it, every other reader of the ids
    taking them as constants. With several embeddings of the ids the first one (in graph order) is
    the start.
    """
    emb = [s for s in graph.steps if s.kind == "embedding" and graph.input_name in s.inputs]
    if not emb:
        if upto is None or upto == graph.output_name:
            return graph.forward, x
        return (lambda z: graph.forward(z, upto=upto)), x
    first = emb[0]
    with torch.no_grad():
        z = apply(first, [x]).detach()
    target = upto or graph.output_name

    def fn(e: torch.Tensor) -> torch.Tensor:
        env = {graph.input_name: x, first.name: e}
        if target == first.name:
            return e
        for s in graph.steps:
            if s.name != first.name:
                env[s.name] = apply(s, [env[i] for i in s.inputs])
            if s.name == target:
                return env[s.name]
        return env[graph.output_name]

    return fn, z


def _matrix_2norms(jac: torch.Tensor) -> torch.Tensor:
    """Spectral norms of a batch of small-by-wide Jacobians ``(B, K, d)``, K <= d.

    Off CUDA ``matrix_norm(ord=2)`` (an SVD per sample). On CUDA that SVD runs one
    sample at a time (cuSOLVER batches only matrices of side <= 32), so the norm comes from the
    ``K x K`` Gram matrix instead: ``||J||_2 = sqrt(lambda_max(J J^T))``, formed and solved in
    float64 (the float32 Jacobian's norm to about 1e-15 relative, well inside float32), one
    batched ``eigvalsh`` (cuSOLVER's batched Jacobi for K <= 32).
    """
    if jac.device.type != "cuda" or jac.shape[-2] > jac.shape[-1]:
        return torch.linalg.matrix_norm(jac, ord=2)
    j = jac.double()
    g = j @ j.mT
    if g.shape[-1] > 32:  # beyond cuSOLVER's batched Jacobi: the host's LAPACK, one small copy
        lam = torch.linalg.eigvalsh(g.cpu()).to(g.device)
    else:
        lam = torch.linalg.eigvalsh(g)
    return lam[..., -1].clamp_min(0).sqrt().to(jac.dtype)


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def smooth_forward(graph: Graph, x: torch.Tensor, beta: float = 10.0) -> torch.Tensor:
    """The graph with ReLUs replaced by ``softplus(beta)`` (a surrogate with useful second derivatives)."""
    env = {graph.input_name: x}
    for s in graph.steps:
        xs = [env[i] for i in s.inputs]
        if s.kind == "relu":
            env[s.name] = F.softplus(xs[0], beta=beta)
        elif s.kind == "leaky_relu":
            a = s.params["slope"]
            env[s.name] = a * xs[0] + (1 - a) * F.softplus(xs[0], beta=beta)
        else:
            env[s.name] = apply(s, xs)
    return env[graph.output_name]


def sharpen(
    graph: Graph,
    x: torch.Tensor,
    lo: float,
    hi: float,
    steps: int = 20,
    step_size: float = 0.02,
    beta: float = 10.0,
    iters: int = 30,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient ascent on the Jacobian norm from the samples ``x``; returns (norms, points).

    For piecewise-linear networks ``J`` is piecewise constant, so its gradient vanishes; the
    ascent direction comes from the softplus surrogate (:func:`smooth_forward`): each step
    takes ``v``, the top right singular vector of the surrogate's Jacobian, and moves ``x`` along
    the normalised gradient of ``||J_s(x) v||^2``, clipped to ``[lo, hi]``. Every visited point
    is scored with the *true* network's Jacobian norm; the best per sample is returned, so the
    result is a valid lower bound whatever the surrogate does.
    """
    fn = graph.forward
    best = jacobian_spectral_norms(fn, x, iters=iters, seed=seed)
    best_x = x.clone()
    cur = x.clone()
    b = x.shape[0]
    shape = (b,) + (1,) * (x.ndim - 1)

    def smooth(z):
        return smooth_forward(graph, z, beta)

    for i in range(steps):
        with torch.no_grad():
            _, vjp_fn = torch.func.vjp(smooth, cur)
            gen = torch.Generator(device="cpu").manual_seed(seed + i)
            v = torch.randn(cur.shape, generator=gen, dtype=torch.float64).to(cur.device, cur.dtype)
            for _ in range(10):
                _, u = torch.func.jvp(smooth, (cur,), (v,))
                (v,) = vjp_fn(u)
                v = v / _norms(v).clamp_min(1e-30).reshape(shape)

        def objective(z, v=v):
            _, u = torch.func.jvp(smooth, (z,), (v,))
            return (u.reshape(b, -1) ** 2).sum()

        g = torch.func.grad(objective)(cur)
        g = g / _norms(g).clamp_min(1e-30).reshape(shape)
        cur = (cur + step_size * g * math.sqrt(numel(tuple(x.shape[1:])))).clamp(lo, hi).detach()
        val = jacobian_spectral_norms(fn, cur, iters=iters, seed=seed)
        better = val > best
        best = torch.where(better, val, best)
        best_x[better] = cur[better]
    return best, best_x


__all__ = [
    "AFFINE_KINDS",
    "autograd_operator_norm",
    "compose",
    "local_constant",
    "network_bounds",
    "conv_fft_norm",
    "conv_operator_norm",
    "jacobian_spectral_norms",
    "jacobian_start",
    "clear_norm_cache",
    "conv_operator_norms",
    "fingerprint",
    "lanczos_top",
    "layer_constant",
    "layer_constants",
    "maxpool_constant",
    "power_iteration",
    "sharpen",
    "smooth_forward",
    "upper_bounds",
]
