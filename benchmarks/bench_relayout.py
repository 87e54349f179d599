"""Issue 16's table in one run: every byte-relayout conversion at 1 GiB (one tensor and 200
tensors) against ``cp`` of the same source and against the script a user would write with the
reference libraries; whole processes, runs alternated, medians; then start-up figures (the
HDF5 guard, inspect of small files). Prints one table so the next change can be compared.

    python benchmarks/bench_relayout.py [--gib 1] [--runs 3] [--only h5]

Run it with bytecode caching on (unset PYTHONDONTWRITEBYTECODE): an installed wheel has
its .pyc files, and compiling mlconv's modules on every start costs about 0.3 s.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil

from harness import MLCONV, PY, compare, remover, run_function, run_once, tempdir

H5_READ = ("import sys, h5py; from safetensors.numpy import save_file\n"
           "out = {}\n"
           "with h5py.File(sys.argv[1]) as f:\n"
           "    f.visititems(lambda n, o: out.__setitem__(n, o[()]) "
           "if isinstance(o, h5py.Dataset) else None)\n"
           "save_file(out, sys.argv[2])\n")
H5_WRITE = ("import sys, h5py; from safetensors.numpy import load_file\n"
            "with h5py.File(sys.argv[2], 'w') as f:\n"
            "    for k, v in load_file(sys.argv[1]).items(): f[k] = v\n")
ONNX_READ = ("import sys, onnx; from onnx import numpy_helper\n"
             "from safetensors.numpy import save_file\n"
             "m = onnx.load(sys.argv[1])\n"
             "save_file({t.name: numpy_helper.to_array(t) for t in m.graph.initializer}, "
             "sys.argv[2])\n")
ONNX_WRITE = ("import sys, onnx; from onnx import helper, numpy_helper\n"
              "from safetensors.numpy import load_file\n"
              "inits = [numpy_helper.from_array(v, k) for k, v in load_file(sys.argv[1]).items()]\n"
              "outs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) "
              "for t in inits]\n"
              "m = helper.make_model(helper.make_graph([], 'g', [], outs, initializer=inits))\n"
              "onnx.save_model(m, sys.argv[2], save_as_external_data=True, "
              "all_tensors_to_one_file=True, location=sys.argv[2].rsplit('/', 1)[1] + '.data', "
              "size_threshold=0)\n")
NPZ_WRITE = ("import sys, numpy as np; from safetensors.numpy import load_file\n"
             "np.savez(sys.argv[2], **load_file(sys.argv[1]))\n")
NPY_READ = ("import sys, numpy as np; from safetensors.numpy import save_file\n"
            "save_file({'x': np.load(sys.argv[1])}, sys.argv[2])\n")
NPY_WRITE = ("import sys, numpy as np; from safetensors.numpy import load_file\n"
             "np.save(sys.argv[2], next(iter(load_file(sys.argv[1]).values())))\n")

# (label, source ext, target ext, the peer's script)
PAIRS = [
    ("h5 (contiguous) -> safetensors", ".h5", ".safetensors", H5_READ),
    ("safetensors -> h5", ".safetensors", ".h5", H5_WRITE),
    ("ONNX external data -> safetensors", ".onnx", ".safetensors", ONNX_READ),
    ("safetensors -> ONNX external data", ".safetensors", ".onnx", ONNX_WRITE),
    ("safetensors -> npz", ".safetensors", ".npz", NPZ_WRITE),
    ("npy -> safetensors", ".npy", ".safetensors", NPY_READ),
    ("safetensors -> npy", ".safetensors", ".npy", NPY_WRITE),
]

FLAGS = {".onnx": ["--external-data"]}  # the peer writes external data at every size


def make(path: str, gib: float, count: int) -> None:
    """``count`` float32 tensors, ``gib`` GiB in all, as safetensors (or npy for one)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    per = int(gib * (1 << 30)) // count // 4 // 256 * 256
    if path.endswith(".npy"):
        arr = np.lib.format.open_memmap(path, "w+", np.float32, (per // 256, 256))
        for i in range(0, per // 256, 1 << 16):
            arr[i:i + (1 << 16)] = rng.standard_normal((min(1 << 16, per // 256 - i), 256),
                                                       dtype=np.float32)
        arr.flush()
        return
    save_file({f"layer{i // 4}.w{i % 4}": rng.standard_normal(per, dtype=np.float32)
               .reshape(-1, 256) for i in range(count)}, path)


def _fresh_dir(path: str):
    def clean():
        shutil.rmtree(path, ignore_errors=True)
        os.mkdir(path)
    return clean


def _outputs(path: str):
    """Removes an output and its ONNX side files: the peer's ``X.data`` and mlconv's
    ``X.<hex>.data`` (a fresh name per write; left behind once the model is deleted)."""
    def clean():
        side = glob.glob(glob.escape(path) + ".*.data")
        remover(path, path + ".data", os.path.splitext(path)[0] + ".onnx.data", *side)()
    return clean


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="", help="run only pairs whose label contains this")
    args = ap.parse_args()
    tmp = tempdir()
    j = lambda n: os.path.join(tmp, n)  # noqa: E731
    mlconv = MLCONV
    rows = []
    try:
        for count in (1, 200):
            base = j(f"m{count}")
            run_function(__file__, "make", base + ".safetensors", args.gib, count)
            if count == 1:
                run_function(__file__, "make", base + ".npy", args.gib, 1)
            for ext in (".h5", ".onnx"):
                flags = ["--force", *FLAGS.get(ext, [])]
                run_once(mlconv + [base + ".safetensors", base + ext, *flags])
            for label, src_ext, dst_ext, peer in PAIRS:
                one_only = label.startswith("npy ") or label.endswith("-> npy")
                if args.only not in label or (one_only and count != 1):
                    continue
                src, out, ref, dup = base + src_ext, j("o" + dst_ext), j("p" + dst_ext), j("cp")
                side = sorted(glob.glob(glob.escape(src) + ".*"))  # ONNX external data
                got = compare({"cp": (["cp", src, *side, dup], _fresh_dir(dup)),
                               "mlconv": (mlconv + [src, out, "--force"] + FLAGS.get(dst_ext, []),
                                          _outputs(out)),
                               "peer": ([PY, "-c", peer, src, ref], _outputs(ref))}, args.runs,
                              quiet=True)
                rows.append((label, count, got))
                print(f"  measured {label}, {count} tensor(s)", flush=True)
                _outputs(out)()
                _outputs(ref)()
            for ext in (".safetensors", ".npy", ".h5", ".onnx"):
                _outputs(base + ext)()
                remover(base + ".onnx.data", base + ".data")()
        startup = _startup(j, mlconv, args.runs) if not args.only else []
    finally:
        shutil.rmtree(tmp)
    load = os.getloadavg()[0]
    print(f"\n{args.gib} GiB, float32, medians of {args.runs} alternated runs, "
          f"{os.cpu_count()} cores, load average {load:.1f}, warm page cache")
    print("÷ cp: of the medians; paired: median over rounds of mlconv ÷ cp in the same "
          "round; best: of each side's fastest run (noise only adds time); CPU: of the "
          "median user + system seconds")
    print(f"{'conversion':<36} {'tensors':>7} {'cp s':>6} {'mlconv s':>8} {'÷ cp':>6} "
          f"{'paired':>6} {'best':>5} {'CPU':>5} {'peer s':>7} {'÷ peer':>7} {'RSS MiB':>8} "
          f"{'peer RSS':>8}")
    for label, count, got in rows:
        (cp, _, cp_best, _, cp_cpu), (m, mr, m_best, m_paired, m_cpu), (p, pr, *_) = \
            got["cp"], got["mlconv"], got["peer"]
        print(f"{label:<36} {count:>7} {cp:>6.2f} {m:>8.2f} {m / cp:>6.2f} {m_paired:>6.2f} "
              f"{m_best / cp_best:>5.2f} {m_cpu / max(cp_cpu, 0.01):>5.2f} {p:>7.2f} {m / p:>7.2f} "
              f"{mr:>8.0f} {pr:>8.0f}")
    for label, a, b in startup:
        print(f"{label:<52} {a:>6.3f} s  ÷ {b:.3f} s = {a / b:.2f}")


def _startup(j, mlconv, runs):
    """Whole-process start-up: the guarded inspect of a small h5 against the unguarded
    one, and inspect of small npy/safetensors against the bare library read."""
    import subprocess

    small = j("small")
    subprocess.run([PY, "-c", "import sys, numpy as np, h5py\n"
                    "from safetensors.numpy import save_file\n"
                    "x = np.zeros((100, 100), np.float32)\n"
                    "np.save(sys.argv[1] + '.npy', x); save_file({'x': x}, sys.argv[1] + "
                    "'.safetensors')\n"
                    "with h5py.File(sys.argv[1] + '.h5', 'w') as f: f['x'] = x\n", small],
                   check=True)
    cache = j("cache")
    env_guard = ["env", "MLCONV_HDF5_GUARD=1", f"MLCONV_CACHE_DIR={cache}"]
    env_plain = ["env", "MLCONV_HDF5_GUARD=0"]
    got = compare({
        "guarded": (env_guard + mlconv + ["inspect", small + ".h5"], lambda: shutil.rmtree(
            cache, ignore_errors=True)),
        "unguarded": (env_plain + mlconv + ["inspect", small + ".h5"], None),
        "npy": (mlconv + ["inspect", small + ".npy"], None),
        "np.load": ([PY, "-c", f"import numpy as np; np.load({small + '.npy'!r})"], None),
        "st": (mlconv + ["inspect", small + ".safetensors"], None),
        "safe_open": ([PY, "-c", "from safetensors import safe_open\n"
                       f"with safe_open({small + '.safetensors'!r}, 'np') as f: list(f.keys())"],
                      None),
    }, max(runs, 5), quiet=True)
    return [("mlconv inspect small.h5: guarded (no verdict) ÷ unguarded", got["guarded"][0],
             got["unguarded"][0]),
            ("mlconv inspect small.npy ÷ python -c np.load", got["npy"][0], got["np.load"][0]),
            ("mlconv inspect small.safetensors ÷ safe_open keys", got["st"][0],
             got["safe_open"][0])]


if __name__ == "__main__":
    main()
