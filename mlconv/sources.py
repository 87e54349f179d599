"""Where a tensor's bytes come from, kept lazy until asked for.

Every source offers the same two views of one tensor:

- ``array()``: a numpy array (a memory map over the file where the bytes lie there as is);
- ``chunks()``: the *canonical payload* in bounded pieces: C order, little-endian, sub-byte
  types packed two to a byte (low nibble first), strings as numpy's fixed-width UCS4/bytes.

``span`` is set when the canonical payload lies verbatim in a file, so a writer can copy it
file-to-file in the kernel. A chunk is valid only until the next one is produced.
"""

from __future__ import annotations

import bisect
import mmap
import os

from .dtypes import DType
from .errors import FormatError, UnsupportedError
from .fileio import CHUNK


def _np():
    import numpy

    return numpy


def check_memory(nbytes: int | None, limit: int | None, path=None, entry=None) -> None:
    """Refuse to decode ``nbytes`` into one buffer when that is over ``limit``
    (``--max-memory``): headers can claim anything, memory is bounded by the cap."""
    if limit is not None and nbytes is not None and nbytes > limit:
        raise UnsupportedError(f"reading this needs one {nbytes}-byte buffer, more than "
                               f"--max-memory ({limit} bytes) allows", path, entry)


def element_dtype(dtype: DType, itemsize: int, byteorder: str = "<"):
    """numpy dtype of one stored element (byte order applied where it means anything)."""
    np = _np()
    if dtype is DType.string:
        return np.dtype(f"{byteorder}U{itemsize // 4}")
    if dtype is DType.bytes:
        return np.dtype(f"S{itemsize}")
    nd = dtype.numpy()
    return nd.newbyteorder(byteorder) if nd.itemsize > 1 else nd


def element_itemsize(dtype: DType, itemsize: int | None = None) -> int | None:
    """Bytes per element; None for variable-width text whose width is known only once read."""
    bits = dtype.bits
    if bits is None:
        return itemsize or None
    return max(1, bits // 8)


def _need_nibbles(dtype: DType, entry=None):
    if dtype.bits != 4:
        raise UnsupportedError(
            f"{dtype.value} is packed {dtype.bits} bits per value; mlconv copies it but "
            "cannot unpack it to numpy", entry=entry)


def unpack4(buf, dtype: DType, count: int):
    """numpy array of ``count`` 4-bit values packed low nibble first."""
    np = _np()
    raw = np.frombuffer(buf, dtype=np.uint8)
    out = np.empty(raw.size * 2, dtype=np.uint8)
    out[0::2] = raw & 0x0F
    out[1::2] = raw >> 4
    return out[:count].view(dtype.numpy())


def pack4(values):
    """Pack 4-bit values (one per byte, as ml_dtypes holds them) two per byte, low nibble first."""
    np = _np()
    raw = np.ascontiguousarray(values).view(np.uint8) & 0x0F
    if raw.size % 2:
        raw = np.concatenate([raw, np.zeros(1, np.uint8)])
    return (raw[0::2] | (raw[1::2] << 4)).astype(np.uint8)


def array_chunks(arr, dtype: DType, size: int = CHUNK, casting: str = "equiv", after=None):
    """Canonical payload of ``arr`` as ``dtype``, in pieces of about ``size`` bytes.

    Uses a buffered C-order nditer, so Fortran order, big-endian data and casts all stream
    through a bounded buffer. ``after`` is called after each piece (to drop mapped pages).
    """
    np = _np()
    if arr.size == 0:
        return
    if dtype.is_subbyte:
        _need_nibbles(dtype)
        flat = arr.reshape(-1) if arr.flags.c_contiguous else arr.ravel(order="C")
        step = max(2, size * 2)  # values per piece: two per packed byte
        for i in range(0, flat.size, step):
            yield memoryview(pack4(flat[i:i + step].astype(dtype.numpy(), casting="unsafe")))
        return
    itemsize = arr.dtype.itemsize if dtype.bits is None else dtype.bits // 8
    target = element_dtype(dtype, itemsize, "<")
    if arr.flags.c_contiguous and arr.dtype == target:
        raw = arr.reshape(-1).view(np.uint8)
        step = max(target.itemsize, size // target.itemsize * target.itemsize)
        for i in range(0, raw.size, step):
            yield memoryview(raw[i:i + step])
            if after is not None:
                after()
        return
    step = max(1, size // target.itemsize)
    it = np.nditer(arr, flags=["external_loop", "buffered", "zerosize_ok"],
                   op_dtypes=[target], casting=casting, order="C", buffersize=step)
    for piece in it:
        yield memoryview(np.ascontiguousarray(piece).view(np.uint8))
        if after is not None:
            after()


class Source:
    """Lazy data of one tensor: dtype, shape and the two views described in the module doc."""

    # slots down to FileSource: a file can hold a million tensors, each one of these
    __slots__ = ("dtype", "shape", "itemsize")
    span: tuple[str, int, int] | None = None
    limit: int | None = None  # --max-memory: bytes one decoded buffer may take
    held = False  # the whole entry is in memory (or built there) before a write reads it
    how = ""      # what reading does to the bytes on the way, for the plan ("inflate ...")

    def __init__(self, dtype: DType, shape: tuple[int, ...], itemsize: int | None = None):
        self.dtype = dtype
        # a tuple of ints is kept, not copied: readers share one tuple among equal shapes
        self.shape = shape if type(shape) is tuple and all(type(d) is int for d in shape) \
            else tuple(map(int, shape))
        self.itemsize = element_itemsize(dtype, itemsize)

    @property
    def nbytes(self) -> int:
        return self.dtype.nbytes(self.shape, self.itemsize)

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def array(self):
        raise NotImplementedError

    def chunks(self, size: int = CHUNK):
        yield from array_chunks(self.array(), self.dtype, size)

    def row_reader(self):
        """A fast ``i -> row i`` (a new array, or a numpy scalar for 1-D), or None."""
        return None

    def rows(self, index, cache=None):
        """A new numpy array of rows ``index`` (from ``row_index``) along the first axis.

        This default reads the whole array once (kept in ``cache``, a ``ByteLRU``, if given):
        right for data that is in memory already or can only be read from its start.
        """
        if cache is None:
            return _np().array(self.array()[index])
        return _np().array(cache.get((id(self), None), self.array)[index])


def row_index(key, n: int):
    """(``slice(start, stop)`` or an int array, is_scalar) for a row key along an axis of
    length ``n``: an int, a slice, or an int/bool array or list. Bad keys raise IndexError."""
    import operator

    np = _np()
    if not isinstance(key, (bool, np.bool_)):
        try:
            i = operator.index(key)
        except TypeError:
            pass
        else:
            if not -n <= i < n:
                raise IndexError(f"row {i} is out of range for {n} rows")
            i %= n
            return slice(i, i + 1), True
    if isinstance(key, slice):
        start, stop, step = key.indices(n)
        if step == 1:
            return slice(start, max(start, stop)), False
        return np.arange(start, stop, step, dtype=np.intp), False
    arr = None
    if not isinstance(key, tuple):  # a tuple means more axes to numpy: ambiguous for rows
        try:
            arr = np.asarray(key)
        except (TypeError, ValueError):
            pass
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iub" and arr.size:
        raise IndexError("rows are selected by an int, a slice, or a 1-D list/array of ints "
                         f"or bools, not {type(key).__name__}")
    if arr.dtype.kind == "b":
        if arr.shape != (n,):
            raise IndexError(f"boolean row mask of length {arr.size} for {n} rows")
        return np.flatnonzero(arr), False
    arr = arr.astype(np.intp)
    if arr.size and (arr.min() < -n or arr.max() >= n):
        bad = arr[(arr < -n) | (arr >= n)][0]
        raise IndexError(f"row {bad} is out of range for {n} rows")
    return np.where(arr < 0, arr + n, arr), False


def gather_rows(index, bounds, load):
    """Rows ``index`` of a tensor stored in pieces: piece k holds rows
    ``bounds[k]:bounds[k+1]`` and ``load(k)`` gives it as numpy; only pieces hit are loaded."""
    np = _np()
    if isinstance(index, slice):
        k = bisect.bisect_right(bounds, index.start) - 1
        if index.stop <= bounds[k + 1]:  # the usual case: one piece
            return np.array(load(k)[index.start - bounds[k]:index.stop - bounds[k]])
    idx = np.arange(index.start, index.stop) if isinstance(index, slice) else index
    which = np.searchsorted(bounds, idx, side="right") - 1
    hit = np.unique(which)
    if len(hit) == 1:
        k = int(hit[0])
        block = load(k)
        if isinstance(index, slice):
            return np.array(block[index.start - bounds[k]:index.stop - bounds[k]])
        return block[idx - bounds[k]]
    out = None
    for k in hit:
        block = load(int(k))
        mask = which == k
        if out is None:
            out = np.empty((len(idx),) + block.shape[1:], block.dtype)
        out[mask] = block[idx[mask] - bounds[k]]
    return out


class ArraySource(Source):
    held = True
    """An in-memory numpy array (what users pass to ``mlconv.save``)."""

    def __init__(self, arr, dtype: DType):
        super().__init__(dtype, arr.shape, arr.dtype.itemsize if dtype.bits is None else None)
        self._arr = arr

    def array(self):
        return self._arr


class _Stored(Source):
    """Bytes stored as numpy would: a byte order and C or Fortran order."""

    __slots__ = ("byteorder", "fortran", "path", "entry", "verbatim")

    def __init__(self, dtype, shape, itemsize=None, byteorder="<", fortran=False,
                 path=None, entry=None):
        super().__init__(dtype, shape, itemsize)
        self.byteorder = byteorder
        self.fortran = fortran and len(self.shape) > 1
        self.path, self.entry = path, entry
        self.verbatim = not self.fortran and (byteorder == "<" or self.itemsize == 1
                                             or dtype.is_subbyte)

    def _from_bytes(self, raw):
        """An array over ``raw`` (uint8) in the stored layout; no copy except sub-byte unpacking."""
        if self.dtype.is_subbyte:
            _need_nibbles(self.dtype, self.entry)
            return unpack4(raw, self.dtype, self.count).reshape(self.shape)
        view = raw.view(element_dtype(self.dtype, self.itemsize, self.byteorder))
        if self.fortran:
            return view.reshape(self.shape[::-1]).T
        return view.reshape(self.shape)


class FileMap:
    """One read-only memory map of a whole file, shared by the tensors that live in it."""

    def __init__(self, path: str):
        self.path = path
        self._mm = None

    def array(self):
        if self._mm is None:
            np = _np()
            if os.path.getsize(self.path) == 0:
                self._mm = np.zeros(0, np.uint8)
            else:
                self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._mm

    def drop_pages(self) -> None:
        """Let the kernel reclaim pages we touched, so a streamed pass keeps RSS bounded."""
        mm = getattr(self._mm, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self._mm = None


class FileSource(_Stored):
    """Bytes at a checked offset of a file: a memory-mapped view, copied file-to-file."""

    __slots__ = ("fmap", "offset", "nbytes", "limit", "_view", "_over")

    def __init__(self, fmap: FileMap, offset: int, dtype, shape, itemsize=None,
                 byteorder="<", fortran=False, entry=None):
        super().__init__(dtype, shape, itemsize, byteorder, fortran, fmap.path, entry)
        self.fmap = fmap
        self.offset = offset
        self.nbytes = self.dtype.nbytes(self.shape, self.itemsize)  # fixed: computed once
        self.limit = None

    @property
    def span(self):
        return (self.path, self.offset, self.nbytes) if self.verbatim else None

    def array(self):
        raw = self.fmap.array()[self.offset:self.offset + self.nbytes]
        return self._from_bytes(raw)

    def _plain_view(self):
        np = _np()
        mm = self.fmap.array()
        if getattr(self, "_over", None) is not mm:  # a plain view: memmap's getitem is slow
            self._view, self._over = np.asarray(self._from_bytes(
                mm[self.offset:self.offset + self.nbytes])), mm
        return self._view

    def rows(self, index, cache=None):
        """Only these rows' pages are touched: a slice or fancy index of the memory map."""
        picked = self._plain_view()[index]
        return _np().array(picked) if isinstance(index, slice) else picked

    def row_reader(self):
        if self.dtype.is_subbyte or not self.shape:
            return None
        view = self._plain_view()
        if not view.dtype.isnative:  # Tensor.rows converts: take that path
            return None
        if view.ndim == 1:
            return view.__getitem__  # a numpy scalar: a copy by nature
        return lambda i: view[i].copy()

    def chunks(self, size: int = CHUNK):
        if self.nbytes == 0:  # nothing to read: no open() per empty tensor
            return
        if not self.verbatim:
            yield from array_chunks(self.array(), self.dtype, size, after=self.fmap.drop_pages)
            return
        # pread into one reused buffer: streaming through the map would grow RSS to the file
        step = max(self.itemsize, size // self.itemsize * self.itemsize)
        buf = bytearray(min(step, self.nbytes))
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset)
            left = self.nbytes
            while left:
                n = f.readinto(memoryview(buf)[:min(step, left)])
                if not n:
                    raise FormatError("file shrank while reading", self.path, self.entry)
                left -= n
                yield memoryview(buf)[:n]


class StreamSource(_Stored):
    """Bytes behind a stream that can only be read forward (a deflated zip member)."""

    how = "inflate zip member"

    def __init__(self, opener, dtype, shape, itemsize=None, byteorder="<", fortran=False,
                 path=None, entry=None):
        super().__init__(dtype, shape, itemsize, byteorder, fortran, path, entry)
        self._opener = opener  # () -> context manager yielding a file positioned at the data

    def _read(self, f, n: int) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise FormatError(f"data truncated: {n} bytes expected, {len(data)} found",
                              self.path, self.entry)
        return data

    def array(self):
        np = _np()
        check_memory(self.nbytes, self.limit, self.path, self.entry)
        with self._opener() as f:
            raw = bytearray(self._read(f, self.nbytes))
        return self._from_bytes(np.frombuffer(raw, dtype=np.uint8))

    def chunks(self, size: int = CHUNK):
        if self.fortran:
            yield from array_chunks(self.array(), self.dtype, size)
            return
        np = _np()
        step = max(self.itemsize, size // self.itemsize * self.itemsize)
        with self._opener() as f:
            left = self.nbytes
            while left:
                data = self._read(f, min(step, left))
                left -= len(data)
                if self.verbatim:
                    yield memoryview(data)
                else:
                    stored = element_dtype(self.dtype, self.itemsize, self.byteorder)
                    le = np.frombuffer(data, stored).astype(stored.newbyteorder("<"))
                    yield memoryview(le.view(np.uint8))


class CastSource(Source):
    """Another source's values converted to ``dtype`` chunk by chunk (numpy ``astype`` rules)."""

    def __init__(self, inner: Source, dtype: DType):
        if dtype.bits is None or inner.dtype.bits is None:
            raise UnsupportedError(f"cannot cast {inner.dtype.value} to {dtype.value}")
        super().__init__(dtype, inner.shape)
        self.inner = inner

    def array(self):
        return self.inner.array().astype(self.dtype.numpy(), casting="unsafe")

    def chunks(self, size: int = CHUNK):
        np = _np()
        src = self.inner.dtype
        left = self.count
        for piece in self.inner.chunks(size):
            if src.is_subbyte:
                _need_nibbles(src)
                values = unpack4(piece, src, min(left, len(piece) * 2))
                left -= values.size
            else:
                values = np.frombuffer(piece, element_dtype(src, self.inner.itemsize))
            yield from array_chunks(values, self.dtype, size * 2, casting="unsafe")
