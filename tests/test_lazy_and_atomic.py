"""Lazy reads (memory maps, headers only), atomic writes, tables from structured npy."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import mlconv
from mlconv.errors import LossyConversionError, UnsupportedError
from mlconv.model import Tensor

from .helpers import payload, st_read, st_write


def test_open_gives_memory_maps(tmp_path):
    st = tmp_path / "a.safetensors"
    st_write(st, {"w": np.arange(12, dtype=np.float32).reshape(3, 4)})
    npy = tmp_path / "a.npy"
    np.save(npy, np.arange(5, dtype=np.int64))
    npz = tmp_path / "a.npz"
    np.savez(npz, s=np.arange(3.0))
    for path, name in [(st, "w"), (npy, "a"), (npz, "s")]:
        with mlconv.open(path) as b:
            arr = b[name].numpy()
            assert isinstance(arr, np.memmap), path
            assert not arr.flags.writeable


def test_inspect_reads_headers_only_and_imports_no_numpy(tmp_path):
    # A 20 GiB sparse file: inspecting it must not touch the data (nor import numpy).
    big = tmp_path / "big.safetensors"
    n = 5 * 2 ** 30
    header = json.dumps({"x": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    with open(big, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(8 + len(header) + 4 * n)
    code = ("import sys, json, mlconv; m = mlconv.inspect(sys.argv[1]); "
            "assert 'numpy' not in sys.modules, 'numpy imported'; print(json.dumps(m))")
    res = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["entries"][0]["shape"] == [n]


def test_failed_write_leaves_no_dst_and_no_temp(tmp_path, monkeypatch):
    src = tmp_path / "in.safetensors"
    st_write(src, {"a": np.arange(10.0), "b": np.arange(5.0)})

    def boom(self, sink, digest=None):
        sink.write(b"partial")
        raise RuntimeError("disk on fire")

    def boom_chunks(self, size=0):
        yield b"partial"
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Tensor, "write_to", boom)
    monkeypatch.setattr(Tensor, "chunks", boom_chunks)
    for fmt in ("safetensors", "npz"):
        dst = tmp_path / f"out.{fmt}"
        with pytest.raises(RuntimeError):
            mlconv.convert(src, dst)
        assert sorted(os.listdir(tmp_path)) == ["in.safetensors"]
    # an existing DST survives a failed --force conversion untouched
    dst = tmp_path / "keep.safetensors"
    dst.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        mlconv.convert(src, dst, overwrite=True)
    assert dst.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["in.safetensors", "keep.safetensors"]


def test_outputs_are_4k_aligned_and_readable_by_mmap(tmp_path):
    src = tmp_path / "in.safetensors"
    st_write(src, {"x": np.arange(1000, dtype=np.float32)}, {"k": "v"})
    out_st, out_npy = tmp_path / "o.safetensors", tmp_path / "o.npy"
    mlconv.convert(src, out_st)
    mlconv.convert(src, out_npy, allow_lossy=True)
    (n,) = struct.unpack("<Q", out_st.read_bytes()[:8])
    assert (8 + n) % 4096 == 0
    arr = np.load(out_npy, mmap_mode="r")
    assert arr.offset % 4096 == 0 and np.array_equal(arr, np.arange(1000, dtype=np.float32))


def test_save_api_mapping_and_metadata(tmp_path):
    out = tmp_path / "s.safetensors"
    rep = mlconv.save({"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.int8)}, out,
                      metadata={"k": "v"})
    assert rep.entries == 2 and st_read(out)[0] == {"k": "v"}
    with pytest.raises(LossyConversionError, match="metadata"):
        mlconv.save({"w": np.ones(2)}, tmp_path / "s.npz", metadata={"k": "v"})
    with pytest.raises(UnsupportedError, match="one"):
        mlconv.save({"a": np.ones(2), "b": np.ones(2)}, tmp_path / "two.npy")
    with pytest.raises(UnsupportedError):
        mlconv.save({"o": np.array([object()])}, tmp_path / "obj.npz")


def test_structured_npy_is_a_table_and_round_trips_exactly(tmp_path):
    rec = np.array([(1, 2.5, b"ab", "é"), (3, -1.0, b"c", "xyz")],
                   dtype=[("i", "<i4"), ("f", "<f8"), ("s", "S2"), ("u", "<U3")])
    src = tmp_path / "t.npy"
    np.save(src, rec)
    with mlconv.open(src) as b:
        t = b["t"]
        assert t.kind == "table" and t.num_rows == 2
        assert t.columns == [("i", "int32"), ("f", "float64"), ("s", "bytes"), ("u", "string")]
        rows = [r for batch in t.batches(1) for r in batch.to_pylist()]
        assert rows == [{"i": 1, "f": 2.5, "s": b"ab", "u": "é"},
                        {"i": 3, "f": -1.0, "s": b"c", "u": "xyz"}]
    out = tmp_path / "o.npy"
    mlconv.convert(src, out)
    back = np.load(out)
    assert back.dtype == rec.dtype and back.tobytes() == rec.tobytes()
    with pytest.raises(LossyConversionError, match="table"):
        mlconv.convert(src, tmp_path / "o.safetensors")
    with pytest.raises(LossyConversionError, match="table"):
        mlconv.convert(src, tmp_path / "o.npz")


def test_casts_stream_and_match_numpy(tmp_path):
    import ml_dtypes
    src = tmp_path / "in.safetensors"
    arr = np.linspace(-3, 3, 4096, dtype=np.float32).reshape(64, 64)
    st_write(src, {"x": arr.astype(ml_dtypes.bfloat16)})
    out = tmp_path / "o.npz"
    mlconv.convert(src, out, cast=["bfloat16=float32"])
    with np.load(out) as z:
        assert payload(z["x"]) == payload(arr.astype(ml_dtypes.bfloat16).astype(np.float32))
    out2 = tmp_path / "o2.safetensors"
    mlconv.convert(src, out2, cast={"bfloat16": "float8_e4m3fn"})
    code, _shape, data = st_read(out2)[1]["x"]
    expect = arr.astype(ml_dtypes.bfloat16).astype(ml_dtypes.float8_e4m3fn)
    assert code == "F8_E4M3" and data == payload(expect)


def test_int4_from_numpy_packs_low_nibble_first(tmp_path):
    import ml_dtypes
    vals = np.array([1, -2, 3, -8, 7, 0], dtype=ml_dtypes.int4)
    out = tmp_path / "q.npz"
    with pytest.raises(LossyConversionError, match="int4"):
        mlconv.save({"q": vals}, out)
    mlconv.save({"q": vals}, out, allow_lossy=True)
    with np.load(out) as z:
        assert z["q"].dtype == np.int8 and z["q"].tolist() == [1, -2, 3, -8, 7, 0]
    t = Tensor.from_numpy(vals)
    assert bytes(b"".join(bytes(c) for c in t.chunks())) == bytes([0xE1, 0x83, 0x07])


def _force_over_existing(tmp_path):
    src = tmp_path / "in.npy"
    np.save(src, np.arange(10.0))
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"old")
    os.link(dst, tmp_path / "keep")  # a second name of the old file
    target = tmp_path / "target"
    target.write_bytes(b"target")
    (tmp_path / "link.safetensors").symlink_to(target)
    return src, dst


def _judge_force(tmp_path, src, dst):
    assert np.array_equal(mlconv.load(dst)["in"], np.arange(10.0))
    assert (tmp_path / "keep").read_bytes() == b"old"  # replaced, not overwritten in place
    mlconv.convert(src, tmp_path / "link.safetensors", overwrite=True)
    assert not (tmp_path / "link.safetensors").is_symlink()  # the link is replaced...
    assert (tmp_path / "target").read_bytes() == b"target"  # ...never written through
    assert sorted(os.listdir(tmp_path)) == ["in.npy", "keep", "link.safetensors",
                                            "out.safetensors", "target"]


def test_force_swaps_the_new_file_in(tmp_path):
    """--force over an existing DST swaps the two names (renameat2 RENAME_EXCHANGE) and
    removes the old file: ext4 flushes a file renamed over another, 0.6 s per GiB."""
    src, dst = _force_over_existing(tmp_path)
    mlconv.convert(src, dst, overwrite=True)
    _judge_force(tmp_path, src, dst)


def test_force_falls_back_to_a_rename_where_names_cannot_be_swapped(tmp_path, monkeypatch):
    from mlconv import atomic

    monkeypatch.setattr(atomic, "_swap", lambda a, b: False)
    src, dst = _force_over_existing(tmp_path)
    mlconv.convert(src, dst, overwrite=True)
    _judge_force(tmp_path, src, dst)


@pytest.mark.skipif(sys.platform != "linux" or not __import__("shutil").which("strace"),
                    reason="needs Linux and strace")
def test_the_cli_swaps_rather_than_renames_over(tmp_path):
    src, dst = _force_over_existing(tmp_path)
    log = tmp_path / "strace.log"
    cli = os.path.join(os.path.dirname(sys.executable), "mlconv")
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=rename,renameat,renameat2", "-o",
                    str(log), cli, str(src), str(dst), "--force"], check=True,
                   capture_output=True, timeout=120)
    calls = [line for line in log.read_text().splitlines() if "rename" in line]
    assert any("RENAME_EXCHANGE" in c and c.rstrip().endswith("= 0") for c in calls), calls
    assert np.array_equal(mlconv.load(dst)["in"], np.arange(10.0))
