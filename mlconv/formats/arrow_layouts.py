"""Tensors <-> Arrow tables (SPEC §2 layout rules), shared by the Parquet and Arrow IPC formats.

- ``rows``: every tensor shares its first axis: one row per sample; 1-D tensors become
  primitive columns, N-D tensors ``arrow.fixed_shape_tensor`` columns.
- ``entries``: one row per tensor: ``name`` string, ``dtype`` canonical name, ``shape``
  list<int64>, ``bytes`` the canonical payload.

Dtypes Arrow lacks (bfloat16, float8, complex) are stored as unsigned integers of the same
width (fixed-size binary for complex) with ``mlconv.dtype`` in the field metadata. The layout
is recorded in the schema metadata under ``mlconv.layout`` so reading back restores the
Bundle exactly.
"""

from __future__ import annotations

import json

from .. import dtypes as D
from ..columns import WIDTH_KEY, table_tensors
from ..dtypes import DType
from ..errors import FormatError, LossyConversionError, MlconvError, UnsupportedError
from ..fileio import CHUNK
from ..model import Bundle, Table, TableSource, Tensor
from ..sources import Source, element_dtype

LAYOUT_KEY = b"mlconv.layout"
ATTRS_KEY = b"mlconv.attrs"     # JSON: a table's attrs; per field: a column tensor's attrs
GROUPS_KEY = b"mlconv.groups"   # JSON: group name -> attrs
# tensor dtypes a layout stores (text as string/binary columns, UCS4 payload in entries)
HELD = frozenset(d for d in D.NUMERIC if not d.is_subbyte) | {DType.string, DType.bytes}
FSL_MAX = (1 << 31) - 1  # values in one row of an Arrow fixed-size list
BATCH_BYTES = 16 << 20  # rows per batch are chosen to keep a batch near this size


def layout_option():
    """The ``layout`` write option Parquet and Arrow IPC both declare."""
    from .base import option

    return option("Tensors into Parquet/Arrow: one row per sample (rows) or per tensor "
                  "(entries); default rows when every tensor shares its first axis.",
                  choices=("rows", "entries"))


def representation(bundle: Bundle, layout: str | None) -> str:
    """The node a write makes: the table, or tensors in the rows/entries layout."""
    if any(isinstance(e, Table) for e in bundle.values()):
        return "table"
    try:
        return choose(bundle, layout)
    except UnsupportedError:
        return "entries" if layout is None else layout


def travel(bundle: Bundle, entry, layout: str | None, general):
    """In the entries layout one row holds a whole tensor: it is built in memory."""
    if isinstance(entry, Table) or any(isinstance(e, Table) for e in bundle.values()):
        return general
    try:
        layout = choose(bundle, layout)
    except UnsupportedError:
        return general  # the write itself reports an impossible layout
    if layout == "entries" and general[0] != "in-memory":
        notes = [] if general[0] == "zero-copy" or general[1] == "bounded chunks" \
            else [general[1]]
        return "in-memory", "; ".join(notes + ["one row holds the whole tensor"])
    return general


def _pa():
    import pyarrow as pa

    return pa


def schema_columns(schema, path) -> list[tuple[str, str]]:
    """(name, type name) of each column; a name that is not UTF-8 (pyarrow decodes names
    only when asked, and then raises) is refused here, once, at the reader."""
    try:
        return [(f.name, D.arrow_type_name(f.type)) for f in schema]
    except UnicodeDecodeError:
        raise FormatError("a column name (or a nested field name) is not UTF-8 text",
                          path) from None


def to_column(values, dtype: DType):
    """An Arrow array of rows from a numpy block (rows along axis 0)."""
    import numpy as np

    pa = _pa()
    typ, meta = D.arrow_storage(dtype)
    le = values.dtype.newbyteorder("<") if values.dtype.itemsize > 1 else values.dtype
    block = np.ascontiguousarray(values, dtype=le)
    if dtype.value.endswith("[s]") and dtype.kind in ("datetime", "timedelta"):
        if block.size and np.abs(block.view(np.int64)).max() > np.iinfo(np.int64).max // 1000:
            raise LossyConversionError(f"{dtype.value} values beyond the millisecond range "
                                       "Arrow/Parquet tables hold")
        block = block.astype(f"{block.dtype.kind}8[ms]")  # exact: seconds * 1000
    flat = block.reshape(-1)
    if pa.types.is_fixed_size_binary(typ):
        raw = pa.py_buffer(flat.view(np.uint8))
        flat_arr = pa.FixedSizeBinaryArray.from_buffers(typ, len(flat), [None, raw])
    else:
        as_uint = meta and pa.types.is_unsigned_integer(typ)
        flat_arr = pa.array(flat.view(f"<u{dtype.bits // 8}") if as_uint else flat, type=typ)
    if block.ndim == 1:
        return flat_arr
    per_row = int(np.prod(block.shape[1:]))
    lists = pa.FixedSizeListArray.from_arrays(flat_arr, per_row)
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(typ, list(block.shape[1:])),
                                          lists)


# --- writing tensors as a table ----------------------------------------------------------

def choose(bundle: Bundle, layout: str | None) -> str:
    tensors = list(bundle.values())
    rows_ok = bool(tensors) and all(t.shape for t in tensors) and \
        len({t.shape[0] for t in tensors}) == 1
    if layout == "rows" and not rows_ok:
        raise UnsupportedError("--layout rows needs every tensor to share its first axis "
                               "(and none to be 0-d); use --layout entries", bundle.path)
    return layout or ("rows" if rows_ok else "entries")


class _EntriesSource(TableSource):
    """One row per tensor: name, dtype, shape and the payload (a whole tensor per row)."""

    def __init__(self, bundle: Bundle, schema):
        self.bundle, self._schema, self.num_rows = bundle, schema, len(bundle)

    def schema(self):
        return self._schema

    def batches(self, rows: int, columns=None):
        pa = _pa()
        for name, t in self.bundle.items():
            data = b"".join(bytes(c) for c in t.chunks())
            yield pa.RecordBatch.from_arrays(
                [pa.array([name]), pa.array([t.dtype.value]),
                 pa.array([list(t.shape)], pa.list_(pa.int64())),
                 pa.array([data], pa.large_binary())], schema=self._schema)


class _RowsSource(TableSource):
    """One row per sample: each tensor a column, streamed in blocks of rows."""

    def __init__(self, bundle: Bundle, schema):
        self.bundle, self._schema = bundle, schema
        self.num_rows = next(iter(bundle.values())).shape[0]
        self.row_bytes = max(1, sum(t.nbytes // max(1, t.shape[0]) for t in bundle.values()))

    def schema(self):
        return self._schema

    def batches(self, rows: int, columns=None):
        pa = _pa()
        tensors = list(self.bundle.values())
        step = max(1, min(rows, BATCH_BYTES // self.row_bytes))
        blocks = [t.blocks(step) for t in tensors]
        for _ in range(0, self.num_rows, step):
            cols = [to_column(next(it), t.dtype) for it, t in zip(blocks, tensors, strict=True)]
            yield pa.RecordBatch.from_arrays(cols, schema=self._schema)


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, default=str).encode()


def _rows_field(name: str, t: Tensor, path):
    """The column of one tensor in the rows layout (its per-row shape, dtype tag, attrs)."""
    pa = _pa()
    typ, fmeta = D.arrow_storage(t.dtype)
    if len(t.shape) > 1:
        per_row = 1
        for d in t.shape[1:]:
            per_row *= d
        if per_row > FSL_MAX:
            raise UnsupportedError(
                f"a row of shape {list(t.shape[1:])} holds {per_row} values; Arrow's "
                f"fixed-size lists hold at most {FSL_MAX}; use --layout entries", path, name)
        typ = pa.fixed_shape_tensor(typ, list(t.shape[1:]))
    if t.dtype.bits is None:  # text columns are variable: keep numpy's fixed width
        fmeta = {WIDTH_KEY: str(t.itemsize).encode()}
    if t.attrs:
        fmeta = dict(fmeta or {})
        fmeta[ATTRS_KEY] = _json(t.attrs)
    return pa.field(name, typ, metadata=fmeta)


def tensor_table(bundle: Bundle, layout: str | None) -> Table:
    """A Table holding every tensor of ``bundle`` in the chosen layout."""
    pa = _pa()
    if not len(bundle):  # a 0-row entries table would pass for a file of tensors
        raise UnsupportedError("nothing to write: the source holds no entries", bundle.path)
    layout = choose(bundle, layout)
    meta = {k.encode(): v.encode() for k, v in bundle.metadata.items()}
    meta[LAYOUT_KEY] = layout.encode()
    meta.update(extra_metadata(bundle))
    if layout == "entries":
        attrs = {n: t.attrs for n, t in bundle.items() if t.attrs}
        if attrs:
            meta[ATTRS_KEY] = _json(attrs)
        schema = pa.schema([pa.field("name", pa.string()), pa.field("dtype", pa.string()),
                            pa.field("shape", pa.list_(pa.int64())),
                            pa.field("bytes", pa.large_binary())], metadata=meta)
        source: TableSource = _EntriesSource(bundle, schema)
    else:
        schema = pa.schema([_rows_field(n, t, bundle.path) for n, t in bundle.items()],
                           metadata=meta)
        source = _RowsSource(bundle, schema)
    return Table([(f.name, str(f.type)) for f in schema], source)


def extra_metadata(bundle: Bundle, table: Table | None = None) -> dict[bytes, bytes]:
    """Group attrs (and a plain table's attrs) as schema metadata."""
    meta = {}
    if bundle.group_attrs:
        meta[GROUPS_KEY] = json.dumps(bundle.group_attrs, ensure_ascii=False, default=str).encode()
    if table is not None and table.attrs:
        meta[ATTRS_KEY] = json.dumps(table.attrs, ensure_ascii=False, default=str).encode()
    return meta


MAX_DEPTH = 64  # nesting of JSON metadata we agree to decode (recursion everywhere after)


def shallow_json(raw, path=None, what: str = "metadata"):
    """``json.loads`` of metadata, refusing nesting deeper than MAX_DEPTH (checked on the
    brackets outside strings, before parsing) so no later step can recurse without end."""
    import itertools
    import re

    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    brackets = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    steps = (1 if c in "[{" else -1 for c in re.findall(r"[\[\]{}]", brackets))
    if max(itertools.accumulate(steps, initial=0)) > MAX_DEPTH:
        raise FormatError(f"{what} JSON nested deeper than {MAX_DEPTH} levels", path, what)
    return json.loads(text)


def restore_attrs(bundle: Bundle, schema) -> None:
    """Put back what ``extra_metadata`` and the field metadata stored."""
    meta = schema.metadata or {}
    path = bundle.path
    try:
        if GROUPS_KEY in meta:
            bundle.group_attrs = dict(shallow_json(meta[GROUPS_KEY], path, "mlconv.groups"))
        attrs = shallow_json(meta[ATTRS_KEY], path, "mlconv.attrs") if ATTRS_KEY in meta \
            else {}
        layout = meta.get(LAYOUT_KEY)
        for name, entry in bundle.items():
            if isinstance(entry, Table):
                entry.attrs = dict(attrs) if layout is None else {}
            elif layout == b"entries":
                entry.attrs = dict(attrs.get(name, {}))
            else:
                fmeta = schema.field(name).metadata or {}
                if ATTRS_KEY in fmeta:
                    entry.attrs = dict(shallow_json(fmeta[ATTRS_KEY], path, "mlconv.attrs"))
    except FormatError:
        raise
    except (ValueError, TypeError, KeyError):
        pass  # unreadable mlconv metadata from another writer: keep what we have


def extension_notes(schema, path) -> list[str]:
    """Notes for columns whose extension type pyarrow did not know (read as storage)."""
    notes = []
    for field in schema:
        name = (field.metadata or {}).get(b"ARROW:extension:name")
        if name is not None:
            notes.append(f"column {field.name!r}: unknown extension type "
                         f"{name.decode('utf-8', 'replace')!r} read as its storage type "
                         f"{field.type} ({path})")
    return notes


def file_metadata(schema) -> dict[str, str]:
    """Schema metadata as Bundle metadata, minus mlconv's own keys and Arrow's."""
    out = {}
    for k, v in (schema.metadata or {}).items():
        if k.startswith(b"mlconv.") or k == b"ARROW:schema":
            continue
        out[k.decode("utf-8", "backslashreplace")] = v.decode("utf-8", "backslashreplace")
    return out


def read_bundle(table: Table, name: str, path, format_id: str, entries_reader) -> Bundle:
    """What a Parquet/Arrow file holds: the tensors it was written from, else its one table
    (named ``name``), with metadata, attrs and notes restored from the schema."""
    schema = table.schema
    try:
        bundle = decode(table, name, path, entries_reader)
    except MlconvError:
        raise
    except arrow_errors() as e:
        raise FormatError(f"corrupt data: {one_line(e)}", path) from None
    if bundle is None:
        bundle = Bundle(metadata=file_metadata(schema), path=path)
        bundle[name] = table
    restore_attrs(bundle, schema)
    bundle.notes.extend(extension_notes(schema, path))
    bundle.format = format_id
    return bundle


def decode(table: Table, name: str, path, entries_reader=None) -> Bundle | None:
    """The Bundle a table written by ``tensor_table`` holds, or None for a plain table.

    ``entries_reader(row) -> buffer`` gives the bytes of one entries-layout row lazily.
    """
    schema = table.schema
    layout = (schema.metadata or {}).get(LAYOUT_KEY)
    if layout is None:
        return None
    bundle = Bundle(metadata=file_metadata(schema), path=path)
    if layout == b"rows":
        bundle.update(table_tensors(table, name, path, prefix=False, text=True))
        return bundle
    if layout != b"entries":
        raise UnsupportedError(f"unknown mlconv.layout {layout!r}", path)
    row = 0
    for batch in table.batches(65536, columns=["name", "dtype", "shape"]):
        for rec in batch.to_pylist():
            try:
                if not isinstance(rec["name"], str) or not isinstance(rec["dtype"], str):
                    raise TypeError("name and dtype must be text")
                dtype = D.parse(rec["dtype"])
                shape = tuple(int(d) for d in rec["shape"])
                if any(d < 0 for d in shape):
                    raise ValueError(shape)
            except (UnsupportedError, TypeError, ValueError):
                raise FormatError(f"entries row {row} has an invalid name/dtype/shape",
                                  path, str(rec.get("name"))) from None
            if rec["name"] in bundle:
                raise FormatError(f"entries row {row} repeats the name of an earlier row "
                                  "(one would silently replace the other)", path, rec["name"])
            bundle[rec["name"]] = Tensor(EntrySource(entries_reader, row, dtype, shape,
                                                     path, rec["name"]))
            row += 1
    return bundle


class EntrySource(Source):
    """The payload of one entries-layout row, read when asked for."""

    held = True

    def __init__(self, reader, row: int, dtype: DType, shape, path, entry):
        super().__init__(dtype, shape)
        self.reader, self.row, self.path, self.entry = reader, row, path, entry

    def _buffer(self):
        buf = self.reader(self.row)
        if self.dtype.bits is None and buf is not None and self.count:
            # text: fixed-width elements (UCS4 / raw), the width follows from the length
            width = len(buf) // self.count
            if width and width * self.count == len(buf) and \
                    (self.dtype is DType.bytes or width % 4 == 0):
                self.itemsize = width
        if buf is None or len(buf) != (self.nbytes or 0):
            raise FormatError(f"entry holds {0 if buf is None else len(buf)} bytes, its "
                              f"dtype and shape need {self.nbytes}", self.path, self.entry)
        return buf

    def array(self):
        import numpy as np

        from ..sources import unpack4

        buf = self._buffer()
        if self.dtype.is_subbyte:
            return unpack4(buf, self.dtype, self.count).reshape(self.shape)
        if self.dtype.bits is None:
            if not self.count:
                return np.zeros(self.shape, "U1" if self.dtype is DType.string else "S1")
            return np.frombuffer(buf, element_dtype(self.dtype, self.itemsize),
                                 self.count).reshape(self.shape)
        return np.frombuffer(buf, self.dtype.numpy(), self.count).reshape(self.shape)

    def chunks(self, size: int = CHUNK):
        buf = memoryview(self._buffer())
        for i in range(0, len(buf), size):
            yield buf[i:i + size]



# --- shared by the Arrow-table formats (Parquet, Arrow IPC) -------------------------------

def arrow_errors():
    """What pyarrow raises on bad input (EOFError: a stream that ends early; left alone it
    would reach click, which reads it as the user's Ctrl-D)."""
    pa = _pa()
    return (OSError, pa.ArrowException, ValueError, IndexError, KeyError, UnicodeDecodeError,
            EOFError)


def one_line(e) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def table_for_writing(bundle: Bundle, layout: str | None, path: str) -> Table:
    """The one table a Parquet/Arrow file will hold for ``bundle``."""
    tables = [e for e in bundle.values() if isinstance(e, Table)]
    if tables and len(tables) != len(bundle):
        raise UnsupportedError("a file holds one table: this bundle mixes tables and "
                               "tensors (use --select)", path)
    if len(tables) > 1:
        raise UnsupportedError(f"a file holds one table; the source has {len(tables)} "
                               f"({', '.join(list(bundle)[:5])}); use --select NAME", path)
    if tables:
        if layout:
            raise UnsupportedError("--layout applies to tensors, not tables", path)
        return tables[0]
    return tensor_table(bundle, layout)


def with_metadata(schema, bundle: Bundle, table: Table):
    """The schema to write: the table's own, plus file metadata, group and table attrs."""
    meta = dict(schema.metadata or {})
    meta.update({k.encode(): v.encode() for k, v in bundle.metadata.items()})
    if (schema.metadata or {}).get(LAYOUT_KEY) is None:
        meta.update(extra_metadata(bundle, table))
    return schema.with_metadata(meta)
