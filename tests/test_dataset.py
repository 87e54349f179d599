"""mlconv.dataset and Tensor's numpy-like access, judged by the reference libraries."""

import importlib
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import time

import h5py
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import helper, numpy_helper
from safetensors.numpy import load_file, save_file

import mlconv
from mlconv.errors import FormatError, MlconvError
from mlconv.formats import _guard_cache
from mlconv.formats.hdf5 import guard as _hdf5_guard
from mlconv.lru import ByteLRU

dataset_mod = importlib.import_module("mlconv.dataset")  # mlconv.dataset is the function

N = 300
RNG = np.random.default_rng(7)
X = RNG.integers(0, 256, (N, 5, 4), dtype=np.uint8)
Y = RNG.integers(-1 << 40, 1 << 40, N, dtype=np.int64)
F = RNG.standard_normal((N, 3)).astype(np.float32)
PICK = [0, N - 1, 17, 17, 250, 3, -2]


# --- files written by the reference libraries, with what those libraries read back --------

def _npz(d):
    np.savez(d / "a.npz", x=X, y=Y)
    with np.load(d / "a.npz") as z:
        return d / "a.npz", {"x": z["x"], "y": z["y"]}


def _npz_deflated(d):
    np.savez_compressed(d / "c.npz", x=X, y=Y)
    with np.load(d / "c.npz") as z:
        return d / "c.npz", {"x": z["x"], "y": z["y"]}


def _safetensors(d):
    save_file({"x": X, "y": Y}, str(d / "a.safetensors"))
    return d / "a.safetensors", load_file(str(d / "a.safetensors"))


def _h5(chunks):
    def make(d):
        p = d / f"h{chunks is not None}.h5"
        with h5py.File(p, "w") as f:
            f.create_dataset("g/x", data=X, chunks=chunks,
                             compression="gzip" if chunks else None)
            f.create_dataset("g/y", data=Y.astype(">i8"))  # big-endian: read through h5py
        with h5py.File(p) as f:
            return p, {"g/x": f["g/x"][()], "g/y": f["g/y"][()]}
    return make


def _h5_table(d):
    rec = np.zeros(N, [("y", "<i8"), ("f", "<f4")])
    rec["y"], rec["f"] = Y, F[:, 0]
    with h5py.File(d / "t.h5", "w") as f:
        f.create_dataset("t", data=rec, chunks=(64,))
    with h5py.File(d / "t.h5") as f:
        got = f["t"][()]
    return d / "t.h5", {"y": got["y"], "f": got["f"]}


def _onnx(d):
    graph = helper.make_graph([], "g", [], [], initializer=[
        numpy_helper.from_array(F, "w"), numpy_helper.from_array(Y, "y")])
    onnx.save(helper.make_model(graph), d / "a.onnx")
    m = onnx.load(d / "a.onnx")
    return d / "a.onnx", {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _parquet_rows(d):
    mlconv.save({"x": X, "y": Y}, d / "r.parquet")  # the rows layout: fixed_shape_tensor x
    t = pq.read_table(d / "r.parquet")
    return d / "r.parquet", {"x": t["x"].combine_chunks().to_numpy_ndarray(),
                             "y": t["y"].to_numpy()}


def _parquet_table(d):
    table = pa.table({"y": Y, "f": pa.array(list(F), pa.list_(pa.float32(), 3))})
    pq.write_table(table, d / "t.parquet", row_group_size=64)  # several row groups
    t = pq.read_table(d / "t.parquet")
    return d / "t.parquet", {"y": t["y"].to_numpy(),
                             "f": np.stack(t["f"].to_numpy(zero_copy_only=False))}


def _arrow_table(d):
    table = pa.table({"y": Y, "f": F[:, 1]})
    with pa.ipc.new_file(d / "t.arrow", table.schema) as w:
        for b in table.to_batches(max_chunksize=70):  # several record batches
            w.write_batch(b)
    t = pa.ipc.open_file(d / "t.arrow").read_all()
    return d / "t.arrow", {"y": t["y"].to_numpy(), "f": t["f"].to_numpy()}


def _arrow_rows(d):
    mlconv.save({"x": X, "y": Y}, d / "r.arrow")
    t = pa.ipc.open_file(d / "r.arrow").read_all()
    return d / "r.arrow", {"x": t["x"].combine_chunks().to_numpy_ndarray(),
                           "y": t["y"].to_numpy()}


MAKERS = {"npz": _npz, "npz-deflated": _npz_deflated, "safetensors": _safetensors,
          "h5-contiguous": _h5(None), "h5-chunked": _h5((7, 5, 4)), "h5-table": _h5_table,
          "onnx": _onnx, "parquet-rows": _parquet_rows, "parquet-table": _parquet_table,
          "arrow-table": _arrow_table, "arrow-rows": _arrow_rows}


@pytest.mark.parametrize("kind", MAKERS)
def test_every_format_reads_exact_rows(tmp_path, kind):
    path, expect = MAKERS[kind](tmp_path)
    ds = mlconv.dataset(path, cache_bytes=4096)  # small: pieces are evicted and reloaded
    assert len(ds) == N and sorted(ds.columns) == sorted(expect)
    for key in (PICK, np.array(PICK), slice(None), slice(10, 200), slice(5, 290, 7),
                slice(299, 0, -3), slice(4, 4)):
        batch = ds[key]
        for name, ref in expect.items():
            got = batch[name]
            assert type(got) is np.ndarray and got.dtype == ref.dtype.newbyteorder("=")
            np.testing.assert_array_equal(got, ref[key])
    for i in (0, 17, N - 1, -1):
        sample = ds[i]
        for name, ref in expect.items():
            np.testing.assert_array_equal(sample[name], ref[i])
            assert sample[name].shape == ref.shape[1:]
    mask = np.arange(N) % 3 == 0
    np.testing.assert_array_equal(ds[mask][ds.columns[0]], expect[ds.columns[0]][mask])


def test_shards_concatenate_in_order_across_boundaries(tmp_path):
    sizes = [100, 0, 1, 199]
    start = 0
    for i, n in enumerate(sizes):
        np.save(tmp_path / f"part-{i}.npy", X[start:start + n])
        start += n
    ds = mlconv.dataset(str(tmp_path / "part-*.npy"))
    assert len(ds) == N and ds.columns == ["part-0"]
    assert len(ds.files) == 4
    for key in (slice(None), slice(95, 105), slice(99, 102), slice(100, 101),
                [99, 100, 101, 0, 299, 100], np.arange(N)[::-1], slice(250, 10, -1)):
        np.testing.assert_array_equal(ds[key]["part-0"], X[key])
    for i in (99, 100, 101, 299):
        np.testing.assert_array_equal(ds[i]["part-0"], X[i])
    listed = mlconv.dataset([tmp_path / "part-3.npy", tmp_path / "part-0.npy"])
    np.testing.assert_array_equal(listed[:]["part-3"], np.concatenate([X[101:], X[:100]]))


def test_shards_that_disagree_are_refused(tmp_path):
    save_file({"x": X[:10], "y": Y[:10]}, str(tmp_path / "a.safetensors"))
    save_file({"x": X[:10].astype(np.int16), "y": Y[:10]}, str(tmp_path / "b.safetensors"))
    save_file({"x": X[:10]}, str(tmp_path / "c.safetensors"))
    with pytest.raises(FormatError, match="differ"):
        mlconv.dataset([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    with pytest.raises(FormatError, match="no column 'y'"):
        mlconv.dataset([tmp_path / "a.safetensors", tmp_path / "c.safetensors"])
    ds = mlconv.dataset([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], columns="x")
    np.testing.assert_array_equal(ds[:]["x"], np.concatenate([X[:10], X[:10]]))


def test_columns_must_share_a_first_axis_and_be_tensors(tmp_path):
    save_file({"x": X, "mean": F[0]}, str(tmp_path / "a.safetensors"))
    with pytest.raises(FormatError, match="first axis"):
        mlconv.dataset(tmp_path / "a.safetensors")
    assert mlconv.dataset(tmp_path / "a.safetensors", columns=["x"]).columns == ["x"]
    pq.write_table(pa.table({"y": Y, "s": [str(i) for i in Y]}), tmp_path / "s.parquet")
    with pytest.raises(MlconvError, match="'s' of type string cannot be a tensor"):
        mlconv.dataset(tmp_path / "s.parquet")
    np.testing.assert_array_equal(mlconv.dataset(tmp_path / "s.parquet", columns=["y"])[:]["y"], Y)
    with pytest.raises(MlconvError, match="no file matches"):
        mlconv.dataset(str(tmp_path / "none-*.npy"))


def test_unused_columns_are_never_read(tmp_path, monkeypatch):
    path, _ = _parquet_table(tmp_path)
    asked = []
    real = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches",
                        lambda self, *a, row_groups=None, columns=None, **k:
                        asked.extend((i, columns) for i in row_groups)
                        or real(self, *a, row_groups=row_groups, columns=columns, **k))
    ds = mlconv.dataset(path, columns=["y"])
    np.testing.assert_array_equal(ds[[5, 200]]["y"], Y[[5, 200]])
    assert list(ds[0]) == ["y"]
    # only the row groups holding rows 0, 5 and 200 (64 rows each), only column y
    assert asked and all(c == ["y"] for _, c in asked)
    assert sorted({i for i, _ in asked}) == [0, 3]

    from mlconv.formats.arrow import _Source
    path, _ = _arrow_table(tmp_path)
    seen = []
    real_piece = _Source.piece
    monkeypatch.setattr(_Source, "piece", lambda self, k, cols: seen.append((k, cols))
                        or real_piece(self, k, cols))
    ds = mlconv.dataset(path, columns=["f"])
    ds[[0, 299]]
    assert seen == [(0, ["f"]), (4, ["f"])]


def test_bad_indices_raise_index_error(tmp_path):
    np.save(tmp_path / "x.npy", X)
    ds = mlconv.dataset(tmp_path / "x.npy")
    for bad in (N, -N - 1, [0, N], [-N - 1], 1.5, "a", np.array([[1]]), [0.5],
                np.zeros(N - 1, bool), None, (0, 1)):
        with pytest.raises(IndexError):
            ds[bad]
    assert ds[np.int64(-N)]["x"].shape == (5, 4)
    assert ds[[]]["x"].shape == (0, 5, 4)


def test_batches_shuffle_by_seed_each_row_once(tmp_path):
    np.save(tmp_path / "y.npy", Y)
    ds = mlconv.dataset(tmp_path / "y.npy")
    plain = list(ds.batches(64))
    assert [len(b["y"]) for b in plain] == [64, 64, 64, 64, 44]
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in plain]), Y)
    one = np.concatenate([b["y"] for b in ds.batches(64, shuffle=True, seed=3)])
    two = np.concatenate([b["y"] for b in ds.batches(64, shuffle=True, seed=3)])
    other = np.concatenate([b["y"] for b in ds.batches(64, shuffle=True, seed=4)])
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other) and not np.array_equal(one, Y)
    np.testing.assert_array_equal(np.sort(one), np.sort(Y))  # a permutation
    np.testing.assert_array_equal(one, Y[np.random.default_rng(3).permutation(N)])
    dropped = list(ds.batches(64, shuffle=True, seed=3, drop_last=True))
    assert [len(b["y"]) for b in dropped] == [64] * 4
    assert [s["y"] for s in ds][:3] == list(Y[:3])


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_are_disjoint_and_complete(tmp_path, world):
    for i in range(3):
        np.save(tmp_path / f"p{i}.npy", Y[i * 100:(i + 1) * 100])
    ds = mlconv.dataset(str(tmp_path / "p*.npy"))
    parts = [ds.shard(r, world)[:]["p0"] for r in range(world)]
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    np.testing.assert_array_equal(np.concatenate(parts), Y)
    assert [len(ds.shard(r, world)) for r in range(world)] == [len(p) for p in parts]
    files = [ds.shard(r, world, whole_files=True) for r in range(min(world, 3))]
    assert sorted(f for part in files for f in part.files) == ds.files
    nested = ds.shard(1, 2).shard(0, 2)
    np.testing.assert_array_equal(nested[:]["p0"], Y[150:225])
    with pytest.raises(MlconvError):
        ds.shard(world, world)
    tiny = [ds.shard(r, 400) for r in range(400)]  # more parts than rows: some are empty
    assert sum(map(len, tiny)) == N and tiny[0][:]["p0"].shape == (0,)
    assert tiny[-1][:]["p0"].tolist() == [Y[-1]]
    assert ds[N:]["p0"].shape == (0,) and ds.shard(1, 2)[150:]["p0"].shape == (0,)


def test_a_file_changed_under_an_open_dataset_is_detected(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, X)
    ds = mlconv.dataset(path)
    np.testing.assert_array_equal(ds[3]["x"], X[3])
    np.save(path, X[:10])  # shorter: the old map would read past the end
    with pytest.raises(FormatError, match="changed under an open dataset"):
        ds[[3]]  # a batch read checks every time
    time.sleep(dataset_mod.CHECK_NS / 1e9)
    with pytest.raises(FormatError, match="changed under an open dataset"):
        ds[3]  # a single-row read once its file's last check is CHECK_NS old
    np.save(path, X[::-1])  # same size, new mtime
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    ds = mlconv.dataset(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    with pytest.raises(FormatError, match="changed"):
        ds[0]
    os.unlink(path)
    with pytest.raises(FormatError, match="vanished"):
        ds[0]


@pytest.mark.parametrize("how", ["unlink", "rename over", "rewrite", "touch"])
def test_single_row_reads_check_their_file_every_check_ns(tmp_path, monkeypatch, how):
    now = [0]
    monkeypatch.setattr(dataset_mod, "_clock", lambda: now[0])
    path = tmp_path / "x.npy"
    np.save(path, X)
    ds = mlconv.dataset(path)
    assert ds[3]["x"].tolist() == X[3].tolist() and ds[3]["x"].flags.writeable
    if how == "unlink":
        os.unlink(path)
    elif how == "rename over":
        np.save(tmp_path / "y.npy", X[::-1])
        os.replace(tmp_path / "y.npy", path)
    elif how == "rewrite":
        np.save(path, X[::-1])  # same inode, same size: only mtime tells
        os.utime(path, ns=(1, 1))
    else:
        os.utime(path, ns=(1, 1))
    now[0] = dataset_mod.CHECK_NS - 1
    ds[4]  # within the window: not checked (the price of a check is a read's)
    now[0] = dataset_mod.CHECK_NS
    with pytest.raises(FormatError, match="vanished" if how == "unlink" else "changed"):
        ds[4]
    with pytest.raises(FormatError, match="vanished" if how == "unlink" else "changed"):
        ds[4:6]


def test_single_row_reads_equal_batch_reads_for_every_layout(tmp_path):
    path = tmp_path / "m.npz"
    big = np.arange(24, dtype=">i4").reshape(6, 4)  # big-endian: converted, not a view
    np.savez(path, a=np.asfortranarray(np.arange(24.0).reshape(6, 4)), b=big,
             c=np.arange(6, dtype=np.int16))
    ds = mlconv.dataset(path)
    for i in range(6):
        row, batch = ds[i], ds[[i]]
        for k in "abc":
            assert np.array_equal(row[k], batch[k][0]) and row[k].dtype.isnative
    assert type(ds[2]["c"]) is np.int16 and ds[2]["a"].flags.writeable


def test_dataset_pickles_as_paths_without_open_files(tmp_path):
    path, expect = _h5((7, 5, 4))(tmp_path)
    ds = mlconv.dataset(path)
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 2000 and b"h5py" not in blob
    again = pickle.loads(blob)
    assert again._proc is None
    np.testing.assert_array_equal(again[PICK]["g/x"], expect["g/x"][PICK])


def _worker_read(args):
    ds, rank, world = args
    part = ds.shard(rank, world)
    seen = np.concatenate([b["y"] for b in part.batches(32, shuffle=True, seed=rank)])
    opened = [id(b) for b, *_ in part._proc["open"].values()] if part._proc else []
    return os.getpid(), seen, opened, part._proc["pid"]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_two_processes_read_every_row_once(tmp_path, method):
    for i in range(2):
        with h5py.File(tmp_path / f"s{i}.h5", "w") as f:
            f.create_dataset("y", data=Y[i * 150:(i + 1) * 150], chunks=(16,))
    ds = mlconv.dataset(str(tmp_path / "s*.h5"))
    ds[[0, 299]]  # the parent has the files open before the workers start
    parent_ids = [id(b) for b, *_ in ds._proc["open"].values()]
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(_worker_read, [(ds, r, 2) for r in range(2)])
    seen = np.concatenate([r[1] for r in results])
    np.testing.assert_array_equal(np.sort(seen), np.sort(Y))
    for pid, _, opened, state_pid in results:
        assert pid != os.getpid() and state_pid == pid
        assert not set(opened) & set(parent_ids)  # opened its own, never the parent's


def _fork_child_reads(ds, conn):
    try:
        conn.send((ds[[1, 298]]["y"].tolist(), ds._proc["pid"] == os.getpid()))
    finally:
        conn.close()


def test_forked_child_does_not_use_the_parents_handles(tmp_path):
    np.save(tmp_path / "y.npy", Y)
    ds = mlconv.dataset(tmp_path / "y.npy")
    ds[0]
    parent_state = ds._proc
    a, b = mp.get_context("fork").Pipe()
    p = mp.get_context("fork").Process(target=_fork_child_reads, args=(ds, b))
    p.start()
    values, fresh = a.recv()
    p.join()
    assert values == Y[[1, 298]].tolist() and fresh
    assert ds._proc is parent_state


def test_torch_dataloader_two_workers(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (not a dependency; "
                                "the multiprocessing tests cover fork and spawn)")
    np.save(tmp_path / "y.npy", Y)
    ds = mlconv.dataset(tmp_path / "y.npy")
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=2)
    seen = torch.cat([b["y.npy"[:-4]] for b in loader]).numpy()
    np.testing.assert_array_equal(np.sort(seen), np.sort(Y))


# --- Tensor: np.asarray, len, lazy rows ------------------------------------------------

def test_tensor_array_len_and_getitem(tmp_path):
    path, expect = _h5((7, 5, 4))(tmp_path)
    b = mlconv.load(path)
    t, y = b["g/x"], b["g/y"]
    assert np.asarray(t).dtype == np.uint8 and len(t) == N
    np.testing.assert_array_equal(np.asarray(t), expect["g/x"])
    np.testing.assert_array_equal(np.asarray(y, dtype=np.float64), expect["g/y"].astype(float))
    for key in (5, -1, slice(3, 9), [4, 2, 2], (slice(3, 9), 1), (7, 2, 3), ([1, 0], slice(1, 3)),
                (Ellipsis, 0), slice(None, None, 5)):
        np.testing.assert_array_equal(t[key], expect["g/x"][key])
    with pytest.raises(IndexError):
        t[N]
    zero = mlconv.Tensor.from_numpy(np.float32(2.5))
    assert float(np.asarray(zero)) == 2.5 and bool(zero)
    with pytest.raises(TypeError):
        len(zero)
    assert bool(mlconv.Tensor.from_numpy(np.zeros((0, 3))))


def test_tensor_slice_reads_only_its_rows(tmp_path, monkeypatch):
    from mlconv.formats.hdf5.read import H5Source

    path, expect = _h5((7, 5, 4))(tmp_path)
    reads = []
    real = H5Source._read
    monkeypatch.setattr(H5Source, "_read", lambda self, sel: reads.append(sel)
                        or real(self, sel))
    t = mlconv.load(path)["g/x"]
    np.testing.assert_array_equal(t[10:12], expect["g/x"][10:12])
    assert reads == [slice(10, 12)]
    # with a cache: whole chunks, each decoded once however often its rows are asked for
    cache = ByteLRU(1 << 20)
    reads.clear()
    for _ in range(3):
        np.testing.assert_array_equal(t.rows(np.array([8, 9, 15, 1]), cache),
                                      expect["g/x"][[8, 9, 15, 1]])
    assert reads == [slice(0, 7), slice(7, 14), slice(14, 21)]

    path, expect = _parquet_table(tmp_path)
    groups = []
    real_rg = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches",
                        lambda self, *a, row_groups=None, **k: groups.extend(row_groups)
                        or real_rg(self, *a, row_groups=row_groups, **k))
    f = mlconv.load(path)["t"]
    assert f.kind == "table"
    from mlconv.columns import table_tensors
    col = table_tensors(f, "t", prefix=False)["f"]
    np.testing.assert_array_equal(col[130:140], expect["f"][130:140])
    assert groups == [2]

    np.save(tmp_path / "m.npy", X)
    mm = mlconv.load(tmp_path / "m.npy")["m"]
    assert isinstance(np.asarray(mm).base, np.memmap) or isinstance(np.asarray(mm), np.memmap)


def test_byte_lru_is_bounded_and_evicts_the_oldest():
    lru = ByteLRU(100)
    loads = []

    def make(n):
        return lambda: loads.append(n) or np.zeros(n, np.uint8)

    lru.get("a", make(40))
    lru.get("b", make(40))
    lru.get("a", make(40))  # a is now the newest
    lru.get("c", make(40))  # evicts b
    assert lru.nbytes == 80 and len(lru) == 2
    lru.get("b", make(40))
    assert loads == [40, 40, 40, 40]
    big = lru.get("big", make(500))
    assert big.size == 500 and lru.nbytes <= 100


# --- the HDF5 guard's verdicts, kept across processes -----------------------------------

def _h5_file(path, data):
    with h5py.File(path, "w") as f:
        f["y"] = data
    return path


@pytest.fixture
def guard_calls(monkeypatch, tmp_path):
    monkeypatch.setenv(_hdf5_guard.ENV, "1")
    monkeypatch.setenv(_guard_cache.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(_hdf5_guard, "_passed", set())
    calls = []
    real = _hdf5_guard._launch
    monkeypatch.setattr(_hdf5_guard, "_launch", lambda *a: calls.append(a[0]) or real(*a))
    return calls


def test_guard_verdict_is_reused_and_a_changed_file_guarded_again(tmp_path, guard_calls,
                                                                  monkeypatch):
    src = _h5_file(tmp_path / "g.h5", Y)
    mlconv.load(src).close()
    assert len(guard_calls) == 1 and os.listdir(tmp_path / "cache" / "hdf5-guard")
    monkeypatch.setattr(_hdf5_guard, "_passed", set())  # as a new process would start
    mlconv.load(src).close()
    assert len(guard_calls) == 1
    _h5_file(src, Y[::-1])  # same size, new content
    monkeypatch.setattr(_hdf5_guard, "_passed", set())
    mlconv.load(src).close()
    assert len(guard_calls) == 2
    monkeypatch.setattr(_hdf5_guard, "_passed", set())
    monkeypatch.setenv(_guard_cache.ENV, str(tmp_path / "other"))
    mlconv.load(src).close()
    assert len(guard_calls) == 3
    monkeypatch.setattr(_hdf5_guard, "_passed", set())
    monkeypatch.setattr(h5py.version, "hdf5_version", "0.0.1")  # another libhdf5: no trust
    mlconv.load(src).close()
    assert len(guard_calls) == 4


def test_guard_failure_is_not_remembered(tmp_path, guard_calls, monkeypatch):
    src = _h5_file(tmp_path / "g.h5", Y)
    monkeypatch.setattr(_hdf5_guard, "probe", lambda *a: 1)
    monkeypatch.setattr(_hdf5_guard, "_CHILD", "import sys\nsys.exit(1)\n")
    mlconv.load(src).close()  # an ordinary error in the child: this process reads it itself
    assert not (tmp_path / "cache").exists()
    monkeypatch.setattr(_hdf5_guard, "probe", lambda *a: 0)
    monkeypatch.setattr(_hdf5_guard, "_CHILD", "import sys\nsys.exit(0)\n")
    mlconv.load(src).close()
    assert os.listdir(tmp_path / "cache" / "hdf5-guard")


_SECOND = """
import sys
import time
import mlconv

from mlconv.formats.hdf5 import guard as _hdf5_guard
calls = []
real = _hdf5_guard._launch
def spy(*a):
    calls.append(1)
    return real(*a)
_hdf5_guard._launch = spy
ds = mlconv.dataset(sys.argv[1])
print(len(calls), int(ds[5]["y"]))
"""


def test_a_second_process_reuses_the_verdict(tmp_path):
    src = _h5_file(tmp_path / "g.h5", Y)
    env = dict(os.environ, MLCONV_CACHE_DIR=str(tmp_path / "cache"), MLCONV_HDF5_GUARD="1")

    def run():
        out = subprocess.run([sys.executable, "-c", _SECOND, str(src)], env=env,
                             capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert run() == ["1", str(Y[5])]  # the first process pays the guard
    assert run() == ["0", str(Y[5])]  # the next one finds its verdict
    os.utime(src, ns=(1, 1))          # changed (mtime): guarded again
    assert run() == ["1", str(Y[5])]


def test_parquet_row_group_larger_than_a_read_batch(tmp_path):
    big = np.arange(20_000, dtype=np.int64) * 3
    pq.write_table(pa.table({"v": big}), tmp_path / "b.parquet", row_group_size=20_000)
    ds = mlconv.dataset(tmp_path / "b.parquet")
    pick = [0, 8191, 8192, 16384, 19999, 5]
    np.testing.assert_array_equal(ds[pick]["v"], big[pick])
    np.testing.assert_array_equal(ds[8000:8400]["v"], big[8000:8400])


def test_parquet_writer_sizes_row_groups_by_bytes(tmp_path, monkeypatch):
    """A loader decodes a whole row group for one of its rows: mlconv's own files keep row
    groups near GROUP_BYTES (unless --row-group-size says otherwise), in exact row order."""
    from mlconv.formats import parquet

    monkeypatch.setattr(parquet, "GROUP_BYTES", 100 * 800)  # ~100 rows of 784 + 8 bytes
    x = np.arange(1000 * 784, dtype=np.uint8).reshape(1000, 28, 28)
    y = np.arange(1000, dtype=np.int64)
    mlconv.save({"x": x, "y": y}, tmp_path / "a.parquet")
    meta = pq.ParquetFile(tmp_path / "a.parquet").metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == 1000 and 8 <= len(sizes) <= 12 and max(sizes) <= 110
    ds = mlconv.dataset(tmp_path / "a.parquet")
    np.testing.assert_array_equal(ds[:]["x"], x)
    np.testing.assert_array_equal(ds[[999, 0, 505]]["y"], y[[999, 0, 505]])
    mlconv.convert(tmp_path / "a.parquet", tmp_path / "b.parquet", options={"row_group_size": 400})
    meta = pq.ParquetFile(tmp_path / "b.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [400, 400, 200]


def test_parquet_rows_read_without_importing_pandas(tmp_path):
    """Column bytes are viewed directly: pyarrow's to_numpy would import pandas (~50 MiB
    and 0.6 s in every loader process)."""
    x = np.arange(40 * 6, dtype=np.float32).reshape(40, 2, 3)
    y = np.arange(40, dtype=np.int16) - 20
    mlconv.save({"x": x, "y": y}, tmp_path / "a.parquet")
    code = ("import sys, mlconv\n"
            "ds = mlconv.dataset(sys.argv[1])\n"
            "r = ds[[3, 39, 0]]\n"
            "print(r['x'].sum(), r['y'].tolist(), ds[7]['x'].flags.writeable, "
            "'pandas' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.parquet")],
                         capture_output=True, text=True, check=True).stdout.split(None, 1)
    assert float(out[0]) == x[[3, 39, 0]].sum()
    assert out[1].strip() == f"{y[[3, 39, 0]].tolist()} True False"
