"""Issue 17: read what is readable. One member of a type mlconv can't hold is skipped with
its reason, the rest reads exactly as the reference library reads it."""

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import mlconv
from mlconv.cli.main import cli
from mlconv.errors import LossyConversionError, UnsupportedError

from .helpers import payload


def _mixed_npz(path):
    np.savez(path, a=np.arange(5), obj=np.array([{"x": 1}, None], dtype=object),
             ld=np.ones(2, np.longdouble), b=np.eye(2, dtype=np.float32))


def _quad_h5(path):
    """An HDF5 file with one IEEE binary128 dataset (h5py can't express it) beside others."""
    with h5py.File(path, "w") as f:
        f["ok"] = np.arange(4)
        h5py.h5d.create(f.id, b"quad", _quad_type(), h5py.h5s.create_simple((3,)))


def _quad_type():
    """HDF5's IEEE binary128, which h5py cannot express as a numpy dtype."""
    tid = h5py.h5t.IEEE_F64LE.copy()
    tid.set_size(16)
    tid.set_precision(128)
    tid.set_fields(127, 112, 15, 0, 112)
    tid.set_ebias(16383)
    return tid


def test_npz_pickled_members_are_skipped_long_doubles_held_raw(tmp_path):
    src = tmp_path / "mixed.npz"
    _mixed_npz(src)
    with mlconv.open(src) as b, np.load(src, allow_pickle=False) as ref:
        assert list(b) == ["a", "ld", "b"]
        assert "pickle" in b.skipped["obj"]
        for name in ("a", "b"):
            got = b[name].numpy()
            assert got.dtype == ref[name].dtype and payload(got) == payload(ref[name])
        ld = b["ld"]  # raw bytes, never narrowed; the attrs say what they are
        assert ld.dtype.value == "bytes" and "mlconv_float128" in ld.attrs
        assert ld.numpy().view(np.uint8).tobytes() == ref["ld"].tobytes()


def test_npz_with_nothing_readable_is_refused(corpus):
    # every member pickled: there is nothing to read, so the file is refused (manifest: reject)
    with pytest.raises(mlconv.errors.UnsafeInputError, match="pickle"):
        mlconv.load(corpus / "npy/bad/py2-objarr.npz")


def test_hdf5_quad_dataset_is_skipped_not_corrupt(tmp_path):
    src = tmp_path / "quad.h5"
    _quad_h5(src)
    with mlconv.open(src) as b, h5py.File(src) as ref:
        assert list(b) == ["ok"]
        assert "float128" in b.skipped["quad"]
        assert np.array_equal(b["ok"].numpy(), ref["ok"][()])


@pytest.mark.parametrize("maker,suffix,bad", [(_mixed_npz, "npz", ["obj", "ld"]),
                                              (_quad_h5, "h5", ["quad"])])
def test_converting_skipped_members_is_a_named_loss(tmp_path, maker, suffix, bad):
    src, dst = tmp_path / f"in.{suffix}", tmp_path / "out.parquet"
    maker(src)
    with pytest.raises(LossyConversionError, match=r"exclude=\['NAME'\]") as err:
        mlconv.convert(src, dst)
    assert any(f":{name})" in str(err.value) for name in bad)
    assert not dst.exists()
    args = [str(src), str(dst)] + [a for n in bad for a in ("--exclude", n)]
    res = CliRunner().invoke(cli, ["convert", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with mlconv.open(dst) as b:
        assert sorted(b) == sorted(n for n in ("a", "b", "ok") if n in b)
        assert not set(b) & set(bad)
    report = mlconv.convert(src, tmp_path / "lossy.npz", allow_lossy=True)
    assert all(any(f":{n})" in w for w in report.warnings) for n in bad)


def test_nothing_left_names_what_was_dropped(tmp_path):
    src, dst = tmp_path / "bad.npz", tmp_path / "out.parquet"
    np.savez(src, o=np.array([None], dtype=object), ld=np.ones(2, np.longdouble),
             k=np.ones(2))
    with pytest.raises(UnsupportedError, match=r"nothing left to write as parquet "
                                               r"\(dropped o, ld\)"):
        mlconv.convert(src, dst, allow_lossy=True, exclude=["k"])
    assert not dst.exists()  # never an empty entries table
    with pytest.raises(UnsupportedError, match=r"nothing left .*every entry was excluded"):
        mlconv.convert(src, dst, exclude=["*"])
    assert not dst.exists()


def test_kept_members_convert_exactly(tmp_path):
    src, dst = tmp_path / "mixed.npz", tmp_path / "out.parquet"
    _mixed_npz(src)
    mlconv.convert(src, dst, exclude=["obj", "ld"], options={"layout": "entries"})
    assert pq.read_table(dst).column("name").to_pylist() == ["a", "b"]


# --- attribute types (issue 17; issue 10 item 9) -------------------------------------------

ATTRS = {"n": np.int64(3), "i32": np.int32(7), "f16": np.float16(0.1),
         "u8": np.arange(6, dtype=np.uint8).reshape(2, 3), "c": np.complex64(1 + 2j),
         "s": "text", "fl": np.array([0.5, 1.5]), "b": np.bool_(True),
         "empty": np.zeros(0, np.int16)}


def _attr_h5(path):
    with h5py.File(path, "w") as f:
        for k, v in ATTRS.items():
            f.attrs[k] = v
        f["y"] = np.arange(2.0)  # no attrs: goes where per-entry attrs can't
        d = f.create_dataset("x", data=np.arange(3))
        for k, v in ATTRS.items():
            d.attrs[k] = v


def _same_attrs(a, b):
    for obj in ("/", "x"):
        assert sorted(a[obj].attrs) == sorted(b[obj].attrs)
        for k in a[obj].attrs:
            va, vb = np.asarray(a[obj].attrs[k]), np.asarray(b[obj].attrs[k])
            assert (va.dtype, va.shape) == (vb.dtype, vb.shape), (obj, k)
            assert va.tobytes() == vb.tobytes(), (obj, k)


@pytest.mark.parametrize("via", [None, "parquet", "arrow", "safetensors", "onnx"])
def test_attribute_types_survive(tmp_path, via):
    src, out = tmp_path / "in.h5", tmp_path / "out.h5"
    _attr_h5(src)
    plan = mlconv.plan(src, out)
    assert plan.losses == [] and plan.error is None  # h5 -> h5 loses nothing
    if via is None:
        mlconv.convert(src, out)
    else:  # text-only metadata holds typed JSON; reading it back restores the types
        mid = tmp_path / f"mid.{via}"
        mlconv.convert(src, mid, exclude=["x"] if via in ("safetensors", "onnx") else ())
        mlconv.convert(mid, out)
    with h5py.File(src) as a, h5py.File(out) as b:
        if via in ("safetensors", "onnx"):  # no per-entry attrs there: the root only
            assert {k: str(v) for k, v in a.attrs.items()} == \
                {k: str(v) for k, v in b.attrs.items()}
            assert all(np.asarray(a.attrs[k]).dtype == np.asarray(b.attrs[k]).dtype
                       for k in a.attrs)
        else:
            _same_attrs(a, b)


def test_int64_root_attribute_is_not_text(tmp_path):
    src, out = tmp_path / "in.h5", tmp_path / "out.h5"
    with h5py.File(src, "w") as f:
        f.attrs["n"] = np.int64(3)
        f["x"] = np.arange(2)
    mlconv.convert(src, out)
    with h5py.File(out) as f:
        assert f.attrs["n"] == 3 and f.attrs["n"].dtype == np.int64


def test_plan_reports_attribute_types_it_cannot_keep(tmp_path):
    src = tmp_path / "in.h5"
    with h5py.File(src, "w") as f:
        f.attrs["cmp"] = np.array((1, 2.0), dtype=[("a", "i4"), ("b", "f8")])
        f.attrs["ld"] = np.longdouble(1) / 3
        f["x"] = np.arange(3)
        f["x"].attrs["ok"] = np.int32(1)
    plan = mlconv.plan(src, tmp_path / "out.h5")
    assert len(plan.losses) == 2
    assert any("'cmp'" in x and "compound" in x for x in plan.losses)
    assert any("'ld'" in x and "narrowed" in x for x in plan.losses)


# --- text: string (UTF-8) apart from bytes -----------------------------------------------

def test_onnx_string_tensors_read_as_text(corpus):
    import onnx
    from onnx import numpy_helper

    path = corpus / "onnx/good/node/test_cast_FLOAT_to_STRING/test_data_set_0/output_0.pb"
    proto = onnx.TensorProto()
    proto.ParseFromString(path.read_bytes())
    ref = numpy_helper.to_array(proto)
    with mlconv.open(path) as b:
        t = b["output"]
        assert t.dtype.value == "string" and t.shape == ref.shape
        assert t.numpy().tolist() == ref.tolist()


def _text_h5(path):
    with h5py.File(path, "w") as f:
        f["fixed"] = np.array([b"ab", b"cde", b"f"])  # |S3, ASCII: raw bytes
        f.create_dataset("vlen", data=["héllo", "wörld", "x"], dtype=h5py.string_dtype())
        f.create_dataset("fixed_utf8", data=np.array(["ä".encode(), b"bc", b"d"], "S3")
                         .astype(h5py.string_dtype("utf-8", 3)))
        f["nd"] = np.array([[b"a", b"b"], [b"c", b"d"], [b"e", b"f"]])


def _h5_values(ds):
    return [v.decode() if isinstance(v, bytes) and h5py.check_string_dtype(ds.dtype)
            .encoding == "utf-8" else v for v in ds[()].reshape(-1).tolist()]


@pytest.mark.parametrize("layout", ["rows", "entries"])
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_hdf5_text_to_arrow_tables_and_back(tmp_path, fmt, layout):
    import pyarrow as pa

    src, mid, back = tmp_path / "in.h5", tmp_path / f"mid.{fmt}", tmp_path / "back.h5"
    _text_h5(src)
    with mlconv.open(src) as b:
        assert {k: v.dtype.value for k, v in b.items()} == {
            "fixed": "bytes", "vlen": "string", "fixed_utf8": "string", "nd": "bytes"}
    mlconv.convert(src, mid, options={"layout": layout})
    table = pq.read_table(mid) if fmt == "parquet" else pa.ipc.open_file(mid).read_all()
    if layout == "rows":  # what a pyarrow user sees: string and binary columns
        assert table.schema.field("vlen").type == pa.string()
        assert table.schema.field("fixed").type == pa.binary()
        assert table.column("fixed_utf8").to_pylist() == ["ä", "bc", "d"]
        assert table.column("vlen").to_pylist() == ["héllo", "wörld", "x"]
    mlconv.convert(mid, back)
    with h5py.File(src) as a, h5py.File(back) as c:
        assert sorted(a) == sorted(c)
        for k in a:
            assert _h5_values(a[k]) == _h5_values(c[k]), k
            assert a[k].shape == c[k].shape
        assert c["fixed"].dtype == a["fixed"].dtype  # |S3 stays |S3
        assert h5py.check_string_dtype(c["vlen"].dtype).encoding == "utf-8"


def test_hdf5_fixed_utf8_stays_fixed_h5_to_h5(tmp_path):
    src, out = tmp_path / "in.h5", tmp_path / "out.h5"
    _text_h5(src)
    mlconv.convert(src, out)
    with h5py.File(src) as a, h5py.File(out) as c:
        for k in a:
            assert a[k].dtype == c[k].dtype and a[k][()].tolist() == c[k][()].tolist(), k
        assert h5py.check_string_dtype(c["fixed_utf8"].dtype) == \
            h5py.check_string_dtype(a["fixed_utf8"].dtype)


def test_corpus_vlen_strings_to_parquet(corpus, tmp_path):
    src, dst = corpus / "hdf5/good/vlen_string_s390x.h5", tmp_path / "o.parquet"
    mlconv.convert(src, dst)
    with h5py.File(src) as ref, mlconv.open(dst) as b:
        assert b["DSvariable"].numpy().tolist() == \
            [v.decode() for v in ref["DSvariable"][()].tolist()]


# --- HDF5 enums ---------------------------------------------------------------------------

@pytest.mark.parametrize("via", [None, "parquet"])
def test_hdf5_enum_labels_kept_and_written_back(tmp_path, via):
    src, out = tmp_path / "in.h5", tmp_path / "out.h5"
    labels = {"RED": 0, "GREEN": 1, "BLUE": 42}
    with h5py.File(src, "w") as f:
        f.create_dataset("c", data=np.array([0, 1, 42, 1], "i1"),
                         dtype=h5py.enum_dtype(labels, basetype="i1"))
        f.create_dataset("big", data=np.arange(70000) % 2,
                         dtype=h5py.enum_dtype({"A": 0, "B": 1}, basetype="<u2"))
    with mlconv.open(src) as b:
        assert b["c"].attrs["mlconv_enum"] == labels and b["c"].dtype.value == "int8"
    if via:
        mlconv.convert(src, tmp_path / f"mid.{via}", options={"layout": "entries"})
        mlconv.convert(tmp_path / f"mid.{via}", out)
    else:
        mlconv.convert(src, out)
    with h5py.File(src) as a, h5py.File(out) as c:
        for k in ("c", "big"):
            assert h5py.check_enum_dtype(c[k].dtype) == h5py.check_enum_dtype(a[k].dtype)
            assert c[k].dtype == a[k].dtype and np.array_equal(c[k][()], a[k][()])
            assert "mlconv_enum" not in c[k].attrs


# --- dates and times ----------------------------------------------------------------------

UNITS = ("D", "h", "m", "s", "ms", "us", "ns")
TIMES = {f"{k}{u}": (np.arange(-3, 3) * 1000).astype(f"{k}8[{u}]")
         for k in "Mm" for u in UNITS}
# seconds travel as exact milliseconds (Parquet has no seconds unit); the field names the dtype
ARROW_TIME = {"MD": "date32[day]", "Ms": "timestamp[ms]", "Mms": "timestamp[ms]",
              "Mus": "timestamp[us]", "Mns": "timestamp[ns]", "ms": "duration[ms]",
              "mms": "duration[ms]", "mus": "duration[us]", "mns": "duration[ns]"}


@pytest.mark.parametrize("fmt,layout", [("parquet", "rows"), ("parquet", "entries"),
                                         ("arrow", "rows"), ("arrow", "entries"), ("h5", None)])
def test_datetime_and_timedelta_every_unit(tmp_path, fmt, layout):
    import pyarrow as pa

    src, mid, back = tmp_path / "t.npz", tmp_path / f"mid.{fmt}", tmp_path / "back.npz"
    np.savez(src, **TIMES)
    with mlconv.open(src) as b:
        assert {k: b[k].dtype.value for k in b} == {k: v.dtype.name for k, v in TIMES.items()}
    mlconv.convert(src, mid, options={"layout": layout})
    if fmt == "arrow" and layout == "rows":  # what a pyarrow user sees
        table = pa.ipc.open_file(mid).read_all()
        for k, typ in ARROW_TIME.items():
            assert str(table.schema.field(k).type) == typ, k
            assert (table.column(k).to_numpy() == TIMES[k]).all(), k  # numpy compares units
    mlconv.convert(mid, back)
    with np.load(back) as z:
        for k, v in TIMES.items():
            assert z[k].dtype == v.dtype and payload(z[k]) == payload(v), k


def test_structured_npz_with_a_date_field(tmp_path):
    # matplotlib's goog.npz: a record array whose first field is datetime64[D]
    rec = np.array([(np.datetime64("2004-08-19") + i, 100.0 + i, 22351900 + i)
                    for i in range(4)],
                   dtype=[("date", "<M8[D]"), ("close", "<f8"), ("volume", "<i8")])
    src, dst, back = tmp_path / "goog.npz", tmp_path / "goog.parquet", tmp_path / "g.npy"
    np.savez(src, price_data=rec)
    with mlconv.open(src) as b:
        assert b["price_data"].kind == "table" and not b.skipped
    mlconv.convert(src, dst)
    t = pq.read_table(dst)
    assert str(t.schema.field("date").type) == "date32[day]"
    assert t.column("date").to_numpy().astype("M8[D]").tolist() == rec["date"].tolist()
    mlconv.convert(dst, back)
    got = np.load(back)
    assert got.dtype == rec.dtype and got.tobytes() == rec.tobytes()


def test_times_into_formats_without_them_are_a_named_loss(tmp_path):
    src = tmp_path / "t.npz"
    np.savez(src, t=TIMES["Ms"])
    with pytest.raises(LossyConversionError, match=r"datetime64\[s\].*exclude=\[.NAME.\]"):
        mlconv.convert(src, tmp_path / "o.safetensors")
    mlconv.convert(src, tmp_path / "o.safetensors", cast=["datetime64[s]=int64"])
    with mlconv.open(tmp_path / "o.safetensors") as b:
        assert b["t"].numpy().tolist() == TIMES["Ms"].astype("i8").tolist()


# --- ragged: HDF5 variable-length sequences <-> Arrow list columns -------------------------

def _vlen_rows(ds):
    return [np.asarray(v).tolist() for v in ([ds[()]] if ds.shape == () else ds[()])]


def test_corpus_vlen_sequences_read_and_write_back(corpus, tmp_path):
    src, out = corpus / "hdf5/good/tvldtypes1.h5", tmp_path / "out.h5"
    with mlconv.open(src) as b, h5py.File(src) as ref:
        assert not b.skipped and sorted(b) == sorted(ref)
        for name, t in b.items():
            assert t.kind == "table" and str(t.schema.field(0).type).startswith("list<")
            rows = [r for batch in t.batches(2) for r in batch.column(0).to_pylist()]
            assert rows == _vlen_rows(ref[name])
    mlconv.convert(src, out)  # HDF5 vlen on write: same types, shapes and values
    with h5py.File(src) as a, h5py.File(out) as c:
        for k in a:
            assert (c[k].dtype, c[k].shape) == (a[k].dtype, a[k].shape), k
            assert h5py.check_vlen_dtype(c[k].dtype) == h5py.check_vlen_dtype(a[k].dtype)
            assert _vlen_rows(c[k]) == _vlen_rows(a[k]), k


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_vlen_to_list_columns_and_back(tmp_path, fmt):
    import pyarrow as pa

    src, mid, out = tmp_path / "in.h5", tmp_path / f"mid.{fmt}", tmp_path / "out.h5"
    seqs = [np.arange(i, dtype=np.int16) for i in (0, 3, 1, 5)]
    with h5py.File(src, "w") as f:
        ds = f.create_dataset("seq", shape=(4,), dtype=h5py.vlen_dtype(np.int16))
        for i, s in enumerate(seqs):
            ds[i] = s
    mlconv.convert(src, mid)
    table = pq.read_table(mid) if fmt == "parquet" else pa.ipc.open_file(mid).read_all()
    assert table.schema.field("seq").type == pa.list_(pa.int16())
    assert table.column("seq").to_pylist() == [s.tolist() for s in seqs]
    mlconv.convert(mid, out)
    with h5py.File(out) as f:
        (name,) = list(f)
        assert h5py.check_vlen_dtype(f[name].dtype) == np.dtype(np.int16)
        assert _vlen_rows(f[name]) == [s.tolist() for s in seqs]


def test_compound_with_a_vlen_field_reads_as_a_table(tmp_path):
    src, mid, out = tmp_path / "in.h5", tmp_path / "mid.parquet", tmp_path / "out.h5"
    dt = np.dtype([("id", "<i4"), ("seq", h5py.vlen_dtype(np.float64))])
    rec = np.empty(3, dt)
    rec["id"] = [1, 2, 3]
    rec["seq"] = [np.array([1.0]), np.array([]), np.array([2.0, 3.0])]
    with h5py.File(src, "w") as f:
        f["t"] = rec
    with mlconv.open(src) as b:
        assert not b.skipped
        assert [r for batch in b["t"].batches() for r in batch.to_pylist()] == [
            {"id": 1, "seq": [1.0]}, {"id": 2, "seq": []}, {"id": 3, "seq": [2.0, 3.0]}]
    mlconv.convert(src, mid)
    mlconv.convert(mid, out)
    with h5py.File(out) as f:
        got = f["mid"][()]
        assert got["id"].tolist() == [1, 2, 3]
        assert [s.tolist() for s in got["seq"]] == [[1.0], [], [2.0, 3.0]]


def test_ragged_into_fixed_shape_formats_is_a_named_loss(corpus, tmp_path):
    with pytest.raises(LossyConversionError, match=r"list<item: int32>.*exclude=\[.NAME.\]"):
        mlconv.convert(corpus / "hdf5/good/tvldtypes1.h5", tmp_path / "o.npz")
    assert not (tmp_path / "o.npz").exists()


def test_pad_turns_ragged_into_a_fixed_shape_tensor(corpus, tmp_path):
    src, dst = corpus / "hdf5/good/tvldtypes1.h5", tmp_path / "o.npz"
    res = CliRunner().invoke(cli, ["convert", str(src), str(dst)], catch_exceptions=False)
    assert res.exit_code == 1 and "--pad VALUE" in res.output
    res = CliRunner().invoke(cli, ["convert", str(src), str(dst), "--pad", "-1"],
                             catch_exceptions=False)
    assert res.exit_code == 0 and "padded with -1" in res.output  # it says so
    with np.load(dst) as z, h5py.File(src) as ref:
        for name in ref:
            rows = _vlen_rows(ref[name])
            width = max(len(r) for r in rows)
            want = np.array([r + [-1] * (width - len(r)) for r in rows],
                            dtype=h5py.check_vlen_dtype(ref[name].dtype))
            got = z[f"{name}/{name}"]
            assert got.dtype == want.dtype and np.array_equal(got, want), name
    res = CliRunner().invoke(cli, ["convert", str(src), str(dst), "--pad", "0.5", "--force"],
                             catch_exceptions=False)
    assert res.exit_code == 1 and "not a int32 value" in res.output


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_an_empty_entries_table_is_never_written(tmp_path, fmt):
    src, dst = tmp_path / "empty.npz", tmp_path / f"o.{fmt}"
    np.savez(src)
    with pytest.raises(UnsupportedError, match="no entries"):
        mlconv.convert(src, dst)
    assert not dst.exists()


# --- extended precision: raw bytes, decoded only by --cast float128=... (issue 17) --------

def _quad_bytes(values) -> bytes:
    """IEEE binary128 encodings: float64 values (exact), or (float64, extra low bits)."""
    import struct

    out = b""
    for v in values:
        x, extra = v if isinstance(v, tuple) else (v, 0)
        bits = struct.unpack("<Q", struct.pack("<d", x))[0]
        sign, exp, frac = bits >> 63, (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
        exp128 = 0x7FFF if exp == 0x7FF else (exp - 1023 + 16383 if exp else 0)
        out += ((sign << 127) | (exp128 << 112) | (frac << 60) | extra).to_bytes(16, "little")
    return out


def _written_quad_h5(path, values):
    with h5py.File(path, "w") as f:
        f["ok"] = np.arange(3)
        tid = _quad_type()
        space = h5py.h5s.create_simple((len(values),))
        dset = h5py.h5d.create(f.id, b"quad", tid, space)
        buf = np.frombuffer(_quad_bytes(values), dtype="V16").copy()
        dset.write(h5py.h5s.ALL, h5py.h5s.ALL, buf, mtype=tid)


def test_hdf5_quad_reads_raw_and_casts_exactly(tmp_path):
    src = tmp_path / "q.h5"
    # (1.0, 256) is 1 + 2**-104: rounds to 1.0; below, 1 + 2**-53 + 2**-112 is a tie broken
    # by its lowest bit, so it must round up to the next float64
    values = [1.5, -0.1, 1e300, float("inf"), 0.0, (1.0, 1 << 8)]
    _written_quad_h5(src, values)
    with mlconv.open(src) as b:
        assert b["quad"].numpy().view(np.uint8).tobytes() == _quad_bytes(values)
    dst = tmp_path / "q.safetensors"
    with pytest.raises(LossyConversionError, match=r"float128"):
        mlconv.convert(src, dst)
    res = CliRunner().invoke(cli, [str(src), str(dst)], catch_exceptions=False)
    assert res.exit_code == 1 and "--cast float128=float64" in res.stderr
    mlconv.convert(src, dst, cast=["float128=float64"])
    with mlconv.open(dst) as b:
        got = b["quad"].numpy()
    assert got.dtype == np.float64
    assert got.tolist() == [1.5, -0.1, 1e300, float("inf"), 0.0, 1.0]
    assert np.nextafter(1.0, 2.0) == mlconv.dtypes.decode_extended(
        np.frombuffer(_quad_bytes([(1.0, (1 << 59) + 1)]), np.uint8),
        mlconv.dtypes.extended_layout(16, 127, (112, 15), (0, 112), 16383, True))[0]


def test_long_double_npy_casts_like_numpy(tmp_path):
    if np.finfo(np.longdouble).nmant not in (63, 112):
        pytest.skip("this platform's long double is not extended precision")
    src = tmp_path / "ld.npy"
    ref = np.array([1 / np.longdouble(3), -2.5, 1e-310, np.longdouble(2) ** 2000],
                   np.longdouble)
    np.save(src, ref)
    with mlconv.open(src) as b:
        assert b["ld"].attrs["mlconv_float128"]["size"] == ref.itemsize
    dst = tmp_path / "ld.npz"
    res = CliRunner().invoke(cli, [str(src), str(dst), "--cast", "float128=float64"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with np.errstate(over="ignore"):
        want = ref.astype(np.float64)
    assert np.load(dst)["ld"].tolist() == want.tolist()
    res = CliRunner().invoke(cli, [str(src), str(tmp_path / "x.npz"), "--allow-lossy"],
                             catch_exceptions=False)
    assert res.exit_code == 1 and "nothing left" in res.stderr  # dropped, never narrowed
