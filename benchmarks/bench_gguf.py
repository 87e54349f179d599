"""1 GiB of F32/F16/BF16 tensors: safetensors -> gguf and back, mlconv vs cp vs gguf-py.

    python benchmarks/bench_gguf.py [--gib 1] [--runs 5]

gguf-py's GGUFWriter is given memory maps of the safetensors payloads (the least memory a
user of it can ask for). Warm page cache for every case (runs alternate). Files live in
the system temp folder and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct

import numpy as np
from harness import MLCONV, PY, compare, remover, run_function, tempdir

# (safetensors dtype, bytes per element, share of the total)
PARTS = [("F32", 4, 0.5), ("F16", 2, 0.25), ("BF16", 2, 0.25)]
TENSORS_PER_DTYPE = 8


def make_safetensors(path: str, gib: float) -> None:
    total = int(gib * (1 << 30))
    header, sizes, off = {}, [], 0
    for code, width, share in PARTS:
        per = int(total * share) // TENSORS_PER_DTYPE // (1024 * width) * 1024 * width
        for i in range(TENSORS_PER_DTYPE):
            header[f"blk.{i}.{code.lower()}"] = {"dtype": code,
                                                 "shape": [per // width // 1024, 1024],
                                                 "data_offsets": [off, off + per]}
            sizes.append(per)
            off += per
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 4096)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        rng = np.random.default_rng(0)
        chunk = rng.integers(0, 1 << 16, 1 << 22, dtype=np.uint16).tobytes()  # 8 MiB
        for n in sizes:
            while n:
                f.write(chunk[:min(n, len(chunk))])
                n -= min(n, len(chunk))


PEER = """
import json, struct, sys
import numpy as np, gguf
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
kinds = {"F32": (np.float32, None), "F16": (np.float16, None),
         "BF16": (np.uint16, gguf.GGMLQuantizationType.BF16)}
w = gguf.GGUFWriter(dst, "bench")
for name, info in header.items():
    dtype, raw = kinds[info["dtype"]]
    begin, end = info["data_offsets"]
    arr = np.memmap(src, dtype, "r", 8 + n + begin, tuple(info["shape"]))
    w.add_tensor(name, arr, raw_dtype=raw)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = tempdir()
    try:
        src = os.path.join(tmp, "x.safetensors")
        run_function(__file__, "make_safetensors", src, args.gib)
        cp1, ml1, peer = (os.path.join(tmp, n) for n in ("cp1", "ml.gguf", "peer.gguf"))
        print(f"{args.gib} GiB F32/F16/BF16 safetensors -> gguf, {args.runs} alternating runs, "
              f"{os.cpu_count()} cores")
        compare({
            "cp": (["cp", src, cp1], remover(cp1)),
            "mlconv": ([*MLCONV, src, ml1], remover(ml1)),
            "gguf-py GGUFWriter (memmaps)": ([PY, "-c", PEER, src, peer], remover(peer)),
        }, runs=args.runs)
        os.unlink(peer) if os.path.exists(peer) else None
        if not os.path.exists(ml1):
            os.system(f"{PY} -m mlconv {src} {ml1}")
        cp2, back = os.path.join(tmp, "cp2"), os.path.join(tmp, "back.safetensors")
        print(f"\n{args.gib} GiB gguf -> safetensors")
        compare({
            "cp": (["cp", ml1, cp2], remover(cp2)),
            "mlconv": ([*MLCONV, ml1, back], remover(back)),
        }, runs=args.runs)
        if not os.path.exists(back):
            os.system(f"{PY} -m mlconv {ml1} {back}")
        check(src, ml1, back)
    finally:
        shutil.rmtree(tmp)


def check(src: str, out: str, back: str) -> None:
    """gguf-py reads mlconv's output as the source's bytes; the round trip is byte-exact."""
    import gguf

    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    reader = gguf.GGUFReader(out)
    for t in reader.tensors:
        begin, end = header[t.name]["data_offsets"]
        ref = np.memmap(src, np.uint8, "r", 8 + n + begin, (end - begin,))
        assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8)[-4096:], ref[-4096:])
    with open(back, "rb") as f:
        (m,) = struct.unpack("<Q", f.read(8))
    a = np.memmap(src, np.uint8, "r", 8 + n)
    b = np.memmap(back, np.uint8, "r", 8 + m)
    assert a.size == b.size and all(np.array_equal(a[i:i + (64 << 20)], b[i:i + (64 << 20)])
                                    for i in range(0, a.size, 64 << 20))
    print("checked: gguf-py reads the tensors; safetensors -> gguf -> safetensors exact")


if __name__ == "__main__":
    main()
