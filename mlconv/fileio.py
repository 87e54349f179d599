"""Low-level file I/O shared by every format: bounded reads, whole writes, kernel-side copies."""

from __future__ import annotations

import errno
import os

from .errors import FormatError

CHUNK = 8 << 20          # bytes per streamed chunk: bounds memory, big enough for throughput
KERNEL_CHUNK = 64 << 20  # bytes per copy_file_range call, so progress can be reported between

# errors after which a kernel copy method is simply not available for this pair of files
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF,
                   errno.ENOTSUP, errno.EPERM}


def read_exact(f, n: int, path, what: str) -> bytes:
    """Read exactly n bytes from f or raise FormatError naming what was truncated."""
    data = f.read(n)
    if len(data) != n:
        raise FormatError(f"truncated file: {what} needs {n} bytes, found {len(data)}", path)
    return data


class Sink:
    """An output file written in order: whole writes, padding, and kernel-side copies.

    Writers go through a Sink so that tensor payloads can move file-to-file with
    ``copy_file_range``/``sendfile`` (no user-space copy) while small parts are plain writes.
    """

    def __init__(self, fd: int, on_bytes=None, kernel_copy: bool = True):
        self.fd = fd
        self.pos = os.lseek(fd, 0, os.SEEK_CUR)
        self.on_bytes = on_bytes
        self._kernel_copy = kernel_copy and hasattr(os, "copy_file_range")
        self._sendfile = kernel_copy and hasattr(os, "sendfile")

    def _advance(self, n: int) -> None:
        self.pos += n
        if self.on_bytes is not None:
            self.on_bytes(n)

    def write(self, data) -> None:
        mv = memoryview(data).cast("B")
        while mv:
            n = os.write(self.fd, mv)
            self._advance(n)
            mv = mv[n:]

    def seek(self, pos: int) -> None:
        self.pos = os.lseek(self.fd, pos, os.SEEK_SET)

    def pad_to(self, alignment: int, fill: bytes = b"\0") -> None:
        gap = -self.pos % alignment
        if gap:
            self.write(fill * gap)

    def copy_from(self, path, offset: int, count: int) -> None:
        """Append ``count`` bytes of file ``path`` starting at ``offset``."""
        with open(path, "rb", buffering=0) as src:
            fd = src.fileno()
            done = 0
            while done < count:
                n = self._copy_some(fd, offset + done, min(count - done, KERNEL_CHUNK))
                if n == 0:
                    raise FormatError(
                        f"file shrank while copying: {count - done} bytes missing", path)
                done += n

    def _copy_some(self, src_fd: int, offset: int, count: int) -> int:
        if self._kernel_copy:
            try:
                n = os.copy_file_range(src_fd, self.fd, count, offset)
                self._advance(n)
                return n
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                self._kernel_copy = False
        if self._sendfile:
            try:
                n = os.sendfile(self.fd, src_fd, offset, count)
                self._advance(n)
                return n
            except OSError as e:
                if e.errno not in _NO_KERNEL_COPY:
                    raise
                self._sendfile = False
        data = os.pread(src_fd, min(count, CHUNK), offset)
        self.write(data)
        return len(data)


def prefetch(iterable, depth: int = 2):
    """Iterate ``iterable`` in a helper thread, ``depth`` items ahead.

    Lets decoding the next batch (h5py, numpy) overlap with encoding and writing this one
    (pyarrow releases the GIL while it compresses). Memory stays bounded by ``depth`` items;
    an exception in the helper is raised here, and stopping early stops the helper.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put((False, e))

    thread = threading.Thread(target=work, daemon=True, name="mlconv-prefetch")
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
