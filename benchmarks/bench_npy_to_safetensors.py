"""1 GiB float32 npy -> safetensors: mlconv vs safetensors.numpy.save_file(np.load) vs cp.

    python benchmarks/bench_npy_to_safetensors.py [--gib 1] [--runs 5]

Warm page cache for every case (runs alternate). Files live in the system temp folder and
are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
from harness import MLCONV, PY, compare, remover, run_function, tempdir


def make_npy(path: str, gib: float) -> None:
    n = int(gib * (1 << 30)) // 4
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n // 1024, 1024))
    step = 1 << 16
    for i in range(0, arr.shape[0], step):
        block = arr[i:i + step]
        block[...] = np.arange(block.size, dtype=np.float32).reshape(block.shape) + i
    arr.flush()
    del arr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = tempdir()
    try:
        src = os.path.join(tmp, "x.npy")
        run_function(__file__, "make_npy", src, args.gib)
        out_cp, out_ml, out_peer = (os.path.join(tmp, n) for n in
                                    ("cp.npy", "ml.safetensors", "peer.safetensors"))
        peer = ("import numpy as np, sys; from safetensors.numpy import save_file; "
                "save_file({'x': np.load(sys.argv[1])}, sys.argv[2])")
        print(f"{args.gib} GiB float32 npy -> safetensors, {args.runs} alternating runs, "
              f"{os.cpu_count()} cores")
        compare({
            "cp": (["cp", src, out_cp], remover(out_cp)),
            "mlconv": ([*MLCONV, src, out_ml], remover(out_ml)),
            "safetensors save_file(np.load)": ([PY, "-c", peer, src, out_peer],
                                               remover(out_peer)),
        }, runs=args.runs)
        from safetensors import safe_open
        with safe_open(out_ml, "numpy") as f:
            x = f.get_slice("x")
            ref = np.load(src, mmap_mode="r")
            assert x.get_shape() == list(ref.shape)
            rows = ref.shape[0]
            assert np.array_equal(x[rows - 3:rows], ref[rows - 3:])
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
