"""npy: one array per file (numpy's own format). Structured arrays read and write as Tables.

We parse the header ourselves (no numpy needed to inspect, sizes checked against the file, a
capped header length, never a pickle). Writers pad the header so data starts at 4 KiB.
"""

from __future__ import annotations

import ast
import io
import os
import struct
import tokenize

from .. import dtypes as D
from ..errors import FormatError, LossyConversionError, UnsafeInputError, UnsupportedError
from ..model import Bundle, Table, TableSource, Tensor
from ..sources import FileMap, FileSource
from .base import ALIGN, Capabilities, Format, stem_name

MAGIC = b"\x93NUMPY"
MAX_HEADER = 1 << 18      # numpy itself refuses headers over 10 000 bytes by default
NUMPY_HEADER_LIMIT = 10000
_KEYS = {"descr", "fortran_order", "shape"}


class Header:
    """A checked npy header: what the array is and where its bytes start."""

    def __init__(self, version, descr, fortran, shape, data_offset):
        self.version = version
        self.descr = descr
        self.fortran = fortran
        self.shape = shape
        self.data_offset = data_offset
        self.fields = None  # [(name, DType, byteorder, itemsize)] for structured arrays
        self.float128 = None  # a long double's bit layout (dtypes.longdouble_layout)
        if isinstance(descr, list):
            self.fields, self.itemsize = _parse_fields(descr)
            self.dtype, self.byteorder = None, "<"
        else:
            self.float128 = _long_double(descr)
            if self.float128 is not None:  # held as raw bytes, its layout in attrs
                self.dtype, self.byteorder, self.itemsize = D.DType.bytes, "|", \
                    self.float128["size"]
            else:
                self.dtype, self.byteorder, self.itemsize = D.from_npy_descr(descr)

    @property
    def attrs(self) -> dict:
        return {D.FLOAT128_ATTR: self.float128} if self.float128 is not None else {}

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.count * self.itemsize


def _long_double(descr) -> dict | None:
    """The layout of a real long double descr ('<f16', '<f12') as np.load reads it here."""
    import re

    if not isinstance(descr, str) or not re.fullmatch(r"[<=]f(12|16)", descr):
        return None
    return D.longdouble_layout(int(descr[2:]))


def _parse_fields(descr: list):
    fields, itemsize, seen = [], 0, set()
    for item in descr:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], str)):
            raise UnsupportedError(f"structured npy field {item!r} (nested, titled or "
                                   "sub-array fields) is not supported")
        name, fdescr = item
        if name == "" and fdescr.startswith("|V") and fdescr[2:].isdigit():
            itemsize += int(fdescr[2:])  # numpy's padding between aligned fields
            continue
        dtype, order, size = D.from_npy_descr(fdescr)
        if name in seen or not _utf8(name):
            raise FormatError(f"structured npy field name {name!r} repeated or not text")
        fields.append((name, dtype, order, size))
        seen.add(name)
        itemsize += size
    if not fields:
        raise UnsupportedError("structured npy dtype with no fields")
    return fields, itemsize


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _literal(text: str):
    """Evaluate the header dict safely; accepts Python 2's ``3L`` long literals."""
    if "L" in text:
        toks, prev = [], None
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if not (tok.type == tokenize.NAME and tok.string == "L"
                    and prev is not None and prev.type == tokenize.NUMBER):
                toks.append((tok.type, tok.string))
            prev = tok
        text = tokenize.untokenize(toks)
    import warnings

    with warnings.catch_warnings():  # a hostile header would print SyntaxWarnings
        warnings.simplefilter("ignore")
        return ast.literal_eval(text)


def _has_object(descr) -> bool:
    if isinstance(descr, str):
        return descr.lstrip("<>|=").startswith("O")
    if isinstance(descr, list):
        return any(isinstance(x, tuple) and len(x) >= 2 and _has_object(x[1]) for x in descr)
    return False


def parse_header(prefix: bytes, path, entry=None, limit: int | None = None) -> Header:
    """Parse an npy header from the first bytes of the array (as many as ``needed`` says).

    ``prefix`` must hold the whole header (see ``header_size``); ``limit`` is the number of
    bytes available after it, checked against the declared data size.
    """
    size = header_size(prefix[:12], path, entry)
    raw = prefix[size[0]:size[1]]
    if len(raw) != size[1] - size[0]:
        raise FormatError("truncated npy header", path, entry)
    major = prefix[6]
    try:
        text = raw.decode("utf-8" if major >= 3 else "latin1")
        d = _literal(text)
    except (ValueError, SyntaxError, tokenize.TokenError, MemoryError, RecursionError,
            UnicodeDecodeError, TypeError):
        raise FormatError("npy header is not a valid Python literal", path, entry) from None
    if not isinstance(d, dict) or set(d) != _KEYS:
        raise FormatError(f"npy header must have exactly the keys {sorted(_KEYS)}", path, entry)
    shape, fortran, descr = d["shape"], d["fortran_order"], d["descr"]
    if not (isinstance(shape, tuple) and all(type(x) is int and x >= 0 for x in shape)):
        raise FormatError(f"npy header has an invalid shape {shape!r}", path, entry)
    if not isinstance(fortran, bool):
        raise FormatError("npy header has an invalid fortran_order", path, entry)
    if _has_object(descr):
        raise UnsafeInputError(
            f"npy dtype {descr!r} is a pickled object array; mlconv never unpickles",
            path, entry)
    try:
        h = Header(f"{major}.{prefix[7]}", descr, fortran, shape, size[1])
    except (UnsupportedError, FormatError) as e:
        raise type(e)(e.message, path, entry) from None
    if limit is not None and h.nbytes > limit:
        raise FormatError(f"npy data truncated: shape {shape} needs {h.nbytes} bytes, "
                          f"{limit} present", path, entry)
    return h


def header_size(first: bytes, path, entry=None) -> tuple[int, int]:
    """(start, end) of the header text from the first 12 bytes; checks magic and the cap."""
    if len(first) < 10 or not first.startswith(MAGIC):
        raise FormatError("not an npy file (bad magic)", path, entry)
    major = first[6]
    if major == 1:
        start, hlen = 10, struct.unpack("<H", first[8:10])[0]
    elif major in (2, 3):
        if len(first) < 12:
            raise FormatError("truncated npy header", path, entry)
        start, hlen = 12, struct.unpack("<I", first[8:12])[0]
    else:
        raise FormatError(f"unsupported npy version {major}.{first[7]}", path, entry)
    if hlen > MAX_HEADER:
        raise FormatError(f"npy header length {hlen} exceeds the {MAX_HEADER}-byte cap",
                          path, entry)
    return start, start + hlen


def read_header(f, path, size: int, entry=None) -> Header:
    first = f.read(12)
    _start, end = header_size(first, path, entry)
    if end > size:
        raise FormatError("truncated npy header", path, entry)
    rest = f.read(end - len(first)) if end > len(first) else b""
    return parse_header(first + rest, path, entry, limit=size - end)


def make_header(descr, shape, fortran: bool = False, align: int = ALIGN) -> bytes:
    """An npy header whose data starts on ``align`` (smaller when numpy's cap forbids it)."""
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {tuple(shape)!r}, }}"
    try:
        body, major = text.encode("latin1"), 1
    except UnicodeEncodeError:
        body, major = text.encode("utf-8"), 3
    pre = 10 if major == 1 else 12
    if pre + len(body) + 1 > 2 * ALIGN - 1 or pre + len(body) + 1 > NUMPY_HEADER_LIMIT:
        align = 64
    total = -(-(pre + len(body) + 1) // align) * align
    if major == 1 and total - pre > 0xFFFF:
        major, pre = 2, 12
        total = -(-(pre + len(body) + 1) // align) * align
    body = body + b" " * (total - pre - len(body) - 1) + b"\n"
    length = struct.pack("<H", len(body)) if major == 1 else struct.pack("<I", len(body))
    return MAGIC + bytes([major, 0]) + length + body


# --- tables (structured arrays) ------------------------------------------------------------

class StructuredSource(TableSource):
    """A 1-D structured array (memory-mapped when asked for) as record batches."""

    def __init__(self, h: Header, get_array, path, entry):
        self.h, self.get_array, self.path, self.entry = h, get_array, path, entry
        self.num_rows = h.shape[0]
        self._schema = self._fields = self._array = None  # built once (10,000 fields)

    def schema(self):
        import pyarrow as pa

        from .records import arrow_type

        def typ(dt):  # times Arrow has no unit for go through the shared codec (exact)
            return D.to_arrow(dt) if dt.kind not in ("datetime", "timedelta") else \
                arrow_type(dt.numpy())

        if self._schema is None:
            self._schema = pa.schema([pa.field(name, typ(dt))
                                      for name, dt, _, _ in self.h.fields])
            self._fields = {f.name: f for f in self._schema}
        return self._schema

    def batches(self, rows: int, columns=None):
        import pyarrow as pa

        from .records import to_arrow

        if self._array is None:
            self._array = self.get_array()
        sch = self.schema()
        if columns is not None:  # only the columns asked for: O(1) work per column read
            sch = pa.schema([self._fields[c] for c in columns])
        for i in range(0, self.h.shape[0], rows):
            block = self._array[i:i + rows]
            cols = [to_arrow(block[f.name], f.type, f.name, self.path, self.entry)
                    for f in sch]
            yield pa.RecordBatch.from_arrays(cols, schema=sch)


def structured_table(h: Header, get_array, encoding: dict, path, entry) -> Table:
    """A Table over a 1-D structured array; ``get_array()`` returns it (memory-mapped)."""
    if len(h.shape) != 1:
        raise UnsupportedError(f"structured array of shape {h.shape} (only 1-D reads as a "
                               "table)", path, entry)
    columns = [(name, dt.value) for name, dt, _, _ in h.fields]
    return Table(columns, StructuredSource(h, get_array, path, entry), encoding=encoding)


def _field_descr(field) -> str | None:
    """The npy descr of an Arrow column (dictionaries by their values), or None when npy
    has no fixed-width dtype for it."""
    import pyarrow as pa

    typ = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
    dt = D.from_arrow(typ)
    return D.to_npy_descr(dt) if dt is not None and dt.bits is not None else None


def _write_table(table: Table, sink, path, name) -> None:
    import numpy as np
    import pyarrow as pa

    descr = table.encoding.get("npy_descr")
    if descr is None:
        descr = []
        for field in table.schema:
            code = _field_descr(field)
            if code is None:
                raise UnsupportedError(f"column {field.name!r} of type {field.type} has no "
                                       "fixed-width npy dtype", path, name)
            descr.append((field.name, code))
    if table.num_rows is None:
        raise UnsupportedError("table of unknown length cannot be written as npy", path, name)
    rec = np.dtype(descr)
    sink.write(make_header(descr, (table.num_rows,)))
    written = 0
    for batch in table.batches(65536):
        out = np.zeros(batch.num_rows, dtype=rec)
        for col in rec.names:
            column = batch.column(col)
            if pa.types.is_dictionary(column.type):
                column = column.dictionary_decode()
            if column.null_count:
                raise LossyConversionError(
                    f"column {col!r} has nulls, which npy cannot hold", path, name)
            out[col] = column.to_numpy(zero_copy_only=False)
        sink.write(out.tobytes())
        written += batch.num_rows
    if written != table.num_rows:
        raise FormatError(f"table yielded {written} rows, {table.num_rows} announced",
                          path, name)


# --- the format ------------------------------------------------------------------------------

class Npy(Format):
    def unheld_columns(self, table: Table) -> list[tuple[str, str]]:
        if table.encoding.get("npy_descr") is not None:
            return []
        return [(f.name, f"column of type {f.type} (npy holds fixed-width columns only)")
                for f in table.schema if _field_descr(f) is None]

    def read(self, path: str, options) -> Bundle:
        size = os.path.getsize(path)
        name = stem_name(path)
        with open(path, "rb") as f:
            h = read_header(f, path, size, name)
        fmap = FileMap(path)
        encoding = {"npy_version": h.version, "fortran_order": h.fortran}
        bundle = Bundle(path=path, format=self.id)
        if h.fields is not None:
            encoding["npy_descr"] = h.descr

            def get_array():
                import numpy as np

                raw = fmap.array()[h.data_offset:h.data_offset + h.nbytes]
                return raw.view(np.dtype(h.descr))

            bundle[name] = structured_table(h, get_array, encoding, path, name)
        else:
            src = FileSource(fmap, h.data_offset, h.dtype, h.shape, h.itemsize, h.byteorder,
                             h.fortran, entry=name)
            bundle[name] = Tensor(src, h.attrs, encoding=encoding)
        bundle.on_close(fmap.close)
        return bundle

    def header_ranges(self, get, size: int, path: str) -> bool:
        head = get(0, 12)
        n = struct.unpack("<H", head[8:10])[0] if head[6] == 1 else \
            struct.unpack("<I", head[8:12])[0]
        get(0, 12 + n)
        return True

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        # the planner fitted the bundle: one entry (caps.max_entries), a dtype npy holds
        sink = options.sink(f.fileno())
        (name, entry), = bundle.items()
        if isinstance(entry, Table):
            _write_table(entry, sink, path, name)  # the sink reports progress
            return
        descr = D.to_npy_descr(entry.dtype, entry.itemsize)
        sink.write(make_header(descr, entry.shape))
        entry.write_to(sink)


FORMAT = Npy(
    representations=(("array", "tensors"), ("structured", "table")),
    id="npy",
    description="NumPy array file",
    extensions=(".npy",),
    caps=Capabilities(tensors=True, tables=True, dtypes=D.NPY_DTYPES, max_entries=1,
                      zero_copy=True, raw_payload=True),
    magic=(MAGIC,),
)


__all__ = [
    "FORMAT",
    "Header",
    "header_size",
    "make_header",
    "parse_header",
    "read_header",
    "structured_table",
]
