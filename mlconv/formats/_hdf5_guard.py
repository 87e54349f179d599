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
import signal
import subprocess
import sys

from ..errors import FormatError
from . import _guard_cache

ENV = "MLCONV_HDF5_GUARD"
AUDIT_ENV = "MLCONV_AUDIT_LOG"  # tests: where a process lists the files it opened
TIMEOUT = 60                # seconds of wall time for the child
MEMORY = 6 << 30            # bytes of address space for the child
CPU = 60                    # seconds of CPU for the child
_passed: set = set()        # files (path, size, mtime) already probed in this process

_CHILD = ("import sys\n"
          "from mlconv.formats._hdf5_guard import audit_from_env, probe\n"
          "audit_from_env()\n"
          "sys.exit(probe(sys.argv[1], sys.argv[2] == '1', int(sys.argv[3]),\n"
          "               sys.argv[4] == '1'))\n")


def audit_from_env() -> None:
    """For tests: with $MLCONV_AUDIT_LOG set, append every path this process opens through
    Python (``sys.addaudithook``, event "open") to that file when the process exits."""
    log = os.environ.get(AUDIT_ENV)
    if not log:
        return
    import atexit

    seen: set[str] = set()

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)):
            seen.add(os.path.abspath(os.fsdecode(args[0])))

    def dump():
        text = "".join(p.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                       .replace("\n", "\\n") + "\n" for p in sorted(seen))
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    sys.addaudithook(hook)
    atexit.register(dump)


def _limits() -> None:  # runs in the child before exec
    import resource

    for what, value in ((resource.RLIMIT_AS, MEMORY), (resource.RLIMIT_CPU, CPU),
                        (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass


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
        try:
            self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise FormatError(f"libhdf5 did not finish reading the file's structure within "
                              f"{TIMEOUT} s (a hostile or corrupt file?)", self.path) from None
        code = self.proc.returncode
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            raise FormatError(f"libhdf5 crashed ({name}) reading the file in mlconv's guard "
                              "process: the file is corrupt or hostile", self.path)
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
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", HDF5_PLUGIN_PATH="")
    env[ENV] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, path, "1" if options.allow_external else "0",
         str(options.max_memory), "1" if options.allow_expand else "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        preexec_fn=_limits, env=env)
    return Pending(path, key, proc, st, options.allow_external)


def check(path: str, options) -> None:
    """Raise FormatError if libhdf5 crashes or hangs on ``path`` in a child process."""
    start(path, options).wait()


def probe(path: str, allow_external: bool, max_memory: int | None = None,
          allow_expand: bool = False) -> int:
    """Child side: read everything but bulk data; 0 when fine, 1 on an ordinary error.
    The first chunk of each dataset is decoded under the same --max-memory cap."""
    from ..errors import MlconvError
    from .base import MAX_MEMORY, ReadOptions
    from .hdf5 import FORMAT

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
