"""The shared corpus (files written by other projects' tools) behaves as its manifest says."""

import os
import subprocess
import sys

import numpy as np
import pytest

import mlconv
from mlconv.errors import MlconvError

from .conftest import CORPUS, corpus_files, corpus_params
from .helpers import payload

ROWS = [r for r in corpus_files("npy", "safetensors") if r["expect"] != "companion"]
GOOD = [r for r in ROWS if r["expect"] == "read"]
BAD = [r for r in ROWS if r["expect"] == "reject"]


@pytest.mark.filterwarnings("ignore:Reading `.npy` or `.npz` file required additional")
@pytest.mark.parametrize("row", corpus_params(GOOD))
def test_good_files_read_like_the_reference(row):
    path = CORPUS / row["path"]
    summary = row["reference"]["summary"]
    with mlconv.open(path) as b:
        manifest = mlconv.inspect(path)
        if row["format"] == "safetensors":
            assert len(b) == summary["n_tensors"]
            assert b.metadata == (summary["metadata"] or {})
            assert sum(t.nbytes for t in b.values()) == summary["total_data_bytes"]
            for t in b.values():
                t.numpy()  # every dtype the spec names reads, bfloat16/float8 included
        elif summary["kind"] == "npz":
            assert {k: (list(v["shape"])) for k, v in summary["arrays"].items()} == \
                {e["name"]: e["shape"] for e in manifest["entries"]}
            with np.load(path, allow_pickle=False) as ref:
                for name in ref.files:
                    got = b[name].numpy()
                    assert got.dtype == ref[name].dtype
                    assert payload(got) == payload(ref[name])
        else:
            (entry,) = b.values()
            ref = np.load(path, allow_pickle=False)
            if entry.kind == "table":
                rows = [r for batch in entry.batches(1) for r in batch.to_pylist()]
                assert rows == [dict(zip(ref.dtype.names, r.tolist(), strict=True)) for r in ref]
            else:
                assert list(entry.shape) == summary["shape"]
                got = entry.numpy()
                assert got.dtype == ref.dtype and payload(got) == payload(ref)


@pytest.mark.parametrize("row", corpus_params(GOOD))
def test_good_files_convert_to_each_format(tmp_path, row):
    path = CORPUS / row["path"]
    with mlconv.open(path) as b:
        kinds = {e.kind for e in b.values()}
    targets = ["npz", "safetensors", "npy"]
    for fmt in targets:
        dst = tmp_path / f"out.{fmt}"
        try:
            mlconv.convert(path, dst, allow_lossy=True, overwrite=True)
        except MlconvError as e:
            # only structural refusals are acceptable: several entries into npy, tables
            # or text into tensor-only formats
            assert (fmt == "npy" and "npy holds one entry" in str(e)) or "table" in str(e) \
                or kinds == {"table"} or "nothing left" in str(e), e
            assert not dst.exists()
            continue
        assert mlconv.inspect(dst)["format"] == fmt


@pytest.mark.parametrize("row", corpus_params(BAD))
def test_bad_files_are_refused_cleanly(tmp_path, row):
    path = CORPUS / row["path"]
    if "utf8_encodable" in row["reference"].get("summary", {}):
        # numpy-compatible reads may return the raw <U array (MANIFEST: "must"); what
        # matters is that no conversion writes invalid UTF-8 text. No text target yet.
        b = mlconv.load(path)
        assert next(iter(b.values())).dtype.value == "string"
        return
    with pytest.raises(MlconvError) as err, mlconv.open(path) as b:
        for e in b.values():
            e.numpy()
    if "pickle" in row["features"]:
        assert "pickle" in str(err.value)
    dst = tmp_path / "out.safetensors"
    res = subprocess.run([sys.executable, "-m", "mlconv", str(path), str(dst)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("mlconv: error: ")
    assert not os.listdir(tmp_path)
