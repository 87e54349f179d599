"""The conformance suite: every registered format proven by the same tests, in the style of
fsspec's abstract tests. A new format (or a plugin's) is covered by registering it; nothing
here names a format. What a format declares (``caps``: dtypes, metadata, attrs, tables,
zero-copy) is what it is held to."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mlconv
from mlconv.cli import cli
from mlconv.dtypes import DType
from mlconv.errors import MlconvError
from mlconv.formats import all_formats

from .helpers import payload, sample

FORMATS = all_formats()
WRITERS = [f for f in FORMATS if f.can_write and f.can_read]
MLCONV = str(Path(sys.executable).with_name("mlconv"))


def ids(fmt):
    return fmt.id


def _ext(fmt) -> str:
    return fmt.extensions[0]


def _dtype_cases():
    for fmt in WRITERS:
        if not fmt.caps.tensors:
            continue
        for dtype in sorted(fmt.caps.dtypes, key=str):
            yield pytest.param(fmt, dtype, id=f"{fmt.id}-{dtype.value}")


def _one_tensor_bundle(dtype: DType, attrs=None):
    b = mlconv.Bundle()
    b["x"] = mlconv.Tensor.from_numpy(sample(dtype, (4, 3), seed=7), attrs or {})
    return b


def _packed_source(path, dtype: DType) -> bytes:
    """A safetensors file of a dtype numpy cannot hold unpacked (6-bit floats), by hand."""
    import json
    import struct

    from mlconv.dtypes import to_safetensors

    raw = bytes(range(7, 7 + 9))  # 12 values x 6 bits
    head = json.dumps({"x": {"dtype": to_safetensors(dtype), "shape": [4, 3],
                             "data_offsets": [0, len(raw)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + raw)
    return raw


@pytest.mark.parametrize(("fmt", "dtype"), list(_dtype_cases()))
def test_every_declared_dtype_round_trips_exactly(tmp_path, fmt, dtype):
    dst = tmp_path / f"x{_ext(fmt)}"
    packed = dtype.bits is not None and dtype.bits % 8 and dtype.bits != 4
    if packed:  # bytes only: numpy has no packed 6-bit arrays
        want = _packed_source(tmp_path / "src.safetensors", dtype)
        mlconv.convert(tmp_path / "src.safetensors", dst)
    else:
        arr = sample(dtype, (4, 3), seed=7)
        mlconv.save({"x": arr}, dst, format=fmt.id)
    with mlconv.open(dst) as back:
        (name, got), = [(n, t) for n, t in back.items()]
        assert got.dtype is dtype and got.shape == (4, 3)
        if packed:
            assert b"".join(map(bytes, got.chunks())) == want
        else:
            assert payload(np.asarray(got.numpy())) == payload(arr)


@pytest.mark.parametrize("fmt", [f for f in WRITERS if f.caps.metadata], ids=ids)
def test_declared_metadata_round_trips(tmp_path, fmt):
    meta = {"k": "v", "ключ": "ω ü", "empty": ""}
    dst = tmp_path / f"m{_ext(fmt)}"
    mlconv.save({"x": np.arange(6, dtype=np.float32)}, dst, format=fmt.id, metadata=meta)
    with mlconv.open(dst) as back:
        assert {k: back.metadata[k] for k in meta} == meta


@pytest.mark.parametrize("fmt", [f for f in WRITERS if f.caps.attrs], ids=ids)
def test_declared_attrs_round_trip(tmp_path, fmt):
    attrs = {"unit": "m", "scale": 0.5, "n": 3}
    dst = tmp_path / f"a{_ext(fmt)}"
    mlconv.save(_one_tensor_bundle(DType.float32, attrs), dst, format=fmt.id)
    with mlconv.open(dst) as back:
        got = dict(back["x"].attrs)
        assert {k: got.get(k) for k in attrs} == attrs


@pytest.mark.parametrize("fmt", [f for f in WRITERS if f.caps.tables], ids=ids)
def test_declared_tables_round_trip(tmp_path, fmt):
    import pyarrow as pa

    table = pa.table({"a": pa.array([1, 2, 3], pa.int64()),
                      "b": pa.array([0.5, -1.0, 2.25], pa.float64())})
    src = tmp_path / "source.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table, src)
    dst = tmp_path / f"t{_ext(fmt)}"
    mlconv.convert(src, dst)
    with mlconv.open(dst) as back:
        (got,) = [e for e in back.values()]
        assert got.kind == "table"
        assert pa.Table.from_batches(list(got.batches(1024))).to_pydict() == table.to_pydict()


def _garbage(fmt, kind: str, good: Path) -> bytes:
    data = good.read_bytes()
    if kind == "empty":
        return b""
    if kind == "truncated":
        return data[:max(1, len(data) // 2)]
    if kind == "header-only":
        return data[:16]
    return bytes(range(256)) * 4  # "noise": no format's magic


@pytest.mark.parametrize("kind", ["empty", "truncated", "header-only", "noise"])
@pytest.mark.parametrize("fmt", WRITERS, ids=ids)
def test_bad_input_is_one_line_exit_1(tmp_path, fmt, kind):
    good = tmp_path / f"good{_ext(fmt)}"
    mlconv.save({"x": np.arange(64, dtype=np.float64)}, good, format=fmt.id)
    bad = tmp_path / f"bad{_ext(fmt)}"
    bad.write_bytes(_garbage(fmt, kind, good))
    runner = CliRunner()
    res = runner.invoke(cli, ["validate", str(bad)], catch_exceptions=False)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    for args in (["inspect", str(bad)], [str(bad), str(tmp_path / "out.safetensors")]):
        res = runner.invoke(cli, args, catch_exceptions=False)
        if kind == "truncated" and res.exit_code == 0 and args[0] == "inspect":
            continue  # a header that is whole may inspect; validate and convert must fail
        assert res.exit_code == 1, (args, res.output)
        lines = [ln for ln in res.output.splitlines() if ln.startswith("mlconv: error:")]
        assert len(lines) == 1 and "internal error" not in res.output, res.output
        assert str(bad) in lines[0] or bad.name in lines[0]


class _Boom(Exception):
    pass


@pytest.mark.parametrize("fmt", WRITERS, ids=ids)
def test_writes_are_atomic(tmp_path, fmt, monkeypatch):
    """A writer that fails half-way leaves no DST and no temp file; an existing DST is
    untouched."""
    src = tmp_path / "in" / "s.npy"
    src.parent.mkdir()
    np.save(src, np.arange(100, dtype=np.float32))
    out = tmp_path / "out"
    out.mkdir()
    dst = out / f"d{_ext(fmt)}"
    real = type(fmt).write

    def half(self, bundle, f, path, options):
        f.write(b"partial bytes")
        raise MlconvError("stopped half-way", path)

    monkeypatch.setattr(type(fmt), "write", half)
    with pytest.raises(MlconvError, match="half-way"):
        mlconv.convert(src, dst)
    assert os.listdir(out) == []
    dst.write_bytes(b"old")
    with pytest.raises(MlconvError):
        mlconv.convert(src, dst, overwrite=True)
    assert os.listdir(out) == [dst.name] and dst.read_bytes() == b"old"
    monkeypatch.setattr(type(fmt), "write", real)
    mlconv.convert(src, dst, overwrite=True)
    assert os.listdir(out) == [dst.name] or fmt.id and all(
        n.startswith(dst.name) for n in os.listdir(out))


_MOVES = ("copy_file_range", "sendfile", "preadv", "preadv2", "pread64", "write", "pwrite64",
          "ioctl")


def _strace_moves(args, cwd) -> list[tuple[str, int]]:
    """(syscall, bytes) of each read, write and copy the installed CLI made; an ioctl is a
    FICLONERANGE and counts the length it shared."""
    log = Path(cwd) / "strace.log"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=" + ",".join(_MOVES), "-o", str(log),
                    MLCONV, *args], cwd=cwd, check=True, capture_output=True, timeout=120)
    out = []
    for line in log.read_text(errors="replace").splitlines():
        clone = re.search(r"ioctl\(\d+, [^,]*FICLONERANGE, \{[^}]*src_length=(\d+)", line)
        if clone and line.rstrip().endswith("= 0"):
            out.append(("ioctl", int(clone.group(1))))
            continue
        # a call another thread interrupted ends on a "<... name resumed>" line
        m = re.search(r"\b(copy_file_range|sendfile|preadv2?|pread64|write|pwrite64)"
                      r"(?:\(| resumed>).*\)\s+=\s+(\d+)", line)
        if m:
            out.append((m.group(1), int(m.group(2))))
    return out


def assert_copied_file_to_file(src, dst, cwd, payload_bytes: int) -> list[tuple[str, int]]:
    """The installed CLI converts ``src`` to ``dst`` moving the payload file to file: shared
    or copied by the kernel, or read and written through mlconv's one 1 MiB buffer; never a
    larger read or write (the decoding path moves 8 MiB pieces), and nothing written twice."""
    from mlconv.fileio import COPY_CHUNK

    moves = _strace_moves([str(src), str(dst)], cwd)
    total = {}
    for name, n in moves:
        total[name] = total.get(name, 0) + n
    moved = sum(total.get(k, 0) for k in ("copy_file_range", "sendfile", "ioctl", "preadv",
                                          "preadv2"))
    assert moved >= payload_bytes, total
    assert max((n for name, n in moves if name in ("preadv", "preadv2", "pread64", "write",
                                                   "pwrite64")),
               default=0) <= COPY_CHUNK, total
    assert total.get("write", 0) + total.get("pwrite64", 0) < payload_bytes + (1 << 20), total
    return moves


def _zero_copy_pairs():
    tensor = [f for f in WRITERS if f.caps.tensors and DType.float32 in f.caps.dtypes]
    for a in tensor:
        for b in tensor:
            if a.caps.zero_copy and b.caps.raw_payload:
                yield pytest.param(a, b, id=f"{a.id}-{b.id}")


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize(("a", "b"), list(_zero_copy_pairs()))
def test_zero_copy_claims_hold_at_the_syscall_level(tmp_path, a, b):
    """Where the plan says zero-copy, the payload moves file to file (strace: no piece
    larger than the copy buffer, nothing written twice)."""
    n = 4 << 20  # 16 MiB of float32
    src = tmp_path / f"s{_ext(a)}"
    mlconv.save({"w": np.arange(n, dtype=np.float32)}, src, format=a.id)
    dst = tmp_path / f"d{_ext(b)}"
    plan = mlconv.plan(src, dst)
    if [s.method for s in plan.steps] != ["zero-copy"]:
        pytest.skip(f"no zero-copy claim for this file: {plan.steps}")
    assert_copied_file_to_file(src, dst, tmp_path, n * 4)


@pytest.mark.parametrize("fmt", WRITERS, ids=ids)
def test_cli_under_a_terminal(tmp_path, fmt):
    """inspect and convert of the format as a person runs them, on a pseudo-terminal."""
    from .test_cli_terminal import run_tty

    src = tmp_path / f"s{_ext(fmt)}"
    mlconv.save({"x": np.arange(12, dtype=np.float32)}, src, format=fmt.id)
    code, shown = run_tty(["inspect", src.name], tmp_path)
    assert code == 0 and "float32" in shown and "Traceback" not in shown, shown
    code, shown = run_tty([src.name, "o.safetensors"], tmp_path)
    assert code == 0 and "wrote" in shown, shown


@pytest.mark.parametrize("fmt", FORMATS, ids=ids)
def test_the_format_is_described_consistently(fmt):
    """One lowercase id everywhere; the magic it declares is what it sniffs; sniffing
    never raises; options and representations are well formed."""
    import dataclasses

    assert fmt.id == fmt.id.lower() and fmt.id.isidentifier()
    assert all(e.startswith(".") and e == e.lower() for e in fmt.extensions)
    for head in (b"", b"\0" * 64, bytes(range(64)), *fmt.magic):
        fmt.sniff(head, len(head))
    for magic in fmt.magic:
        assert fmt.sniff(magic + b"\0" * 64, 1 << 20)
    assert fmt.representations and all(r[1] in ("tensors", "table", "blocks")
                                       for r in fmt.representations)
    if fmt.write_options is not None:
        for f in dataclasses.fields(fmt.write_options):
            assert f.metadata.get("help"), f.name
    if fmt.can_write:
        assert fmt.caps.compressions
