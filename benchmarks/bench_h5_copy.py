"""HDF5 relayouts as kernel copies (issue 16): h5 <-> safetensors at 1 GiB, one tensor and
200 tensors, whole processes against ``cp`` of the same file in the same run, runs
alternated; then where the time goes besides the copy (imports, guard, walk, copy).

    python benchmarks/bench_h5_copy.py [--gib 1] [--runs 3] [--no-bytecode]

mlconv runs three ways: the guard's verdict cached (a second conversion of the same file),
the guard run cold (a fresh verdict folder each run) and the guard off (trusted file).
Bytecode caching is on for the children unless --no-bytecode (PYTHONDONTWRITEBYTECODE=1
makes every run compile mlconv's ~70 modules from source). The load average is printed
with each figure: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess

from bench_relayout import H5_READ, H5_WRITE
from harness import MLCONV, PY, compare, remover, run_function, run_once, tempdir

PEERS = {("safetensors", "hdf5"): H5_WRITE, ("hdf5", "safetensors"): H5_READ}  # one copy
EXT = {"safetensors": ".safetensors", "hdf5": ".h5"}

# phases of one h5 -> safetensors conversion, in one child (seconds on stdout)
PHASES = r"""
import os, sys, time
t0 = time.perf_counter()
import mlconv.cli  # noqa: F401  (what the CLI imports before it looks at a file)
t1 = time.perf_counter()
import h5py  # noqa: F401
t2 = time.perf_counter()
import ml_dtypes  # noqa: F401
t3 = time.perf_counter()
from mlconv.formats.hdf5 import guard
from mlconv.formats.base import ReadOptions
guard.check(sys.argv[1], ReadOptions())
t4 = time.perf_counter()
b = mlconv.open(sys.argv[1], trusted=True)
t5 = time.perf_counter()
mlconv.save(b, sys.argv[2])
t6 = time.perf_counter()
print(f"import mlconv.cli {t1-t0:.3f}  import h5py {t2-t1:.3f}  import ml_dtypes {t3-t2:.3f}"
      f"  guard child {t4-t3:.3f}  open+walk {t5-t4:.3f}  write+copy {t6-t5:.3f}")
"""


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def make_tensor(path: str, gib: float) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    n = int(gib * (1 << 30)) // 4 // 1024
    arr = np.empty((n, 1024), np.float32)
    for i in range(0, n, 1 << 16):
        arr[i:i + (1 << 16)] = np.float32(i)
    save_file({"x": arr}, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-bytecode", action="store_true")
    args = ap.parse_args()
    if not args.no_bytecode:
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = tempdir()
    j = lambda n: os.path.join(tmp, n)  # noqa: E731
    mlconv = [*MLCONV, "-q"]
    cache = j("verdicts")
    os.environ["MLCONV_CACHE_DIR"] = cache
    env = "/usr/bin/env"
    try:
        run_function(__file__, "make_tensor", j("one.safetensors"), args.gib)
        run_function(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  "bench_fast_edges.py"), "make_model", j("many.safetensors"),
                     args.gib)
        for stem in ("one", "many"):
            run_once(mlconv + [j(stem + ".safetensors"), j(stem + ".h5")])
        print(f"{args.gib} GiB float32, {args.runs} alternating runs, {os.cpu_count()} cores, "
              f"warm page cache, bytecode {'off' if args.no_bytecode else 'cached'}")
        for stem, what in (("one", "one tensor"), ("many", "200 tensors")):
            for a, b in (("hdf5", "safetensors"), ("safetensors", "hdf5")):
                src, out, dup = j(stem + EXT[a]), j("o" + EXT[b]), j("cp")
                print(f"\n{a} -> {b}, {what} ({load()} before)")
                cases = {"cp": (["cp", src, dup], remover(dup)),
                         "mlconv": (mlconv + [src, out], remover(out))}
                if a == "hdf5":
                    def cold(out=out):
                        remover(out)()
                        shutil.rmtree(cache, ignore_errors=True)
                    cases["mlconv, guard cold"] = (mlconv + [src, out], cold)
                    cases["mlconv, guard off"] = (
                        [env, "MLCONV_HDF5_GUARD=0"] + mlconv + [src, out], remover(out))
                cases["peer (h5py + safetensors)"] = ([PY, "-c", PEERS[(a, b)], src, j("p")],
                                                      remover(j("p")))
                compare(cases, runs=args.runs)
                print(f"  ({load()} after)")
            print(f"\nphases, h5 -> safetensors, {what} (guard cold, {load()}):")
            for _ in range(2):
                shutil.rmtree(cache, ignore_errors=True)
                out = subprocess.run([PY, "-c", PHASES, j(stem + ".h5"), j("o.safetensors")],
                                     capture_output=True, text=True, check=True).stdout
                print("  " + out.strip())
                remover(j("o.safetensors"))()
        print(f"\nbare imports ({load()}):")
        for code in ("pass", "import numpy", "import h5py", "import ml_dtypes",
                     "import mlconv.cli"):
            t = run_once([PY, "-c", code])[0]
            print(f"  python -c {code!r:<22} {t:.3f} s")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
