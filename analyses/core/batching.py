"""Programs exported with a fixed batch size, run on batches of any size.

``torch.export.export(model, (x,))`` without ``dynamic_shapes`` specialises the program to the
batch size of ``x``: its module refuses any other (``Guard failed: x.size()[0] == 1``), and every
analysis runs batches of its own sizes. :func:`free_batch` turns such a program into one that runs
any batch, once, where a :class:`~analyses.core.subject.ExportSubject` is opened:

1. **dynamic batch axis**: the program's module is exported again with ``Dim.AUTO`` on the batch
   axis of its input, after its recorded guards are dropped and the reshapes that spell the
   traced batch size out (``view(x, [1, -1])``) are rewritten to infer it (``[-1, 144]``: the same
   shape at the traced size). Where the shapes cannot say which axis holds the batch (at batch 1
   every axis is a multiple of it: ``nn.MultiheadAttention``'s ``view(q, [4, 2, 4])`` merges the
   batch with 2 heads, its ``reshape(o, [4, 8])`` with 4 positions), the graph is run on two
   samples alone and on both at once, and each reshape gets the axis that keeps every later value
   holding both samples' own (:class:`_PairSearch`). The new program is kept only when its batch
   axis is free and it gives the same outputs as the original on a batch of another size
   (computed chunk by chunk);
2. otherwise **chunks**: :class:`FixedBatchModule` cuts any batch into chunks of the exported size,
   pads the last one by repeating its final sample and drops the padding's outputs (in inference
   every sample's output is its own).

Either way the result carries a one-line :attr:`BatchFix.note` for the analysis's result.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .errors import NNVitalsError
from .threads import MODEL_TURN, tracing

__all__ = ["BatchFix", "FixedBatchModule", "free_batch", "recorded_batch", "strip_guards"]

#: reshapes whose target shape may spell the traced batch size out
_RESHAPES = ("view", "reshape", "_unsafe_view")
#: tensors made from a size alone (``torch.zeros(x.shape[0], 10)`` is traced with the size spelled out)
_FACTORIES = ("zeros", "ones", "empty", "full", "rand", "randn")
#: how closely the re-exported program must reproduce the original (float32 noise of other batch sizes)
RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class BatchFix:
    """What :func:`free_batch` did to a program.

    ``program``: the program to run (batch axis dynamic when ``how == "dynamic"``, else the original);
    ``fixed``: the batch size it was exported with (None when its batch axis was already free);
    ``how``: ``""`` (nothing to do), ``"dynamic"`` or ``"chunks"``; ``note``: one line saying so.
    """

    program: Any
    fixed: int | None = None
    how: str = ""
    note: str = ""


def _user_inputs(program: torch.export.ExportedProgram) -> list[torch.fx.Node]:
    user = set(program.graph_signature.user_inputs)
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]


def recorded_batch(program: Any) -> int | None:
    """The batch size an exported program's single tensor input was specialised to; None when its
    batch axis is free, when it has several inputs, or when ``program`` is not an ExportedProgram."""
    if not isinstance(program, torch.export.ExportedProgram):
        return None
    inputs = _user_inputs(program)
    if len(inputs) != 1:
        return None
    val = inputs[0].meta.get("val")
    if isinstance(val, torch.Tensor) and val.ndim and isinstance(val.shape[0], int):
        return int(val.shape[0])
    return None


def strip_guards(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``gm`` (what ``ExportedProgram.module()`` returns) without the checks of its recorded input
    shapes: the ``_guards_fn`` call, the input-constraint pre-hook, and the sizes of
    ``_assert_tensor_metadata``. Edited in place; returned."""
    for key, hook in list(gm._forward_pre_hooks.items()):
        if "input_constraints" in getattr(hook, "__name__", ""):
            del gm._forward_pre_hooks[key]
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            if not node.users:
                gm.graph.erase_node(node)
                changed = True
        elif node.op == "call_function" and "_assert_tensor_metadata" in str(node.target):
            if node.kwargs.get("size") is not None or node.kwargs.get("stride") is not None:
                node.kwargs = {**node.kwargs, "size": None, "stride": None}
                changed = True
    if changed:
        gm.recompile()
    return gm


def _shape_of(node: Any) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, torch.Tensor) and all(isinstance(d, int) for d in val.shape):
        return tuple(int(d) for d in val.shape)
    return None


def _op(node: torch.fx.Node) -> str:
    return getattr(getattr(node.target, "_schema", None), "name", "").split("::")[-1]


def _from_input(gm: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """The nodes whose values depend on the graph's inputs (its placeholders)."""
    seen: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in seen for a in node.all_input_nodes):
            seen.add(node)
    return seen


def _batch_axis(shape: tuple[int, ...], batch: int) -> int | None:
    """The one axis of a reshape's target ``shape`` that can hold the batch (a multiple of it); None
    when none or several can (only decided for batch sizes of 2 and more)."""
    if batch < 2:
        return None
    axes = [i for i, d in enumerate(shape) if d % batch == 0 and d > 0]
    return axes[0] if len(axes) == 1 else None


def _infer_batch(gm: torch.fx.GraphModule, batch: int, expand: bool = False) -> int:
    """Rewrite the shapes that spell the traced batch size out so that they follow the input's.

    ``view/reshape`` of a value that depends on the input: the axis holding the batch becomes
    ``-1`` (inferred), the others their traced sizes; the batch axis is axis 0 when the value's and
    the target's first axes are the batch, else (batch sizes >= 2) the one axis of the target that
    is a multiple of it (``[17, 14, 8]`` for 7 samples of 2 heads). With ``expand``, also
    ``expand(t, [batch, ...])`` of a tensor with one row (a class token for every sample): its
    first size becomes the input's batch size (``sym_size``), and so does the first size of a tensor
    made from a size (``zeros([batch, ...])``). Every rewrite gives the same shape at
    the traced batch size, by construction; whether other sizes compute the same is checked
    afterwards. Returns how many shapes were rewritten."""
    dependent = _from_input(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    size_node = None
    count = 0

    def input_batch() -> torch.fx.Node:
        nonlocal size_node
        if size_node is None:
            with gm.graph.inserting_after(placeholders[0]):
                size_node = gm.graph.call_function(torch.ops.aten.sym_size.int, (placeholders[0], 0))
        return size_node

    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        out = _shape_of(node)
        if expand and _op(node) in _FACTORIES and out and out[0] == batch:
            size = node.args[0] if node.args else None
            if isinstance(size, list | tuple) and size and size[0] == batch:
                node.args = ([input_batch(), *size[1:]], *node.args[1:])
                count += 1
            continue
        if len(node.args) < 2:
            continue
        op, shape = _op(node), node.args[1]
        if op not in (*_RESHAPES, "expand") or not isinstance(shape, list | tuple) or not shape:
            continue
        if not all(isinstance(d, int) for d in shape):
            continue
        src = _shape_of(node.args[0])
        if src is None or out is None or not src or not out:
            continue
        if op in _RESHAPES and node.args[0] in dependent:
            if src[0] == batch and out[0] == batch and shape[0] == batch:
                axis = 0
            else:
                axis = _batch_axis(out, batch)
            if axis is None:
                continue
            new = list(out)
            new[axis] = -1
        elif op == "expand" and expand and src[0] == 1 and out[0] == batch and shape[0] == batch:
            new = [input_batch(), *shape[1:]]
        elif op == "expand" and node.args[0] in dependent and src[0] == batch and shape[0] == batch:
            new = [-1, *shape[1:]]
        else:
            continue
        if list(new) != list(shape):
            node.args = (node.args[0], new, *node.args[2:])
            count += 1
    if count:
        gm.recompile()
    return count


def _split_rows(v: torch.Tensor, one: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether ``v`` (a value at batch size 2) holds ``one`` and ``other`` (the same value of each
    sample alone, batch size 1) along one axis, the samples an outer, middle or inner factor of it."""
    if not all(isinstance(t, torch.Tensor) for t in (v, one, other)) or one.shape != other.shape:
        return False
    if v.ndim != one.ndim:
        return False
    axes = [k for k in range(v.ndim) if v.shape[k] != one.shape[k]]
    if len(axes) != 1 or v.shape[axes[0]] != 2 * one.shape[axes[0]]:
        return False
    k, size = axes[0], int(one.shape[axes[0]])
    scale = max(1.0, float(one.abs().max()) if one.numel() and one.is_floating_point() else 1.0)
    for outer in (d for d in range(1, size + 1) if size % d == 0):
        parts = v.reshape(*v.shape[:k], outer, 2, size // outer, *v.shape[k + 1 :])
        a, b = (parts.select(k + 1, i).reshape(one.shape) for i in (0, 1))
        if one.is_floating_point():
            close = torch.allclose(a, one, rtol=RTOL, atol=ATOL * scale) and torch.allclose(
                b, other, rtol=RTOL, atol=ATOL * scale
            )
        else:
            close = torch.equal(a, one) and torch.equal(b, other)
        if close:
            return True
    return False


class _BatchNotFound(Exception):
    """No way found to run a graph traced with one sample on two (then: chunks)."""


#: most bytes of node values :func:`_infer_batch_by_values` keeps per run (a larger graph: chunks)
_RECORD_BYTES = 512 << 20


class _Recorder(torch.fx.Interpreter):
    """Runs a graph and keeps every node's value (at most :data:`_RECORD_BYTES` of them)."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__(gm)
        self.values: dict[torch.fx.Node, Any] = {}
        self.bytes = 0

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.bytes += out.numel() * out.element_size()
            if self.bytes > _RECORD_BYTES:
                raise _BatchNotFound("too many values to keep")
        self.values[n] = out
        return out


#: most node evaluations :func:`_infer_batch_by_values` spends on one graph, per node
_SEARCH_BUDGET = 32


class _PairSearch:
    """Runs a graph on two samples at once (batch size 2), node by node, and checks that every value
    of the input's holds the two samples' own values (``one``, ``other``: each node's value for each
    sample alone). A reshape whose target shape spells the batch size of 1 out tries ``-1`` on each
    axis in turn; several may hold both samples there (positions x batch, or batch x heads: both
    are per-sample layouts), and a later step that mixes them up sends the search back to the last
    reshape with another axis to try."""

    def __init__(self, gm: torch.fx.GraphModule, one: dict, other: dict, dependent: set):
        self.gm, self.one, self.other, self.dependent = gm, one, other, dependent
        self.nodes = list(gm.graph.nodes)
        self.budget = _SEARCH_BUDGET * len(self.nodes) + 100
        self.interp = torch.fx.Interpreter(gm)

    def _run(self, n: torch.fx.Node, env: dict, x: torch.Tensor, shape: list | None = None) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _BatchNotFound("search budget spent")
        self.interp.env = env
        if n.op == "placeholder":
            self.interp.args_iter = iter([x])
        if shape is None:
            return self.interp.run_node(n)
        args = torch.fx.node.map_arg(n.args[2:], lambda a: env[a])
        return n.target(env[n.args[0]], shape, *args, **n.kwargs)

    def _holds_both(self, n: torch.fx.Node, value: Any) -> bool:
        if (
            n not in self.dependent
            or n.op in ("placeholder", "output")
            or not isinstance(value, torch.Tensor)
        ):
            return True
        return _split_rows(value, self.one[n], self.other[n])

    def _choices(self, n: torch.fx.Node) -> list[list[int]] | None:
        shape = n.args[1] if n.op == "call_function" and len(n.args) > 1 else None
        if not (
            _op(n) in _RESHAPES
            and n.args[0] in self.dependent
            and isinstance(shape, list | tuple)
            and all(isinstance(d, int) for d in shape)
        ):
            return None
        fixed = [int(d) for d in (_shape_of(n) or shape)]
        axes = sorted(range(len(fixed)), key=lambda k: fixed[k] != 1)  # an axis of 1 first: the batch's
        return [list(shape)] + [[*fixed[:k], -1, *fixed[k + 1 :]] for k in axes]

    def find(
        self, x: torch.Tensor, start: int = 0, env: dict | None = None
    ) -> dict[torch.fx.Node, list[int]]:
        """The reshapes' new shapes (from node ``start`` on, with the values ``env`` so far)."""
        env = {} if env is None else env
        for i in range(start, len(self.nodes)):
            n = self.nodes[i]
            choices = self._choices(n)
            if choices is None:
                try:
                    value = self._run(n, env, x)
                except _BatchNotFound:
                    raise
                except Exception as e:  # noqa: BLE001 - an earlier choice made the shapes disagree
                    raise _BatchNotFound(n.name) from e
                if not self._holds_both(n, value):
                    raise _BatchNotFound(n.name)
                env[n] = value
                continue
            for shape in choices:
                try:
                    value = self._run(n, env, x, shape)
                except _BatchNotFound:
                    raise
                except Exception:  # noqa: BLE001 - this axis cannot hold two samples
                    continue
                if not self._holds_both(n, value):
                    continue
                try:
                    later = self.find(x, i + 1, {**env, n: value})
                except _BatchNotFound as e:
                    if self.budget < 0:
                        raise
                    del e
                    continue
                return {**({n: shape} if shape != list(n.args[1]) else {}), **later}
            raise _BatchNotFound(n.name)
        return {}


def _infer_batch_by_values(gm: torch.fx.GraphModule, val: torch.Tensor, batch: int = 1) -> int:
    """For a program traced with one sample, where shapes do not say which axis holds the batch
    (``view(x, [4, 2, 4])`` of 4 positions, 2 heads: the batch merges with the positions or the
    heads): the graph is run on two samples alone and on both at once, and each reshape gets
    ``-1`` on an axis whose value then holds both samples' own values, as every later value does.
    Returns how many shapes were rewritten; raises when there is no such choice."""
    x = _example(val, 2 * batch, seed=2)
    dependent = _from_input(gm)
    alone = []
    with torch.no_grad():
        for i in (0, 1):
            rec = _Recorder(gm)
            rec.run(x[i * batch : (i + 1) * batch])
            alone.append(rec.values)
        rewrites = _PairSearch(gm, alone[0], alone[1], dependent).find(x)
    for node, shape in rewrites.items():
        node.args = (node.args[0], shape, *node.args[2:])
    if rewrites:
        gm.recompile()
    return len(rewrites)


def _example(val: torch.Tensor, batch: int, seed: int = 0) -> torch.Tensor:
    """A batch of ``batch`` inputs like the recorded one, different from sample to sample: uniform in
    [0, 1) for floats, 0s and 1s otherwise (token ids 0 and 1 exist in any vocabulary but the
    tiniest, and a failure only means chunks)."""
    shape = (batch, *(int(d) for d in val.shape[1:]))
    gen = torch.Generator().manual_seed(seed)
    if val.dtype.is_floating_point:
        return torch.rand(shape, generator=gen).to(val.device, val.dtype)
    return torch.randint(0, 2, shape, generator=gen).to(val.device, val.dtype)


@contextlib.contextmanager
def _quiet():
    """torch.export logs a traceback per failed attempt; a failed attempt here is an answer."""
    names = ("torch._export", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes",
             "torch._subclasses.fake_tensor")  # fmt: skip
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _same(a: Any, b: Any) -> bool:
    la, sa = pytree.tree_flatten(a)
    lb, sb = pytree.tree_flatten(b)
    if sa != sb or len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if not isinstance(x, torch.Tensor):
            if x != y:
                return False
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point():
            scale = float(y.abs().max()) if y.numel() else 0.0
            if not torch.allclose(x, y, rtol=RTOL, atol=ATOL * max(1.0, scale), equal_nan=True):
                return False
        elif not torch.equal(x, y):
            return False
    return True


def _dynamic(
    program: torch.export.ExportedProgram,
    val: torch.Tensor,
    batch: int,
    expand: bool,
    by_values: bool = False,
) -> Any:
    """The program re-exported with a dynamic batch axis, or None when its graph keeps the batch
    fixed or the new program computes anything else. ``by_values``: a program traced with one
    sample has its reshapes' batch axes found by running it (:func:`_infer_batch_by_values`)."""
    gm = strip_guards(program.module())
    _infer_batch(gm, batch, expand)
    if by_values:
        _infer_batch_by_values(gm, val, batch)
    trace_at = max(batch, 2)  # torch.export specialises axes of size 0 and 1
    example = _example(val, trace_at)
    with torch.no_grad():
        gm(_example(val, trace_at + 1, seed=3))  # raises in milliseconds where an export fails in seconds
    with tracing(), _quiet(), torch.no_grad():
        new = torch.export.export(gm, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=False)
    if recorded_batch(new) is not None:
        return None
    check = _example(val, batch + 1, seed=1)  # a size the original refuses, one padded chunk
    with torch.no_grad():
        got = new.module()(check)
        want = FixedBatchModule(program.module(), batch)(check)
    return new if _same(got, want) else None


def free_batch(program: torch.export.ExportedProgram, label: str = "model") -> BatchFix:
    """A program for batches of any size (see the module docstring); the program itself when its
    batch axis is already free (or it has several inputs: then nothing is changed)."""
    batch = recorded_batch(program)
    if batch is None:
        return BatchFix(program)
    val = _user_inputs(program)[0].meta["val"]
    new = None
    # broadcast rows made per sample only when needed; then, where shapes cannot say which axis a
    # reshape puts the batch on (a batch of one, or heads as many as samples), the values can
    ways = [(False, False), (True, False), (True, True)]
    with MODEL_TURN.hold():  # it runs the program and re-exports it (analyses.core.threads)
        for expand, by_values in ways:
            try:
                new = _dynamic(program, val, batch, expand, by_values)
            except NNVitalsError:
                raise
            except Exception:  # noqa: BLE001 - any failure to re-export means: try the next way, or chunks
                new = None
            if new is not None:
                break
    if new is not None:
        note = (
            f"{label}: exported with a fixed batch size of {batch}; its batch axis was made dynamic "
            "(re-exported from its own graph, outputs checked against the original)"
        )
        return BatchFix(new, batch, "dynamic", note)
    note = (
        f"{label}: exported with a fixed batch size of {batch} that its graph keeps; run on chunks of "
        f"{batch} samples (the last one padded, the padding's outputs dropped)"
    )
    return BatchFix(program, batch, "chunks", note)


class FixedBatchModule(nn.Module):
    """A module that takes batches of exactly ``size`` samples, run on batches of any size.

    The batch (the first argument's first axis; other arguments are passed as they are) is cut into
    chunks of ``size``, the last padded by repeating its final sample; each output tensor whose first
    axis is ``size`` keeps the rows of the real samples, the chunks' rows concatenated in order. The
    wrapper shares the inner module's parameters, buffers and submodules under the same names, so
    its ``state_dict`` is the inner one's and ``load_state_dict``/``functional_call`` reach it."""

    def __init__(self, inner: nn.Module, size: int):
        super().__init__()
        object.__setattr__(self, "inner", inner)  # not a child: the names stay the inner module's
        self.size = int(size)
        self._parameters = inner._parameters
        self._buffers = inner._buffers
        self._modules = inner._modules

    def train(self, mode: bool = True) -> FixedBatchModule:
        """Exported graphs fix their mode when exported: only the flag changes."""
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n_all = int(x.shape[0])
        if n_all == self.size:
            return self.inner(x, *args, **kwargs)
        if n_all == 0:
            raise NNVitalsError(f"batch of 0 samples: expected at least one (chunks of {self.size})")
        outs, spec, rows = [], None, []
        for start in range(0, n_all, self.size):
            part = x[start : start + self.size]
            n = int(part.shape[0])
            if n < self.size:
                part = torch.cat([part, part[-1:].expand(self.size - n, *part.shape[1:])])
            leaves, spec = pytree.tree_flatten(self.inner(part, *args, **kwargs))
            outs.append(leaves)
            rows.append(n)
        merged = []
        for i, leaf in enumerate(outs[0]):
            if isinstance(leaf, torch.Tensor) and leaf.ndim and leaf.shape[0] == self.size:
                merged.append(torch.cat([o[i][:n] for o, n in zip(outs, rows, strict=True)]))
            else:
                merged.append(leaf)
        return pytree.tree_unflatten(merged, spec)

    def extra_repr(self) -> str:
        return f"chunks of {self.size}"
