"""Arrow IPC through pyarrow: the file format (``.arrow``, ``.feather``) and the stream
format (``.arrows``).

Files are memory-mapped and read zero-copy (uncompressed buffers stay in the map); every
batch passes ``validate(full=True)`` before use, since its buffers come straight from the
file. Extension types pyarrow does not know read as their storage type; Python-pickled
extension types are never registered. Layouts of tensors as in Parquet (``formats.arrow_layouts``).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .. import ranged
from ..atomic import library_path
from ..errors import FormatError, MlconvError, UnsupportedError
from ..fileio import prefetch
from ..model import Bundle, Table, TableSource
from ..sources import check_memory
from . import arrow_layouts as layouts
from .base import MAX_MEMORY, Capabilities, Format, stem_name

FILE_MAGIC = b"ARROW1"
STREAM_EXTENSIONS = (".arrows",)


# --- batch sizes from the IPC metadata (flatbuffers), without decoding any batch ------------

class _Flat:
    """A flatbuffer table, read with every offset checked against the buffer."""

    def __init__(self, buf, pos: int):
        self.buf = buf
        self.pos = pos
        self.vt = pos - self._get("<i", pos)
        self.vt_len = self._get("<H", self.vt)

    def _get(self, fmt: str, at: int):
        if at < 0 or at + struct.calcsize(fmt) > len(self.buf):
            raise ValueError("flatbuffer offset out of range")
        return struct.unpack_from(fmt, self.buf, at)[0]

    def _field(self, i: int) -> int:
        at = 4 + 2 * i
        return self._get("<H", self.vt + at) if at + 2 <= self.vt_len else 0

    def scalar(self, i: int, fmt: str, default=0):
        off = self._field(i)
        return self._get(fmt, self.pos + off) if off else default

    def table(self, i: int):
        off = self._field(i)
        if not off:
            return None
        at = self.pos + off
        return _Flat(self.buf, at + self._get("<I", at))

    def vector(self, i: int, width: int) -> list[int]:
        """Start offsets of the ``width``-byte elements of vector field ``i``."""
        off = self._field(i)
        if not off:
            return []
        at = self.pos + off
        at += self._get("<I", at)
        n = self._get("<I", at)
        if at + 4 + n * width > len(self.buf):
            raise ValueError("flatbuffer vector out of range")
        return [at + 4 + k * width for k in range(n)]


def _root(buf) -> _Flat:
    return _Flat(buf, struct.unpack_from("<I", buf, 0)[0])


def batch_info(metadata, body) -> tuple[int, int] | None:
    """(rows, bytes once decoded) of a record batch message, or None for other messages.
    Compressed buffers start with their decoded length (Arrow format spec)."""
    meta = _root(memoryview(metadata))
    if meta.scalar(1, "<B") != 3:  # MessageHeader.RecordBatch
        return None
    rb = meta.table(2)
    if rb is None:
        raise ValueError("record batch message without a header")
    rows = rb.scalar(0, "<q")
    compressed = rb.table(3) is not None
    view = memoryview(body) if body is not None else memoryview(b"")
    total = 0
    for at in rb.vector(2, 16):
        offset, length = struct.unpack_from("<qq", rb.buf, at)
        if offset < 0 or length < 0 or offset + length > len(view):
            raise ValueError("buffer outside the message body")
        if compressed and length >= 8:
            decoded = struct.unpack_from("<q", view, offset)[0]
            length = length - 8 if decoded == -1 else decoded
        total += max(0, length)
    if rows < 0:
        raise ValueError(f"negative row count {rows}")
    return rows, total


def _file_blocks(buf) -> list[tuple[int, int, int]]:
    """(offset, metadata length, body length) of each record batch block in an IPC file's
    footer."""
    size = len(buf)
    (n,) = struct.unpack_from("<i", buf, size - 10)
    start = size - 10 - n
    if n <= 0 or start < 8:
        raise ValueError("footer length outside the file")
    footer = _root(memoryview(buf)[start:size - 10])
    return [struct.unpack_from("<qi4xq", footer.buf, at) for at in footer.vector(3, 24)]


def _validate(batch, path) -> None:
    """Full validation of buffers that come straight from the file. A date or time out of
    its calendar range (a date64 that is not a whole day, a time32 of 86400 s) is a semantic
    oddity, not a memory hazard: its integer storage is validated instead (the corpus has
    such a file, and readers must read it)."""
    import pyarrow as pa

    try:
        batch.validate(full=True)
        return
    except layouts.arrow_errors():
        pass
    for field, col in zip(batch.schema, batch.columns, strict=True):
        try:
            try:
                col.validate(full=True)
            except pa.ArrowInvalid:
                if not pa.types.is_temporal(col.type):
                    raise
                col.view(pa.int64() if col.type.bit_width == 64 else pa.int32()) \
                    .validate(full=True)
        except layouts.arrow_errors() as e:
            raise FormatError(f"invalid record batch: {layouts.one_line(e)}", path, field.name) \
                from None


def _why(e) -> str:
    """pyarrow's reason, with a short read called what it is."""
    text = layouts.one_line(e)
    if "Expected to" in text and "read" in text:
        return f"truncated ({text[:120]})"
    return text


class _Source(TableSource):
    """Opens the IPC data behind a memory map: random access for files, a pass for streams."""

    def __init__(self, path: str, limit: int | None = MAX_MEMORY):
        import mmap

        import pyarrow as pa

        self.path, self.limit = path, limit
        self.remote = ranged.claim(path)  # a copy holding the metadata only: batches fetched
        self._cache: tuple[int, object] | None = None  # (index, batch) last decoded
        self._stream_at: tuple[int, object] | None = None  # (next index, reader) of a stream
        # our own map (not pa.memory_map) so a streamed pass can drop the pages it read
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise FormatError("empty file (0 bytes)", path)
            self.map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.buffer = pa.py_buffer(self.map)
        size = len(self.map)
        if self.map[:6] == FILE_MAGIC:  # a file, never a stream (that starts 0xFFFFFFFF)
            if size < 12 or self.map[size - 6:] != FILE_MAGIC:
                raise FormatError(f"truncated Arrow IPC file: it starts with ARROW1 but its "
                                  f"{size} bytes end without the footer", path)
            try:
                self.reader = pa.ipc.open_file(pa.BufferReader(self.buffer))
                self.stream = False
            except layouts.arrow_errors() as e:
                raise FormatError(f"not a readable Arrow IPC file: {_why(e)}", path) from None
        else:
            try:
                self.reader = pa.ipc.open_stream(pa.BufferReader(self.buffer))
                self.stream = True
            except layouts.arrow_errors() as e:
                raise FormatError(f"not a readable Arrow IPC file or stream: {_why(e)}",
                                  path) from None
        self.arrow_schema = self.reader.schema
        self.sizes = self._sizes()
        self.starts = [0]
        for rows, _ in self.sizes:
            self.starts.append(self.starts[-1] + rows)

    def _sizes(self) -> list[tuple[int, int]]:
        """(rows, decoded bytes) of every record batch, from the metadata alone."""
        import pyarrow as pa

        out = []
        try:
            if self.stream:
                reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(self.buffer))
                for message in reader:
                    info = batch_info(message.metadata, message.body)
                    if info is not None:
                        out.append(info)
            else:
                self.blocks = _file_blocks(self.map)
                for offset, _, _ in self.blocks:
                    message = pa.ipc.read_message(self.buffer.slice(offset))
                    info = batch_info(message.metadata, message.body)
                    if info is None:
                        raise ValueError(f"footer block at {offset} is not a record batch")
                    out.append(info)
        except (ValueError, struct.error, *layouts.arrow_errors()) as e:
            raise FormatError(f"corrupt IPC metadata: {layouts.one_line(e)}", self.path) \
                from None
        if not self.stream and len(out) != self.reader.num_record_batches:
            raise FormatError("footer lists a different number of batches than pyarrow reads",
                              self.path)
        return out

    def batch(self, i: int, columns=None):
        """Record batch ``i``, decoded only if its decoded size is within --max-memory;
        the last one is kept, so reading rows in order decodes each batch once. A remote
        copy fetches it first (only the buffers of ``columns`` when given)."""
        import pyarrow as pa

        if self._cache is not None and self._cache[0] == i:
            return self._cache[1]
        self._fetch(i, columns)
        check_memory(self.sizes[i][1], self.limit, self.path, f"record batch {i}")
        try:
            if not self.stream:
                batch = self.reader.get_batch(i)
            else:
                if self._stream_at is None or self._stream_at[0] > i:
                    self._stream_at = (0, pa.ipc.open_stream(pa.BufferReader(self.buffer)))
                k, reader = self._stream_at
                while True:
                    if k != i:
                        check_memory(self.sizes[k][1], self.limit, self.path,
                                     f"record batch {k}")
                    batch = reader.read_next_batch()
                    k += 1
                    if k > i:
                        break
                self._stream_at = (k, reader)
        except StopIteration:
            raise FormatError(f"record batch {i} missing", self.path) from None
        except layouts.arrow_errors() as e:
            raise FormatError(f"corrupt record batch: {_why(e)}", self.path) from None
        if batch.num_rows != self.sizes[i][0]:
            raise FormatError(f"record batch {i} holds {batch.num_rows} rows, its metadata "
                              f"{self.sizes[i][0]}", self.path)
        self._cache = (i, batch)
        return batch

    def _fetch(self, i: int, columns=None) -> None:
        """A remote copy: fetch record batch ``i`` (of a file), or only the buffers of
        ``columns`` when its buffers are stored uncompressed: pyarrow's zero-copy slices of
        the map say where they lie (a probe batch, never used for data)."""
        import pyarrow as pa

        if not self.remote or self.stream or not 0 <= i < len(self.blocks):
            return
        offset, meta, body = self.blocks[i]
        whole = [(offset, offset + meta + body)]
        if columns is None:
            ranged.fill_many(self.path, whole)
            return
        try:
            message = pa.ipc.read_message(self.buffer.slice(offset))
            compressed = _root(memoryview(message.metadata)).table(2).table(3) is not None
            probe = None if compressed else self.reader.get_batch(i).select(columns)
        except (ValueError, struct.error, AttributeError, *layouts.arrow_errors()):
            probe = None  # the real read says what is wrong
        if probe is None:
            ranged.fill_many(self.path, whole)
            if self.sizes and i < len(self.sizes):  # decoded sizes need the body
                message = pa.ipc.read_message(self.buffer.slice(offset))
                self.sizes[i] = batch_info(message.metadata, message.body) or self.sizes[i]
            return
        base, end = self.buffer.address, self.buffer.address + self.buffer.size
        ranges = []
        for col in probe.columns:
            for buf in col.buffers():
                if buf is None or not buf.size:
                    continue
                if not base <= buf.address <= buf.address + buf.size <= end:
                    ranges = whole  # a buffer pyarrow copied: fetch it all
                    break
                ranges.append((buf.address - base, buf.address - base + buf.size))
        ranged.fill_many(self.path, ranges)

    def drop_pages(self) -> None:
        """Let the kernel reclaim mapped pages already read (RSS stays bounded); arrays
        still in use fault them back in from the page cache."""
        import mmap

        try:
            self.map.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError, AttributeError):
            pass

    def batches(self, rows: int, columns=None):
        for i in range(len(self.sizes)):
            batch = self.batch(i, columns)
            self._cache = None  # a pass in order keeps only the batch in use
            if columns is not None:  # only the columns asked for are validated, or read
                batch = batch.select(columns)
            _validate(batch, self.path)
            for start in range(0, max(batch.num_rows, 1), rows):
                if batch.num_rows:
                    yield batch.slice(start, rows)
                else:
                    yield batch
            self.drop_pages()

    def piece(self, k: int, columns):
        """Record batch ``k`` of a file (random access), validated, of only ``columns``."""
        self._fetch(k, columns)
        try:
            batch = self.reader.get_batch(k)
        except layouts.arrow_errors() as e:
            raise FormatError(f"corrupt record batch: {layouts.one_line(e)}", self.path) from None
        batch = batch.select(columns)  # only the columns asked for are validated, or read
        _validate(batch, self.path)
        return batch

    def schema(self):
        return self.arrow_schema

    def count_rows(self) -> int:
        return self.starts[-1]

    def row(self, row: int):
        """The ``bytes`` value of entries-layout row ``row``, zero-copy from the map."""
        import bisect

        import pyarrow as pa

        if not 0 <= row < self.starts[-1]:
            return None
        i = bisect.bisect_right(self.starts, row) - 1
        fresh = self._cache is None or self._cache[0] != i
        batch = self.batch(i)
        if fresh:
            _validate(batch, self.path)
        col = batch.column(batch.schema.get_field_index("bytes"))
        value = col[row - self.starts[i]]
        return value.as_buffer() if value.is_valid else pa.py_buffer(b"")

    def close(self) -> None:
        self.reader = None  # arrays handed out keep the map alive; it unmaps when they go


@dataclass(frozen=True)
class ArrowOptions:
    layout: str | None = layouts.layout_option()


class Arrow(Format):
    def travel(self, bundle, name, entry, options, general):
        return layouts.travel(bundle, entry, self.own(options).layout, general)

    def representation(self, bundle, options):
        return layouts.representation(bundle, self.own(options).layout)

    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(FILE_MAGIC)

    def header_ranges(self, get, size: int, path: str) -> bool:
        """The footer, each record batch's metadata and each dictionary batch: what the
        reader touches to count rows."""
        import mmap

        if size < 16 or get(size - 6, size) != FILE_MAGIC:
            return False
        n = struct.unpack("<i", get(size - 10, size - 6))[0]
        if not 0 < n <= size - 18:
            return False
        get(size - 10 - n, size)
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            blocks = _file_blocks(mm)
            footer = _root(bytes(mm[size - 10 - n:size - 10]))
            dictionaries = [struct.unpack_from("<qi4xq", footer.buf, at)
                            for at in footer.vector(2, 24)]
        except (MlconvError, struct.error, ValueError, IndexError):
            return False  # a corrupt footer: the reader says what is wrong, from the whole
        finally:
            try:
                mm.close()
            except BufferError:  # a failed parse's view still holds it: freed with that view
                pass
        for offset, meta, _ in blocks:
            get(offset, offset + meta)
        for offset, meta, body in dictionaries:
            get(offset, offset + meta + body)
        return True

    def read(self, path: str, options) -> Bundle:
        src = _Source(path, options.max_memory)
        name = stem_name(path)
        cols = layouts.schema_columns(src.arrow_schema, path)
        src.num_rows = src.count_rows()
        if not src.stream:
            src.piece_rows = [rows for rows, _ in src.sizes]  # from metadata
        table = Table(cols, src)
        bundle = layouts.read_bundle(table, name, path, self.id, src.row)
        bundle.on_close(src.close)
        return bundle

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        import pyarrow as pa

        table = layouts.table_for_writing(bundle, self.own(options).layout, path)
        schema = layouts.with_metadata(table.schema, bundle, table)
        comp = options.compression or self.caps.compressions[0]
        opts = pa.ipc.IpcWriteOptions(compression=None if comp == "none" else comp)
        stream = path.lower().endswith(STREAM_EXTENSIONS)
        try:
            new = pa.ipc.new_stream if stream else pa.ipc.new_file
            with new(library_path(f), schema, options=opts) as writer:
                for batch in prefetch(table.batches(1 << 18)):
                    writer.write_batch(batch.replace_schema_metadata(schema.metadata))
                    if options.progress:
                        options.progress(batch.nbytes)
        except MlconvError:
            raise
        except layouts.arrow_errors() as e:
            raise UnsupportedError(f"Arrow refused the data: {layouts.one_line(e)}", path) from None


FORMAT = Arrow(
    representations=(("rows", "tensors"), ("entries", "tensors", "whole"), ("table", "table")),
    write_options=ArrowOptions,
    id="arrow",
    description="Apache Arrow IPC file/stream and Feather v2 (memory-mapped, zero-copy)",
    extensions=(".arrow", ".feather", ".arrows", ".ipc"),
    caps=Capabilities(tensors=True, tables=True, metadata=True, nulls=True, attrs=True,
                      zero_copy=True, dtypes=layouts.HELD,
                      compressions=("none", "lz4", "zstd")),
    requires=("pyarrow",),
    magic=(FILE_MAGIC,),
)
