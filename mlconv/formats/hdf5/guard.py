"""The crash guard for HDF5: libhdf5 has a steady stream of memory-safety bugs on hostile
files, so before a file is opened in this process a child process reads it first, under
resource limits and a timeout. A child killed by a signal or out of time makes the file an
error here; a child that raised an ordinary error lets this process open the file and raise
the same clean error itself.

The child is a fork of this process once h5py is imported (a few milliseconds), or a fresh
interpreter where forking is not safe (other threads running). It runs the real reader and
decodes the first chunk of every dataset, so the in-process read walks code paths that
already survived. What that covers, by the classes of libhdf5's CVEs:

- superblock and file-space decoding (H5F, H5FS), object headers and every header message:
  layout, fill value, filter pipeline, dataspace, datatype, links, attributes (H5O, H5T, H5S,
  H5A, e.g. CVE-2018-17434, CVE-2020-10810, CVE-2018-13870): every object is opened;
- group B-trees, local and fractal heaps, symbol tables (H5B, H5G, H5HL, H5HF): the whole
  tree is iterated; global heaps behind vlen strings (H5HG): every attribute is read;
- the chunk index and the filter pipeline (H5D, H5Z: deflate, shuffle, scale-offset, n-bit,
  e.g. CVE-2018-17233, CVE-2018-17436): the first chunk of each dataset only. Later chunks
  use the same code on other bytes; a file whose tenth chunk is hostile is read in-process.

A verdict is kept for the unchanged file (``_guard_cache``). Skip the guard for files you
trust: ``ReadOptions(trusted=True)``, ``mlconv.load(path, trusted=True)`` or
``MLCONV_HDF5_GUARD=0``.
"""

from __future__ import annotations

import os

from .read import _h5py

# isolation and _guard_cache are imported where used: every CLI start imports this module
# (the registry lists write options), and they bring subprocess and hashlib

ENV = "MLCONV_HDF5_GUARD"
LIBRARY = "libhdf5"
TIMEOUT = 60                # seconds of wall time for the child
CPU = 60                    # seconds of CPU for the child
_passed: set = set()        # files (path, size, mtime) already probed in this process

_CHILD = ("import sys\n"
          "from mlconv.formats.isolation import audit_from_env\n"
          "audit_from_env()\n"
          "from mlconv.formats.hdf5.guard import probe\n"
          "sys.exit(probe(sys.argv[1], sys.argv[2] == '1', int(sys.argv[3]),\n"
          "               sys.argv[4] == '1'))\n")


def enabled(options) -> bool:
    if getattr(options, "trusted", False):
        return False
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "no", "false")


class Pending:
    """A guard child under way; ``wait()`` raises if libhdf5 crashed or hung in it."""

    def __init__(self, path: str, key, proc, st=None, allow_external: bool = False):
        self.path, self.key, self.proc, self.st = path, key, proc, st
        self.allow_external = allow_external  # what a remembered verdict is keyed by

    def wait(self) -> None:
        if self.proc is None:
            return
        from .. import _guard_cache, isolation

        code, _ = isolation.finish(self.proc, self.path, TIMEOUT, LIBRARY)
        if code == 0:
            _passed.add(self.key)
            _guard_cache.remember(self.path, self.st, self.allow_external)


def start(path: str, options) -> Pending:
    """Start the guard child for ``path`` (nothing to do if disabled or already passed)."""
    if not enabled(options):
        return Pending(path, None, None)
    from .. import _guard_cache

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, options.allow_external,
           options.max_memory, options.allow_expand)
    if key in _passed or _guard_cache.passed(st, options.allow_external):
        return Pending(path, key, None)
    proc = _launch(path, options.allow_external, options.max_memory, options.allow_expand)
    return Pending(path, key, proc, st, options.allow_external)


def _launch(path: str, allow_external: bool, max_memory, allow_expand: bool):
    """The guard child: forked when that is safe, else a fresh interpreter."""
    from .. import isolation

    _h5py()  # the fork must carry libhdf5 already loaded, or the child pays the import
    proc = isolation.fork(_forked_probe, (path, allow_external, max_memory, allow_expand),
                          CPU)
    if proc is None:
        proc = isolation.spawn(_CHILD, [path, "1" if allow_external else "0",
                                        str(max_memory), "1" if allow_expand else "0"],
                               ENV, CPU)
    return proc


def _forked_probe(*args) -> int:
    from h5py import h5pl

    while h5pl.size():  # no filter plugins in the child (a fresh one gets HDF5_PLUGIN_PATH="")
        h5pl.remove(0)
    return probe(*args)


def check(path: str, options) -> None:
    """Raise FormatError if libhdf5 crashes or hangs on ``path`` in a child process."""
    start(path, options).wait()


def probe(path: str, allow_external: bool, max_memory: int | None = None,
          allow_expand: bool = False) -> int:
    """Child side: read everything but bulk data; 0 when fine, 1 on an ordinary error.
    The first chunk of each dataset is decoded under the same --max-memory cap."""
    from ...errors import MlconvError
    from ..base import MAX_MEMORY, ReadOptions
    from . import FORMAT

    options = ReadOptions(allow_external=allow_external, trusted=True,
                          max_memory=max_memory or MAX_MEMORY, allow_expand=allow_expand)
    try:
        with FORMAT.read(path, options) as b:
            for entry in b.values():
                try:
                    if entry.kind == "table":
                        next(iter(entry.batches(16)), None)
                    else:
                        next(iter(entry.chunks(1 << 16)), None)
                except MlconvError:
                    pass
    except MlconvError:  # this process reads the file itself and raises the same error
        return 1
    return 0
