"""The conversion graph: planner choices, dry runs, fast path == generic path, progress,
many files at once."""

import os

import h5py
import ml_dtypes
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import mlconv
from mlconv.cli import cli

from .helpers import st_write


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def methods(plan):
    return {s.entry: s.method for s in plan.steps}


@pytest.fixture
def files(tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, np.arange(4096, dtype=np.float32).reshape(64, 64))
    st = tmp_path / "m.safetensors"
    st_write(st, {"w": np.ones((8, 8), ml_dtypes.bfloat16), "b": np.zeros(8, np.float32)},
             {"k": "v"})
    npz = tmp_path / "z.npz"
    np.savez_compressed(npz, a=np.arange(100.0))
    h5 = tmp_path / "c.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("c", data=np.arange(1000), chunks=(100,), compression="gzip")
        f["plain"] = np.arange(1000.0)
    fortran = tmp_path / "f.npy"
    np.save(fortran, np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    return {"npy": npy, "st": st, "npz": npz, "h5": h5, "fortran": fortran, "dir": tmp_path}


def test_fast_edges_are_chosen_where_available(files):
    d = files["dir"]
    assert methods(mlconv.plan(files["npy"], d / "o.safetensors")) == {"x": "zero-copy"}
    assert methods(mlconv.plan(files["st"], d / "o.npy", select=["b"], allow_lossy=True)) \
        == {"b": "zero-copy"}
    assert methods(mlconv.plan(files["h5"], d / "o.safetensors")) == \
        {"c": "streamed", "plain": "zero-copy"}
    plan = mlconv.plan(files["npy"], d / "o.h5")
    assert methods(plan) == {"x": "zero-copy"} and plan.ok and not plan.losses


def test_generic_edges_where_not(files):
    d = files["dir"]
    assert methods(mlconv.plan(files["npz"], d / "o.safetensors")) == {"a": "streamed"}
    fortran = mlconv.plan(files["fortran"], d / "o.safetensors")
    assert methods(fortran) == {"f": "streamed"} and "Fortran" in fortran.steps[0].note
    cast = mlconv.plan(files["st"], d / "o.npz", cast=["bfloat16=float32"], allow_lossy=True)
    assert methods(cast)["w"] == "streamed" and "cast bfloat16 -> float32" in cast.steps[1].note
    entries = mlconv.plan(files["st"], d / "o.parquet", options={"layout": "entries"})
    assert set(methods(entries).values()) == {"in-memory"}
    assert methods(mlconv.plan(files["npy"], d / "o.npz")) == {"x": "zero-copy"}  # stored
    deflated = mlconv.plan(files["npy"], d / "o.npz", compression="deflate")
    assert methods(deflated) == {"x": "streamed"} and deflated.steps[0].note == "deflate"
    generic = mlconv.plan(files["npy"], d / "o.safetensors", kernel_copy=False)
    assert methods(generic) == {"x": "streamed"}
    assert generic.cost > mlconv.plan(files["npy"], d / "o.safetensors").cost


def test_lossy_paths_are_refused_with_the_loss_named(files):
    plan = mlconv.plan(files["st"], files["dir"] / "o.npz")
    assert not plan.ok and "bfloat16" in plan.error and "--cast" in plan.error
    assert any("metadata" in loss for loss in plan.losses)
    res = run("plan", files["st"], files["dir"] / "o.npz")
    assert res.exit_code == 1 and "stops:" in res.stdout
    res = run("plan", files["st"], files["dir"] / "o.npz", "--allow-lossy")
    assert res.exit_code == 0 and "accepted" in res.stdout


def test_format_level_plan():
    p = mlconv.plan("safetensors", "npy")
    assert methods(p)["tensors"] == "zero-copy"
    assert any("bfloat16" in loss for loss in p.losses)
    assert methods(mlconv.plan("safetensors", "npz"))["tensors"] == "zero-copy"  # stored
    assert methods(mlconv.plan("safetensors", "parquet"))["tensors"] != "zero-copy"


def test_dry_run_writes_nothing(files):
    d = files["dir"]
    before = sorted(os.listdir(d))
    res = run(files["npy"], d / "new.safetensors", "--dry-run")
    assert res.exit_code == 0 and "zero-copy" in res.stdout
    plan = mlconv.convert(files["h5"], d / "new.parquet", dry_run=True)
    assert isinstance(plan, mlconv.Plan)
    res = run("convert", files["st"], d / "new.npz", "--dry-run", "--json")
    assert res.exit_code == 1 and '"ok": false' in res.stdout
    assert sorted(os.listdir(d)) == before


@pytest.mark.parametrize("src_key,dst_name", [
    ("npy", "o.safetensors"), ("npy", "o.h5"), ("st", "o.safetensors"), ("h5", "o.npy"),
    ("st", "o.h5"), ("fortran", "o.safetensors"), ("npz", "o.npy"),
])
def test_fast_and_generic_paths_write_identical_files(files, src_key, dst_name):
    d = files["dir"]
    src = files[src_key]
    select = ["plain"] if src_key == "h5" else ()
    outs = []
    for path in ("fast", "generic"):
        dst = d / f"{path}-{dst_name}"
        mlconv.convert(src, dst, kernel_copy=path == "fast", select=select, allow_lossy=True)
        outs.append(dst.read_bytes() if not dst_name.endswith(".h5") else h5py.File(dst))
    if dst_name.endswith(".h5"):
        a, b = outs
        assert list(a) == list(b) and all(np.array_equal(a[k][()], b[k][()]) for k in a)
    else:
        assert outs[0] == outs[1]


def test_progress_only_on_a_terminal(files):
    d = files["dir"]
    res = run(files["npy"], d / "a.safetensors")  # CliRunner's stderr is not a terminal
    assert res.exit_code == 0 and res.stderr == ""
    res = run(files["npy"], d / "b.safetensors", "--progress")
    assert res.exit_code == 0 and "mlconv" in res.stderr and "B" in res.stderr
    res = run(files["npy"], d / "c.safetensors", "--no-progress")
    assert res.stderr == ""
    calls = []
    mlconv.convert(files["npy"], d / "d.safetensors", progress=calls.append)
    assert sum(calls) == os.path.getsize(d / "d.safetensors")  # header and payload


def test_many_files_with_one_bad_file(tmp_path):
    src = tmp_path / "in"
    out = tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for i in range(3):
        with h5py.File(src / f"good{i}.h5", "w") as f:
            f["x"] = np.full(10, i)
    (src / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    res = run("convert", str(src / "*.h5"), out, "--to", "npz", "--jobs", "2")
    assert res.exit_code == 1
    assert res.stdout.strip().endswith("3 converted, 1 failed")
    errors = [line for line in res.stderr.splitlines() if line.startswith("mlconv: error:")]
    assert len(errors) == 1 and "bad.h5" in errors[0]
    for i in range(3):
        assert np.load(out / f"good{i}.npz")["x"].tolist() == [i] * 10
    assert sorted(os.listdir(out)) == ["good0.npz", "good1.npz", "good2.npz"]
    # everything fine: exit 0; existing outputs need --force
    (src / "bad.h5").unlink()
    assert run("convert", str(src / "*.h5"), out, "--to", "npz").exit_code == 1
    res = run("convert", str(src / "*.h5"), out, "--to", "npz", "--force", "--json")
    assert res.exit_code == 0
    assert run("convert", str(src / "*.h5"), out).exit_code == 2  # --to is needed


def test_table_to_parquet_plan_and_progress(tmp_path):
    src = tmp_path / "t.npy"
    np.save(src, np.array([(1, 2.0)] * 10, dtype=[("a", "<i4"), ("b", "<f8")]))
    plan = mlconv.plan(src, tmp_path / "t.parquet")
    assert methods(plan) == {"t": "streamed"} and plan.steps[0].kind == "table"
    calls = []
    mlconv.convert(src, tmp_path / "t.parquet", progress=calls.append)
    assert calls and pq.read_table(tmp_path / "t.parquet").num_rows == 10
