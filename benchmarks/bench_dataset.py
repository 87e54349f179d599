"""mlconv.dataset vs each format's own random access (issue 14), one child process per case.

60,000 x 28 x 28 uint8 images + int64 labels in npy, safetensors, HDF5 (contiguous and
chunked+gzip), Parquet and Arrow IPC. Per case: open time, 10,000 random samples one at a
time, one shuffled epoch of batches of 256, and the child's peak RSS (VmHWM). Peers:
numpy memmap fancy indexing, h5py ``ds[i]`` / ``ds[sorted(idx)]``, pyarrow ``read_table`` +
``take``, ``safe_open().get_slice``, Hugging Face ``datasets`` when installed. Then a
2-process DataLoader-style epoch (``ds.shard``) that must see every sample exactly once.
Temp files in /tmp, deleted after. A benchmark, not a test: it prints and never fails.

    python benchmarks/bench_dataset.py [--rows 60000] [--samples 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile

from harness import PY, tempdir

COMMON = """
import json, sys, time
import numpy as np
ROWS, SAMPLES, BATCH = int(sys.argv[2]), int(sys.argv[3]), 256
rng = np.random.default_rng(0)
picks = rng.integers(0, ROWS, SAMPLES)
epoch = rng.permutation(ROWS)
def peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) / 1024
def report(t_open, t_rand, t_epoch, check):
    print(json.dumps({'open': t_open, 'random': t_rand, 'epoch': t_epoch, 'rss': peak(),
                      'check': int(check)}))
t0 = time.perf_counter()
"""

MLCONV = COMMON + """
import mlconv
ds = mlconv.dataset(sys.argv[1])
ix, iy = 'x', 'y'
t1 = time.perf_counter()
s = 0
for i in picks:
    r = ds[int(i)]
    s += int(r[iy]) + int(r[ix][3, 5])
t2 = time.perf_counter()
for b in ds.batches(BATCH, shuffle=True, seed=0):
    s += int(b[ix][:, 3, 5].sum()) + int(b[iy].sum())
report(t1 - t0, t2 - t1, time.perf_counter() - t2, s)
"""

NPY = COMMON + """
x = np.load(sys.argv[1] + '/x.npy', mmap_mode='r')
y = np.load(sys.argv[1] + '/y.npy', mmap_mode='r')
t1 = time.perf_counter()
s = 0
for i in picks:
    a, b = np.array(x[i]), np.array(y[i])
    s += int(b) + int(a[3, 5])
t2 = time.perf_counter()
for k in range(0, ROWS, BATCH):
    idx = epoch[k:k + BATCH]
    a, b = x[idx], y[idx]
    s += int(a[:, 3, 5].sum()) + int(b.sum())
report(t1 - t0, t2 - t1, time.perf_counter() - t2, s)
"""

H5PY = COMMON + """
import h5py
f = h5py.File(sys.argv[1]); x, y = f['x'], f['y']
t1 = time.perf_counter()
s = 0
for i in picks:
    a, b = x[i], y[i]
    s += int(b) + int(a[3, 5])
t2 = time.perf_counter()
for k in range(0, ROWS, BATCH):
    idx = np.sort(epoch[k:k + BATCH])
    a, b = x[idx], y[idx]
    s += int(a[:, 3, 5].sum()) + int(b.sum())
report(t1 - t0, t2 - t1, time.perf_counter() - t2, s)
"""

ARROW = COMMON + """
import pyarrow as pa, pyarrow.parquet as pq
if sys.argv[1].endswith('.parquet'):
    t = pq.read_table(sys.argv[1])
else:
    t = pa.ipc.open_file(pa.memory_map(sys.argv[1])).read_all()
def rows(idx):
    part = t.take(idx)
    return part['x'].combine_chunks().to_numpy_ndarray(), part['y'].to_numpy()
t1 = time.perf_counter()
s = 0
for i in picks:
    a, b = rows([int(i)])
    s += int(b[0]) + int(a[0, 3, 5])
t2 = time.perf_counter()
for k in range(0, ROWS, BATCH):
    a, b = rows(epoch[k:k + BATCH])
    s += int(a[:, 3, 5].sum()) + int(b.sum())
report(t1 - t0, t2 - t1, time.perf_counter() - t2, s)
"""

SAFETENSORS = COMMON + """
from safetensors import safe_open
f = safe_open(sys.argv[1], framework='numpy')
x, y = f.get_slice('x'), f.get_slice('y')
t1 = time.perf_counter()
s = 0
for i in picks:
    i = int(i); a, b = x[i:i + 1][0], y[i:i + 1][0]
    s += int(b) + int(a[3, 5])
t2 = time.perf_counter()
for k in range(0, ROWS, BATCH):
    idx = epoch[k:k + BATCH]
    a = np.stack([x[int(i):int(i) + 1][0] for i in idx])
    b = np.array([y[int(i):int(i) + 1][0] for i in idx])
    s += int(a[:, 3, 5].sum()) + int(b.sum())
report(t1 - t0, t2 - t1, time.perf_counter() - t2, s)
"""

HF = COMMON + """
import datasets
d = datasets.Dataset.from_file(sys.argv[1]).with_format('numpy')
t1 = time.perf_counter()
s = 0
for i in picks:
    r = d[int(i)]
    s += int(r['y']) + int(r['x'][3, 5])
t2 = time.perf_counter()
for k in range(0, ROWS, BATCH):
    r = d[epoch[k:k + BATCH]]
    s += int(r['x'][:, 3, 5].sum()) + int(r['y'].sum())
report(t1 - t0, t2 - t1, time.perf_counter() - t2, s)
"""

WORKERS = """
import json, sys, time, multiprocessing as mp
import numpy as np
import mlconv

def work(args):
    ds, rank = args
    seen = [b['y'] for b in ds.shard(rank, 2).batches(256, shuffle=True, seed=rank)]
    return np.concatenate(seen)

if __name__ == '__main__':
    t0 = time.perf_counter()
    ds = mlconv.dataset(sys.argv[1])
    with mp.get_context(sys.argv[2]).Pool(2) as pool:
        got = np.concatenate(pool.map(work, [(ds, 0), (ds, 1)]))
    once = bool((np.sort(got) == np.arange(len(ds))).all())
    print(json.dumps({'seconds': time.perf_counter() - t0, 'once': once}))
"""


def child(code: str, *args) -> dict:
    script = os.path.join(tempfile.gettempdir(), f"mlconv-bench-{os.getpid()}.py")
    with open(script, "w") as f:  # a file, not -c: spawned workers import their main module
        f.write(code)
    try:
        out = subprocess.run([PY, script, *map(str, args)], capture_output=True, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=900)
    finally:
        os.unlink(script)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_files(d: str, rows: int) -> dict:
    import h5py
    import numpy as np
    from safetensors.numpy import save_file

    import mlconv

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (rows, 28, 28), dtype=np.uint8)
    y = np.arange(rows, dtype=np.int64)  # labels = row numbers: the worker run checks them
    os.makedirs(f"{d}/npy")
    np.save(f"{d}/npy/x.npy", x)
    np.save(f"{d}/npy/y.npy", y)
    save_file({"x": x, "y": y}, f"{d}/a.safetensors")
    with h5py.File(f"{d}/contig.h5", "w") as f:
        f["x"], f["y"] = x, y
    with h5py.File(f"{d}/gzip.h5", "w") as f:
        f.create_dataset("x", data=x, chunks=True, compression="gzip")
        f.create_dataset("y", data=y, chunks=True, compression="gzip")
    mlconv.save({"x": x, "y": y}, f"{d}/a.parquet")
    mlconv.save({"x": x, "y": y}, f"{d}/a.arrow")
    return {"npy": f"{d}/npy", "safetensors": f"{d}/a.safetensors", "h5": f"{d}/contig.h5",
            "h5 gzip": f"{d}/gzip.h5", "parquet": f"{d}/a.parquet", "arrow": f"{d}/a.arrow"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--samples", type=int, default=10_000)
    a = ap.parse_args()
    d = tempdir()
    try:
        files = make_files(d, a.rows)
        import importlib.util

        peers = {"npy": ("numpy memmap", NPY), "safetensors": ("safe_open.get_slice",
                                                               SAFETENSORS),
                 "h5": ("h5py ds[i] / ds[sorted]", H5PY),
                 "h5 gzip": ("h5py ds[i] / ds[sorted]", H5PY),
                 "parquet": ("pq.read_table + take", ARROW),
                 "arrow": ("ipc read_all + take", ARROW)}
        print(f"{a.rows} x 28 x 28 uint8 + int64 labels; {a.samples} random samples one at a "
              "time; one shuffled epoch of batches of 256\n")
        head = (f"{'file':<12} {'reader':<26} {'open s':>7} {'random s':>9} {'epoch s':>8} "
                f"{'rand x':>7} {'epoch x':>8} {'RSS MiB':>8}")
        print(head, flush=True)
        for kind, path in files.items():
            name, code = peers[kind]
            if kind == "npy":
                ml = child(MLCONV_NPY, path, a.rows, a.samples)
            else:
                ml = child(MLCONV, path, a.rows, a.samples)
            peer = child(code, path, a.rows, a.samples)
            assert ml["check"] == peer["check"], (kind, ml, peer)
            rows = [("mlconv.dataset", ml, ml["random"] / peer["random"],
                     ml["epoch"] / peer["epoch"]), (name, peer, 1.0, 1.0)]
            if kind == "arrow" and importlib.util.find_spec("datasets"):
                rows.append(("HF datasets", child(HF, path, a.rows, a.samples), None, None))
            for label, r, rr, re in rows:
                rr = r["random"] / peer["random"] if rr is None else rr
                re = r["epoch"] / peer["epoch"] if re is None else re
                print(f"{kind:<12} {label:<26} {r['open']:>7.3f} {r['random']:>9.3f} "
                      f"{r['epoch']:>8.3f} {rr:>7.2f} {re:>8.2f} {r['rss']:>8.1f}", flush=True)
        print("\n(rand x, epoch x: mlconv time / the peer's; under 1 is faster)\n")
        for method in ("fork", "spawn"):
            r = child(WORKERS, files["h5 gzip"], method)
            print(f"2 workers ({method}), HDF5 gzip, one shuffled epoch by shard(): "
                  f"{r['seconds']:.2f} s, every sample exactly once: {r['once']}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


# npy: one tensor per file, so images and labels are two datasets side by side
MLCONV_NPY = COMMON + """
import mlconv
dx = mlconv.dataset(sys.argv[1] + '/x.npy'); dy = mlconv.dataset(sys.argv[1] + '/y.npy')
t1 = time.perf_counter()
s = 0
for i in picks:
    a, b = dx[int(i)]['x'], dy[int(i)]['y']
    s += int(b) + int(a[3, 5])
t2 = time.perf_counter()
for k in range(0, ROWS, BATCH):
    idx = epoch[k:k + BATCH]
    a, b = dx[idx]['x'], dy[idx]['y']
    s += int(a[:, 3, 5].sum()) + int(b.sum())
report(t1 - t0, t2 - t1, time.perf_counter() - t2, s)
"""

if __name__ == "__main__":
    main()
