"""Many files locally vs on Dask, and inspect of a big remote file (issue 15).

1. SHARDS HDF5 files (two float64 datasets sharing the first axis, ~MIB MiB each) into
   Parquet: ``mlconv 'in/*.h5' out/ --to parquet`` with ``--jobs 1``, ``--jobs 2`` and
   ``--dask local:2``, each a child process; wall time and peak RSS (the largest single
   process of the run's tree: the CLI or one worker, from RUSAGE_CHILDREN).
2. A GIB GiB safetensors object on moto's S3 server on loopback: ``mlconv inspect`` (bytes
   requested, counted by mlconv.storage) against s3fs + safetensors by hand: download and
   ``safe_open`` (what a script usually does), and a hand-written ranged header read.

Temp files in /tmp, deleted after. A benchmark, not a test: it prints and never fails.
The issue's sizes are 64 shards of 64 MiB and 1 GiB; smaller ones run in minutes:

    python benchmarks/bench_remote.py [--shards 64] [--mib 64] [--gib 1]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import time

from harness import PY
from harness import tempdir as _mkdtemp


class tempdir:  # noqa: N801 - a folder removed when the block ends
    def __enter__(self) -> str:
        self.path = _mkdtemp()
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


WRAP = ("import resource, subprocess, sys\n"
        "code = subprocess.run(sys.argv[1:]).returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(code)\n")


def run_tree(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB of the largest process of the tree) of ``cmd``: Linux
    carries each reaped descendant's peak up to its parent, so RUSAGE_CHILDREN of a wrapper
    sees the CLI and every worker process."""
    import subprocess

    t0 = time.perf_counter()
    p = subprocess.run([PY, "-c", WRAP, *cmd], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{cmd} failed: {p.stderr[-2000:]}")
    return elapsed, int(p.stderr.strip().splitlines()[-1]) / 1024


def make_shards(folder: str, shards: int, mib: int) -> None:
    import h5py
    import numpy as np

    rows = max(1, (mib << 20) // (8 * 9))  # x: 8 float64 columns, y: one
    rng = np.random.default_rng(0)
    x = rng.random((rows, 8))
    for i in range(shards):
        with h5py.File(os.path.join(folder, f"s{i:03d}.h5"), "w") as f:
            f["x"] = x
            f["y"] = np.arange(rows, dtype=np.float64) + i


def many(args) -> None:
    mlconv = os.path.join(os.path.dirname(PY), "mlconv")
    with tempdir() as tmp:
        src = os.path.join(tmp, "in")
        os.mkdir(src)
        make_shards(src, args.shards, args.mib)
        out = os.path.join(tmp, "out")
        total = sum(os.path.getsize(p) for p in glob.glob(os.path.join(src, "*.h5")))
        print(f"{args.shards} shards of ~{args.mib} MiB h5 -> parquet ({total >> 20} MiB)")

        def fresh():
            shutil.rmtree(out, ignore_errors=True)
            os.mkdir(out)

        cases = {"--jobs 1": ["--jobs", "1"], "--jobs 2": ["--jobs", "2"],
                 "--dask local:2": ["--dask", "local:2"]}
        results = {}
        for name, extra in cases.items():
            cmd = [mlconv, os.path.join(src, "*.h5"), out + "/", "--to", "parquet", "-q",
                   *extra]
            fresh()
            results[name] = run_tree(cmd)
            outputs = sorted(os.listdir(out))
            results[name] += (outputs == sorted(f"s{i:03d}.parquet"
                                                for i in range(args.shards)),)
        base = results["--jobs 1"][0]
        print(f"{'case':<16} {'seconds':>8} {'speed-up':>9} {'peak RSS MiB':>13}  outputs")
        for name, (t, rss, ok) in results.items():
            print(f"{name:<16} {t:8.2f} {base / t:9.2f} {rss:13.0f}  {'all' if ok else 'MISSING'}")


def inspect_remote(args) -> None:
    import numpy as np
    import s3fs
    from moto.server import ThreadedMotoServer
    from safetensors import safe_open
    from safetensors.numpy import save_file

    import mlconv
    from mlconv import storage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        fs = s3fs.S3FileSystem(config_kwargs={"read_timeout": 900})
        fs.mkdir("bench")
        n = int(args.gib * (1 << 30)) // 4 // 64
        with tempdir() as tmp:
            path = os.path.join(tmp, "model.safetensors")
            block = np.arange(n, dtype=np.float32)
            save_file({f"layer{i:02d}": block for i in range(64)}, path)
            with open(path, "rb") as f:  # one PUT: moto's multipart assembly is slow
                fs.pipe_file("bench/model.safetensors", f.read())
            size = os.path.getsize(path)
            print(f"\ninspect of a {size / (1 << 30):.2f} GiB safetensors object "
                  "(64 tensors) on moto S3, loopback")
            rows = []
            storage.STATS.update(requests=0, bytes=0)
            t0 = time.perf_counter()
            manifest = mlconv.inspect("s3://bench/model.safetensors")
            rows.append(("mlconv inspect", time.perf_counter() - t0, storage.STATS["bytes"],
                         storage.STATS["requests"], len(manifest["entries"])))
            t0 = time.perf_counter()
            local = os.path.join(tmp, "copy.safetensors")
            fs.get_file("bench/model.safetensors", local)
            with safe_open(local, "np") as f:
                keys = list(f.keys())
            rows.append(("s3fs get + safe_open", time.perf_counter() - t0, size, None,
                         len(keys)))
            t0 = time.perf_counter()
            head = fs.cat_file("bench/model.safetensors", start=0, end=8)
            hlen = int.from_bytes(head, "little")
            import json

            header = json.loads(fs.cat_file("bench/model.safetensors", start=8,
                                            end=8 + hlen))
            rows.append(("s3fs ranged header by hand", time.perf_counter() - t0, 8 + hlen, 2,
                         len(header) - ("__metadata__" in header)))
        print(f"{'case':<28} {'seconds':>8} {'bytes fetched':>14} {'requests':>9} {'entries':>8}")
        for name, t, nbytes, req, entries in rows:
            print(f"{name:<28} {t:8.3f} {nbytes:14,d} {req if req is not None else '-':>9} "
                  f"{entries:8d}")
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--skip-many", action="store_true")
    args = ap.parse_args()
    print("load average before: %.2f %.2f %.2f (%d cores)" % (*os.getloadavg(),
                                                            os.cpu_count()))
    if not args.skip_many:
        many(args)
    inspect_remote(args)
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
