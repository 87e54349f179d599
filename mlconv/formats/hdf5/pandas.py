"""pandas ``DataFrame.to_hdf`` files, read as the DataFrame they hold (a Table).

``format="table"`` (PyTables ``frame_table``): one compound dataset ``<key>/table`` whose
fields are the index, ``values_block_N`` blocks (several columns of one dtype) and data
columns; the column names, order and kinds live in attributes, some pickled by PyTables.
Those pickles are decoded by ``mlconv.safepickle`` (plain lists/dicts only), never loaded.
``format="fixed"`` (``frame``): ``axis0`` (names), ``axis1`` (index) and ``blockN_values``
datasets; read as a Table when every block is numeric, else left as plain datasets.

Values come out as pandas gives them: datetimes (int64 + dtype attr) as timestamps with
NaT as null, strings decoded with the frame's encoding and its ``nan_rep`` as null,
categoricals as dictionary columns with their categories, floats with NaN kept as NaN.
The index is kept as the first column, under its name or ``index``.
"""

from __future__ import annotations

import re
import sys

from ...errors import FormatError, UnsafeInputError, UnsupportedError
from ...model import Bundle, Table, TableSource
from . import safepickle
from .read import H5_ERRORS, chunk_rows, local


def _text(value, default=None):
    if value is None:
        return default
    if hasattr(value, "tobytes") and not isinstance(value, bytes):
        value = value.tobytes() if getattr(value, "dtype", None) is not None \
            and value.dtype.kind == "S" else value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _plain_name(value) -> bool:
    """A column name pandas could have written (hashable, so usable as a key)."""
    if isinstance(value, tuple):
        return all(_plain_name(v) for v in value)
    return isinstance(value, (str, bytes, int, float, bool)) or value is None


def _unpickle(value, what: str, path, entry):
    """A PyTables attribute that may be a pickle: decoded safely, or its plain text."""
    if value is None:
        return None
    raw = bytes(value) if not isinstance(value, str) else value.encode()
    if raw.endswith(b".") and (raw[:1] in (b"(", b"]", b"N", b"I", b"V", b"S")
                               or raw[:1] == b"\x80"):
        try:
            return safepickle.loads(raw, what)
        except UnsupportedError:
            raise
        except Exception as e:  # noqa: BLE001 - the reader above reports its own errors
            raise FormatError(f"{what}: {e}", path, entry) from None
    return raw.decode("utf-8", "replace")


def _named_zone(tz, path, entry) -> None:
    """A time zone pandas pickled as an object (a fixed offset), not a name: refused, where
    dropping it would shift every timestamp's meaning."""
    if isinstance(tz, safepickle.Opaque):
        raise UnsupportedError(f"a time zone pickled as {tz.name!r}, not a zone name",
                               path, entry)


def fold_frames(bundle: Bundle, f, path: str) -> None:
    """Replace the raw datasets of each pandas frame in ``bundle`` by one Table."""
    for group, attrs in list(bundle.group_attrs.items()):
        kind = attrs.get("pandas_type")
        if kind not in ("frame_table", "frame"):
            continue
        try:
            g = local(f, group, path, group)
        except (KeyError, UnsafeInputError):
            continue  # reached through a link: its datasets stay plain entries
        try:
            if kind == "frame_table":
                table = _frame_table(g, group, path)
            else:
                table = _frame_fixed(g, group, path)
        except UnsafeInputError:
            continue  # a part of it lives elsewhere: its datasets stay plain (and refused)
        except UnsupportedError as e:
            if kind == "frame":
                continue  # an unusual fixed layout stays as plain datasets
            raise UnsupportedError(f"pandas table: {e.message}", path, group) from None
        if table is None:
            continue
        for name in [n for n in bundle if n.startswith(group + "/")]:
            del bundle[name]
        for name in [g for g in bundle.group_attrs if g == group or g.startswith(group + "/")]:
            del bundle.group_attrs[name]
        for name in [s for s in bundle.skipped if s.startswith(group + "/")]:
            del bundle.skipped[name]
        bundle[group] = table


# --- format="table" --------------------------------------------------------------------

class _Column:
    """How to turn one pandas column out of the compound rows into an Arrow array."""

    def __init__(self, name, field, index, dtype, meta, nan_rep, tz, categories):
        self.name, self.field, self.index = name, field, index
        self.dtype, self.meta, self.nan_rep, self.tz = dtype, meta, nan_rep, tz
        self.categories, self.ordered = categories, False

    def arrow_type(self, encoding):
        import pyarrow as pa

        if self.meta == "category":
            return pa.dictionary(pa.from_numpy_dtype(self.codes_dtype), self.categories.type,
                                 self.ordered)
        return _plain_type(self.dtype, self.tz)

    def convert(self, rows, encoding, path, entry):
        import pyarrow as pa

        values = rows[self.field]
        if self.index is not None:
            values = values[:, self.index]
        elif values.ndim == 2:
            values = values[:, 0]
        if self.meta == "category":
            codes = values.astype(self.codes_dtype)
            return pa.DictionaryArray.from_arrays(
                _numbers(codes, pa.from_numpy_dtype(codes.dtype), codes < 0),
                self.categories, ordered=self.ordered)
        return _plain(values, self.dtype, self.tz, self.nan_rep, encoding, self.name,
                      path, entry)


def _plain_type(dtype: str, tz=None):
    import numpy as np
    import pyarrow as pa

    if dtype.startswith("datetime64"):
        unit = re.search(r"\[(\w+)\]", dtype)
        return pa.timestamp(unit.group(1) if unit else "ns", tz=tz)
    if dtype.startswith("timedelta64"):
        unit = re.search(r"\[(\w+)\]", dtype)
        return pa.duration(unit.group(1) if unit else "ns")
    if dtype.startswith("bytes") or dtype in ("string", "str", "object"):
        return pa.string()
    return pa.from_numpy_dtype(np.dtype(dtype))


def _plain(values, dtype, tz, nan_rep, encoding, name, path, entry):
    import numpy as np
    import pyarrow as pa

    typ = _plain_type(dtype, tz)
    if pa.types.is_timestamp(typ) or pa.types.is_duration(typ):
        ints = np.ascontiguousarray(values, "=i8")
        return _numbers(ints, typ, ints == np.iinfo(np.int64).min)
    if pa.types.is_string(typ):
        try:
            return _text_array(values, nan_rep, encoding)
        except (UnicodeError, LookupError, AttributeError, pa.ArrowInvalid) as e:
            raise FormatError(f"column {name!r}: cannot decode text ({e})", path,
                              entry) from None
    return _numbers(values, typ)


def _numbers(values, typ, null=None):
    """A numpy column as Arrow ``typ`` (``null``: where values are missing), over its
    bytes. Not ``pa.array``: its first call imports pandas (0.6 s) to ask whether this is
    a Series. Values stored wider or narrower than ``typ`` go through ``pa.array``'s
    checked conversion; pandas' bools (stored as bytes) become bits."""
    import numpy as np
    import pyarrow as pa

    values = np.ascontiguousarray(values, values.dtype.newbyteorder("="))
    n, bitmap, nulls = len(values), None, 0
    if null is not None and null.any():
        bitmap = pa.py_buffer(np.packbits(~null, bitorder="little"))
        nulls = int(np.count_nonzero(null))
    if pa.types.is_boolean(typ) and values.dtype.kind in "biu":
        data = np.packbits(values != 0, bitorder="little")
    elif pa.types.is_timestamp(typ) or pa.types.is_duration(typ):
        data = values if values.dtype == np.dtype("=i8") else None
    elif pa.types.is_integer(typ) or pa.types.is_floating(typ):
        data = values if values.dtype == np.dtype(typ.to_pandas_dtype()) else None
    else:
        data = None
    if data is None:
        return pa.array(values, type=typ, mask=None if bitmap is None else null)
    return pa.Array.from_buffers(typ, n, [bitmap, pa.py_buffer(data)], null_count=nulls)


def _text_array(values, nan_rep, encoding: str):
    """Fixed-width text as pandas reads it back, vectorised: trailing NULs are not part of
    a value (numpy's ``S`` semantics), values equal to ``nan_rep`` are null, the rest are
    decoded with the frame's encoding (UTF-8 checked by Arrow; another encoding goes
    through Python only when the column holds bytes beyond ASCII)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if values.dtype.kind != "S":
        return pa.array([v.decode(encoding) for v in values.tolist()], pa.string())
    values = np.ascontiguousarray(values)
    n, width = len(values), values.dtype.itemsize
    valid = None
    if nan_rep is not None:
        token = nan_rep.encode(encoding)
        if len(token) <= width:
            valid = values != np.bytes_(token)  # numpy compares without trailing NULs
            valid = None if valid.all() else valid
    if not _is_utf8(encoding) and not (_ascii_compatible(encoding)
                                       and values.view(np.uint8).max(initial=0) < 0x80):
        text = [v.decode(encoding) for v in values.tolist()]
        return pa.array(text, pa.string(), mask=None if valid is None else ~valid)
    if width == 0:
        return pa.array([""] * n, pa.string(), mask=None if valid is None else ~valid)
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    fixed = pa.Array.from_buffers(pa.binary(width), n, [bitmap, pa.py_buffer(values)],
                                  null_count=-1 if valid is not None else 0)
    # binary -> string checks the UTF-8 (an error, as pandas' decode is); NUL is one byte
    # in UTF-8, so trimming U+0000 drops exactly the trailing NUL bytes
    return pc.utf8_rtrim(fixed.cast(pa.binary()).cast(pa.string()), characters="\x00")


def _is_utf8(encoding: str) -> bool:
    import codecs

    return codecs.lookup(encoding).name == "utf-8"


def _ascii_compatible(encoding: str) -> bool:
    """ASCII bytes decode to the same text in this encoding as in UTF-8."""
    ascii_ = bytes(range(128))
    return ascii_.decode(encoding) == ascii_.decode("ascii")


def _frame_table(g, group: str, path: str):
    # long: PyTables' table layout is decoded in one pass over its attributes

    try:
        ds = local(g, "table", path, group)
        gattrs, tattrs = dict(g.attrs), dict(ds.attrs)
    except H5_ERRORS as e:
        raise FormatError(f"pandas table unreadable: {e}", path, group) from None

    def pickled(attrs, key, default=None):
        if key not in attrs:
            return default
        return _unpickle(attrs[key], f"pandas attribute {key}", path, group)

    encoding = _text(gattrs.get("encoding"), "UTF-8")
    order = pickled(gattrs, "non_index_axes", [])
    values_cols = pickled(gattrs, "values_cols", [])
    info = pickled(gattrs, "info", {}) or {}
    group_nan = pickled(gattrs, "nan_rep")
    if not (isinstance(order, list) and order and isinstance(order[0], tuple)):
        raise UnsupportedError("unrecognised non_index_axes")
    names = list(order[0][1]) if isinstance(order[0][1], (list, tuple)) else None
    if names is None or not all(_plain_name(n) for n in names):
        raise FormatError("pandas column names are not plain values", path, group)
    fields = ds.dtype.names or ()
    columns: dict[str, _Column] = {}
    if not isinstance(values_cols, list):
        raise UnsupportedError("unrecognised values_cols")
    for vc in values_cols:
        kinds = pickled(tattrs, f"{vc}_kind", [])
        dtype = _text(tattrs.get(f"{vc}_dtype"), "")
        meta = pickled(tattrs, f"{vc}_meta")
        nan_rep = _text(tattrs.get(f"{vc}_nan_rep"), None) or group_nan or "nan"
        # pandas keeps a values block's tz and ordered flag in the group's info by block
        block_info = info.get(vc) if isinstance(info, dict) and isinstance(vc, str) else None
        block_info = block_info if isinstance(block_info, dict) else {}
        tz = block_info.get("tz", pickled(tattrs, f"{vc}_tz"))
        _named_zone(tz, path, group)
        ordered = block_info.get("ordered") is True
        if not isinstance(vc, str) or vc not in fields or not isinstance(kinds, list):
            raise UnsupportedError(f"values column {vc!r} is missing")
        if not all(_plain_name(k) for k in kinds):
            raise FormatError(f"pandas attribute {vc}_kind holds names that are not plain "
                              "values", path, group)
        categories = None
        if meta == "category":
            categories = _categories(g, vc, path, group, encoding)
        block = ds.dtype.fields[vc][0]
        multi = block.subdtype is not None and vc.startswith("values_block_")
        for j, col in enumerate(kinds):
            c = _Column(col, vc, j if multi else None, dtype, meta, nan_rep,
                        tz if isinstance(tz, str) else None, categories)
            if meta == "category":
                c.codes_dtype = (block.subdtype[0] if block.subdtype else block).newbyteorder("=")
                c.ordered = ordered
            columns[col] = c
    missing = [n for n in names if n not in columns]
    if missing:
        raise UnsupportedError(f"columns {missing} not found in the table")
    index_info = info.get("index", {}) if isinstance(info, dict) else {}
    index_name = index_info.get("index_name") if isinstance(index_info, dict) else None
    index_name = index_name if isinstance(index_name, str) else "index"
    index_kind = _text(tattrs.get("index_kind"), "integer")
    index_tz = index_info.get("tz") if isinstance(index_info, dict) else None
    _named_zone(index_tz, path, group)
    index_dtype = {"integer": "int64", "float": "float64", "datetime64": "datetime64[ns]",
                   "timedelta64": "timedelta64[ns]", "string": "string",
                   "bool": "bool"}.get(index_kind)
    if re.fullmatch(r"(datetime|timedelta)64\[(s|ms|us|ns)\]", index_kind):
        index_dtype = index_kind  # pandas >= 3 records the unit
    if index_dtype is None or "index" not in fields:
        raise UnsupportedError(f"index of kind {index_kind!r} is not supported")
    index = _Column(index_name, "index", None, index_dtype, None, "nan",
                    index_tz if isinstance(index_tz, str) else None, None)
    ordered = [index] + [columns[n] for n in names]
    if len({c.name for c in ordered}) != len(ordered):
        index.name = "index" if index.name != "index" else "level_0"
    source = _FrameTableSource(ds, ordered, index.name, encoding, path, group)
    from ...dtypes import arrow_type_name as type_name

    described = [(c.name, type_name(c.arrow_type(encoding))) for c in ordered]
    return Table(described, source, encoding={"pandas_type": "frame_table"})


def _categories(g, vc: str, path, group, encoding):
    import numpy as np
    import pyarrow as pa

    try:
        meta = local(g, f"meta/{vc}/meta/table", path, group)
        values = meta["values"]  # a field of the (checked) dataset
        mattrs = dict(meta.attrs)
    except H5_ERRORS as e:
        raise FormatError(f"categories of {vc} unreadable: {e}", path, group) from None
    dtype = _text(mattrs.get("values_dtype"), str(values.dtype))
    if values.dtype.kind == "S":
        try:
            return _text_array(np.asarray(values), None, encoding)
        except (UnicodeError, LookupError, pa.ArrowInvalid) as e:
            raise FormatError(f"categories of {vc}: {e}", path, group) from None
    return _plain(np.asarray(values), dtype, None, None, encoding, vc, path, group)


# --- format="fixed" --------------------------------------------------------------------

def _frame_fixed(g, group: str, path: str):
    # long: PyTables' fixed layout is decoded in one pass over its blocks
    import pyarrow as pa

    try:
        gattrs = dict(g.attrs)
        nblocks = int(gattrs.get("nblocks", 0))
        if int(gattrs.get("ndim", 2)) != 2 or nblocks < 1:
            return None
        encoding = _text(gattrs.get("encoding"), "UTF-8")
        names = [v.decode(encoding) for v in local(g, "axis0", path, group)[()].tolist()]
        axis1 = local(g, "axis1", path, group)
        index_kind = _text(axis1.attrs.get("kind"), "")
        index_name = _unpickle(axis1.attrs.get("name"), "pandas index name", path, group)
        blocks = []
        for k in range(nblocks):
            items = local(g, f"block{k}_items", path, group)[()]
            items = [v.decode(encoding) for v in items.tolist()]
            vals = local(g, f"block{k}_values", path, group)
            if vals.dtype.kind not in "biuf" or vals.ndim != 2:
                return None
            blocks.append((items, vals))
    except (UnicodeDecodeError, AttributeError):
        return None
    except H5_ERRORS as e:
        raise FormatError(f"pandas frame unreadable: {e}", path, group) from None
    if index_kind not in ("integer", "float") or axis1.dtype.kind not in "iuf":
        return None
    where = {}
    for items, vals in blocks:
        for j, item in enumerate(items):
            where[item] = (vals, j)
    if sorted(where) != sorted(names):
        return None
    index_name = index_name if isinstance(index_name, str) else "index"
    fields = [pa.field(index_name, pa.from_numpy_dtype(axis1.dtype.newbyteorder("=")))]
    fields += [pa.field(c, pa.from_numpy_dtype(where[c][0].dtype.newbyteorder("=")))
               for c in names]
    sch = pa.schema(fields, metadata={"mlconv.pandas_index": index_name})

    from ...dtypes import arrow_type_name as type_name

    return Table([(f.name, type_name(f.type)) for f in fields],
                 _FrameFixedSource(axis1, names, where, sch, path, group),
                 encoding={"pandas_type": "frame"})


class _FrameTableSource(TableSource):
    """A PyTables "table" layout's rows, each column decoded as pandas stored it."""

    def __init__(self, ds, ordered, index_name, encoding, path, group):
        self.ds, self.ordered, self.index_name = ds, ordered, index_name
        self.encoding, self.path, self.group = encoding, path, group
        self.num_rows = ds.shape[0] if ds.shape else 0

    def schema(self):
        import pyarrow as pa

        return pa.schema([pa.field(c.name, c.arrow_type(self.encoding)) for c in self.ordered],
                         metadata={"mlconv.pandas_index": self.index_name})

    def batches(self, rows: int, columns=None):
        import pyarrow as pa

        ds, sch = self.ds, self.schema()
        # rows per batch bounded by bytes too: a wide table's batch stays near BATCH_BYTES
        step = chunk_rows(ds, max(1, min(rows, BATCH_BYTES // max(1, ds.dtype.itemsize))))
        raw = _raw_chunks(ds)
        for i in range(0, self.num_rows, step):
            try:
                block = raw(i, min(self.num_rows, i + step)) if raw else None
                if block is None:
                    block = ds[i:i + step]
            except H5_ERRORS as e:
                raise FormatError(f"cannot read pandas rows: {e}", self.path, self.group) \
                    from None
            arrays = [c.convert(block, self.encoding, self.path, self.group)
                      for c in self.ordered]
            yield pa.RecordBatch.from_arrays(arrays, schema=sch)


BATCH_BYTES = 8 << 20  # rows of a pandas table decoded at once (as a row group holds)
RAW_CHUNK_BYTES = 64 << 20  # larger chunks are read through h5py (its reads are bounded)


def _raw_chunks(ds):
    """A reader of rows [start, stop) straight from the stored chunks, or None.

    PyTables tables are chunked, usually unfiltered, compound rows of plain numbers and
    fixed-width strings: their stored bytes are already the numpy records h5py would
    return, but h5py converts them member by member (5x slower than reading them). Used
    only when every member lies at numpy's offset with numpy's size, byte order and kind;
    a chunk that is missing (fill value) or not of its full size is read through h5py."""
    import h5py
    import numpy as np

    try:
        if (not ds.chunks or len(ds.chunks) != 1 or len(ds.shape) != 1
                or ds.id.get_create_plist().get_nfilters()
                or ds.dtype.names is None or ds.dtype.hasobject):
            return None
        c, itemsize = ds.chunks[0], ds.dtype.itemsize
        ftype = ds.id.get_type()
        if c * itemsize > RAW_CHUNK_BYTES or ftype.get_size() != itemsize \
                or ftype.get_nmembers() != len(ds.dtype.names):
            return None
        for k, name in enumerate(ds.dtype.names):
            dt, offset = ds.dtype.fields[name][:2]
            if ftype.get_member_name(k).decode("utf-8", "replace") != name \
                    or ftype.get_member_offset(k) != offset \
                    or not _same_bytes(ftype.get_member_type(k), dt, h5py):
                return None
    except H5_ERRORS:
        return None

    def read(start: int, stop: int):
        first = start // c * c
        out = np.empty(-(-(stop - first) // c) * c, ds.dtype)
        view = out.view(np.uint8)
        for k, row in enumerate(range(first, stop, c)):
            try:
                _, got = ds.id.read_direct_chunk((row,), out=view[k * c * itemsize:])
            except H5_ERRORS:
                return None  # not stored (fill value) or damaged: h5py says which
            if got.nbytes != c * itemsize:
                return None
        return out[start - first:stop - first]

    return read


def _same_bytes(tid, dt, h5py) -> bool:
    """The stored member ``tid`` has the bytes numpy reads as ``dt``."""
    if dt.subdtype is not None:
        if tid.get_class() != h5py.h5t.ARRAY or tuple(tid.get_array_dims()) != dt.shape:
            return False
        tid, dt = tid.get_super(), dt.subdtype[0]
    kind = {h5py.h5t.INTEGER: "iu", h5py.h5t.FLOAT: "f", h5py.h5t.BITFIELD: "ub",
            h5py.h5t.STRING: "S"}.get(tid.get_class())
    if kind is None or dt.kind not in kind or tid.get_size() != dt.itemsize:
        return False
    if dt.kind == "S":  # fixed width; its padding is what numpy strips, as pandas reads it
        return not tid.is_variable_str()
    if dt.kind == "f" and not tid.equal(h5py.h5t.py_create(dt)):
        return False  # an unusual float layout: h5py converts it
    if dt.itemsize > 1:
        big = dt.byteorder == ">" or (dt.byteorder == "=" and sys.byteorder == "big")
        return tid.get_order() == (h5py.h5t.ORDER_BE if big else h5py.h5t.ORDER_LE)
    return True


class _FrameFixedSource(TableSource):
    """A PyTables "fixed" frame: the index axis plus columns gathered from value blocks."""

    def __init__(self, axis1, names, where, schema, path, group):
        self.axis1, self.names, self.where, self._schema = axis1, names, where, schema
        self.path, self.group = path, group
        self.num_rows = axis1.shape[0]

    def schema(self):
        return self._schema

    def batches(self, rows: int, columns=None):
        import numpy as np
        import pyarrow as pa

        for i in range(0, self.num_rows, rows):
            try:
                arrays = [pa.array(np.asarray(self.axis1[i:i + rows]))]
                cache = {}
                for c in self.names:
                    vals, j = self.where[c]
                    if id(vals) not in cache:
                        cache[id(vals)] = vals[i:i + rows]
                    arrays.append(pa.array(np.ascontiguousarray(cache[id(vals)][:, j])))
            except H5_ERRORS as e:
                raise FormatError(f"cannot read pandas frame: {e}", self.path, self.group) \
                    from None
            yield pa.RecordBatch.from_arrays(arrays, schema=self._schema)

