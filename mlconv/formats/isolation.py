"""Reading a file in a child process, for libraries that can crash on hostile input.

One runner for every use: the HDF5 crash guard (a child walks the file before this process
opens it) and ``validate`` of formats that declare ``Format.isolate`` (the whole check runs
in the child). The child gets resource limits, one thread per math library, no filter
plugins, and a timeout; a signal or a timeout becomes a one-line FormatError.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ..errors import FormatError

AUDIT_ENV = "MLCONV_AUDIT_LOG"  # tests: where a process lists the files it opened
MEMORY = 6 << 30                # bytes of address space for the child
CPU = 300                       # seconds of CPU for the child (wall time: the caller's)


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


def limits(cpu: int = CPU) -> None:  # runs in the child before exec
    import resource

    for what, value in ((resource.RLIMIT_AS, MEMORY), (resource.RLIMIT_CPU, cpu),
                        (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass


def spawn(code: str, args, off_env: str, cpu: int = CPU, capture: bool = False):
    """Start ``python -c code args`` as a child; ``off_env`` (set to 0 there) keeps the
    child from isolating itself again."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", HDF5_PLUGIN_PATH="")
    env[off_env] = "0"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=lambda: limits(cpu), env=env, text=capture)


def finish(proc, path: str, timeout: float, library: str) -> tuple[int, str]:
    """Wait for the child: (exit code, its stdout), or FormatError when ``library`` crashed
    (a signal) or hung (past ``timeout`` seconds) on the file."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise FormatError(f"{library} did not finish reading the file within {timeout} s "
                          "(a hostile or corrupt file?)", path) from None
    code = proc.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise FormatError(f"{library} crashed ({name}) reading the file in mlconv's guard "
                          "process: the file is corrupt or hostile", path)
    return code, out or ""
