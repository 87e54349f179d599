"""Arrow IPC through pyarrow: the file format (``.arrow``, ``.feather``) and the stream
format (``.arrows``).

Files are memory-mapped and read zero-copy (uncompressed buffers stay in the map); every
batch passes ``validate(full=True)`` before use, since its buffers come straight from the
file. Extension types pyarrow does not know read as their storage type; Python-pickled
extension types are never registered. Layouts of tensors as in Parquet (``mlconv.layouts``).
"""

from __future__ import annotations

import os

from .. import layouts
from ..atomic import library_path
from ..errors import FormatError, MlconvError, UnsupportedError
from ..fileio import prefetch
from ..model import Bundle, Table
from .base import Capabilities, Format

FILE_MAGIC = b"ARROW1"
STREAM_EXTENSIONS = (".arrows",)


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


class _Source:
    """Opens the IPC data behind a memory map: random access for files, a pass for streams."""

    def __init__(self, path: str):
        import mmap

        import pyarrow as pa

        self.path = path
        # our own map (not pa.memory_map) so a streamed pass can drop the pages it read
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise FormatError("empty file (0 bytes)", path)
            self.map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.buffer = pa.py_buffer(self.map)
        try:
            self.reader = pa.ipc.open_file(pa.BufferReader(self.buffer))
            self.stream = False
        except layouts.arrow_errors():
            try:
                self.reader = pa.ipc.open_stream(pa.BufferReader(self.buffer))
                self.stream = True
            except layouts.arrow_errors() as e:
                raise FormatError(f"not a readable Arrow IPC file or stream: {layouts.one_line(e)}",
                                  path) from None
        self.schema = self.reader.schema

    def drop_pages(self) -> None:
        """Let the kernel reclaim mapped pages already read (RSS stays bounded); arrays
        still in use fault them back in from the page cache."""
        import mmap

        try:
            self.map.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError, AttributeError):
            pass

    def raw_batches(self):
        import pyarrow as pa

        try:
            if self.stream:
                with pa.ipc.open_stream(pa.BufferReader(self.buffer)) as reader:
                    yield from reader
            else:
                for i in range(self.reader.num_record_batches):
                    yield self.reader.get_batch(i)
        except layouts.arrow_errors() as e:
            raise FormatError(f"corrupt record batch: {layouts.one_line(e)}", self.path) from None

    def batches(self, rows: int, columns=None):
        for batch in self.raw_batches():
            _validate(batch, self.path)
            if columns is not None:
                batch = batch.select(columns)
            for start in range(0, max(batch.num_rows, 1), rows):
                if batch.num_rows:
                    yield batch.slice(start, rows)
                else:
                    yield batch
            self.drop_pages()

    def piece(self, k: int, columns):
        """Record batch ``k`` of a file (random access), validated, of only ``columns``."""
        try:
            batch = self.reader.get_batch(k)
        except layouts.arrow_errors() as e:
            raise FormatError(f"corrupt record batch: {layouts.one_line(e)}", self.path) from None
        batch = batch.select(columns)  # only the columns asked for are validated, or read
        _validate(batch, self.path)
        return batch

    def count_rows(self) -> int:
        return sum(b.num_rows for b in self.raw_batches())

    def row(self, row: int):
        """The ``bytes`` value of entries-layout row ``row``, zero-copy from the map."""
        import pyarrow as pa

        seen = 0
        for batch in self.raw_batches():
            if row < seen + batch.num_rows:
                _validate(batch, self.path)
                col = batch.column(batch.schema.get_field_index("bytes"))
                value = col[row - seen]
                return value.as_buffer() if value.is_valid else pa.py_buffer(b"")
            seen += batch.num_rows
        return None

    def close(self) -> None:
        self.reader = None  # arrays handed out keep the map alive; it unmaps when they go


class Arrow(Format):
    def sniff(self, head: bytes, size: int) -> bool:
        return head.startswith(FILE_MAGIC)

    def read(self, path: str, options) -> Bundle:
        src = _Source(path)
        name = os.path.splitext(os.path.basename(path))[0]
        schema = src.schema
        cols = [(f.name, layouts.type_name(f.type)) for f in schema]
        table = Table(cols, src.count_rows(), src.batches, lambda: schema)
        if not src.stream:
            table.pieces = ([b.num_rows for b in src.raw_batches()], src.piece)
        bundle = layouts.read_bundle(table, name, path, self.id, src.row)
        bundle.on_close(src.close)
        return bundle

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        import pyarrow as pa

        table = layouts.table_for_writing(bundle, options.layout, path)
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
    id="arrow",
    description="Apache Arrow IPC file/stream and Feather v2 (memory-mapped, zero-copy)",
    extensions=(".arrow", ".feather", ".arrows", ".ipc"),
    caps=Capabilities(tensors=True, tables=True, metadata=True, nulls=True, attrs=True,
                      zero_copy=True, dtypes=layouts.HELD,
                      compressions=("none", "lz4", "zstd")),
    requires=("pyarrow",),
    magic=(FILE_MAGIC,),
)
