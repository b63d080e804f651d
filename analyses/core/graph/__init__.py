"""The graph layer: one reader of ``torch.export`` graphs and one operator table.

Bounds and Connectivity both read a model's computation here: :mod:`.nodes` exports the model
and normalises nodes (arguments by schema name, module paths, shapes, a node loop);
:mod:`.rules` holds the operator table (one :class:`Rule` per operator: its bounds step, forward,
affine parts, interval and Lipschitz rules, and how a permutation passes through it), and
:mod:`.ops` the rules themselves. Nothing here imports an analysis family.
"""

from . import ops, ops_attention  # noqa: F401 - registers the operator rules
from .nodes import (
    NodeLoop,
    export_program,
    first_input,
    fixed_batch_size,
    full_shape,
    is_exported,
    module_path,
    node_args,
    op_key,
    sample_shape,
    save_program,
    set_mode,
)
from .rules import DEFAULT, Perm, Rule, Step, StepContext, kind_rule, register, registered, rule_for, rules

__all__ = [
    "DEFAULT",
    "NodeLoop",
    "Perm",
    "Rule",
    "Step",
    "StepContext",
    "export_program",
    "first_input",
    "fixed_batch_size",
    "full_shape",
    "is_exported",
    "kind_rule",
    "module_path",
    "node_args",
    "op_key",
    "register",
    "registered",
    "rule_for",
    "rules",
    "sample_shape",
    "save_program",
    "set_mode",
]
