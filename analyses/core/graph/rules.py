"""The operator table: one small rule object per operator, for every analysis that walks a graph.

A rule is registered under the operator's name (:func:`~.nodes.op_key`: ``relu`` covers every
overload of ``aten.relu``) and says, in one place, what each analysis needs of that operator:

- **bounds** (interval bound propagation, Lipschitz constants): :meth:`Rule.step` reads the node
  into a :class:`Step` (a kind, its input steps and its parameters) for the overloads listed in
  ``bounds_ops``; the kinds a rule declares in ``kinds`` are computed by its :meth:`Rule.forward`,
  :meth:`Rule.linear` (the homogeneous part ``A x`` of an affine step) and :meth:`Rule.radius`
  (``|A| r``, how an affine step maps interval radii; Gowal et al. 2018 eq. 6), bounded by
  :meth:`Rule.ibp` (any number of inputs), linearised at a clean input by :meth:`Rule.tangent`
  and :meth:`Rule.tangent_radius` (IBP tightness), and given a Lipschitz constant by
  :meth:`Rule.lipschitz` (``inf`` with the reason where none exists globally), one over an input
  box by :meth:`Rule.local_lipschitz`, and a network bound by :meth:`Rule.compose`. A rule with
  ``step``, ``forward``, ``lipschitz`` and (when neither affine nor monotone) ``ibp`` works: the
  other methods have generic defaults (autograd Jacobians, the global constant);
- **permutations** (Connectivity's permutation specs): :meth:`Rule.permute` says how a permuted
  axis flows through the operator, through a walker object (union-find over permutation groups:
  ``ann``, ``param``, ``put``, ``new``, ``union``, ``fix``, ``fail``, ``freeze_inputs``) that the
  family passes in. Operators without a rule pass nothing permuted and fail when they receive it.

Families never register their own tables: the rules live in :mod:`.ops`, and this package
imports nothing from a family. Adding an operator is one class there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import NNVitalsError
from .nodes import op_key

__all__ = [
    "DEFAULT",
    "Perm",
    "Rule",
    "Step",
    "StepContext",
    "kind_rule",
    "register",
    "registered",
    "rule_for",
    "rules",
]


@dataclass
class Step:
    """One node of the model's graph as the bounds kernels see it.

    ``inputs`` are names of earlier steps (or the graph input); ``params`` holds tensors
    (``weight``, ``bias``, ``scale``, ``shift``) and op settings; ``in_shape``/``out_shape``
    are per-sample shapes (batch axis removed); ``position`` is the node's index among the
    graph's call nodes; ``module`` is the owning module path (``layer1.0.conv1``) when known.
    """

    name: str
    kind: str
    inputs: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    position: int = 0
    module: str = ""
    op: str = ""

    @property
    def label(self) -> str:
        """Display name: the module path when known, else the node name."""
        return self.module or self.name


@dataclass(frozen=True)
class Perm:
    """Axis ``dim`` of an activation is permuted by group ``gid`` in blocks of ``inner``."""

    dim: int
    gid: int
    inner: int = 1


@dataclass
class StepContext:
    """What a rule's :meth:`Rule.step` reads a node with (built by the bounds reader).

    ``args``: the node's arguments by schema name; ``src(node)``: the step a graph node's value
    comes from (through aliases); ``const``: values computed from weights only, by source name;
    ``tensor_in``: the sources of the node's non-constant inputs; ``where``: the node as the
    messages name it; ``fields``: the :class:`Step` fields every step of this node shares.
    """

    node: torch.fx.Node
    args: dict[str, Any]
    src: Callable[[Any], str]
    const: dict[str, Any]
    tensor_in: list[str]
    where: str
    fields: dict[str, Any]

    def c(self, arg: Any) -> Any:
        """A constant argument's value (a graph node computed from weights, or a literal)."""
        return self.const[self.src(arg)] if isinstance(arg, torch.fx.Node) else arg

    def make(self, kind: str, inputs: tuple[str, ...], params: dict[str, Any] | None = None) -> Step:
        return Step(kind=kind, inputs=inputs, params=params or {}, **self.fields)

    def error(self, what: str, after: str = "") -> NNVitalsError:
        """``model graph: {what} at {where}{after}``."""
        return NNVitalsError(f"model graph: {what} at {self.where}{after}")

    def unsupported(self) -> NNVitalsError:
        return NNVitalsError(
            f"model graph: unsupported op {self.node.target} at {self.where}",
            hint="supported: linear, conv1d/2d and transposed, batch/layer/RMS/group norm, ReLU/LeakyReLU/"
            "ReLU6/hardtanh, GELU, SiLU, tanh, sigmoid, hardswish, softmax, max/avg/adaptive-avg pooling, "
            "interpolate (nearest/bilinear), pad, mean/sum over axes, flatten/reshape/view/squeeze/unsqueeze, "
            "transpose/permute, select/slice/split/chunk/unbind, cat/stack/expand, matmul/bmm, "
            "scaled_dot_product_attention (and nn.MultiheadAttention), embedding, masked_fill/where with a "
            "constant mask, add/sub/mul/div of two tensors or by constants, dropout (eval)",
        )


class Rule:
    """How one operator reads in every analysis (module docstring). The base class is what an
    operator without a rule gets: no bounds, and permuted inputs refused."""

    #: the names it is registered under (set by :func:`register`)
    names: tuple[str, ...] = ()
    #: the overloads the bounds reader accepts (an empty set: none)
    bounds_ops: frozenset = frozenset()
    #: the step kinds this rule computes (``forward`` / ``linear`` / ``radius`` / ``ibp``)
    kinds: tuple[str, ...] = ()
    #: whether those kinds are affine maps of their inputs
    affine: bool = False
    #: whether those kinds act element by element on one input (their Jacobian is diagonal)
    elementwise: bool = False

    # --- bounds
    def bounds_supported(self, target: Any) -> bool:
        return target in self.bounds_ops

    def step(self, ctx: StepContext) -> Step | str | None:
        """The node as a :class:`Step`; or the name of the step it is an alias of; or None when it
        computes nothing the bounds need (a shape query)."""
        raise ctx.unsupported()

    def forward(self, step: Step, xs: list[torch.Tensor]) -> torch.Tensor:
        """The step's own function ``f(x)`` on a batch."""
        return self.linear(step, xs)

    def linear(self, step: Step, xs: list[torch.Tensor]) -> torch.Tensor:
        """The homogeneous part ``A x`` of an affine step (its Jacobian applied to ``x``)."""
        raise AssertionError(f"{step.kind} is not affine")

    def radius(self, step: Step, rs: list[torch.Tensor]) -> torch.Tensor:
        """``|A| r`` for non-negative ``r`` (the default: ``A`` is a non-negative selection/average)."""
        return self.linear(step, rs)

    def ibp(
        self, step: Step, ins: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval bounds as (centre, radius) from the inputs' (centre, radius): an affine step
        maps the centre by ``f`` and the radius by ``|A|``; the default for a one-input step that is
        not affine is a monotone non-decreasing one, bounded by its two endpoints. Other steps
        (non-monotone functions, products of two tensors, norms) override this."""
        if self.affine:
            return self.forward(step, [c for c, _ in ins]), self.radius(step, [r for _, r in ins])
        if len(ins) != 1:
            raise AssertionError(f"{step.kind}: a step of {len(ins)} inputs needs its own ibp()")
        c, r = ins[0]
        lo, hi = self.forward(step, [c - r]), self.forward(step, [c + r])
        return (hi + lo) / 2, (hi - lo) / 2

    def tangent(self, step: Step, xs: list[torch.Tensor], ts: list[torch.Tensor]) -> torch.Tensor:
        """``J(x) t``: the step's Jacobian at the clean batch ``xs`` applied to tangents ``ts`` of shape
        ``(B, d, *in)`` (``d`` directions per sample), giving ``(B, d, *out)`` (the linearised network
        of Mao et al. 2024, section 3). Default: an affine step's ``A t``; an element-wise one scales
        by its derivative; otherwise forward-mode autograd, vmapped over the ``d`` directions."""
        if self.affine:
            b = ts[0].shape[0]
            flat = [t.reshape((-1,) + tuple(t.shape[2:])) for t in ts]
            out = self.linear(step, flat)
            return out.reshape((b, -1) + tuple(out.shape[1:]))
        if self.elementwise:
            return ts[0] * self.slope(step, xs[0]).unsqueeze(1)

        def one(*tangents):
            return torch.func.jvp(lambda *a: self.forward(step, list(a)), tuple(xs), tangents)[1]

        return torch.func.vmap(one, in_dims=1, out_dims=1)(*ts)

    def tangent_radius(self, step: Step, xs: list[torch.Tensor], rs: list[torch.Tensor]) -> torch.Tensor:
        """``|J(x)| r`` for non-negative ``r`` (how the linearised network maps IBP radii). Default:
        an affine step's ``|A| r``; an element-wise one's ``|f'(x)| r``; otherwise from the dense
        per-sample Jacobian (``jacrev``; small steps only: rules of large ones override this)."""
        if self.affine:
            return self.radius(step, rs)
        if self.elementwise:
            return rs[0] * self.slope(step, xs[0]).abs()
        b = xs[0].shape[0]

        def per_sample(*a):
            return self.forward(step, [t.unsqueeze(0) for t in a])[0]

        jacs = torch.func.vmap(torch.func.jacrev(per_sample, argnums=tuple(range(len(xs)))))(*xs)
        out_shape = tuple(jacs[0].shape[1 : jacs[0].ndim - (xs[0].ndim - 1)])
        n_out = math.prod(out_shape)
        total = 0
        for j, r in zip(jacs, rs):
            k = r[0].numel()
            total = total + torch.einsum("bok,bk->bo", j.reshape(b, n_out, k).abs(), r.reshape(b, k))
        return total.reshape((b,) + out_shape)

    def slope(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        """An element-wise step's derivative ``f'(x)`` (by forward-mode autograd unless overridden)."""
        return torch.func.jvp(lambda a: self.forward(step, [a]), (x,), (torch.ones_like(x),))[1]

    def lipschitz(self, step: Step, norms: Any) -> tuple[float, str]:
        """``(L, method)``: the step's own Lipschitz constant in the 2-norm (with respect to all its
        inputs together); ``norms`` carries the family's operator-norm estimators (``conv``,
        ``conv_fft``, ``autograd``, ``maxpool``). ``L = math.inf`` when no global constant exists, with
        the reason as ``method``; ``math.nan`` for steps that only combine branches (see
        :meth:`compose`)."""
        raise AssertionError(step.kind)

    def local_lipschitz(
        self, step: Step, boxes: list[tuple[torch.Tensor, torch.Tensor]], norms: Any
    ) -> tuple[torch.Tensor | float, str]:
        """``(L_b, method)``: a Lipschitz constant of the step on each sample's input box (``boxes``:
        the inputs' (lower, upper), batched), per sample ``(B,)`` or one number for all. Default: the
        global constant (every box lies in the whole space)."""
        return self.lipschitz(step, norms)

    def compose(self, step: Step, const: Any, ups: list[Any]) -> Any:
        """A Lipschitz bound of the network up to this step from its inputs' bounds ``ups`` (numbers,
        or per-sample tensors): ``L U`` for one input; ``L sqrt(sum U_i^2)`` for several (``L`` is
        the constant with respect to all inputs stacked, and ``||(dx_1, dx_2)|| <=
        sqrt(U_1^2 + U_2^2) ||dx||``)."""
        if len(ups) == 1:
            return const * ups[0]
        return const * sum(u * u for u in ups) ** 0.5

    # --- permutations
    def permute(self, w: Any, node: torch.fx.Node) -> Any:
        """The permutation of the node's output (a :class:`Perm`, a list for tuple outputs, or
        None), recording on the walker ``w`` which parameter axes it acts on."""
        anns = [w.ann(a) for a in node.all_input_nodes]
        if not any(anns):
            self.unpermuted(w, node)
            return None
        inputs = node.all_input_nodes
        x = anns[0] if inputs and inputs[0] is node.args[0] else None
        return self.permuted(w, node, x)

    def unpermuted(self, w: Any, node: torch.fx.Node) -> None:
        """Nothing permuted flows in: parameters used here must stay where they are."""
        w.freeze_inputs(node)

    def permuted(self, w: Any, node: torch.fx.Node, x: Perm | None) -> Any:
        """A permuted tensor flows in (``x``: the first argument's permutation, when it is one)."""
        w.fail(node)


#: what an operator without a rule gets
DEFAULT = Rule()
_RULES: dict[str, Rule] = {}
_KINDS: dict[str, Rule] = {}
_FALLBACK: set[str] = set()


def register(*names: str, fallback: bool = False) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: one instance of the rule, registered under every name in ``names`` (and
    under each step kind it declares). A name or kind already taken is a programming error, except
    for names registered with ``fallback=True``: a generic rule (e.g. how a permutation passes an
    operator) that a later, specific rule for the same operator replaces, and that never replaces
    one itself."""

    def deco(cls: type[Rule]) -> type[Rule]:
        rule = cls()
        if fallback:
            names_ = tuple(n for n in names if n not in _RULES)
            rule.names = names_
            for n in names_:
                _RULES[n] = rule
                _FALLBACK.add(n)
            return cls
        rule.names = tuple(names)
        for n in names:
            if n in _RULES and n not in _FALLBACK:
                raise ValueError(f"operator {n!r} already has a rule ({type(_RULES[n]).__name__})")
        for k in cls.kinds:
            if k in _KINDS and _KINDS[k] is not rule:
                raise ValueError(f"step kind {k!r} already has a rule ({type(_KINDS[k]).__name__})")
        for n in names:
            _RULES[n] = rule
            _FALLBACK.discard(n)
        for k in cls.kinds:
            _KINDS[k] = rule
        return cls

    return deco


@contextlib.contextmanager
def registered(cls: type[Rule], *names: str) -> Iterator[Rule]:
    """Register ``cls`` under ``names`` for the ``with`` block only (tests, experiments)."""
    register(*names)(cls)
    rule = _RULES[names[0]]
    try:
        yield rule
    finally:
        for n in names:
            _RULES.pop(n, None)
        for k in cls.kinds:
            if _KINDS.get(k) is rule:
                del _KINDS[k]


def rule_for(target: Any) -> Rule:
    """The rule of a node's target (:data:`DEFAULT` when the operator has none)."""
    return _RULES.get(op_key(target), DEFAULT)


def kind_rule(kind: str) -> Rule:
    """The rule that computes steps of ``kind``."""
    return _KINDS[kind]


def rules() -> dict[str, Rule]:
    """A copy of the table: ``{operator name: rule}``."""
    return dict(_RULES)
