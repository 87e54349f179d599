"""Writing HDF5: datasets placed contiguous and aligned, payloads copied in afterwards at
their offsets (copied file to file where the bytes need no change); tables as compound datasets."""

from __future__ import annotations

import json
import os

from ... import dtypes as D
from ... import model
from ...atomic import library_path
from ...dtypes import DType
from ...errors import LossyConversionError, MlconvError, UnsupportedError
from ...fileio import CHUNK
from ...model import Bundle, Table, Tensor
from ..base import ALIGN
from .read import DTYPE_ATTR, ENUM_ATTR, RAGGED_ATTR, SCHEMA_ATTR, _h5py, _nat_type


def _storage(dtype: DType):
    """(numpy dtype stored in HDF5, name for the dtype tag attr or None)."""
    import numpy as np

    h5py = _h5py()
    if dtype is DType.string:
        return h5py.string_dtype("utf-8"), None
    if dtype is DType.bytes:
        return None, None  # fixed width: the tensor's itemsize decides
    if dtype.numpy().kind in "VMm" or dtype.value.startswith("float8"):  # h5py: no time
        return np.dtype(D.tag_storage(dtype)), dtype.value
    return dtype.numpy().newbyteorder("<") if dtype.numpy().itemsize > 1 else dtype.numpy(), None


def _write_attrs(obj, attrs: dict) -> None:
    for k, v in attrs.items():
        # typed values (and their JSON text from text-only metadata) get their type back
        v = model.metadata_value(v) if isinstance(v, str) else model.attr_value(v)
        if isinstance(v, (dict, list)) and not _homogeneous(v):
            v = json.dumps(v, ensure_ascii=False)
        if v is None:
            v = _h5py().Empty("f")
        obj.attrs[k] = v


def _homogeneous(v) -> bool:
    if not isinstance(v, list) or not v:
        return False
    kinds = {type(x) for x in v}
    return len(kinds) == 1 and kinds <= {int, float, str, bool}


def _arrow_storage(field):
    """(numpy field dtype, converter from an Arrow column to numpy) for a compound column."""
    import numpy as np
    import pyarrow as pa

    h5py = _h5py()
    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if isinstance(t, pa.FixedShapeTensorType):
        base, _ = _arrow_storage(pa.field(field.name, t.value_type))
        return (base, tuple(t.shape)), lambda c: c.to_numpy_ndarray()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return h5py.string_dtype("utf-8"), lambda c: np.array(c.to_pylist(), dtype=object)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return h5py.string_dtype("ascii"), lambda c: np.array(c.to_pylist(), dtype=object)
    if pa.types.is_timestamp(t) or pa.types.is_date64(t) or pa.types.is_duration(t):
        # missing times are NaT (int64 min), as numpy and pandas store them
        nat = pa.scalar(np.iinfo(np.int64).min, pa.int64())
        return np.dtype("<i8"), lambda c: c.cast(pa.int64()).fill_null(nat).to_numpy()
    if pa.types.is_date32(t) or pa.types.is_time32(t):
        return np.dtype("<i4"), lambda c: c.cast(pa.int32()).to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
        return np.dtype(t.to_pandas_dtype()), lambda c: c.to_numpy(zero_copy_only=False)
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)):
        base = np.dtype(t.value_type.to_pandas_dtype())  # a vlen sequence field

        def sequences(c):
            out = np.empty(len(c), dtype=object)
            flat = c.flatten().to_numpy(zero_copy_only=False).astype(base)
            offsets = c.offsets.to_numpy()
            for i in range(len(c)):
                out[i] = flat[offsets[i] - offsets[0]:offsets[i + 1] - offsets[0]]
            return out

        return h5py.vlen_dtype(base), sequences
    raise UnsupportedError(f"column {field.name!r} of type {t} has no HDF5 compound type")




def write(bundle: Bundle, f, path: str, options) -> None:
    """libhdf5 writes the structure with each tensor's space reserved (contiguous, allocated
    early, never filled); the file closed, the payloads go into their offsets in offset
    order, file to file where a source has a span, all in the temp file before the rename."""
    h5py = _h5py()
    comp = options.compression or "none"
    placed: list[tuple[int, Tensor]] = []
    try:
        with h5py.File(library_path(f), "w", track_order=True, alignment_threshold=ALIGN,
                       alignment_interval=ALIGN) as h5:
            _write_attrs(h5, bundle.metadata)
            for group, attrs in bundle.group_attrs.items():
                _write_attrs(h5.require_group(group), attrs)
            for name, entry in bundle.items():
                if isinstance(entry, Table):
                    _table(h5, name, entry, path, options.progress)
                    continue
                offset = _tensor(h5, name, entry, comp, path, options.progress)
                if offset is not None:
                    placed.append((offset, entry))
    except (ValueError, TypeError, OSError, KeyError, RuntimeError) as e:
        if isinstance(e, MlconvError):
            raise
        raise UnsupportedError(f"HDF5 refused the data: {e}", path) from None
    _fill(f.name, placed, path, options)


def _fill(tmp: str, placed: list, path: str, options) -> None:
    """Copy each payload into the space libhdf5 reserved for it."""
    placed.sort(key=lambda p: p[0])  # one forward pass over the output
    fd = os.open(tmp, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        sink = options.sink(fd)
        for offset, entry in placed:
            if offset + entry.nbytes > size:  # libhdf5 allocated it: never expected
                raise UnsupportedError(f"HDF5 reserved {size - offset} bytes at offset "
                                       f"{offset}, {entry.nbytes} needed", path)
            sink.seek(offset)
            entry.write_to(sink)
    finally:
        os.close(fd)


def _reserve(h5, name, t: Tensor, stored):
    """A contiguous dataset with its space allocated now and never filled: the payload is
    copied into it after the file is closed. Returns (dataset, offset or None)."""
    h5py = _h5py()
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    ds = h5.create_dataset(name, shape=t.shape, dtype=stored, dcpl=dcpl)
    return ds, ds.id.get_offset()


def _tensor(h5, name, t: Tensor, comp, path, progress=None):
    """Create the dataset; returns the offset to copy the payload to (contiguous case)."""
    import numpy as np

    h5py = _h5py()
    stored, real = _storage(t.dtype)
    if t.dtype is DType.bytes:
        stored = f"S{t.itemsize}"
    width = t.encoding.get("h5_string_width") if t.dtype is DType.string else None
    if width is not None:  # it was fixed-width UTF-8: written back so if it fits
        longest = int(np.char.str_len(np.char.encode(t.numpy(), "utf-8")).max(initial=0))
        width = width if longest <= width else None
        stored = h5py.string_dtype("utf-8", width) if width else stored
    attrs, labels = dict(t.attrs), t.attrs.get(ENUM_ATTR)
    if isinstance(labels, dict) and t.dtype.kind in ("int", "uint") and labels and \
            all(isinstance(v, int) for v in labels.values()):
        stored = h5py.enum_dtype(labels, basetype=np.dtype(stored))  # an HDF5 enum again
        attrs.pop(ENUM_ATTR)
    offset = None
    if t.dtype is not DType.string and comp == "none" and t.shape and t.nbytes:
        ds, offset = _reserve(h5, name, t, stored)
        if offset is None:  # no space reserved (not expected): libhdf5 writes it
            _through_h5py(ds, t, stored, real, progress)
    else:
        kw = {}
        if comp != "none" and t.shape and t.nbytes:
            kw = {"compression": comp, "chunks": True}
        ds = h5.create_dataset(name, shape=t.shape, dtype=stored, **kw)
        _through_h5py(ds, t, stored, real, progress, width)
    if real:
        ds.attrs[DTYPE_ATTR] = real
    _write_attrs(ds, attrs)
    return offset


def _through_h5py(ds, t: Tensor, stored, real, progress=None, width=None) -> None:
    """Write the values through h5py (text, compressed chunks, scalars)."""
    import numpy as np

    if t.dtype is DType.string:  # variable-length text: h5py wants objects
        ds[()] = t.numpy().astype(object) if width is None else \
            np.char.encode(t.numpy(), "utf-8").astype(stored)
    elif t.shape and t.nbytes:  # streamed block by block, never whole
        rows, done = max(1, CHUNK // max(1, t.nbytes // t.shape[0])), 0
        for block in t.blocks(rows):
            ds[done:done + len(block)] = block.view(stored) if real else block
            done += len(block)
            if progress:
                progress(block.nbytes)
    elif t.source.count:
        data = t.numpy()
        ds[()] = data.view(stored) if real else data

def _ragged(h5, name, table: Table, field, progress=None):
    """A table read from a vlen sequence dataset goes back as one."""
    column, dt, convert = field
    if table.attrs[RAGGED_ATTR] == "scalar" and table.num_rows == 1:
        ds = h5.create_dataset(name, shape=(), dtype=dt)
    else:
        ds = h5.create_dataset(name, shape=(table.num_rows or 0,), maxshape=(None,),
                               dtype=dt, chunks=(max(1, min(65536, table.num_rows or 1)),))
    _write_attrs(ds, {k: v for k, v in table.attrs.items() if k != RAGGED_ATTR})
    done = 0
    for batch in table.batches(65536):
        col = batch.column(0)
        if col.null_count:
            raise LossyConversionError(f"column {column!r} has nulls, which HDF5 "
                                       "sequences cannot hold", None, name)
        if ds.shape and done + len(col) > ds.shape[0]:
            ds.resize((done + len(col),))
        for i, seq in enumerate(convert(col)):  # one by one: h5py would broadcast
            ds[(done + i) if ds.shape else ()] = seq
        done += len(col)
        if progress:
            progress(batch.nbytes)

def _table(h5, name, table: Table, path, progress=None):
    import numpy as np

    schema = table.schema
    try:
        fields = [(f.name, *_arrow_storage(f)) for f in schema]
    except UnsupportedError as e:
        raise UnsupportedError(e.message, path, name) from None
    rows = table.num_rows
    if table.attrs.get(RAGGED_ATTR) and len(fields) == 1 and \
            _h5py().check_vlen_dtype(fields[0][1]) is not None:
        _ragged(h5, name, table, fields[0], progress)
        return
    rec = np.dtype([(n, dt) for n, dt, _ in fields])
    ds = h5.create_dataset(name, shape=(rows or 0,), maxshape=(None,), dtype=rec,
                           chunks=(max(1, min(65536, rows or 1)),))
    ds.attrs[SCHEMA_ATTR] = schema.serialize().to_pybytes().hex()
    _write_attrs(ds, table.attrs)
    done = 0
    for batch in table.batches(65536):
        block = np.zeros(batch.num_rows, dtype=rec)
        for (field, _, convert), column in zip(fields, batch.columns, strict=True):
            if column.null_count and not _nat_type(column.type):
                raise LossyConversionError(
                    f"column {field!r} has nulls, which HDF5 compound datasets cannot "
                    "hold; use --allow-lossy to store them as NaN/0/empty", path, name)
            if hasattr(column, "dictionary_decode"):
                column = column.dictionary_decode()
            block[field] = convert(column)
        if done + len(block) > ds.shape[0]:
            ds.resize((done + len(block),))
        ds[done:done + len(block)] = block
        done += len(block)
        if progress:
            progress(batch.nbytes)
