"""Reading a file in a child process, for libraries that can crash on hostile input.

One runner for every use: the HDF5 crash guard (a child walks the file before this process
opens it) and ``validate`` of formats that declare ``Format.isolate`` (the whole check runs
in the child). The child gets resource limits, one thread per math library, no filter
plugins, and a timeout; a signal or a timeout becomes a one-line FormatError.

Two ways to start one: ``spawn`` (a fresh interpreter: pays every import again) and ``fork``
(a copy of this already-initialised process: milliseconds). ``fork`` is used only where it is
safe: a POSIX system and no other thread running (a lock held by another thread at the fork
would stay held in the child forever).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time

from ..errors import FormatError

AUDIT_ENV = "MLCONV_AUDIT_LOG"  # tests: where a process lists the files it opened
MEMORY = 6 << 30                # bytes of address space for the child
CPU = 300                       # seconds of CPU for the child (wall time: the caller's)


_audit_dump = None


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

    global _audit_dump
    sys.addaudithook(hook)
    atexit.register(dump)
    _audit_dump = dump  # a forked child leaves by os._exit (no atexit): it calls this


def limits(cpu: int = CPU, memory: int = MEMORY) -> None:  # runs in the child
    import resource

    for what, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
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


def _mapped_bytes() -> int:
    """This process's address space now: a forked child starts with all of it."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Forked:
    """A forked child, with the part of ``subprocess.Popen`` that ``finish`` uses."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def _reap(self, block: bool) -> bool:
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        return True

    def communicate(self, timeout: float | None = None):
        if self.returncode is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                fd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):
                fd = None
            try:
                pause = 0.001
                while not self._reap(False):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise subprocess.TimeoutExpired("fork", timeout)
                    if fd is not None:
                        select.select([fd], [], [], left)
                    else:  # no pidfd: poll, backing off to 50 ms
                        time.sleep(pause if left is None else min(pause, left))
                        pause = min(pause * 2, 0.05)
            finally:
                if fd is not None:
                    os.close(fd)
        return "", ""

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alone() -> bool:
    return threading.active_count() == 1


def fork(fn, args, cpu: int = CPU):
    """Run ``fn(*args)`` in a forked child; its return value is the exit code. None when
    forking is not safe here (no ``os.fork``, or other threads running): use ``spawn``."""
    if not hasattr(os, "fork") or not _alone():
        return None
    memory = _mapped_bytes() + MEMORY
    from ..fileio import flush_std

    flush_std()  # else the child would write what is buffered out again
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 1
    try:  # the child: never returns into the caller's code
        import faulthandler

        faulthandler.disable()  # a crash here is the verdict, not a report for the terminal
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        limits(cpu, memory)
        code = fn(*args)
    except BaseException:  # any exception is "an ordinary error" (exit 1)
        code = 1
    finally:
        if _audit_dump is not None:
            _audit_dump()
        os._exit(code if isinstance(code, int) else 1)


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
