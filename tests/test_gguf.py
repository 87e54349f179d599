"""GGUF: read, written and validated like the others; gguf-py (the reference) is the judge."""

import json
import os
import struct

import numpy as np
import pytest
from click.testing import CliRunner

import mlconv
from mlconv.cli import cli
from mlconv.errors import FormatError, LossyConversionError, MlconvError, UnsupportedError

from .conftest import CORPUS, corpus_files, corpus_params
from .helpers import sample, st_read, st_write

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

PLAIN = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
         "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64"}


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def gg_write(path, tensors=(), kvs=None, arch="test"):
    """A GGUF file written by gguf-py: ``tensors`` (name, array, raw GGML type or None)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (kvs or {}).items():
        value(w, key) if callable(value) else w.add_key_value(key, *value)
    for name, arr, raw in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def reference(path) -> tuple[dict, dict]:
    """(key-values, tensors) as gguf-py parses ``path`` (one parse: it is slow on vocabularies).

    Key-values: each one's exact bytes (but general.alignment); tensors: name -> (GGML type
    name, logical numpy shape, raw bytes)."""
    r = gguf.GGUFReader(str(path))
    kvs = {name: b"".join(bytes(p.tobytes()) for p in f.parts) for name, f in r.fields.items()
           if not name.startswith("GGUF.") and name != "general.alignment"}
    return kvs, {t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape)),
                          t.data.tobytes()) for t in r.tensors}


def kv_bytes(path) -> dict:
    return reference(path)[0]


def tensors_of(path) -> dict:
    return reference(path)[1]


def every_kv(w, key):
    """One of each key-value type, arrays of each, nested arrays of strings and numbers."""
    w.add_uint8(key + ".u8", 200)
    w.add_int8(key + ".i8", -5)
    w.add_uint16(key + ".u16", 60000)
    w.add_int16(key + ".i16", -30000)
    w.add_uint32(key + ".u32", 4000000000)
    w.add_int32(key + ".i32", -2000000000)
    w.add_float32(key + ".f32", 0.1)
    w.add_bool(key + ".bool", True)
    w.add_string(key + ".str", "héllo")
    w.add_string(key + ".fake_typed", '{"$dtype": "int32", "value": 3}')
    w.add_uint64(key + ".u64", (1 << 64) - 1)
    w.add_int64(key + ".i64", -(1 << 63))
    w.add_float64(key + ".f64", 1e300)
    w.add_array(key + ".tokens", ["<s>", "</s>", "▁the", "é", ""])
    w.add_array(key + ".scores", [0.0, -1.5, 3.25e-8])
    w.add_array(key + ".types", [1, 2, 3])
    w.add_array(key + ".flags", [True, False])
    w.add_array(key + ".nested", [["a", "b"], ["c"]])
    w.add_array(key + ".nested_int", [[1, 2], [3]])


KVS = {"tok": every_kv}


@pytest.fixture
def ref_file(tmp_path):
    """A gguf-py file: every KV type, plain tensors and Q8_0/Q4_0 blocks from gguf.quants."""
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((8, 64)).astype(np.float32)
    return gg_write(tmp_path / "ref.gguf", [
        ("blk.0.f32", w32, None),
        ("blk.0.f16", w32.astype(np.float16), None),
        ("blk.0.q8", gguf.quants.quantize(w32, Q.Q8_0), Q.Q8_0),
        ("blk.0.q4", gguf.quants.quantize(w32, Q.Q4_0), Q.Q4_0),
        ("blk.0.i32", np.arange(6, dtype=np.int32).reshape(2, 3), None),
    ], KVS)


def test_ggml_type_table_matches_the_reference():
    from mlconv.formats.gguf import GGML
    for code, (name, block, size, _) in GGML.items():
        assert Q(code).name == name
        assert gguf.GGML_QUANT_SIZES[Q(code)] == (block, size), name


def test_registered_and_detected(ref_file, tmp_path):
    assert "gguf" in [f["id"] for f in json.loads(run_cli("formats", "--json").output)]
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(ref_file.read_bytes())
    assert mlconv.inspect(renamed)["format"] == "gguf"


@pytest.mark.parametrize("dtype", list(PLAIN))
@pytest.mark.parametrize("shape", [(3, 5), (7,), (2, 3, 4), (2, 1, 3, 2), (0, 4)])
def test_plain_dtypes_round_trip(tmp_path, dtype, shape):
    """mlconv writes, gguf-py reads the same bytes and type; mlconv reads back identically;
    safetensors -> gguf -> safetensors is byte-exact."""
    arr = sample(mlconv.DType(dtype), shape)
    st = tmp_path / "in.safetensors"
    st_write(st, {"w": arr, "b": arr.reshape(-1)[:1].copy()}, metadata={"format": "pt"})
    out = tmp_path / "out.gguf"
    mlconv.convert(st, out)
    got = tensors_of(out)
    assert got["w"] == (PLAIN[dtype], shape, arr.tobytes())
    with mlconv.open(out) as b:
        assert b["w"].dtype.value == dtype and b["w"].shape == shape
        assert b["w"].numpy().tobytes() == arr.tobytes()
    back = tmp_path / "back.safetensors"
    mlconv.convert(out, back)
    meta, tensors = st_read(back)
    assert st_read(st)[1] == tensors
    assert meta["format"] == "pt"


def test_writer_layout(tmp_path):
    out = tmp_path / "o.gguf"
    mlconv.save({"a": np.ones(3, np.float32), "b": np.zeros((2, 2), np.float16)}, out)
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.alignment"].contents() == 4096
    assert r.fields["GGUF.version"].contents() == 3
    assert all(t.data_offset % 4096 == 0 for t in r.tensors)
    assert os.path.getsize(out) % 4096 == 0


def test_reads_what_gguf_py_writes(ref_file):
    m = mlconv.inspect(ref_file)
    entries = {e["name"]: e for e in m["entries"]}
    assert entries["blk.0.q8"]["attrs"] == {"quantization": "Q8_0", "logical_shape": [8, 64]}
    assert entries["blk.0.q8"]["nbytes"] == 8 * 2 * 34
    assert entries["blk.0.f16"]["dtype"] == "float16" and entries["blk.0.f16"]["shape"] == [8, 64]
    ref = tensors_of(ref_file)
    with mlconv.open(ref_file) as b:
        for name, (_, _, raw) in ref.items():
            assert b[name].numpy().tobytes() == raw
        md = b.metadata
    assert md["general.architecture"] == "test"
    assert md["tok.str"] == "héllo"
    assert json.loads(md["tok.u32"]) == {"$dtype": "uint32", "value": 4000000000}
    assert json.loads(md["tok.tokens"])["value"] == ["<s>", "</s>", "▁the", "é", ""]
    assert json.loads(md["tok.fake_typed"]) == {"$dtype": "string",
                                                "value": '{"$dtype": "int32", "value": 3}'}


def test_gguf_to_gguf_is_exact(ref_file, tmp_path):
    out = tmp_path / "copy.gguf"
    res = run_cli(ref_file, out)
    assert res.exit_code == 0, res.output
    assert reference(out) == reference(ref_file)


@pytest.mark.parametrize("target", ["safetensors", "parquet", "arrow", "h5", "onnx", "npz"])
def test_metadata_survives_other_formats(ref_file, tmp_path, target):
    """Typed KVs (tokenizer arrays, nested arrays, 64-bit ints) come back identical from every
    format that holds file metadata; plain tensors come back byte-exact."""
    mid, back = tmp_path / f"mid.{target}", tmp_path / "back.gguf"
    sel = ["--select", "blk.0.f32", "--select", "blk.0.i32"]
    if target == "npz":  # npz has no file metadata: a named loss
        res = run_cli(ref_file, mid, *sel)
        assert res.exit_code == 1 and "metadata" in res.stderr
        return
    layout = ["--layout", "entries"] if target in ("parquet", "arrow") else []
    res = run_cli(ref_file, mid, *sel, *layout)
    assert res.exit_code == 0, res.output
    res = run_cli(mid, back)
    assert res.exit_code == 0, res.output
    want, got = kv_bytes(ref_file), kv_bytes(back)
    if target == "h5":  # model.metadata_text hands back text that looks like typed JSON
        del want["tok.fake_typed"], got["tok.fake_typed"]  # unmarked (reported to the lead)
    assert got == want
    ref, got = tensors_of(ref_file), tensors_of(back)
    assert got == {k: ref[k] for k in ("blk.0.f32", "blk.0.i32")}


def test_metadata_text_that_does_not_fit_its_type_stays_text(tmp_path):
    """Typed JSON from elsewhere that the GGUF type cannot hold exactly is written as the
    text it is, never rounded or wrapped."""
    md = {"f": '{"$dtype": "float32", "value": 0.1}',
          "ok": '{"$dtype": "float32", "value": 0.5}',
          "big": '{"$dtype": "int8", "value": 300}',
          "mixed": '{"$dtype": "int32", "value": [1, "a"]}',
          "odd": '{"$dtype": "complex64", "value": [1.0, 2.0]}', "plain": "{not json"}
    out = tmp_path / "m.gguf"
    mlconv.save({"w": np.zeros(1, np.float32)}, out, metadata=md)
    r = gguf.GGUFReader(str(out))
    for key in ("f", "big", "mixed", "odd", "plain"):
        assert r.fields[key].types == [gguf.GGUFValueType.STRING]
        assert r.fields[key].contents() == md[key]
    assert r.fields["ok"].types == [gguf.GGUFValueType.FLOAT32]
    assert r.fields["ok"].contents() == 0.5
    with mlconv.open(out) as b:  # GGUF text that looks typed reads back marked as text
        assert b.metadata["plain"] == md["plain"]
        for key in ("f", "big", "mixed", "odd"):
            assert json.loads(b.metadata[key]) == {"$dtype": "string", "value": md[key]}


def test_quantized_into_other_formats_is_a_named_loss(ref_file, tmp_path):
    dst = tmp_path / "x.safetensors"
    with pytest.raises(LossyConversionError, match="q8_0") as err:
        mlconv.convert(ref_file, dst)
    assert err.value.entry == "blk.0.q8"
    res = run_cli(ref_file, dst)
    assert res.exit_code == 1 and "--cast q8_0=float32" in res.stderr
    assert not dst.exists()
    res = run_cli(ref_file, dst, "--allow-lossy")
    assert res.exit_code == 0
    assert "blk.0.q8" not in st_read(dst)[1] and "blk.0.f32" in st_read(dst)[1]


def test_cast_dequantizes_like_the_reference(ref_file, tmp_path):
    dst = tmp_path / "x.safetensors"
    res = run_cli(ref_file, dst, "--cast", "q8_0=float32", "--cast", "Q4_0=float16")
    assert res.exit_code == 0, res.output
    _, got = st_read(dst)
    raw = {t.name: t for t in gguf.GGUFReader(str(ref_file)).tensors}
    q8 = gguf.quants.dequantize(raw["blk.0.q8"].data, Q.Q8_0)
    assert got["blk.0.q8"] == ("F32", (8, 64), q8.astype(np.float32).tobytes())
    q4 = gguf.quants.dequantize(raw["blk.0.q4"].data, Q.Q4_0)
    assert got["blk.0.q4"] == ("F16", (8, 64), q4.astype(np.float16).tobytes())


def test_cast_names_are_checked():
    from mlconv.convert.select import parse_casts
    from mlconv.errors import OptionError
    assert parse_casts(["q4_k=float64"]) == {"q4_k": mlconv.DType.float64}
    with pytest.raises(OptionError, match="decode to a float"):
        parse_casts(["q8_0=int8"])
    with pytest.raises(OptionError):
        parse_casts(["q9_0=float32"])


DEQUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                 "IQ4_NL", "IQ4_XS", "MXFP4", "TQ1_0", "TQ2_0"]


@pytest.mark.parametrize("name", DEQUANT_TYPES)
def test_dequantize_random_blocks(tmp_path, name):
    """Random blocks (every bit pattern: odd scales, inf/nan) decode exactly like
    gguf.quants.dequantize, through a file and a streamed conversion in small chunks."""
    qt = Q[name]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, (6, 3 * size), dtype=np.uint8)
    src = gg_write(tmp_path / "q.gguf", [("w", raw, qt)])
    want = gguf.quants.dequantize(raw, qt)
    with mlconv.open(src) as b:
        t = b["w"]
        assert t.attrs == {"quantization": name, "logical_shape": [6, 3 * block]}
        values = t.source.unpacked(mlconv.DType.float32)
        np.testing.assert_array_equal(values.array(), want)
        streamed = b"".join(bytes(c) for c in values.chunks(size=3 * block * 4))
        assert streamed == want.tobytes()
    dst = tmp_path / "o.npy"
    with np.errstate(all="ignore"):
        mlconv.convert(src, dst, cast={name.lower(): "float64"}, allow_lossy=True)
    np.testing.assert_array_equal(np.load(dst), want.astype(np.float64))


def test_quantized_without_decoder(tmp_path):
    raw = np.random.default_rng(1).integers(0, 256, (2, 66), dtype=np.uint8)
    src = gg_write(tmp_path / "iq.gguf", [("w", raw, Q.IQ2_XXS)])
    res = run_cli(src, tmp_path / "o.safetensors")
    assert res.exit_code == 1 and "iq2_xxs" in res.stderr and "--cast" not in res.stderr
    out = tmp_path / "o.gguf"
    mlconv.convert(src, out)
    assert tensors_of(out) == tensors_of(src)


def test_long_names_and_unheld_shapes_refused(tmp_path):
    ok = "x" * 63
    mlconv.save({ok: np.zeros(1, np.float32)}, tmp_path / "ok.gguf")
    assert list(tensors_of(tmp_path / "ok.gguf")) == [ok]
    long = "blk." + "y" * 60
    with pytest.raises(UnsupportedError, match="63 bytes") as err:
        mlconv.save({long: np.zeros(1, np.float32)}, tmp_path / "long.gguf")
    assert err.value.entry == long
    with pytest.raises(UnsupportedError, match="at most 4 dimensions"):
        mlconv.save({"w": np.zeros((1, 1, 1, 1, 1), np.float32)}, tmp_path / "5d.gguf")
    with pytest.raises(LossyConversionError, match="uint8"):
        mlconv.save({"w": np.zeros(3, np.uint8)}, tmp_path / "u8.gguf")
    assert sorted(os.listdir(tmp_path)) == ["ok.gguf"]


def test_cli_inspect_json_and_validate(ref_file):
    res = run_cli("inspect", "--json", ref_file)
    assert res.exit_code == 0
    m = json.loads(res.output)
    assert m["format"] == "gguf" and len(m["entries"]) == 5
    import jsonschema

    from mlconv.schemas import load as load_schema
    jsonschema.validate(m, load_schema("manifest"))
    text = run_cli("inspect", ref_file).output
    assert "Q8_0" in text and "[8, 64]" in text
    res = run_cli("validate", ref_file)
    assert res.exit_code == 0, res.output


# --- hostile files, built by hand --------------------------------------------------------

def _s(text) -> bytes:
    raw = text if isinstance(text, bytes) else text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv_u32(key, value):
    return _s(key) + struct.pack("<II", 4, value)


def _tinfo(name, dims, gtype=0, offset=0):
    return _s(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims) + \
        struct.pack("<IQ", gtype, offset)


def build(path, kvs=(), infos=(), data=b"", version=3, n_tensors=None, n_kv=None,
          align=32):
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None
                                 else n_tensors, len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % align)
    path.write_bytes(head + data)
    return path


def test_hand_built_file_reads(tmp_path):
    """The builder itself is right: gguf-py and mlconv read its good file alike."""
    src = build(tmp_path / "ok.gguf", [_kv_u32("a.b", 7)],
                [_tinfo("w", [3, 2]), _tinfo("v", [2], 0, 32)], np.arange(6, dtype="<f4")
                .tobytes() + b"\0" * 8 + np.ones(2, "<f4").tobytes())
    assert tensors_of(src)["w"][1] == (2, 3)
    with mlconv.open(src) as b:
        assert b["w"].numpy().tolist() == np.arange(6.0).reshape(2, 3).tolist()
        assert b["v"].numpy().tolist() == [1.0, 1.0]


def _big_endian(p):
    """What gguf-py writes for s390x: a little-endian magic, everything else big-endian."""
    w = gguf.GGUFWriter(str(p), "test", endianess=gguf.GGUFEndian.BIG)
    w.add_tensor("w", np.arange(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return p


HOSTILE = {
    "absurd tensor count": (lambda p: build(p, n_tensors=1 << 60), "tensor count"),
    "absurd kv count": (lambda p: build(p, n_kv=(1 << 64) - 1), "key-value count"),
    "string past EOF": (lambda p: build(p, [struct.pack("<Q", 1 << 40) + b"k"]),
                        "left"),
    "absurd array count": (lambda p: build(p, [_s("a") + struct.pack("<IIQ", 9, 4, 1 << 59)]),
                           "array count"),
    "string array past EOF": (lambda p: build(
        p, [_s("a") + struct.pack("<IIQ", 9, 8, 2) + _s("x") + struct.pack("<Q", 99)]),
        "left"),
    "unknown kv type": (lambda p: build(p, [_s("a") + struct.pack("<I", 13)]),
                        "unknown value type 13"),
    "nested too deep": (lambda p: build(p, [_s("a") + struct.pack("<I", 9) +
                                            struct.pack("<IQ", 9, 1) * 6]), "nested"),
    "duplicate key": (lambda p: build(p, [_kv_u32("a", 1), _kv_u32("a", 2)]), "duplicate"),
    "key not utf-8": (lambda p: build(p, [_kv_u32(b"\xff\xfe", 1)]), "UTF-8"),
    "bad alignment": (lambda p: build(p, [_kv_u32("general.alignment", 24)]), "power-of-two"),
    "offset past EOF": (lambda p: build(p, (), [_tinfo("w", [4], 0, 1 << 20)], b"\0" * 16),
                        "past the end"),
    "truncated data": (lambda p: build(p, (), [_tinfo("w", [64])], b"\0" * 16),
                       "past the end"),
    "overlapping": (lambda p: build(p, (), [_tinfo("w", [16]), _tinfo("v", [16], 0, 32)],
                                    b"\0" * 128), "overlaps"),
    "misaligned": (lambda p: build(p, (), [_tinfo("w", [4], 0, 4)], b"\0" * 64),
                   "not a multiple"),
    "unknown ggml type": (lambda p: build(p, (), [_tinfo("w", [4], 77)], b"\0" * 64),
                          "unknown GGML tensor type 77"),
    "partial block": (lambda p: build(p, (), [_tinfo("w", [30], 8)], b"\0" * 64),
                      "whole 32-element blocks"),
    "huge dims": (lambda p: build(p, (), [_tinfo("w", [1 << 40, 1 << 40])], b"\0" * 64),
                  "64 bits"),
    "too many dims": (lambda p: build(p, (), [_tinfo("w", [1] * 5)], b"\0" * 64),
                      "at most 4"),
    "duplicate tensor": (lambda p: build(p, (), [_tinfo("w", [1]), _tinfo("w", [1], 0, 32)],
                                         b"\0" * 64), "duplicate tensor"),
    "big-endian": (_big_endian, "big-endian"),
    "version 1": (lambda p: build(p, version=1), "version 1"),
    "version 4": (lambda p: build(p, version=4), "version 4"),
    "truncated header": (lambda p: p.write_bytes(b"GGUF\x03\0\0\0" + b"\0" * 12) and p,
                         "truncated"),
    "truncated key-values": (lambda p: build(p, n_kv=2, align=1), "key-value count 2 is absurd"),
    "truncated tensor infos": (lambda p: build(p, [], [_tinfo("w", [4])[:-6]], align=1),
                               "tensor offset needs 8 bytes"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_refused(tmp_path, case):
    make, words = HOSTILE[case]
    src = make(tmp_path / "bad.gguf")
    with pytest.raises(FormatError, match=words):
        with mlconv.open(src) as b:
            for t in b.values():
                t.numpy()
    dst = tmp_path / "out.safetensors"
    res = run_cli(src, dst)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlconv: error: ") and str(src) in lines[0]
    assert not dst.exists()
    report = mlconv.validate(src)
    assert not report.ok and words in report.problems[0].reason


def test_validate_warns_what_llama_cpp_refuses(tmp_path):
    """Sound GGUF that llama.cpp would still refuse: out-of-order data, long names."""
    src = build(tmp_path / "w.gguf", (), [_tinfo("w", [8], 0, 32), _tinfo("v" * 70, [8])],
                b"\0" * 64)
    report = mlconv.validate(src)
    assert report.ok
    reasons = " | ".join(w.reason for w in report.warnings)
    assert "in order" in reasons and "longer than 63" in reasons
    ok = build(tmp_path / "ok.gguf", (), [_tinfo("w", [8]), _tinfo("v", [8], 0, 32)],
               b"\0" * 64)
    assert mlconv.validate(ok).warnings == []


def test_header_caps(tmp_path, monkeypatch):
    from mlconv.formats import gguf as G
    monkeypatch.setattr(G, "MAX_ITEMS", 10)
    src = build(tmp_path / "a.gguf", [_s("a") + struct.pack("<IIQ", 9, 4, 11) + b"\0" * 44])
    with pytest.raises(FormatError, match="elements in all"):
        mlconv.load(src)
    monkeypatch.setattr(G, "MAX_HEADER", 64)
    src = build(tmp_path / "b.gguf", [_kv_u32("k" * 80, 1)])
    with pytest.raises(FormatError, match="cap"):
        mlconv.load(src)


def test_validate_reads_every_block(tmp_path):
    src = gg_write(tmp_path / "q.gguf", [("w", np.zeros((2, 34), np.uint8), Q.Q8_0)])
    assert mlconv.validate(src).ok
    with open(src, "r+b") as f:  # cut the last block: the header now lies
        f.truncate(os.path.getsize(src) - 40)
    report = mlconv.validate(src)
    assert not report.ok and "past the end" in report.problems[0].reason


# --- the shared corpus ---------------------------------------------------------------------

ROWS = corpus_files("gguf")


@pytest.mark.parametrize("row", corpus_params([r for r in ROWS if r["expect"] == "read"]))
def test_corpus_good(tmp_path, row):
    path = CORPUS / row["path"]
    ref = reference(path)
    with mlconv.open(path) as b:
        assert {n: (t.shape, t.numpy().tobytes()) for n, t in b.items()} == \
            {n: (shape, raw) for n, (_, shape, raw) in ref[1].items()}
    out = tmp_path / "copy.gguf"
    mlconv.convert(path, out)
    assert reference(out) == ref
    assert mlconv.validate(path).ok


@pytest.mark.parametrize("row", corpus_params([r for r in ROWS if r["expect"] == "reject"]))
def test_corpus_bad(tmp_path, row):
    path = CORPUS / row["path"]
    with pytest.raises(MlconvError):
        mlconv.load(path)
    res = run_cli(path, tmp_path / "o.safetensors")
    assert res.exit_code == 1 and res.stderr.count("\n") == 1
    assert not os.listdir(tmp_path)
