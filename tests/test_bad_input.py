"""Hostile and broken files: a clear mlconv error (exit 1, one line), never a crash, never code
execution, never a DST or temp file left behind."""

import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import mlconv
from mlconv.cli import cli
from mlconv.errors import FormatError, MlconvError, UnsafeInputError

from .helpers import st_write


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_refused(tmp_path, src, exc=MlconvError, match=None, cli_match=None):
    """The library raises ``exc``; the CLI exits 1 with one line; nothing is written."""
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(exc, match=match):
        mlconv.load(src)
    for ext in ("npz", "safetensors", "npy"):
        dst = tmp_path / f"out-{src.stem}.{ext}"
        res = run_cli(src, dst, "--allow-lossy")
        assert res.exit_code == 1, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mlconv: error: "), res.stderr
        assert str(src) in lines[0]
        assert cli_match is None or cli_match in lines[0]
        assert "Traceback" not in res.output
        assert not dst.exists()
    assert sorted(os.listdir(tmp_path)) == before


def npy_bytes(arr):
    import io
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("ext", ["npy", "npz", "safetensors", "bin"])
def test_empty_file(tmp_path, ext):
    src = tmp_path / f"empty.{ext}"
    src.write_bytes(b"")
    assert_refused(tmp_path, src, FormatError, "empty file")


@pytest.mark.parametrize("cut", [5, 9, 60, 128, 130])
def test_truncated_npy(tmp_path, cut):
    src = tmp_path / "t.npy"
    src.write_bytes(npy_bytes(np.arange(10.0))[:cut])
    assert_refused(tmp_path, src, FormatError, "truncated|magic")


def test_truncated_npz(tmp_path):
    full = tmp_path / "full.npz"
    np.savez(full, a=np.arange(1000.0))
    src = tmp_path / "t.npz"
    src.write_bytes(full.read_bytes()[:3000])
    assert_refused(tmp_path, src, FormatError)
    full.unlink()


def test_truncated_safetensors(tmp_path):
    full = tmp_path / "full.safetensors"
    st_write(full, {"a": np.arange(100, dtype=np.float32)})
    data = full.read_bytes()
    full.unlink()
    for cut in (4, 20, len(data) - 1):
        src = tmp_path / f"t{cut}.safetensors"
        src.write_bytes(data[:cut])
        assert_refused(tmp_path, src, FormatError)
        src.unlink()


def st_raw(tmp_path, header, data=b"", name="bad.safetensors", length=None):
    text = json.dumps(header).encode()
    src = tmp_path / name
    src.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return src


def test_safetensors_offsets_past_eof(tmp_path):
    src = st_raw(tmp_path, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                 b"\0" * 8)
    assert_refused(tmp_path, src, FormatError, "truncated")


def test_truncated_safetensors_names_every_tensor_cut_off(tmp_path):
    header = {n: {"dtype": "F32", "shape": [4], "data_offsets": [16 * i, 16 * i + 16]}
              for i, n in enumerate(["a", "b", "c", "d"])}
    src = st_raw(tmp_path, header, b"\0" * 20)  # a and part of b survived
    with pytest.raises(FormatError, match=r"3 tensor\(s\) lie past its end: b, c, d"):
        mlconv.load(src)


def test_safetensors_overlapping_offsets(tmp_path):
    src = st_raw(tmp_path, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                 b"\0" * 12)
    assert_refused(tmp_path, src, FormatError, "overlaps")


def test_safetensors_size_mismatch(tmp_path):
    src = st_raw(tmp_path, {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                 b"\0" * 8)
    assert_refused(tmp_path, src, FormatError, "needs 12 bytes")


def test_safetensors_huge_header_length(tmp_path):
    src = st_raw(tmp_path, {}, length=2 ** 60)
    assert_refused(tmp_path, src, FormatError, "cap")


@pytest.mark.parametrize("header", [
    {"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}},
    {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
    {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}},
    {"a": {"dtype": "F32", "shape": [1]}},
    {"__metadata__": {"k": 1}},
    [1, 2],
])
def test_safetensors_bad_header_fields(tmp_path, header):
    src = st_raw(tmp_path, header, b"\0" * 4)
    assert_refused(tmp_path, src, FormatError)


def test_safetensors_header_not_json(tmp_path):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(struct.pack("<Q", 6) + b"{nope}")
    assert_refused(tmp_path, src, FormatError, "JSON")


class _Marker:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_npy_pickled_object_array_runs_no_code(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(np.array([_Marker(str(marker))], dtype=object), protocol=2)
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (118 - len(header)) + b"\n"
    src = tmp_path / "evil.npy"
    src.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload)
    assert_refused(tmp_path, src, UnsafeInputError, "pickle")
    res = run_cli("inspect", src)
    assert res.exit_code == 1 and "pickle" in res.stderr
    assert not marker.exists()


def test_npz_with_pickled_member_runs_no_code(tmp_path):
    marker = tmp_path / "PWNED"
    src = tmp_path / "evil.npz"
    np.savez(src, x=np.array([_Marker(str(marker)), 1], dtype=object))
    assert not marker.exists()
    assert_refused(tmp_path, src, UnsafeInputError, "pickle")
    assert not marker.exists()


def test_npz_zip_bomb_declared_size(tmp_path):
    # A deflated member that claims 2**40 bytes: refused before anything is inflated.
    src = tmp_path / "bomb.npz"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", npy_bytes(np.zeros(10)))
    data = bytearray(src.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 0xFFFFFFF0)  # uncompressed size in central dir
    src.write_bytes(bytes(data))
    assert_refused(tmp_path, src, FormatError, "zip bomb|declares")


def test_npz_member_offset_outside_the_file(tmp_path):
    # found by fuzzing: a central directory whose member offset points before the file
    src = tmp_path / "off.npz"
    np.savez(src, x=np.arange(20))
    data = bytearray(src.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 42, 0xFFFFFF00)  # relative offset of local header
    src.write_bytes(bytes(data))
    assert_refused(tmp_path, src, FormatError)


def test_npz_member_header_lies_about_shape(tmp_path):
    # The npy header inside claims far more data than the member holds.
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (4000000000,), }"
    header += b" " * (118 - len(header)) + b"\n"
    fake = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 32
    src = tmp_path / "lie.npz"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", fake)
    assert_refused(tmp_path, src, FormatError)


@pytest.mark.parametrize("header", [
    b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
    b"{'descr': '<f8', 'fortran_order': 'no', 'shape': (2,)}",
    b"{'descr': '<f8', 'fortran_order': False, 'shape': (-2,)}",
    b"__import__('os').system('touch PWNED')",
    b"[" * 5000 + b"]" * 5000,
])
def test_npy_hostile_headers(tmp_path, header):
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    src = tmp_path / "h.npy"
    src.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16)
    assert_refused(tmp_path, src, MlconvError)
    assert not (tmp_path / "PWNED").exists()


def test_npy_header_length_capped(tmp_path):
    src = tmp_path / "big.npy"
    src.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 31) + b"{" * 100)
    assert_refused(tmp_path, src, FormatError, "cap")


def test_wrong_extension_is_sniffed(tmp_path):
    src = tmp_path / "really-npy.safetensors"
    src.write_bytes(npy_bytes(np.arange(6, dtype=np.int16)))
    b = mlconv.load(src)
    assert b.format == "npy" and np.array_equal(b["really-npy"].numpy(), np.arange(6))
    out = tmp_path / "o.safetensors"
    mlconv.convert(src, out)
    assert mlconv.load(out)["really-npy"].dtype.value == "int16"


def test_garbage_with_known_extension_and_unknown(tmp_path):
    src = tmp_path / "junk.safetensors"
    src.write_bytes(b"hello world, this is not a model at all")
    assert_refused(tmp_path, src, FormatError)
    src.unlink()
    src = tmp_path / "junk.dat"
    src.write_bytes(b"hello world")
    # the library names its argument; the CLI its option
    assert_refused(tmp_path, src, FormatError, "from_format/format argument", "use --from")


def test_missing_source(tmp_path):
    res = run_cli(tmp_path / "nope.npy", tmp_path / "o.npz")
    assert res.exit_code == 1 and "no such file" in res.stderr
