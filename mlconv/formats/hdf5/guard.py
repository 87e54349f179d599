"""The crash guard for HDF5: libhdf5 has a steady stream of memory-safety bugs on hostile
files, so before a file is opened in this process a child process reads it first, under
resource limits and a timeout. A child killed by a signal or out of time makes the file an
error here; a child that raised an ordinary error lets this process open the file and raise
the same clean error itself.

The child runs the real reader (the whole object tree, every attribute, the pandas
decoding) and decodes the first chunk of every dataset, so the in-process read walks code
paths that already survived. Skip it for files you trust: ``ReadOptions(trusted=True)``,
``mlconv.load(path, trusted=True)`` or ``MLCONV_HDF5_GUARD=0`` (about 0.3 s per file).
"""

from __future__ import annotations

import os
import sys

from .. import _guard_cache, isolation

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
        code, _ = isolation.finish(self.proc, self.path, TIMEOUT, LIBRARY)
        if code == 0:
            _passed.add(self.key)
            _guard_cache.remember(self.path, self.st, self.allow_external)


def start(path: str, options) -> Pending:
    """Start the guard child for ``path`` (nothing to do if disabled or already passed)."""
    if not enabled(options):
        return Pending(path, None, None)
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, options.allow_external,
           options.max_memory, options.allow_expand)
    if key in _passed or _guard_cache.passed(st, options.allow_external):
        return Pending(path, key, None)
    proc = isolation.spawn(_CHILD, [path, "1" if options.allow_external else "0",
                                    str(options.max_memory),
                                    "1" if options.allow_expand else "0"], ENV, CPU)
    return Pending(path, key, proc, st, options.allow_external)


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
    except MlconvError as e:
        print(e, file=sys.stderr)
        return 1
    return 0
