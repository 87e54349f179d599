"""HDF5 through h5py: groups, datasets, attributes, compound tables and pandas files.

``read`` walks the file (behind the crash ``guard``), ``write`` places datasets, ``pandas``
decodes PyTables/pandas layouts (with ``safepickle`` for their pickled metadata).
"""

from __future__ import annotations

import os

from ...dtypes import DType
from ...errors import UnsafeInputError
from ...model import Bundle
from ..base import Capabilities, Format
from . import guard
from . import write as _write
from .read import H5_ERRORS, MAGIC, _h5py, _Reader


class Hdf5(Format):
    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(MAGIC)

    def read(self, path: str, options) -> Bundle:
        pending = guard.start(path, options)
        _h5py()  # (a spawned guard child reads the file meanwhile)
        pending.wait()
        return _Reader(path, options).read()

    isolate_env = guard.ENV

    def travel(self, bundle, name, entry, options, general):
        comp = options.compression
        if comp not in (None, "none") and general[0] == "zero-copy":
            return "streamed", f"{comp} chunks"
        return general

    def isolate(self) -> str | None:
        return guard.LIBRARY if guard.enabled(None) else None

    def check(self, path: str, bundle: Bundle, deep: bool):
        """Every chunk of every chunked dataset must lie inside the file."""
        problems, warnings = super().check(path, bundle, deep)
        size = os.path.getsize(path)
        for name, entry in bundle.items():
            unavailable = getattr(getattr(entry, "source", None), "unavailable", None)
            if unavailable and unavailable[0] is UnsafeInputError and not deep:
                # (deep reading reports it itself) the file may be fine; its data is elsewhere
                warnings.append((name, f"not checked: {unavailable[1]}"))
            ds = getattr(getattr(entry, "source", None), "ds", None)
            if ds is None or ds.chunks is None:
                continue
            try:
                for i in range(min(ds.id.get_num_chunks(), 1_000_000)):
                    info = ds.id.get_chunk_info(i)
                    if info.byte_offset is None or info.byte_offset + info.size > size:
                        problems.append((name, f"chunk {i} ({info.size} bytes at "
                                               f"{info.byte_offset}) lies outside the "
                                               f"{size}-byte file"))
                        break
            except H5_ERRORS as e:
                problems.append((name, f"chunk index unreadable: {e}"))
        return problems, warnings

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        _write.write(bundle, f, path, options)


FORMAT = Hdf5(
    representations=(("datasets", "tensors"), ("compound", "table")),
    id="hdf5",
    description="HDF5 (h5py): groups, datasets, attributes, compound tables, pandas files",
    extensions=(".h5", ".hdf5", ".he5", ".hdf"),
    caps=Capabilities(tensors=True, tables=True, metadata=True, attrs=True, zero_copy=True,
                      raw_payload=True,
                      dtypes=frozenset(d for d in DType if not d.is_subbyte),
                      compressions=("none", "gzip", "lzf")),
    requires=("h5py",),
)
