"""ONNX benchmark (issues 5, 16): ~1 GiB of float32 as one tensor and as 200 tensors,
safetensors -> ONNX with external data and back, against ``cp`` of the same bytes and the
onnx package's own path (``numpy_helper.from_array`` + ``onnx.save_model(...,
save_as_external_data=True)``; ``onnx.load`` + ``numpy_helper.to_array`` +
``safetensors.numpy.save_file``); then the same with the bytes embedded in the .onnx
(raw_data, under protobuf's 2 GiB cap) -> safetensors. Whole processes, runs alternated,
files in a temp folder under /tmp, deleted after. The machine is shared: the load average
is printed before and after.

    python benchmarks/bench_onnx.py [--gib 1] [--runs 3] [--no-peer]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil

from harness import MLCONV, PY, compare, remover, run_function, run_once, tempdir

EXPORT = """
import sys, onnx
from onnx import helper, numpy_helper
from safetensors.numpy import load_file
inits = [numpy_helper.from_array(v, k) for k, v in load_file(sys.argv[1]).items()]
outs = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
m = helper.make_model(helper.make_graph([], "g", [], outs, initializer=inits))
onnx.save_model(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True,
                location=sys.argv[2].rsplit("/", 1)[1] + ".data", size_threshold=0)
"""
IMPORT = """
import sys, onnx
from onnx import numpy_helper
from safetensors.numpy import save_file
m = onnx.load(sys.argv[1])
save_file({t.name: numpy_helper.to_array(t) for t in m.graph.initializer}, sys.argv[2])
"""


def make_model(path: str, gib: float, count: int) -> None:
    """``count`` float32 tensors of ``gib`` GiB in all (rows of 256), as safetensors."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    per = int(gib * (1 << 30)) // count // 4 // 256 * 256
    save_file({f"layer{i // 4}/w{i % 4}": rng.standard_normal(per, dtype=np.float32)
               .reshape(-1, 256) for i in range(count)}, path)


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _side(folder: str, model: str) -> str:
    (data,) = glob.glob(os.path.join(folder, os.path.basename(model) + ".*.data"))
    return data


def _row(label: str, got: dict, peer: str | None) -> str:
    cp, ml = got["cp"][0], got["mlconv"][0]
    vs = f"{ml / got[peer][0]:.2f}" if peer else "-"
    peer_rss = f"{got[peer][1]:.0f}" if peer else "-"
    return f"| {label} | {ml / cp:.2f} | {vs} | {got['mlconv'][1]:.0f} | {peer_rss} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="skip the onnx package's path")
    args = ap.parse_args()
    tmp = tempdir()
    j = lambda n: os.path.join(tmp, n)  # noqa: E731
    ml = MLCONV
    rows = []
    print(f"{args.gib} GiB float32, {args.runs} alternating runs; {_load()}")
    try:
        for count in (1, 200):
            src = j(f"m{count}.safetensors")
            run_function(__file__, "make_model", src, args.gib, count)
            print(f"\n{count} tensor(s): safetensors -> ONNX with external data")
            cases = {
                "cp": (["cp", src, j("cp")], remover(j("cp"))),
                "mlconv": (ml + [src, j("ml.onnx"), "--external-data", "--force"],
                           lambda: [os.unlink(p) for p in glob.glob(j("ml.onnx*"))]),
            }
            if not args.no_peer:
                cases["onnx package"] = ([PY, "-c", EXPORT, src, j("ref.onnx")],
                                         remover(j("ref.onnx"), j("ref.onnx.data")))
            got = compare(cases, runs=args.runs)
            rows.append(_row(f"safetensors → ONNX external data, {count}", got,
                             None if args.no_peer else "onnx package"))
            run_once(ml + [src, j("ml.onnx"), "--external-data", "--force"])
            data = _side(tmp, j("ml.onnx"))
            print(f"\n{count} tensor(s): ONNX with external data -> safetensors")
            cases = {
                "cp": (["cp", data, j("cp")], remover(j("cp"))),
                "mlconv": (ml + [j("ml.onnx"), j("back.safetensors")],
                           remover(j("back.safetensors"))),
            }
            if not args.no_peer:
                cases["onnx package"] = ([PY, "-c", IMPORT, j("ml.onnx"), j("ref.safetensors")],
                                         remover(j("ref.safetensors")))
            got = compare(cases, runs=args.runs)
            rows.append(_row(f"ONNX external data → safetensors, {count}", got,
                             None if args.no_peer else "onnx package"))
            for p in glob.glob(j("ml.onnx*")):
                os.unlink(p)
            if args.gib < 2:  # embedded raw_data: memory-mapped where it lies, kernel-copied
                run_once(ml + [src, j("in.onnx")])
                print(f"\n{count} tensor(s): ONNX with raw_data -> safetensors")
                cases = {
                    "cp": (["cp", j("in.onnx"), j("cp")], remover(j("cp"))),
                    "mlconv": (ml + [j("in.onnx"), j("back.safetensors")],
                               remover(j("back.safetensors"))),
                }
                if not args.no_peer:
                    cases["onnx package"] = ([PY, "-c", IMPORT, j("in.onnx"),
                                              j("ref.safetensors")], remover(j("ref.safetensors")))
                got = compare(cases, runs=args.runs)
                rows.append(_row(f"ONNX raw_data → safetensors, {count}", got,
                                 None if args.no_peer else "onnx package"))
                os.unlink(j("in.onnx"))
            os.unlink(src)
    finally:
        shutil.rmtree(tmp)
    print(f"\n{_load()}\n")
    print(f"| {args.gib} GiB conversion, tensors | mlconv ÷ cp | mlconv ÷ onnx package "
          "| mlconv RSS MiB | peer RSS MiB |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
