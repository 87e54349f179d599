"""Verdicts of the HDF5 crash guard kept across processes, so N loader workers opening
the same file pay the guard once, not N times.

A verdict is a small file in the user's cache folder (``MLCONV_CACHE_DIR``, else
``$XDG_CACHE_HOME/mlconv``, else ``~/.cache/mlconv``) named by a hash of the file's identity:
device, inode, size, mtime and ctime (ctime moves on every write and cannot be set back),
plus the mlconv and libhdf5 versions the guard ran with. A changed file has another key and
is guarded again. Only passes are kept; files written atomically (temp, rename). Any error
with the folder means "no verdict", never a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

from ..atomic import temp_path

ENV = "MLCONV_CACHE_DIR"


def folder() -> str:
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mlconv")


def _identity(st: os.stat_result, allow_external: bool) -> str:
    return (f"hdf5-guard-v1 dev={st.st_dev} ino={st.st_ino} size={st.st_size} "
            f"mtime={st.st_mtime_ns} ctime={st.st_ctime_ns} external={int(allow_external)}")


def _key(st: os.stat_result, allow_external: bool) -> str:
    import h5py

    from ..version import __version__

    return (f"{_identity(st, allow_external)} mlconv={__version__} "
            f"hdf5={h5py.version.hdf5_version}")


def _file(st: os.stat_result, allow_external: bool) -> str:
    name = hashlib.sha256(_identity(st, allow_external).encode()).hexdigest()
    return os.path.join(folder(), "hdf5-guard", name)


def passed(st: os.stat_result, allow_external: bool) -> bool:
    """True if the guard passed this very file (same identity) in some earlier process."""
    try:  # no verdict, no h5py import here: the guard child starts at once
        with open(_file(st, allow_external), encoding="utf-8") as f:
            text = f.read(1024)
    except (OSError, UnicodeDecodeError):
        return False
    return text == _key(st, allow_external)


def remember(path: str, st: os.stat_result, allow_external: bool) -> None:
    """Keep a pass for ``path`` if it is still the file the guard was started on."""
    try:
        now = os.stat(path)
        key = _key(st, allow_external)
        if _key(now, allow_external) != key:
            return  # changed while the guard read it: no verdict for either version
        dest = _file(st, allow_external)
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        tmp = temp_path(os.path.dirname(dest), os.path.basename(dest))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with open(fd, "w", encoding="utf-8") as f:
                f.write(key)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass
