"""Look inside a ``.pt2`` archive before PyTorch does: only a plain exported program gets through.

``torch.export.load`` runs code from a crafted archive in several ways, none of which a plain
``torch.export.save`` of a program ever writes:

- members under ``data/aotinductor/`` make it load the shared libraries they hold (their
  constructors run at once);
- a symbolic size's ``expr_str`` is handed to ``sympy.sympify``, which evaluates Python;
- ``guards_code`` strings are pasted into Python source and ``exec``-ed when ``.module()`` runs;
- a node's ``target`` is resolved by walking attributes from ``torch``/``math``/``operator``,
  so ``torch.serialization.os.system`` becomes a call in the graph;
- ``custom_obj_``/``opaque_obj_`` constants and payloads marked ``use_pickle`` are unpickled;
- tensor metadata that declares more elements than its record holds is allocated as declared.

:func:`check_pt2` reads the archive's directory and metadata with PyTorch's own zip reader (so it
sees the same members the loader will), and refuses, with one line, anything outside an
allowlist: the member paths ``torch.export.save`` writes; node targets that are ATen/prims
operators, higher-order operators or the symbolic-shape helpers; ``expr_str`` and guards written
in a strict grammar of symbol names, integers and shape arithmetic; tensor payloads that fit
their records. It never unpickles, inflates or evaluates anything from the archive.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import torch

from .archives import check_zip
from .errors import NNVitalsError

_NAME = r"[A-Za-z0-9_\-]{1,64}"
#: member paths (relative to the archive's root folder) that torch.export.save writes
MEMBER_RULES = {
    "fixed": re.compile(r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"),
    "model": re.compile(rf"models/(?P<m>{_NAME})\.json"),
    "sample_inputs": re.compile(rf"data/sample_inputs/(?P<m>{_NAME})\.pt"),
    "weights_config": re.compile(rf"data/weights/(?P<m>{_NAME})_weights_config\.json"),
    "weight": re.compile(r"data/weights/weight_\d{1,9}"),
    "constants_config": re.compile(rf"data/constants/(?P<m>{_NAME})_constants_config\.json"),
    "constant": re.compile(r"data/constants/tensor_\d{1,9}"),
    "extra": re.compile(rf"extra/{_NAME}(\.[A-Za-z0-9]{{1,8}})?"),
}
#: largest record read for inspection, by kind
MAX_BYTES = {
    "fixed": 4096,
    "model": 64 * 2**20,
    "weights_config": 64 * 2**20,
    "constants_config": 64 * 2**20,
    "sample_inputs": 256 * 2**20,
    "extra": 2**20,
}
MAX_DEPTH = 256
MAX_EXPR_CHARS = 10_000
#: most graph nodes read: PyTorch's deserialiser takes about 2.5 ms per node on a 2-core machine (8,000
#: nodes: ~20 s); a 32-block LLaMA export has ~2,500, a ResNet-50 ~300, a ViT-B ~600
MAX_NODES = 8_000

# --------------------------------------------------------------------------- node targets
_OPERATOR_OK = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift",
}  # fmt: skip
_TORCH_FN_OK = {
    "sym_int", "sym_float", "sym_max", "sym_min", "sym_ite", "sym_not", "sym_sqrt", "_sym_sqrt", "sym_sum",
    "sym_fresh_size",
}  # fmt: skip
_MATH_OK = {"trunc", "floor", "ceil", "sqrt"}
_OP_NAMESPACES = {"aten", "prims", "higher_order", "quantized_decomposed"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")


def target_ok(target: Any) -> bool:
    """Whether a serialized node target names an operator a plain exported program may call."""
    if not isinstance(target, str):
        return False
    parts = target.split(".")
    if not all(_IDENT.fullmatch(p) and not (p.startswith("__") and p.endswith("__")) for p in parts):
        return False
    if parts[0] == "_operator":
        return len(parts) == 2 and parts[1] in _OPERATOR_OK
    if parts[0] == "math":
        return len(parts) == 2 and parts[1] in _MATH_OK
    if parts[0] == "torch":
        if len(parts) == 2:
            return parts[1] in _TORCH_FN_OK
        if parts[1] != "ops" or parts[2] not in _OP_NAMESPACES:
            return False
        return len(parts) == 5 or (len(parts) == 4 and parts[2] == "higher_order")
    return False


# --------------------------------------------------------------------------- symbolic expressions
#: functions sympy's ``srepr`` (and torch's shape functions) write in ``expr_str``
_SYM_FUNCS = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
    "floor", "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "LessThan", "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
}  # fmt: skip
_SYM_CONSTANTS = {"oo", "zoo", "nan", "true", "false", "True", "False"}
#: a symbol torch creates for a size: s0, u12, zuf3, ...
_SYMBOL = re.compile(r"[a-z]{1,8}[0-9]{1,9}")
_SYM_KWARGS = {
    "positive", "integer", "real", "nonnegative", "negative", "nonpositive", "finite", "precision",
    "evaluate", "rational", "zero", "nonzero",
}  # fmt: skip
#: operators whose second argument is an exponent or a shift: it must stay small
_EXPONENT_FUNCS = {"Pow", "PowByNatural", "FloatPow", "LShift", "RShift"}
_MAX_EXPONENT = 64
_TOKEN = re.compile(
    r"\s*(?:(?P<float>\d{1,20}\.\d{0,20}(?:[eE][+-]?\d{1,3})?)|(?P<int>\d{1,20})"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]{0,64})|(?P<str>'[A-Za-z0-9_.+\-]{0,64}')"
    r"|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%<>(),=]))"
)


class _Refused(Exception):
    """Internal: the expression is outside the grammar."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _Refused(f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _SymParser:
    """Recursive descent over the grammar (``srepr`` calls and infix shape arithmetic)::

    expr  := arith (CMP arith)?          arith := term (('+'|'-') term)*
    term  := unary (('*'|'/'|'//'|'%') unary)*
    unary := '-' unary | power           power := atom ('**' unary)?
    atom  := INT | FLOAT | SYMBOL | CONST | FUNC '(' [arg (',' arg)*] ')' | '(' expr ')'
    arg   := KWARG '=' (True|False|INT|STRING) | STRING | expr
    """

    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise _Refused(f"expected {value or 'more'}")
        self.i += 1
        return tok

    def parse(self) -> None:
        self.expr()
        if self.peek() is not None:
            raise _Refused(f"unexpected {self.peek()[1]!r}")

    def expr(self) -> dict:
        self.depth += 1
        if self.depth > 64:
            raise _Refused("nested too deeply")
        left = self.arith()
        tok = self.peek()
        if tok and tok[1] in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            self.arith()
            left = {"kind": "expr"}
        self.depth -= 1
        return left

    def arith(self) -> dict:
        left = self.term()
        while (tok := self.peek()) and tok[1] in ("+", "-"):
            self.take()
            self.term()
            left = {"kind": "expr"}
        return left

    def term(self) -> dict:
        left = self.unary()
        while (tok := self.peek()) and tok[1] in ("*", "/", "//", "%"):
            self.take()
            self.unary()
            left = {"kind": "expr"}
        return left

    def unary(self) -> dict:
        if (tok := self.peek()) and tok[1] == "-":
            self.take()
            inner = self.unary()
            return {"kind": "int", "value": -inner["value"]} if inner["kind"] == "int" else inner
        return self.power()

    def power(self) -> dict:
        base = self.atom()
        if (tok := self.peek()) and tok[1] == "**":
            self.take()
            self._exponent(self.unary())
            return {"kind": "expr"}
        return base

    @staticmethod
    def _exponent(arg: dict) -> None:
        if arg["kind"] == "symbol":
            return
        if arg["kind"] == "int" and abs(arg["value"]) <= _MAX_EXPONENT:
            return
        raise _Refused(f"exponents and shifts must be a symbol or an integer up to {_MAX_EXPONENT}")

    def atom(self) -> dict:
        kind, value = self.take()
        if kind == "int":
            return {"kind": "int", "value": int(value)}
        if kind == "float":
            return {"kind": "float"}
        if kind == "op" and value == "(":
            inner = self.expr()
            self.take(")")
            return inner
        if kind == "name":
            nxt = self.peek()
            if nxt and nxt[1] == "(":
                return self.call(value)
            if value in _SYM_CONSTANTS:
                return {"kind": "const"}
            if _SYMBOL.fullmatch(value):
                return {"kind": "symbol"}
            raise _Refused(f"unknown name {value!r}")
        raise _Refused(f"unexpected {value!r}")

    def call(self, func: str) -> dict:
        if func not in _SYM_FUNCS:
            raise _Refused(f"function {func!r} is not a shape function")
        self.take("(")
        args: list[dict] = []
        while (tok := self.peek()) and tok[1] != ")":
            if args:
                self.take(",")
            args.append(self.arg(func, len(args)))
        self.take(")")
        positional = [a for a in args if a["kind"] != "kw"]
        if func in _EXPONENT_FUNCS and len(positional) >= 2:
            self._exponent(positional[1])
        if func == "Symbol":
            return {"kind": "symbol"}
        if func == "Integer" and len(positional) == 1 and positional[0]["kind"] == "int":
            return {"kind": "int", "value": positional[0]["value"]}
        return {"kind": "expr"}

    def arg(self, func: str, index: int) -> dict:
        kind, value = self.peek()
        if kind == "name" and self.i + 1 < len(self.toks) and self.toks[self.i + 1][1] == "=":
            if value not in _SYM_KWARGS:
                raise _Refused(f"keyword {value!r} is not a shape keyword")
            self.take()
            self.take("=")
            vkind, v = self.take()
            if not (vkind in ("int", "str") or v in ("True", "False")):
                raise _Refused(f"keyword {value!r} takes a literal")
            return {"kind": "kw"}
        if kind == "str":
            self.take()
            text = value[1:-1]
            if func == "Symbol" and index == 0 and _SYMBOL.fullmatch(text):
                return {"kind": "str"}
            if (
                func == "Float"
                and index == 0
                and re.fullmatch(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|inf|nan)", text)
            ):
                return {"kind": "str"}
            raise _Refused("a string literal outside Symbol('name') or Float('number')")
        return self.expr()


def sym_expr_ok(text: Any) -> str | None:
    """None when ``text`` is a symbolic shape expression of the strict grammar, else why not."""
    if not isinstance(text, str):
        return "not a string"
    if len(text) > MAX_EXPR_CHARS:
        return f"longer than {MAX_EXPR_CHARS} characters"
    try:
        _SymParser(text).parse()
    except _Refused as e:
        return str(e)
    return None


# --------------------------------------------------------------------------- guards
#: functions a guard may call (they name shape arithmetic in torch's guard namespace)
_GUARD_FUNCS = {
    "Eq", "Ne", "Gt", "Lt", "Le", "Ge", "Min", "Max", "Mod", "PythonMod", "FloorDiv", "TrueDiv",
    "IntTrueDiv", "FloatTrueDiv", "CleanDiv", "CeilDiv", "ModularIndexing", "Where", "FloorToInt",
    "CeilToInt", "TruncToInt", "RoundToInt", "ToFloat", "Abs", "Not", "And", "Or", "sym_sum",
    "IsNonOverlappingAndDenseIndicator", "PowByNatural", "LShift", "RShift",
}  # fmt: skip
_TENSOR_METHODS = {"size", "stride", "storage_offset", "dim", "numel"}
_GUARD_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,128}")


def _guard_node_ok(node: ast.AST, depth: int = 0) -> None:
    if depth > 64:
        raise _Refused("nested too deeply")
    d = depth + 1
    if isinstance(node, ast.Expression):
        return _guard_node_ok(node.body, d)
    if isinstance(node, ast.Compare):
        if not all(
            isinstance(op, ast.Eq | ast.NotEq | ast.Lt | ast.LtE | ast.Gt | ast.GtE) for op in node.ops
        ):
            raise _Refused("comparison operator")
        for n in (node.left, *node.comparators):
            _guard_node_ok(n, d)
        return None
    if isinstance(node, ast.BoolOp):
        for n in node.values:
            _guard_node_ok(n, d)
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
        return _guard_node_ok(node.operand, d)
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.FloorDiv | ast.Mod | ast.Div | ast.Pow):
            raise _Refused("arithmetic operator")
        if isinstance(node.op, ast.Pow) and not (
            isinstance(node.right, ast.Constant)
            and isinstance(node.right.value, int)
            and abs(node.right.value) <= _MAX_EXPONENT
        ):
            raise _Refused(f"exponents must be integers up to {_MAX_EXPONENT}")
        _guard_node_ok(node.left, d)
        return _guard_node_ok(node.right, d)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or (isinstance(node.value, int) and abs(node.value) < 10**20):
            return None
        if isinstance(node.value, float):
            return None
        raise _Refused("literal")
    if isinstance(node, ast.Subscript):
        return _input_access_ok(node, d)
    if isinstance(node, ast.Call):
        if node.keywords:
            raise _Refused("keyword arguments")
        f = node.func
        if isinstance(f, ast.Name) and f.id in _GUARD_FUNCS:
            for a in node.args:
                _guard_node_ok(a, d)
            return None
        if isinstance(f, ast.Attribute) and f.attr in _TENSOR_METHODS and not node.args:
            return _input_access_ok(f.value, d)
        raise _Refused("call")
    if isinstance(node, ast.Name) and node.id in ("inf",):
        return None
    raise _Refused(type(node).__name__)


def _input_access_ok(node: ast.AST, depth: int) -> None:
    """``L['x']``, ``L['x'][0]``, ``L['x'].size()[1]``: access to the inputs, nothing else."""
    while True:
        if depth > 64:
            raise _Refused("nested too deeply")
        depth += 1
        if isinstance(node, ast.Name):
            if node.id != "L":
                raise _Refused(f"name {node.id!r}")
            return
        if isinstance(node, ast.Subscript):
            key = node.slice
            if isinstance(key, ast.Constant) and (
                (isinstance(key.value, int) and not isinstance(key.value, bool) and 0 <= key.value < 2**31)
                or (isinstance(key.value, str) and _GUARD_KEY.fullmatch(key.value))
            ):
                node = node.value
                continue
            raise _Refused("subscript")
        if isinstance(node, ast.Call) and not node.args and not node.keywords:
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in _TENSOR_METHODS:
                node = f.value
                continue
        raise _Refused(type(node).__name__)


def guard_ok(text: Any) -> str | None:
    """None when ``text`` is a shape guard of the strict grammar, else why not."""
    if not isinstance(text, str):
        return "not a string"
    if len(text) > MAX_EXPR_CHARS or any(c in text for c in '\r\n\x00"\\'):
        return "too long or holds control characters, quotes or backslashes"
    try:
        tree = ast.parse(text, mode="eval")
        _guard_node_ok(tree)
    except SyntaxError:
        return "not an expression"
    except (_Refused, RecursionError) as e:
        return str(e) or "nested too deeply"
    return None


# --------------------------------------------------------------------------- the archive
def _refuse(where: str, what: str) -> NNVitalsError:
    return NNVitalsError(f"{where}: refused: {what}; nnvitals loads only plain torch.export programs")


def _walk_json(obj: Any, where: str, member: str) -> None:
    """Check every ``expr_str``, node target and string of a model's JSON (iteratively)."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _refuse(where, f"{member} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            if "expr_str" in item and (why := sym_expr_ok(item["expr_str"])):
                raise _refuse(where, f"{member}: a symbolic size is not a shape expression ({why})")
            if "target" in item:
                nodes += 1
                if nodes > MAX_NODES:
                    raise _refuse(
                        where, f"{member}: its graph has over {MAX_NODES:,} nodes (too large to load here)"
                    )
            if "target" in item and not target_ok(item["target"]):
                shown = item["target"] if isinstance(item["target"], str) else type(item["target"]).__name__
                raise _refuse(where, f"{member}: node target {str(shown)[:80]!r} is not an operator")
            for k, v in item.items():
                if not isinstance(k, str) or len(k) > 4096:
                    raise _refuse(where, f"{member}: malformed key")
                stack.append((v, depth + 1))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            if any(ord(c) < 32 and c not in "\n\t" for c in item):
                raise _refuse(where, f"{member}: a string holds control characters")


def _load_json(data: bytes, where: str, member: str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise _refuse(where, f"{member} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise NNVitalsError(f"{where}: damaged torch.export program ({member} is not valid JSON)") from None


def _check_payloads(config: Any, where: str, member: str, prefix: str, records: dict[str, int]) -> None:
    """Each entry of a weights/constants config: a plain tensor that fits its record."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise NNVitalsError(f"{where}: damaged torch.export program ({member} has no 'config' mapping)")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise NNVitalsError(f"{where}: damaged torch.export program ({member}: entry is not an object)")
        path = meta.get("path_name")
        if meta.get("use_pickle") is not False:
            raise _refuse(
                where,
                f"{member}: {str(fqn)[:80]!r} is stored as a pickle (custom objects and tensor subclasses are not read)",
            )
        if not isinstance(path, str) or not re.fullmatch(rf"{prefix}\d{{1,9}}", path):
            raise _refuse(where, f"{member}: {str(fqn)[:80]!r} is not a plain tensor payload")
        rec = f"{'data/weights' if prefix == 'weight_' else 'data/constants'}/{path}"
        if rec not in records:
            raise NNVitalsError(
                f"{where}: damaged torch.export program (payload of {str(fqn)[:80]!r} is missing)"
            )
        tm = meta.get("tensor_meta")
        try:
            dtype = _SERIALIZE_TO_TORCH_DTYPE[tm["dtype"]]
            sizes = [s["as_int"] for s in tm["sizes"]]
            strides = [s["as_int"] for s in tm["strides"]]
            offset = tm["storage_offset"]["as_int"]
            device = tm["device"]["type"]
        except (KeyError, TypeError):
            raise NNVitalsError(
                f"{where}: damaged torch.export program (tensor metadata of {str(fqn)[:80]!r} is unreadable)"
            ) from None
        ints = [*sizes, *strides, offset]
        if not all(type(v) is int and 0 <= v < 2**48 for v in ints) or len(sizes) != len(strides):
            raise NNVitalsError(
                f"{where}: damaged torch.export program (sizes of {str(fqn)[:80]!r} are invalid)"
            )
        if device not in ("cpu", "cuda"):
            raise _refuse(
                where, f"{member}: {str(fqn)[:80]!r} lives on device {str(device)[:20]!r} (no values to read)"
            )
        numel = 1
        for s in sizes:
            numel *= s
        if numel:
            extent = offset + 1 + sum((s - 1) * st for s, st in zip(sizes, strides))
            if extent * dtype.itemsize > records[rec]:
                raise NNVitalsError(
                    f"{where}: damaged torch.export program (tensor {str(fqn)[:80]!r} declares more data "
                    "than its payload holds)"
                )


def check_pt2(path: str | Path) -> None:
    """Refuse (``NNVitalsError``, one line) a ``.pt2`` that is anything but a plain exported program.

    See the module docstring for what is checked. Reads only the archive's directory and its
    small JSON members; call it before ``torch.export.load`` on any file from a user.
    """
    path = Path(path)
    where = str(path)
    members = check_zip(path, where)
    roots = {m.name.split("/", 1)[0] for m in members if "/" in m.name}
    if len(roots) != 1 or any("/" not in m.name for m in members):
        raise NNVitalsError(f"{where}: not a torch.export program (its members are not under one folder)")
    root = roots.pop()
    sizes = {m.name[len(root) + 1 :]: m.size for m in members if not m.name.endswith("/")}
    try:  # the member list as PyTorch's own zip reader sees it (the one torch.export.load uses)
        reader = torch._C.PyTorchFileReader(str(path))
        names = set(reader.get_all_records())
    except Exception:  # torch raises RuntimeError and others for archives it cannot read
        raise NNVitalsError(f"{where}: damaged or not a torch.export program") from None
    if names != set(sizes):
        raise _refuse(where, "its zip directory reads differently in different readers")
    records = sizes
    kinds: dict[str, str] = {}
    for name in records:
        kind = next((k for k, rule in MEMBER_RULES.items() if rule.fullmatch(name)), None)
        if kind is None:
            shown = name if len(name) < 80 else name[:77] + "..."
            what = (
                "compiled (AOTInductor) code" if name.startswith("data/aotinductor/") else f"member {shown!r}"
            )
            raise _refuse(where, f"it carries {what}, which a plain exported program does not hold")
        kinds[name] = kind

    def read(name: str) -> bytes:
        limit = MAX_BYTES.get(kinds[name], 0)
        if records[name] > limit:
            raise _refuse(where, f"member {name!r} is larger than {limit // 2**20 or 1} MiB")
        try:
            return bytes(reader.get_record(name))
        except Exception:
            raise NNVitalsError(f"{where}: damaged torch.export program (cannot read {name})") from None

    if "archive_format" not in records or read("archive_format").strip() != b"pt2":
        raise NNVitalsError(f"{where}: not a torch.export program (no 'pt2' archive format record)")
    models = [n for n, k in kinds.items() if k == "model"]
    if not models:
        raise NNVitalsError(f"{where}: not a torch.export program (holds no models/*.json)")
    for name, kind in kinds.items():
        if kind == "model":
            doc = _load_json(read(name), where, name)
            if not isinstance(doc, dict):
                raise NNVitalsError(f"{where}: damaged torch.export program ({name} is not an object)")
            for guard in doc.get("guards_code") or []:
                if why := guard_ok(guard):
                    raise _refuse(where, f"{name}: a shape guard is not in the guard grammar ({why})")
            _walk_json(doc, where, name)
        elif kind in ("weights_config", "constants_config"):
            prefix = "weight_" if kind == "weights_config" else "tensor_"
            _check_payloads(_load_json(read(name), where, name), where, name, prefix, records)
        elif kind == "sample_inputs" and records[name]:
            check_zip(read(name), f"{where} ({name})")
        elif kind == "extra":
            read(name)  # size-checked; torch reads it as text only
