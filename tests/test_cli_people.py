"""Regression tests for what a new user met on the command line (issue 10), item by item."""

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import mlconv
from mlconv.cli import cli
from mlconv.errors import OutputExistsError
from mlconv.formats import all_formats

from .helpers import st_read, st_write

ROOT = Path(__file__).resolve().parents[1]
MLCONV = str(Path(sys.executable).with_name("mlconv"))


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, input=input)


def one_error(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlconv: error: "), res.stderr
    return lines[0]


@pytest.fixture
def mlp(tmp_path):
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    b = numpy_helper.from_array(np.ones(3, np.float32), "B")
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["h"]),
                               helper.make_node("Add", ["h", "B"], ["Y"])], "mlp", [x], [y],
                              [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"author": "me"})
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    return path


# 2. ONNX -> ONNX keeps the graph; elsewhere the graph is a note, not a refusal
@pytest.mark.parametrize("external", [False, True])
def test_onnx_to_onnx_keeps_the_graph(tmp_path, mlp, external):
    dst = tmp_path / "out.onnx"
    res = run(mlp, dst, *(["--external-data"] if external else []))
    assert res.exit_code == 0, res.stderr
    got = onnx.load(dst)
    onnx.checker.check_model(str(dst))
    assert [n.op_type for n in got.graph.node] == ["MatMul", "Add"]
    assert [o.name for o in got.graph.output] == ["Y"]
    assert {p.key: p.value for p in got.metadata_props} == {"author": "me"}
    import onnxruntime as ort
    x = np.ones((1, 4), np.float32)
    out = ort.InferenceSession(str(dst)).run(None, {"X": x})[0]
    assert np.array_equal(out, x @ np.arange(12, dtype=np.float32).reshape(4, 3) + 1)


def test_graph_left_behind_is_said_in_plan_and_report(tmp_path, mlp):
    res = run("plan", mlp, tmp_path / "w.safetensors")
    assert res.exit_code == 0 and "note: graph not carried: 2 nodes" in res.stdout
    assert "nothing is lost" in res.stdout
    res = run(mlp, tmp_path / "w.safetensors")
    assert res.exit_code == 0
    assert "mlconv: note: graph not carried: 2 nodes" in res.stderr
    report = mlconv.convert(mlp, tmp_path / "w2.safetensors")
    assert [n.what for n in report.notes] == ["graph not carried: 2 nodes"]


# 3. many files: like one file each, lists, merges, missing folders, warnings, template
def test_many_files_print_their_warnings_and_take_lists(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    files = []
    for i in range(2):
        files.append(tmp_path / f"m{i}.safetensors")
        st_write(files[-1], {"w": np.ones(3, ml_dtypes.bfloat16)})
    res = run(*files, f"{out}/", "--to", "npz", "--allow-lossy")
    assert res.exit_code == 0, res.stderr
    assert res.stderr.count("mlconv: warning: bfloat16 stored as float32") == 2
    assert res.stdout.strip().endswith("2 converted, 0 failed")
    assert sorted(os.listdir(out)) == ["m0.npz", "m1.npz"]


def test_a_missing_output_folder_is_exit_1_everywhere(tmp_path):
    src = tmp_path / "a.npy"
    np.save(src, np.ones(2))
    assert one_error(run(src, tmp_path / "nope" / "a.npz"))
    res = run(src, tmp_path / "nope" / "a.npz")
    many = run(str(tmp_path / "*.npy"), f"{tmp_path}/nope/", "--to", "npz")
    assert res.exit_code == many.exit_code == 1
    assert "does not exist" in one_error(many)


def test_many_files_honour_template(tmp_path, mlp):
    srcs = tmp_path / "in"
    srcs.mkdir()
    st_write(srcs / "a.safetensors", {"W": np.zeros((4, 3), np.float32)})
    out = tmp_path / "out"
    out.mkdir()
    res = run(str(srcs / "*.safetensors"), out, "--to", "onnx", "--template", mlp)
    assert res.exit_code == 0, res.stderr
    assert [n.op_type for n in onnx.load(out / "a.onnx").graph.node] == ["MatMul", "Add"]


def test_many_npy_files_merge_into_one_file(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("wq", "wk"):
        np.save(ckpt / f"{name}.npy", np.full((2, 2), len(name), np.float32))
    dst = tmp_path / "model.safetensors"
    res = run(str(ckpt / "*.npy"), dst)
    assert res.exit_code == 0, res.stderr
    _, tensors = st_read(dst)
    assert sorted(tensors) == ["wk", "wq"]
    # two inputs with one name: refused, naming both
    np.save(tmp_path / "wq.npy", np.ones(1))
    res = run(ckpt / "wq.npy", tmp_path / "wq.npy", tmp_path / "m2.safetensors")
    assert res.exit_code == 1 and "'wq'" in one_error(res)


def test_many_files_never_hang(tmp_path):
    """The process pool used to deadlock now and then (a fork taken while a thread held a
    lock); workers come from a fork server now. Several runs, each with a deadline."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        st_write(src / f"m{i}.safetensors", {"w": np.ones(64, ml_dtypes.bfloat16)})
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        out.mkdir()
        res = subprocess.run([MLCONV, str(src / "*.safetensors"), str(out), "--to", "npz",
                              "--allow-lossy", "--jobs", "2"], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert len(os.listdir(out)) == 4


# 4. dictionary (categorical) columns into npy
@pytest.fixture
def frame(tmp_path):
    path = tmp_path / "frame.parquet"
    city = pa.array(["a", "b"] * 50).dictionary_encode()
    code = pa.array(list(range(4)) * 25).dictionary_encode()
    pq.write_table(pa.table({"x": np.arange(100), "city": city, "code": code}), path)
    return path


def test_dictionary_columns_into_npy(tmp_path, frame):
    res = run(frame, tmp_path / "a.npy")
    assert res.exit_code == 1
    assert "--exclude frame/city" in one_error(res)
    plan = run("plan", frame, tmp_path / "a.npy")
    assert plan.exit_code == 1 and "stops:" in plan.stdout  # the plan agrees with the run
    assert run(frame, tmp_path / "b.npy", "--exclude", "frame/city").exit_code == 0
    got = np.load(tmp_path / "b.npy")
    assert got.dtype.names == ("x", "code")
    assert got["code"].tolist() == list(range(4)) * 25  # decoded, not indices of another type
    res = run(frame, tmp_path / "c.npy", "--allow-lossy")
    assert res.exit_code == 0 and "frame/city" in res.stderr
    assert np.load(tmp_path / "c.npy").dtype.names == ("x", "code")


# 5. --dry-run and plan agree with the run when DST exists
def test_plan_and_dry_run_agree_with_the_run_about_force(tmp_path):
    src, dst = tmp_path / "a.npy", tmp_path / "a.npz"
    np.save(src, np.ones(2))
    dst.write_bytes(b"old")
    for args in (["plan", src, dst], [src, dst, "--dry-run"]):
        res = run(*args)
        assert res.exit_code == 1 and "--force" in res.stdout
        res = run(*args, "--force")
        assert res.exit_code == 0 and "will be replaced" in res.stdout
    assert dst.read_bytes() == b"old"
    assert run(src, dst).exit_code == 1 and run(src, dst, "--force").exit_code == 0


# 6. validate has the options its hints name
def test_validate_takes_the_options_its_hints_name(tmp_path):
    src = tmp_path / "weights.bin"
    np.save(tmp_path / "w.npy", np.ones(3))
    src.write_bytes((tmp_path / "w.npy").read_bytes()[:0] + b"\0" * 8)
    res = run("validate", tmp_path / "w.npy", "--from", "npy", "--allow-external")
    assert res.exit_code == 0, res.output
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"hello")
    res = run("validate", junk)
    assert res.exit_code == 1 and "--from" in res.stdout
    res = run("validate", junk, "--from", "npy")
    assert res.exit_code == 1 and "--from" not in res.stdout


# 7. --cast applies to table columns that become tensors
def test_cast_applies_to_table_columns(tmp_path):
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": np.linspace(0, 1, 5)}), src)
    dst = tmp_path / "t.safetensors"
    assert run(src, dst, "--cast", "float64=float32").exit_code == 0
    _, tensors = st_read(dst)
    assert tensors["t/x"][0] == "F32"


# 8. errors speak the caller's language
def test_library_errors_name_arguments_cli_errors_name_options(tmp_path):
    src, dst = tmp_path / "a.npy", tmp_path / "a.npz"
    np.save(src, np.ones(2))
    dst.write_bytes(b"x")
    with pytest.raises(OutputExistsError) as e:
        mlconv.convert(src, dst)
    assert "overwrite=True" in str(e.value) and "--force" not in str(e.value)
    assert "use --force" in one_error(run(src, dst))
    st_write(tmp_path / "b.safetensors", {"w": np.ones(2, ml_dtypes.bfloat16)})
    with pytest.raises(mlconv.MlconvError, match=r"cast=\{'bfloat16': 'float32'\}"):
        mlconv.convert(tmp_path / "b.safetensors", tmp_path / "b.npy")


def test_template_mismatch_names_the_template(tmp_path, mlp):
    src = tmp_path / "w.safetensors"
    st_write(src, {"W": np.zeros((5, 5), np.float32)})
    res = run(src, tmp_path / "o.onnx", "--template", mlp)
    line = one_error(res)
    assert str(mlp) in line and "o.onnx" not in line


# 10. the pre-commit hook sees every file mlconv reads
def test_pre_commit_hook_matches_every_extension():
    import re

    hook = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())[0]
    pattern = re.compile(hook["files"])
    for fmt in all_formats():
        for ext in fmt.extensions:
            assert pattern.search(f"dir/file{ext}"), (fmt.id, ext)


# expectation files: the JSON Schema judges; a bad field is a usage error naming it
@pytest.mark.parametrize("doc, pointer", [
    ({"entries": [{"name": "w", "dtype": "bfloat17"}]}, "/entries/0/dtype"),
    ({"allow_extra": "no"}, "/allow_extra"),
    ({"entries": [{"name": "w", "rows": "5000"}]}, "/entries/0/rows"),
    ({"entries": [{"name": "w", "min_rows": "10"}]}, "/entries/0/min_rows"),
    ({"entries": [{"name": "w", "shape": ["x"]}]}, "/entries/0/shape/0"),
    ({"files": {"*.npy": {"max_size": -1}}}, "/files/*.npy/max_size"),
])
def test_malformed_expectations_are_usage_errors(tmp_path, doc, pointer):
    src = tmp_path / "w.npy"
    np.save(src, np.ones(3))
    path = tmp_path / "e.json"
    path.write_text(json.dumps(doc))
    res = run("validate", src, "--schema", path)
    assert res.exit_code == 2
    assert f"expectation {pointer}:" in one_error(res)


def test_shape_wildcards_junit_xml_and_schema_per_glob(tmp_path):
    np.save(tmp_path / "w.npy", np.ones((3, 4), np.float32))
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "t.parquet")
    for wild in (None, "*", -1):
        e = tmp_path / "e.json"
        e.write_text(json.dumps({"entries": [{"name": "w", "shape": [wild, 4]}]}))
        assert run("validate", tmp_path / "w.npy", "--schema", e).exit_code == 0
    npy_doc = tmp_path / "npy.json"
    npy_doc.write_text(json.dumps({"entries": [{"name": "w", "dtype": "float32"}]}))
    files = [tmp_path / "w.npy", tmp_path / "t.parquet"]
    # one schema for every file fails the Parquet file; per glob it passes
    assert run("validate", *files, "--schema", npy_doc).exit_code == 1
    xml = tmp_path / "report.xml"
    res = run("validate", *files, "--schema", f"*.npy={npy_doc}", "--junit-xml", xml)
    assert res.exit_code == 0 and res.stdout.strip().endswith("2 passed, 0 failed")
    assert "<testsuites" in xml.read_text()
    mapping = tmp_path / "all.json"
    mapping.write_text(json.dumps({"files": {
        "*.npy": {"entries": [{"name": "w", "dtype": "float32"}]},
        "*.parquet": {"entries": [{"name": "t", "rows": 3}]}}}))
    res = run("validate", *files, "--schema", mapping)
    assert res.exit_code == 1 and "2 rows, expected 3" in res.stdout


# validate decodes by default; --quick reads headers
def test_validate_decodes_by_default(corpus):
    bad = corpus / "parquet" / "bad" / "datapage_v1-corrupt-checksum.parquet"
    res = run("validate", bad)
    assert res.exit_code == 1 and "CRC" in res.stdout
    assert run("validate", "--quick", bad).exit_code == 0
    assert not mlconv.validate(bad).ok and mlconv.validate(bad, deep=False).ok


def test_encrypted_columns_are_refused_not_aborted(tmp_path):
    """A plaintext footer over encrypted columns: pyarrow aborts (SIGABRT) on the first
    column's metadata without keys; mlconv must refuse first, in a real process."""
    pe = pytest.importorskip("pyarrow.parquet.encryption")
    import base64

    class Kms(pe.KmsClient):
        def __init__(self, config):
            super().__init__()

        def wrap_key(self, key, master_key_identifier):
            return base64.b64encode(key)

        def unwrap_key(self, wrapped, master_key_identifier):
            return base64.b64decode(wrapped)

    config = pe.EncryptionConfiguration(footer_key="f", column_keys={"k": ["x"]},
                                        plaintext_footer=True, double_wrapping=False)
    props = pe.CryptoFactory(Kms).file_encryption_properties(pe.KmsConnectionConfig(),
                                                            config)
    table = pa.table({"x": list(range(10)), "y": [1.0] * 10})
    path = tmp_path / "enc.parquet"
    with pq.ParquetWriter(path, table.schema, encryption_properties=props) as w:
        w.write_table(table)
    for args in (["validate"], ["validate", "--quick"], ["inspect"]):
        res = subprocess.run([MLCONV, *args, str(path)], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 1, (args, res.returncode, res.stderr)
        assert "encrypted" in res.stdout + res.stderr and "keys" in res.stdout + res.stderr


# friction
def test_stdin_and_stdout(tmp_path):
    src = tmp_path / "a.npy"
    np.save(src, np.arange(5, dtype=np.int32))
    res = subprocess.run([MLCONV, "-", "-", "--from", "npy", "--to", "safetensors"],
                         input=src.read_bytes(), capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    (tmp_path / "out.safetensors").write_bytes(res.stdout)
    _, tensors = st_read(tmp_path / "out.safetensors")
    assert tensors["stdin"][2] == np.arange(5, dtype=np.int32).tobytes()
    res = subprocess.run([MLCONV, "-", "x.npz"], input=b"", capture_output=True, timeout=60,
                         cwd=tmp_path)
    assert res.returncode == 2 and b"--from" in res.stderr
    assert not (tmp_path / "-").exists() and not (tmp_path / "x.npz").exists()


def test_select_takes_hugging_face_names(tmp_path):
    src = tmp_path / "m.safetensors"
    names = ["model.layers.0.mlp.weight", "model.layers.0.attn.weight",
             "model.layers.01.mlp.weight", "model.norm.weight"]
    st_write(src, {n: np.ones(2, np.float32) for n in names})
    dst = tmp_path / "l0.safetensors"
    assert run(src, dst, "--select", "model.layers.0").exit_code == 0
    assert sorted(st_read(dst)[1]) == names[1::-1]
    res = run(src, tmp_path / "x.safetensors", "--select", "model.layer.0")
    assert res.exit_code == 1 and "closest: model.layers.0" in one_error(res)


def test_warnings_are_grouped_by_kind(tmp_path):
    src = tmp_path / "ckpt.safetensors"
    st_write(src, {f"l{i}": np.ones(2, ml_dtypes.bfloat16) for i in range(37)})
    res = run(src, tmp_path / "a.npz", "--allow-lossy")
    lines = res.stderr.strip().splitlines()
    assert lines == ["mlconv: warning: bfloat16 stored as float32 (values exact): 37 entries "
                     f"({src}) (-v lists them)"]
    res = run(src, tmp_path / "b.npz", "--allow-lossy", "-v")
    assert len(res.stderr.strip().splitlines()) == 37
    res = run(src, tmp_path / "c.npz", "--allow-lossy", "-q")
    assert res.stderr == "" and res.stdout == ""


def test_inspect_text_shows_attrs_groups_and_skipped(tmp_path):
    import h5py

    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("grp")
        g.attrs["lr"] = 0.5
        d = g.create_dataset("x", data=np.arange(3))
        d.attrs["units"] = "m"
        d.attrs["CLASS"] = b"ARRAY"
        f["empty"] = h5py.Empty("f")
    out = run("inspect", path).stdout
    assert "lr" in out and "0.5" in out and "units" in out
    assert "CLASS" not in out
    assert "skipped" in out and "empty" in out


def test_usage_errors_are_one_line():
    for args in (["a", "b", "--to", "nope"], ["a", "b", "--layout", "x"],
                 ["a", "b", "--row-group-size", "0"], ["a", "b", "--jobs", "0"],
                 ["plan", "a"], ["validate"], ["inspect"], ["--no-such-option"]):
        res = run(*args)
        assert res.exit_code == 2, args
        one_error(res)


def test_shell_completion_script():
    res = subprocess.run([MLCONV], env=dict(os.environ, _MLCONV_COMPLETE="bash_source"),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "_mlconv_completion" in res.stdout


def test_a_newline_in_a_file_name_stays_on_one_line(tmp_path):
    src = tmp_path / "two\nlines.npy"
    np.save(src, np.ones(2))
    res = run(src, tmp_path / "out\nname.npz")
    assert res.exit_code == 0 and len(res.stdout.strip().splitlines()) == 1
    res = run(src, tmp_path / "out\nname.npz")
    one_error(res)
    res = run("validate", src)
    assert res.exit_code == 0 and len(res.stdout.strip().splitlines()) == 2
