"""pandas HDF tables -> Parquet, the fast path (issue 16): stored chunks read as records,
text decoded by Arrow, row groups written while the next batch decodes. Judged by
pandas' read_hdf (values) and by pyarrow writing alone (bytes)."""

import os
import threading

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mlconv
from mlconv.formats import parquet
from mlconv.formats.hdf5 import pandas as pandas_hdf

from .helpers import cli_refuses

pd = pytest.importorskip("pandas")
pytest.importorskip("tables")

pytestmark = pytest.mark.filterwarnings("ignore")

N = 6000


def _frame(n=N, index="integer"):
    rng = np.random.default_rng(7)
    words = np.array(["alpha", "é", "", "nan", "a b ", "x\x00y", "日本"], dtype=object)
    s = words[rng.integers(0, len(words), n)]
    s[rng.integers(0, n, n // 10)] = None
    t = pd.Series(pd.to_datetime("2020-01-01") + pd.to_timedelta(rng.integers(0, 10**6, n),
                                                                  unit="s"))
    t[rng.integers(0, n, n // 10)] = pd.NaT
    df = pd.DataFrame({
        "i64": rng.integers(-(1 << 40), 1 << 40, n), "f64": rng.standard_normal(n),
        "f32": rng.standard_normal(n).astype(np.float32),
        "u16": rng.integers(0, 1 << 16, n).astype(np.uint16),
        "i8": rng.integers(-100, 100, n).astype(np.int8),
        "flag": rng.integers(0, 2, n).astype(bool), "s": s,
        "ascii": np.array(["low", "mid", "high"], dtype=object)[rng.integers(0, 3, n)],
        "t": t.to_numpy(), "tz": t.dt.tz_localize("UTC").dt.tz_convert("Europe/Paris").array,
        "dt": (t - pd.Timestamp("2019-01-01")).to_numpy(),
        "c": pd.Categorical.from_codes(rng.integers(-1, 3, n), ["u", "vé", "w"], ordered=True),
        "ci": pd.Categorical.from_codes(rng.integers(0, 2, n), [10, 20]),
    })
    df.loc[::97, "f64"] = np.nan
    if index == "string":
        df.index = pd.Index([f"r{i}" for i in range(n)], name="key")
    elif index == "datetime":
        # no freq: pandas pickles a freq as a class reference, which mlconv refuses
        df.index = pd.DatetimeIndex(pd.date_range("2000-01-01", periods=n, freq="min"),
                                    freq=None, name="when")
    return df


def _as_frame(table):
    tab = pa.Table.from_batches(list(table.batches(1000)), schema=table.schema)
    return _pandas(tab)


def _pandas(tab):
    index = tab.schema.metadata[b"mlconv.pandas_index"].decode()
    df = tab.to_pandas().set_index(index)
    return df.rename_axis(None) if index == "index" else df


@pytest.fixture
def small_batches(monkeypatch):
    """Many batches and row groups from a few thousand rows (each batch whole chunks)."""
    monkeypatch.setattr(pandas_hdf, "BATCH_BYTES", 4 << 10)
    monkeypatch.setattr(parquet, "GROUP_BYTES", 16 << 10)


@pytest.mark.parametrize("index", ["integer", "string", "datetime"])
@pytest.mark.parametrize("layout", ["blocks", "data-columns"])
def test_every_column_kind_equals_read_hdf(tmp_path, small_batches, index, layout):
    df = _frame(index=index)
    src = tmp_path / "t.h5"
    df.to_hdf(src, key="df", format="table", min_itemsize={"s": 12},
              data_columns=["s", "t", "c", "flag"] if layout == "data-columns" else None)
    want = pd.read_hdf(src, "df")
    with h5py.File(src) as f:  # the fast path is the one under test
        assert pandas_hdf._raw_chunks(f["df/table"]) is not None
        assert f["df/table"].shape[0] > 4 * f["df/table"].chunks[0]
    with mlconv.open(src) as b:
        pd.testing.assert_frame_equal(_as_frame(b["df"]), want)
    out = tmp_path / "t.parquet"
    mlconv.convert(src, out)
    assert pq.ParquetFile(out).metadata.num_row_groups > 4
    # Parquet itself keeps dictionaries of text only: pyarrow reads integer ones as values
    want["ci"] = want["ci"].astype("int64")
    pd.testing.assert_frame_equal(_pandas(pq.read_table(out)), want)


@pytest.mark.parametrize("ascii_only", [True, False])
def test_other_encodings_equal_read_hdf(tmp_path, small_batches, ascii_only):
    """latin-1 text: pure ASCII columns take the Arrow path, others Python's codec."""
    df = pd.DataFrame({"s": ["abc", None, "nan", "zz"] * 500 if ascii_only
                       else ["àbc", None, "ÿ", ""] * 500, "v": np.arange(2000)})
    src = tmp_path / "l.h5"
    df.to_hdf(src, key="df", format="table", encoding="latin-1")
    with mlconv.open(src) as b:
        pd.testing.assert_frame_equal(_as_frame(b["df"]), pd.read_hdf(src, "df"))


def test_text_array_is_numpy_bytes_semantics():
    """Trailing NULs are dropped, inner ones and spaces kept, as numpy (and pandas) read
    fixed-width bytes; nan_rep is null; invalid UTF-8 is an error."""
    values = np.array([b"ab", b"a\x00b", b"", b"nan", b"x  ", b"\xc3\xa9"], dtype="S4")
    got = pandas_hdf._text_array(values, "nan", "UTF-8")
    assert got.type == pa.string()
    assert got.to_pylist() == ["ab", "a\x00b", "", None, "x  ", "é"]
    assert pandas_hdf._text_array(values, None, "utf8").to_pylist()[3] == "nan"
    assert pandas_hdf._text_array(np.zeros(3, "S0"), None, "UTF-8").to_pylist() == [""] * 3
    with pytest.raises(pa.ArrowInvalid):
        pandas_hdf._text_array(np.array([b"ok", b"\xff"], "S2"), None, "UTF-8")


def test_raw_chunks_read_what_h5py_reads(tmp_path):
    """Stored chunks as records: equal to h5py's read for any range, big-endian members
    included; a chunk never written (fill value) goes through h5py; filtered data, vlen
    members or an unusual float are left to h5py entirely."""
    dt = np.dtype([("a", "<i8"), ("b", ">f4", (2,)), ("s", "S5"), ("u", ">u2")])
    rows = np.zeros(1000, dt)
    rows["a"] = np.arange(1000)
    rows["b"] = np.arange(2000).reshape(1000, 2)
    rows["s"] = [b"r%d" % i for i in range(1000)]
    rows["u"] = np.arange(1000) * 7
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("t", shape=(1000,), dtype=dt, chunks=(64,), fillvalue=None)
        ds[:300] = rows[:300]
        ds[500:] = rows[500:]  # chunks 5 and 6 (rows 320..447) are never stored
        f.create_dataset("z", data=rows, chunks=(64,), compression="gzip")
        f.create_dataset("v", shape=(10,), chunks=(5,),
                         dtype=[("a", "i4"), ("s", h5py.string_dtype())])
    with h5py.File(path) as f:
        ds = f["t"]
        read = pandas_hdf._raw_chunks(ds)
        assert read is not None
        for start, stop in [(0, 64), (64, 320), (448, 1000), (960, 1000), (3, 7)]:
            got = read(start, stop)
            assert got.dtype == ds.dtype and got.tobytes() == ds[start:stop].tobytes()
        assert read(0, 1000) is None and read(320, 384) is None  # h5py: the fill value
        assert pandas_hdf._raw_chunks(f["z"]) is None
        assert pandas_hdf._raw_chunks(f["v"]) is None


def test_unwritten_chunk_reads_through_h5py(tmp_path):
    """A PyTables table whose chunk was never stored (hand-made: rows resized in) decodes
    as h5py gives it rather than failing or reading stale bytes."""
    src = tmp_path / "t.h5"
    pd.DataFrame({"v": np.arange(100, dtype=np.int64)}).to_hdf(src, key="df", format="table")
    with h5py.File(src, "a") as f:
        ds = f["df/table"]
        n, c = ds.shape[0], ds.chunks[0]
        ds.resize((n + 3 * c,))  # new chunks are not allocated: h5py reads the fill value
        assert pandas_hdf._raw_chunks(ds)(n, n + c) is None
    with mlconv.open(src) as b:
        got = pa.Table.from_batches(list(b["df"].batches(1 << 20)))
    with h5py.File(src) as f:
        want = f["df/table"][()]
    assert got.num_rows == len(want)
    assert got.column("index").to_numpy().tolist() == want["index"].tolist()


def test_parquet_bytes_equal_a_single_threaded_pyarrow_write(tmp_path, small_batches,
                                                              monkeypatch):
    """Decoding overlaps encoding, yet the file is byte for byte what pyarrow writes alone,
    row group by row group with the same options; and the same without the helper thread,
    and the same again on a second run."""
    src = tmp_path / "t.h5"
    _frame().to_hdf(src, key="df", format="table", min_itemsize={"s": 12})
    out = tmp_path / "a.parquet"
    mlconv.convert(src, out)
    mlconv.convert(src, tmp_path / "again.parquet")
    first = out.read_bytes()
    assert (tmp_path / "again.parquet").read_bytes() == first

    monkeypatch.setattr(parquet, "prefetch", lambda items, depth=2: iter(items))
    mlconv.convert(src, tmp_path / "serial.parquet")
    assert (tmp_path / "serial.parquet").read_bytes() == first

    pf = pq.ParquetFile(out)
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    assert len(sizes) > 4
    with mlconv.open(src) as b:  # the decoded rows, written by pyarrow on this thread
        table = pa.Table.from_batches(list(b["df"].batches(1 << 20)))
    table = table.replace_schema_metadata(pf.schema_arrow.metadata)
    alone = tmp_path / "alone.parquet"
    with pq.ParquetWriter(alone, table.schema, compression="zstd",
                          dictionary_pagesize_limit=parquet.DICTIONARY_BYTES) as w:
        start = 0
        for size in sizes:
            w.write_table(table.slice(start, size), size)
            start += size
    assert alone.read_bytes() == first


def test_decode_error_in_the_helper_thread_is_one_line_and_no_dst(tmp_path, small_batches,
                                                                  monkeypatch):
    """Text that is not UTF-8 in the last rows: found by the decoding thread while earlier
    row groups are already written; the user sees one error line, DST never appears and
    no temporary file is left."""
    src = tmp_path / "bad.h5"
    pd.DataFrame({"s": ["fine"] * N, "v": np.arange(N)}).to_hdf(
        src, key="df", format="table", data_columns=["s"])
    with h5py.File(src, "a") as f:
        ds = f["df/table"]
        row = ds[N - 1]
        row["s"] = b"\xff\xfe"
        ds[N - 1] = row
    threads = []
    real = pandas_hdf._text_array

    def spy(values, nan_rep, encoding):
        try:
            return real(values, nan_rep, encoding)
        except pa.ArrowInvalid:
            threads.append(threading.current_thread().name)
            raise

    monkeypatch.setattr(pandas_hdf, "_text_array", spy)
    err = cli_refuses(src, tmp_path, ["parquet"])
    assert "column 's': cannot decode text" in err and "bad.h5" in err and ":df" in err
    assert threads == ["mlconv-prefetch"]
    assert sorted(os.listdir(tmp_path)) == ["bad.h5"]


def test_numbers_over_their_bytes_as_pa_array_gives_them():
    """Columns viewed as Arrow without pa.array equal what pa.array makes of them; a width
    other than the type's goes through pa.array's checked conversion."""
    cases = [(np.arange(5, dtype=">i4"), pa.int32()), (np.arange(5, dtype="<u2"), pa.uint16()),
             (np.linspace(0, 1, 5).astype(np.float16), pa.float16()),
             (np.arange(5, dtype="i4"), pa.int64()), (np.array([0, 1, 2, 0, 255], "u1"),
                                                      pa.bool_())]
    null = np.array([False, True, False, False, True])
    for values, typ in cases:
        want = pa.array(values.astype(typ.to_pandas_dtype()), typ)
        assert pandas_hdf._numbers(values, typ).equals(want)
        assert pandas_hdf._numbers(values, typ, null).to_pylist() == [
            None if m else v for v, m in zip(want.to_pylist(), null, strict=True)]
    with pytest.raises(pa.ArrowInvalid):
        pandas_hdf._numbers(np.array([1 << 40]), pa.int32())


def test_table_conversion_does_not_import_pandas(tmp_path):
    """pa.array asks pandas whether a column is a Series, importing it (0.6 s): the
    decoding builds its arrays over the bytes instead."""
    import subprocess
    import sys

    src = tmp_path / "t.h5"
    _frame(500).to_hdf(src, key="df", format="table")
    code = ("import sys, mlconv\n"
            f"mlconv.convert({str(src)!r}, {str(tmp_path / 'o.parquet')!r})\n"
            "sys.exit('pandas' in sys.modules)\n")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_values_column_that_is_not_a_name_is_refused_cleanly(tmp_path):
    """values_cols naming a block by a list (unhashable): a clean refusal, not a
    TypeError from looking the block up in the frame's info."""
    import pickle

    src = tmp_path / "odd.h5"
    _frame(50).to_hdf(src, key="df", format="table")
    with h5py.File(src, "a") as f:
        f["df"].attrs["values_cols"] = np.bytes_(pickle.dumps([["values_block_0"]], 0))
    err = cli_refuses(src, tmp_path, ["parquet"])
    assert "values column" in err and "odd.h5:df" in err
