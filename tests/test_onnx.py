"""ONNX: initializers in (raw, typed, external), models out that the checker and onnxruntime
accept, external data, templates, and hostile models refused without reading outside."""

import os
import re

import ml_dtypes
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import mlconv
from mlconv import dtypes as D
from mlconv.cli import cli
from mlconv.errors import FormatError, MlconvError, UnsafeInputError

from .conftest import CORPUS, corpus_files, corpus_params
from .helpers import payload, sample, st_read, st_write

ort = pytest.importorskip("onnxruntime")

ONNX_NUMERIC = sorted((d for d in D.ONNX_DTYPES if d.bits), key=str)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def model_of(tensors: dict, path, nodes=(), inputs=(), outputs=None, external=False):
    inits = [numpy_helper.from_array(v, k) for k, v in tensors.items()]
    outs = outputs if outputs is not None else [
        helper.make_tensor_value_info(k, D.to_onnx(D.from_numpy(v.dtype)), list(v.shape))
        for k, v in tensors.items()]
    graph = helper.make_graph(list(nodes), "g", list(inputs), outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data",
                        size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize("dtype", ONNX_NUMERIC, ids=str)
def test_every_dtype_reads_and_round_trips(tmp_path, dtype):
    shape = (2, 4)
    arr = sample(dtype, shape, seed=3)
    src = model_of({"w": arr}, tmp_path / "m.onnx")
    with mlconv.open(src) as b:
        got = b["w"].numpy()
        assert b["w"].dtype is dtype and got.shape == shape and payload(got) == payload(arr)
    out = tmp_path / "back.onnx"
    mlconv.convert(src, out)
    onnx.checker.check_model(str(out), full_check=True)
    ref = numpy_helper.to_array(onnx.load(str(out)).graph.initializer[0])
    assert payload(ref) == payload(arr)
    for fmt in ("safetensors", "npz", "h5", "npy"):
        held = {"safetensors": D.SAFETENSORS_DTYPES, "npz": D.NPY_DTYPES, "npy": D.NPY_DTYPES,
                "h5": {d for d in D.DType if not d.is_subbyte}}[fmt]
        if dtype not in held:
            continue
        dst = tmp_path / f"o.{fmt}"
        mlconv.convert(src, dst, overwrite=True)
        back = tmp_path / f"again-{fmt}.onnx"
        mlconv.convert(dst, back)
        init = onnx.load(str(back)).graph.initializer[0]
        assert init.name == ("o" if fmt == "npy" else "w")  # npy names by the file stem
        assert payload(numpy_helper.to_array(init)) == payload(arr)


def test_typed_fields_and_strings(tmp_path):
    tensors = [
        helper.make_tensor("f", TensorProto.FLOAT, [3], [1.0, 2.5, -3.0]),
        helper.make_tensor("h", TensorProto.FLOAT16, [2],
                           np.array([1.5, -2.0], np.float16).view(np.uint16).tolist()),
        helper.make_tensor("bf", TensorProto.BFLOAT16, [2],
                           np.array([1.5, -2.0], ml_dtypes.bfloat16).view(np.uint16).tolist()),
        helper.make_tensor("i8", TensorProto.INT8, [3], [-1, 0, 7]),
        helper.make_tensor("b", TensorProto.BOOL, [2], [True, False]),
        helper.make_tensor("i64", TensorProto.INT64, [2], [1 << 40, -5]),
        helper.make_tensor("d", TensorProto.DOUBLE, [1], [0.125]),
        helper.make_tensor("u64", TensorProto.UINT64, [1], [1 << 63]),
        helper.make_tensor("s", TensorProto.STRING, [2], [b"ab", b"c"]),
    ]
    graph = helper.make_graph([], "g", [], [], initializer=tensors)
    src = tmp_path / "typed.onnx"
    onnx.save_model(helper.make_model(graph), str(src))
    with mlconv.open(src) as b:
        for t in tensors:
            ref = numpy_helper.to_array(t)
            got = b[t.name].numpy()
            if t.data_type == TensorProto.STRING:  # text, as numpy_helper gives it
                assert b[t.name].dtype.value == "string"
                assert got.tolist() == ref.tolist() == ["ab", "c"]
            else:
                assert got.dtype == ref.dtype and payload(got) == payload(ref), t.name


def test_weights_model_runs_in_onnxruntime(tmp_path):
    tensors = {"enc/w": sample(D.DType.float32, (3, 4)), "ids": np.arange(5, dtype=np.int64),
               "h": sample(D.DType.float16, (2,)), "mask": np.array([True, False])}
    src = tmp_path / "in.safetensors"
    st_write(src, tensors, {"source": "test"})
    out = tmp_path / "w.onnx"
    res = run(src, out)
    assert res.exit_code == 0, res.stderr
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    assert {p.key: p.value for p in model.metadata_props} == {"source": "test"}
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for name, value in zip(names, sess.run(None, {}), strict=True):
        assert payload(value) == payload(tensors[name])


def test_external_data_in_and_out(tmp_path):
    tensors = {f"l{i}": sample(D.DType.float32, (64, 32), seed=i) for i in range(5)}
    src = model_of(tensors, tmp_path / "ext.onnx", external=True)
    with mlconv.open(src) as b:
        assert all(isinstance(b[k].numpy(), np.memmap) for k in tensors)  # zero-copy
        assert all(payload(b[k].numpy()) == payload(v) for k, v in tensors.items())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "w.onnx"
    res = run(src, out, "--external-data")
    assert res.exit_code == 0, res.stderr
    raw = onnx.load(str(out), load_external_data=False)
    side = {dict((e.key, e.value) for e in t.external_data)["location"]
            for t in raw.graph.initializer}
    assert len(side) == 1 and re.fullmatch(r"w\.onnx\.[0-9a-f]{12}\.data", side.pop())
    assert len(os.listdir(out_dir)) == 2
    offsets = [int(dict((e.key, e.value) for e in t.external_data)["offset"])
               for t in raw.graph.initializer]
    assert all(o % 4096 == 0 for o in offsets)
    onnx.checker.check_model(str(out), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for o, value in zip(sess.get_outputs(), sess.run(None, {}), strict=True):
        assert payload(value) == payload(tensors[o.name])
    back = tmp_path / "back.safetensors"
    mlconv.convert(out, back)
    assert {k: v[2] for k, v in st_read(back)[1].items()} == \
        {k: payload(v) for k, v in tensors.items()}


def _mlp(path):
    w = sample(D.DType.float32, (4, 3), seed=9)
    b = sample(D.DType.float32, (3,), seed=8)
    w = (np.abs(w) % 3).astype(np.float32)
    b = (np.abs(b) % 2).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "b"], ["y"])]
    return model_of({"w": w, "b": b}, path, nodes, [x], [y])


def test_template_round_trip_keeps_outputs(tmp_path):
    model = _mlp(tmp_path / "mlp.onnx")
    weights = tmp_path / "w.safetensors"
    mlconv.convert(model, weights)
    out = tmp_path / "again.onnx"
    res = run(weights, out, "--template", model)
    assert res.exit_code == 0, res.stderr
    onnx.checker.check_model(str(out), full_check=True)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    a = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    b = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(a[0], b[0])
    orig, new = onnx.load(str(model)), onnx.load(str(out))
    assert orig.graph.node == new.graph.node and orig.graph.input == new.graph.input


def test_template_mismatches_are_listed(tmp_path):
    model = _mlp(tmp_path / "mlp.onnx")
    bad = tmp_path / "bad.safetensors"
    st_write(bad, {"w": np.zeros((4, 4), np.float32), "b": np.zeros(3, np.float64),
                   "extra": np.zeros(1, np.float32)})
    res = run(bad, tmp_path / "o.onnx", "--template", model)
    assert res.exit_code == 1
    for part in ("w: float32 [4, 4], the template has float32 [4, 3]",
                 "b: float64 [3]", "extra: not an initializer"):
        assert part in res.stderr
    assert not (tmp_path / "o.onnx").exists()


# --- hostile models -------------------------------------------------------------------------

def _external_model(tmp_path, location, offset=0, length=16):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4],
                    data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        t.external_data.add(key=k, value=v)
    graph = helper.make_graph([], "g", [], [], initializer=[t])
    path = tmp_path / "m" / "evil.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin",
                                      "link.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * 64)
    src = _external_model(tmp_path, location)
    os.symlink(secret, tmp_path / "m" / "link.bin")
    with pytest.raises(UnsafeInputError, match="folder"):
        mlconv.load(src)
    res = run(src, tmp_path / "o.npy")
    assert res.exit_code == 1 and "folder" in res.stderr and res.stderr.count("\n") == 1


def test_external_data_beyond_the_side_file(tmp_path):
    src = _external_model(tmp_path, "w.bin", offset=8, length=16)
    (tmp_path / "m" / "w.bin").write_bytes(b"\0" * 16)
    with pytest.raises(FormatError, match="outside"):
        mlconv.load(src)


def test_initializer_name_not_utf8(tmp_path):
    # found by fuzzing: a mangled name field protobuf hands back as bytes
    good = model_of({"wé": np.ones(2, np.float32)}, tmp_path / "g.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(good.replace("wé".encode(), b"w\xe9\xff"))
    with pytest.raises(FormatError, match="UTF-8"):
        mlconv.load(bad)


def test_truncated_and_not_onnx(tmp_path):
    good = model_of({"w": np.ones((64, 64), np.float32)}, tmp_path / "g.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(FormatError):
        mlconv.load(cut)
    res = run(cut, tmp_path / "o.npz")
    assert res.exit_code == 1 and res.stderr.startswith("mlconv: error: ")


ONNX_GOOD = [r for r in corpus_files("onnx") if r["expect"] == "read"]
ONNX_BAD = [r for r in corpus_files("onnx") if r["expect"] == "reject"]


@pytest.mark.parametrize("row", corpus_params(ONNX_GOOD))
def test_corpus_good_models_and_tensors(tmp_path, row):
    path = CORPUS / row["path"]
    with mlconv.open(path) as b:
        if path.suffix == ".pb":
            summary = row["reference"]["summary"]
            if summary["kind"] == "TensorProto":
                (t,) = b.values()
                proto = onnx.TensorProto()
                proto.ParseFromString(path.read_bytes())
                if proto.data_type != TensorProto.STRING:
                    assert payload(t.numpy()) == payload(numpy_helper.to_array(proto))
            elif summary["kind"] == "SequenceProto":
                assert [list(t.shape) for t in b.values()] == summary["tensor_dims"]
                assert [t.numpy().tolist() for t in b.values()] == summary["values"]
            return
        model = onnx.load(str(path))
        assert len(b) + len(b.skipped) == len(model.graph.initializer)
        for init in model.graph.initializer:
            if init.name in b:
                assert payload(b[init.name].numpy()) == payload(numpy_helper.to_array(init))
    assert mlconv.validate(path).ok


@pytest.mark.parametrize("row", corpus_params(ONNX_BAD))
def test_corpus_bad_models(row):
    path = CORPUS / row["path"]
    report = mlconv.validate(path, deep=True)
    assert not report.ok
    if "lfs" in row["path"]:
        assert "Git LFS" in report.problems[0].reason
        with pytest.raises(MlconvError, match="Git LFS"):
            mlconv.load(path)
    else:
        assert "topologically" in report.problems[0].reason


@pytest.mark.parametrize("where", ["typed", "raw", "external"])
@pytest.mark.parametrize("code, values", [(TensorProto.INT4, [1, -2, 3]),
                                          (TensorProto.UINT4, [1, 15, 3, 4, 5])])
def test_an_odd_count_of_4_bit_values(tmp_path, where, code, values):
    """Three int4 values are two bytes, the last half padding, as onnx writes them: read
    (raw_data and external data were refused: 'needs None'), equal to onnx's numpy_helper,
    and written back unchanged. A length that is not the padded size is still refused."""
    t = helper.make_tensor("x", code, [len(values)], values)
    if where != "typed":
        t = numpy_helper.from_array(numpy_helper.to_array(t), "x")
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[t]))
    src = tmp_path / "m.onnx"
    if where == "external":
        onnx.save(model, src, save_as_external_data=True, location="m.data", size_threshold=0)
    else:
        onnx.save(model, src)
    ref = numpy_helper.to_array(onnx.load(src).graph.initializer[0])
    with mlconv.open(src) as b:
        got = b["x"].numpy()
    assert got.dtype == ref.dtype and got.tolist() == ref.tolist() == values
    mlconv.convert(src, tmp_path / "back.onnx")
    back = numpy_helper.to_array(onnx.load(tmp_path / "back.onnx").graph.initializer[0])
    assert back.dtype == ref.dtype and back.tolist() == values
    if where == "raw":
        t.raw_data = t.raw_data[:-1]
        model = helper.make_model(helper.make_graph([], "g", [], [], initializer=[t]))
        onnx.save(model, tmp_path / "short.onnx")
        with pytest.raises(FormatError, match="raw_data holds"):
            mlconv.load(tmp_path / "short.onnx")
