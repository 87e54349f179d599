"""Atomic output: write to a temp file beside DST, rename into place only on success.

Temp files are named ``.<dst>.<host>.<pid>.<random>.mlconv-tmp``: one left by a killed run
is recognisable, and the next run into the folder removes it once its writer (same host,
that pid) is gone, never a live writer's.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import sys

from .errors import MlconvError, OptionError, OutputExistsError

_UMASK = None
SUFFIX = ".mlconv-tmp"
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_TEMP = re.compile(r"^\..+\.(?P<host>[^.]+)\.(?P<pid>[0-9]+)\.[0-9a-f]+\.mlconv-tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", os.uname().nodename)[:64] or "host"


def temp_path(folder: str, base: str) -> str:
    """A fresh temp name for ``base`` in ``folder``, tagged with this host and process."""
    return os.path.join(folder, f".{base}.{_host()}.{os.getpid()}.{os.urandom(6).hex()}"
                                f"{SUFFIX}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or nonsense): leave it
    return True


def clean_stale(folder: str) -> list[str]:
    """Remove the temp files of dead mlconv writers in ``folder``; the names removed.

    Only names of our pattern, from this host, whose pid no longer runs: another live
    process's temp file is never touched (a reused pid just keeps the file a while).
    """
    removed = []
    host = _host()
    try:
        names = [e.name for e in os.scandir(folder) if e.name.endswith(SUFFIX)]
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if not m or m["host"] != host:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            st = os.lstat(os.path.join(folder, name))
            if not (st.st_mode & 0o170000 == 0o100000 and st.st_uid == os.getuid()):
                continue  # only our own regular files
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


@contextlib.contextmanager
def atomic_output(dst, overwrite: bool = False):
    """Yield an unbuffered binary file; on success it becomes ``dst``, on failure it vanishes.

    Without ``overwrite`` an existing ``dst`` is refused, also if it appears meanwhile.
    A writer with companion files (ONNX external data) lists them in ``f.companions`` (removed
    if the output is not published) and ``f.after_publish`` (callables run once it is).
    """
    dst = os.path.abspath(os.fspath(dst))
    if os.path.isdir(dst):
        raise OptionError("output is a directory", dst)
    if os.path.lexists(dst) and not overwrite:
        raise OutputExistsError("output exists; use --force to replace it", dst)
    folder = os.path.dirname(dst)
    if not os.path.isdir(folder):
        raise MlconvError("output folder does not exist", dst)
    clean_stale(folder)
    tmp = temp_path(folder, os.path.basename(dst))
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise MlconvError(f"cannot create output: {e.strerror}", dst) from None
    companions: list[str] = []
    after: list = []
    try:
        # mkstemp's own descriptor: reopening with O_TRUNC would make ext4 flush the whole
        # file on close (its auto_da_alloc heuristic), which costs as much as the copy
        with _WholeWrites(fd, "r+b") as f:
            f.name = tmp  # writers that need a path (h5py, pyarrow) find it here
            f.companions, f.after_publish = companions, after
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            replace(tmp, dst)
        else:
            _link_new(tmp, dst)
    except BaseException as e:
        for path in [tmp, *companions]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if isinstance(e, OSError) and not isinstance(e, MlconvError) and e.errno in _FULL:
            # a full disk or quota: say which output it hit
            raise MlconvError(f"cannot write output: {e.strerror or e}", dst) from None
        raise
    for fn in after:
        fn()


class _WholeWrites(io.FileIO):
    """An unbuffered file whose ``write`` writes everything: a raw write may be short (a
    nearly full disk), and a writer that trusts its count would publish a cut file."""

    def write(self, data) -> int:
        mv = memoryview(data).cast("B")
        total = len(mv)
        while mv:
            n = self._raw_write(mv)
            if not n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            mv = mv[n:]
        return total

    _raw_write = io.FileIO.write


def library_path(f) -> str:
    """The temp path for a library that creates the file itself (h5py, pyarrow).

    The placeholder is removed first, so the library creates a new file instead of
    truncating one (see above); the name stays ours, it is random and in DST's folder.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f.name)
    return f.name


_RENAME_EXCHANGE = 2  # linux/fs.h
_exchange = None  # renameat2 from libc, looked up when first needed (False: not available)


def replace(tmp: str, dst: str) -> None:
    """``os.replace(tmp, dst)``, by swapping the two names where the kernel can (renameat2
    with RENAME_EXCHANGE), then removing the old file from under the temp name.

    ext4 flushes a file renamed over another one (its auto_da_alloc heuristic): 0.6 s per
    GiB here, as long as the copy. A swap is O(1) and leaves the new file as a new file
    would be (no extra flush). DST exists throughout either way. If the process dies between
    the two steps, the old file stays under a temp name, which the next run sweeps.
    """
    import stat

    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode) and _swap(tmp, dst):
        os.unlink(tmp)
        return
    os.replace(tmp, dst)


def _swap(a: str, b: str) -> bool:
    global _exchange
    if _exchange is None:
        _exchange = False
        if sys.platform.startswith("linux"):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if hasattr(libc, "renameat2"):
                _exchange = libc.renameat2
    if not _exchange:
        return False
    at_cwd = -100
    return _exchange(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _link_new(tmp: str, dst: str) -> None:
    """Rename without replacing: fails if dst appeared since we checked."""
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise OutputExistsError("output exists; use --force to replace it", dst) from None
    except OSError:
        os.replace(tmp, dst)  # no hard links here: fall back to a plain rename
        return
    os.unlink(tmp)
