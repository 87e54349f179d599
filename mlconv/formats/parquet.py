"""Parquet through pyarrow: tables streamed as record batches both ways.

A file reads as one Table (named after the file stem), or, when it was written from
tensors, as those tensors again (``formats.arrow_layouts``). Writing takes one table, or a tensor
Bundle in the rows/entries layout. Thrift sizes are capped; encrypted files are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import ranged
from ..atomic import library_path
from ..errors import FormatError, MlconvError, UnsupportedError
from ..fileio import prefetch
from ..model import Bundle, Table, TableSource
from ..sources import check_memory
from . import arrow_layouts as layouts
from .base import Capabilities, Format, option, stem_name

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
        _refuse_encrypted_columns(fh, path)
    limit = thrift_limit(path)
    try:  # a remote copy holding the footer only: column chunks fetched as they are read
        return pq.ParquetFile(ranged.source(path), thrift_string_size_limit=limit,
                              thrift_container_size_limit=limit)
    except layouts.arrow_errors() as e:
        raise FormatError(f"not a readable Parquet file: {layouts.one_line(e)}", path) from None


def _refuse_encrypted_columns(fh, path: str) -> None:
    """A plaintext footer over encrypted columns (FileMetaData field 8): pyarrow would abort
    the process on the first column's metadata, so refuse before it looks."""
    from ._thrift import top_level_fields

    size = fh.seek(0, os.SEEK_END)
    if size < 12:
        return  # pyarrow says what is wrong with a file this small
    fh.seek(size - 8)
    n = int.from_bytes(fh.read(4), "little")
    if n > size - 12 or n > THRIFT_LIMIT:
        return  # pyarrow refuses an impossible footer length itself
    fh.seek(size - 8 - n)
    try:
        fields = top_level_fields(fh.read(n))
    except FormatError:
        return  # a damaged footer: pyarrow's parser reports it
    if 8 in fields:
        raise FormatError("encrypted Parquet file (plaintext footer, encrypted columns): "
                          "decryption keys are required and mlconv does not take them", path)


def _tail(path: str) -> bytes:
    """The footer length field (4 bytes before the closing magic)."""
    with open(path, "rb") as fh:
        fh.seek(-8, os.SEEK_END)
        return fh.read(4)


PAGE_VALUES = (1 << 31) - 1  # a data page counts its values in an int32
PAGE_HEADER = 8              # bytes: no page header is smaller


def _checked_rows(rg, i: int, before: int, size: int, path: str) -> int:
    """A row group's row count, refused unless the file could hold that many: each page
    holds at most 2^31 - 1 values and costs a header, pages do not overlap, so the file's
    bytes bound the rows of all groups together. (Column chunk metadata is not consulted:
    pyarrow aborts the process on some corrupt ones, see ``check``.)"""
    rows = rg.num_rows
    bound = (size // PAGE_HEADER + 1) * PAGE_VALUES
    if rows < 0 or before + rows > bound:
        raise FormatError(f"row group {i} declares {rows} rows, more than its "
                          f"{size}-byte file can hold", path)
    return rows


_PROBE = ("import sys, pyarrow.parquet as pq\n"
          "m = pq.ParquetFile(sys.argv[1], thrift_string_size_limit=int(sys.argv[2]),\n"
          "                   thrift_container_size_limit=int(sys.argv[2])).metadata\n"
          "for i in range(m.num_row_groups):\n"
          "    rg = m.row_group(i)\n"
          "    for j in range(rg.num_columns):\n"
          "        rg.column(j)\n")


def _column_metadata_crash(path: str) -> str | None:
    """Why pyarrow cannot even list this file's column chunks, or None. Some corrupt
    column metadata (level histograms of the wrong size) make pyarrow abort the process
    (C++ ``terminate``) rather than raise, so the walk is tried in a child first."""
    import subprocess
    import sys

    try:
        res = subprocess.run([sys.executable, "-c", _PROBE, path, str(THRIFT_LIMIT)],
                             capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "pyarrow did not finish reading the column metadata within 60 s"
    if res.returncode < 0:
        why = res.stderr.decode("utf-8", "replace").strip().splitlines()
        why = why[1].strip() if len(why) > 1 and "what()" in why[1] else "no reason given"
        return f"corrupt column metadata: pyarrow aborts reading it ({why[:200]})"
    return None


class ParquetSource(TableSource):
    """A Parquet file's row groups as record batches, or one row group at a time."""

    def __init__(self, pf, path: str, name: str, rows: int):
        self.pf, self.path, self.name = pf, path, name
        self.num_rows = rows  # the row groups' (checked) sum
        meta = pf.metadata
        self.piece_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def schema(self):
        return self.pf.schema_arrow

    def batches(self, rows: int, columns=None):
        seen = 0
        try:
            for batch in self.pf.iter_batches(batch_size=rows, columns=columns):
                seen += batch.num_rows
                yield batch
        except layouts.arrow_errors() as e:
            raise FormatError(f"corrupt data: {layouts.one_line(e)}", self.path,
                              self.name) from None
        if seen != self.num_rows:  # pyarrow skips pages of unknown type: rows would vanish
            raise FormatError(f"the row groups declare {self.num_rows} rows but their pages "
                              f"hold {seen} (a page of unknown type?)", self.path, self.name)

    def piece(self, k: int, columns):
        import pyarrow as pa

        schema = self.schema()
        try:  # in batches: read_row_group decodes tensor columns in ~15x their size of RAM
            parts = list(self.pf.iter_batches(8192, row_groups=[k], columns=columns))
            return pa.Table.from_batches(parts, pa.schema([schema.field(c) for c in columns]))
        except layouts.arrow_errors() as e:
            raise FormatError(f"corrupt data: {layouts.one_line(e)}", self.path,
                              self.name) from None


def plain_table(pf, path: str, name: str, rows: int) -> Table:
    return Table(layouts.schema_columns(pf.schema_arrow, path),
                 ParquetSource(pf, path, name, rows))


@dataclass(frozen=True)
class ParquetOptions:
    layout: str | None = layouts.layout_option()
    row_group_size: int | None = option("Rows per Parquet row group.", metavar="ROWS",
                                        minimum=1)


GROUP_BYTES = 8 << 20  # a row group's (uncompressed) bytes unless --row-group-size says
# A column chunk is dictionary-encoded until its dictionary reaches this size, then falls
# back to plain: pyarrow's 1 MiB hashes ~130k values of every high-cardinality column of
# every row group before giving up (4x the CPU of the whole write, and larger files, since
# the abandoned dictionary stays); 64 KiB keeps dictionaries for low-cardinality columns.
DICTIONARY_BYTES = 64 << 10


class Parquet(Format):
    def travel(self, bundle, name, entry, options, general):
        return layouts.travel(bundle, entry, self.own(options).layout, general)

    def representation(self, bundle, options):
        return layouts.representation(bundle, self.own(options).layout)

    def header_ranges(self, get, size: int, path: str) -> bool:
        import struct

        if size < 12 or get(size - 4, size) != b"PAR1":
            return False
        n = struct.unpack("<I", get(size - 8, size - 4))[0]
        if n + 12 > size:
            return False  # the reader says what is wrong
        get(size - 8 - n, size)  # the rest (column chunks) is fetched as it is read
        return True

    def read(self, path: str, options) -> Bundle:
        ranged.claim(path)  # every read below goes through the ParquetFile's source
        pf = _open(path)
        name = stem_name(path)
        starts = []
        total = 0
        size = os.path.getsize(path)
        for i in range(pf.metadata.num_row_groups):
            starts.append(total)
            total += _checked_rows(pf.metadata.row_group(i), i, total, size, path)
        table = plain_table(pf, path, name, total)

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
        crash = _column_metadata_crash(path)
        if crash:
            problems.append((None, crash))
            return problems, warnings
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
                seen = sum(b.num_rows for b in checked.iter_batches(65536))
                declared = sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
                if seen != declared:
                    problems.append((None, f"the row groups declare {declared} rows but "
                                           f"their pages hold {seen} (a page of unknown "
                                           "type?)"))
            except layouts.arrow_errors() as e:
                problems.append((None, f"corrupt data: {layouts.one_line(e)}"))
        if deep and not problems:  # pages are sound: now each tensor as convert reads it
            tensors = Bundle(path=path)
            for name, entry in bundle.items():
                if entry.kind != "table":
                    tensors[name] = entry
            more, _ = super().check(path, tensors, True)
            problems.extend(p for p in more if p not in problems)
        return problems, warnings

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        import pyarrow.parquet as pq

        table = layouts.table_for_writing(bundle, self.own(options).layout, path)
        schema = layouts.with_metadata(table.schema, bundle, table)
        import pyarrow as pa

        comp = options.compression or self.caps.compressions[0]
        rows = self.own(options).row_group_size or 1 << 20
        # row groups by bytes too: a reader decodes a whole row group for one row of it
        # (random access, inspect --deep), so its size bounds their memory
        limit = (64 << 20) if self.own(options).row_group_size else GROUP_BYTES
        try:
            with pq.ParquetWriter(library_path(f), schema, compression=comp,
                                  dictionary_pagesize_limit=DICTIONARY_BYTES) as writer:
                pending, count, size = [], 0, 0
                for batch in prefetch(table.batches(min(rows, 1 << 18)), depth=4):
                    batch = batch.replace_schema_metadata(schema.metadata)
                    if options.progress:
                        options.progress(batch.nbytes)
                    per_row = batch.nbytes / batch.num_rows if batch.num_rows else 0
                    start = 0
                    while start < batch.num_rows:
                        take = min(batch.num_rows - start, rows - count)
                        if per_row:
                            take = min(take, max(1, int((limit - size) // per_row)))
                        pending.append(batch.slice(start, take))
                        start, count, size = start + take, count + take, size + take * per_row
                        if count >= rows or size >= limit:
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
    representations=(("rows", "tensors"), ("entries", "tensors", "whole"), ("table", "table")),
    write_options=ParquetOptions,
    id="parquet",
    description="Apache Parquet (pyarrow): tables; tensors in rows/entries layout",
    extensions=(".parquet", ".pq"),
    caps=Capabilities(tensors=True, tables=True, metadata=True, nulls=True, attrs=True,
                      dtypes=layouts.HELD, compressions=("zstd", "snappy", "lz4", "gzip",
                                                         "none")),
    requires=("pyarrow",),
    magic=(MAGIC, b"PARE"),  # PARE: an encrypted footer, refused with a clear error
)
