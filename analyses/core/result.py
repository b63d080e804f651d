"""Results: plain data plus the metadata that says where it came from.

Every analysis returns a :class:`Result` (or a subclass adding convenience accessors):

- ``table``: a :class:`pandas.DataFrame`, one row per analysed item (layer, sample, ...);
- ``summary``: a JSON-able dict of headline numbers;
- ``arrays``: named :class:`numpy.ndarray` objects the views need (ESDs, grids, ...);
- ``meta``: analysis name, parameters, model and data fingerprints, package version.

A result saves to and loads from a single ``.nnv`` zip file holding JSON and an ``.npz``
(``allow_pickle=False``): nothing in it can execute code when loaded.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .archives import check_zip
from .errors import NNVitalsError

FORMAT = "nnvitals-result/1"
#: largest .nnv file read
MAX_RESULT_BYTES = 1 << 30


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars / arrays / paths inside ``obj`` to JSON-able values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def table_to_arrays(table: pd.DataFrame) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    """Split a DataFrame into per-column arrays that ``np.savez`` stores without pickle."""
    arrays, schema = {}, []
    for i, col in enumerate(table.columns):
        s = table[col]
        if s.dtype.kind in "biuf":
            arr = s.to_numpy()
        else:
            arr = np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in s])
            arr = arr.astype(str) if len(arr) else np.array([], dtype="<U1")
        arrays[f"col{i}"] = arr
        schema.append([str(col), str(s.dtype)])
    return arrays, schema


def arrays_to_table(arrays: dict[str, np.ndarray], schema: list[list[str]]) -> pd.DataFrame:
    cols = {}
    for i, (name, dtype) in enumerate(schema):
        arr = arrays[f"col{i}"]
        cols[name] = arr.astype(object) if dtype == "object" else arr
    return pd.DataFrame(cols, columns=[n for n, _ in schema])


def _schema_ok(schema: Any, tab: dict[str, np.ndarray]) -> bool:
    """The table schema is ``[[name, dtype], ...]`` naming exactly the stored columns, of one length."""
    if not isinstance(schema, list) or len(schema) != len(tab):
        return False
    if not all(isinstance(e, list) and len(e) == 2 and all(isinstance(v, str) for v in e) for e in schema):
        return False
    if set(tab) != {f"col{i}" for i in range(len(schema))}:
        return False
    lengths = {a.shape[0] if a.ndim == 1 else -1 for a in tab.values()}
    return len(lengths) <= 1 and -1 not in lengths


@dataclass
class Result:
    """The output of one analysis run (see module docstring)."""

    table: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    kind: ClassVar[str] = "result"
    _registry: ClassVar[dict[str, type[Result]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        Result._registry[cls.kind] = cls

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        """Serialise to the ``.nnv`` zip format (JSON + npz, no pickle)."""
        tab_arrays, schema = table_to_arrays(self.table)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            head = {"format": FORMAT, "kind": self.kind, "schema": schema, "meta": _jsonable(self.meta)}
            zf.writestr("meta.json", json.dumps(head, sort_keys=True))
            zf.writestr("summary.json", json.dumps(_jsonable(self.summary), sort_keys=True))
            for fname, arrs in (("table.npz", tab_arrays), ("arrays.npz", self.arrays)):
                b = io.BytesIO()
                np.savez(b, **{k: np.asarray(v) for k, v in arrs.items()})
                zf.writestr(fname, b.getvalue())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "result") -> Result:
        """Load a result written by :meth:`to_bytes`; raises NNVitalsError when damaged.

        The archive's declared sizes are checked before anything inflates (a crafted ``.nnv``
        cannot expand past 2 GiB), and arrays load with ``allow_pickle=False``.
        """
        try:
            check_zip(data, source, max_member=2**31, max_total=2**31, max_ratio=5000)
        except NNVitalsError as e:
            detail = str(e).removeprefix(f"{source}: ")
            raise NNVitalsError(f"{source}: not a readable nnvitals result ({detail})") from None
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                head = json.loads(zf.read("meta.json"))
                summary = json.loads(zf.read("summary.json"))
                with np.load(io.BytesIO(zf.read("table.npz")), allow_pickle=False) as z:
                    tab = {k: z[k] for k in z.files}
                with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
        except RecursionError:
            raise NNVitalsError(f"{source}: not a readable nnvitals result (nested too deeply)") from None
        except MemoryError:
            raise NNVitalsError(
                f"{source}: not a readable nnvitals result (declares absurd array sizes)"
            ) from None
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, TypeError) as e:
            raise NNVitalsError(f"{source}: not a readable nnvitals result ({type(e).__name__})") from None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            shown = head.get("format") if isinstance(head, dict) else type(head).__name__
            raise NNVitalsError(f"{source}: unknown result format {str(shown)[:40]!r}, expected {FORMAT}")
        meta, schema, kind = head.get("meta"), head.get("schema"), head.get("kind")
        if not isinstance(meta, dict) or not isinstance(summary, dict) or not _schema_ok(schema, tab):
            raise NNVitalsError(f"{source}: not a readable nnvitals result (damaged metadata)")
        klass = Result._registry.get(kind, cls) if isinstance(kind, str) else cls
        try:
            table = arrays_to_table(tab, schema)
        except (ValueError, TypeError, KeyError) as e:
            raise NNVitalsError(
                f"{source}: not a readable nnvitals result (table: {type(e).__name__})"
            ) from None
        return klass(table=table, summary=summary, arrays=arrays, meta=meta)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Result:
        from .formats import open_regular

        path = Path(path)
        if not path.exists():
            raise NNVitalsError(f"{path}: no such result file")
        with os.fdopen(open_regular(path), "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_RESULT_BYTES:
                raise NNVitalsError(
                    f"{path}: larger than {MAX_RESULT_BYTES >> 30} GiB; not an nnvitals result"
                )
            data = f.read()
        return cls.from_bytes(data, source=str(path))

    def __repr__(self) -> str:
        name = self.meta.get("subject", {}).get("label", "?")
        return f"<{type(self).__name__} {self.meta.get('analysis', self.kind)} of {name}: {len(self.table)} rows>"
