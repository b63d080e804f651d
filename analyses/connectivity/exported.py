"""``torch.export`` programs (``.pt2``) as ordinary layers, so connectivity runs them like modules.

What :meth:`torch.export.ExportedProgram.module` returns is a graph module whose layers are
calls of ATen operators on its parameters (``aten.linear(x, fc1.weight, fc1.bias)``), whose
``train()`` / ``eval()`` raise, and whose training flags are baked into the graph: a model exported
after ``.eval()`` calls ``aten.batch_norm(..., training=False)`` (or, once decomposed,
``aten._native_batch_norm_legit_no_training``) with its running statistics as buffer inputs, and
``aten.dropout(..., train=False)``. The statistics are ordinary buffers of the graph module, so a
state with other statistics (a BatchNorm reset) changes what the graph computes.

Connectivity needs more than running the graph: the BatchNorm reset hooks each BatchNorm layer
and REPAIR each hidden Linear/Conv layer. :func:`as_layers` rewrites the graph so that every
such call on a module's own parameters becomes a call of a real layer (``nn.Linear``,
``nn.ConvNd``, a BatchNorm) holding the same tensors under the same state-dict names; everything
else stays as it was. The result computes the same function, in eval mode, and every engine,
hook and ``functional_call`` treats it as it treats the original ``nn.Module``.

:func:`check_exported` refuses, in one line, what cannot be analysed as a fixed function: a
program exported in training mode (BatchNorm normalising by the batch, dropout on, buffers
updated by the forward pass) or with a fixed batch size.
"""

from __future__ import annotations

import copy
import operator
import warnings
from typing import Any

import torch
from torch import nn

from ..core.errors import NNVitalsError
from ..core.graph import fixed_batch_size, is_exported, module_path, node_args

__all__ = ["as_layers", "check_exported", "fixed_batch_size", "is_exported"]

_aten = torch.ops.aten

_LINEAR = {_aten.linear.default}
_CONV = {
    _aten.conv1d.default, _aten.conv2d.default, _aten.conv3d.default, _aten.conv1d.padding,
    _aten.conv2d.padding, _aten.conv3d.padding, _aten.convolution.default,
}  # fmt: skip
_BN = {_aten.batch_norm.default}
_BN_NATIVE = {_aten._native_batch_norm_legit_no_training.default}
_MM = {_aten.addmm.default, _aten.mm.default}
_TRANSPOSE = {_aten.t.default, _aten.permute.default, _aten.transpose.int}
#: operators that normalise by the batch or draw random numbers when their flag says so
_TRAINING_FLAGS = {
    _aten.batch_norm.default: "training",
    _aten.native_batch_norm.default: "training",
    _aten.dropout.default: "train",
    _aten.feature_dropout.default: "train",
    _aten.alpha_dropout.default: "train",
    _aten.native_dropout.default: "train",
}
_ALWAYS_TRAINING = {_aten._native_batch_norm_legit.default, _aten._native_batch_norm_legit_functional.default}


class ExportedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm over axis 1 of an input of any rank (as ``aten.batch_norm`` normalises)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input with a channel axis (2 or more dims), got {input.dim()}")


def _where(node: torch.fx.Node) -> str:
    path = module_path(node)
    return f"graph node '{node.name}'" + (f" (module '{path}')" if path else "")


def check_exported(module: nn.Module, label: str) -> None:
    """Refuse, in one line naming ``label``, a graph exported in training mode."""
    if not isinstance(module, torch.fx.GraphModule):
        return
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        flag = _TRAINING_FLAGS.get(node.target)
        training = node.target in _ALWAYS_TRAINING or (flag is not None and bool(node_args(node).get(flag)))
        if training:
            what = "dropout is on" if "dropout" in str(node.target) else "BatchNorm normalises by the batch"
            raise NNVitalsError(
                f"{label}: was exported in training mode ({what} at {_where(node)}); call model.eval() "
                "before torch.export.export and save it again"
            )


# ----------------------------------------------------------------------------- rewriting


def _attr(arg: Any) -> str | None:
    return str(arg.target) if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" else None


def _split(target: str) -> tuple[str, str]:
    prefix, _, leaf = target.rpartition(".")
    return prefix, leaf


class _Site:
    """One operator call that becomes a call of the layer at ``prefix``."""

    def __init__(self, node: torch.fx.Node, prefix: str, config: tuple, x: int = 0):
        # x: position of the layer's input among the node's arguments (read when rewriting: an
        # earlier rewrite may have replaced it)
        self.node, self.prefix, self.config, self.x = node, prefix, config, x
        self.extra: list[torch.fx.Node] = []  # nodes folded into the layer (a transposed weight)


def _owner(uses: dict[str, Any]) -> str | None:
    """The module path that owns the get_attr arguments ``{role: node}`` (each named ``path.role``)."""
    targets = {role: _attr(a) for role, a in uses.items() if a is not None}
    if any(t is None for t in targets.values()) or not targets:
        return None
    prefixes = {_split(t)[0] for t in targets.values()}
    if len(prefixes) != 1 or any(_split(t)[1] != role for role, t in targets.items()):
        return None
    return prefixes.pop() or None


def _site(node: torch.fx.Node) -> _Site | None:
    """What layer an operator call is, when it runs on one module's own parameters."""
    if node.op != "call_function":
        return None
    t = node.target
    if t in _LINEAR:
        a = node_args(node)
        own = _owner({"weight": a["weight"], "bias": a.get("bias")})
        return _Site(node, own, ("linear", a.get("bias") is not None)) if own else None
    if t in _CONV:
        a = node_args(node)
        if t is _aten.convolution.default:
            if a["transposed"] or any(int(p) for p in a["output_padding"]):
                return None
        own = _owner({"weight": a["weight"], "bias": a.get("bias")})
        if own is None:
            return None
        w = node.args[1].meta.get("val")
        if not isinstance(w, torch.Tensor) or w.ndim not in (3, 4, 5):
            return None
        dims = w.ndim - 2
        config = (
            "conv", dims, a.get("bias") is not None, _ints(a["stride"], dims), _ints(a["padding"], dims),
            _ints(a["dilation"], dims), int(a["groups"]),
        )  # fmt: skip
        return _Site(node, own, config)
    if t in _BN or t in _BN_NATIVE:
        a = node_args(node)
        if t in _BN and a["training"]:
            return None
        if t in _BN_NATIVE and any(
            u.op != "call_function" or u.target is not operator.getitem or (u.args[1] != 0 and u.users)
            for u in node.users
        ):
            return None  # the saved mean / inverse std are used: not a plain BatchNorm
        roles = {"weight": a["weight"], "bias": a["bias"], "running_mean": a["running_mean"],
                 "running_var": a["running_var"]}  # fmt: skip
        if (a["weight"] is None) != (a["bias"] is None) or a["running_mean"] is None:
            return None
        own = _owner(roles)
        if own is None:
            return None
        config = ("bn", a["weight"] is not None, float(a["momentum"]), float(a["eps"]))
        return _Site(node, own, config)
    if t in _MM:
        a = node_args(node)
        mat2 = a["mat2"]
        if not isinstance(mat2, torch.fx.Node) or mat2.target not in _TRANSPOSE or len(mat2.users) != 1:
            return None
        if mat2.target is _aten.permute.default and list(mat2.args[1]) != [1, 0]:
            return None
        if mat2.target is _aten.transpose.int and sorted(int(d) % 2 for d in mat2.args[1:3]) != [0, 1]:
            return None
        bias = a.get("self") if t is _aten.addmm.default else None
        if t is _aten.addmm.default and (a.get("beta", 1) != 1 or a.get("alpha", 1) != 1):
            return None
        own = _owner({"weight": mat2.args[0], "bias": bias})
        if own is None:
            return None
        site = _Site(node, own, ("linear", bias is not None), x=1 if bias is not None else 0)
        site.extra.append(mat2)
        return site
    return None


def _ints(v: Any, n: int) -> tuple[int, ...] | str:
    if isinstance(v, str):
        return v
    v = [int(i) for i in (v if isinstance(v, list | tuple) else [v])]
    return tuple(v * n if len(v) == 1 else v)


def _get(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _layer(site: _Site, holder: nn.Module) -> nn.Module | None:
    """The layer for ``site``, holding ``holder``'s own tensors (the same objects)."""
    kind = site.config[0]
    tensors = {**dict(holder.named_parameters(recurse=False)), **dict(holder.named_buffers(recurse=False))}
    w = tensors.get("weight")
    if kind == "linear":
        if not isinstance(w, nn.Parameter) or w.ndim != 2:
            return None
        layer: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=site.config[1], device="meta")
    elif kind == "conv":
        _, dims, bias, stride, padding, dilation, groups = site.config
        if not isinstance(w, nn.Parameter):
            return None
        cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        layer = cls(
            w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias, device="meta",
        )  # fmt: skip
    else:
        _, affine, momentum, eps = site.config
        rm = tensors.get("running_mean")
        if rm is None or rm.ndim != 1:
            return None
        layer = ExportedBatchNorm(rm.shape[0], eps=eps, momentum=momentum, affine=affine, device="meta")
        if "num_batches_tracked" not in tensors:
            layer.num_batches_tracked = None
    expected = {n for n, _ in layer.named_parameters()} | {
        n for n, b in layer.named_buffers() if b is not None
    }
    if set(tensors) != expected:
        return None  # the holder has tensors the layer would not keep (or lacks some)
    for name, t in tensors.items():
        if name in dict(layer.named_parameters()):
            if not isinstance(t, nn.Parameter):
                return None
            setattr(layer, name, t)
        else:
            layer._buffers[name] = t
    return layer.eval()


def as_layers(module: nn.Module) -> nn.Module:
    """``module`` with every operator call on one module's own parameters turned into a real layer.

    See the module docstring. The result is a new ``torch.fx.GraphModule`` (in eval mode, which it
    accepts) that shares the tensors of ``module`` under the same state-dict names; ``module`` itself
    is left as it was. Anything that is not an exported graph is returned as is.
    """
    if not is_exported(module):
        return module
    gm = module
    with warnings.catch_warnings():  # torch's own deprecation notice about pytree specs
        warnings.simplefilter("ignore", FutureWarning)
        graph = copy.deepcopy(gm.graph)  # nodes, metadata and the pytree calling convention

    sites: dict[str, list[_Site]] = {}
    for node in graph.nodes:
        s = _site(node)
        if s is not None:
            sites.setdefault(s.prefix, []).append(s)

    layers: dict[str, nn.Module] = {}
    for prefix, group in sites.items():
        if len({s.config for s in group}) != 1:
            continue  # one module's tensors used by different kinds of calls: leave them
        own = {n for s in group for n in [s.node, *s.extra]}
        attrs = [n for n in graph.nodes if n.op == "get_attr" and _split(str(n.target))[0] == prefix]
        if any(u not in own for n in attrs for u in n.users):
            continue  # the parameters are used elsewhere too (tied weights): leave them
        try:
            holder = gm.get_submodule(prefix)
        except AttributeError:
            continue
        if any(True for _ in holder.children()):
            continue
        layer = _layer(group[0], holder)
        if layer is not None:
            layers[prefix] = layer

    for prefix in layers:
        for s in sites[prefix]:
            with graph.inserting_before(s.node):
                call = graph.call_module(prefix, (s.node.args[s.x],))
            if s.node.target in _BN_NATIVE:  # getitem(node, 0) is the output; the others are unused
                users = list(s.node.users)
                call.meta = next((dict(u.meta) for u in users if u.args[1] == 0), {})
                for u in users:
                    if u.args[1] == 0:
                        u.replace_all_uses_with(call)
                    graph.erase_node(u)
            else:
                call.meta = dict(s.node.meta)
                s.node.replace_all_uses_with(call)
            graph.erase_node(s.node)
            for e in s.extra:
                if not e.users:
                    graph.erase_node(e)
        for n in [n for n in graph.nodes if n.op == "get_attr" and _split(str(n.target))[0] == prefix]:
            if not n.users:
                graph.erase_node(n)
    graph.lint()

    refs: dict[str, Any] = {}
    for n in graph.nodes:
        if n.op in ("get_attr", "call_module"):
            refs[str(n.target)] = layers.get(str(n.target)) or _get(gm, str(n.target))
    out = torch.fx.GraphModule(refs, graph, class_name="ExportedLayers")
    _reorder(out, gm)
    return out.eval()


def _reorder(new: nn.Module, old: nn.Module) -> None:
    """Put every module's children, parameters and buffers in ``old``'s order (the state-dict order)."""
    for attr in ("_parameters", "_buffers", "_modules"):
        mine, theirs = new.__dict__[attr], old.__dict__[attr]
        keys = [k for k in theirs if k in mine] + [k for k in mine if k not in theirs]
        new.__dict__[attr] = {k: mine[k] for k in keys}
    for name, child in new._modules.items():
        other = old._modules.get(name)
        if child is not None and other is not None:
            _reorder(child, other)
