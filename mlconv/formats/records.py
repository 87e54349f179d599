"""numpy record arrays <-> Arrow: the column codec shared by npy and HDF5 tables.

Sub-array fields become ``arrow.fixed_shape_tensor`` columns, nested records become structs,
fixed-width bytes stay binary unless declared text, variable-length objects (h5py's vlen
strings) become string/binary. Complex numbers have no Arrow type and are refused.
"""

from __future__ import annotations

from ..errors import FormatError, UnsupportedError


def _pa():
    import pyarrow as pa

    return pa


MAX_NESTING = 32  # records within records: beyond this a file is hostile, not data


def arrow_type(np_dtype, text: bool = False, vlen=None, depth: int = 0):
    """Arrow type of a numpy field dtype. ``text``: bytes are UTF-8 text; ``vlen``: the
    Python type (str/bytes) of a variable-length object field."""
    import numpy as np

    pa = _pa()
    if depth > MAX_NESTING:
        raise FormatError(f"record type nested deeper than {MAX_NESTING} levels")
    dt = np.dtype(np_dtype)
    if dt.names is not None:
        return pa.struct([pa.field(n, arrow_type(dt.fields[n][0], depth=depth + 1))
                          for n in dt.names])
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return pa.fixed_shape_tensor(arrow_type(base, text, depth=depth + 1), list(shape))
    if dt.kind == "S":
        return pa.string() if text else pa.binary()
    if dt.kind == "U":
        return pa.string()
    if dt.kind == "O":
        if vlen is str:
            return pa.string()
        if vlen is bytes:
            return pa.binary()
        if vlen is not None:  # a variable-length sequence of numbers: a list column
            return pa.list_(arrow_type(vlen))
        raise UnsupportedError("object field of unknown element type")
    if dt.kind in "Mm":  # date32 for days; hours and minutes as seconds (exact)
        unit = np.datetime_data(dt)[0]
        if dt.kind == "M" and unit == "D":
            return pa.date32()
        if unit not in ("s", "ms", "us", "ns"):
            if unit not in ("D", "h", "m"):
                raise UnsupportedError(f"{dt.name} has no Arrow unit")
            unit = "s"
        return pa.timestamp(unit) if dt.kind == "M" else pa.duration(unit)
    if dt.kind == "c":
        raise UnsupportedError(f"complex field ({dt.str}) has no Arrow type")
    if dt.kind in "biuf":
        return pa.from_numpy_dtype(dt.newbyteorder("="))
    raise UnsupportedError(f"field dtype {dt.str} has no Arrow type")


def to_arrow(col, typ, name: str, path=None, entry=None):
    """An Arrow array of type ``typ`` from a numpy column (rows along axis 0)."""
    import numpy as np

    pa = _pa()
    try:
        if pa.types.is_struct(typ):
            children = [to_arrow(col[f.name], f.type, f"{name}.{f.name}", path, entry)
                        for f in typ]
            return pa.StructArray.from_arrays(children, fields=list(typ))
        if isinstance(typ, pa.FixedShapeTensorType):
            storage = to_arrow(np.ascontiguousarray(col).reshape(len(col), -1).reshape(-1),
                               typ.value_type, name, path, entry)
            size = int(np.prod(typ.shape))
            lists = pa.FixedSizeListArray.from_arrays(storage, size)
            return pa.ExtensionArray.from_storage(typ, lists)
        if col.dtype.kind == "S" and pa.types.is_string(typ):
            return pa.array([v.decode("utf-8") for v in col.tolist()], type=typ)
        if col.dtype.kind == "O" and (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
            return _lists(col, typ, name, path, entry)
        if col.dtype.kind == "O":
            values = col.tolist()
            if pa.types.is_string(typ):
                values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
            return pa.array(values, type=typ)
        if col.dtype.byteorder == ">":
            col = col.astype(col.dtype.newbyteorder("="))
        if col.dtype.kind in "Mm" and not pa.types.is_date32(typ):
            col = col.astype(f"{col.dtype.kind}8[{typ.unit}]")  # h/m/D -> s: exact
        return pa.array(col, type=typ)
    except (UnicodeError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise FormatError(f"column {name!r} cannot be converted: {e}", path, entry) from None


def _lists(col, typ, name, path, entry):
    """A list column from an object array of 1-D arrays (h5py's vlen sequences)."""
    import numpy as np

    pa = _pa()
    arrays = [np.asarray(v).reshape(-1) for v in col.reshape(-1).tolist()]
    offsets = np.zeros(len(arrays) + 1, np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    base = typ.value_type.to_pandas_dtype()
    flat = np.concatenate(arrays) if arrays else np.zeros(0, base)
    values = to_arrow(flat, typ.value_type, name, path, entry)
    if pa.types.is_large_list(typ):
        return pa.LargeListArray.from_arrays(pa.array(offsets), values)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
