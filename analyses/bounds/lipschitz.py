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
  reshaped kernel. Power iteration on ``A^T A`` with ``conv`` and ``conv_transpose`` (the
  adjoint; ``output_padding`` restores the input size) for any zero padding, stride, dilation
  and groups. With circular padding and stride 1 the operator is block-circulant and its norm
  is exact by FFT (Sedghi, Gupta & Long 2019, Theorem 6: the maximum over frequencies of the
  singular values of the kernel's DFT, zero-padded to the input size). Other pre-paddings
  (circular with stride > 1, reflect, replicate) use power iteration with the autograd adjoint;
* batch norm not folded into a conv: ``max |gamma / sqrt(var + eps)|``; folded: part of the conv;
* average pooling, adaptive average pooling, padding, spatial means: their operator norms by
  power iteration with the autograd adjoint (``k x k``, stride ``k``: ``1 / k``);
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

Power iteration converges from below: the reported norm is within ``tol`` of the true one
after convergence, and tests compare it with the exact FFT and dense-matrix values.

*Lower bound.* ``max_x ||J_f(x)||_2`` over samples (also mean and RMS), for every node: the
spectral norm of each sample's input Jacobian, batched over samples (the Jacobians of
different samples are independent blocks). Small outputs (<= ``exact_max`` units): the full
Jacobian from one ``vjp`` vmapped over the output basis, then ``matrix_norm(ord=2)``. Larger
outputs: batched power iteration on ``J^T J`` with ``torch.func.vjp`` for ``J^T u`` and, for
``J v``, the vjp of that linear map (a JVP without re-running the forward pass). Optional sharpening
(:func:`sharpen`): gradient ascent on ``||J(x) v||`` from the worst samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.errors import NNVitalsError
from ..core.graph import kind_rule
from ..core.graph.ops import maxpool_constant
from .graph import AFFINE_KINDS, Graph, Step, apply, numel

# ---------------------------------------------------------------------------- operator norms


def power_iteration(
    forward: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    in_shape: tuple[int, ...],
    iters: int = 1000,
    tol: float = 1e-7,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    block: int = 6,
) -> float:
    """Largest singular value of a linear operator ``A`` given ``A`` and ``A^T``.

    Block power (subspace) iteration: ``block`` orthonormal vectors go through ``A^T A`` as one
    batch and are re-orthonormalised (QR); the estimate is the top singular value of ``A V``
    (Rayleigh-Ritz), which never exceeds ``||A||`` and converges at the rate
    ``(sigma_{block+1} / sigma_1)^2`` per step, so clustered top singular values (common for
    convolutions) do not stall it. Stops when the top Ritz vector ``v`` satisfies
    ``||A^T A v - s^2 v|| <= tol * s^2`` (the error of ``s^2`` is of the order of the residual
    squared), or after ``iters`` steps.
    """
    n = math.prod(in_shape)
    p = max(1, min(block, n))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn((n, p), generator=gen, dtype=torch.float64)
    v = torch.linalg.qr(v).Q.T.to(device, dtype)  # (p, n) orthonormal rows
    best = 0.0
    with torch.no_grad():
        for _ in range(iters):
            u = forward(v.reshape(p, *in_shape))  # (p, *out)
            uf = u.reshape(p, -1)
            w = adjoint(u).reshape(p, -1)  # rows of A^T A V
            pl, sv = _ritz(uf @ uf.T)  # Ritz pairs: (A V)(A V)^T = P diag(s^2) P^T
            s2 = float(sv[0])
            best = max(best, math.sqrt(max(s2, 0.0)))
            if s2 <= 0.0:
                return 0.0
            top = pl[:, 0]
            resid = float((top @ w - s2 * (top @ v)).norm())
            if resid <= tol * s2:
                break
            v = torch.linalg.qr(w.T.double()).Q.T.to(dtype)
    return best


def _ritz(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SVD of the small ``p x p`` Ritz matrix: ``(P, s^2)``. On an accelerator it goes to the host
    (its top value is needed there anyway): a device SVD of a 6 x 6 matrix per iteration is a
    solver launch and a synchronisation for nothing."""
    if gram.device.type == "cpu":
        pl, sv, _ = torch.linalg.svd(gram)
        return pl, sv
    pl, sv, _ = torch.linalg.svd(gram.cpu())
    return pl.to(gram.device), sv


def autograd_operator_norm(
    fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...], **kw
) -> float:
    """Operator norm of a linear ``fn`` (batch of one ``in_shape`` sample), adjoint by autograd."""
    dev, dt = kw.get("device", "cpu"), kw.get("dtype", torch.float32)
    p = max(1, min(kw.get("block", 6), math.prod(in_shape)))  # the block power_iteration uses
    with torch.no_grad():  # torch.func.vjp ignores no_grad; parameters of fn stay out of autograd
        _, adj = torch.func.vjp(fn, torch.zeros((p, *in_shape), device=dev, dtype=dt))
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

    Power iteration with ``conv`` as ``A`` and ``conv_transpose`` (same weight, stride,
    padding, dilation, groups, matching ``output_padding``) as ``A^T`` (module docstring).
    """
    nd = weight.ndim - 2
    rep = lambda v: (v,) * nd if isinstance(v, int) else tuple(v)  # noqa: E731
    stride, padding, dilation = rep(stride), rep(padding), rep(dilation)
    conv = F.conv1d if nd == 1 else F.conv2d
    convt = F.conv_transpose1d if nd == 1 else F.conv_transpose2d
    w = weight.to(kw.get("device", "cpu"), kw.get("dtype", torch.float32))
    probe = torch.zeros((1, *in_shape), device=w.device, dtype=w.dtype)
    out_size = tuple(conv(probe, w, None, stride, padding, dilation, groups).shape[2:])
    op = conv_output_padding(tuple(in_shape[1:]), out_size, w.shape[2:], stride, padding, dilation)
    return power_iteration(
        lambda v: conv(v, w, None, stride, padding, dilation, groups),
        lambda u: convt(u, w, None, stride, padding, op, groups, dilation),
        tuple(in_shape),
        **kw,
    )


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

    def __init__(self, kw: dict):
        self.kw = kw

    def conv(self, weight, in_shape, stride, padding, dilation, groups) -> float:
        return conv_operator_norm(weight, in_shape, stride, padding, dilation, groups, **self.kw)

    def conv_fft(self, weight, spatial, dilation, groups) -> float:
        return conv_fft_norm(weight, spatial, dilation, groups)

    def autograd(self, fn: Callable[[torch.Tensor], torch.Tensor], in_shape) -> float:
        return autograd_operator_norm(fn, in_shape, **self.kw)


def layer_constant(step: Step, iters: int = 1000, tol: float = 1e-7, seed: int = 0) -> tuple[float, str]:
    """``(L_s, method)``: the step's own Lipschitz constant (2-norm) and how it was computed
    (the operator's rule in the graph layer's table).

    Additions and concatenations have no constant of their own (NaN): they combine branches.
    """
    w = step.params.get("weight")
    kw = dict(iters=iters, tol=tol, seed=seed)
    if w is not None:
        kw.update(device=w.device, dtype=w.dtype)
    return kind_rule(step.kind).lipschitz(step, _Norms(kw))


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
    for s in graph.steps:
        if s.name not in consts:
            consts[s.name] = layer_constant(s, **kw)
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
    "layer_constant",
    "maxpool_constant",
    "power_iteration",
    "sharpen",
    "smooth_forward",
    "upper_bounds",
]
