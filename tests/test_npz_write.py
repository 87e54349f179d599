"""npz's own stored-member writer (issue 16): one ordered pass, payloads file to file, the
CRC computed beside the copy. numpy, zipfile and unzip are the judges."""

from __future__ import annotations

import shutil
import subprocess
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

import mlconv
from mlconv.errors import FormatError
from mlconv.fileio import Sink
from mlconv.formats import npz

ARRAYS = {"a": np.arange(1000, dtype="<f4").reshape(10, 100), "dir/b": np.arange(7, dtype="<i8"),
          "empty": np.zeros((0, 3), "<f2"), "scalar": np.array(3.5), "ü": np.ones(3, "?"),
          "c": (np.arange(6) + 1j).astype("<c8")}


def _judge(path, expect):
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None  # every CRC and size right
        assert [i.compress_type for i in z.infolist()] == [zipfile.ZIP_STORED] * len(expect)
    with np.load(path) as d:
        assert sorted(d.files) == sorted(expect)
        for k, v in expect.items():
            assert d[k].dtype == v.dtype and d[k].shape == v.shape
            assert d[k].tobytes() == v.tobytes()
    if shutil.which("unzip"):
        out = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
        assert out.returncode == 0 and "No errors" in out.stdout, out.stdout


def test_stored_members_round_trip_and_payloads_are_aligned(tmp_path):
    save_file(ARRAYS, str(tmp_path / "s.safetensors"))
    mlconv.convert(tmp_path / "s.safetensors", tmp_path / "o.npz")
    _judge(tmp_path / "o.npz", ARRAYS)
    for name, t in mlconv.open(tmp_path / "o.npz").items():
        assert t.span[1] % 64 == 0, name  # memory maps view them in place


def test_members_around_the_copy_buffer_size_round_trip(tmp_path):
    """Up to two buffers the CRC is computed in line, beyond in the helper thread: members
    on both sides of that, and not whole buffers, must carry the right CRC."""
    from mlconv.fileio import COPY_CHUNK

    sizes = {"two": 2 * COPY_CHUNK, "two_and_one": 2 * COPY_CHUNK + 4, "five": 5 * COPY_CHUNK + 12}
    arrays = {k: np.arange(n // 4, dtype="<f4") for k, n in sizes.items()}
    save_file(arrays, str(tmp_path / "s.safetensors"))
    mlconv.convert(tmp_path / "s.safetensors", tmp_path / "o.npz")
    _judge(tmp_path / "o.npz", arrays)


def test_zip64_records_are_written_where_sizes_need_them(tmp_path, monkeypatch):
    """Past 4 GiB sizes and offsets move to zip64 fields; lowered here so a test can see it."""
    monkeypatch.setattr(npz, "_ZIP64_FROM", 100)
    mlconv.save(ARRAYS, tmp_path / "o.npz")
    _judge(tmp_path / "o.npz", ARRAYS)
    raw = (tmp_path / "o.npz").read_bytes()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw


def test_a_source_without_a_file_span_goes_through_memory(tmp_path):
    """Big-endian or computed data have no verbatim bytes to copy: CRC and bytes in one go."""
    pq.write_table(pa.table({"x": np.arange(5, dtype=np.float64)}), tmp_path / "t.parquet")
    np.save(tmp_path / "big.npy", np.arange(50, dtype=">i4"))
    mlconv.convert(tmp_path / "big.npy", tmp_path / "b.npz")
    _judge(tmp_path / "b.npz", {"big": np.arange(50, dtype="<i4")})


def test_a_source_that_shrinks_while_copied_is_an_error(tmp_path, monkeypatch):
    """The source is cut short once the CRC thread has its first piece: a later read, which
    waits for that piece's buffer, finds the end of the file."""
    np.save(tmp_path / "a.npy", np.arange(2 << 20, dtype=np.float32))  # 8 pieces, 3 buffers
    real = Sink.copy_from

    def shrinking(self, path, offset, count, digest=None):
        def cut(piece):
            with open(path, "r+b") as f:
                f.truncate(offset + 10)
            digest(piece)

        real(self, path, offset, count, digest=cut)

    monkeypatch.setattr(Sink, "copy_from", shrinking)
    with pytest.raises(FormatError, match="shrank"):
        mlconv.convert(tmp_path / "a.npy", tmp_path / "a.npz")
    assert not (tmp_path / "a.npz").exists()


def test_deflate_still_goes_through_zipfile(tmp_path):
    mlconv.save(ARRAYS, tmp_path / "d.npz", compression="deflate")
    with zipfile.ZipFile(tmp_path / "d.npz") as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(tmp_path / "d.npz") as d:
        assert all(d[k].tobytes() == v.tobytes() for k, v in ARRAYS.items())


def test_a_failure_in_the_crc_thread_reaches_the_caller(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.arange(2 << 20, dtype=np.float32))
    real = Sink.copy_from

    def failing(self, path, offset, count, digest=None):
        def bad(piece):
            raise OSError(5, "Input/output error")

        real(self, path, offset, count, digest=bad)

    monkeypatch.setattr(Sink, "copy_from", failing)
    with pytest.raises(OSError, match="Input/output"):
        mlconv.convert(tmp_path / "a.npy", tmp_path / "a.npz")
    assert not (tmp_path / "a.npz").exists()


def test_copies_work_without_preadv(tmp_path, monkeypatch):
    """Platforms without os.preadv read with os.pread into the same buffers."""
    import os

    monkeypatch.delattr(os, "preadv")
    arrays = {"a": np.arange(3 << 20, dtype="<f4"), "b": np.arange(5, dtype="<i8")}
    save_file(arrays, str(tmp_path / "s.safetensors"))
    mlconv.convert(tmp_path / "s.safetensors", tmp_path / "o.npz")
    _judge(tmp_path / "o.npz", arrays)
    mlconv.convert(tmp_path / "s.safetensors", tmp_path / "o.h5")
    with mlconv.open(tmp_path / "o.h5") as b:
        assert all(b[k].numpy().tobytes() == v.tobytes() for k, v in arrays.items())
