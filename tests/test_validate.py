"""mlconv validate: corpus verdicts, expectation mismatches, output formats, crash isolation."""

import json
import os
import xml.etree.ElementTree as ET

import h5py
import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

import mlconv
from mlconv.cli import cli
from mlconv.formats import ids
from mlconv.formats.hdf5 import guard as _hdf5_guard
from mlconv.schemas import load as load_schema

from .conftest import CORPUS, FIXTURES, corpus_files, corpus_params
from .helpers import st_write

FORMATS = ids()  # the registry: a new format's corpus files are validated too
GOOD = [r for r in corpus_files(*FORMATS) if r["expect"] == "read"]
BAD = [r for r in corpus_files(*FORMATS) if r["expect"] == "reject"]

# words a reason must contain for each bad file: the defect named, not a generic error
DEFECT = {
    "objarr": "pickle", "pickle": "pickle", "ragged": "pickle", "surrogate": "Unicode",
    "abuse_attempt": "header length", "encryption": "encrypted", "checksum": "CRC",
    "tmulti-g": "empty", "notahdf5": "HDF5",
    "clusterfuzz-testcase-parquet-arrow-fuzz-626": "empty",
}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("row", corpus_params(GOOD))
def test_good_files_validate_clean(row):
    report = mlconv.validate(CORPUS / row["path"], deep=True)
    assert report.ok, report.problems


@pytest.mark.parametrize("row", corpus_params(BAD))
def test_bad_files_fail_naming_the_defect(row):
    report = mlconv.validate(CORPUS / row["path"], deep=True)
    assert not report.ok
    reasons = " ".join(p.reason for p in report.problems)
    assert reasons and "Traceback" not in reasons
    for key, word in DEFECT.items():
        if key in row["path"]:
            assert word.lower() in reasons.lower(), reasons


# --- expectations -----------------------------------------------------------------------

@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.safetensors"
    st_write(path, {"encoder/w": np.zeros((4, 768), np.float32),
                    "encoder/b": np.zeros(768, np.float32),
                    "head/w": np.zeros((768, 10), np.float16)}, {"format": "pt", "v": "2"})
    return path


def test_inspect_output_is_a_starting_expectation(tmp_path, model):
    manifest = json.loads(run("inspect", "--json", model).stdout)
    jsonschema.validate(manifest, load_schema("expectations"))
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps(manifest))
    res = run("validate", model, "--schema", expect)
    assert res.exit_code == 0, res.stdout
    assert res.stdout.strip().endswith("1 passed, 0 failed")


@pytest.mark.parametrize("doc,expected", [
    ({"entries": [{"name": "decoder/*"}]}, "decoder/*: required entry missing"),
    ({"entries": [{"name": "encoder/w", "dtype": "bfloat16"}]}, "dtype float32, expected bfloat16"),
    ({"entries": [{"name": "encoder/w", "shape": [-1, 512]}]},
     "shape [4, 768], expected [-1, 512]"),
    ({"entries": [{"name": "head/w", "dtype": ["float32", "bfloat16"]}]},
     "dtype float16, expected float32 or bfloat16"),
    ({"metadata": {"format": "np"}}, "metadata 'format' is 'pt', expected 'np'"),
    ({"metadata_keys": ["license"]}, "metadata key 'license' missing"),
    ({"forbidden": ["*/b"]}, "encoder/b: forbidden entry"),
    ({"max_size": 100}, "more than max_size 100"),
    ({"format": "npz"}, "format is safetensors, expected npz"),
    ({"entries": [{"name": "encoder/*"}], "allow_extra": False},
     "head/w: unexpected entry"),
    ({"entries": [{"name": "encoder/w", "kind": "table"}]}, "is a tensor, expected a table"),
])
def test_each_kind_of_mismatch_is_reported_precisely(model, doc, expected):
    jsonschema.validate(doc, load_schema("expectations"))
    report = mlconv.validate(model, schema=doc)
    assert not report.ok
    lines = [f"{p.entry}: {p.reason}" if p.entry else p.reason for p in report.problems]
    assert any(expected in line for line in lines), lines
    assert all(p.check == "expectation" for p in report.problems)


def test_wildcard_shapes_and_optional_entries_pass(model):
    doc = {"entries": [{"name": "encoder/w", "shape": [-1, 768], "dtype": "float32"},
                       {"name": "encoder/b", "shape": [None]},
                       {"name": "optimizer/*", "optional": True}],
           "metadata": {"format": "pt", "v": None}}
    assert mlconv.validate(model, schema=doc).ok


def test_table_expectations(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"x": np.arange(100), "label": ["a"] * 100}), path)
    ok = {"entries": [{"name": "shard", "kind": "table", "rows": 100,
                       "columns": [{"name": "x", "type": "int64"}, {"name": "label"}]}]}
    assert mlconv.validate(path, schema=ok).ok
    bad = {"entries": [{"name": "shard", "min_rows": 1000,
                        "columns": [{"name": "x", "type": "float32"}, {"name": "y"}]}]}
    reasons = [p.reason for p in mlconv.validate(path, schema=bad).problems]
    assert "100 rows, expected at least 1000" in reasons
    assert "column 'x' has type int64, expected float32" in reasons
    assert "column 'y' missing" in reasons


def test_yaml_expectations_and_bad_expectation_files(tmp_path, model):
    yaml = pytest.importorskip("yaml")
    doc = tmp_path / "e.yaml"
    doc.write_text(yaml.safe_dump({"entries": [{"name": "head/w", "dtype": "float16"}]}))
    assert run("validate", model, "--schema", doc).exit_code == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"entries": [{"nme": "x"}]}')
    res = run("validate", model, "--schema", bad)
    assert res.exit_code == 2 and "/entries/0" in res.stderr
    bad.write_text("{not json")
    assert run("validate", model, "--schema", bad).exit_code == 2


# --- output formats ----------------------------------------------------------------------

@pytest.fixture
def mixed(tmp_path, model):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(model.read_bytes()[:-10])
    return model, broken


def test_many_files_and_globs_exit_1_when_any_fails(tmp_path, mixed):
    res = run("validate", str(tmp_path / "*.safetensors"), tmp_path / "missing.npy")
    assert res.exit_code == 1
    assert "FAIL" in res.stdout and "ok    " in res.stdout and "no such file" in res.stdout
    assert res.stdout.strip().endswith("1 passed, 2 failed")
    assert run("validate", mixed[0]).exit_code == 0
    assert run("validate").exit_code == 2


def test_junit_output_parses(mixed):
    res = run("validate", *mixed, "--format", "junit")
    root = ET.fromstring(res.stdout)
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and failed[0].get("name").endswith("broken.safetensors")
    message = failed[0].find("failure").get("message")
    assert message.startswith("head/w: ") and "lie past its end" in message


def test_github_annotations(mixed):
    res = run("validate", *mixed, "--format", "github")
    lines = [line for line in res.stdout.splitlines() if line.startswith("::")]
    assert lines and all(line.startswith("::error file=") for line in lines)
    assert ",title=mlconv validate::" in lines[0] and "broken.safetensors" in lines[0]
    assert res.exit_code == 1


def test_json_output(mixed):
    res = run("validate", *mixed, "--format", "json")
    data = json.loads(res.stdout)
    assert [d["ok"] for d in data] == [True, False]
    assert data[1]["problems"][0]["reason"]


def test_warnings_do_not_fail(corpus):
    report = mlconv.validate(corpus / "hdf5/good/h5ex_d_blosc.h5", deep=True)
    assert report.ok and any("blosc" in w.reason for w in report.warnings)


# --- HDF5 isolation -------------------------------------------------------------------

def test_libhdf5_crash_fails_that_file_only(tmp_path, monkeypatch):
    import importlib

    v = importlib.import_module("mlconv.validate")  # the module, not the function

    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as f:
        f["x"] = np.arange(4)
    other = FIXTURES / "sample.npz"
    monkeypatch.setenv(_hdf5_guard.ENV, "1")
    monkeypatch.setattr(v, "_CHILD", "import os, signal\nos.kill(os.getpid(), signal.SIGABRT)\n")
    res = run("validate", good, other)
    assert res.exit_code == 1
    assert "libhdf5 crashed (SIGABRT)" in res.stdout
    assert f"ok    {other}" in res.stdout
    monkeypatch.undo()
    assert mlconv.validate(good).ok


def test_hdf5_chunk_outside_file_is_reported(tmp_path, monkeypatch):
    """mlconv's own chunk-bounds check: libhdf5 notices a plainly truncated file first
    (its stored end-of-file), so the file is made to look shorter than the last chunk."""
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(100_000.0), chunks=(10_000,))
    monkeypatch.setenv(_hdf5_guard.ENV, "0")
    with h5py.File(path) as f:
        last = f["x"].id.get_chunk_info(9)
    from mlconv.formats import hdf5

    real = os.path.getsize
    monkeypatch.setattr(hdf5.os.path, "getsize", lambda p: last.byte_offset + 10
                        if str(p) == str(path) else real(p))
    report = mlconv.validate(path, deep=False)
    assert [(p.entry, p.reason) for p in report.problems] == [
        ("x", f"chunk 9 ({last.size} bytes at {last.byte_offset}) lies outside the "
              f"{last.byte_offset + 10}-byte file")]
