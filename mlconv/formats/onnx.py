"""ONNX: initializers are the tensors, metadata_props the metadata.

Reading never imports the onnx package: the protobuf is scanned by ``_protobuf`` for the
few fields used, every length checked. Embedded ``raw_data`` is memory-mapped where it lies
in the .onnx (zero-copy: conversions copy it file to file, never decoded); typed fields are
decoded as onnx's ``numpy_helper`` does; external data is memory-mapped from its side file,
whose location must be relative, without ``..``, and resolve (symlinks included) inside the
model's folder, with offset + length inside the file. Standalone ``TensorProto`` files
(``.pb``) read as one tensor (or a Sequence/OptionalProto of them). Constant nodes are not
listed (they are graph, not weights); segmented and sparse tensors are skipped, named.

Writing (and ``validate``'s checker) uses the onnx package. It makes a model whose graph
outputs are its initializers (it passes ``onnx.checker`` and onnxruntime returns the
tensors); over 2 GiB, or with ``--external-data``, payloads go to one side file
``DST.<random>.data`` at 4 KiB-aligned offsets, copied file to file: a name unique to each
write, so the model and its data are published together by the model's rename, and no other
file's data is ever replaced. ``--template MODEL.onnx`` replaces initializers of a graph.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

from .. import dtypes as D
from ..dtypes import DType
from ..errors import FormatError, MlconvError, UnsafeInputError, UnsupportedError
from ..model import Bundle, Tensor
from ..sources import ArraySource, FileMap, FileSource, check_memory, unpack4
from . import _protobuf as pb
from .base import ALIGN, MAX_MEMORY, Capabilities, Format, option, stem_name

EXTERNAL_LIMIT = (2 << 30) - (16 << 20)  # protobuf's 2 GiB cap, with room for the graph
LFS = b"version https://git-lfs"
OLD_MODEL_LIMIT = 256 << 20  # bytes of a replaced model parsed to find its own side file


def _onnx():
    import onnx

    return onnx


# field numbers (onnx.proto, onnx-data.proto) of what the reader uses
_M_IR, _M_GRAPH, _M_META = 1, 7, 14                                      # ModelProto
_G_NODE, _G_INIT, _G_SPARSE = 1, 5, 15                                   # GraphProto
(_T_DIMS, _T_TYPE, _T_SEGMENT, _T_FLOAT, _T_INT32, _T_STRING, _T_INT64, _T_NAME, _T_RAW,
 _T_DOUBLE, _T_UINT64, _T_EXTERNAL, _T_LOCATION, _T_META) = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                            11, 13, 14, 16)  # TensorProto
_KEY, _VALUE = 1, 2                                       # StringStringEntryProto
_S_NAME, _S_TENSORS, _S_SEQUENCE, _S_OPTIONAL = 1, 3, 5, 7  # Sequence/OptionalProto
EXTERNAL = 1      # TensorProto.DataLocation.EXTERNAL
MAX_DIMS = 64     # numpy's own limit on dimensions
_ONNX_CODES = 28  # element types the onnx package knows (mlconv reads fewer)


def _pages(path: str) -> _Ranged:
    """The file's bytes for the scanner, read a page at a time (pread): only the pages that
    hold fields are read, never the payloads between them. (Not a memory map: a file
    written in one write sits in large page-cache folios, and each field touched through a
    map would count a whole folio as ours.)"""
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    return _Ranged(lambda start, end: os.pread(fd, end - start, start), size, keep=8,
                   closer=lambda: os.close(fd))


def _entries(msg: pb.Message, number: int, what: str) -> dict[str, str]:
    """A repeated StringStringEntryProto as a dict (the last of a key wins)."""
    out = {}
    for entry in msg.children(number, wanted={_KEY, _VALUE}):
        out[entry.text(_KEY, f"{what} key")] = entry.text(_VALUE, f"{what} value")
    return out


def _dims(msg: pb.Message) -> tuple[int, ...]:
    out: list[int] = []
    for wire, value in msg.repeated(_T_DIMS, pb.VARINT):
        if wire == pb.BYTES:
            if value[1] > 10 * MAX_DIMS:
                raise FormatError(f"more than {MAX_DIMS} dimensions", msg.path, msg.entry)
            raw = msg.buf[value[0]:value[0] + value[1]]
            out.extend(int(v) for v in pb.varints(raw, msg.path, msg.entry))
        else:
            out.append(value)
        if len(out) > MAX_DIMS:
            raise FormatError(f"more than {MAX_DIMS} dimensions", msg.path, msg.entry)
    return tuple(d - (1 << 64) if d >> 63 else d for d in out)


def _fixed(msg: pb.Message, number: int, width: int):
    """Little-endian bytes of a repeated fixed32/fixed64 field, packed or not."""
    parts = []
    for wire, value in msg.repeated(number, pb.FIXED32 if width == 4 else pb.FIXED64):
        if wire == pb.BYTES:
            if value[1] % width:
                raise FormatError(f"packed field {number} is not a whole number of "
                                  f"{width}-byte values", msg.path, msg.entry)
            parts.append(msg.buf[value[0]:value[0] + value[1]])
        else:
            parts.append(value.to_bytes(width, "little"))
    return b"".join(parts)


def _varints(msg: pb.Message, number: int):
    """A repeated varint field, packed or not, as uint64 (protobuf's 64-bit view)."""
    import numpy as np

    parts = []
    for wire, value in msg.repeated(number, pb.VARINT):
        if wire == pb.BYTES:
            parts.append(pb.varints(msg.buf[value[0]:value[0] + value[1]], msg.path,
                                    msg.entry))
        else:
            parts.append(np.array([value], np.uint64))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def _typed(msg: pb.Message, code: int, dtype: DType, shape, name):
    """The values of the typed field ``code`` keeps its data in, as onnx's numpy_helper
    reads them: (b)float16, float8, bool and small ints are int32_data's low bits."""
    import numpy as np

    count = math.prod(shape)
    if code in (1, 14):
        arr = np.frombuffer(_fixed(msg, _T_FLOAT, 4), "<f4")
    elif code in (11, 15):
        arr = np.frombuffer(_fixed(msg, _T_DOUBLE, 8), "<f8")
    elif code == 7:
        arr = _varints(msg, _T_INT64).view(np.int64)
    elif code in (12, 13):
        arr = _varints(msg, _T_UINT64).astype(dtype.numpy())
    else:
        low = _varints(msg, _T_INT32).astype(np.uint32)  # protobuf keeps an int32's low bits
        if dtype.is_subbyte:  # two values a byte, low nibble first
            packed = low.astype(np.uint8)
            if packed.size * 2 not in (count, count + 1):
                raise FormatError(f"typed data holds {packed.size * 2} values for "
                                  f"{list(shape)}", msg.path, name)
            arr = unpack4(packed.tobytes(), dtype, count)
        elif dtype.bits == 32:
            arr = low.view(np.int32)
        else:
            arr = low.astype(np.uint16 if dtype.bits == 16 else np.uint8).view(dtype.numpy())
    if dtype.kind == "complex":
        arr = arr.view(dtype.numpy()) if arr.size % 2 == 0 else arr
    if arr.size != count:
        raise FormatError(f"typed data holds {arr.size} values for {list(shape)}", msg.path,
                          name)
    return arr.reshape(shape)


def safe_location(folder: str, location: str, path, entry) -> str:
    """The side file of an external tensor, refused unless it lies inside ``folder``."""
    parts = location.replace("\\", "/").split("/")
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) \
            or ".." in parts or ":" in parts[0]:
        raise UnsafeInputError(f"external data location {location!r} leaves the model's "
                               "folder", path, entry)
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, target]) != root:
        raise UnsafeInputError(f"external data location {location!r} resolves outside the "
                               "model's folder (a symlink?)", path, entry)
    if not os.path.isfile(target):
        raise FormatError(f"external data file {location!r} is missing", path, entry)
    return target


class _Reader:
    def __init__(self, path: str, max_memory: int | None = MAX_MEMORY):
        self.path, self.max_memory = path, max_memory
        self.folder = os.path.dirname(os.path.abspath(path))
        self.maps: dict[str, FileMap] = {}

    def fmap(self, target: str) -> FileMap:
        return self.maps.setdefault(target, FileMap(target))

    def tensor(self, msg: pb.Message, name: str) -> Tensor:
        """The tensor of a scanned TensorProto: raw_data memory-mapped where it lies in the
        file, typed fields decoded, external data mapped from its side file."""
        msg.entry = name
        code = msg.int(_T_TYPE)
        dtype = D.from_onnx(code)
        shape = _dims(msg)
        if any(d < 0 for d in shape):
            raise FormatError(f"negative dimension in {list(shape)}", self.path, name)
        if msg.has(_T_SEGMENT):
            raise UnsupportedError("segmented tensors (TensorProto.segment) are not "
                                   "supported", self.path, name)
        if msg.int(_T_LOCATION) == EXTERNAL:
            return Tensor(self.external(msg, name, dtype, shape))
        if dtype is DType.string:  # ONNX defines STRING as UTF-8 text
            return Tensor.from_numpy(self.strings(msg, name, shape))
        nbytes = dtype.nbytes(shape)
        raw = msg.span(_T_RAW)
        if raw is not None:
            if _odd_packed(dtype, shape, raw[1]):
                return Tensor(self.unpacked(msg.buf[raw[0]:raw[0] + raw[1]], dtype, shape, name))
            if nbytes is None or raw[1] != nbytes:
                raise FormatError(f"raw_data holds {raw[1]} bytes, {dtype.value} "
                                  f"{list(shape)} needs {nbytes}", self.path, name)
            return Tensor(FileSource(self.fmap(self.path), raw[0], dtype, shape, entry=name))
        return Tensor(ArraySource(_typed(msg, code, dtype, shape, name), dtype))

    def strings(self, msg: pb.Message, name: str, shape):
        import numpy as np

        count = math.prod(shape)
        spans = msg.spans(_T_STRING)
        if count != len(spans):
            raise FormatError(f"string_data holds {len(spans)} values for {list(shape)}",
                              self.path, name)
        raw = [bytes(msg.buf[a:a + n]) for a, n in spans]
        if _entries(msg, _T_META, "tensor metadata").get(D.DTYPE_TAG) == DType.bytes.value:
            return np.array(raw, dtype=bytes).reshape(shape)  # bytes written by mlconv
        try:
            return np.array([v.decode("utf-8") for v in raw], dtype=str).reshape(shape)
        except UnicodeDecodeError:  # not text after all: kept as raw bytes, never mangled
            return np.array(raw, dtype=bytes).reshape(shape)

    def unpacked(self, buf, dtype: DType, shape, name) -> ArraySource:
        """An odd count of 4-bit values: the packed bytes end in half a byte of padding,
        which no payload of ours has, so the values are held unpacked, one per byte."""
        count = math.prod(shape)
        check_memory(count, self.max_memory, self.path, name)
        return ArraySource(unpack4(bytes(buf), dtype, count).reshape(shape), dtype)

    def external(self, msg: pb.Message, name, dtype, shape):
        info = _entries(msg, _T_EXTERNAL, "external data")
        target = safe_location(self.folder, info.get("location", ""), self.path, name)
        size = os.path.getsize(target)
        nbytes = dtype.nbytes(shape)
        if nbytes is None and dtype.is_subbyte:  # an odd count: with half a byte of padding
            nbytes = (dtype.bits * math.prod(shape) + 7) // 8
        try:
            offset = int(info.get("offset", 0))
            length = int(info.get("length", nbytes if nbytes is not None else -1))
        except ValueError:
            raise FormatError("external data offset/length are not numbers", self.path,
                              name) from None
        if offset < 0 or length < 0 or offset + length > size:
            raise FormatError(f"external data {offset}+{length} lies outside the {size}-byte "
                              f"file {info.get('location')!r}", self.path, name)
        if _odd_packed(dtype, shape, length):
            with open(target, "rb") as f:
                f.seek(offset)
                return self.unpacked(f.read(length), dtype, shape, name)
        if nbytes is None or length != nbytes:
            raise FormatError(f"external data holds {length} bytes, {dtype.value} "
                              f"{list(shape)} needs {nbytes}", self.path, name)
        return FileSource(self.fmap(target), offset, dtype, shape, entry=name)

    def close(self) -> None:
        for fmap in self.maps.values():
            fmap.close()


def _odd_packed(dtype: DType, shape, length: int) -> bool:
    """Is this an odd count of 4-bit values, packed in ``length`` bytes with its padding?"""
    count = math.prod(shape)
    return dtype.is_subbyte and count % 2 == 1 and length == (count + 1) // 2


def _plausible(reader: _Reader, msg: pb.Message) -> bool:
    """Does this scan hold a tensor whose data agrees with its type and dims? (any bytes
    scan as any message, so a .pb's kind is told by its content, as onnx's reader does)."""
    code = msg.int(_T_TYPE)
    if not 0 < code <= _ONNX_CODES or msg.has(_T_SEGMENT) or msg.int(_T_LOCATION) == EXTERNAL:
        return False
    try:
        reader.tensor(msg, "")
    except UnsupportedError:
        return True  # a tensor, of a type mlconv does not read: the reader says so
    except FormatError:
        return False
    return True


def _pb_tensors(reader: _Reader, buf, name: str) -> list:
    """The tensors of a ``.pb`` file: a TensorProto, or a SequenceProto/OptionalProto of
    them (ONNX's test data uses all three), as [(name, scanned TensorProto)]."""
    path = reader.path
    top = pb.Message(buf, 0, len(buf), path)
    if _plausible(reader, top):
        return [(top.text(_T_NAME, "tensor name") or name, top)]
    seq = top.children(_S_TENSORS)
    if seq and all(_plausible(reader, t) for t in seq):
        base = top.text(_S_NAME, "sequence name") or name
        return [(f"{base}/{i}", t) for i, t in enumerate(seq)]
    return _optional(reader, top, name)


def _optional(reader: _Reader, opt: pb.Message, name: str) -> list:
    """An OptionalProto's tensors: its tensor, its sequence's, or its inner optional's
    (nesting capped by the scanner's depth)."""
    base = opt.text(_S_NAME, "optional name") or name
    tensor = opt.span(_S_TENSORS)
    if tensor is not None:
        msg = opt.child(tensor)
        if _plausible(reader, msg):
            return [(base, msg)]
    seq = opt.span(_S_SEQUENCE)
    values = opt.child(seq).children(_S_TENSORS) if seq is not None else []
    if values and all(_plausible(reader, v) for v in values):
        return [(f"{base}/{i}", v) for i, v in enumerate(values)]
    inner = opt.span(_S_OPTIONAL)
    if inner is not None and tensor is None and seq is None:
        return _optional(reader, opt.child(inner), base)
    raise FormatError("not a TensorProto, SequenceProto or OptionalProto of tensors",
                      reader.path)


class _Ranged:
    """Bytes for the scanner, fetched a page at a time through ``get(start, end)``: a
    local file (pread, the last ``keep`` pages kept) or a remote object (Format.header_ranges,
    every page kept). Fields are skipped by their length, so pages holding only payloads
    are never asked for."""

    PAGE = 4096

    def __init__(self, get, size: int, keep: int | None = None, closer=None):
        self.get, self.size, self.keep, self.closer = get, size, keep, closer
        self.pages: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self.size

    def close(self) -> None:
        self.pages.clear()
        if self.closer is not None:
            self.closer()
            self.closer = None

    def _page(self, k: int) -> bytes:
        page = self.pages.get(k)
        if page is None:
            if self.keep is not None and len(self.pages) >= self.keep:
                del self.pages[next(iter(self.pages))]  # the oldest: scans move forward
            page = self.pages[k] = self.get(k * self.PAGE, min(self.size, (k + 1) * self.PAGE))
        return page

    def __getitem__(self, i):
        if not isinstance(i, slice):
            return self._page(i // self.PAGE)[i % self.PAGE]
        start, stop = max(0, i.start or 0), min(self.size, self.size if i.stop is None
                                               else i.stop)
        if stop <= start:
            return b""
        if stop - start > self.PAGE:
            return self.get(start, stop)
        first, last = start // self.PAGE, (stop - 1) // self.PAGE
        joined = b"".join(self._page(k) for k in range(first, last + 1))
        return joined[start - first * self.PAGE:stop - first * self.PAGE]


class _Model:
    """What the reader uses of a scanned ModelProto."""

    def __init__(self, buf, path: str):
        if buf[:len(LFS)] == LFS:
            raise FormatError("a Git LFS pointer, not the file itself (run git lfs pull)",
                              path)
        try:
            top = pb.Message(buf, 0, len(buf), path, wanted={_M_IR, _M_GRAPH, _M_META})
            # a message field given twice is merged: its repeated fields add up
            graphs = [top.child(s, wanted={_G_NODE, _G_INIT, _G_SPARSE})
                      for s in top.spans(_M_GRAPH)]
        except FormatError as e:
            raise FormatError(f"not a valid ONNX model: {e.message}", path, e.entry) from None
        if not graphs and not top.int(_M_IR):
            raise FormatError("not an ONNX model (no graph, no IR version)", path)
        self.top, self.path = top, path
        self.nodes = sum(len(g.spans(_G_NODE)) for g in graphs)
        self.initializers = [(g, s) for g in graphs for s in g.spans(_G_INIT)]
        self.sparse = [(g, s) for g in graphs for s in g.spans(_G_SPARSE)]

    def metadata(self) -> dict[str, str]:
        return _entries(self.top, _M_META, "metadata")

    def tensors(self):
        """(name, scanned TensorProto) of each initializer, scanned one at a time."""
        for i, (graph, span) in enumerate(self.initializers):
            msg = graph.child(span, entry=f"initializer #{i}")
            yield msg.text(_T_NAME, "initializer name"), msg

    def sparse_names(self) -> list[str]:
        out = []
        for graph, span in self.sparse:
            values = graph.child(span, wanted={1}).span(1)
            name = graph.child(values, wanted={_T_NAME}).text(_T_NAME, "tensor name") \
                if values else ""
            out.append(name or "sparse")
        return out


def read_model(path: str):
    """The model as the onnx package holds it (the writing side: templates)."""
    from google.protobuf.message import DecodeError

    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(LFS):
        raise FormatError("a Git LFS pointer, not the file itself (run git lfs pull)", path)
    model = _onnx().ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise FormatError(f"not a valid ONNX model: {e}", path) from None
    return model


@dataclass(frozen=True)
class OnnxOptions:
    template: str | None = option("ONNX output: replace the initializers of this model.",
                                  metavar="MODEL.onnx", file=True)
    external_data: bool = option("ONNX output: tensor bytes in a side file (automatic over "
                                 "2 GiB).", default=False)


class Onnx(Format):
    def side_files(self, path: str) -> list[str]:
        buf = _pages(path)
        try:
            model = _Model(buf, path)
            return [_entries(msg, _T_EXTERNAL, "external data").get("location", "")
                    for _, msg in model.tensors() if msg.has(_T_EXTERNAL)]
        finally:
            buf.close()

    def header_ranges(self, get, size: int, path: str) -> bool:
        """The model's structure, scanned through ranged reads: raw_data is skipped by
        its length, never fetched. External data needs its side files: fetched whole."""
        if path.lower().endswith(".pb"):
            return False
        buf = _Ranged(get, size)
        try:
            model = _Model(buf, path)
            model.metadata()
            model.sparse_names()
            for _, msg in model.tensors():
                if msg.int(_T_LOCATION) == EXTERNAL:
                    return False
                _dims(msg)
                for number in (_T_FLOAT, _T_INT32, _T_STRING, _T_INT64, _T_DOUBLE,
                               _T_UINT64, _T_META):  # what the reader decodes in place
                    for start, n in msg.spans(number):
                        buf[start:start + n]
        except FormatError:
            return False  # the reader says what is wrong, from the whole file
        return True

    def read(self, path: str, options) -> Bundle:
        reader = _Reader(path, options.max_memory)
        bundle = Bundle(path=path, format=self.id)
        bundle.on_close(reader.close)
        buf = _pages(path)
        try:
            if path.lower().endswith(".pb"):
                tensors = _pb_tensors(reader, buf, stem_name(path))
                what = "duplicate tensor name"
            else:
                model = _Model(buf, path)
                bundle.metadata = model.metadata()
                if model.nodes:  # the graph travels only onnx -> onnx (the file is its template)
                    bundle.encoding.update({"onnx.model": path, "onnx.nodes": model.nodes})
                tensors = model.tensors()
                what = "duplicate initializer name: a second tensor would silently replace " \
                    "the first"
            entries, names = [], set()
            for name, msg in tensors:
                if name in names:
                    raise FormatError(what, path, name)
                names.add(name)
                entry = self._tensor(reader, msg, name, bundle)
                if entry is not None:
                    entries.append((name, entry))
            if all(isinstance(e.source, FileSource) for _, e in entries):
                # listed in storage order, so a conversion reads each file front to back
                entries.sort(key=lambda item: (item[1].source.path, item[1].source.offset))
            for name, entry in entries:
                bundle[name] = entry
            if not path.lower().endswith(".pb"):
                for name in model.sparse_names():
                    bundle.skipped[name] = "sparse initializers are not supported"
        finally:
            buf.close()
        return bundle

    def _tensor(self, reader, proto, name, bundle):
        try:
            return reader.tensor(proto, name)
        except UnsupportedError as e:
            bundle.skipped[name] = e.message
            return None

    def left_behind(self, bundle: Bundle) -> list[str]:
        nodes = bundle.encoding.get("onnx.nodes")
        return [f"graph not carried: {nodes} node{'s' if nodes != 1 else ''}"] if nodes else []

    def check(self, path: str, bundle: Bundle, deep: bool):
        problems, warnings = super().check(path, bundle, deep)
        if path.lower().endswith(".pb"):
            return problems, warnings
        onnx = _onnx()
        try:
            onnx.checker.check_model(path, full_check=True)
        except Exception as e:  # noqa: BLE001 - the checker raises many kinds
            problems.append((None, f"onnx.checker: {str(e).strip().splitlines()[0]}"))
        return problems, warnings

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        tensors = list(bundle.items())  # fitted: tensors of dtypes ONNX holds
        total = sum(t.nbytes or 0 for _, t in tensors)
        external = self.own(options).external_data or total > EXTERNAL_LIMIT
        template = self.own(options).template
        if template is None and bundle.format == self.id:
            template = bundle.encoding.get("onnx.model")  # onnx -> onnx keeps its graph
        # a side file name unique to this write: the model published with it is the only
        # one that refers to it, so the pair changes as one rename (see _write_side)
        folder = os.path.dirname(os.path.abspath(path))
        side_name = f"{os.path.basename(path)}.{os.urandom(6).hex()}.data"
        old = _own_side_files(path)
        if external and not template and all(t.dtype.bits for _, t in tensors):
            # weights only, all in the side file: the model is a few fields per tensor,
            # encoded here without importing onnx (its import costs more than the copy)
            spans: list = []
            _write_side([t for _, t in tensors], folder, side_name, f, options, spans)
            f.write(_weights_bytes(tensors, spans, side_name, bundle.metadata))
        else:
            f.write(self._model(bundle, tensors, template, external, folder, side_name, f,
                                options, path))
        if hasattr(f, "after_publish"):
            f.after_publish.append(lambda: _remove(old - {side_name}, folder))

    def _model(self, bundle, tensors, template, external, folder, side_name, f, options,
               path) -> bytes:
        """The model's bytes through the onnx package: templates, inline data (checked)."""
        onnx = _onnx()
        if template:
            model, pending = _fill_template(template, dict(tensors), path)
        else:
            model, pending = _weights_model(tensors), dict(tensors)
        metadata = {p.key: p.value for p in model.metadata_props}
        metadata.update(bundle.metadata)
        del model.metadata_props[:]
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        placed = []
        for proto in model.graph.initializer:
            t = pending.get(proto.name)
            if t is None:
                continue
            if external and t.dtype is not DType.string and t.dtype is not DType.bytes:
                proto.data_location = EXTERNAL
                placed.append((proto, t))
            else:
                _fill_inline(proto, t)
        if placed:
            spans: list = []
            _write_side([t for _, t in placed], folder, side_name, f, options, spans)
            for (proto, _), (start, length) in zip(placed, spans, strict=True):
                del proto.external_data[:]
                for k, v in (("location", side_name), ("offset", str(start)),
                             ("length", str(length))):
                    proto.external_data.add(key=k, value=v)
        else:  # (with external data the checker wants the side file in place)
            try:
                onnx.checker.check_model(model)
            except Exception as e:  # noqa: BLE001 - the checker raises many kinds
                raise UnsupportedError(f"the model would not pass onnx.checker: {e}",
                                       path) from None
        return model.SerializeToString()


def _weights_bytes(tensors, spans, side_name: str, metadata: dict) -> bytes:
    """The ModelProto ``_weights_model`` makes, with every initializer in ``side_name`` at
    ``spans``, encoded field by field (byte for byte what onnx serializes, tested)."""
    f = pb.field
    inits, outputs = [], []
    for (name, t), (start, length) in zip(tensors, spans, strict=True):
        code = D.to_onnx(t.dtype)
        external = b"".join(f(13, f(1, k) + f(2, v)) for k, v in (
            ("location", side_name), ("offset", str(start)), ("length", str(length))))
        inits.append(f(5, b"".join(f(1, d) for d in t.shape) + f(2, code) + f(8, name)
                       + external + f(14, EXTERNAL)))
        shape = b"".join(f(1, f(1, d)) for d in t.shape)
        outputs.append(f(12, f(1, name) + f(2, f(1, f(1, code) + f(2, shape)))))
    graph = f(2, "mlconv_weights") + b"".join(inits) + b"".join(outputs)
    meta = b"".join(f(14, f(1, str(k)) + f(2, str(v))) for k, v in metadata.items())
    return (f(1, _ir_version({t.dtype for _, t in tensors})) + f(2, "mlconv") + f(7, graph)
            + f(8, f(1, "") + f(2, 21)) + meta)


def _write_side(tensors, folder: str, side_name: str, f, options, spans: list) -> None:
    """Write the payloads to a temp file, then rename it to ``side_name`` (a fresh name, so
    nothing is replaced); it is removed again if the model is not published. One pass, in
    source order, each at a 4 KiB-aligned offset; ``spans`` gets (offset, length) of each."""
    from .. import atomic, fileio

    tmp = atomic.temp_path(folder, side_name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    spans[:] = [None] * len(tensors)
    # copied in the order the bytes lie in their source files: both files front to back
    order = sorted(range(len(tensors)), key=lambda i: (0, *tensors[i].span[:2])
                   if tensors[i].span is not None else (1, "", i))
    try:
        try:
            sink = fileio.Sink(fd, options.progress, options.kernel_copy)
            for i in order:
                sink.pad_to(ALIGN)
                start = sink.pos
                tensors[i].write_to(sink)
                spans[i] = (start, sink.pos - start)
        finally:
            os.close(fd)
        final = os.path.join(folder, side_name)
        try:
            os.link(tmp, final)  # never replaces: fails if the name were somehow taken
        except FileExistsError:
            raise
        except OSError:  # no hard links here; the name is fresh and random
            os.rename(tmp, final)
        getattr(f, "companions", []).append(final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _own_side_files(path: str) -> set:
    """The side files of the model now at ``path`` that only mlconv's writes to ``path``
    create (``DST.<hex>.data``): removed once the new model replaced it. Any other data
    file (``DST.data``, another model's) is left alone: it may be someone's source."""
    if not os.path.isfile(path) or os.path.getsize(path) > OLD_MODEL_LIMIT:
        return set()  # (a model that big holds its data inline: no side file to remove)
    base = os.path.basename(path)
    out = set()
    try:
        buf = _pages(path)
        try:
            for _, msg in _Model(buf, path).tensors():
                v = _entries(msg, _T_EXTERNAL, "external data").get("location", "")
                if v.startswith(base + ".") and v.endswith(".data") \
                        and all(c in "0123456789abcdef" for c in v[len(base) + 1:-5]) \
                        and len(v) == len(base) + 18:
                    out.add(v)
        finally:
            buf.close()
    except (MlconvError, OSError):  # an unreadable old output: keep its files
        return set()
    return out


def _remove(names, folder: str) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass


def _new_initializer(name: str, t: Tensor):
    onnx = _onnx()
    proto = onnx.TensorProto(name=name, data_type=D.to_onnx(t.dtype), dims=list(t.shape))
    return proto


def _fill_inline(proto, t: Tensor) -> None:
    if t.dtype in (DType.string, DType.bytes):
        if t.dtype is DType.bytes:  # ONNX has one STRING type: the shared tag keeps bytes
            proto.metadata_props.add(key=D.DTYPE_TAG, value=DType.bytes.value)
        values = t.numpy().reshape(-1).tolist()
        proto.string_data.extend(v.encode("utf-8") if isinstance(v, str) else v
                                 for v in values)
        return
    proto.raw_data = b"".join(bytes(c) for c in t.chunks())


def _ir_version(dtypes) -> int:
    if DType.float8_e8m0fnu in dtypes:
        return 12
    if DType.float4_e2m1fn in dtypes:
        return 11
    if DType.int4 in dtypes or DType.uint4 in dtypes:
        return 10
    return 9 if any(d.value.startswith("float8") for d in dtypes) else 8


def _weights_model(tensors):
    from onnx import helper

    inits, outputs = [], []
    for name, t in tensors:
        inits.append(_new_initializer(name, t))
        outputs.append(helper.make_tensor_value_info(name, D.to_onnx(t.dtype), list(t.shape)))
    graph = helper.make_graph([], "mlconv_weights", [], outputs, initializer=inits)
    model = helper.make_model(graph, producer_name="mlconv",
                              opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = _ir_version({t.dtype for _, t in tensors})
    return model


def _fill_template(template: str, tensors: dict, path):
    """(the template's model, name -> tensor to write): every initializer given must match
    by name, dtype and shape; the others keep their bytes (external ones are carried)."""
    model = read_model(template)
    reader = _Reader(template)
    kept: dict = {}  # the template's own tensors, read by the scanner: checked or carried
    buf = _pages(template)
    try:
        for name, msg in _Model(buf, template).tensors():
            if name not in tensors:
                try:
                    kept[name] = reader.tensor(msg, name)
                except MlconvError as e:
                    kept[name] = e
    finally:
        buf.close()
    mismatches = []
    present = {p.name: p for p in model.graph.initializer}
    for name in tensors:
        if name not in present:
            mismatches.append(f"{name}: not an initializer of the template")
    pending = {}
    for proto in model.graph.initializer:
        t = tensors.get(proto.name)
        if t is None:
            t = kept.get(proto.name)  # kept as it is; external bytes are carried over
            if isinstance(t, MlconvError):
                mismatches.append(f"{proto.name}: {t.message}")
                continue
            if proto.data_location != EXTERNAL:
                continue
        else:
            want = (D.from_onnx(proto.data_type), tuple(proto.dims))
            if (t.dtype, tuple(t.shape)) != want:
                mismatches.append(f"{proto.name}: {t.dtype.value} {list(t.shape)}, the "
                                  f"template has {want[0].value} {list(want[1])}")
                continue
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                      "uint64_data", "string_data", "external_data"):
            proto.ClearField(field)
        proto.data_location = 0  # DEFAULT
        pending[proto.name] = t
    if mismatches:
        raise UnsupportedError("--template does not match: " + "; ".join(mismatches),
                               template)
    return model, pending


FORMAT = Onnx(
    representations=(("initializers", "tensors"),),
    write_options=OnnxOptions,
    id="onnx",
    description="ONNX models (initializers, external data) and TensorProto .pb files",
    extensions=(".onnx", ".pb"),
    caps=Capabilities(tensors=True, dtypes=D.ONNX_DTYPES, metadata=True, zero_copy=True),
    requires=("onnx",),
)
