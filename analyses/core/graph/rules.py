"""The operator table: one small rule object per operator, for every analysis that walks a graph.

A rule is registered under the operator's name (:func:`~.nodes.op_key`: ``relu`` covers every
overload of ``aten.relu``) and says, in one place, what each analysis needs of that operator:

- **bounds** (interval bound propagation, Lipschitz constants): :meth:`Rule.step` reads the node
  into a :class:`Step` (a kind, its input steps and its parameters) for the overloads listed in
  ``bounds_ops``; the kinds a rule declares in ``kinds`` are computed by its :meth:`Rule.forward`,
  :meth:`Rule.linear` (the homogeneous part ``A x`` of an affine step) and :meth:`Rule.radius`
  (``|A| r``, how an affine step maps interval radii; Gowal et al. 2018 eq. 6), bounded by
  :meth:`Rule.ibp` and given a Lipschitz constant by :meth:`Rule.lipschitz`;
- **permutations** (Connectivity's permutation specs): :meth:`Rule.permute` says how a permuted
  axis flows through the operator, through a walker object (union-find over permutation groups:
  ``ann``, ``param``, ``put``, ``new``, ``union``, ``fix``, ``fail``, ``freeze_inputs``) that the
  family passes in. Operators without a rule pass nothing permuted and fail when they receive it.

Families never register their own tables: the rules live in :mod:`.ops`, and this package
imports nothing from a family. Adding an operator is one class there.
"""

from __future__ import annotations

import contextlib
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
            hint="supported: linear, conv1d/2d, batch norm, ReLU/LeakyReLU, max/avg/adaptive-avg pooling, "
            "flatten/reshape/view, residual add, cat",
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
    #: whether those kinds are affine maps of their inputs (else monotone, piecewise linear)
    affine: bool = False

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
        maps the centre by ``f`` and the radius by ``|A|``; a monotone one its two endpoints."""
        if self.affine:
            return self.forward(step, [c for c, _ in ins]), self.radius(step, [r for _, r in ins])
        c, r = ins[0]
        lo, hi = self.forward(step, [c - r]), self.forward(step, [c + r])
        return (hi + lo) / 2, (hi - lo) / 2

    def lipschitz(self, step: Step, norms: Any) -> tuple[float, str]:
        """``(L, method)``: the step's own Lipschitz constant in the 2-norm; ``norms`` carries the
        family's operator-norm estimators (``conv``, ``conv_fft``, ``autograd``, ``maxpool``)."""
        raise AssertionError(step.kind)

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


def register(*names: str) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: one instance of the rule, registered under every name in ``names`` (and
    under each step kind it declares). A name or kind already taken is a programming error."""

    def deco(cls: type[Rule]) -> type[Rule]:
        rule = cls()
        rule.names = tuple(names)
        for n in names:
            if n in _RULES:
                raise ValueError(f"operator {n!r} already has a rule ({type(_RULES[n]).__name__})")
        for k in cls.kinds:
            if k in _KINDS and _KINDS[k] is not rule:
                raise ValueError(f"step kind {k!r} already has a rule ({type(_KINDS[k]).__name__})")
        for n in names:
            _RULES[n] = rule
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
