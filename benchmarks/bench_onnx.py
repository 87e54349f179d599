"""ONNX benchmark (issue 5): a ~1 GiB model of 200 float32 tensors, safetensors -> ONNX with
external data and back, against the reference path (``numpy_helper.from_array`` +
``onnx.save_model(save_as_external_data=True)``; ``onnx.load`` + ``numpy_helper.to_array``
+ ``safetensors.numpy.save_file``) and ``cp``; whole processes, runs alternated.

    python benchmarks/bench_onnx.py [--gib 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil

from harness import PY, compare, remover, run_function, run_once, tempdir

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = tempdir()
    j = lambda n: os.path.join(tmp, n)  # noqa: E731
    try:
        src = j("m.safetensors")
        run_function("bench_fast_edges.py", "make_model", src, args.gib)
        print(f"{args.gib} GiB, 200 float32 tensors, {args.runs} alternating runs")
        print("\nsafetensors -> ONNX with external data")
        compare({
            "cp": (["cp", src, j("cp")], remover(j("cp"))),
            "mlconv": ([PY, "-m", "mlconv", src, j("ml.onnx"), "--external-data"],
                       remover(j("ml.onnx"), j("ml.onnx.data"))),
            "numpy_helper + onnx.save_model": ([PY, "-c", EXPORT, src, j("ref.onnx")],
                                               remover(j("ref.onnx"), j("ref.onnx.data"))),
        }, runs=args.runs)
        run_once([PY, "-m", "mlconv", src, j("ml.onnx"), "--external-data", "--force"])
        print("\nONNX with external data -> safetensors")
        compare({
            "cp": (["cp", j("ml.onnx.data"), j("cp")], remover(j("cp"))),
            "mlconv": ([PY, "-m", "mlconv", j("ml.onnx"), j("back.safetensors")],
                       remover(j("back.safetensors"))),
            "onnx.load + to_array + save_file": ([PY, "-c", IMPORT, j("ml.onnx"),
                                                  j("ref.safetensors")],
                                                 remover(j("ref.safetensors"))),
        }, runs=args.runs)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
