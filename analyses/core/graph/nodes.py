"""Reading a ``torch.export`` graph: the export itself, normalised arguments, module paths, shapes.

Every analysis that walks a model's computation (Bounds, Connectivity) reads its graph through
these helpers, so an export failure, a node's arguments, the module a node came from and its
shape mean the same everywhere:

- :func:`export_program`: ``torch.export.export`` with one clear line when the model cannot be
  traced (optionally in eval mode, restored afterwards; optionally with a dynamic batch axis);
  an :class:`torch.export.ExportedProgram` (a loaded ``.pt2`` file) is taken as it is.
- :func:`node_args`: a node's arguments by schema name with defaults filled in, through
  :func:`torch.fx.operator_schemas.normalize_function` (which names ``self`` ``input``; the
  schema's own names are kept here).
- :func:`op_key`: the name operator rules are registered under (``relu`` for every overload of
  ``aten.relu``, ``ns::name`` for other namespaces).
- :func:`module_path`, :func:`sample_shape`, :func:`full_shape`: from ``nn_module_stack`` and
  ``meta['val']``.
- :class:`NodeLoop`: one pass over the nodes in order, one method per node kind (the shape of
  :class:`torch.fx.Interpreter`, on metadata instead of values).
"""

from __future__ import annotations

import inspect
import io
import operator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.fx.operator_schemas import normalize_function

from ..errors import NNVitalsError
from ..threads import tracing

__all__ = [
    "NodeLoop",
    "export_program",
    "fixed_batch_size",
    "full_shape",
    "is_exported",
    "module_path",
    "node_args",
    "op_key",
    "sample_shape",
    "set_mode",
]


# ----------------------------------------------------------------------------- export


def set_mode(module: nn.Module, training: bool) -> None:
    """``module.train(training)``; a no-op for what ``ExportedProgram.module()`` returns, whose
    ``train``/``eval`` raise: its training flags are baked into its graph."""
    try:
        module.train(training)
    except NotImplementedError:
        pass


def _first_arg(module: nn.Module) -> str:
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):
        return "x"
    return params[0].name if params else "x"


def _detail(e: Exception, first_line: bool, limit: int) -> str:
    if first_line:
        return (str(e).splitlines() or [type(e).__name__])[0][:limit]
    return " ".join(str(e).split())[:limit]


def export_program(
    module: nn.Module | torch.export.ExportedProgram,
    example: torch.Tensor,
    *,
    label: str = "model",
    purpose: str = "it",
    hint: str | None = None,
    eval_mode: bool = False,
    dynamic_batch: bool = False,
    strict: bool | None = None,
    first_line: bool = False,
    limit: int = 300,
) -> torch.export.ExportedProgram:
    """``torch.export.export(module, (example,))``, or one line ``"{label}: torch.export could not
    trace {purpose} (Error: detail)"`` (the detail is the error's first line or its whitespace
    collapsed, cut at ``limit`` characters).

    ``eval_mode`` exports in eval mode and restores the module's mode afterwards;
    ``dynamic_batch`` first tries a dynamic batch axis (``Dim.AUTO``), then a fixed one. An
    :class:`NNVitalsError` raised by the model itself passes through unchanged.
    """
    if isinstance(module, torch.export.ExportedProgram):
        return module
    kw: dict[str, Any] = {} if strict is None else {"strict": strict}
    with tracing():  # torch.export is not thread-safe (analyses.core.threads)
        was_training = module.training
        if eval_mode:
            set_mode(module, False)
        try:
            return _export(module, example, dynamic_batch, kw)
        except NNVitalsError:
            raise
        except Exception as e:  # noqa: BLE001 - torch raises many types for untraceable code
            raise NNVitalsError(
                f"{label}: torch.export could not trace {purpose} ({type(e).__name__}: "
                f"{_detail(e, first_line, limit)})",
                hint=hint,
            ) from None
        finally:
            if eval_mode:
                set_mode(module, was_training)


def _export(module: nn.Module, example: Any, dynamic_batch: bool, kw: dict[str, Any]) -> Any:
    if dynamic_batch:
        try:
            dyn = {_first_arg(module): {0: torch.export.Dim.AUTO}}
            return torch.export.export(module, (example,), dynamic_shapes=dyn, **kw)
        except Exception:  # noqa: BLE001 - retry with the batch fixed, then report
            pass
    return torch.export.export(module, (example,), **kw)


def save_program(program: torch.export.ExportedProgram, file: str | Path) -> Path:
    """``torch.export.save(program, file)``, written the way every nnvitals output is
    (:func:`analyses.core.export.save_bytes`: a temporary name, then renamed; a file that cannot be
    written is one line naming it).

    The archive is made in memory: PyTorch's own file writer reports a file it cannot open as a
    ``RuntimeError`` that reads like a bug, and on a full disk it raised, then threw again from its
    destructor, which ended the whole process (a server, with every session on it)."""
    from ..export import save_bytes  # (HoloViews: loaded when a program is saved, not with this layer)

    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return save_bytes(buffer.getbuffer(), file)


def is_exported(module: Any) -> bool:
    """Whether ``module`` is a graph of ATen operators, as ``ExportedProgram.module()`` returns."""
    if not isinstance(module, torch.fx.GraphModule):
        return False
    return any(
        n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) for n in module.graph.nodes
    )


def first_input(model: Any) -> Any:
    """The recorded value (``node.meta["val"]``) of an exported program's (or graph module's) first
    user input, or None when there is no record (not exported, or no tensor recorded)."""
    if isinstance(model, torch.export.ExportedProgram):
        graph, user = model.graph, set(model.graph_signature.user_inputs)
    elif isinstance(model, torch.fx.GraphModule):
        graph, user = model.graph, None
    else:
        return None
    for node in graph.nodes:
        if node.op == "placeholder" and (user is None or node.name in user):
            val = node.meta.get("val")
            return val if isinstance(val, torch.Tensor) else None
    return None


def fixed_batch_size(model: Any) -> int | None:
    """The batch size an exported program (or its graph module) was specialised to, or None when
    its batch axis is free (or ``model`` is not exported)."""
    val = first_input(model)
    if val is not None and val.ndim and isinstance(val.shape[0], int):
        return int(val.shape[0])
    return None


# ----------------------------------------------------------------------------- nodes


def node_args(node: torch.fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name (in schema order), defaults filled in; ``{}`` for a
    target without an ATen schema (``operator.getitem``, Python callables)."""
    target = node.target
    schema = getattr(target, "_schema", None)
    if schema is None:
        return {}
    pair = normalize_function(target, tuple(node.args), dict(node.kwargs), normalize_to_only_use_kwargs=True)
    if pair is None:  # a signature normalize_function does not take: bind by the schema
        return _bind(schema, node)
    names = [a.name for a in schema.arguments]
    # normalize_function names a schema's ``self`` ``input``: back to the schema's names
    return dict(zip(names, pair.kwargs.values(), strict=True))


def _bind(schema: Any, node: torch.fx.Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, a in enumerate(schema.arguments):
        if i < len(node.args):
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        else:
            out[a.name] = a.default_value if a.has_default_value() else None
    return out


def op_key(target: Any) -> str:
    """The name a rule is registered under: ``relu`` for every overload of ``aten::relu``,
    ``ns::name`` for an operator of another namespace, ``getitem`` / ``__name__`` otherwise."""
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        name = target._schema.name
        return name.split("::", 1)[1] if name.startswith("aten::") else name
    if isinstance(target, torch._ops.OpOverloadPacket):
        return str(target).split(".")[-1]
    return getattr(target, "__name__", str(target))


def module_path(node: torch.fx.Node) -> str:
    """Path of the innermost module the node was traced in (``layer1.0.conv1``), or ``""``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    # export writes "L['self'].layer1.0" style paths in some versions
    return path.replace("L['self'].", "").replace("L['self']", "")


def sample_shape(node: Any) -> tuple[int, ...]:
    """Per-sample shape (batch axis dropped) of a node's traced value, ``()`` when unknown."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor):
        return ()
    return tuple(_int(d) for d in val.shape[1:])


def _int(d: Any) -> int:
    """A size as an int; a symbolic one by the value it had when traced (``int()`` of a symbolic size
    would specialise it in the program's shape environment: every later shape would read it fixed)."""
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    return int(hint) if hint is not None else int(d)


def full_shape(node: Any) -> tuple | None:
    """Whole shape of a node's traced value (a symbolic size as its text), or None when unknown."""
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    if isinstance(val, torch.Tensor):
        return tuple(int(s) if isinstance(s, int) else str(s) for s in val.shape)
    return None


class NodeLoop:
    """One pass over a graph's nodes in order: ``env[node.name]`` is what the method named after
    the node's kind returns (``placeholder``, ``get_attr``, ``call_function``, ``call_module``,
    ``call_method``, ``output``; each returns None unless overridden). ``position`` is the
    current call's index among the graph's ``call_function`` nodes, ``total`` their number."""

    def __init__(self, graph: torch.fx.Graph):
        self.graph = graph
        self.env: dict[str, Any] = {}
        self.total = sum(1 for n in graph.nodes if n.op == "call_function")
        self.position = -1

    def run(self) -> dict[str, Any]:
        for node in self.graph.nodes:
            if node.op == "call_function":
                self.position += 1
            self.env[node.name] = getattr(self, node.op)(node)
        return self.env

    def placeholder(self, node: torch.fx.Node) -> Any:
        return None

    def get_attr(self, node: torch.fx.Node) -> Any:
        return None

    def call_function(self, node: torch.fx.Node) -> Any:
        return None

    def call_module(self, node: torch.fx.Node) -> Any:
        return None

    def call_method(self, node: torch.fx.Node) -> Any:
        return None

    def output(self, node: torch.fx.Node) -> Any:
        return None
