"""Tables seen as tensors: each column of a Table read as a Tensor (rows x per-row shape).

Used by conversion into tensor formats, by the dataset API and by the Parquet/Arrow
formats when a table was written from tensors. Nulls are refused (or filled with
``--allow-lossy``); ragged list columns pad with ``--pad``.
"""

from __future__ import annotations

from . import dtypes as D
from .dtypes import DType
from .errors import FormatError, Loss, LossyConversionError, UnsupportedError
from .fileio import CHUNK
from .model import Table, TableSource, Tensor
from .sources import Source, array_chunks, element_dtype, gather_rows

WIDTH_KEY = b"mlconv.width"  # bytes per element of a text tensor column
DTYPE_KEY = D.DTYPE_TAG.encode()


def _pa():
    import pyarrow as pa

    return pa


def field_dtype(field, text: bool = False) -> tuple[DType, tuple[int, ...]] | None:
    """(dtype, per-row shape) of a column that reads as a tensor (with ``text``, string and
    binary columns too), else None."""
    pa = _pa()
    t = field.type
    shape: tuple[int, ...] = ()
    if isinstance(t, pa.FixedShapeTensorType):
        if t.permutation and list(t.permutation) != sorted(t.permutation):
            return None
        shape, t = tuple(t.shape), t.value_type
    while pa.types.is_fixed_size_list(t):
        shape, t = shape + (t.list_size,), t.value_type
    named = (field.metadata or {}).get(DTYPE_KEY)
    if named is not None:
        try:
            dtype = D.parse(named.decode())
        except (UnsupportedError, UnicodeDecodeError):
            return None
        try:  # the recorded dtype must fit the storage exactly (it is only a relabel)
            storage, _ = D.arrow_storage(dtype)
        except UnsupportedError:
            return None
        if not storage.equals(t):
            raise FormatError(f"column {field.name!r} records mlconv.dtype {dtype.value} "
                              f"but stores {t}")
        return dtype, shape
    found = D.from_arrow(t)
    if found is None or (found.bits is None and not text):
        return None
    return found, shape



class ColumnSource(Source):
    """One table column as a tensor (rows x per-row shape), streamed batch by batch.

    Nulls cannot be held by a tensor: they are an error naming the column, or with
    ``fill`` (from --allow-lossy) become NaN / 0 / False with a warning in ``warnings``.
    """

    def __init__(self, table: Table, column: str, dtype: DType, shape, path=None,
                 entry=None, fill: bool = False, warnings: list | None = None):
        super().__init__(dtype, (table.num_rows,) + tuple(shape))
        self.table, self.column = table, column
        self.path, self.entry = path, entry
        self.width = None  # bytes per text element, when the writer recorded it
        self.fill, self.warnings = fill, warnings

    def _blocks(self, rows: int = 65536):
        for batch in self.table.batches(rows, columns=[self.column]):
            yield self._numpy(batch.column(batch.schema.get_field_index(self.column)))

    def rows(self, index, cache=None):
        """Only the pieces (row groups, record batches) holding these rows, through ``cache``."""
        import numpy as np

        if self.table.pieces is None:
            return super().rows(index, cache)
        sizes, read = self.table.pieces
        bounds = getattr(self, "_bounds", None)
        if bounds is None:
            bounds = self._bounds = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

        def load(k: int):
            def piece():
                col = read(k, [self.column]).column(self.column)
                return self._numpy(col.combine_chunks() if hasattr(col, "combine_chunks")
                                   else col)
            return piece() if cache is None else cache.get((id(self), k), piece)

        return gather_rows(index, bounds, load)

    def _numpy(self, col):
        """One Arrow column of rows as numpy (nulls refused or filled, as for ``array()``)."""
        import numpy as np

        pa = _pa()
        if col.null_count:
            if not self.fill:
                raise LossyConversionError(
                    f"column {self.column!r} has {col.null_count} null(s), which a tensor "
                    "cannot hold; use --allow-lossy to store them as NaN/0", self.path,
                    self.entry)
            if self.warnings is not None:
                self.warnings.append(Loss(f"{col.null_count} null(s) in column "
                                          f"{self.column!r} stored as NaN/0", self.path,
                                          self.entry, "nulls"))
            col = col.fill_null(_fill_value(col.type))
        storage = col.storage if isinstance(col, pa.ExtensionArray) else col
        while pa.types.is_fixed_size_list(storage.type):
            storage = storage.flatten()
        if pa.types.is_fixed_size_binary(storage.type):
            flat = np.frombuffer(storage.buffers()[1], np.uint8,
                                 len(storage) * storage.type.byte_width,
                                 storage.offset * storage.type.byte_width)
        elif len(storage) and (pa.types.is_integer(storage.type)
                               or pa.types.is_floating(storage.type)) \
                and storage.type.bit_width == self.dtype.numpy().itemsize * 8:
            # the bytes as they lie (viewed below): pyarrow's to_numpy imports pandas,
            # ~50 MiB and 0.6 s in a loader process
            w = storage.type.bit_width // 8
            flat = np.frombuffer(storage.buffers()[1], np.uint8, len(storage) * w,
                                 storage.offset * w)
        elif self.dtype.bits is None:  # text: fixed width, as numpy holds it
            kind = str if self.dtype is DType.string else bytes
            if self.width:
                kind = element_dtype(self.dtype, self.width)
            flat = np.array(storage.to_pylist(), dtype=kind)
            return flat.reshape((-1,) + self.shape[1:])
        else:
            flat = storage.to_numpy(zero_copy_only=False)
        stored = self.dtype.numpy()
        if flat.dtype.kind in "Mm" and flat.dtype != stored:
            flat = flat.astype(stored)  # the unit written (Parquet coarsens s to ms)
        if flat.dtype != stored:
            flat = flat.view(stored) if flat.dtype.itemsize == stored.itemsize or \
                flat.dtype == np.uint8 else flat.astype(stored)
        return flat.reshape((-1,) + self.shape[1:])

    def array(self):
        import numpy as np

        blocks = list(self._blocks())
        if not blocks:
            return np.zeros(self.shape, self.dtype.numpy() if self.dtype.bits else
                            ("U1" if self.dtype is DType.string else "S1"))
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def chunks(self, size: int = CHUNK):
        for block in self._blocks():
            yield from array_chunks(block, self.dtype, size)


class _Filled(TableSource):
    """Another table's batches with nulls replaced, each fill a warning."""

    def __init__(self, table: Table, warnings: list, path, entry):
        self.table, self.warnings, self.path, self.entry = table, warnings, path, entry
        self.num_rows = table.num_rows

    def schema(self):
        return self.table.schema

    def batches(self, rows: int, columns=None):
        pa = _pa()
        for batch in self.table.batches(rows, columns):
            cols = []
            for field, col in zip(batch.schema, batch.columns, strict=True):
                if col.null_count and not _temporal(field.type):
                    self.warnings.append(Loss(f"{col.null_count} null(s) in column "
                                              f"{field.name!r} stored as NaN/0/empty",
                                              self.path, self.entry, "nulls"))
                    col = col.fill_null(_fill_value(col.type))
                cols.append(col)
            yield pa.RecordBatch.from_arrays(cols, schema=batch.schema)


def filled(table: Table, warnings: list, path, entry) -> Table:
    """``table`` with nulls replaced (NaN, 0, False, empty text) for targets without nulls;
    missing times stay null (writers store them as NaT). Each fill adds a warning."""
    return Table(table.columns, _Filled(table, warnings, path, entry), table.attrs,
                 table.encoding)


def _temporal(t) -> bool:
    pa = _pa()
    return pa.types.is_temporal(t)


def _fill_value(t):
    pa = _pa()
    storage = t.storage_type if isinstance(t, pa.ExtensionType) else t
    if pa.types.is_floating(storage):
        return pa.scalar(float("nan"), storage)
    if pa.types.is_boolean(storage):
        return pa.scalar(False)
    if pa.types.is_integer(storage):
        return pa.scalar(0, storage)
    if pa.types.is_string(storage) or pa.types.is_large_string(storage):
        return pa.scalar("", storage)
    if pa.types.is_binary(storage) or pa.types.is_large_binary(storage):
        return pa.scalar(b"", storage)
    raise UnsupportedError(f"nulls of type {t} cannot be filled")


def table_tensors(table: Table, name: str, path=None, fill=False, warnings=None,
                  prefix: bool = True, bad: list | None = None,
                  text: bool = False, pad: float | None = None) -> dict[str, Tensor]:
    """Every column of ``table`` as a tensor named ``name/column`` (or ``column``).

    A column that cannot be a tensor (strings, nested, ...) raises naming it, or, given a
    ``bad`` list, is appended there and left out.
    """
    out = {}
    for field in table.schema:
        try:
            found = field_dtype(field, text)
        except FormatError as e:
            raise FormatError(e.message, path, name) from None
        entry = f"{name}/{field.name}" if prefix else field.name
        if found is None and pad is not None and _numeric_list(field.type):
            out[entry] = padded(table, field, pad, path, entry, warnings)
            continue
        if found is None:
            why = f"column {field.name!r} of type {field.type}"
            if _numeric_list(field.type):
                why += " (ragged: --pad VALUE pads it)"
            if bad is None:
                raise UnsupportedError(f"{why} cannot be a tensor", path, name)
            bad.append(why)
            continue
        dtype, shape = found
        src = ColumnSource(table, field.name, dtype, shape, path, entry, fill, warnings)
        width = (field.metadata or {}).get(WIDTH_KEY)
        if dtype.bits is None and width is not None and width.isdigit():
            src.width = int(width)  # the fixed width the tensor was written with
        out[entry] = Tensor(src)
    return out


# --- ragged (list) columns padded into fixed-shape tensors (--pad) ------------------------

def _numeric_list(t) -> bool:
    pa = _pa()
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and \
        D.from_arrow(t.value_type) is not None and D.from_arrow(t.value_type).bits is not None


def padded(table: Table, field, value: float, path, entry, warnings=None) -> Tensor:
    """A list column as a (rows, longest) tensor, short rows filled with ``value``; two
    streaming passes (the longest row first), one batch in memory at a time."""
    import pyarrow.compute as pc

    dtype = D.from_arrow(field.type.value_type)
    longest = 0
    for batch in table.batches(65536, columns=[field.name]):
        lengths = pc.list_value_length(batch.column(0))
        longest = max(longest, pc.max(lengths).as_py() or 0)
    fill = dtype.numpy().type(value)
    if fill != value:
        raise LossyConversionError(f"--pad {value} is not a {dtype.value} value", path, entry)
    if warnings is not None:
        warnings.append(Loss(f"ragged column padded with {value} to {longest} per row",
                             path, entry, "padded"))
    return Tensor(PaddedSource(table, field.name, dtype, longest, fill, path, entry))


class PaddedSource(Source):
    def __init__(self, table, column, dtype, width, fill, path, entry):
        super().__init__(dtype, (table.num_rows, width))
        self.table, self.column, self.fill = table, column, fill
        self.path, self.entry = path, entry

    def _blocks(self):
        import numpy as np

        for batch in self.table.batches(65536, columns=[self.column]):
            col = batch.column(0)
            if col.null_count:
                raise LossyConversionError(f"column {self.column!r} has null rows",
                                           self.path, self.entry)
            out = np.full((len(col), self.shape[1]), self.fill, self.dtype.numpy())
            flat = col.flatten().to_numpy(zero_copy_only=False)
            offsets = col.offsets.to_numpy()
            offsets = offsets - offsets[0]
            for i in range(len(col)):
                out[i, :offsets[i + 1] - offsets[i]] = flat[offsets[i]:offsets[i + 1]]
            yield out

    def array(self):
        import numpy as np

        blocks = list(self._blocks())
        return np.concatenate(blocks) if blocks else np.zeros(self.shape, self.dtype.numpy())

    def chunks(self, size: int = CHUNK):
        for block in self._blocks():
            yield from array_chunks(block, self.dtype, size)
