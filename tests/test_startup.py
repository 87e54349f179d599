"""Start-up: a process imports what its data needs and nothing else (issue 16). Measured in a
fresh interpreter per case, since this test process has imported everything already."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import mlconv

HEAVY = ("ml_dtypes", "h5py", "pyarrow", "onnx", "fsspec", "pandas", "tables", "gguf", "dask",
         # not heavy, but every start paid 30 ms for them: plugin lookup, the guard's tools
         "importlib.metadata", "subprocess", "hashlib", "socket",
         # 5-10 ms together: zipfile brings pathlib and urllib; writing npz never needs it
         "zipfile", "tempfile", "shutil", "difflib")
RUN = ("import json, sys\n"
       "from mlconv.cli.main import main\n"
       "try:\n"
       "    main(sys.argv[1:])\n"
       "except SystemExit as e:\n"
       "    code = e.code\n"
       "else:\n"
       "    code = 0\n"
       "sys.stdout.flush()\n"
       "mods = [m for m in " + repr(HEAVY) + " if m in sys.modules]\n"
       "threads = len(__import__('os').listdir('/proc/self/task'))\n"
       "print(json.dumps({'code': code, 'modules': mods, 'threads': threads}), "
       "file=sys.stderr)\n")


def _report(*args, cache=None) -> dict:
    env = dict(os.environ, MLCONV_HDF5_GUARD="1")
    env.pop("OPENBLAS_NUM_THREADS", None)
    if cache:
        env["MLCONV_CACHE_DIR"] = str(cache)
    res = subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True,
                         text=True, env=env, check=False)
    report = json.loads(res.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), res.stderr
    return report


def _imports(*args, cache=None) -> list[str]:
    return _report(*args, cache=cache)["modules"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("startup")
    x = np.arange(100 * 100, dtype=np.float32).reshape(100, 100)
    np.save(d / "a.npy", x)
    save_file({"x": x, "b": x.astype(ml_dtypes.bfloat16)}, str(d / "a.safetensors"))
    with h5py.File(d / "a.h5", "w") as f:
        f["x"] = x
    for ext in ("parquet", "npz", "gguf"):
        mlconv.save({"x": x}, d / f"a.{ext}")
    return d


@pytest.mark.parametrize("args, allowed", [
    (["inspect", "a.npy"], ()),
    (["inspect", "a.safetensors"], ()),  # a bfloat16 entry is a name, not an array
    (["inspect", "--json", "a.safetensors"], ()),
    (["inspect", "a.h5"], ("h5py", "hashlib", "subprocess")),  # the guard's verdict and child
    (["inspect", "a.parquet"], ("pyarrow", "socket")),
    (["inspect", "a.npz"], ("zipfile", "shutil")),  # reading a zip is zipfile's job
    (["inspect", "a.gguf"], ()),
    (["validate", "a.safetensors"], ()),
    (["a.npy", "o.safetensors", "--force"], ()),
    (["a.h5", "o.safetensors", "--force"], ("h5py", "hashlib", "subprocess")),
    (["a.safetensors", "o.npz", "--force", "--select", "x"], ()),
])
def test_a_command_imports_only_what_its_data_needs(files, tmp_path, args, allowed):
    args = [files / a if a.startswith("a.") else tmp_path / a if a.startswith("o.") else a
            for a in args]
    assert sorted(_imports(*args, cache=tmp_path)) == sorted(allowed)


def test_a_bfloat16_conversion_imports_ml_dtypes(files, tmp_path):
    """The other side: an array of an ml_dtypes dtype is made only where one is needed."""
    assert "ml_dtypes" in _imports(files / "a.safetensors", tmp_path / "o.h5",
                                   "--select", "b", cache=tmp_path)


def test_the_cli_guard_forks_instead_of_starting_an_interpreter(files, tmp_path):
    """A second interpreter pays every import again (about a second): the guard forks."""
    code = ("import sys\n"
            "from mlconv.formats import isolation\n"
            "def no(*a, **k):\n"
            "    raise AssertionError('spawned')\n"
            "isolation.spawn = no\n"
            "from mlconv.cli.main import main\n"
            "main(sys.argv[1:])\n")
    env = dict(os.environ, MLCONV_HDF5_GUARD="1", MLCONV_CACHE_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code, "inspect", str(files / "a.h5")],
                         capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert "[100, 100]" in res.stdout and os.listdir(tmp_path / "hdf5-guard")


def test_the_cli_starts_no_blas_threads(files, tmp_path):
    """numpy, imported for h5py, would start OpenBLAS's thread pool (one thread per core);
    the CLI does no linear algebra, so its process keeps one thread."""
    report = _report(files / "a.safetensors", tmp_path / "o.h5", "--select", "x")
    assert "h5py" in report["modules"] and report["threads"] == 1


def test_the_library_leaves_the_blas_setting_alone(files, tmp_path):
    """Only the CLI owns its process: ``import mlconv`` in a user's program changes nothing."""
    code = ("import os, mlconv\n"
            f"mlconv.convert({str(files / 'a.h5')!r}, {str(tmp_path / 'o.safetensors')!r})\n"
            "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == "None"
