"""Reading HDF5: groups are name hierarchy, datasets tensors, compound datasets tables.

Contiguous, unfiltered datasets of standard types are memory-mapped at their file offset
(checked against the file size and the stored size), so writers copy them file to file;
chunked ones stream along the first axis. Only HDF5's built-in filters and lzf are used:
no filter plugin is ever loaded. External links are followed only with ``allow_external``
and only into the same folder; external storage and virtual datasets are listed but their
data is refused. pandas ``to_hdf`` files read as the DataFrame they hold (``pandas.py``).
Untrusted files are first walked by a child process (``guard.py``) so a libhdf5 crash is
an error, not a dead process. Dtypes HDF5 lacks come back from the shared tag rule
(``dtypes.DTYPE_TAG``; ``write.py`` stores them).
"""

from __future__ import annotations

import os

from ... import dtypes as D
from ... import model
from ...dtypes import DType
from ...errors import (
    FormatError,
    LossyConversionError,
    UnsafeInputError,
    UnsupportedError,
)
from ...fileio import CHUNK
from ...model import Bundle, Table, TableSource, Tensor
from ...sources import FileMap, FileSource, Source, array_chunks, check_memory, gather_rows

MAGIC = b"\x89HDF\r\n\x1a\n"
DTYPE_ATTR = D.DTYPE_TAG  # the shared tag rule (dtypes.py); old files say mlconv_dtype
RAGGED_ATTR = "mlconv_ragged"  # a table that was one vlen sequence dataset
ENUM_ATTR = "mlconv_enum"  # an enum dataset's labels {label: value}
SCHEMA_ATTR = "mlconv_arrow_schema"
# HDF5's own filters plus lzf, which h5py registers itself; anything else is a plugin
BUILTIN_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit",
                   6: "scaleoffset", 32000: "lzf"}
KNOWN_PLUGINS = {32001: "blosc", 307: "bzip2", 32004: "lz4", 32008: "bitshuffle",
                 305: "lzo", 32015: "zstd", 32017: "sz", 32026: "blosc2"}
MAX_RATIO = 1032  # a dataset declaring more than this times its stored bytes is a bomb
MAX_EXTERNAL_DEPTH = 8
H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)


def _h5py():
    import h5py

    return h5py


def _pa():
    import pyarrow as pa

    return pa


# --- attributes --------------------------------------------------------------------------

def attr_value(value):
    """An HDF5 attribute as a JSON-able value: text decoded, arrays as lists, never unpickled."""
    import numpy as np

    h5py = _h5py()
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, h5py.Reference) or isinstance(value, h5py.RegionReference):
        return "<object reference>"
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O" or value.dtype.kind in "SUV" or value.dtype.names:
            return [attr_value(v) for v in value.reshape(-1).tolist()] if value.ndim \
                else attr_value(value[()])
        return _typed(value)
    if isinstance(value, np.void):
        return bytes(value).hex()
    if isinstance(value, np.generic):
        return _typed(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [attr_value(v) for v in value]
    return str(value)


def _typed(value):
    """A numeric attribute keeps its HDF5 type through the model (int32 stays int32)."""
    import numpy as np

    try:
        return model.attr_json(value)
    except UnsupportedError:
        pass
    kind = np.asarray(value).dtype.kind
    if kind in "fc":  # long double: narrowed, and read_attrs notes it as a loss
        return model.attr_json(np.asarray(value).astype("f8" if kind == "f" else "c16"))
    out = np.asarray(value).tolist()
    return out if isinstance(out, (int, float, bool, str, list)) else str(out)


def _attr_loss(dt) -> str | None:
    """What an attribute of this numpy dtype loses on its way through the model, or None."""
    h5py = _h5py()
    base = dt.base
    if h5py.check_ref_dtype(base) is not None:
        return "reference kept as text"
    if base.names is not None or base.kind == "V":
        return "compound/opaque value kept as hex text"
    if h5py.check_enum_dtype(base) is not None and base.kind != "b":
        return "enum kept as its integer values"
    if base.kind == "O" and h5py.check_string_dtype(base) is None:
        return "variable-length sequence kept as a list"
    if base.kind in "fc":
        try:
            D.from_numpy(base)
        except UnsupportedError:
            return f"{base.itemsize * 8}-bit {base.name} narrowed to float64"
    return None


def read_attrs(obj, path, entry, notes: list | None = None) -> dict:
    """The attributes as JSON-able values; what can't keep its type is noted in ``notes``."""
    out = {}
    try:
        if not _h5py().h5a.get_num_attrs(obj.id):  # the common case, without h5py's objects
            return out
        for key in obj.attrs:
            try:
                out[key] = attr_value(obj.attrs[key])
                why = _attr_loss(obj.attrs.get_id(key).dtype) if notes is not None else None
            except H5_ERRORS as e:
                out[key] = f"<unreadable attribute: {e}>"
                why = "unreadable"
            if why and notes is not None:
                notes.append(str(LossyConversionError(
                    f"attribute {key!r}: HDF5 type not kept ({why})", path, entry or "/")))
    except H5_ERRORS as e:
        raise FormatError(f"cannot read attributes: {e}", path, entry or "/") from None
    return out


# --- dataset sources ---------------------------------------------------------------------

class H5Source(Source):
    """A dataset read through h5py: whole for ``array()``, first-axis blocks for chunks."""

    def __init__(self, ds, dtype: DType, shape, view=None, unavailable: str | None = None,
                 path=None, entry=None):
        itemsize = ds.dtype.itemsize if dtype.bits is None and ds.dtype.kind != "O" else None
        super().__init__(dtype, shape, itemsize)
        self.ds, self.view, self.unavailable = ds, view, unavailable
        self.path, self.entry = path, entry

    def _refuse(self) -> None:
        if self.unavailable:
            cls, why = self.unavailable
            raise cls(why, self.path, self.entry)

    def _read(self, sel):
        self._refuse()
        import numpy as np

        try:
            arr = np.asarray(self.ds[sel])
        except H5_ERRORS as e:
            raise FormatError(f"cannot read dataset: {e}", self.path, self.entry) from None
        if arr.dtype.kind == "O" or (arr.dtype.kind == "S" and (
                self.ds.dtype.kind == "O" or self.dtype is DType.string)):
            items = arr.reshape(-1).tolist()
            if self.dtype is DType.string:
                items = [v.decode("utf-8") if isinstance(v, bytes) else v for v in items]
                return np.array(items, dtype=str).reshape(arr.shape)
            return np.array(items, dtype=bytes).reshape(arr.shape)
        if self.view is None:
            return arr
        if arr.dtype.itemsize == self.view.itemsize:
            return arr.view(self.view)
        return arr.astype(self.view)  # h5py widened it (bfloat16 -> float32): exact back

    def _vlen_blocks(self):
        """Variable-length text in first-axis blocks sized by what was read so far: each
        element may be a large heap object, shared by any number of elements, so the
        fixed-width result is checked against --max-memory block by block."""
        if not self.shape or self.count == 0:
            yield self._read(())
            return
        n, per_row = self.shape[0], max(1, self.count // self.shape[0])
        done, step, width = 0, 1, 0
        while done < n:
            block = self._read(slice(done, done + step))
            width = max(width, block.dtype.itemsize)
            check_memory(self.count * width, self.limit, self.path, self.entry)
            done += len(block)
            step = max(1, min(1 << 16, CHUNK // max(1, per_row * width)))
            yield block

    def array(self):
        self._refuse()
        if self.itemsize is None:
            import numpy as np

            blocks = list(self._vlen_blocks())
            return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        check_memory(self.nbytes, self.limit, self.path, self.entry)
        return self._read(())

    def rows(self, index, cache=None):
        """Whole chunk rows through ``cache`` (each chunk decoded once), else these rows."""
        import numpy as np

        c = self.ds.chunks[0] if self.ds.chunks and self.shape else None
        row = self.nbytes // max(1, self.shape[0]) if self.shape else 0
        if c and cache is not None and c * row <= cache.max_bytes:
            n = self.shape[0]
            if getattr(self, "_bounds", None) is None:
                self._bounds = np.arange(0, n + c, c)
            bounds = self._bounds
            return gather_rows(index, bounds, lambda k: cache.get(
                (id(self), k), lambda: self._read(slice(k * c, min(n, k * c + c)))))
        if isinstance(index, slice):
            return self._read(index)
        uniq, back = np.unique(index, return_inverse=True)  # h5py wants increasing rows
        return self._read(uniq)[back]

    def chunks(self, size: int = CHUNK):
        self._refuse()
        if self.itemsize is None:
            for block in self._vlen_blocks():
                yield from array_chunks(block, self.dtype, size)
            return
        if not self.shape or self.count == 0:
            yield from array_chunks(self.array(), self.dtype, size)
            return
        row = max(1, self.count // self.shape[0]) * self.itemsize
        step = max(1, size // row)
        if self.ds.chunks:  # whole chunks per read: each chunk is decoded once
            c = self.ds.chunks[0]
            chunk_bytes = self.ds.dtype.itemsize
            for d in self.ds.chunks:
                chunk_bytes *= d
            check_memory(max(chunk_bytes, c * row), self.limit, self.path, self.entry)
            step = max(c, step // c * c)
        for i in range(0, self.shape[0], step):
            yield from array_chunks(self._read(slice(i, i + step)), self.dtype, size)


_STD: list = []


def _standard_types() -> list:
    if not _STD:
        h5t = _h5py().h5t
        _STD.extend([
            h5t.STD_I8LE, h5t.STD_I16LE, h5t.STD_I32LE, h5t.STD_I64LE, h5t.STD_U8LE,
            h5t.STD_U16LE, h5t.STD_U32LE, h5t.STD_U64LE, h5t.IEEE_F32LE, h5t.IEEE_F64LE,
            h5t.STD_I8BE, h5t.STD_I16BE, h5t.STD_I32BE, h5t.STD_I64BE, h5t.STD_U8BE,
            h5t.STD_U16BE, h5t.STD_U32BE, h5t.STD_U64BE, h5t.IEEE_F32BE, h5t.IEEE_F64BE])
        _STD.extend(getattr(h5t, n) for n in ("IEEE_F16LE", "IEEE_F16BE") if hasattr(h5t, n))
    return _STD


def _standard_type(tid) -> bool:
    """True for the IEEE/standard integer on-disk types a memory map can read as is."""
    h5t = _h5py().h5t
    std = _standard_types()
    try:
        if tid.get_class() == h5t.COMPOUND:  # h5py's complex numbers: {r, i} floats
            if tid.get_nmembers() != 2:
                return False
            part = tid.get_member_type(0)
            return (part.get_class() == h5t.FLOAT and _standard_type(part)
                    and tid.get_member_type(1).equal(part)
                    and tid.get_member_offset(1) == part.get_size()
                    and tid.get_size() == 2 * part.get_size())
        return any(tid.equal(t) for t in std)
    except H5_ERRORS:
        return False


def local(group, key: str, path, entry=None):
    """``group[key]`` through hard links only, refusing a dataset whose data lives in other
    files: ``group[key]`` itself would follow soft and external links anywhere."""
    h5py = _h5py()
    obj = group
    for part in [p for p in key.split("/") if p]:
        try:
            link = obj.get(part, getlink=True)
        except H5_ERRORS as e:
            raise FormatError(f"cannot read link {part!r}: {e}", path, entry) from None
        if link is None:
            raise KeyError(key)
        if not isinstance(link, h5py.HardLink):
            raise UnsafeInputError(f"{key} is reached through a soft or external link",
                                   path, entry)
        try:
            obj = obj[part]
        except H5_ERRORS as e:
            raise FormatError(f"cannot open {key}: {e}", path, entry) from None
    if isinstance(obj, h5py.Dataset):
        why = _why_unreadable(obj, None)
        if why and why[0] is UnsafeInputError:
            raise UnsafeInputError(why[1], path, entry)
    return obj


def _is_bfloat16(ds, tid=None) -> bool:
    """A 16-bit float with bfloat16's layout (8 exponent bits, 7 mantissa bits)."""
    h5t = _h5py().h5t
    try:
        tid = tid or ds.id.get_type()
        if tid.get_class() != h5t.FLOAT or tid.get_size() != 2:
            return False
        return tid.get_fields()[1:] == (7, 8, 0, 7) and tid.get_order() == h5t.ORDER_LE
    except H5_ERRORS:
        return False


def _unheld_float(ds) -> str | None:
    """Why a float type numpy cannot express (quad, other extended precision) is skipped."""
    h5t = _h5py().h5t
    try:
        tid = ds.id.get_type()
        if tid.get_class() != h5t.FLOAT:
            return None
        bits = tid.get_size() * 8
    except H5_ERRORS:
        return None
    return (f"HDF5 {bits}-bit float (float{bits}, extended/quad precision) has no mlconv "
            "dtype; it is never narrowed silently (--cast float128=float64 decodes it)")


def _filters(dcpl) -> list[tuple[int, str]]:
    out = []
    for k in range(dcpl.get_nfilters()):
        code, _flags, _values, name = dcpl.get_filter(k)
        out.append((code, name.decode("latin1", "replace") if isinstance(name, bytes) else name))
    return out


def _why_unreadable(ds, nbytes: int | None, allow_expand: bool = False, dcpl=None):
    """(error class, why) this dataset's data must not be read, or None."""
    h5py = _h5py()
    if dcpl is None:
        dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        return UnsafeInputError, _virtual_reason(dcpl)
    if dcpl.get_external_count():
        name = _text(dcpl.get_external(0)[0])
        return (UnsafeInputError,
                f"dataset stores its data in an external file ({name}), which mlconv refuses")
    for code, name in _filters(dcpl):
        if code not in BUILTIN_FILTERS:
            label = KNOWN_PLUGINS.get(code, name or "unknown")
            return (UnsupportedError,
                    f"HDF5 filter '{label}' (id {code}) not available: mlconv reads only "
                    "HDF5's built-in filters and lzf and never loads filter plugins")
    if nbytes and not allow_expand and dcpl.get_layout() != h5py.h5d.COMPACT:
        # output is bounded by what the file stores: never-written data is fill values
        stored = ds.id.get_storage_size()
        if nbytes > stored * MAX_RATIO + (64 << 20):
            what = "was never written (only fill values)" if stored == 0 else \
                f"stores only {stored}: more than any filter could expand (a bomb?) or mostly " \
                "never written"
            return (UnsupportedError, f"dataset declares {nbytes} bytes but {what}; "
                    "--allow-expand writes them")
    return None


def _text(name) -> str:
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _virtual_reason(dcpl) -> str:
    try:
        n = dcpl.get_virtual_count()
        first = f" ({_text(dcpl.get_virtual_filename(0))}:" \
                f"{_text(dcpl.get_virtual_dsetname(0))})" if n else ""
    except H5_ERRORS:
        first = ""
    return (f"virtual dataset: its data lives in other files{first[:200]}, "
            "which mlconv refuses to open")


def _virtual_shape(dcpl):
    """A virtual dataset's declared shape, read from its mapping. Never ask for its
    dataspace: for an unlimited mapping libhdf5 opens every source file to size it."""
    if dcpl.get_virtual_count() < 1:
        return None
    return tuple(dcpl.get_virtual_vspace(0).shape)


# --- reading ----------------------------------------------------------------------------

class _Refused(Exception):
    """An external link mlconv will not follow (the reason is the message)."""


class _Reader:
    def __init__(self, path: str, options):
        self.path = path
        self.options = options
        self.size = os.path.getsize(path)
        self.fmap = FileMap(path)
        self.visited: set = set()
        self.files: dict[str, object] = {}
        self.bundle = Bundle(path=path, format="hdf5")

    def open_file(self, path: str):
        h5py = _h5py()
        try:
            return h5py.File(path, "r")
        except H5_ERRORS as e:
            raise FormatError(f"not a readable HDF5 file: {e}", path) from None

    def read(self) -> Bundle:
        from . import pandas as _pandas_hdf

        f = self.open_file(self.path)
        self.bundle.on_close(f.close)
        self.bundle.on_close(self.fmap.close)
        try:
            root = read_attrs(f, self.path, None, self.bundle.notes)
            self.bundle.metadata = {k: model.metadata_text(v) for k, v in root.items()}
            self.walk(f, "", self.fmap, self.size, 0)
            _pandas_hdf.fold_frames(self.bundle, f, self.path)
        except BaseException:
            self.bundle.close()
            raise
        return self.bundle

    def walk(self, group, prefix: str, fmap, size: int, depth: int) -> None:
        h5py = _h5py()
        try:
            names = list(group)
        except H5_ERRORS as e:
            raise FormatError(f"cannot list group: {e}", self.path, prefix or "/") from None
        h5l, h5o = h5py.h5l, h5py.h5o
        links = group.id.links
        for key in names:
            name = f"{prefix}{key}"
            # h5py's low-level calls: its high-level get/[] cost ~0.3 ms an object (a File
            # object, a membership test and a link object each), 30,000 datasets ~10 s
            try:
                bkey = group._e(key)
                kind = links.get_info(bkey).type
            except H5_ERRORS as e:
                raise FormatError(f"cannot read link: {e}", self.path, name) from None
            if kind == h5l.TYPE_SOFT:
                continue  # an alias: the object is listed under its hard-link name
            if kind == h5l.TYPE_EXTERNAL:
                try:
                    link = group.get(key, getlink=True)
                except H5_ERRORS as e:
                    raise FormatError(f"cannot read link: {e}", self.path, name) from None
                self.external(link, name, depth)
                continue
            if kind != h5l.TYPE_HARD:
                self.bundle.skipped[name] = "user-defined link: mlconv cannot follow it"
                continue
            try:
                oid = h5o.open(group.id, bkey)
                info = h5o.get_info(oid)
                ident = (info.fileno, info.addr)  # no File object per entry (30,000 datasets)
            except H5_ERRORS as e:
                raise FormatError(f"cannot open object: {e}", self.path, name) from None
            if ident in self.visited:
                continue  # a second hard link (or a cycle): listed once
            self.visited.add(ident)
            if info.type == h5o.TYPE_GROUP:
                obj = h5py.Group(oid)
                attrs = read_attrs(obj, self.path, name, self.bundle.notes)
                if attrs:
                    self.bundle.group_attrs[name] = attrs
                self.walk(obj, name + "/", fmap, size, depth)
            elif info.type == h5o.TYPE_DATASET:
                entry = self.dataset(h5py.Dataset(oid), name, fmap, size)
                if entry is not None:
                    self.bundle[name] = entry
            # else: a named datatype, which holds no data

    def external(self, link, name: str, depth: int) -> None:
        target = f"{link.filename}:{link.path}"
        if not self.options.allow_external:
            self.bundle.skipped[name] = (f"external link to {target} refused "
                                         "(--allow-external follows links into the same folder)")
            return
        try:
            obj, dest = self.follow(link, depth)
        except _Refused as e:
            self.bundle.skipped[name] = f"external link to {target}: {e}"
            return
        fmap = self.files[dest][1]
        if isinstance(obj, _h5py().Dataset):
            entry = self.dataset(obj, name, fmap, os.path.getsize(dest))
            if entry is not None:
                self.bundle[name] = entry
        else:
            self.walk(obj, name + "/", fmap, os.path.getsize(dest), depth + 1)

    def follow(self, link, depth: int):
        # long: each hop of an external link is checked in place (folder, depth, target)
        """(object, file) an external link names, resolved one link at a time: libhdf5
        would follow any further external link on the way (an absolute path, say), so
        every hop is checked here like the first."""
        h5py = _h5py()
        if depth >= MAX_EXTERNAL_DEPTH:
            raise _Refused("too many external links in a chain")
        folder = os.path.dirname(os.path.realpath(self.path))
        dest = os.path.realpath(os.path.join(folder, link.filename))
        if os.path.isabs(link.filename) or os.path.dirname(dest) != folder:
            raise _Refused("leaves the file's folder")
        if not os.path.isfile(dest):
            raise _Refused("target missing")
        if dest not in self.files:
            from . import guard as _hdf5_guard

            _hdf5_guard.check(dest, self.options)
            other = self.open_file(dest)
            self.bundle.on_close(other.close)
            self.files[dest] = (other, FileMap(dest))
        obj = self.files[dest][0]
        parts = [p for p in link.path.split("/") if p]
        hops = 0
        while parts:
            part = parts.pop(0)
            try:
                step = obj.get(part, getlink=True)
            except H5_ERRORS:
                step = None
            if step is None:
                raise _Refused("target missing")
            hops += 1
            if hops > 64:
                raise _Refused("too many links")
            if isinstance(step, h5py.HardLink):
                try:
                    obj = obj[part]
                except H5_ERRORS:
                    raise _Refused("target missing") from None
            elif isinstance(step, h5py.SoftLink):
                more = [p for p in step.path.split("/") if p]
                if step.path.startswith("/"):
                    obj = obj.file
                parts = more + parts
            elif isinstance(step, h5py.ExternalLink):
                obj, dest = self.follow(h5py.ExternalLink(
                    step.filename, "/".join([step.path.rstrip("/")] + parts)), depth + 1)
                return obj, dest
            else:
                raise _Refused("user-defined link on the way")
        return obj, dest

    def dataset(self, ds, name: str, fmap, size: int):
        # long: a dataset's cases (text, enum, dtype tag, virtual, chunked) in libhdf5's order
        h5py = _h5py()
        try:  # before anything touches the dataspace: see _virtual_shape
            dcpl = ds.id.get_create_plist()
            if dcpl.get_layout() == h5py.h5d.VIRTUAL:
                return self.virtual(ds, name, dcpl)
        except H5_ERRORS as e:
            raise FormatError(f"cannot read dataset layout: {e}", self.path, name) from None
        attrs = read_attrs(ds, self.path, name, self.bundle.notes)
        try:
            shape = ds.shape
            dt = ds.dtype
        except TypeError as e:  # an HDF5 type numpy cannot express (time, ...)
            self.bundle.skipped[name] = f"HDF5 type not supported: {e}"
            return None
        except H5_ERRORS as e:
            why = _unheld_float(ds)
            if why:  # a type, not damage: the rest of the file reads
                return self.extended(ds, name, attrs, fmap, size, why)
            raise FormatError(f"cannot read dataset header: {e}", self.path, name) from None
        if shape is None:
            self.bundle.skipped[name] = "dataset with a null dataspace (no shape, no data)"
            return None
        if dt.names is not None:
            return self.table(ds, name, attrs)
        if h5py.check_ref_dtype(dt) is not None:
            self.bundle.skipped[name] = "object/region references are not supported"
            return None
        encoding = {}
        view = None
        if dt.subdtype is not None:  # array-typed elements: their dims extend the shape
            dt, shape = dt.subdtype[0], tuple(shape) + tuple(dt.subdtype[1])
        string = h5py.check_string_dtype(dt)
        if dt.kind == "O":
            if string is None:
                return self.ragged(ds, name, attrs, shape)
            dtype = DType.string if string.encoding == "utf-8" else DType.bytes
            encoding["h5_string"] = string.encoding
            src = H5Source(ds, dtype, shape, path=self.path, entry=name)
            src.limit = self.options.max_memory
            return Tensor(src, attrs, encoding)
        enum = h5py.check_enum_dtype(dt)
        if enum is not None and dt.kind != "b":  # labels are meaning: attrs, not encoding
            attrs[ENUM_ATTR] = {str(k): int(v) for k, v in enum.items()}
        tag_names = [k for k in (DTYPE_ATTR, *D.OLD_DTYPE_TAGS) if k in attrs]
        real = attrs.get(tag_names[0]) if tag_names else None
        try:
            dtype = D.from_numpy(dt)
            try:  # one type object for the checks below (each get_type costs ~30 us)
                tid = ds.id.get_type()
            except H5_ERRORS:
                tid = None
            if _is_bfloat16(ds, tid):  # HDF5 2.0's bfloat16, which h5py widens to float32
                dtype, view, dt = DType.bfloat16, DType.bfloat16.numpy(), DType.bfloat16.numpy()
            elif D.tagged(dtype.bits, dtype.kind, real) is not None:
                dtype = D.tagged(dtype.bits, dtype.kind, real)
                view = dtype.numpy()
                attrs.pop(tag_names[0])
        except UnsupportedError:
            self.bundle.skipped[name] = f"HDF5 type {dt.str} has no mlconv dtype"
            return None
        if string is not None:
            encoding["h5_string"] = string.encoding
            if string.encoding == "utf-8":  # fixed-width UTF-8 is text, as vlen UTF-8 is
                encoding["h5_string_width"] = dt.itemsize
                src = H5Source(ds, DType.string, shape, path=self.path, entry=name)
                src.itemsize = None  # UCS4 width known once read
                return Tensor(src, attrs, encoding)
        nbytes = dtype.nbytes(shape, dt.itemsize)
        try:
            why = _why_unreadable(ds, nbytes, self.options.allow_expand, dcpl)
            offset = ds.id.get_offset()  # None: never written, only fill values
            # the bytes lie verbatim at offset: same count stored as declared, a type
            # numpy reads as is; else h5py decodes them (today's path)
            plain = (dcpl.get_layout() == h5py.h5d.CONTIGUOUS
                     and not why and offset is not None and nbytes
                     and ds.id.get_storage_size() == nbytes
                     and (dt.kind in "SUb" or dtype is DType.bfloat16
                          or _standard_type(tid or ds.id.get_type())))
        except H5_ERRORS as e:
            raise FormatError(f"cannot read dataset layout: {e}", self.path, name) from None
        if plain:
            if offset + nbytes > size:
                raise FormatError(f"dataset data ({nbytes} bytes at offset {offset}) extends "
                                  f"past the end of the {size}-byte file", self.path, name)
            order = ">" if dt.byteorder == ">" else "<"
            src = FileSource(fmap, offset, dtype, shape, dt.itemsize, order, entry=name)
        else:
            src = H5Source(ds, dtype, shape, view, why, self.path, name)
            src.limit = self.options.max_memory
        return Tensor(src, attrs, encoding)

    def ragged(self, ds, name: str, attrs: dict, shape):
        """A 1-D (or scalar) vlen sequence dataset as a Table of one list column."""
        from .. import records as tables

        base = _h5py().check_vlen_dtype(ds.dtype)
        if base is None or base.kind not in "biuf" or len(shape) > 1:
            self.bundle.skipped[name] = ("variable-length sequences of this type/shape are "
                                         "not supported (1-D sequences of numbers are)")
            return None
        column = name.rsplit("/", 1)[-1]
        typ = _pa().list_(tables.arrow_type(base))
        source = _RaggedSource(ds, column, typ, shape, self.path, name,
                               _why_unreadable(ds, None))
        attrs[RAGGED_ATTR] = True if shape else "scalar"  # written back as a vlen dataset
        from ...dtypes import arrow_type_name as type_name

        return Table([(column, type_name(typ))], source, attrs)

    def extended(self, ds, name: str, attrs: dict, fmap, size: int, why: str):
        """Extended/quad floats h5py cannot read: a contiguous dataset's raw bytes, with the
        bit layout in attrs (``--cast float128=float64`` decodes them); others skipped."""
        h5py = _h5py()
        h5t = h5py.h5t
        try:
            tid = ds.id.get_type()
            spos, epos, esize, mpos, msize = tid.get_fields()
            layout = D.extended_layout(
                tid.get_size(), spos, (epos, esize), (mpos, msize), tid.get_ebias(),
                tid.get_norm() == h5t.NORM_IMPLIED,
                ">" if tid.get_order() == h5t.ORDER_BE else "<")
            shape = tuple(ds.id.get_space().get_simple_extent_dims())
            offset = ds.id.get_offset()
            contiguous = ds.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
        except H5_ERRORS:
            offset, contiguous = None, False
        nbytes = DType.bytes.nbytes(shape, layout["size"]) if contiguous else None
        if not contiguous or offset is None or not nbytes or offset + nbytes > size:
            self.bundle.skipped[name] = why + " (only contiguous ones are read, as raw bytes)"
            return None
        src = FileSource(fmap, offset, DType.bytes, shape, layout["size"], "|", entry=name)
        return Tensor(src, {**attrs, D.FLOAT128_ATTR: layout})

    def virtual(self, ds, name: str, dcpl):
        """Listed with its declared shape; its data (in other files) is refused."""
        why = _virtual_reason(dcpl)
        shape = _virtual_shape(dcpl)
        try:
            dtype = D.from_numpy(ds.dtype) if shape is not None else None
        except (UnsupportedError, TypeError):
            dtype = None
        if dtype is None:
            self.bundle.skipped[name] = why
            return None
        src = H5Source(ds, dtype, shape, None, (UnsafeInputError, why), self.path, name)
        return Tensor(src, read_attrs(ds, self.path, name, self.bundle.notes), {})

    def table(self, ds, name: str, attrs: dict):
        raw = attrs.pop(SCHEMA_ATTR, None)
        try:
            fields = _table_fields(ds.dtype)
            schema = _own_schema(raw) if raw else None
            columns = [(f, t) for f, t, _ in fields]
        except UnsupportedError as e:
            self.bundle.skipped[name] = f"compound dataset: {e.message}"
            return None
        except FormatError as e:
            raise FormatError(e.message, self.path, name) from None
        if len(ds.shape) > 1:
            self.bundle.skipped[name] = f"compound dataset of shape {ds.shape} (only 1-D)"
            return None
        source = _CompoundSource(ds, fields, schema, self.path, name,
                                 _why_unreadable(ds, None, self.options.allow_expand))
        from ...dtypes import arrow_type_name as type_name

        described = [(f, type_name(t)) for f, t in columns] if schema is None else \
            [(f.name, type_name(f.type)) for f in schema]
        return Table(described, source, attrs)


def _table_fields(np_dtype):
    """[(name, arrow type, numpy dtype)] of a compound dtype, using h5py's string info."""
    from .. import records as tables

    h5py = _h5py()
    out = []
    for field in np_dtype.names:
        fdt = np_dtype.fields[field][0]
        base = fdt.subdtype[0] if fdt.subdtype else fdt
        info = h5py.check_string_dtype(base)
        text = info is not None and info.encoding == "utf-8"
        vlen = None
        if base.kind == "O":
            vlen = (str if text else bytes) if info is not None else h5py.check_vlen_dtype(base)
            if vlen is None or (not isinstance(vlen, type) and vlen.kind not in "biuf"):
                raise UnsupportedError(f"field {field!r} holds variable-length sequences "
                                       "of a type mlconv can't hold")
        out.append((field, tables.arrow_type(fdt, text=text, vlen=vlen), fdt))
    return out


def _own_schema(raw):
    """The Arrow schema mlconv stored beside a table (hex text of the IPC bytes)."""
    import pyarrow as pa

    try:
        return pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(raw)))
    except (ValueError, TypeError, pa.ArrowInvalid) as e:
        raise UnsupportedError(f"unreadable {SCHEMA_ATTR}: {e}") from None


def _nat_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_timestamp(t) or pa.types.is_date64(t) or pa.types.is_duration(t)


def chunk_rows(ds, rows: int) -> int:
    """Rows per read near ``rows`` that cover whole chunks: no chunk is decoded twice."""
    if not ds.chunks:
        return rows
    return max(ds.chunks[0], rows // ds.chunks[0] * ds.chunks[0])


class _RaggedSource(TableSource):
    """A dataset of vlen sequences as one list column."""

    def __init__(self, ds, column: str, typ, shape, path, name, why):
        self.ds, self.column, self.typ, self.shape = ds, column, typ, shape
        self.path, self.name, self.why = path, name, why
        self.num_rows = shape[0] if shape else 1

    def schema(self):
        return _pa().schema([_pa().field(self.column, self.typ)])

    def batches(self, rows: int, columns=None):
        import numpy as np

        from .. import records

        if self.why:
            raise self.why[0](self.why[1], self.path, self.name)
        for i in range(0, self.num_rows, rows):
            try:
                block = self.ds[i:i + rows] if self.shape else \
                    np.array([self.ds[()], None], dtype=object)[:1]
            except H5_ERRORS as e:
                raise FormatError(f"cannot read sequences: {e}", self.path, self.name) \
                    from None
            col = records.to_arrow(np.asarray(block, dtype=object), self.typ, self.column,
                                   self.path, self.name)
            yield _pa().RecordBatch.from_arrays([col], schema=self.schema())


class _CompoundSource(TableSource):
    """A 1-D compound dataset as record batches, chunk-aligned, of only the fields asked."""

    def __init__(self, ds, fields, schema, path, name, why):
        self.ds, self.fields, self._schema = ds, fields, schema
        self.path, self.name, self.why = path, name, why
        self.num_rows = ds.shape[0] if ds.shape else 1

    def schema(self):
        import pyarrow as pa

        return self._schema or pa.schema([pa.field(f, t) for f, t, _ in self.fields])

    def batches(self, rows: int, columns=None):
        import pyarrow as pa

        if self.why:
            raise self.why[0](self.why[1], self.path, self.name)
        sch = self.schema()
        wanted = self.fields if columns is None else [f for f in self.fields if f[0] in columns]
        if columns is not None:
            sch = pa.schema([sch.field(f[0]) for f in wanted], metadata=sch.metadata)
        ds, step = self.ds, chunk_rows(self.ds, rows)
        for i in range(0, self.num_rows, step):
            try:
                view = ds.fields([f[0] for f in wanted]) if columns is not None else ds
                block = view[i:i + step] if ds.shape else view[()].reshape(1)
            except H5_ERRORS as e:
                raise FormatError(f"cannot read table rows: {e}", self.path, self.name) \
                    from None
            yield pa.RecordBatch.from_arrays(self._columns(block, wanted, sch), schema=sch)

    def _columns(self, block, wanted, sch) -> list:
        import numpy as np
        import pyarrow as pa

        from .. import records

        if len(wanted) == 1 and block.dtype.names is None:
            single = np.empty(len(block), dtype=[(wanted[0][0], block.dtype)])
            single[wanted[0][0]] = block
            block = single
        cols = []
        for (field, typ, _), target in zip(wanted, sch, strict=True):
            arr = records.to_arrow(block[field], typ, field, self.path, self.name)
            if _nat_type(target.type) and pa.types.is_int64(arr.type):
                arr = pa.array(block[field], mask=block[field] == -(1 << 63))
            if arr.type != target.type:
                try:
                    arr = arr.cast(target.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise FormatError(f"column {field!r}: {e}", self.path, self.name) \
                        from None
            cols.append(arr)
        return cols

