"""Parquet / Arrow IPC benchmarks (issue 4), whole processes, runs alternated:

1. N-row table Parquet -> Arrow IPC and back: mlconv vs pyarrow by hand
   (``pq.read_table`` + ``feather.write_feather``, ``feather.read_table`` + ``pq.write_table``);
2. reading every column of the IPC file: ``mlconv.open`` (memory map, validated batches) vs
   raw ``pa.memory_map`` + ``ipc.open_file`` vs ``pq.read_table`` of the Parquet file;
3. a tensor bundle (``--gib``) -> Parquet rows layout: mlconv vs by hand.

    python benchmarks/bench_tables.py [--rows 10000000] [--gib 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil

from harness import MLCONV, PY, compare, remover, run_function, run_once, table_columns, tempdir

HERE = os.path.dirname(os.path.abspath(__file__))

PQ_TO_IPC = ("import sys, pyarrow.parquet as pq, pyarrow.feather as f; "
             "f.write_feather(pq.read_table(sys.argv[1]), sys.argv[2], "
             "compression='uncompressed')")
IPC_TO_PQ = ("import sys, pyarrow.parquet as pq, pyarrow.feather as f; "
             "pq.write_table(f.read_table(sys.argv[1]), sys.argv[2], compression='zstd')")
READ_ML = ("import sys, mlconv\n"
           "with mlconv.open(sys.argv[1]) as b:\n"
           "    for t in b.values():\n"
           "        for batch in t.batches(1 << 20):\n"
           "            [c.to_numpy(zero_copy_only=False) for c in batch.columns]\n")
READ_RAW = ("import sys, pyarrow as pa\n"
            "r = pa.ipc.open_file(pa.memory_map(sys.argv[1]))\n"
            "for i in range(r.num_record_batches):\n"
            "    [c.to_numpy(zero_copy_only=False) for c in r.get_batch(i).columns]\n")
READ_PQ = ("import sys, pyarrow.parquet as pq\n"
           "[c.to_numpy() for c in pq.read_table(sys.argv[1]).columns]\n")
TENSORS_BY_HAND = ("import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq\n"
                   "z = np.load(sys.argv[1])\n"
                   "x, y = z['x'], z['y']\n"
                   "cols = {'x': pa.FixedShapeTensorArray.from_numpy_ndarray(x), 'y': y}\n"
                   "pq.write_table(pa.table(cols), sys.argv[2], compression='zstd')\n")


def make_parquet(path: str, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    step = 1 << 20
    writer = None
    for start in range(0, rows, step):
        n = min(step, rows - start)
        t = pa.table(table_columns(rng, n))
        writer = writer or pq.ParquetWriter(path, t.schema, compression="zstd")
        writer.write_table(t)
    writer.close()


def make_tensors(path: str, gib: float) -> None:
    import numpy as np

    n = int(gib * (1 << 30)) // (4 * 256 + 8)
    x = np.lib.format.open_memmap(path + ".x.npy", "w+", np.float32, (n, 16, 16))
    for i in range(0, n, 1 << 16):
        x[i:i + (1 << 16)] = np.float32(i)
    np.savez(path, x=x, y=np.arange(n))
    del x
    os.unlink(path + ".x.npy")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = tempdir()
    j = lambda n: os.path.join(tmp, n)  # noqa: E731
    try:
        src = j("t.parquet")
        run_function(__file__, "make_parquet", src, args.rows)
        print(f"\n{args.rows:,}-row x 8-column table: Parquet ({os.path.getsize(src) / 2**20:.0f} "
              f"MiB) -> Arrow IPC, {args.runs} alternating runs")
        compare({
            "cp": (["cp", src, j("cp.parquet")], remover(j("cp.parquet"))),
            "mlconv": ([*MLCONV, src, j("ml.arrow")], remover(j("ml.arrow"))),
            "pq.read_table + write_feather": ([PY, "-c", PQ_TO_IPC, src, j("pa.arrow")],
                                              remover(j("pa.arrow"))),
        }, runs=args.runs)
        ipc = j("ml.arrow")
        run_once([*MLCONV, src, ipc, "--force"])
        print(f"\nArrow IPC ({os.path.getsize(ipc) / 2**20:.0f} MiB) -> Parquet")
        compare({
            "cp": (["cp", ipc, j("cp.arrow")], remover(j("cp.arrow"))),
            "mlconv": ([*MLCONV, ipc, j("back.parquet")], remover(j("back.parquet"))),
            "read_feather + pq.write_table": ([PY, "-c", IPC_TO_PQ, ipc, j("pa.parquet")],
                                              remover(j("pa.parquet"))),
        }, runs=args.runs)
        print("\nreading every column")
        compare({
            "raw memory_map + open_file": ([PY, "-c", READ_RAW, ipc], None),
            "mlconv.open (IPC)": ([PY, "-c", READ_ML, ipc], None),
            "pq.read_table (Parquet)": ([PY, "-c", READ_PQ, src], None),
        }, runs=args.runs, baseline="raw memory_map + open_file")
        for p in (src, ipc):
            remover(p)()
        npz = j("w.npz")
        run_function(__file__, "make_tensors", npz, args.gib)
        print(f"\n{args.gib} GiB tensor bundle (x: (n, 16, 16) float32, y: (n,) int64) -> Parquet "
              "rows layout")
        compare({
            "cp": (["cp", npz, j("cp.npz")], remover(j("cp.npz"))),
            "mlconv": ([*MLCONV, npz, j("ml.parquet")], remover(j("ml.parquet"))),
            "numpy + pyarrow by hand": ([PY, "-c", TENSORS_BY_HAND, npz, j("hand.parquet")],
                                        remover(j("hand.parquet"))),
        }, runs=args.runs)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
