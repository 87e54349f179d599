"""The format registry: which formats exist, how files are detected, capability lookup.

Adding a format is one module in this package that defines ``FORMAT`` plus one line in
``IDS``. Format modules import their heavy libraries only inside read/write.
"""

from __future__ import annotations

import importlib
import os

from ..errors import FormatError, OptionError, SourceNotFoundError
from .base import Capabilities, Format, ReadOptions, WriteOptions

IDS = (
    "npy",
    "npz",
    "safetensors",
    "hdf5",
    "parquet",
    "arrow",
    "onnx",
    "gguf",
)

_SNIFF_BYTES = 64

_cache: dict[str, Format] = {}


def get(format_id: str) -> Format:
    """The Format registered under ``format_id`` (lowercase id, e.g. 'safetensors')."""
    fid = (format_id or "").lower().lstrip(".")
    if fid not in _cache:
        if fid not in IDS:
            raise OptionError(f"unknown format {format_id!r}; known: {', '.join(IDS)}")
        _cache[fid] = importlib.import_module(f"{__name__}.{fid}").FORMAT
    return _cache[fid]


def all_formats() -> list[Format]:
    return [get(m) for m in IDS]


def by_extension(path: str) -> Format | None:
    name = os.path.basename(os.fspath(path)).lower()
    best = None
    for fmt in all_formats():
        for ext in fmt.extensions:
            if name.endswith(ext) and (best is None or len(ext) > best[0]):
                best = (len(ext), fmt)
    return best[1] if best else None


def _regular_file(path: str) -> None:
    """Refuse what is not a regular file: a FIFO would block every reader, a device never
    ends. Opened non-blocking, so checking a FIFO does not wait for a writer."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
        raise SourceNotFoundError(f"not a regular file ({kind}): mlconv reads only files",
                                  path)


def detect(path, from_format: str | None = None) -> Format:
    """The format of an input file: ``from_format`` if given, else magic bytes, else extension."""
    path = os.fspath(path)
    try:
        _regular_file(path)
        if from_format:
            return get(from_format)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except SourceNotFoundError:
        raise
    except FileNotFoundError:
        raise SourceNotFoundError("no such file", path) from None
    except IsADirectoryError:
        raise SourceNotFoundError("is a directory, not a file", path) from None
    except OSError as e:
        raise SourceNotFoundError(f"cannot read: {e.strerror}", path) from None
    if size == 0:
        raise FormatError("empty file (0 bytes)", path)
    for fmt in all_formats():
        if fmt.can_read and fmt.sniff(head, size):
            return fmt
    fmt = by_extension(path)
    if fmt is not None:
        return fmt
    raise FormatError("cannot tell the file's format from its bytes or name; use --from", path)


def for_output(path, to_format: str | None = None) -> Format:
    """The format to write: ``to_format`` if given, else DST's extension."""
    if to_format:
        fmt = get(to_format)
    else:
        fmt = by_extension(os.fspath(path))
        if fmt is None:
            raise OptionError(
                "cannot tell the output format from the file name; use --to FORMAT",
                os.fspath(path))
    if not fmt.can_write:
        raise OptionError(f"mlconv cannot write {fmt.id} files", os.fspath(path))
    return fmt


__all__ = [
    "IDS",
    "Capabilities",
    "Format",
    "ReadOptions",
    "WriteOptions",
    "all_formats",
    "by_extension",
    "detect",
    "for_output",
    "get",
]
