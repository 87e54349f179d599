"""--max-memory and --allow-expand (issue 11, items 7 and 8), in process and small: each bound
refuses what is over it and reads exactly what is under it. The full-size hostile files are
in tests/test_hostile.py."""

import io
import zipfile

import h5py
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

import mlconv
from mlconv.cli import cli
from mlconv.errors import FormatError, OptionError, UnsafeInputError, UnsupportedError
from mlconv.formats.base import parse_size
from mlconv.formats.hdf5 import safepickle

from .hostile import exploding_pickle, npz_shared_member


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("text,value", [("512M", 512 << 20), ("1GiB", 1 << 30), ("2g", 2 << 30),
                                        ("4096", 4096), (100, 100), ("1.5k", 1536)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["x", "0", "-1", "1q", ""])
def test_parse_size_refuses(text):
    with pytest.raises(OptionError):
        parse_size(text)


def test_cli_max_memory_is_a_usage_error(tmp_path):
    src = tmp_path / "a.npy"
    np.save(src, np.arange(3))
    res = CliRunner().invoke(cli, ["inspect", str(src), "--max-memory", "lots"])
    assert res.exit_code == 2


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_npz_compressed_members_read_exactly(tmp_path, method):
    arr = np.arange(10_000, dtype="<i8").reshape(100, 100)
    src = tmp_path / "a.npz"
    with zipfile.ZipFile(src, "w", compression=method) as zf:
        zf.writestr("a.npy", _npy(arr))
    with mlconv.open(src) as b:
        assert np.array_equal(b["a"].numpy(), arr)
        assert b"".join(bytes(c) for c in b["a"].chunks(4096)) == arr.tobytes()


def test_npz_whole_member_over_max_memory(tmp_path):
    arr = np.arange(10_000, dtype="<i8")
    src = tmp_path / "a.npz"
    np.savez_compressed(src, a=arr)
    with mlconv.open(src, max_memory=1000) as b:
        with pytest.raises(UnsupportedError, match="max_memory="):
            b["a"].numpy()
        # streaming stays within any cap
        assert b"".join(bytes(c) for c in b["a"].chunks(512)) == arr.tobytes()


def test_npz_crc_mismatch(tmp_path):
    src = tmp_path / "a.npz"
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.npy", _npy(np.arange(100)))
    raw = bytearray(src.read_bytes())
    crc_at = raw.index(b"PK\x01\x02") + 16  # the central directory's CRC, which zipfile reads
    raw[crc_at] ^= 0xFF
    src.write_bytes(bytes(raw))
    with mlconv.open(src) as b, pytest.raises(FormatError, match="CRC"):
        b["a"].numpy()


def test_npz_overlapping_members_refused(tmp_path):
    src = npz_shared_member(tmp_path, copies=3)
    with pytest.raises(FormatError, match="overlaps"):
        mlconv.load(src)


def test_hdf5_never_written_needs_allow_expand(tmp_path):
    src = tmp_path / "f.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("big", (1 << 27,), dtype="u1", fillvalue=7)  # never written
    with mlconv.open(src) as b:
        with pytest.raises(UnsupportedError, match="allow_expand=True"):
            next(b["big"].chunks())
    dst = tmp_path / "out.npy"
    with pytest.raises(UnsupportedError, match="allow_expand=True"):
        mlconv.convert(src, dst)
    mlconv.convert(src, dst, allow_expand=True)
    out = np.load(dst, mmap_mode="r")
    assert out.shape == (1 << 27,) and out[0] == 7 and out[-1] == 7


def test_hdf5_chunk_over_max_memory(tmp_path):
    src = tmp_path / "c.h5"
    data = np.arange(1 << 16, dtype="<i4")
    with h5py.File(src, "w") as f:
        f.create_dataset("c", data=data, chunks=(1 << 16,), compression="gzip")
    with mlconv.open(src, max_memory=1 << 16) as b, pytest.raises(UnsupportedError):
        next(b["c"].chunks())
    with mlconv.open(src) as b:
        assert np.array_equal(b["c"].numpy(), data)


def test_hdf5_vlen_text_bounded(tmp_path):
    src = tmp_path / "s.h5"
    words = [f"w{i}" * (i % 7) for i in range(5000)]
    with h5py.File(src, "w") as f:
        f.create_dataset("s", data=words, dtype=h5py.string_dtype("utf-8"))
    with mlconv.open(src) as b:
        assert b["s"].numpy().tolist() == words
    with mlconv.open(src, max_memory=10_000) as b, pytest.raises(UnsupportedError):
        b["s"].numpy()


def test_arrow_rows_from_metadata_and_batches_capped(tmp_path):
    src = tmp_path / "z.arrow"
    table = pa.table({"x": np.zeros(30_000, np.int64)})
    with pa.ipc.new_file(str(src), table.schema,
                         options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table, max_chunksize=10_000)
    manifest = mlconv.inspect(src, max_memory=1000)  # counts rows without decoding
    assert manifest["entries"][0]["rows"] == 30_000
    with mlconv.open(src, max_memory=1000) as b, pytest.raises(UnsupportedError):
        next(b["z"].batches())
    with mlconv.open(src) as b:
        assert sum(x.num_rows for x in b["z"].batches()) == 30_000


@pytest.mark.parametrize("stream", [False, True])
def test_arrow_entries_rows_in_order(tmp_path, stream):
    src = tmp_path / ("e.arrows" if stream else "e.arrow")
    tensors = {f"t{i}": np.full(i % 5, i, np.int16) for i in range(50)}
    mlconv.save(tensors, src, options={"layout": "entries"})
    with mlconv.open(src) as b:
        for name, arr in tensors.items():
            assert np.array_equal(b[name].numpy(), arr)


def test_safepickle_expansion_refused():
    with pytest.raises(UnsafeInputError, match="expands"):
        safepickle.loads(exploding_pickle())
    shared = ["v"]
    import pickle

    assert safepickle.loads(pickle.dumps([(shared, shared)] * 3, 2)) == [(["v"], ["v"])] * 3


def test_error_lines_are_one_capped_line():
    err = FormatError("bad\nthing " + "x" * 100_000, "dir/a\nb.npy", "e\r")
    line = str(err)
    assert "\n" not in line and "\r" not in line and len(line) < 2000
    assert line.endswith("(dir/a\\nb.npy:e\\r)")
