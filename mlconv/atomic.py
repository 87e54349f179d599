"""Atomic output: write to a temp file beside DST, rename into place only on success."""

from __future__ import annotations

import contextlib
import os
import tempfile

from .errors import MlconvError, OptionError, OutputExistsError

_UMASK = None


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
    """
    dst = os.path.abspath(os.fspath(dst))
    if os.path.isdir(dst):
        raise OptionError("output is a directory", dst)
    if os.path.lexists(dst) and not overwrite:
        raise OutputExistsError("output exists; use --force to replace it", dst)
    folder = os.path.dirname(dst)
    if not os.path.isdir(folder):
        raise MlconvError("output folder does not exist", dst)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(dst)}.",
                                   suffix=".mlconv-tmp")
    except OSError as e:
        raise MlconvError(f"cannot create output: {e.strerror}", dst) from None
    try:
        # mkstemp's own descriptor: reopening with O_TRUNC would make ext4 flush the whole
        # file on close (its auto_da_alloc heuristic), which costs as much as the copy
        with open(fd, "r+b", buffering=0) as f:
            f.name = tmp  # writers that need a path (h5py, pyarrow) find it here
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, dst)
        else:
            _link_new(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def library_path(f) -> str:
    """The temp path for a library that creates the file itself (h5py, pyarrow).

    The placeholder is removed first, so the library creates a new file instead of
    truncating one (see above); the name stays ours, it is random and in DST's folder.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f.name)
    return f.name


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
