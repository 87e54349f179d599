"""Round trips among npy/npz/safetensors for every dtype each pair holds, judged by numpy and
the safetensors library: names, dtypes, shapes, bytes and metadata exactly equal."""

import numpy as np
import pytest

import mlconv
from mlconv import dtypes as D
from mlconv.dtypes import DType

from .helpers import payload, sample, st_read, st_write

FORMATS = ["npy", "npz", "safetensors"]
HOLDS = {"npy": D.NPY_DTYPES, "npz": D.NPY_DTYPES, "safetensors": D.SAFETENSORS_DTYPES}
SHAPES = [(3, 4), (), (0, 5), (2, 3, 2)]


def write_reference(fmt, path, name, arr, metadata=None):
    if fmt == "npy":
        np.save(path, arr)
    elif fmt == "npz":
        np.savez(path, **{name: arr})
    else:
        st_write(path, {name: arr}, metadata)


def read_reference(fmt, path, name):
    """(numpy dtype name or safetensors code, shape, canonical bytes) via the reference lib."""
    if fmt == "npy":
        arr = np.load(path, allow_pickle=False)
        return arr.dtype.str, arr.shape, payload(arr)
    if fmt == "npz":
        with np.load(path, allow_pickle=False) as z:
            arr = z[name]
        return arr.dtype.str, arr.shape, payload(arr)
    _, tensors = st_read(path)
    return tensors[name]


def expected_code(fmt, arr):
    if fmt == "safetensors":
        return D.to_safetensors(D.from_numpy(arr.dtype))
    return np.dtype(arr.dtype).newbyteorder("<").str if arr.dtype.itemsize > 1 else arr.dtype.str


PAIRS = [(a, b, d) for a in FORMATS for b in FORMATS
         for d in sorted(HOLDS[a] & HOLDS[b], key=lambda d: d.value)
         if not (d.is_subbyte and d.bits != 4) and (a != "safetensors" or d.bits)]


@pytest.mark.parametrize("src_fmt,dst_fmt,dtype", PAIRS,
                         ids=[f"{a}-{b}-{d.value}" for a, b, d in PAIRS])
def test_round_trip_exact(tmp_path, src_fmt, dst_fmt, dtype):
    shape = (3, 4)
    if dtype.is_subbyte:
        shape = (2, 4)
    arr = sample(dtype, shape)
    src = tmp_path / f"x.{src_fmt}"
    dst = tmp_path / f"out.{dst_fmt}"
    write_reference(src_fmt, src, "x", arr)
    mlconv.convert(src, dst)  # npy names its one tensor after the file stem: "x" too
    code, got_shape, data = read_reference(dst_fmt, dst, "x")
    assert code == expected_code(dst_fmt, arr)
    assert tuple(got_shape) == shape
    assert data == payload(arr)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("src_fmt,dst_fmt", [(a, b) for a in FORMATS for b in FORMATS])
def test_shapes_zero_d_and_zero_size(tmp_path, src_fmt, dst_fmt, shape):
    arr = sample(DType.float32, shape, seed=1)
    src, dst = tmp_path / f"x.{src_fmt}", tmp_path / f"y.{dst_fmt}"
    write_reference(src_fmt, src, "x", arr)
    mlconv.convert(src, dst)
    _code, got_shape, data = read_reference(dst_fmt, dst, "x")
    assert tuple(got_shape) == shape and data == payload(arr)


def test_many_tensors_names_and_metadata(tmp_path):
    tensors = {"encoder/layer0/weight": sample(DType.bfloat16, (4, 8)),
               "décodeur/poids": sample(DType.float8_e4m3fn, (3,)),
               "名前": sample(DType.int64, (2, 2)), "scalar": sample(DType.float64, ())}
    meta = {"format": "pt", "note": "ünïcode ✓"}
    src = tmp_path / "in.safetensors"
    st_write(src, tensors, meta)
    out = tmp_path / "out.safetensors"
    mlconv.convert(src, out)
    got_meta, got = st_read(out)
    assert got_meta == meta
    assert list(got) == list(tensors) or sorted(got) == sorted(tensors)
    for name, arr in tensors.items():
        assert got[name] == (D.to_safetensors(D.from_numpy(arr.dtype)), arr.shape, payload(arr))


def test_npz_names_with_groups_and_unicode(tmp_path):
    tensors = {"a/b/c": sample(DType.int16, (5,)), "ключ": sample(DType.float16, (2, 2))}
    src = tmp_path / "in.safetensors"
    st_write(src, tensors)
    out = tmp_path / "out.npz"
    mlconv.convert(src, out)
    with np.load(out) as z:
        assert sorted(z.files) == sorted(tensors)
        for k, v in tensors.items():
            assert z[k].dtype == v.dtype and np.array_equal(z[k].view(np.uint8),
                                                            v.view(np.uint8))


@pytest.mark.parametrize("order", ["F", ">"])
def test_fortran_and_big_endian_npy_become_c_order_little_endian(tmp_path, order):
    arr = sample(DType.float64, (3, 4, 5), seed=3)
    src_arr = np.asfortranarray(arr) if order == "F" else arr.astype(">f8")
    src = tmp_path / "x.npy"
    np.save(src, src_arr)
    for fmt in FORMATS:
        dst = tmp_path / f"out.{fmt}"
        mlconv.convert(src, dst, overwrite=True)
        _code, shape, data = read_reference(fmt, dst, "x")
        assert shape == arr.shape and data == payload(arr)
    got = mlconv.load(src)["x"].numpy()
    assert got.shape == arr.shape and payload(got) == payload(arr)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_stored_and_deflated_members(tmp_path, compressed):
    tensors = {"a": sample(DType.float32, (100, 7)), "b": sample(DType.uint8, (3,)),
               "c": np.asfortranarray(sample(DType.int32, (6, 5)))}
    src = tmp_path / "in.npz"
    (np.savez_compressed if compressed else np.savez)(src, **tensors)
    out = tmp_path / "out.safetensors"
    mlconv.convert(src, out)
    _, got = st_read(out)
    for k, v in tensors.items():
        assert got[k][1:] == (v.shape, payload(v))
    with mlconv.open(src) as b:
        for k, v in tensors.items():
            got = b[k].numpy()
            assert got.dtype == v.dtype and payload(got) == payload(v)


def test_npz_writer_deflate_option(tmp_path):
    src = tmp_path / "in.npz"
    np.savez(src, z=np.zeros((1000, 100), np.float32))
    out = tmp_path / "out.npz"
    mlconv.convert(src, out, compression="deflate")
    assert out.stat().st_size < 20000
    with np.load(out) as z:
        assert np.array_equal(z["z"], np.zeros((1000, 100), np.float32))


def test_subbyte_float6_passes_through_safetensors(tmp_path):
    import json
    import struct
    raw = bytes(range(9))  # 12 float6 values, packed as written
    h = json.dumps({"w": {"dtype": "F6_E2M3", "shape": [12], "data_offsets": [0, 9]}}).encode()
    src = tmp_path / "f6.safetensors"
    src.write_bytes(struct.pack("<Q", len(h)) + h + raw)
    out = tmp_path / "out.safetensors"
    mlconv.convert(src, out)
    assert st_read(out)[1]["w"] == ("F6_E2M3", (12,), raw)
