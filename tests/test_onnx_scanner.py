"""ONNX read through mlconv's own protobuf scanner (formats/_protobuf.py): no ``import onnx``,
raw_data memory-mapped in place, the same tensors as ``onnx.load`` over the corpus and the
onnx wheel's test data, and hostile encodings refused in one line, in bounded time and memory."""

from __future__ import annotations

import glob
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mlconv
from mlconv import dtypes as D
from mlconv.errors import FormatError, MlconvError
from mlconv.formats import _protobuf as pb

from .conftest import CORPUS
from .test_conformance import MLCONV, assert_copied_file_to_file

WHEEL_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


# --- a tiny encoder for hand-made (and hostile) messages -----------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes | int, wire: int = 2) -> bytes:
    tag = _varint(number << 3 | wire)
    if wire == 2:
        return tag + _varint(len(payload)) + payload
    if wire == 0:
        return tag + _varint(payload)
    return tag + payload  # fixed32/64: the bytes as given


def _model_bytes(*initializers: bytes) -> bytes:
    graph = b"".join(_field(5, t) for t in initializers)
    return _field(1, 10, 0) + _field(7, graph)


def _float_tensor(name: str, values, packed_dims=True) -> bytes:
    dims = _field(1, b"".join(_varint(len(values)) for _ in [0])) if packed_dims \
        else _field(1, len(values), 0)
    return dims + _field(2, 1, 0) + _field(8, name.encode()) + \
        _field(9, np.asarray(values, "<f4").tobytes())


# --- the read side imports neither onnx nor ml_dtypes ----------------------------------------

def test_inspect_and_convert_never_import_onnx(tmp_path):
    src = tmp_path / "m.onnx"
    mlconv.save({"w": np.arange(1000, dtype=np.float32), "b": np.ones(3, np.float32)}, src,
                format="onnx", metadata={"k": "v"})
    code = ("import sys\nfrom mlconv.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e\n"
            "bad = [m for m in ('onnx', 'ml_dtypes', 'google.protobuf') if m in sys.modules]\n"
            "assert not bad, bad\n")
    for args in (["inspect", str(src)], [str(src), str(tmp_path / "out.safetensors")]):
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    with mlconv.open(tmp_path / "out.safetensors") as b:
        assert b["w"].numpy().tolist() == list(range(1000))


def test_raw_data_is_mapped_where_it_lies(tmp_path):
    arr = np.arange(4096, dtype=np.float32).reshape(64, 64)
    src = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(helper.make_graph(
        [], "g", [], [], initializer=[numpy_helper.from_array(arr, "w")])), str(src))
    with mlconv.open(src) as b:
        path, offset, count = b["w"].source.span
        assert path == str(src) and count == arr.nbytes
        assert src.read_bytes()[offset:offset + count] == arr.tobytes()
        assert isinstance(b["w"].numpy(), np.memmap)
        assert np.array_equal(b["w"].numpy(), arr)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_onnx_to_safetensors_moves_raw_data_file_to_file(tmp_path):
    n = 4 << 20
    src = tmp_path / "m.onnx"
    mlconv.save({"w": np.arange(n, dtype=np.float32)}, src, format="onnx")
    assert [s.method for s in mlconv.plan(src, tmp_path / "o.safetensors").steps] == \
        ["zero-copy"]
    assert_copied_file_to_file(src, tmp_path / "o.safetensors", tmp_path, n * 4)
    with mlconv.open(tmp_path / "o.safetensors") as b:
        assert np.array_equal(b["w"].numpy(), np.arange(n, dtype=np.float32))


def test_packed_and_unpacked_encodings_agree_with_onnx(tmp_path):
    """Readers must take repeated scalars both packed and one field each (protobuf's rule):
    dims and float_data written both ways read as onnx reads them."""
    values = [1.5, -2.0, 3.25]
    float_data = b"".join(_field(4, np.float32(v).tobytes(), 5) for v in values)
    unpacked = _field(1, 3, 0) + _field(2, 1, 0) + _field(8, b"f") + float_data
    packed = _field(1, _varint(3)) + _field(2, 1, 0) + _field(8, b"g") + \
        _field(4, np.asarray(values, "<f4").tobytes())
    ints = _field(1, 2, 0) + _field(2, 6, 0) + _field(8, b"i") + _field(5, -7, 0) + \
        _field(5, _varint(1 << 40 | 5))  # int32_data: the low 32 bits, as protobuf keeps
    src = tmp_path / "m.onnx"
    src.write_bytes(_model_bytes(unpacked, packed, ints))
    ref = onnx.load(str(src))
    with mlconv.open(src) as b:
        for t in ref.graph.initializer:
            want = numpy_helper.to_array(t)
            got = b[t.name].numpy()
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), t.name


# --- the scanner against onnx.load ----------------------------------------------------------

def _payload(a):
    return a.tolist() if a.dtype.kind in "OUS" else np.ascontiguousarray(a).tobytes()


def _reference(path: Path):
    """{name: (TensorProto, array)} and metadata as the onnx package reads ``path``; None
    for a .pb that is not a TensorProto (sequences, optionals)."""
    if path.suffix == ".pb":
        t = TensorProto()
        t.ParseFromString(path.read_bytes())
        try:
            arr = numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - not a tensor: another kind of .pb
            return None
        if t.data_type == 0 or tuple(arr.shape) != tuple(t.dims):
            return None
        return {t.name or path.stem: (t, arr)}, {}
    model = onnx.load(str(path), load_external_data=False)
    tensors = {t.name: (t, numpy_helper.to_array(t, str(path.parent)))
               for t in model.graph.initializer}
    return tensors, {p.key: p.value for p in model.metadata_props}


def _onnx_files():
    out = []
    for root in (CORPUS / "onnx" / "good", WHEEL_DATA):
        for pattern in ("**/*.onnx", "**/test_data_set_*/*.pb", "*.pb"):
            out += sorted(Path(p) for p in glob.glob(str(root / pattern), recursive=True))
    return out


def test_scanner_agrees_with_onnx_load_everywhere():
    """Every ONNX model and TensorProto of the corpus and of the onnx wheel's backend test
    data: same names, dtypes, shapes, bytes and metadata as onnx.load + numpy_helper."""
    files = _onnx_files()
    assert len(files) > 300, len(files)  # the wheel's data is there: nothing silently skipped
    compared = 0
    for path in files:
        ref = _reference(path)
        if ref is None:
            continue
        tensors, metadata = ref
        with mlconv.open(path) as b:
            assert set(b) | set(b.skipped) == set(tensors), path
            assert b.metadata == metadata, path
            for name, (proto, arr) in tensors.items():
                if name in b.skipped:  # a type mlconv does not read: said so, not guessed
                    assert proto.data_type not in D._ONNX, (path, name)
                    continue
                got = b[name]
                if proto.data_type != TensorProto.STRING:
                    assert got.dtype is D.from_onnx(proto.data_type), (path, name)
                assert tuple(got.shape) == tuple(arr.shape), (path, name)
                assert _payload(got.numpy()) == _payload(arr), (path, name)
                compared += 1
    assert compared > 300


def test_sparse_initializers_and_external_locations_are_found(tmp_path):
    values = numpy_helper.from_array(np.ones(2, np.float32), "sv")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "si")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = helper.make_graph([], "g", [], [], initializer=[
        numpy_helper.from_array(np.zeros(3, np.float32), "dense")], sparse_initializer=[sparse])
    src = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph), str(src))
    with mlconv.open(src) as b:
        assert list(b) == ["dense"] and "sv" in b.skipped


# --- hostile encodings ----------------------------------------------------------------------

# peak RSS (KiB) of this process since its exec (ru_maxrss would start at pytest's peak)
_HWM = ("print(next(int(line.split()[1]) for line in open('/proc/self/status')\n"
        "           if line.startswith('VmHWM')))\n")
_PEAK = ("import sys, mlconv\n"
         "try:\n    mlconv.load(sys.argv[1])\nexcept mlconv.errors.FormatError:\n    pass\n"
         "else:\n    raise SystemExit('read')\n" + _HWM)


def _refused(path: Path, match: str):
    """One-line FormatError naming the file, in bounded time and memory (peak RSS of a
    process doing only that), from the API and from the CLI."""
    start = time.perf_counter()
    with pytest.raises(FormatError, match=match) as info:
        mlconv.load(path)
    assert time.perf_counter() - start < 20
    assert "\n" not in str(info.value) and path.name in str(info.value)
    res = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) < 150 << 10, res.stdout  # KiB: the interpreter and numpy
    res = subprocess.run([MLCONV, "inspect", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr


def test_huge_length_is_refused(tmp_path):
    bad = tmp_path / "huge.onnx"
    bad.write_bytes(_field(1, 10, 0) + _varint(7 << 3 | 2) + _varint((1 << 62) + 5) + b"\0" * 64)
    _refused(bad, "runs past the end")


def test_raw_data_length_past_the_end_of_its_tensor(tmp_path):
    t = _field(1, 2, 0) + _field(2, 1, 0) + _field(8, b"w") + _varint(9 << 3 | 2) + \
        _varint(100) + b"\0" * 8  # raw_data claims 100 bytes, its tensor holds 8
    bad = tmp_path / "inner.onnx"
    bad.write_bytes(_model_bytes(t))
    _refused(bad, "100-byte protobuf field runs past the end of its message")


@pytest.mark.parametrize("keep", [3, 10, 25, 40, -1])
def test_truncated_fields_are_refused(tmp_path, keep):
    good = _model_bytes(_float_tensor("w", list(range(8))))
    assert len(good) > 40
    bad = tmp_path / f"cut{keep % len(good)}.onnx"
    bad.write_bytes(good[:keep])
    _refused(bad, "not a valid ONNX model")


def test_overlong_varint(tmp_path):
    bad = tmp_path / "varint.onnx"
    bad.write_bytes(b"\x08" + b"\xff" * 11 + b"\x01")
    _refused(bad, "longer than 10 bytes")


@pytest.mark.parametrize(("wire", "match"), [(3, "groups"), (4, "groups"), (6, "wire type 6"),
                                             (7, "wire type 7")])
def test_groups_and_unknown_wire_types(tmp_path, wire, match):
    bad = tmp_path / f"wire{wire}.onnx"
    bad.write_bytes(_field(1, 10, 0) + _varint(3 << 3 | wire) + b"\0" * 8)
    _refused(bad, match)


def test_depth_10000(tmp_path):
    """OptionalProto inside OptionalProto, 10 000 deep (a .pb): the depth cap answers, not
    Python's recursion limit."""
    inner = _float_tensor("t", [1.0])
    msg = _field(3, inner)
    for _ in range(10_000):
        msg = _field(7, msg)
    bad = tmp_path / "deep.pb"
    bad.write_bytes(msg)
    _refused(bad, "nested more than")


def test_nested_optionals_within_the_cap_read(tmp_path):
    msg = _field(3, _float_tensor("t", [1.0, 2.0]))
    for _ in range(3):
        msg = _field(1, b"opt") + _field(7, msg)
    src = tmp_path / "opt.pb"
    src.write_bytes(msg)
    with mlconv.open(src) as b:
        assert b["opt"].numpy().tolist() == [1.0, 2.0]


def test_a_million_fields(tmp_path):
    bad = tmp_path / "fields.onnx"
    bad.write_bytes(_field(1, 10, 0) + _field(7, _field(1, b"") * 1_000_000))
    _refused(bad, "more than 500000 fields")


def test_a_million_dims(tmp_path):
    t = _field(1, _varint(1) * 1_000_000) + _field(2, 1, 0) + _field(8, b"w")
    bad = tmp_path / "dims.onnx"
    bad.write_bytes(_model_bytes(t))
    _refused(bad, "more than 64 dimensions")


def test_segmented_tensor_is_refused(tmp_path):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2], float_data=[1, 2])
    t.segment.begin, t.segment.end = 0, 2
    src = tmp_path / "seg.onnx"
    onnx.save_model(helper.make_model(helper.make_graph([], "g", [], [], initializer=[t])),
                    str(src))
    with mlconv.open(src) as b:
        assert "segment" in b.skipped["w"]
    with pytest.raises(MlconvError, match="segment"):
        mlconv.convert(src, tmp_path / "o.safetensors")


def test_scanner_unit_limits():
    with pytest.raises(FormatError, match="runs past"):
        pb.Message(b"\x0a\x05abc", 0, 5)
    with pytest.raises(FormatError, match="cut off"):
        pb.Message(b"\x08", 0, 1)
    with pytest.raises(FormatError, match="field number 0"):
        pb.Message(b"\x02\x00", 0, 2)
    raw = _field(2, b"xy") + _field(2, 7, 0) + _field(3, 5, 0)
    msg = pb.Message(raw, 0, len(raw))
    assert msg.span(2) == (2, 2) and msg.int(2) == 7 and msg.int(3) == 5
    assert pb.varints(_varint(1) + _varint(1 << 63) + _varint(300)).tolist() == \
        [1, 1 << 63, 300]
    with pytest.raises(FormatError, match="cut off"):
        pb.varints(b"\x80")


# --- external data in one ordered pass, both ways --------------------------------------------

def test_weights_model_bytes_are_what_onnx_serializes():
    """The external-data weights model is encoded without onnx: byte for byte what
    ``_weights_model`` + external_data through the onnx package gives."""
    from mlconv.formats import onnx as fmt
    from mlconv.model import Tensor

    tensors = [("a/w", Tensor.from_numpy(np.zeros((3, 4), np.float32))),
               ("s", Tensor.from_numpy(np.array(5, np.int64))),
               ("é", Tensor.from_numpy(np.zeros((0, 2), np.float16))),
               ("q", Tensor.from_numpy(np.zeros(7, np.uint8)))]
    spans = [(0, 48), (4096, 8), (8192, 0), (8192, 7)]
    metadata = {"k": "v", "empty": ""}
    model = fmt._weights_model(tensors)
    for proto, (start, length) in zip(model.graph.initializer, spans, strict=True):
        proto.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "x.data"), ("offset", str(start)), ("length", str(length))):
            proto.external_data.add(key=k, value=v)
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)
    assert fmt._weights_bytes(tensors, spans, "x.data", metadata) == model.SerializeToString()


def test_external_data_written_without_importing_onnx(tmp_path):
    src = tmp_path / "w.safetensors"
    tensors = {f"t{i}": np.full((8, 8), i, np.float32) for i in range(5)}
    mlconv.save(tensors, src)
    dst = tmp_path / "m.onnx"
    code = ("import sys\nfrom mlconv.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e\n"
            "assert 'onnx' not in sys.modules and 'ml_dtypes' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code, str(src), str(dst), "--external-data"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    onnx.checker.check_model(str(dst), full_check=True)
    model = onnx.load(str(dst))
    assert {t.name: numpy_helper.to_array(t).tolist() for t in model.graph.initializer} == \
        {k: v.tolist() for k, v in tensors.items()}


def test_tensors_are_copied_in_storage_order(tmp_path):
    """Initializers listed against the order of their bytes: the bundle lists them in
    storage order (a conversion reads the data file front to back), and an ONNX write lays
    its side file out in its sources' order."""
    arrays = {f"t{i}": np.full(1024, i, np.float32) for i in range(4)}
    data = tmp_path / "m.data"
    inits = []
    with open(data, "wb") as f:
        for i, (name, arr) in enumerate(reversed(arrays.items())):  # t3 first in the file
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[1024],
                            data_location=TensorProto.EXTERNAL)
            for k, v in (("location", "m.data"), ("offset", str(i * 4096)),
                         ("length", "4096")):
                t.external_data.add(key=k, value=v)
            f.write(arr.tobytes())
            inits.append(t)
    inits.sort(key=lambda t: t.name)  # t0..t3 in the model, t3..t0 in the file
    src = tmp_path / "m.onnx"
    src.write_bytes(helper.make_model(helper.make_graph([], "g", [], [], initializer=inits))
                    .SerializeToString())
    with mlconv.open(src) as b:
        assert list(b) == ["t3", "t2", "t1", "t0"]
    st = tmp_path / "w.safetensors"  # header t2 t0 t3 t1, bytes t0 t1 t2 t3
    header = json.dumps({k: {"dtype": "F32", "shape": [1024],
                             "data_offsets": [int(k[1]) * 4096, int(k[1]) * 4096 + 4096]}
                         for k in ("t2", "t0", "t3", "t1")}).encode()
    st.write_bytes(struct.pack("<Q", len(header)) + header
                   + b"".join(arrays[f"t{i}"].tobytes() for i in range(4)))
    order = ["t0", "t1", "t2", "t3"]
    out = tmp_path / "o.onnx"
    mlconv.convert(st, out, options={"external_data": True})
    model = onnx.load(str(out), load_external_data=False)
    offsets = {t.name: int(dict((e.key, e.value) for e in t.external_data)["offset"])
               for t in model.graph.initializer}
    assert sorted(offsets, key=offsets.get) == order
    assert [t.name for t in model.graph.initializer] == ["t2", "t0", "t3", "t1"]
    back = onnx.load(str(out))
    assert all(np.array_equal(numpy_helper.to_array(t), arrays[t.name])
               for t in back.graph.initializer)


def test_reading_raw_data_models_keeps_memory_flat(tmp_path):
    """The scanner reads the pages that hold fields, not the payloads between them: a
    process converting a 96 MiB model peaks far below the model's size (the file written
    in one write, as onnx.save does: the page cache then holds large folios, and a memory
    map would count a whole folio for each field touched)."""
    per, count = 512 << 10, 192
    tensors = [_field(1, per // 4, 0) + _field(2, 1, 0) + _field(8, f"t{i}".encode())
               + _field(9, bytes(per)) for i in range(count)]
    src = tmp_path / "big.onnx"
    src.write_bytes(_model_bytes(*tensors))
    del tensors
    code = "import sys, mlconv\nmlconv.convert(sys.argv[1], sys.argv[2])\n" + _HWM
    res = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "o.safetensors")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) < 64 << 10, res.stdout  # KiB: 25 MiB here; a map of it all: 120
    with mlconv.open(tmp_path / "o.safetensors") as b:
        assert len(b) == count and b["t5"].shape == (per // 4,)
