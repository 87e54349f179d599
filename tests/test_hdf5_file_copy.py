"""HDF5 relayouts as file-to-file copies (issue 16): a contiguous dataset's bytes lie verbatim
at its offset, so h5 -> X copies them file to file, and X -> h5 reserves contiguous space in
libhdf5's file and copies the payloads into it. Judged by h5py, numpy, safetensors and
strace; every other layout keeps h5py's decoding path and must convert exactly."""

import errno
import os
import shutil
import struct

import h5py
import ml_dtypes
import numpy as np
import pytest

import mlconv
from mlconv.dtypes import DType
from mlconv.errors import MlconvError
from mlconv.sources import FileSource

from .helpers import payload, st_read, st_write
from .test_conformance import assert_copied_file_to_file

needs_strace = pytest.mark.skipif(shutil.which("strace") is None,
                                  reason="strace is not installed")
MIB4 = 1 << 20  # float32 values in 4 MiB


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, arr in datasets.items():
            f[name.replace("__", "/")] = arr
    return path


def _h5py_values(path) -> dict:
    out = {}
    with h5py.File(path) as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset)
                     else None)
    return out


def _converted(dst):
    """{name: canonical bytes} of what mlconv wrote, read by the reference library."""
    text = str(dst)
    if text.endswith(".safetensors"):
        return {k: v[2] for k, v in st_read(dst)[1].items()}
    if text.endswith(".npy"):
        return {"": payload(np.load(dst))}
    return {k: payload(v) for k, v in np.load(dst).items()}


# --- 1. read side: a span at the dataset's offset ------------------------------------------

@needs_strace
@pytest.mark.parametrize("target", [".safetensors", ".npy", ".gguf"])
def test_contiguous_h5_moves_file_to_file(tmp_path, target):
    w = np.arange(MIB4, dtype="<f4") * np.float32(0.5)
    datasets = {"w": w} if target == ".npy" else {"w": w, "g__b": np.arange(3 << 18, dtype="<i2")}
    src = _h5(tmp_path / "in.h5", **datasets)
    dst = tmp_path / f"out{target}"
    assert_copied_file_to_file(src, dst, tmp_path, sum(a.nbytes for a in datasets.values()))
    ref = _h5py_values(src)
    if target == ".npy":
        assert _converted(dst) == {"": payload(ref["w"])}
    elif target == ".safetensors":
        assert _converted(dst) == {k: payload(v) for k, v in ref.items()}
    else:
        with mlconv.open(dst) as b:
            assert {k: payload(b[k].numpy()) for k in b} == \
                {k: payload(v) for k, v in ref.items()}


def test_span_is_the_dataset_offset_and_size(tmp_path):
    arr = np.arange(24, dtype="<f8").reshape(4, 6)
    src = _h5(tmp_path / "in.h5", g__x=arr, u=np.arange(5, dtype=np.uint8))
    with h5py.File(src) as f:
        where = {n: (f[n].id.get_offset(), f[n].id.get_storage_size()) for n in ("g/x", "u")}
    with mlconv.open(src, trusted=True) as b:
        for name, (offset, size) in where.items():
            assert isinstance(b[name].source, FileSource)
            assert b[name].source.span == (str(src), offset, size)


def _layouts(f, arr):
    """The datasets that must keep h5py's decoding (or byte-swapping) path."""
    f["big"] = arr.astype(">f4")
    f.create_dataset("chunked", data=arr, chunks=(2, 5))
    f.create_dataset("gzip", data=arr, chunks=(3, 5), compression="gzip", shuffle=True)
    # allocated late, never written: no offset, only the fill value
    f.create_dataset("fill", shape=(6, 5), dtype="<f4", fillvalue=np.float32(2.5))
    f.create_dataset("fill0", shape=(4,), dtype="<i8")


@pytest.mark.parametrize("target", [".safetensors", ".npz"])
def test_other_layouts_convert_exactly_without_a_span(tmp_path, target):
    arr = np.random.default_rng(3).standard_normal((6, 5)).astype("<f4")
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        _layouts(f, arr)
    with mlconv.open(src, trusted=True) as b:
        assert all(b[n].source.span is None for n in b), {n: b[n].source.span for n in b}
    dst = tmp_path / f"out{target}"
    mlconv.convert(src, dst)
    assert _converted(dst) == {k: payload(v) for k, v in _h5py_values(src).items()}
    got = _converted(dst)
    assert got["fill"] == payload(np.full((6, 5), 2.5, "<f4"))
    assert got["fill0"] == bytes(32)


def _declare_storage(path, name, size):
    """Rewrite the contiguous layout message's size field (libhdf5 still opens it)."""
    with h5py.File(path) as f:
        offset, now = f[name].id.get_offset(), f[name].id.get_storage_size()
    raw = bytearray(path.read_bytes())
    at = raw.find(struct.pack("<QQ", offset, now))
    assert at > 0 and raw.count(struct.pack("<QQ", offset, now)) == 1
    raw[at + 8:at + 16] = struct.pack("<Q", size)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("delta", [4, 4096])
def test_storage_size_other_than_the_payload_is_decoded_by_h5py(tmp_path, delta):
    arr = np.arange(1000, dtype="<f4")
    src = _h5(tmp_path / "in.h5", x=arr, pad=np.zeros(4096, np.uint8))
    _declare_storage(src, "x", arr.nbytes + delta)
    with mlconv.open(src, trusted=True) as b:
        assert b["x"].source.span is None
        assert not isinstance(b["x"].source, FileSource)
    dst = tmp_path / "o.safetensors"
    mlconv.convert(src, dst)
    assert _converted(dst)["x"] == payload(_h5py_values(src)["x"])


# --- 2. write side: reserved contiguous space, payloads copied in ----------------------------

def _mixed():
    rng = np.random.default_rng(7)
    return {
        "enc/layer.0/w": rng.standard_normal((64, 33)).astype(np.float32),
        "enc/layer.0/b": rng.standard_normal(33).astype(ml_dtypes.bfloat16),
        "f8": rng.integers(0, 256, (5, 7), dtype=np.uint8).view(ml_dtypes.float8_e4m3fn),
        "i16": rng.integers(-9, 9, (3, 2, 4)).astype(np.int16),
        "mask": rng.integers(0, 2, 17).astype(bool),
        "c": (rng.standard_normal(6) + 1j).astype(np.complex64),
        "scalar": np.float64(3.25),
        "empty": np.zeros((0, 4), np.float32),
    }


def _check_h5(path, tensors):
    with h5py.File(path) as f:
        for name, arr in tensors.items():
            ds = f[name]
            tag = ds.attrs.get("mlconv.dtype")
            got = ds[()] if tag is None else ds[()].view(DType(tag).numpy())
            if isinstance(got, np.ndarray) and got.dtype != arr.dtype and arr.dtype.kind == "V":
                got = got.view(arr.dtype)  # h5py's own bfloat16 reading, if any
            assert np.asarray(got).dtype == np.asarray(arr).dtype, name
            assert payload(np.asarray(got)) == payload(np.asarray(arr)), name
            if arr.size and arr.ndim:
                assert ds.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS, name


def test_arrays_and_h5_to_h5_read_back_exactly_with_attrs_and_groups(tmp_path):
    tensors = {k: v for k, v in _mixed().items() if k not in ("f8",)}
    src = tmp_path / "in.h5"
    mlconv.save(tensors, src, metadata={"who": "me"})
    _check_h5(src, tensors)
    # h5 -> h5 keeps group attributes and dataset attributes, and copies the payloads
    with h5py.File(src, "a") as f:
        f["enc"].attrs["role"] = "encoder"
        f["i16"].attrs["unit"] = np.int32(7)
    dst = tmp_path / "o.h5"
    mlconv.convert(src, dst)
    _check_h5(dst, tensors)
    with h5py.File(dst) as f:
        assert f.attrs["who"] == "me"
        assert f["enc"].attrs["role"] == "encoder"
        assert f["i16"].attrs["unit"] == 7 and f["i16"].attrs["unit"].dtype == np.int32


def test_safetensors_to_h5_reserved_space_in_offset_order(tmp_path, monkeypatch):
    tensors = {k: v for k, v in _mixed().items() if k not in ("c", "scalar", "empty")}
    src = tmp_path / "in.safetensors"
    st_write(src, tensors, {"k": "v"})
    from mlconv import fileio

    seeks = []
    real = fileio.Sink.seek
    monkeypatch.setattr(fileio.Sink, "seek", lambda s, pos: seeks.append(pos) or real(s, pos))
    dst = tmp_path / "o.h5"
    mlconv.convert(src, dst)
    _check_h5(dst, tensors)
    with h5py.File(dst) as f:
        assert f.attrs["k"] == "v"
        assert f["f8"].attrs["mlconv.dtype"] == "float8_e4m3fn"
        offsets = sorted(f[n].id.get_offset() for n in tensors)
    assert seeks == offsets  # each payload into its own dataset, one forward pass


def test_big_endian_and_chunked_sources_to_h5(tmp_path):
    arr = np.arange(30, dtype=">i4").reshape(6, 5)
    np.save(tmp_path / "be.npy", arr)
    mlconv.convert(tmp_path / "be.npy", tmp_path / "be.h5")
    _check_h5(tmp_path / "be.h5", {"be": arr.astype("<i4")})
    src = tmp_path / "ch.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=arr, chunks=(2, 5), compression="gzip")
    mlconv.convert(src, tmp_path / "o.h5")
    _check_h5(tmp_path / "o.h5", {"x": arr.astype("<i4")})


@needs_strace
@pytest.mark.parametrize("source", [".safetensors", ".npy"])
def test_to_h5_moves_file_to_file(tmp_path, source):
    tensors = {"w": np.arange(MIB4, dtype=np.float32)}
    if source == ".safetensors":
        tensors["g/b"] = np.arange(3 << 18, dtype=np.int16)
    src = tmp_path / f"in{source}"
    mlconv.save(tensors, src)
    dst = tmp_path / "o.h5"
    assert_copied_file_to_file(src, dst, tmp_path, sum(a.nbytes for a in tensors.values()))
    got = _h5py_values(dst)
    if source == ".npy":
        tensors = {"in": tensors["w"]}
    assert {k: payload(v) for k, v in got.items()} == {k: payload(v) for k, v in tensors.items()}


def test_a_failure_mid_copy_leaves_no_dst(tmp_path, monkeypatch):
    src = tmp_path / "in.safetensors"
    st_write(src, {"a": np.arange(1 << 16, dtype=np.float32),
                   "b": np.arange(1 << 16, dtype=np.float32)})
    out = tmp_path / "out"
    out.mkdir()
    calls = []
    real = os.preadv

    def failing(*args):
        calls.append(args)
        if len(calls) > 1:
            raise OSError(errno.EIO, "I/O error")
        return real(*args)

    monkeypatch.setattr(os, "preadv", failing)
    with pytest.raises((MlconvError, OSError)):
        mlconv.convert(src, out / "o.h5")
    assert len(calls) == 2  # the first payload was in, the second failed
    assert os.listdir(out) == []
