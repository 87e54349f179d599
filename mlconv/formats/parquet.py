"""Parquet through pyarrow: tables streamed as record batches both ways.

A file reads as one Table (named after the file stem), or, when it was written from
tensors, as those tensors again (``mlconv.layouts``). Writing takes one table, or a tensor
Bundle in the rows/entries layout. Thrift sizes are capped; encrypted files are refused.
"""

from __future__ import annotations

import os

from .. import layouts
from ..atomic import library_path
from ..errors import FormatError, MlconvError, UnsupportedError
from ..fileio import prefetch
from ..model import Bundle, Table
from ..sources import check_memory
from .base import Capabilities, Format

MAGIC = b"PAR1"
THRIFT_LIMIT = 64 << 20  # bytes of footer strings/containers we agree to decode


def thrift_limit(path: str) -> int:
    """The cap on any thrift string or container of the footer: every element takes at least
    one byte of it, so a count larger than the footer is a lie (a bomb) refused up front."""
    size = int.from_bytes(_tail(path), "little")
    return max(1, min(THRIFT_LIMIT, size))


def _open(path: str):
    import pyarrow.parquet as pq

    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(max(0, os.path.getsize(path) - 4))
        tail = fh.read(4)
        if tail == b"PARE" or head == b"PARE":
            raise FormatError("encrypted Parquet file (encrypted footer): decryption keys "
                              "are required and mlconv does not take them", path)
        if head != MAGIC or tail != MAGIC:
            raise FormatError("not a Parquet file: it must start and end with PAR1", path)
    limit = thrift_limit(path)
    try:
        return pq.ParquetFile(path, thrift_string_size_limit=limit,
                              thrift_container_size_limit=limit)
    except layouts.arrow_errors() as e:
        raise FormatError(f"not a readable Parquet file: {layouts.one_line(e)}", path) from None


def _tail(path: str) -> bytes:
    """The footer length field (4 bytes before the closing magic)."""
    with open(path, "rb") as fh:
        fh.seek(-8, os.SEEK_END)
        return fh.read(4)


def plain_table(pf, path: str, name: str) -> Table:
    schema = pf.schema_arrow

    def batches(rows: int, columns=None):
        try:
            yield from pf.iter_batches(batch_size=rows, columns=columns)
        except layouts.arrow_errors() as e:
            raise FormatError(f"corrupt data: {layouts.one_line(e)}", path, name) from None

    cols = [(f.name, layouts.type_name(f.type)) for f in schema]
    return Table(cols, pf.metadata.num_rows, batches, lambda: schema)


class Parquet(Format):
    def read(self, path: str, options) -> Bundle:
        pf = _open(path)
        name = os.path.splitext(os.path.basename(path))[0]
        table = plain_table(pf, path, name)
        starts = []
        total = 0
        for i in range(pf.metadata.num_row_groups):
            starts.append(total)
            total += pf.metadata.row_group(i).num_rows

        cache: list = [None, None]  # (row group index, its bytes column): rows read in order

        def entry_bytes(row: int):
            import bisect

            rg = bisect.bisect_right(starts, row) - 1
            if rg < 0:
                return None
            if cache[0] != rg:
                meta = pf.metadata.row_group(rg)
                check_memory(meta.total_byte_size, options.max_memory, path,
                             f"row group {rg}")
                try:
                    cache[:] = [rg, pf.read_row_group(rg, columns=["bytes"]).column(0)]
                except layouts.arrow_errors() as e:
                    raise FormatError(f"corrupt data: {layouts.one_line(e)}", path) from None
            col = cache[1]
            if row - starts[rg] >= len(col):
                return None
            return col[row - starts[rg]].as_buffer()

        return layouts.read_bundle(table, name, path, self.id, entry_bytes)

    def check(self, path: str, bundle: Bundle, deep: bool):
        """Row group and column chunk bounds from the footer; deep: every page, CRCs too."""
        import pyarrow.parquet as pq

        problems, warnings = super().check(path, bundle, False)
        size = os.path.getsize(path)
        pf = _open(path)
        meta = pf.metadata
        end = size - 8 - int.from_bytes(_tail(path), "little")
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            for j in range(rg.num_columns):
                col = rg.column(j)
                start = col.dictionary_page_offset if col.has_dictionary_page and \
                    col.dictionary_page_offset else col.data_page_offset
                if start is None or start < 4 or start + col.total_compressed_size > end:
                    problems.append((f"row group {i}/{col.path_in_schema}",
                                     f"column chunk at {start}+{col.total_compressed_size} "
                                     f"lies outside the data ({4}..{end})"))
        if deep and not problems:
            try:
                limit = thrift_limit(path)
                checked = pq.ParquetFile(path, page_checksum_verification=True,
                                         thrift_string_size_limit=limit,
                                         thrift_container_size_limit=limit)
                for _ in checked.iter_batches(65536):
                    pass
            except layouts.arrow_errors() as e:
                problems.append((None, f"corrupt data: {layouts.one_line(e)}"))
        return problems, warnings

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        import pyarrow.parquet as pq

        table = layouts.table_for_writing(bundle, options.layout, path)
        schema = layouts.with_metadata(table.schema, bundle, table)
        import pyarrow as pa

        comp = options.compression or self.caps.compressions[0]
        rows = options.row_group_size or 1 << 20
        try:
            with pq.ParquetWriter(library_path(f), schema, compression=comp) as writer:
                pending, count, size = [], 0, 0
                for batch in prefetch(table.batches(min(rows, 1 << 18)), depth=4):
                    pending.append(batch.replace_schema_metadata(schema.metadata))
                    if options.progress:
                        options.progress(batch.nbytes)
                    count, size = count + batch.num_rows, size + batch.nbytes
                    # a row group per row_group_size rows, memory bounded by ~64 MiB
                    if count >= rows or size >= 64 << 20:
                        writer.write_table(pa.Table.from_batches(pending, schema), rows)
                        pending, count, size = [], 0, 0
                if pending or not table.num_rows:
                    writer.write_table(pa.Table.from_batches(pending, schema), rows)
        except MlconvError:
            raise
        except layouts.arrow_errors() as e:
            raise UnsupportedError(f"Parquet refused the data: {layouts.one_line(e)}",
                                   path) from None


FORMAT = Parquet(
    id="parquet",
    description="Apache Parquet (pyarrow): tables; tensors in rows/entries layout",
    extensions=(".parquet", ".pq"),
    caps=Capabilities(tensors=True, tables=True, metadata=True, nulls=True, attrs=True,
                      dtypes=layouts.HELD, compressions=("zstd", "snappy", "lz4", "gzip",
                                                         "none")),
    requires=("pyarrow",),
    magic=(MAGIC, b"PARE"),  # PARE: an encrypted footer, refused with a clear error
)
