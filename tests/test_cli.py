"""The mlconv command through click's CliRunner (crashes propagate) and real subprocesses."""

import json
import os
import shutil
import subprocess
import sys

import jsonschema
import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

import mlconv
from mlconv.cli import cli
from mlconv.schemas import load as load_schema

from .conftest import FIXTURES
from .helpers import payload, st_read, st_write


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def bf16_file(tmp_path):
    src = tmp_path / "model.safetensors"
    st_write(src, {"w": np.arange(-4, 4, dtype=np.float32).astype(ml_dtypes.bfloat16)})
    return src


def test_bfloat16_to_npy_is_refused_with_the_way_out(tmp_path, bf16_file):
    dst = tmp_path / "w.npy"
    res = run(bf16_file, dst)
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1
    assert "bfloat16" in res.stderr and ":w)" in res.stderr
    assert "--cast bfloat16=float32" in res.stderr
    assert not dst.exists()


@pytest.mark.parametrize("flag", [["--cast", "bfloat16=float32"], ["--allow-lossy"]])
def test_bfloat16_to_npy_with_cast_or_allow_lossy(tmp_path, bf16_file, flag):
    dst = tmp_path / "w.npy"
    res = run(bf16_file, dst, *flag)
    assert res.exit_code == 0, res.stderr
    got = np.load(dst)
    assert got.dtype == np.float32
    assert np.array_equal(got, np.arange(-4, 4, dtype=np.float32))
    if flag == ["--allow-lossy"]:
        assert "mlconv: warning: bfloat16 stored as float32 (values exact)" in res.stderr
    else:
        assert res.stderr == ""


def test_explicit_convert_command_and_json_report(tmp_path, bf16_file):
    dst = tmp_path / "w.safetensors"
    res = run("convert", bf16_file, dst, "--json")
    assert res.exit_code == 0
    report = json.loads(res.stdout)
    assert report["dst_format"] == "safetensors" and report["entries"] == 1
    assert report["bytes_written"] == dst.stat().st_size


def test_existing_dst_needs_force(tmp_path, bf16_file):
    dst = tmp_path / "w.safetensors"
    dst.write_bytes(b"keep me")
    res = run(bf16_file, dst)
    assert res.exit_code == 1 and "--force" in res.stderr
    assert dst.read_bytes() == b"keep me"
    res = run(bf16_file, dst, "--force")
    assert res.exit_code == 0
    assert st_read(dst)[1]["w"][0] == "BF16"


def test_select_exclude_and_metadata_loss(tmp_path):
    src = FIXTURES / "sample.safetensors"
    dst = tmp_path / "enc.npz"
    res = run(src, dst, "--select", "encoder/*", "--cast", "bfloat16=float32")
    assert res.exit_code == 1 and "metadata" in res.stderr and "--allow-lossy" in res.stderr
    res = run(src, dst, "--select", "encoder", "--exclude", "*bias", "--allow-lossy")
    assert res.exit_code == 0, res.stderr
    with np.load(dst) as z:
        assert z.files == ["encoder/layer0/weight"]
    assert "metadata" in res.stderr and "dropped" in res.stderr
    res = run(src, tmp_path / "x.npz", "--select", "nothing*")
    assert res.exit_code == 1 and "no entry matches" in res.stderr


def test_inspect_json_matches_schema_and_headers(tmp_path):
    schema = load_schema("manifest")
    for path in [FIXTURES / "sample.safetensors", FIXTURES / "sample.npz"]:
        res = run("inspect", path, "--json")
        assert res.exit_code == 0
        manifest = json.loads(res.stdout)
        jsonschema.validate(manifest, schema)
        assert manifest == mlconv.inspect(path)
    m = mlconv.inspect(FIXTURES / "sample.safetensors")
    assert m["metadata"] == {"format": "pt", "framework": "mlconv-fixture"}
    e = {x["name"]: x for x in m["entries"]}
    assert e["encoder/layer0/weight"]["dtype"] == "bfloat16"
    assert e["encoder/layer0/weight"]["shape"] == [16, 8]
    assert e["step"]["shape"] == []


def test_inspect_text_is_an_aligned_table():
    res = run("inspect", FIXTURES / "sample.npz")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("name"))
    cols = lines[head].index("dtype")
    for line in lines[head + 1:]:
        assert line[cols - 2:cols] == "  " and line[cols] != " "


def test_formats_listing():
    res = run("formats", "--json")
    rows = json.loads(res.stdout)
    assert {r["id"] for r in rows} >= {"npy", "npz", "safetensors"}
    st = next(r for r in rows if r["id"] == "safetensors")
    assert "bfloat16" in st["capabilities"]["dtypes"] and st["capabilities"]["metadata"]
    assert run("formats").stdout.splitlines()[0].split()[0] == "format"


@pytest.mark.parametrize("args", [
    ["a.npy"],
    ["convert"],
    ["in.npy", "out.npz", "--to", "nosuch"],
    ["in.npy", "out.unknown"],
    ["in.npy", "out.npz", "--cast", "bfloat16"],
    ["in.npy", "out.npz", "--cast", "bfloat16=float99"],
    ["in.npy", "out.safetensors", "--compression", "zstd"],
    ["inspect"],
    ["--nope"],
])
def test_usage_errors_exit_2(tmp_path, monkeypatch, args):
    src = tmp_path / "in.npy"
    np.save(src, np.arange(3))
    monkeypatch.chdir(tmp_path)
    res = run(*args)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.output


def test_debug_shows_the_traceback(tmp_path):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(b"\x05" + b"\0" * 7 + b"{xx}}")
    res = run(src, tmp_path / "o.npz")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    res = run(src, tmp_path / "o.npz", "--debug")
    assert res.exit_code == 1 and "Traceback" in res.stderr


def _commands():
    cmds = [[sys.executable, "-m", "mlconv"]]
    exe = shutil.which("mlconv")
    if exe:
        cmds.append([exe])
    return cmds


@pytest.mark.parametrize("cmd", _commands(), ids=lambda c: os.path.basename(c[-1]))
def test_real_subprocess(tmp_path, cmd):
    dst = tmp_path / "sample.safetensors"
    res = subprocess.run(cmd + [str(FIXTURES / "sample.npz"), str(dst)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    with np.load(FIXTURES / "sample.npz") as ref:
        _, got = st_read(dst)
        for name in ref.files:
            assert got[name][1:] == (ref[name].shape, payload(ref[name]))
    res = subprocess.run(cmd + ["inspect", "--json", str(dst)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and json.loads(res.stdout)["format"] == "safetensors"
    res = subprocess.run(cmd + [str(FIXTURES / "sample.npz"), str(dst)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.startswith("mlconv: error: output exists")
    res = subprocess.run(cmd + ["in.npy"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 2
