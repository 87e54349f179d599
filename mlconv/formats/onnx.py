"""ONNX through the onnx package: initializers are the tensors, metadata_props the metadata.

Reading loads the protobuf without external data, then resolves each tensor itself: raw
bytes, the typed fields (``numpy_helper``), or external data memory-mapped from its side
file — whose location must be relative, without ``..``, and resolve (symlinks included)
inside the model's folder, with offset + length inside the file. Standalone ``TensorProto``
files (``.pb``) read as one tensor. Constant nodes are not listed (they are graph, not
weights). Writing makes a model whose graph outputs are its initializers (it passes
``onnx.checker`` and onnxruntime returns the tensors); over 2 GiB, or with
``--external-data``, payloads go to one side file ``DST.<random>.data`` at 4 KiB-aligned
offsets, copied file to file: a name unique to each write, so the model and its data are
published together by the model's rename, and no other file's data is ever replaced.
``--template MODEL.onnx`` replaces initializers of an existing graph.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass

from .. import dtypes as D
from ..dtypes import DType
from ..errors import FormatError, MlconvError, UnsafeInputError, UnsupportedError
from ..model import Bundle, Tensor
from ..sources import ArraySource, FileMap, FileSource, unpack4
from .base import ALIGN, Capabilities, Format, option, stem_name

EXTERNAL_LIMIT = (2 << 30) - (16 << 20)  # protobuf's 2 GiB cap, with room for the graph
LFS = b"version https://git-lfs"
OLD_MODEL_LIMIT = 256 << 20  # bytes of a replaced model parsed to find its own side file


def _onnx():
    import onnx

    return onnx


def _parse(cls, data: bytes, path, what):
    from google.protobuf.message import DecodeError

    if data.startswith(LFS):
        raise FormatError("a Git LFS pointer, not the file itself (run git lfs pull)", path)
    obj = cls()
    try:
        obj.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise FormatError(f"not a valid ONNX {what}: {e}", path) from None
    return obj


def _text(value, path, what: str) -> str:
    """A protobuf string field; corrupt files can carry bytes that are not UTF-8 there."""
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not valid UTF-8 text", path) from None


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
    def __init__(self, path: str):
        self.path = path
        self.folder = os.path.dirname(os.path.abspath(path))
        self.maps: dict[str, FileMap] = {}

    def tensor(self, t, name: str) -> Tensor:
        onnx = _onnx()
        dtype = D.from_onnx(t.data_type)
        shape = tuple(t.dims)
        if any(d < 0 for d in shape):
            raise FormatError(f"negative dimension in {list(shape)}", self.path, name)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return Tensor(self.external(t, name, dtype, shape))
        if dtype is DType.string:  # ONNX defines STRING as UTF-8 text
            import numpy as np

            count = 1
            for d in shape:
                count *= d
            if count != len(t.string_data):
                raise FormatError(f"string_data holds {len(t.string_data)} values for "
                                  f"{list(shape)}", self.path, name)
            raw = list(t.string_data)
            if any(p.key == D.DTYPE_TAG and p.value == DType.bytes.value
                   for p in t.metadata_props):  # bytes written by mlconv stay bytes
                return Tensor.from_numpy(np.array(raw, dtype=bytes).reshape(shape))
            try:
                return Tensor.from_numpy(np.array([v.decode("utf-8") for v in raw],
                                                  dtype=str).reshape(shape))
            except UnicodeDecodeError:  # not text after all: kept as raw bytes, never mangled
                return Tensor.from_numpy(np.array(raw, dtype=bytes).reshape(shape))
        nbytes = dtype.nbytes(shape)
        if t.HasField("raw_data"):
            import numpy as np

            raw = t.raw_data
            if nbytes is None or len(raw) != nbytes:
                raise FormatError(f"raw_data holds {len(raw)} bytes, {dtype.value} "
                                  f"{list(shape)} needs {nbytes}", self.path, name)
            count = 1
            for d in shape:
                count *= d
            arr = unpack4(raw, dtype, count) if dtype.is_subbyte else \
                np.frombuffer(raw, dtype.numpy(), count)
            return Tensor(ArraySource(arr.reshape(shape), dtype))
        try:
            from onnx import numpy_helper

            arr = numpy_helper.to_array(t)
        except (ValueError, TypeError, KeyError) as e:
            raise FormatError(f"typed data unreadable: {e}", self.path, name) from None
        if arr.shape != shape:
            raise FormatError(f"typed data holds {arr.size} values for {list(shape)}",
                              self.path, name)
        return Tensor(ArraySource(arr.astype(dtype.numpy(), copy=False), dtype))

    def external(self, t, name, dtype, shape):
        info = {_text(e.key, self.path, "external data key"):
                _text(e.value, self.path, "external data value") for e in t.external_data}
        target = safe_location(self.folder, info.get("location", ""), self.path, name)
        size = os.path.getsize(target)
        nbytes = dtype.nbytes(shape)
        try:
            offset = int(info.get("offset", 0))
            length = int(info.get("length", nbytes if nbytes is not None else -1))
        except ValueError:
            raise FormatError("external data offset/length are not numbers", self.path,
                              name) from None
        if offset < 0 or length < 0 or offset + length > size:
            raise FormatError(f"external data {offset}+{length} lies outside the {size}-byte "
                              f"file {info.get('location')!r}", self.path, name)
        if nbytes is None or length != nbytes:
            raise FormatError(f"external data holds {length} bytes, {dtype.value} "
                              f"{list(shape)} needs {nbytes}", self.path, name)
        fmap = self.maps.setdefault(target, FileMap(target))
        return FileSource(fmap, offset, dtype, shape, entry=name)

    def close(self) -> None:
        for fmap in self.maps.values():
            fmap.close()


def _pb_tensors(data: bytes, path, name) -> list:
    """The tensors of a ``.pb`` file: a TensorProto, or a SequenceProto/OptionalProto of
    them (ONNX's test data uses all three), as [(name, TensorProto)]."""
    onnx = _onnx()
    t = _parse(onnx.TensorProto, data, path, "TensorProto")
    if _plausible(t):
        return [(t.name or name, t)]
    seq = _parse(onnx.SequenceProto, data, path, "SequenceProto")
    if seq.tensor_values and all(_plausible(v) for v in seq.tensor_values):
        base = seq.name or name
        return [(f"{base}/{i}", v) for i, v in enumerate(seq.tensor_values)]
    opt = _parse(onnx.OptionalProto, data, path, "OptionalProto")
    base = opt.name or name
    if opt.HasField("tensor_value") and _plausible(opt.tensor_value):
        return [(base, opt.tensor_value)]
    values = opt.sequence_value.tensor_values if opt.HasField("sequence_value") else []
    if values and all(_plausible(v) for v in values):
        return [(f"{base}/{i}", v) for i, v in enumerate(values)]
    raise FormatError("not a TensorProto, SequenceProto or OptionalProto of tensors", path)


def _plausible(t) -> bool:
    """Does this parse hold a tensor whose data agrees with its type and dims? (protobuf
    parses any bytes as any message, so a .pb's kind is told by its content)."""
    if t.HasField("segment") or t.data_location == _onnx().TensorProto.EXTERNAL:
        return False
    try:
        from onnx import numpy_helper

        arr = numpy_helper.to_array(t)
        return tuple(arr.shape) == tuple(t.dims) and t.data_type != 0
    except Exception:  # noqa: BLE001 - any failure means: not this kind of message
        return False


def read_model(path: str):
    with open(path, "rb") as f:
        data = f.read()
    model = _parse(_onnx().ModelProto, data, path, "model")
    if not model.HasField("graph") and not model.ir_version:
        raise FormatError("not an ONNX model (no graph, no IR version)", path)
    return model


@dataclass(frozen=True)
class OnnxOptions:
    template: str | None = option("ONNX output: replace the initializers of this model.",
                                  metavar="MODEL.onnx", file=True)
    external_data: bool = option("ONNX output: tensor bytes in a side file (automatic over "
                                 "2 GiB).", default=False)


class Onnx(Format):
    def side_files(self, path: str) -> list[str]:
        model = read_model(path)
        return [e.value for init in model.graph.initializer for e in init.external_data
                if e.key == "location"]

    def read(self, path: str, options) -> Bundle:
        reader = _Reader(path)
        bundle = Bundle(path=path, format=self.id)
        bundle.on_close(reader.close)
        name = stem_name(path)
        if path.lower().endswith(".pb"):
            with open(path, "rb") as f:
                data = f.read()
            for key, proto in _pb_tensors(data, path, name):
                key = _text(key, path, "tensor name")
                if key in bundle or key in bundle.skipped:
                    raise FormatError("duplicate tensor name", path, key)
                entry = self._tensor(reader, proto, key, bundle)
                if entry is not None:
                    bundle[key] = entry
            return bundle
        model = read_model(path)
        bundle.metadata = {_text(p.key, path, "metadata key"):
                           _text(p.value, path, "metadata value") for p in model.metadata_props}
        if model.graph.node:  # the graph travels only onnx -> onnx (this file is its template)
            bundle.encoding.update({"onnx.model": path, "onnx.nodes": len(model.graph.node)})
        for init in model.graph.initializer:
            name = _text(init.name, path, "initializer name")
            if name in bundle or name in bundle.skipped:
                raise FormatError("duplicate initializer name: a second tensor would "
                                  "silently replace the first", path, name)
            entry = self._tensor(reader, init, name, bundle)
            if entry is not None:
                bundle[name] = entry
        for sparse in model.graph.sparse_initializer:
            bundle.skipped[sparse.values.name or "sparse"] = "sparse initializers are not " \
                                                             "supported"
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
        onnx = _onnx()
        tensors = list(bundle.items())  # fitted: tensors of dtypes ONNX holds
        total = sum(t.nbytes or 0 for _, t in tensors)
        external = self.own(options).external_data or total > EXTERNAL_LIMIT
        template = self.own(options).template
        if template is None and bundle.format == self.id:
            template = bundle.encoding.get("onnx.model")  # onnx -> onnx keeps its graph
        if template:
            model, pending = _fill_template(template, dict(tensors), path)
        else:
            model, pending = _weights_model(tensors), dict(tensors)
        metadata = {p.key: p.value for p in model.metadata_props}
        metadata.update(bundle.metadata)
        del model.metadata_props[:]
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        # a side file name unique to this write: the model published with it is the only
        # one that refers to it, so the pair changes as one rename (see _publish_side)
        folder = os.path.dirname(os.path.abspath(path))
        side_name = f"{os.path.basename(path)}.{secrets.token_hex(6)}.data"
        placed = []
        for proto in model.graph.initializer:
            t = pending.get(proto.name)
            if t is None:
                continue
            if external and t.dtype is not DType.string and t.dtype is not DType.bytes:
                proto.data_location = onnx.TensorProto.EXTERNAL
                placed.append((proto, t))
            else:
                _fill_inline(proto, t)
        if placed:
            _write_side(placed, folder, side_name, f, options)
        else:  # (with external data the checker wants the side file in place)
            try:
                onnx.checker.check_model(model)
            except Exception as e:  # noqa: BLE001 - the checker raises many kinds
                raise UnsupportedError(f"the model would not pass onnx.checker: {e}",
                                       path) from None
        old = _own_side_files(path)
        f.write(model.SerializeToString())
        if hasattr(f, "after_publish"):
            f.after_publish.append(lambda: _remove(old - {side_name}, folder))


def _write_side(placed, folder: str, side_name: str, f, options) -> None:
    """Write the payloads to a temp file, then rename it to ``side_name`` (a fresh name, so
    nothing is replaced); it is removed again if the model is not published."""
    from .. import atomic, fileio

    tmp = atomic.temp_path(folder, side_name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        try:
            sink = fileio.Sink(fd, options.progress, options.kernel_copy)
            for proto, t in placed:
                sink.pad_to(ALIGN)
                start = sink.pos
                t.write_to(sink)
                del proto.external_data[:]
                for k, v in (("location", side_name), ("offset", str(start)),
                             ("length", str(sink.pos - start))):
                    proto.external_data.add(key=k, value=v)
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
    try:
        model = _onnx().load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable old output: keep its files
        return set()
    out = set()
    for t in model.graph.initializer:
        for e in t.external_data:
            v = e.value
            if e.key == "location" and v.startswith(base + ".") and v.endswith(".data") \
                    and all(c in "0123456789abcdef" for c in v[len(base) + 1:-5]) \
                    and len(v) == len(base) + 18:
                out.add(v)
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
    mismatches = []
    present = {p.name: p for p in model.graph.initializer}
    for name in tensors:
        if name not in present:
            mismatches.append(f"{name}: not an initializer of the template")
    pending = {}
    for proto in model.graph.initializer:
        t = tensors.get(proto.name)
        if t is None:
            try:  # kept as it is; external bytes of the template are carried over
                t = reader.tensor(proto, proto.name)
            except MlconvError as e:
                mismatches.append(f"{proto.name}: {e.message}")
                continue
            if proto.data_location != _onnx().TensorProto.EXTERNAL:
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
        proto.data_location = _onnx().TensorProto.DEFAULT
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
