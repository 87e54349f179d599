"""HDF5 benchmarks (issue 3), every case a whole process, runs alternated:

1. a pandas ``to_hdf(format="table")`` file of N rows x 9 columns (int64, float64, float32,
   int32, bool, short string, timestamp, int8, categorical) -> Parquet: mlconv vs
   ``pd.read_hdf(...).to_parquet(...)`` vs h5py + pyarrow by hand, and ``cp``; prints
   mlconv / pandas and mlconv / by hand (issue 16: target <= 0.4 and <= 0.77, RSS < 500 MiB);
2. a 1 GiB contiguous float32 dataset -> safetensors: mlconv vs ``cp``.

    python benchmarks/bench_h5_tables.py [--rows 10000000] [--gib 1] [--runs 3]
                                         [--only table|tensor]

The machine is shared: the load average is printed before and after each comparison; ratios
from one run (cases alternated) are what to compare, not seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import warnings

from harness import MLCONV, PY, compare, remover, run_function, table_columns, tempdir

HERE = os.path.dirname(os.path.abspath(__file__))

BY_HAND = """
import sys, h5py, numpy as np, pyarrow as pa, pyarrow.parquet as pq
src, dst = sys.argv[1], sys.argv[2]
with h5py.File(src) as f:
    ds = f["df/table"]
    writer = None
    for i in range(0, ds.shape[0], 1 << 20):
        block = ds[i:i + (1 << 20)]
        cols = {"index": pa.array(block["index"])}
        for name in block.dtype.names[1:]:
            v = block[name]
            if v.ndim == 2:
                for j in range(v.shape[1]):
                    cols[f"{name}_{j}"] = pa.array(np.ascontiguousarray(v[:, j]))
            else:
                cols[name] = pa.array(v)
        t = pa.table(cols)
        writer = writer or pq.ParquetWriter(dst, t.schema, compression="zstd")
        writer.write_table(t)
    writer.close()
"""

PANDAS = ("import sys, pandas as pd; "
          "pd.read_hdf(sys.argv[1], 'df').to_parquet(sys.argv[2], compression='zstd')")


def make_table(path: str, rows: int) -> None:
    import numpy as np
    import pandas as pd

    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    step = 1 << 21
    for start in range(0, rows, step):
        n = min(step, rows - start)
        df = pd.DataFrame(table_columns(rng, n), index=pd.RangeIndex(start, start + n))
        df["cat"] = pd.Categorical.from_codes(rng.integers(0, 3, n), ["low", "mid", "high"])
        df.to_hdf(path, key="df", format="table", append=start > 0, min_itemsize={"tag": 8})


def make_tensor(path: str, gib: float) -> None:
    import h5py
    import numpy as np

    n = int(gib * (1 << 30)) // 4 // 1024
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(n, 1024), dtype=np.float32)
        for i in range(0, n, 1 << 16):
            block = np.arange(min(1 << 16, n - i) * 1024, dtype=np.float32).reshape(-1, 1024)
            ds[i:i + len(block)] = block


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=("table", "tensor"))
    args = ap.parse_args()
    tmp = tempdir()
    try:
        if args.only != "tensor":
            bench_table(tmp, args)
        if args.only != "table":
            bench_tensor(tmp, args)
    finally:
        shutil.rmtree(tmp)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_table(tmp: str, args) -> None:
    src = os.path.join(tmp, "t.h5")
    run_function(__file__, "make_table", src, args.rows)
    outs = [os.path.join(tmp, n) for n in ("cp.h5", "ml.parquet", "pd.parquet", "hand.parquet")]
    print(f"\n{args.rows:,}-row x 9-column pandas table h5 ({os.path.getsize(src) / 2**20:.0f} "
          f"MiB) -> Parquet, {args.runs} alternating runs, {os.cpu_count()} cores")
    print(load())
    res = compare({
        "cp": (["cp", src, outs[0]], remover(outs[0])),
        "mlconv": ([*MLCONV, src, outs[1]], remover(outs[1])),
        "pandas read_hdf + to_parquet": ([PY, "-c", PANDAS, src, outs[2]], remover(outs[2])),
        "h5py + pyarrow by hand": ([PY, "-c", BY_HAND, src, outs[3]], remover(outs[3])),
    }, runs=args.runs)
    print(load())
    ml = res["mlconv"][0]
    print(f"mlconv / pandas {ml / res['pandas read_hdf + to_parquet'][0]:.2f}   "
          f"mlconv / by hand {ml / res['h5py + pyarrow by hand'][0]:.2f}   "
          f"mlconv peak RSS {res['mlconv'][1]:.0f} MiB")
    for p in [src] + outs:
        remover(p)()


def bench_tensor(tmp: str, args) -> None:
    src = os.path.join(tmp, "x.h5")
    run_function(__file__, "make_tensor", src, args.gib)
    out_cp, out_ml = os.path.join(tmp, "cp.h5"), os.path.join(tmp, "x.safetensors")
    print(f"\n{args.gib} GiB contiguous float32 h5 dataset -> safetensors")
    compare({
        "cp": (["cp", src, out_cp], remover(out_cp)),
        "mlconv": ([*MLCONV, src, out_ml], remover(out_ml)),
    }, runs=args.runs)


if __name__ == "__main__":
    main()
