"""mlconv: convert, inspect and validate ML file formats exactly and safely.

    b = mlconv.load("model.safetensors")          # Bundle, lazy
    with mlconv.open("data.npy") as b: ...        # same, closes its memory maps
    mlconv.save({"w": arr}, "out.npz", metadata={"k": "v"})
    mlconv.convert("in.safetensors", "out.npz", select=["enc/*"], overwrite=True)
    mlconv.inspect("file.npz")                    # dict, schemas/manifest.schema.json
    mlconv.formats()                              # the registry
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

from .formats import all_formats as _all_formats  # noqa: E402
from .formats import detect as _detect  # noqa: E402
from .convert import Report, convert, save  # noqa: E402
from .describe import inspect  # noqa: E402
from .dtypes import DType  # noqa: E402
from .errors import MlconvError  # noqa: E402
from .formats.base import ReadOptions as _ReadOptions  # noqa: E402
from .model import Bundle, Table, Tensor  # noqa: E402


def load(path, format: str | None = None, *, allow_external: bool = False) -> Bundle:
    """Read ``path`` lazily: headers now, tensor data (memory maps) when asked for."""
    path = _os.fspath(path)
    fmt = _detect(path, format)
    fmt.check_available()
    return fmt.read(path, _ReadOptions(allow_external=allow_external))


def open(path, format: str | None = None, *, allow_external: bool = False) -> Bundle:  # noqa: A001
    """Like ``load``; use it in a ``with`` block to release the file when done."""
    return load(path, format, allow_external=allow_external)


def formats() -> list[dict]:
    """The registry: each format's id, extensions and capabilities."""
    return [{"id": f.id, "description": f.description, "extensions": list(f.extensions),
             "read": f.can_read, "write": f.can_write, "capabilities": f.caps.as_dict()}
            for f in _all_formats()]


__all__ = ["load", "open", "save", "convert", "inspect", "formats", "Bundle", "Tensor",
           "Table", "DType", "Report", "MlconvError", "__version__"]
