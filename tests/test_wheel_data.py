"""Proof sweep (issue 17): the test data shipped inside installed wheels (onnx, pyarrow, numpy,
h5py, tables when present). Every file the owning library reads is read by mlconv with the
same names, dtypes, shapes and bytes, or the entry is listed as skipped with a reason; a file
is never refused whole for one member and never ends in a traceback."""

import collections
import importlib.util
import warnings
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pytest

import mlconv
from mlconv.dtypes import from_numpy
from mlconv.errors import MlconvError

from .helpers import payload

pytestmark = pytest.mark.slow

KINDS = {".npy": "numpy", ".npz": "numpy", ".h5": "hdf5", ".hdf5": "hdf5",
         ".parquet": "arrow", ".feather": "arrow", ".arrow": "arrow",
         ".onnx": "onnx", ".pb": "onnx"}
MAX_READ = 64 << 20  # datasets the reference reads whole (larger ones: shape and dtype)


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def wheel_files() -> list[Path]:
    out = []
    for pkg in ("onnx", "pyarrow", "numpy", "h5py", "tables"):
        root = _package_dir(pkg)
        if root is not None:
            out += sorted(p for p in root.rglob("*") if p.suffix in KINDS and p.is_file())
    return out


def same_array(got, ref) -> bool:
    if ref.dtype.kind in "SUO":
        return got.shape == ref.shape and got.tolist() == ref.tolist()
    # same dtype in any byte order; payload() compares the canonical little-endian bytes
    return from_numpy(got.dtype) == from_numpy(ref.dtype) and got.shape == ref.shape and \
        payload(got) == payload(ref)


# --- the owning library's view: {name: array | ("table", rows) | None (can't read)} ------

def ref_numpy(path):
    if path.suffix == ".npy":
        return {path.stem: np.load(path, allow_pickle=False)}
    out = {}
    with np.load(path, allow_pickle=False) as z:
        for name in z.files:
            try:
                out[name] = z[name]
            except ValueError:  # pickled object member: numpy refuses it too
                out[name] = None
    if out and all(v is None for v in out.values()):
        raise ValueError("numpy reads no member of this file")
    return out


def ref_hdf5(path):
    out = {}

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        try:
            if obj.dtype.names is not None:
                out[name] = ("table", obj.shape[0] if obj.shape else 1)
            elif obj.size * obj.dtype.itemsize <= MAX_READ:
                info = h5py.check_string_dtype(obj.dtype)
                text = info is not None and info.encoding == "utf-8"
                out[name] = np.asarray(obj.asstr()[()] if text else obj[()])  # h5py's text view
            else:
                out[name] = ("big", obj.shape)
        except (OSError, TypeError, ValueError, KeyError):
            out[name] = None  # h5py can't read it either (filters, types)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def ref_arrow(path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return {"": pq.read_table(path)}
    import pyarrow.feather as feather

    return {"": feather.read_table(path)}


def ref_onnx(path):
    import onnx
    from onnx import numpy_helper

    if path.suffix == ".pb":
        t = onnx.TensorProto()
        t.ParseFromString(path.read_bytes())
        arr = numpy_helper.to_array(t)  # a Sequence/Optional .pb: mlconv still must not crash
        if tuple(arr.shape) != tuple(t.dims) or t.data_type == 0:
            raise ValueError("not a TensorProto")
        return {t.name or path.stem: arr}
    model = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i, base_dir=str(path.parent))
            for i in model.graph.initializer}


REFERENCE = {"numpy": ref_numpy, "hdf5": ref_hdf5, "arrow": ref_arrow, "onnx": ref_onnx}


# the kinds of member mlconv lists as skipped (issue 17 keeps this list short)
KNOWN_SKIPS = ("external link", "variable-length sequences", "has no mlconv dtype",
               "extended/quad precision", "HDF5 type not supported", "compound dataset")


def compare(path, kind, ref, b, counts, skipped) -> None:
    for name, reason in b.skipped.items():
        assert any(k in reason for k in KNOWN_SKIPS), (path, name, reason)
        skipped[next(k for k in KNOWN_SKIPS if k in reason)] += 1
    if kind == "arrow":
        ((_, table),) = ref.items()
        (entry,) = b.values()
        got = pa.Table.from_batches(list(entry.batches()), schema=entry.schema)
        assert got.replace_schema_metadata(None).equals(
            table.replace_schema_metadata(None)), path
        counts["entries"] += 1
        return
    for name, want in ref.items():
        if want is None:  # the reference can't read it: mlconv lists it or refuses its data
            assert name in b.skipped or name in b, (path, name)
            continue
        if name not in b:
            # pandas/PyTables frames fold their group's datasets into one table entry
            assert name in b.skipped or any(name.startswith(k + "/") for k in b), (path, name)
            continue
        counts["entries"] += 1
        got = b[name]
        if isinstance(want, tuple):
            if want[0] == "table":
                assert got.kind == "table" and got.num_rows == want[1], (path, name)
            else:
                assert tuple(got.shape) == want[1], (path, name)
            continue
        if got.kind == "table" and want.dtype.kind == "O":  # vlen sequences: a list column
            rows = [r for batch in got.batches() for r in batch.column(0).to_pylist()]
            seqs = [want[()]] if want.ndim == 0 else list(want.reshape(-1))
            assert rows == [np.asarray(s).tolist() for s in seqs], (path, name)
            continue
        assert got.kind == "tensor", (path, name)
        assert same_array(got.numpy(), want), (path, name)


def test_wheel_test_data_reads_like_the_owning_library():
    files = wheel_files()
    if not files:
        pytest.skip("no test data in the installed wheels")
    counts, skipped, refused = collections.Counter(), collections.Counter(), []
    for path in files:
        kind = KINDS[path.suffix]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ref = REFERENCE[kind](path)
            except Exception:  # noqa: BLE001 - the owning library refuses: mlconv may too
                counts["reference refuses"] += 1
                try:
                    with mlconv.open(path, trusted=True) as b:
                        list(b.items())
                except MlconvError:
                    pass  # an error, never a traceback
                continue
            counts["files"] += 1
            try:  # trusted: the owning library just read it in this process (no guard child)
                with mlconv.open(path, trusted=True) as b:
                    compare(path, kind, ref, b, counts, skipped)
            except MlconvError as e:
                refused.append(f"{path.name}: {e}")
    print(f"\nwheel data: {dict(counts)}; skipped by reason: {dict(skipped)}")
    assert not refused, "\n".join(refused)
