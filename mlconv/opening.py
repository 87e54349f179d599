"""Opening a file as a lazy Bundle: the one place the API's ``load``/``open`` and the
dataset API read files through (local paths, fsspec URLs and file objects alike)."""

from __future__ import annotations

from .errors import MlconvError
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
    from . import storage

    # a URL or file object: a local copy for the bundle, tensors fetched when first used
    local, cleanup, fetcher = storage.stage_lazy(path)
    try:
        fmt = detect(local, format)
        fmt.check_available()
        bundle = fmt.read(local, ReadOptions(allow_external=allow_external, trusted=trusted,
                                             max_memory=max_memory, allow_expand=allow_expand))
        storage.lazy_bundle(bundle, local, fetcher)
    except MlconvError as e:
        storage.rename(e, {local: storage.shown(path)})
        cleanup()
        raise
    except BaseException:
        cleanup()
        raise
    if local != storage.shown(path):
        bundle.path = storage.shown(path)  # for messages; the readers keep the copy's path
        storage.hold_copy(bundle, cleanup)
    return bundle
