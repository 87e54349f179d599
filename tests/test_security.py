"""Security (issue 11): no read outside the input's folder, hostile counts and names refused
with one clear line, special files refused."""

import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import mlconv
from mlconv.errors import FormatError, MlconvError, UnsafeInputError

MLCONV = [sys.executable, "-m", "mlconv"]


def cli(*args, timeout=60, env=None):
    """The installed CLI in a subprocess: (exit code, stderr then stdout)."""
    res = subprocess.run([*MLCONV, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    return res.returncode, res.stderr + res.stdout


# --- HDF5 virtual datasets ----------------------------------------------------------------

def _vds(path, source, maxshape=None):
    lay = h5py.VirtualLayout(shape=(10,), maxshape=(maxshape,), dtype="i8")
    vs = h5py.VirtualSource(str(source), "d", shape=(10,), maxshape=(maxshape,))
    if maxshape is None:
        lay[0:h5py.h5s.UNLIMITED] = vs[0:h5py.h5s.UNLIMITED]
    else:
        lay[:] = vs[:]
    with h5py.File(path, "w", libver="latest") as f:
        f.create_virtual_dataset("v", lay, fillvalue=0)
        f["plain"] = np.arange(3)
    return path


def test_unlimited_vds_lists_declared_shape_and_refuses_data(tmp_path):
    (tmp_path / "out").mkdir()
    with h5py.File(tmp_path / "out" / "src.h5", "w") as f:
        f.create_dataset("d", data=np.arange(1000), maxshape=(None,), chunks=(100,))
    src = _vds(tmp_path / "in.h5", tmp_path / "out" / "src.h5")
    with mlconv.open(src) as b:  # the guard child runs too
        assert b["v"].shape == (10,)  # declared, not the outside file's 1000
        with pytest.raises(UnsafeInputError, match="virtual dataset"):
            b["v"].numpy()
    code, err = cli("convert", src, tmp_path / "o.npz")
    assert code == 1 and "virtual dataset" in err and err.count("\n") == 1


@pytest.mark.parametrize("cmd", [("inspect",), ("convert", "OUT"), ("validate",),
                                 ("validate", "--deep")])
def test_vds_source_is_never_opened(tmp_path, cmd):
    """The VDS names a FIFO: opening it would block, so a hang means a read outside."""
    (tmp_path / "far").mkdir()
    fifo = tmp_path / "far" / "src.h5"
    os.mkfifo(fifo)
    src = _vds(tmp_path / "v.h5", fifo)
    args = [str(tmp_path / "o.npz") if a == "OUT" else a for a in cmd]
    try:
        code, err = cli(*args[:1], src, *args[1:], timeout=40)
    except subprocess.TimeoutExpired:
        with open(fifo, "wb"):  # unblock whatever opened it
            pass
        pytest.fail("mlconv opened the file a virtual dataset names")
    assert "internal error" not in err
    if cmd[0] == "inspect":
        assert code == 0
    elif cmd[0] == "validate":  # a valid file whose data mlconv will not read: a warning
        assert code == 0 and "not checked: virtual dataset" in err
    else:
        assert code == 1 and "virtual dataset" in err


def test_fixed_vds_and_external_storage_are_unsafe(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["d"] = np.arange(10)
    src = _vds(tmp_path / "v.h5", tmp_path / "s.h5", maxshape=10)
    with mlconv.open(src) as b, pytest.raises(UnsafeInputError, match="virtual"):
        b["v"].numpy()
    (tmp_path / "raw.bin").write_bytes(bytes(80))
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f.create_dataset("e", shape=(10,), dtype="i8", external=[("raw.bin", 0, 80)])
    with mlconv.open(tmp_path / "e.h5") as b, pytest.raises(UnsafeInputError, match="external"):
        b["e"].numpy()


def test_pandas_frame_datasets_are_not_followed_through_links(tmp_path):
    """A group posing as a pandas frame whose axis0 is an external link outside."""
    (tmp_path / "far").mkdir()
    with h5py.File(tmp_path / "far" / "o.h5", "w") as f:
        f["names"] = np.array([b"a"])
    src = tmp_path / "p.h5"
    with h5py.File(src, "w") as f:
        g = f.create_group("df")
        g.attrs["pandas_type"] = "frame"
        g.attrs["ndim"] = 2
        g.attrs["nblocks"] = 1
        g["axis0"] = h5py.ExternalLink(str(tmp_path / "far" / "o.h5"), "/names")
        g["axis1"] = np.arange(3)
        g["block0_items"] = np.array([b"a"])
        g["block0_values"] = np.zeros((3, 1))
    with mlconv.open(src) as b:
        assert "df" not in b or b["df"].kind != "table"
        assert "df/axis0" in b.skipped


# --- HDF5 external-link chains ------------------------------------------------------------

def test_external_link_chain_checks_every_hop(tmp_path):
    (tmp_path / "far").mkdir()
    with h5py.File(tmp_path / "far" / "secret.h5", "w") as f:
        f["cdata"] = np.arange(7)
        f["g/cdata"] = np.arange(7)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["x"] = h5py.ExternalLink(str(tmp_path / "far" / "secret.h5"), "/g")
        f["s"] = h5py.SoftLink("/x/cdata")
        f["ok"] = np.arange(4)
    src = tmp_path / "x.h5"
    with h5py.File(src, "w") as f:
        f["chain"] = h5py.ExternalLink("b.h5", "/x/cdata")
        f["soft"] = h5py.ExternalLink("b.h5", "/s")
        f["fine"] = h5py.ExternalLink("b.h5", "/ok")
    b = mlconv.load(src, allow_external=True)
    assert "folder" in b.skipped["chain"] and "folder" in b.skipped["soft"]
    assert "chain" not in b and "soft" not in b
    assert np.array_equal(b["fine"].numpy(), np.arange(4))
    code, err = cli("convert", src, tmp_path / "o.npz", "--allow-external")
    assert code == 1 and "chain" in err
    assert not (tmp_path / "o.npz").exists()


# --- ONNX with external data: the pair is published as one ------------------------------

def _weights(path, value, n=4):
    from safetensors.numpy import save_file

    save_file({f"w{i}": np.full((64, 64), value + i, np.float32) for i in range(n)}, str(path))
    return path


def _onnx_values(path):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _locations(path):
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}


def test_onnx_overwrite_replaces_the_pair_and_removes_the_old_data(tmp_path):
    dst = tmp_path / "m.onnx"
    mlconv.convert(_weights(tmp_path / "a.safetensors", 1), dst, options={"external_data": True})
    (old,) = _locations(dst)
    mlconv.convert(_weights(tmp_path / "b.safetensors", 7), dst, options={"external_data": True},
                   overwrite=True)
    (new,) = _locations(dst)
    assert new != old and not (tmp_path / old).exists()
    assert _onnx_values(dst)["w0"][0, 0] == 7
    assert sorted(os.listdir(tmp_path)) == sorted(["a.safetensors", "b.safetensors",
                                                   "m.onnx", new])


def test_onnx_never_replaces_another_data_file(tmp_path):
    (tmp_path / "other.onnx.data").write_bytes(b"someone's weights")
    mlconv.convert(_weights(tmp_path / "a.safetensors", 1), tmp_path / "other.onnx",
                   options={"external_data": True})
    assert (tmp_path / "other.onnx.data").read_bytes() == b"someone's weights"
    assert _onnx_values(tmp_path / "other.onnx")["w3"][0, 0] == 4


def test_onnx_conversion_onto_its_own_sources_data_file(tmp_path):
    """The source's data file is named DST.data: converting must not destroy it."""
    import onnx

    src = tmp_path / "a.onnx"
    mlconv.convert(_weights(tmp_path / "w.safetensors", 3), tmp_path / "tmp.onnx",
                   options={"external_data": True})
    m = onnx.load(str(tmp_path / "tmp.onnx"))
    onnx.save_model(m, str(src), save_as_external_data=True, location="b.onnx.data",
                    size_threshold=0)
    before = (tmp_path / "b.onnx.data").read_bytes()
    mlconv.convert(src, tmp_path / "b.onnx", options={"external_data": True})
    assert (tmp_path / "b.onnx.data").read_bytes() == before
    assert _onnx_values(tmp_path / "b.onnx")["w1"][0, 0] == 4
    assert _onnx_values(src)["w1"][0, 0] == 4


def test_onnx_loser_of_a_race_leaves_nothing(tmp_path, monkeypatch):
    """DST appears while we write (another writer won): we fail cleanly, its pair intact."""
    from mlconv.errors import OutputExistsError
    from mlconv.formats import onnx as onnx_fmt

    dst = tmp_path / "m.onnx"
    mlconv.convert(_weights(tmp_path / "a.safetensors", 1), tmp_path / "win.onnx",
                   options={"external_data": True})
    real = onnx_fmt._write_side

    def racing(*args):
        real(*args)
        os.rename(tmp_path / "win.onnx", dst)  # the winner publishes meanwhile

    monkeypatch.setattr(onnx_fmt, "_write_side", racing)
    with pytest.raises(OutputExistsError):
        mlconv.convert(_weights(tmp_path / "b.safetensors", 9), dst,
                       options={"external_data": True})
    assert _onnx_values(dst)["w0"][0, 0] == 1
    assert sorted(os.listdir(tmp_path)) == sorted(["a.safetensors", "b.safetensors",
                                                   "m.onnx", *_locations(dst)])


# --- temp files of killed runs -----------------------------------------------------------

def test_stale_temp_files_are_cleaned_but_never_a_live_writers(tmp_path):
    from mlconv import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def temp(pid):
            p = atomic.temp_path(str(tmp_path), "o.npz").replace(f".{os.getpid()}.",
                                                                  f".{pid}.")
            open(p, "wb").close()
            return os.path.basename(p)

        stale, busy, other = temp(dead.pid), temp(live.pid), temp(dead.pid)
        other_host = other.replace(atomic._host(), "elsewhere")
        os.rename(tmp_path / other, tmp_path / other_host)
        (tmp_path / "user.mlconv-tmp").write_bytes(b"not ours")
        mlconv.convert(_weights(tmp_path / "a.safetensors", 1), tmp_path / "o.npz")
        left = set(os.listdir(tmp_path))
        assert stale not in left
        assert {busy, other_host, "user.mlconv-tmp", "o.npz"} <= left
    finally:
        live.kill()
        live.wait()


# --- silent data loss: duplicates and counts ---------------------------------------------

def _patch_parquet_rows(path, rows: int, new_rows: int):
    """Rewrite the footer's num_rows fields (file and row group) from rows to new_rows."""
    def varint(v):
        out = bytearray()
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return bytes(out)

    data = path.read_bytes()
    n = int.from_bytes(data[-8:-4], "little")
    footer = data[-8 - n:-8]
    old, new = b"\x16" + varint(rows * 2), b"\x16" + varint(new_rows * 2)  # zigzag i64
    assert footer.count(old) == 2
    footer = footer.replace(old, new)
    path.write_bytes(data[:-8 - n] + footer + len(footer).to_bytes(4, "little") + b"PAR1")


def test_parquet_row_group_declaring_2_62_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [[1, 2]] * 1000}), src)  # leaf values 2000: not patched
    _patch_parquet_rows(src, 1000, 1 << 62)
    with pytest.raises(FormatError, match="row group 0 declares"):
        mlconv.load(src)
    code, err = cli("convert", src, tmp_path / "o.h5")
    assert code == 1 and "row group 0" in err and not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_duplicate_names_in_an_entries_table(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    save_file({"a": np.ones(2, np.float32), "b": np.zeros(2, np.float32)},
              str(tmp_path / "s.safetensors"))
    good = tmp_path / f"g.{fmt}"
    mlconv.convert(tmp_path / "s.safetensors", good, options={"layout": "entries"})
    table = pq.read_table(good) if fmt == "parquet" else feather.read_table(good)
    names = table.column("name").to_pylist()
    table = table.set_column(table.schema.get_field_index("name"), "name",
                             pa.array([names[0]] * len(names)))
    bad = tmp_path / f"dup.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, bad)
    else:
        feather.write_feather(table, bad)
    with pytest.raises(FormatError, match="repeats the name") as e:
        mlconv.load(bad)
    assert e.value.entry == "a"


def test_duplicate_onnx_initializer_names(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones(2, np.float32), "w"),
             numpy_helper.from_array(np.zeros(2, np.float32), "w")]
    graph = helper.make_graph([], "g", [], [], initializer=inits)
    src = tmp_path / "dup.onnx"
    onnx.save(helper.make_model(graph), str(src))
    with pytest.raises(FormatError, match="duplicate initializer") as e:
        mlconv.load(src)
    assert e.value.entry == "w"


# --- special files -----------------------------------------------------------------------

@pytest.mark.parametrize("cmd", [("inspect",), ("convert", "OUT"), ("validate",),
                                 ("validate", "--deep")])
def test_fifo_source_is_refused_not_waited_on(tmp_path, cmd):
    fifo = tmp_path / "in.npy"
    os.mkfifo(fifo)
    args = [str(tmp_path / "o.npz") if a == "OUT" else a for a in cmd]
    try:
        code, err = cli(args[0], fifo, *args[1:], timeout=30)
    except subprocess.TimeoutExpired:
        with open(fifo, "wb"):
            pass
        pytest.fail("mlconv waited on a FIFO")
    assert code == 1 and "not a regular file (a FIFO)" in err
    assert "internal error" not in err


def test_device_with_from_is_refused(tmp_path):
    code, err = cli("inspect", "/dev/zero", "--from", "onnx", timeout=30)
    assert code == 1 and "not a regular file (a device)" in err and err.count("\n") == 1
    with pytest.raises(MlconvError, match="not a regular file"):
        mlconv.load("/dev/zero", "npy")


# --- internal errors: each hostile number or name a one-line FormatError -----------------

def _st(path, header: bytes, data=b""):
    import struct

    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _npy(path, header: str, data=b""):
    import struct

    h = header.encode()
    h += b" " * (63 - (10 + len(h)) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data)
    return path


def _refused_everywhere(src, tmp_path, match, entry=None, targets=("h5", "onnx", "parquet",
                                                                   "npz", "safetensors")):
    with pytest.raises(FormatError, match=match) as e:
        mlconv.load(src)
    if entry is not None:
        assert e.value.entry == entry
    for to in targets:
        code, err = cli("convert", src, tmp_path / f"o.{to}")
        assert code == 1 and "internal error" not in err and err.count("\n") == 1, (to, err)
    report = mlconv.validate(src)
    assert not report.ok


def test_lone_surrogates_in_names_and_metadata(tmp_path):
    name = _st(tmp_path / "n.safetensors",
               b'{"a\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4))
    _refused_everywhere(name, tmp_path, "entry name is not valid Unicode", "a\\ud800")
    meta = _st(tmp_path / "m.safetensors", b'{"__metadata__":{"k":"v\\udc00"},'
               b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4))
    _refused_everywhere(meta, tmp_path, "metadata value is not valid Unicode", "k")


@pytest.mark.parametrize("shape", ["(0, 18446744073709551616)",
                                   "(0, 1099511627776, 1099511627776)"])
def test_shapes_beyond_int64_even_with_a_zero_dim(tmp_path, shape):
    src = _npy(tmp_path / "h.npy", f"{{'descr': '<f4', 'fortran_order': False, "
                                   f"'shape': {shape}, }}")
    _refused_everywhere(src, tmp_path, "shape", "h")
    st = _st(tmp_path / "h.safetensors",
             b'{"a":{"dtype":"F32","shape":%s,"data_offsets":[0,0]}}'
             % shape.replace("(", "[").replace(")", "]").encode())
    _refused_everywhere(st, tmp_path, "shape", "a")


def test_a_1mb_name(tmp_path):
    import json

    header = json.dumps({"n" * (1 << 20): {"dtype": "F32", "shape": [1],
                                           "data_offsets": [0, 4]}}).encode()
    src = _st(tmp_path / "big.safetensors", header, bytes(4))
    with pytest.raises(FormatError, match="entry name of 1048576 bytes") as e:
        mlconv.load(src)
    assert len(str(e.value)) < 300
    code, err = cli("convert", src, tmp_path / "o.npz")
    assert code == 1 and len(err) < 300


def test_duplicate_structured_field_names(tmp_path):
    src = _npy(tmp_path / "d.npy", "{'descr': [('a', '<i4'), ('a', '<i4')], "
                                   "'fortran_order': False, 'shape': (1,), }", bytes(8))
    _refused_everywhere(src, tmp_path, "field name 'a' repeated", "d")


def test_recorded_dtype_that_lies_about_the_arrow_storage(tmp_path):
    import ml_dtypes
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    save_file({"a": np.ones((4, 2), ml_dtypes.bfloat16)}, str(tmp_path / "bf.safetensors"))
    mlconv.convert(tmp_path / "bf.safetensors", tmp_path / "bf.parquet")
    t = pq.read_table(tmp_path / "bf.parquet")
    lie = t.schema.field(0).with_metadata({b"mlconv.dtype": b"float32"})
    pq.write_table(t.cast(pa.schema([lie], metadata=t.schema.metadata)),
                   tmp_path / "lie.parquet")
    _refused_everywhere(tmp_path / "lie.parquet", tmp_path, "records mlconv.dtype float32 "
                        "but stores uint16", "lie", targets=("npz",))


def test_json_metadata_nested_100000_deep(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    deep = "[" * 100_000 + "]" * 100_000
    pq.write_table(pa.table({"x": [1, 2]}, metadata={"mlconv.attrs": deep}),
                   tmp_path / "deep.parquet")
    _refused_everywhere(tmp_path / "deep.parquet", tmp_path, "nested deeper",
                        "mlconv.attrs", targets=("h5",))


def test_hdf5_compound_nested_1000_deep(tmp_path):
    from h5py import h5d, h5s, h5t

    t = h5t.STD_I32LE.copy()
    for _ in range(1000):
        c = h5t.create(h5t.COMPOUND, t.get_size())
        c.insert(b"f", 0, t)
        t = c
    src = tmp_path / "deep.h5"
    with h5py.File(src, "w") as f:
        h5d.create(f.id, b"d", t, h5s.create_simple((2,)))
    _refused_everywhere(src, tmp_path, "nested deeper", "d", targets=("npz",))


def _pandas_table(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("tables")
    src = tmp_path / "p.h5"
    pd.DataFrame({"a": [1, 2], "b": [3.0, 4.0]}).to_hdf(src, key="df", format="table")
    return src


def test_pytables_pickle_nested_deep(tmp_path):
    src = _pandas_table(tmp_path)
    with h5py.File(src, "r+") as f:
        f["df"].attrs["non_index_axes"] = np.void(b"(" * 30_000 + b"l" * 30_000 + b".")
    _refused_everywhere(src, tmp_path, "nested deeper", "df", targets=("npz",))


def test_pytables_attribute_with_unhashable_kind(tmp_path):
    import pickle

    src = _pandas_table(tmp_path)
    with h5py.File(src, "r+") as f:
        vc = [k for k in f["df/table"].attrs if k.endswith("_kind")
              and k.startswith("values_block")][0]
        f["df/table"].attrs[vc] = np.void(pickle.dumps([[1]], protocol=2))
    _refused_everywhere(src, tmp_path, "not plain values", "df", targets=("npz",))


def test_onnx_string_count_and_huge_raw_dims(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def model(t, name):
        path = tmp_path / name
        onnx.save(helper.make_model(helper.make_graph([], "g", [], [], initializer=[t])),
                  str(path))
        return path

    s = model(TensorProto(name="s", data_type=TensorProto.STRING, dims=[3],
                          string_data=[b"a", b"b"]), "s.onnx")
    _refused_everywhere(s, tmp_path, "string_data holds 2 values for", "s", targets=("npz",))
    r = model(TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 40, 1 << 30],
                          raw_data=bytes(16)), "r.onnx")
    _refused_everywhere(r, tmp_path, "raw_data holds 16 bytes", "w", targets=("npz",))


def test_non_utf8_source_file_name(tmp_path):
    src = os.path.join(os.fsencode(tmp_path), b"\xff\xfe.npy")
    np.save(os.fsdecode(src), np.arange(3))
    with mlconv.open(os.fsdecode(src)) as b:
        assert list(b) == ["\ufffd\ufffd"]
    for to in ("h5", "parquet", "safetensors", "onnx"):
        code, err = cli("convert", os.fsdecode(src), tmp_path / f"o.{to}")
        assert code == 0, err


# --- validate must not pass what convert rejects -----------------------------------------

@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_validate_deep_catches_entries_whose_shapes_lie(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "s.safetensors"))
    good = tmp_path / f"g.{fmt}"
    mlconv.convert(tmp_path / "s.safetensors", good, options={"layout": "entries"})
    t = pq.read_table(good) if fmt == "parquet" else feather.read_table(good)
    i = t.schema.get_field_index("shape")
    t = t.set_column(i, t.schema.field(i), pa.array([[5]], t.schema.field(i).type))
    bad = tmp_path / f"lie.{fmt}"
    (pq.write_table if fmt == "parquet" else feather.write_feather)(t, bad)
    with pytest.raises(FormatError):
        mlconv.convert(bad, tmp_path / "o.npz")
    report = mlconv.validate(bad, deep=True)
    assert not report.ok and "need 20" in report.problems[0].reason


# --- disk full, short writes, truncated Arrow --------------------------------------------

@pytest.mark.parametrize("to", ["onnx", "npz", "safetensors", "npy"])
def test_short_writes_are_completed_and_a_full_disk_names_the_output(tmp_path, monkeypatch,
                                                                     to):
    import io

    from mlconv import atomic

    src = _weights(tmp_path / "a.safetensors", 1, n=1)
    real_os = os.write
    monkeypatch.setattr(atomic._WholeWrites, "_raw_write",
                        lambda self, mv: io.FileIO.write(self, mv[:777]))
    monkeypatch.setattr(os, "write", lambda fd, b: real_os(fd, memoryview(b)[:777]))
    mlconv.convert(src, tmp_path / f"o.{to}")  # every short write completed
    monkeypatch.undo()
    with mlconv.open(tmp_path / f"o.{to}") as b:
        assert b[list(b)[0]].numpy()[0, 0] == 1

    def full(*_):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic._WholeWrites, "_raw_write", full)
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(MlconvError, match="No space left") as e:
        mlconv.convert(src, tmp_path / f"full.{to}")
    monkeypatch.undo()
    assert str(tmp_path / f"full.{to}") in str(e.value)
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".full", "full"))]


def test_truncated_arrow_says_truncated(tmp_path):
    import pyarrow as pa
    import pyarrow.feather as feather

    good = tmp_path / "t.arrow"
    feather.write_feather(pa.table({"x": np.arange(10_000)}), good, compression="uncompressed")
    data = good.read_bytes()
    for cut in (100, len(data) // 2, len(data) - 20):
        bad = tmp_path / f"cut{cut}.arrow"
        bad.write_bytes(data[:cut])
        code, err = cli("inspect", bad)
        assert code == 1 and "truncated" in err and "1330795073" not in err, err
    with pa.OSFile(str(tmp_path / "s.arrows"), "wb") as f, \
            pa.ipc.new_stream(f, pa.schema([("x", pa.int64())])) as w:
        w.write_table(pa.table({"x": np.arange(10_000)}))
    data = (tmp_path / "s.arrows").read_bytes()
    (tmp_path / "cut.arrows").write_bytes(data[:len(data) // 2])
    code, err = cli("convert", tmp_path / "cut.arrows", tmp_path / "o.npz")
    assert code == 1 and "truncated" in err


# --- fuzz findings -----------------------------------------------------------------------

def test_parquet_column_metadata_that_aborts_pyarrow(tmp_path):
    """Fuzz finding: an invalid repetition type of a list element makes pyarrow's column
    metadata accessor abort the process (C++ terminate). mlconv never touches it in
    inspect/convert and validate tries it in a child: an error, never a signal."""
    src = tmp_path / "s.parquet"
    mlconv.save({"a": np.arange(8, dtype=np.float32).reshape(4, 2),
                 "b": np.arange(4, dtype=np.int16)}, src, options={"layout": "rows"})
    data = src.read_bytes()
    assert data.count(b"\x25\x02\x18\x07element") == 1
    src.write_bytes(data.replace(b"\x25\x02\x18\x07element", b"\x25\x54\x18\x07element"))
    for cmd in (("inspect",), ("validate",), ("validate", "--deep"),
                ("convert", "OUT")):
        args = [str(tmp_path / "o.npz") if a == "OUT" else a for a in cmd]
        code, err = cli(args[0], src, *args[1:])
        assert code in (0, 1) and "internal error" not in err, (cmd, code, err)
        if cmd[0] == "validate":
            assert code == 1 and "corrupt column metadata" in err


def test_npz_member_with_an_empty_name(tmp_path):
    """Fuzz finding: zipfile's is_dir() indexes the last character of the name."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    src = tmp_path / "e.npz"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("a.npy", buf.getvalue())
        z.writestr(zipfile.ZipInfo(""), b"x")
    with mlconv.open(src) as b:
        assert list(b) == ["a"] and list(b["a"].numpy()) == [0, 1, 2]


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_column_name_that_is_not_utf8(tmp_path, fmt):
    """Fuzz finding (Arrow): pyarrow decodes field names lazily and raises then."""
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    src = tmp_path / f"n.{fmt}"
    t = pa.table({"zq_col": [1, 2]})
    pq.write_table(t, src) if fmt == "parquet" else feather.write_feather(t, src)
    data = src.read_bytes()
    assert b"zq_col" in data
    src.write_bytes(data.replace(b"zq_col", b"\xb3q_col"))
    code, err = cli("inspect", src)
    assert code == 1 and "utf-8" in err.lower() and "internal error" not in err, err


def test_parquet_page_of_unknown_type_loses_no_rows(tmp_path):
    """pyarrow skips a data page whose type it does not know: the rows would vanish from
    the output (0-row Arrow, a cut npz member) with exit 0. Now convert and validate --deep
    both refuse it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "p.parquet"
    pq.write_table(pa.table({"x": np.arange(1000), "y": np.arange(1000.0)}), src,
                   data_page_version="1.0", compression="none", write_statistics=False)
    offset = pq.ParquetFile(src).metadata.row_group(0).column(1).data_page_offset
    data = bytearray(src.read_bytes())
    assert data[offset:offset + 2] == b"\x15\x00"  # PageHeader.type = DATA_PAGE
    data[offset + 1] = 0x0E                           # type 7: unknown
    src.write_bytes(bytes(data))
    for to in ("arrow", "npz"):
        with pytest.raises(FormatError, match="pages hold"):
            mlconv.convert(src, tmp_path / f"o.{to}")
        assert not (tmp_path / f"o.{to}").exists()
    report = mlconv.validate(src, deep=True)
    assert not report.ok and "pages hold" in report.problems[0].reason


def test_hdf5_global_heap_that_hangs_libhdf5(tmp_path, monkeypatch):
    """Fuzz finding: an empty object inserted into the global heap holding an attribute's
    vlen string sends libhdf5 into an endless loop reading it. The guard child's timeout
    turns it into an error (here shortened; 60 s by default)."""
    from mlconv.formats.hdf5 import guard as _hdf5_guard

    src = tmp_path / "g.h5"
    with h5py.File(src, "w") as f:
        f["x"] = np.arange(20, dtype=np.float32)
        f.attrs["k"] = "v"
    data = src.read_bytes()
    at = data.index(b"GCOL") + 16  # after the collection header: its first object
    src.write_bytes(data[:at] + bytes(17) + b"GCOL\x01\x00\x00\x00\x00\x10" + bytes(6)
                    + data[at:])
    monkeypatch.setattr(_hdf5_guard, "TIMEOUT", 5)
    start = time.monotonic()
    with pytest.raises(FormatError, match="did not finish"):
        mlconv.load(src)
    assert time.monotonic() - start < 30


def test_npy_header_that_makes_python_warn_is_still_one_line(tmp_path):
    """Fuzz finding: ast.literal_eval printed a SyntaxWarning line before the error."""
    src = _npy(tmp_path / "w.npy", "{'descr': '<f4', 'fortran_order': False, "
                                   "'shape': (1if 1 else 2, ), }", bytes(4))
    code, err = cli("inspect", src)
    assert code == 1 and err.count("\n") == 1 and "SyntaxWarning" not in err, err
