"""Every fast edge of the conversion graph (issue 6), whole processes, runs alternated:
a single 2 GiB float32 tensor and a ~1 GiB model of 200 tensors, each edge against ``cp``
of the same source file and against the code a user would write with the reference
libraries; then ``mlconv inspect`` of each 2 GiB file as a whole process.

    python benchmarks/bench_fast_edges.py [--gib 2] [--model-gib 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

from harness import MLCONV, PY, compare, remover, run_function, run_once, tempdir

PEERS = {
    ("npy", "safetensors"): "import sys, numpy as np; from safetensors.numpy import save_file; "
                            "save_file({'x': np.load(sys.argv[1])}, sys.argv[2])",
    ("safetensors", "npy"): "import sys, numpy as np; from safetensors.numpy import load_file; "
                            "np.save(sys.argv[2], next(iter(load_file(sys.argv[1]).values())))",
    ("safetensors", "hdf5"): "import sys, h5py; from safetensors.numpy import load_file\n"
                             "with h5py.File(sys.argv[2], 'w') as f:\n"
                             "    for k, v in load_file(sys.argv[1]).items(): f[k] = v\n",
    ("hdf5", "safetensors"): "import sys, h5py; from safetensors.numpy import save_file\n"
                             "out = {}\n"
                             "with h5py.File(sys.argv[1]) as f:\n"
                             "    f.visititems(lambda n, o: out.__setitem__(n, o[()]) "
                             "if hasattr(o, 'shape') else None)\n"
                             "save_file(out, sys.argv[2])\n",
    ("arrow", "npy"): "import sys, numpy as np, pyarrow.feather as f\n"
                      "t = f.read_table(sys.argv[1], memory_map=True)\n"
                      "np.save(sys.argv[2], t.column(0).combine_chunks().to_numpy_ndarray())\n",
}
EXT = {"npy": ".npy", "safetensors": ".safetensors", "hdf5": ".h5", "arrow": ".arrow"}


def make_tensor(path: str, gib: float) -> None:
    import numpy as np

    n = int(gib * (1 << 30)) // 4 // 1024
    arr = np.lib.format.open_memmap(path, "w+", np.float32, (n, 1024))
    for i in range(0, n, 1 << 16):
        arr[i:i + (1 << 16)] = np.float32(i)
    arr.flush()


def make_model(path: str, gib: float) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    per = int(gib * (1 << 30)) // 200 // 4 // 256 * 256
    tensors = {f"layer{i // 4}/w{i % 4}": rng.standard_normal(per, dtype=np.float32)
               .reshape(-1, 256) for i in range(200)}
    save_file(tensors, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--model-gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = tempdir()
    j = lambda n: os.path.join(tmp, n)  # noqa: E731
    mlconv = MLCONV
    try:
        # the single tensor in every source format, written by mlconv from one npy
        run_function(__file__, "make_tensor", j("x.npy"), args.gib)
        for fmt in ("safetensors", "hdf5", "arrow"):
            run_once(mlconv + [j("x.npy"), j("x" + EXT[fmt])])
        print(f"{args.gib} GiB single float32 tensor, {args.runs} alternating runs, "
              f"{os.cpu_count()} cores, warm page cache")
        for (a, b), peer in PEERS.items():
            src, out, ref, dup = j("x" + EXT[a]), j("o" + EXT[b]), j("p" + EXT[b]), j("cp")
            print(f"\n{a} -> {b}")
            compare({"cp": (["cp", src, dup], remover(dup)),
                     "mlconv": (mlconv + [src, out], remover(out)),
                     "peer (reference libraries)": ([PY, "-c", peer, src, ref], remover(ref))},
                    runs=args.runs)
        print("\nmlconv inspect, whole process (median of 5)")
        for fmt, ext in EXT.items():
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                run_once(mlconv + ["inspect", j("x" + ext)])
                times.append(time.perf_counter() - t0)
            print(f"  {fmt:<12} {statistics.median(times):.3f} s")
        for ext in EXT.values():
            remover(j("x" + ext))()
        run_function(__file__, "make_model", j("m.safetensors"), args.model_gib)
        run_once(mlconv + [j("m.safetensors"), j("m.h5")])
        print(f"\n{args.model_gib} GiB model, 200 float32 tensors")
        for (a, b) in (("safetensors", "hdf5"), ("hdf5", "safetensors")):
            src, out, ref, dup = j("m" + EXT[a]), j("o" + EXT[b]), j("p" + EXT[b]), j("cp")
            print(f"\n{a} -> {b}")
            compare({"cp": (["cp", src, dup], remover(dup)),
                     "mlconv": (mlconv + [src, out], remover(out)),
                     "peer (reference libraries)": ([PY, "-c", PEERS[(a, b)], src, ref],
                                                    remover(ref))}, runs=args.runs)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
