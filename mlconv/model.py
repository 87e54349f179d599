"""The interchange model every reader yields and every writer takes (SPEC §2).

- ``Tensor``: dtype, shape, ``attrs`` (meaning, survives conversion), ``encoding`` (on-disk
  details only the same format applies) and lazy data (see ``mlconv.sources``).
- ``Table``: an Arrow schema plus a stream of record batches, never the whole table at once.
- ``Bundle``: an ordered mapping of ``/``-separated names to Tensors and Tables, plus
  file-level ``metadata`` (str -> str), ``group_attrs`` (attrs of the groups along the
  names), ``skipped`` (entries the reader saw but cannot represent, with the reason) and
  ``notes`` (things read in a fallback way, e.g. an unknown extension type as its storage).

The model knows no file format.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager

from .dtypes import DType, from_numpy
from .errors import FormatError, MlconvError, UnsupportedError
from .fileio import CHUNK
from .sources import ArraySource, CastSource, Source


class Tensor:
    kind = "tensor"
    # a file can hold a million of these: slots, and no empty dicts until asked for
    __slots__ = ("source", "_attrs", "_encoding", "held")

    def __init__(self, source: Source, attrs: dict | None = None,
                 encoding: dict | None = None):
        self.source = source
        self._attrs = dict(attrs) if attrs else None
        self._encoding = dict(encoding) if encoding else None
        self.held = None  # see _readable

    @property
    def attrs(self) -> dict:
        if self._attrs is None:
            self._attrs = {}
        return self._attrs

    @attrs.setter
    def attrs(self, value: dict) -> None:
        self._attrs = value

    @property
    def has_attrs(self) -> bool:
        """``bool(self.attrs)`` without making an empty dict."""
        return bool(self._attrs)

    @property
    def encoding(self) -> dict:
        if self._encoding is None:
            self._encoding = {}
        return self._encoding

    @encoding.setter
    def encoding(self, value: dict) -> None:
        self._encoding = value

    @classmethod
    def from_numpy(cls, arr, attrs: dict | None = None) -> Tensor:
        import numpy as np

        arr = np.asarray(arr)
        return cls(ArraySource(arr, from_numpy(arr.dtype)), attrs)

    @property
    def dtype(self) -> DType:
        return self.source.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    @property
    def itemsize(self) -> int:
        """Bytes per element as numpy holds it (1 for sub-byte types)."""
        return self.source.itemsize

    @property
    def nbytes(self) -> int:
        """Size of the canonical payload (sub-byte types packed)."""
        return self.source.nbytes

    @property
    def span(self):
        """(path, offset, nbytes) when the payload lies verbatim in a file, else None."""
        _readable(self)
        return self.source.span

    def numpy(self):
        """The data as a numpy array: a memory map wherever the file allows it."""
        _readable(self)
        return self.source.array()

    def chunks(self, size: int = CHUNK) -> Iterator[memoryview]:
        """The canonical payload (C order, little-endian) in pieces of about ``size`` bytes."""
        _readable(self)
        pieces = self.source.chunks(size)
        return pieces if self.held is None else _while_open(pieces, self)

    def write_to(self, sink, digest=None) -> None:
        """Append the canonical payload to a ``fileio.Sink``, file-to-file where possible;
        ``digest(piece)``, if given, sees every piece in order (a checksum)."""
        if self.span is not None:
            sink.copy_from(*self.span, digest=digest)
            return
        start = sink.pos
        for piece in self.chunks():
            if digest is not None:
                digest(piece)
            sink.write(piece)
        if sink.pos - start != self.nbytes:
            raise FormatError(f"data yielded {sink.pos - start} bytes, {self.nbytes} expected",
                              getattr(self.source, "path", None),
                              getattr(self.source, "entry", None))

    def blocks(self, rows: int) -> Iterator:
        """numpy blocks of ``rows`` rows along the first axis (the last may be shorter),
        built from ``chunks()``: memory stays bounded by one block whatever the source."""
        import numpy as np

        from .sources import element_dtype

        per_row, n = self.shape[1:], self.shape[0]
        if self.dtype.is_subbyte:  # packed payload: slice the unpacked array instead
            arr = self.numpy()
            for i in range(0, n, rows):
                yield arr[i:i + rows]
            return
        dtype = element_dtype(self.dtype, self.itemsize)
        row_bytes = self.nbytes // n if n else 0
        if row_bytes == 0:
            for i in range(0, n, rows):
                yield np.zeros((min(rows, n - i),) + per_row, dtype)
            return
        want = rows * row_bytes
        buf = bytearray()
        for piece in self.chunks(want):
            if not buf and len(piece) == want:  # the usual case: one copy (pieces are reused)
                yield np.frombuffer(piece, dtype).reshape((rows,) + per_row).copy()
                continue
            buf += piece
            while len(buf) >= want:
                yield np.frombuffer(buf, dtype, want // dtype.itemsize).reshape(
                    (rows,) + per_row).copy()
                del buf[:want]
        if buf:
            yield np.frombuffer(bytes(buf), dtype).reshape((-1,) + per_row)

    def cast(self, dtype: DType) -> Tensor:
        """A lazy view of this tensor converted to ``dtype`` (numpy ``astype`` rules)."""
        out = Tensor(CastSource(self.source, dtype), self.attrs)
        out.held = self.held
        return out

    # numpy-like access for loaders: np.asarray(t), len(t), t[rows] reads only those rows
    def __array__(self, dtype=None, copy=None):
        import numpy as np

        arr = self.numpy()
        if dtype is not None and arr.dtype != np.dtype(dtype):
            return arr.astype(dtype)
        return np.array(arr) if copy else np.asarray(arr)

    def __bool__(self) -> bool:  # a Tensor is an entry, true even when it has no rows
        return True

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __getitem__(self, key):
        """Rows along the first axis (int, slice, int/bool array), then numpy indexing of
        the rest: ``t[5]``, ``t[100:200]``, ``t[[3, 1], :, 0]``. Reads only those rows."""
        from .sources import row_index

        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if not self.shape or first is Ellipsis or first is None or \
                any(k is Ellipsis or k is None for k in rest):
            return self.numpy()[key]
        index, scalar = row_index(first, self.shape[0])
        out = self.rows(index)
        if scalar:
            return out[(0,) + rest]
        return out[(slice(None),) + rest] if rest else out

    def row_reader(self, cache=None):
        """A function ``i -> self[i]`` for many single-row reads: made once, so each read
        is little more than numpy's own indexing where the source allows."""
        _readable(self)
        fast = self.source.row_reader()
        if fast is not None:
            return fast
        return lambda i: self.rows(slice(i, i + 1), cache)[0]

    def rows(self, index, cache=None):
        """A new numpy array of rows ``index`` (see ``sources.row_index``); ``cache``: an
        ``lru.ByteLRU`` keeping decoded chunks and row groups between calls."""
        if (index.stop <= index.start) if isinstance(index, slice) else not len(index):
            import numpy as np

            from .sources import element_dtype

            return np.empty((0,) + self.shape[1:], element_dtype(self.dtype, self.itemsize))
        _readable(self)
        out = self.source.rows(index, cache)
        if not out.dtype.isnative:  # big-endian in the file: loaders (torch) want native
            out = out.astype(out.dtype.newbyteorder("="))
        return out

    def __repr__(self) -> str:
        return f"Tensor({self.dtype.value}, shape={self.shape})"


class TableSource:
    """Lazy data of one table: what every table reader implements, as ``Source`` is for
    tensors. ``schema()`` is the pyarrow Schema; ``batches(rows, columns)`` yields record
    batches of at most ``rows`` rows and may read only ``columns``; readers with random
    access (Parquet row groups, Arrow IPC batches) set ``piece_rows`` and ``piece``."""

    num_rows: int | None = None
    piece_rows: list[int] | None = None  # rows of each piece, when pieces are readable

    def schema(self):
        raise NotImplementedError

    def batches(self, rows: int, columns: list[str] | None = None) -> Iterator:
        raise NotImplementedError

    def piece(self, k: int, columns: list[str]):
        """The k-th piece (a pyarrow Table or RecordBatch) of only ``columns``."""
        raise NotImplementedError


class Projected(TableSource):
    """Only some columns of another table source; the others are never read."""

    def __init__(self, inner: TableSource, names: list[str]):
        self.inner, self.names = inner, names
        self.num_rows, self.piece_rows = inner.num_rows, inner.piece_rows

    def schema(self):
        return _project_schema(self.inner.schema(), self.names)

    def batches(self, rows: int, columns=None):
        wanted = self.names if columns is None else columns
        for batch in self.inner.batches(rows, wanted):
            yield batch.select(wanted)

    def piece(self, k: int, columns):
        return self.inner.piece(k, columns)


class Table:
    """A schema plus a stream of record batches, read through a ``TableSource``.

    ``columns`` is a cheap description ``[(name, type name)]`` for inspection without pyarrow;
    ``batches(n)`` yields ``pyarrow.RecordBatch`` objects of at most ``n`` rows.
    """

    kind = "table"

    def __init__(self, columns: list[tuple[str, str]], source: TableSource,
                 attrs: dict | None = None, encoding: dict | None = None):
        self.columns = list(columns)
        self.source = source
        self.num_rows = source.num_rows
        self.attrs = dict(attrs or {})
        self.encoding = dict(encoding or {})
        self.held = None  # see _readable

    @property
    def schema(self):
        """The ``pyarrow.Schema`` of the table."""
        _readable(self)
        return self.source.schema()

    @property
    def pieces(self):
        """(rows of each piece, read(k, columns)) where the reader has random access."""
        if self.source.piece_rows is None:
            return None
        _readable(self)
        return self.source.piece_rows, self._piece

    def _piece(self, k: int, columns):
        _readable(self)
        return self.source.piece(k, columns)

    def batches(self, rows: int = 65536, columns: list[str] | None = None) -> Iterator:
        """Record batches of at most ``rows`` rows, of only ``columns`` when given."""
        _readable(self)
        got = self.source.batches(rows, columns)
        for batch in got if self.held is None else _while_open(got, self):
            yield batch.select(columns) if columns is not None else batch

    def project(self, keep: list[str]) -> Table:
        """This table with only the columns ``keep``, in its own order; the others are never
        read. On-disk details (``encoding``) describe the whole table, so they go."""
        names = [c for c, _ in self.columns if c in keep]
        out = Table([c for c in self.columns if c[0] in names], Projected(self.source, names),
                    self.attrs)
        out.held = self.held
        return out

    def __repr__(self) -> str:
        return f"Table({len(self.columns)} columns, rows={self.num_rows})"


def _readable(entry) -> None:
    """An entry read from a remote file holds ``(copy, name)``: the file's local copy,
    which lives as long as the bundle or any such entry does (``load(url)["x"].numpy()``)
    and goes when the bundle is closed. Reading after that is this error, not whatever the
    released copy would give (zeros where bytes were never fetched, a closed descriptor)."""
    held = entry.held
    if held is not None and held[0].closed:
        raise MlconvError("its bundle was closed; open the file again to read this entry",
                          held[0].path, held[1])


def _while_open(items, entry):
    """``items``, each checked by ``_readable`` first: a bundle closed midway stops them."""
    for item in items:
        _readable(entry)
        yield item


def _project_schema(schema, names: list[str]):
    import pyarrow as pa

    return pa.schema([schema.field(n) for n in names], schema.metadata)


Entry = Tensor | Table


INT64_MAX = (1 << 63) - 1
MAX_NAME = 65535  # bytes of an entry name: what zip (npz) and most formats can hold


def printable(text: str) -> str:
    """``text`` safe to print on one line (lone surrogates and newlines escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", "\\n")


def check_text(text, path, entry, what: str) -> None:
    """FormatError unless ``text`` is a str every writer can encode (no lone surrogates)."""
    from .errors import FormatError

    if not isinstance(text, str):
        raise FormatError(f"{what} is not text", path, printable(str(entry)))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} is not valid Unicode (lone surrogate)", path,
                          printable(str(entry))) from None


def check_entry(name: str, value, path) -> None:
    """What no reader may hand on (every format's names and numbers pass here once): a
    name that is not valid Unicode or longer than MAX_NAME bytes, a dimension or element
    count or byte size beyond int64 (a zero dimension does not excuse the others), a
    negative row count."""
    from .errors import FormatError

    check_text(name, path, name, "entry name")
    if len(name) > MAX_NAME // 4 and len(name.encode("utf-8")) > MAX_NAME:
        raise FormatError(f"entry name of {len(name.encode('utf-8'))} bytes (at most "
                          f"{MAX_NAME})", path, printable(name[:100]) + "...")
    if isinstance(value, Table):
        if value.num_rows is not None and not 0 <= value.num_rows <= INT64_MAX:
            raise FormatError(f"row count {value.num_rows} out of range", path, name)
        return
    shape = value.shape
    n = 1
    for d in shape:
        if not 0 <= d <= INT64_MAX:
            raise FormatError(f"shape {list(shape)}: dimension out of range", path, name)
        n *= d or 1
    if n > INT64_MAX or n * max(value.itemsize or 1, 1) > INT64_MAX:
        raise FormatError(f"shape {list(shape)}: its element count or byte size does not "
                          "fit in 64 bits", path, name)


@contextmanager
def paused_gc():
    """No cyclic garbage collection inside: building a million small objects (entries of a
    huge header) otherwise triggers full collections that cost more than the work itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _names_ok(names: list[str]) -> bool:
    """True when every name is a str, valid Unicode and short (what ``check_entry`` asks of a
    name), found in one C-level pass over all of them."""
    try:
        "".join(names).encode("utf-8")  # any lone surrogate fails the whole
    except (TypeError, UnicodeEncodeError):
        return False
    return max(map(len, names), default=0) <= MAX_NAME // 4


class Bundle(MutableMapping):
    """An ordered mapping of hierarchical names to Tensors and Tables, plus file metadata.

    A Bundle read from a file keeps that file's memory maps alive until ``close()``; arrays
    already handed out stay valid after it.
    """

    def __init__(self, entries=None, metadata: dict[str, str] | None = None,
                 path: str | None = None, format: str | None = None):
        self._entries: dict[str, Entry] = {}
        self.path = path
        self.metadata = dict(metadata or {})
        self.group_attrs: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []  # what the reader read differently than written, and why
        self.encoding: dict = {}  # on-disk details only the same format applies (SPEC §2)
        self.format = format
        self._closers: list[Callable[[], None]] = []
        for name, value in (entries or {}).items():
            self[name] = value

    @property
    def metadata(self) -> dict[str, str]:
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, str]) -> None:
        for k, v in value.items():  # checked once, where a reader hands it over
            check_text(k, self.path, k, "metadata key")
            if isinstance(v, str):
                check_text(v, self.path, k, "metadata value")
        self._metadata = value

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def __setitem__(self, name: str, value) -> None:
        if not isinstance(value, (Tensor, Table)):
            value = Tensor.from_numpy(value)
        check_entry(name, value, self.path)
        self._entries[name] = value

    def _add_tensors(self, names: list[str], tensors: list[Tensor]) -> None:
        """``self[n] = t`` for each pair, with the same checks batched: a reader of a file
        with a million entries must not pay a Python-level name check for each."""
        if not _names_ok(names):
            for name, t in zip(names, tensors, strict=True):  # the first bad one, as one by one
                self[name] = t
            return
        seen = set()  # (shape, itemsize) already checked
        entries = self._entries
        for name, t in zip(names, tensors, strict=True):
            src = t.source
            key = (src.shape, src.itemsize)
            if key not in seen:
                check_entry(name, t, self.path)
                seen.add(key)
            entries[name] = t

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _drain(self) -> Iterator[tuple[str, Entry]]:
        """Remove and yield every entry, the last first (what a dict pops in O(1))."""
        while self._entries:
            yield self._entries.popitem()

    def tensors(self) -> dict[str, Tensor]:
        return {k: v for k, v in self._entries.items() if isinstance(v, Tensor)}

    def on_close(self, fn: Callable[[], None]) -> None:
        self._closers.append(fn)

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in self._entries.items())
        return f"Bundle({{{inner}}}, metadata={self.metadata!r})"


# --- typed attribute values ------------------------------------------------------------
# attrs are JSON. A numeric value whose type JSON's own int/float/bool would not restore
# (int32, float16, complex, an empty array...) is held as {"$dtype": name, "value": ...};
# file metadata (text only) holds every non-text value as that JSON, so it comes back typed.

TYPED = "$dtype"


def attr_json(value, plain: bool = True):
    """A numpy attribute value as JSON; ``plain`` allows bare int64/float64/bool values."""
    import numpy as np

    arr = np.asarray(value)
    dtype = from_numpy(arr.dtype)  # UnsupportedError for types the model can't name
    if dtype.kind == "complex":
        data = np.stack([arr.real, arr.imag], -1).tolist()
    elif dtype.kind == "string":
        data = arr.tolist()
    elif dtype.kind == "bytes":
        data = np.vectorize(bytes.hex, otypes=[object])(arr).tolist() if arr.size else []
    elif dtype.kind in ("datetime", "timedelta"):
        data = arr.astype(np.int64).tolist()  # counts of the unit the dtype names
    else:
        data = arr.astype(np.float64).tolist() if dtype.kind == "float" else arr.tolist()
    if plain and arr.size and dtype in (DType.int64, DType.float64, DType.bool):
        return data
    return {TYPED: dtype.value, "value": data}


def attr_value(value):
    """The numpy value of a typed JSON attribute (see ``attr_json``); others unchanged."""
    if not (isinstance(value, dict) and set(value) == {TYPED, "value"}):
        return value
    import numpy as np

    from .dtypes import parse

    dtype = parse(value[TYPED])
    data = value["value"]
    if dtype.kind == "string":
        return np.asarray(data, dtype=object) if isinstance(data, list) else data
    if dtype.kind == "bytes":
        return np.vectorize(bytes.fromhex, otypes=[object])(np.asarray(data)).astype(bytes) \
            if np.size(data) else np.asarray(data, dtype=bytes)
    if dtype.kind == "complex":
        pairs = np.asarray(data, dtype=np.float64)
        return (pairs[..., 0] + 1j * pairs[..., 1]).astype(dtype.numpy())
    return np.asarray(data, dtype=dtype.numpy())


def metadata_text(value) -> str:
    """File metadata is text: a non-text attribute becomes its typed JSON (restored by
    ``metadata_value``)."""
    import json

    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float, list)):
        try:
            typed = attr_json(value, plain=False)
            if attr_value(typed).tolist() == value:  # not a mixed list numpy would coerce
                value = typed
        except (UnsupportedError, ValueError, TypeError, OverflowError):
            pass  # mixed lists, None: plain JSON
    return json.dumps(value, ensure_ascii=False)


def metadata_value(text: str):
    """The attribute a metadata text stands for: typed JSON back to numpy, else the text."""
    import json

    if not text.startswith('{"' + TYPED + '"'):
        return text
    try:
        return attr_value(json.loads(text))
    except (ValueError, TypeError, UnsupportedError):
        return text


__all__ = ["Bundle", "DType", "Table", "Tensor"]
