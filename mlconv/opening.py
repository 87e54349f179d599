"""Opening a file as a lazy Bundle: the one place the API's ``load``/``open`` and the
dataset API read files through."""

from __future__ import annotations

import os

from .formats import detect
from .formats.base import MAX_MEMORY, ReadOptions
from .model import Bundle


def load(path, format: str | None = None, *, allow_external: bool = False,
         trusted: bool = False, max_memory: int = MAX_MEMORY,
         allow_expand: bool = False) -> Bundle:
    """Read ``path`` lazily: headers now, tensor data (memory maps) when asked for.

    ``allow_external``: follow HDF5 external links into files of the same folder.
    ``trusted``: skip the child-process crash guard for HDF5 (saves ~0.2 s per file).
    ``max_memory``: bytes one decoded buffer (chunk, batch, zip member) may take.
    ``allow_expand``: read never-written HDF5 data as its fill values, whatever the size.
    """
    path = os.fspath(path)
    fmt = detect(path, format)
    fmt.check_available()
    return fmt.read(path, ReadOptions(allow_external=allow_external, trusted=trusted,
                                       max_memory=max_memory, allow_expand=allow_expand))
