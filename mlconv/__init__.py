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

import weakref as _weakref

__version__ = "0.1.0"

from .convert import Plan, Report, convert, convert_many, plan, save
from .dataset import Dataset, dataset
from .describe import inspect
from .dtypes import DType
from .errors import MlconvError
from .formats import all_formats as _all_formats
from .formats import detect as _detect
from .formats.base import MAX_MEMORY as _MAX_MEMORY
from .formats.base import ReadOptions as _ReadOptions
from .model import Bundle, Table, Tensor
from .validate import validate


def load(path, format: str | None = None, *, allow_external: bool = False,
         trusted: bool = False, max_memory: int = _MAX_MEMORY,
         allow_expand: bool = False) -> Bundle:
    """Read ``path`` lazily: headers now, tensor data (memory maps) when asked for.

    ``allow_external``: follow HDF5 external links into files of the same folder.
    ``trusted``: skip the child-process crash guard for HDF5 (saves ~0.2 s per file).
    ``max_memory``: bytes one decoded buffer (chunk, batch, zip member) may take.
    ``allow_expand``: read never-written HDF5 data as its fill values, whatever the size.
    """
    from . import storage

    # a URL or file object: a local copy for the bundle, tensors fetched when first used
    local, cleanup, fetcher = storage.stage_lazy(path)
    try:
        fmt = _detect(local, format)
        fmt.check_available()
        bundle = fmt.read(local, _ReadOptions(allow_external=allow_external, trusted=trusted,
                                              max_memory=max_memory, allow_expand=allow_expand))
        storage.lazy_bundle(bundle, fmt.id, local, fetcher)
    except MlconvError as e:
        storage.rename(e, {local: storage.shown(path)})
        cleanup()
        raise
    except BaseException:
        cleanup()
        raise
    if local != storage.shown(path):
        bundle.path = storage.shown(path)  # for messages; the readers keep the copy's path
        bundle.on_close(cleanup)
        _weakref.finalize(bundle, cleanup)
    return bundle


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
