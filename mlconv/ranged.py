"""Local copies that fill themselves: the hook between remote storage and the readers.

A remote object read lazily is staged as a sparse local file holding its headers only;
``storage`` registers a ``fill(ranges)`` for that path, which fetches the missing part
of a byte range into the copy (ranged requests, several at once). Readers that know which
bytes they are about to read (Parquet column chunks, Arrow IPC record batches, npz members)
call ``fill`` first, or hand a library ``source(path)``: a file object that fills each
range before reading it. For local files both are no-ops. Readers that do this ``claim``
the path, so storage does not fetch the whole object for them.
"""

from __future__ import annotations

import io
import os

_FILLERS: dict[str, object] = {}   # local copy -> fill([(start, end), ...])
_CLAIMED: set[str] = set()          # copies whose reader fetches its own ranges
SMALL = 64 << 10  # a read smaller than this fills the whole aligned block around it


def register(path: str, fill) -> None:
    _FILLERS[path] = fill


def unregister(path: str) -> None:
    _FILLERS.pop(path, None)
    _CLAIMED.discard(path)


def claim(path: str) -> bool:
    """Called by a reader that fetches its own ranges; True when ``path`` is such a copy."""
    if path in _FILLERS:
        _CLAIMED.add(path)
        return True
    return False


def claimed(path: str) -> bool:
    return path in _CLAIMED


def fill(path: str, start: int, end: int) -> None:
    """Make bytes ``start:end`` of ``path`` present (a no-op for local files)."""
    fill_many(path, [(start, end)])


def fill_many(path: str, ranges) -> None:
    """``fill`` for several ranges at once (what is missing fetched concurrently)."""
    filler = _FILLERS.get(path)
    ranges = [r for r in ranges if r[1] > r[0]]
    if filler is not None and ranges:
        filler(ranges)


def source(path: str):
    """What to hand a library that reads ``path`` at random: the path itself, or for a
    self-filling copy a file object that fills each range before reading it."""
    return FillingFile(path) if path in _FILLERS else path


def open_read(path: str):
    """A binary file object on ``path``; on a self-filling copy it fills what it reads."""
    return FillingFile(path) if path in _FILLERS else open(path, "rb")  # noqa: SIM115


class FillingFile(io.RawIOBase):
    """A read-only file over a self-filling copy: each read fetches what it covers first
    (small reads their whole SMALL-aligned block, so neighbouring headers come at once)."""

    def __init__(self, path: str):
        super().__init__()
        self.name = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), max(0, self.size - self.pos))
        if n <= 0:
            return 0
        start, end = self.pos, self.pos + n
        if n < SMALL:
            start, end = start - start % SMALL, min(self.size, end - end % SMALL + SMALL)
        fill(self.name, start, end)
        data = os.pread(self.fd, n, self.pos)
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()
