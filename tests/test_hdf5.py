"""HDF5: reading h5py-written files, writing files h5py reads back, conversions judged by
h5py/numpy/safetensors, pandas files judged by pandas, hostile files refused cleanly."""

import datetime
import os
import pickle
import signal

import h5py
import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

import mlconv
from mlconv import dtypes as D
from mlconv.cli import cli
from mlconv.dtypes import DType
from mlconv.errors import (
    FormatError,
    LossyConversionError,
    MlconvError,
    UnsafeInputError,
    UnsupportedError,
)
from mlconv.formats import isolation
from mlconv.formats.hdf5 import guard as _hdf5_guard

from .conftest import CORPUS, corpus_files, corpus_params
from .helpers import cli_refuses, payload, sample, st_read, st_write

NUMPY_NATIVE = sorted((d for d in D.NUMERIC if not d.is_subbyte and d.numpy().kind not in "VMm"
                       and not d.value.startswith("float8")), key=str)
HELD = sorted(D.SAFETENSORS_DTYPES - {d for d in D.SAFETENSORS_DTYPES if d.is_subbyte},
              key=str)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# --- h5 -> other formats -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", NUMPY_NATIVE, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "chunked-gzip", "big-endian"])
def test_h5_dataset_to_every_format(tmp_path, dtype, layout):
    arr = sample(dtype, (6, 5), seed=2)
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        if layout == "contiguous":
            f["g/x"] = arr
        elif layout == "chunked-gzip":
            f.create_dataset("g/x", data=arr, chunks=(2, 5), compression="gzip", shuffle=True)
        else:
            f["g/x"] = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    with mlconv.open(src) as b:
        t = b["g/x"]
        assert t.dtype is dtype and t.shape == (6, 5)
        assert payload(t.numpy()) == payload(arr)
        if layout == "contiguous":
            assert isinstance(t.numpy(), np.memmap)
    for fmt in ("npz", "safetensors", "npy"):
        if fmt == "safetensors" and dtype not in D.SAFETENSORS_DTYPES:
            continue
        dst = tmp_path / f"out.{fmt}"
        mlconv.convert(src, dst, overwrite=True)
        if fmt == "safetensors":
            assert st_read(dst)[1]["g/x"][1:] == ((6, 5), payload(arr))
        else:
            got = np.load(dst) if fmt == "npy" else np.load(dst)["g/x"]
            assert got.dtype == arr.dtype and payload(got) == payload(arr)


@pytest.mark.parametrize("dtype", HELD, ids=str)
def test_safetensors_to_h5_and_back_exact(tmp_path, dtype):
    arr = sample(dtype, (4, 3), seed=5)
    src = tmp_path / "in.safetensors"
    st_write(src, {"enc/w": arr, "s": sample(dtype, (), seed=1)}, {"k": "v"})
    h5 = tmp_path / "mid.h5"
    mlconv.convert(src, h5)
    with h5py.File(h5) as f:  # what an h5py user sees
        ds = f["enc/w"]
        assert f.attrs["k"] == "v"
        if dtype.numpy().kind == "V" or dtype.value.startswith("float8"):
            assert ds.dtype == np.dtype(f"<u{dtype.bits // 8}")
            assert ds.attrs["mlconv.dtype"] == dtype.value
            got = ds[()].view(dtype.numpy())
        else:
            got = ds[()]
        assert payload(got) == payload(arr)
    back = tmp_path / "back.safetensors"
    mlconv.convert(h5, back)
    meta, tensors = st_read(back)
    assert meta == {"k": "v"}
    assert tensors["enc/w"] == (D.to_safetensors(dtype), (4, 3), payload(arr))


def test_large_datasets_are_4k_aligned_and_copied_in_place(tmp_path):
    src = tmp_path / "in.npy"
    arr = np.arange(1 << 16, dtype=np.float32)
    np.save(src, arr)
    out = tmp_path / "o.h5"
    mlconv.convert(src, out)
    with h5py.File(out) as f:
        assert f["in"].id.get_offset() % 4096 == 0
        assert np.array_equal(f["in"][()], arr)
    assert isinstance(mlconv.load(out)["in"].numpy(), np.memmap)


def test_groups_attrs_and_h5_to_h5(tmp_path):
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        f.attrs["title"] = "run 7"
        f.attrs["epochs"] = 12
        g = f.create_group("model/enc")
        g.attrs["units"] = np.int64(64)
        d = g.create_dataset("w", data=np.arange(6.0).reshape(2, 3))
        d.attrs["scale"] = 0.5
        d.attrs["names"] = ["a", "b"]
        f["link"] = h5py.SoftLink("/model/enc/w")
        f.create_dataset("text", data=np.array([b"ab", b"cd"]))
        f.create_dataset("vlen", data=["héllo", "wörld"], dtype=h5py.string_dtype())
    b = mlconv.load(src)
    assert list(b) == ["model/enc/w", "text", "vlen"]
    assert b.metadata == {"title": "run 7", "epochs": '{"$dtype": "int64", "value": 12}'}
    assert b.group_attrs == {"model/enc": {"units": 64}}
    assert b["model/enc/w"].attrs == {"scale": 0.5, "names": ["a", "b"]}
    assert b["vlen"].numpy().tolist() == ["héllo", "wörld"]
    out = tmp_path / "out.h5"
    mlconv.convert(src, out)
    with h5py.File(out) as f:
        assert f["model/enc"].attrs["units"] == 64
        assert f["model/enc/w"].attrs["scale"] == 0.5
        assert list(f["model/enc/w"].attrs["names"]) == ["a", "b"]
        assert np.array_equal(f["model/enc/w"][()], np.arange(6.0).reshape(2, 3))
        assert f["text"][()].tolist() == [b"ab", b"cd"]
        assert [v.decode() for v in f["vlen"][()]] == ["héllo", "wörld"]
        assert f.attrs["title"] == "run 7"
    # safetensors has no attrs: refused, then dropped with --allow-lossy
    with pytest.raises(LossyConversionError, match="attribute"):
        mlconv.convert(src, tmp_path / "o.safetensors", select=["model"])
    rep = mlconv.convert(src, tmp_path / "o.safetensors", select=["model"], allow_lossy=True)
    assert any("attribute" in w for w in rep.warnings)


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_output_option(tmp_path, compression):
    src = tmp_path / "in.npz"
    np.savez(src, z=np.zeros((500, 100), np.float32), i=np.arange(10))
    out = tmp_path / "out.h5"
    mlconv.convert(src, out, compression=compression)
    with h5py.File(out) as f:
        assert f["z"].compression == compression
        assert np.array_equal(f["z"][()], np.zeros((500, 100), np.float32))
    assert out.stat().st_size < 100_000


@pytest.mark.parametrize("filters", [{"compression": "lzf"}, {"fletcher32": True},
                                     {"compression": "gzip", "shuffle": True,
                                      "fletcher32": True}, {"scaleoffset": 0}])
def test_builtin_filters_read_lazily(tmp_path, filters):
    src = tmp_path / "f.h5"
    arr = np.arange(30_000, dtype=np.int32).reshape(300, 100)
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=arr, chunks=(50, 100), **filters)
    with mlconv.open(src) as b:
        t = b["x"]
        assert b"".join(bytes(p) for p in t.chunks(20_000)) == arr.tobytes()
        assert np.array_equal(t.numpy(), arr)
    mlconv.convert(src, tmp_path / "o.safetensors")
    assert st_read(tmp_path / "o.safetensors")[1]["x"][2] == arr.tobytes()


def test_streamed_chunks_are_bounded_and_chunk_aligned(tmp_path):
    src = tmp_path / "big.h5"
    arr = np.arange(200_000, dtype=np.float64).reshape(2000, 100)
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=arr, chunks=(64, 100), compression="gzip")
    with mlconv.open(src) as b:
        pieces = [bytes(p) for p in b["x"].chunks(64 * 1024)]
    assert b"".join(pieces) == arr.tobytes()
    assert max(len(p) for p in pieces) <= 64 * 100 * 8 * 2


# --- tables ----------------------------------------------------------------------------

def test_compound_dataset_is_a_table(tmp_path):
    rec = np.array([(1, 2.5, b"ab", (1, 2)), (3, -1.0, b"c", (3, 4))],
                   dtype=[("i", "<i4"), ("f", ">f8"), ("s", "S2"), ("v", "<i2", (2,))])
    src = tmp_path / "t.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("grp/t", data=rec, chunks=(1,))
        f.create_dataset("strs", data=np.array([(1, "é")], dtype=[
            ("k", "i1"), ("name", h5py.string_dtype())]))
    with mlconv.open(src) as b:
        t = b["grp/t"]
        assert t.kind == "table" and t.num_rows == 2
        rows = [r for batch in t.batches(1) for r in batch.to_pylist()]
        assert rows == [{"i": 1, "f": 2.5, "s": b"ab", "v": [1, 2]},
                        {"i": 3, "f": -1.0, "s": b"c", "v": [3, 4]}]
        assert [r for bt in b["strs"].batches(5) for r in bt.to_pylist()] == \
            [{"k": 1, "name": "é"}]
    out = tmp_path / "out.h5"
    mlconv.convert(src, out)
    with h5py.File(out) as f:
        got = f["grp/t"][()]
        assert got.dtype.names == rec.dtype.names
        for name in rec.dtype.names:
            assert np.array_equal(got[name], rec[name])
    with mlconv.open(out) as b:  # the stored Arrow schema restores the exact types
        assert [r for bt in b["grp/t"].batches(10) for r in bt.to_pylist()] == rows


# --- pandas ----------------------------------------------------------------------------

pd = pytest.importorskip("pandas")
pytest.importorskip("tables")


def _frame():
    return pd.DataFrame({
        "a": [1, 2, 3, 4],
        "b": [1.5, np.nan, 3.0, -0.0],
        "s": ["x", None, "zzz", "é"],
        "t": pd.to_datetime(["2020-01-01 00:00", None, "2021-06-01 12:00", "1999-12-31 00:00"]),
        "c": pd.Categorical(["u", "v", None, "u"]),
        "i32": np.array([1, 2, 3, 4], np.int32),
        "flag": [True, False, True, True],
    }, index=pd.Index([10, 20, 30, 40], name="myidx"))


def _as_frame(table):
    import pyarrow as pa

    tab = pa.Table.from_batches(list(table.batches(3)), schema=table.schema)
    index = table.schema.metadata[b"mlconv.pandas_index"].decode()
    df = tab.to_pandas().set_index(index)
    return df.rename_axis(None) if index == "index" else df


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("kind", ["table", "table-data-columns", "fixed", "unnamed-index"])
def test_pandas_files_read_as_pandas_does(tmp_path, kind):
    df = _frame()
    path = tmp_path / "p.h5"
    if kind == "fixed":
        df = df[["a", "b", "i32"]]
        df.to_hdf(path, key="frames/df", format="fixed")
    elif kind == "unnamed-index":
        df = df.reset_index(drop=True)
        df.to_hdf(path, key="df", format="table")
    else:
        df.to_hdf(path, key="df", format="table",
                  data_columns=["a", "s", "c"] if kind != "table" else None)
    key = "frames/df" if kind == "fixed" else "df"
    with mlconv.open(path) as b:
        assert list(b) == [key], b.skipped
        t = b[key]
        assert [c for c, _ in t.columns][1:] == list(df.columns)
        pd.testing.assert_frame_equal(_as_frame(t), pd.read_hdf(path, key))


@pytest.mark.filterwarnings("ignore")
def test_pandas_pickled_attribute_with_code_is_refused(tmp_path):
    path = tmp_path / "p.h5"
    _frame().to_hdf(path, key="df", format="table")
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with h5py.File(path, "a") as f:
        f["df"].attrs["non_index_axes"] = np.bytes_(pickle.dumps([Evil()], protocol=0))
    res = run(path, tmp_path / "o.npy")
    assert res.exit_code == 1 and "non_index_axes" in res.stderr  # an object, not names
    assert not marker.exists()


def test_pickled_objects_are_named_never_built(tmp_path):
    """A class in a pickle becomes an inert Opaque: nothing is imported, called or built,
    whichever opcode asks for it (GLOBAL, STACK_GLOBAL, REDUCE, NEWOBJ, BUILD)."""
    from mlconv.formats.hdf5 import safepickle

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for protocol in range(0, 6):
        got = safepickle.loads(pickle.dumps({"a": [Evil(), pd.offsets.Day(2)], "b": 1},
                                            protocol=protocol))
        assert [type(v) for v in got["a"]] == [safepickle.Opaque] * 2 and got["b"] == 1
        assert got["a"][0].name in ("builtins open", "io open")
        assert "Day" in got["a"][1].name
    assert not marker.exists()
    with pytest.raises(UnsafeInputError, match="malformed"):
        safepickle.loads(b"(lI1\natR.")  # a list called with a tuple


@pytest.mark.filterwarnings("ignore")
def test_pandas_table_with_a_frequency_index_reads(tmp_path):
    """date_range indexes carry a freq that pandas pickles as an object in ``info``: the
    table reads (the freq is not data); a time zone pickled as an object is refused."""
    path = tmp_path / "f.h5"
    df = pd.DataFrame({"a": np.arange(5.0)},
                      index=pd.date_range("2020-01-01", periods=5, freq="D", name="day"))
    df.to_hdf(path, key="df", format="table")
    with mlconv.open(path) as b:
        got = _as_frame(b["df"])
    pd.testing.assert_frame_equal(got, pd.read_hdf(path, "df"), check_freq=False)
    odd = tmp_path / "tz.h5"
    df.index = df.index.tz_localize(datetime.timezone(datetime.timedelta(hours=2)))
    df.to_hdf(odd, key="df", format="table")
    if not isinstance(pd.read_hdf(odd, "df").index.tz, datetime.timezone):
        pytest.skip("this pandas stores the zone by name")
    res = run(odd, tmp_path / "o.parquet")
    assert res.exit_code == 1 and "time zone" in res.stderr


@pytest.mark.filterwarnings("ignore")
def test_pandas_table_to_npz_is_refused_and_to_h5_keeps_values(tmp_path):
    path = tmp_path / "p.h5"
    df = _frame().drop(columns=["s", "c"])
    df.to_hdf(path, key="df", format="table")
    with pytest.raises(LossyConversionError, match="table"):
        mlconv.convert(path, tmp_path / "o.npz")
    out = tmp_path / "o.h5"
    mlconv.convert(path, out)
    with mlconv.open(out) as b:
        pd.testing.assert_frame_equal(_as_frame(b["df"]), df)


# --- links -------------------------------------------------------------------------------

def test_external_links(tmp_path):
    (tmp_path / "sub").mkdir()
    with h5py.File(tmp_path / "target.h5", "w") as f:
        f["data/x"] = np.arange(5)
    with h5py.File(tmp_path / "sub" / "outside.h5", "w") as f:
        f["y"] = np.arange(3)
    src = tmp_path / "main.h5"
    with h5py.File(src, "w") as f:
        f["own"] = np.ones(2)
        f["ext"] = h5py.ExternalLink("target.h5", "/data")
        f["escape"] = h5py.ExternalLink("sub/outside.h5", "/y")
        f["abs"] = h5py.ExternalLink(str(tmp_path / "target.h5"), "/data")
    res = run(src, tmp_path / "o.npz")
    assert res.exit_code == 1 and "external link" in res.stderr and "--allow-external" in res.stderr
    b = mlconv.load(src, allow_external=True)
    assert np.array_equal(b["ext/x"].numpy(), np.arange(5))
    assert "escape" in b.skipped and "abs" in b.skipped  # never outside the folder
    res = run(src, tmp_path / "o.npz", "--allow-external", "--exclude", "escape",
              "--exclude", "abs")
    assert res.exit_code == 0, res.stderr
    assert sorted(np.load(tmp_path / "o.npz").files) == ["ext/x", "own"]


# --- bad input ----------------------------------------------------------------------------

def _good_h5(path):
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(100_000, dtype=np.float64)
    return path


def assert_refused(src, tmp_path):
    return cli_refuses(src, tmp_path, ("safetensors",))


def test_truncated_h5(tmp_path):
    data = _good_h5(tmp_path / "g.h5").read_bytes()
    for cut in (100, 1500, len(data) // 2):
        bad = tmp_path / f"t{cut}.h5"
        bad.write_bytes(data[:cut])
        err = assert_refused(bad, tmp_path)
        assert str(bad) in err


def test_garbage_after_superblock(tmp_path):
    data = bytearray(_good_h5(tmp_path / "g.h5").read_bytes())
    data[96:4096] = os.urandom(4000)
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(bytes(data))
    assert_refused(bad, tmp_path)


def test_dataset_past_end_of_file(tmp_path):
    src = _good_h5(tmp_path / "g.h5")
    with h5py.File(src) as f:
        offset = f["x"].id.get_offset()
    with open(src, "r+b") as fh:
        fh.truncate(offset + 1000)  # the superblock's EOA check may catch it first
    err = assert_refused(src, tmp_path)
    assert "g.h5" in err


def test_contiguous_offset_is_checked_against_the_file_size(tmp_path, monkeypatch):
    # libhdf5 usually notices a short file first; prove mlconv's own check holds too
    src = _good_h5(tmp_path / "g.h5")
    from mlconv.formats import hdf5

    real = os.path.getsize
    monkeypatch.setattr(hdf5.os.path, "getsize",
                        lambda p: real(p) - 4096 if str(p) == str(src) else real(p))
    with pytest.raises(FormatError, match="extends past the end"):
        mlconv.load(src, trusted=True)


HDF5_BAD = [r for r in corpus_files("hdf5") if r["expect"] == "reject"]
HDF5_GOOD = [r for r in corpus_files("hdf5") if r["expect"] == "read"]


@pytest.mark.parametrize("row", corpus_params(HDF5_BAD))
def test_corpus_bad_files(tmp_path, row):
    assert_refused(CORPUS / row["path"], tmp_path)


@pytest.mark.parametrize("row", corpus_params(HDF5_GOOD))
def test_corpus_good_files(row):
    """Listed like the reference; data equal to h5py's, or a clear refusal (plugins,
    external storage, virtual datasets, bombs)."""
    path = CORPUS / row["path"]
    ref = row["reference"]["summary"]
    with mlconv.open(path) as b, h5py.File(path) as f:
        seen = set(b) | set(b.skipped)
        for name in ref.get("datasets", {}):
            if "pandas_type" in b.group_attrs.get(name.rsplit("/", 1)[0], {}):
                continue
            assert name in seen or any(name.startswith(s + "/") for s in seen), name
        for name, entry in b.items():
            try:
                if entry.kind == "table":
                    rows = sum(bt.num_rows for bt in entry.batches(1000))
                    assert rows == entry.num_rows
                    continue
                got = entry.numpy()
            except (UnsupportedError, UnsafeInputError) as e:
                assert any(w in e.message for w in ("filter", "external", "virtual", "bomb"))
                continue
            expect = f[name][()]
            if entry.dtype is DType.bfloat16:
                expect = expect.astype(ml_dtypes.bfloat16)
            if entry.dtype in (DType.string, DType.bytes):
                assert got.shape == np.shape(expect)
            else:
                assert payload(got) == payload(np.asarray(expect).reshape(got.shape))


# --- the crash guard ------------------------------------------------------------------

@pytest.fixture(params=["fork", "spawn"])
def guarded(monkeypatch, request):
    """The guard both ways: a fork of this process, or a fresh interpreter (where other
    threads run). ``guarded.child(code)`` makes the child run ``code`` instead of the probe."""
    monkeypatch.setenv(_hdf5_guard.ENV, "1")
    monkeypatch.setattr(_hdf5_guard, "_passed", set())
    monkeypatch.setattr(isolation, "_alone", lambda: request.param == "fork")
    launched = []
    real_fork, real_spawn = isolation.fork, isolation.spawn
    monkeypatch.setattr(isolation, "fork", lambda *a, **k: launched.append("fork")
                        or real_fork(*a, **k))
    monkeypatch.setattr(isolation, "spawn", lambda *a, **k: launched.append("spawn")
                        or real_spawn(*a, **k))

    def child(code):
        if request.param == "fork":
            monkeypatch.setattr(_hdf5_guard, "probe", lambda *a: exec(code) or 0)
        else:
            monkeypatch.setattr(_hdf5_guard, "_CHILD", code)

    monkeypatch.child, monkeypatch.launched, monkeypatch.mode = child, launched, request.param
    return monkeypatch


def test_guard_turns_a_libhdf5_crash_into_an_error(tmp_path, guarded):
    src = _good_h5(tmp_path / "g.h5")
    guarded.child(f"import os, signal\nos.kill(os.getpid(), signal.{signal.SIGSEGV.name})\n")
    with pytest.raises(FormatError, match="crashed \\(SIGSEGV\\)"):
        mlconv.load(src)
    err = assert_refused(src, tmp_path)
    assert "crashed" in err
    assert np.array_equal(mlconv.load(src, trusted=True)["x"].numpy(),
                          np.arange(100_000, dtype=np.float64))


def test_guard_times_out(tmp_path, guarded):
    src = _good_h5(tmp_path / "g.h5")
    guarded.child("import time\ntime.sleep(30)\n")
    guarded.setattr(_hdf5_guard, "TIMEOUT", 1)
    with pytest.raises(FormatError, match="did not finish"):
        mlconv.load(src)


def test_guard_runs_by_default_and_passes_good_files(tmp_path, guarded):
    src = _good_h5(tmp_path / "g.h5")
    assert mlconv.inspect(src)["entries"][0]["shape"] == [100_000]
    mlconv.inspect(src)  # the verdict is remembered for an unchanged file
    assert guarded.launched == (["fork"] if guarded.mode == "fork" else ["fork", "spawn"])
def test_many_files_one_bad_other_fine(tmp_path):
    good = _good_h5(tmp_path / "g.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(good.read_bytes()[:500])
    with pytest.raises(MlconvError):
        mlconv.convert(bad, tmp_path / "b.npz")
    mlconv.convert(good, tmp_path / "g.npz")
    assert np.load(tmp_path / "g.npz")["x"].shape == (100_000,)


@pytest.mark.parametrize("tag", ["mlconv.dtype", "mlconv_dtype"])
def test_the_dtype_tag_and_its_old_name_are_both_read(tmp_path, tag):
    """One tag rule for HDF5 and Arrow (dtypes.DTYPE_TAG); files from older mlconv say
    mlconv_dtype and must still come back as bfloat16."""
    arr = sample(DType.bfloat16, (3,), seed=2)
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f["w"] = arr.view("<u2")
        f["w"].attrs[tag] = "bfloat16"
    t = mlconv.open(path)["w"]
    assert t.dtype is DType.bfloat16 and "mlconv.dtype" not in t.attrs and not t.attrs
    assert payload(t.numpy()) == payload(arr)
