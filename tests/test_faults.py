"""Faults (issue 11): SIGKILL at random points of ~200 MiB conversions into every writable
format, and concurrent writers into one DST. DST must be absent, or wholly the old or wholly
the new output, never a mix; temp files of killed runs are cleaned by the next run.

Judges are the reference libraries (numpy, h5py, pyarrow, safetensors, onnx), not mlconv.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mlconv.dtypes import DType
from mlconv.formats import all_formats

pytestmark = pytest.mark.slow

ROWS, COLS = 819_200, 64          # float32: 200 MiB
TARGETS = [f.extensions[0].lstrip(".") for f in all_formats()  # every tensor writer
           if f.can_write and f.caps.tensors and DType.float32 in f.caps.dtypes]
SEED = int(os.environ.get("MLCONV_FAULT_SEED", "0")) or random.randrange(1 << 30)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "mlconv", *map(str, args)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """(new: 200 MiB of arange, old: a small file of sevens), both one tensor 'w'."""
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("fault_src")
    new = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS)
    save_file({"w": new}, str(d / "new.safetensors"))
    save_file({"w": np.full((8, COLS), 7, np.float32)}, str(d / "old.safetensors"))
    return d / "new.safetensors", d / "old.safetensors"


def read_w(path, fmt) -> np.ndarray:
    """Tensor 'w' of an output, read by the format's reference library."""
    if fmt == "npy":
        return np.load(path, mmap_mode="r")
    if fmt == "npz":
        with np.load(path) as z:
            return z["w"]
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            return f.get_tensor("w")
    if fmt == "h5":
        import h5py

        with h5py.File(path, "r") as f:
            return f["w"][()]
    if fmt == "gguf":
        from gguf import GGUFReader

        return next(t for t in GGUFReader(str(path)).tensors if t.name == "w").data
    if fmt in ("parquet", "arrow"):
        import pyarrow.feather as feather
        import pyarrow.parquet as pq

        t = pq.read_table(path) if fmt == "parquet" else feather.read_table(path)
        col = t.column("w").combine_chunks()
        flat = col.storage.flatten() if hasattr(col, "storage") else col.flatten()
        return flat.to_numpy().reshape(len(col), -1)
    if fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(path))  # resolves the external data file it names
        return numpy_helper.to_array(m.graph.initializer[0])
    raise AssertionError(fmt)


def assert_old_or_new(dst, fmt):
    """DST holds the old output or the new one, whole, as its reference library reads it."""
    got = read_w(dst, fmt)
    if got.shape == (8, COLS):
        assert np.all(got == 7), "old output damaged"
        return "old"
    assert got.shape == (ROWS, COLS), f"torn output: shape {got.shape}"
    # every row of the new output: first column is row * COLS, and a strided full check
    assert np.array_equal(np.asarray(got[:, 0]), np.arange(ROWS, dtype=np.float32) * COLS)
    sample = np.asarray(got[::997])
    want = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS)[::997]
    assert np.array_equal(sample, want), "torn output: wrong values"
    return "new"


def extra_args(fmt):
    return ["--external-data"] if fmt == "onnx" else []


def data_files(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".data"))


@pytest.mark.parametrize("fmt", TARGETS)
def test_sigkill_leaves_old_or_new_never_a_mix(tmp_path, sources, fmt):
    new, old = sources
    rng = random.Random(SEED + TARGETS.index(fmt))
    dst = tmp_path / f"out.{'h5' if fmt == 'h5' else fmt}"
    subprocess.run(_cli("convert", old, dst, *extra_args(fmt)), check=True,
                   capture_output=True)
    start = time.monotonic()
    subprocess.run(_cli("convert", new, tmp_path / f"full.{fmt}", *extra_args(fmt)),
                   check=True, capture_output=True)
    duration = time.monotonic() - start
    os.unlink(tmp_path / f"full.{fmt}")
    for f in data_files(tmp_path):
        if f.startswith("full."):
            os.unlink(tmp_path / f)
    seen = set()
    for kill_at in (rng.uniform(0.2, 0.6) * duration, rng.uniform(0.6, 1.0) * duration):
        proc = subprocess.Popen(_cli("convert", new, dst, "--force", *extra_args(fmt)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(kill_at)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.add(assert_old_or_new(dst, fmt))
        if fmt == "onnx":  # the model names exactly one data file, which exists
            import onnx

            m = onnx.load(str(dst), load_external_data=False)
            locs = {e.value for t in m.graph.initializer for e in t.external_data
                    if e.key == "location"}
            assert len(locs) == 1 and (tmp_path / locs.pop()).is_file()
    # the next run into the folder removes what the killed runs left
    subprocess.run(_cli("convert", old, tmp_path / "next.npy"), check=True,
                   capture_output=True)
    left = [n for n in os.listdir(tmp_path) if n.endswith(".mlconv-tmp")]
    assert left == [], (f"seed {SEED}", seen, left)


def test_concurrent_writers_one_wins_the_other_fails_cleanly(tmp_path, sources):
    """Two conversions into one absent DST without --force, ONNX with external data."""
    new, old = sources
    for round_ in range(3):
        dst = tmp_path / f"m{round_}.onnx"
        procs = [subprocess.Popen(_cli("convert", src, dst, "--external-data"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for src in (new, old)]
        results = [(p.wait(), p.stderr.read()) for p in procs]
        for p in procs:
            p.stderr.close()
        codes = sorted(code for code, _ in results)
        assert codes == [0, 1], results
        loser = [err for code, err in results if code == 1][0]
        assert "exists" in loser and loser.count("\n") == 1
        assert_old_or_new(dst, "onnx")
        ours = [n for n in data_files(tmp_path) if n.startswith(dst.name + ".")]
        assert len(ours) == 1, ours  # the loser's data file is gone
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".mlconv-tmp")]
