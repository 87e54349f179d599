"""mlconv: convert, inspect and validate ML file formats exactly and safely.

    b = mlconv.load("model.safetensors")          # Bundle, lazy
    with mlconv.open("data.npy") as b: ...        # same, closes its memory maps
    mlconv.save({"w": arr}, "out.npz", metadata={"k": "v"})
    mlconv.convert("in.safetensors", "out.npz", select=["enc/*"], overwrite=True)
    mlconv.convert_many("in/*.h5", "out/", to="parquet", client="local:2")  # Dask optional
    mlconv.inspect("file.npz")                    # dict, schemas/manifest.schema.json
    mlconv.validate("file.npz", schema="e.json")  # Report: .ok, .problems
    mlconv.plan("in.h5", "out.safetensors")       # how convert would run, step by step
    mlconv.formats()                              # the registry
    ds = mlconv.dataset("train-*.parquet")        # loaders: ds[i], ds.batches(256), ds.shard()
"""

from __future__ import annotations

from .convert import Plan, Report, convert, convert_many, plan, save
from .dataset import Dataset, dataset
from .describe import inspect
from .dtypes import DType
from .errors import MlconvError
from .formats import all_formats as _all_formats
from .formats.base import MAX_MEMORY as _MAX_MEMORY
from .model import Bundle, Table, Tensor
from .opening import load
from .validate import validate
from .version import __version__


def open(path, format: str | None = None, *, allow_external: bool = False,  # noqa: A001
         trusted: bool = False, max_memory: int = _MAX_MEMORY,
         allow_expand: bool = False) -> Bundle:
    """Like ``load``; use it in a ``with`` block to release the file when done."""
    return load(path, format, allow_external=allow_external, trusted=trusted,
                max_memory=max_memory, allow_expand=allow_expand)


def formats() -> list[dict]:
    """The registry: each format's id, extensions and capabilities."""
    return [{"id": f.id, "description": f.description, "extensions": list(f.extensions),
             "read": f.can_read, "write": f.can_write, "capabilities": f.caps.as_dict()}
            for f in _all_formats()]


__all__ = ["load", "open", "save", "convert", "convert_many", "plan", "inspect", "validate",
           "formats", "dataset", "Dataset",
           "Bundle", "Tensor", "Table", "DType", "Plan", "Report", "MlconvError",
           "__version__"]
