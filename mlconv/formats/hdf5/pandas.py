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
        self.categories = categories

    def arrow_type(self, encoding):
        import pyarrow as pa

        if self.meta == "category":
            return pa.dictionary(pa.from_numpy_dtype(self.codes_dtype), self.categories.type)
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
            return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0),
                                                  self.categories)
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
        nat = ints == np.iinfo(np.int64).min
        return pa.array(ints, mask=nat if nat.any() else None).cast(typ)
    if pa.types.is_string(typ):
        import pyarrow.compute as pc

        try:
            if values.dtype.kind == "S" and encoding.lower().replace("-", "") == "utf8":
                text = pa.array(values).cast(typ)  # trailing NULs dropped, UTF-8 checked
            else:
                text = pa.array([v.decode(encoding) for v in values.tolist()], type=typ)
        except (UnicodeDecodeError, LookupError, AttributeError, pa.ArrowInvalid) as e:
            raise FormatError(f"column {name!r}: cannot decode text ({e})", path,
                              entry) from None
        if nan_rep is None:
            return text
        return pc.if_else(pc.equal(text, nan_rep), pa.scalar(None, typ), text)
    return pa.array(np.ascontiguousarray(values, values.dtype.newbyteorder("=")), type=typ)


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
        tz = pickled(tattrs, f"{vc}_tz")
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
            columns[col] = c
    missing = [n for n in names if n not in columns]
    if missing:
        raise UnsupportedError(f"columns {missing} not found in the table")
    index_info = info.get("index", {}) if isinstance(info, dict) else {}
    index_name = index_info.get("index_name") if isinstance(index_info, dict) else None
    index_name = index_name if isinstance(index_name, str) else "index"
    index_kind = _text(tattrs.get("index_kind"), "integer")
    index_tz = index_info.get("tz") if isinstance(index_info, dict) else None
    index_dtype = {"integer": "int64", "float": "float64", "datetime64": "datetime64[ns]",
                   "timedelta64": "timedelta64[ns]", "string": "string",
                   "bool": "bool"}.get(index_kind)
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
            return pa.array([v.decode(encoding) for v in values.tolist()], pa.string())
        except (UnicodeDecodeError, LookupError) as e:
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
        step = chunk_rows(ds, rows)
        for i in range(0, self.num_rows, step):
            try:
                block = ds[i:i + step]
            except H5_ERRORS as e:
                raise FormatError(f"cannot read pandas rows: {e}", self.path, self.group) \
                    from None
            arrays = [c.convert(block, self.encoding, self.path, self.group)
                      for c in self.ordered]
            yield pa.RecordBatch.from_arrays(arrays, schema=sch)


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

