"""Mutation fuzzer for mlconv's readers: valid seed files, mutated (bit flips, byte runs,
overwritten integers, cuts, splices), read as ``inspect``/``convert``/``validate --deep``
would. A finding is anything but an ``MlconvError``: another exception, or a case slower
than ``--timeout`` seconds.

By hand, for minutes per parser::

    python -m tests.fuzz.harness npy --seconds 300 [--seed N]
    python -m tests.fuzz.harness all --seconds 120

The suite runs a short hypothesis-driven smoke of each target (tests/fuzz/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import struct
import sys
import tempfile
import time
import traceback


def _seed_npy():
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.arange(24, dtype="<f4").reshape(2, 3, 4))
    return buf.getvalue()


def _seed_npy_structured():
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S3")]))
    return buf.getvalue()


def _seed_npz():
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.arange(10), b=np.ones((2, 2), np.float32))
    return buf.getvalue()


def _seed_safetensors():
    import numpy as np
    from safetensors.numpy import save

    return save({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                 "b": np.ones(4, np.int8)}, metadata={"k": "v"})


def _seed_onnx():
    import numpy as np
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "i")]
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=inits))
    model.metadata_props.add(key="k", value="v")
    return model.SerializeToString()


def _seed_parquet(layout):
    def make():
        import numpy as np

        import mlconv

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s.parquet")
            mlconv.save({"a": np.arange(8, dtype=np.float32).reshape(4, 2),
                         "b": np.arange(4, dtype=np.int16)}, path, options={"layout": layout})
            with open(path, "rb") as f:
                return f.read()
    return make


def _seed_arrow():
    import numpy as np
    import pyarrow as pa
    import pyarrow.feather as feather

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.arrow")
        feather.write_feather(pa.table({"x": np.arange(5), "s": ["a", "b", "c", "d", "e"]}),
                              path, compression="uncompressed")
        with open(path, "rb") as f:
            return f.read()


def _seed_hdf5():
    import h5py
    import numpy as np

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.h5")
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(20, dtype=np.float32)
            f.create_dataset("c", data=np.arange(100), chunks=(10,), compression="gzip")
            f["g/s"] = np.array([b"ab", b"cd"])
            f.attrs["k"] = "v"
        with open(path, "rb") as f:
            return f.read()


def _seed_gguf():
    """By hand (no gguf-py needed): typed key-values, string and nested arrays, an F32 and a
    Q8_0 tensor; converting it dequantizes (the harness converts with allow_lossy)."""
    def text(t):
        return struct.pack("<Q", len(t)) + t

    kvs = (text(b"general.architecture") + struct.pack("<I", 8) + text(b"llama")
           + text(b"a.n") + struct.pack("<II", 4, 7)
           + text(b"a.toks") + struct.pack("<IIQ", 9, 8, 2) + text(b"x") + text(b"yz")
           + text(b"a.f") + struct.pack("<IIQ2f", 9, 6, 2, 0.5, -1.0)
           + text(b"a.nest") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ2h", 3, 2, 1, 2))
    infos = (text(b"w") + struct.pack("<I2QIQ", 2, 2, 4, 0, 0)
             + text(b"q") + struct.pack("<I1QIQ", 1, 32, 8, 32))
    head = b"GGUF" + struct.pack("<IQQ", 3, 2, 5) + kvs + infos
    head += b"\0" * (-len(head) % 32)
    data = struct.pack("<8f", *range(8)) + b"\0" * 0 + struct.pack("<e", 0.25) + bytes(range(32))
    return head + data


# name: (seed maker, file suffix)
TARGETS = {
    "npy": (_seed_npy, ".npy"),
    "npy_structured": (_seed_npy_structured, ".npy"),
    "npz": (_seed_npz, ".npz"),
    "safetensors": (_seed_safetensors, ".safetensors"),
    "onnx": (_seed_onnx, ".onnx"),
    "parquet_entries": (_seed_parquet("entries"), ".parquet"),
    "parquet_rows": (_seed_parquet("rows"), ".parquet"),
    "arrow": (_seed_arrow, ".arrow"),
    "hdf5": (_seed_hdf5, ".h5"),
    "gguf": (_seed_gguf, ".gguf"),
}

_INTS = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 31, 1 << 32,
         (1 << 63) - 1, 1 << 62, (1 << 64) - 1]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of ``data``."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if not b:
            b = bytearray(data)
        pos = rng.randrange(len(b))
        if op == 0:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos] = rng.randrange(256)
        elif op == 2:  # an integer that means something to a parser
            width = rng.choice((1, 2, 4, 8))
            v = rng.choice(_INTS) & ((1 << (8 * width)) - 1)
            b[pos:pos + width] = v.to_bytes(width, rng.choice(("little", "big")))
        elif op == 3:
            del b[pos:]
        elif op == 4:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 5:  # duplicate a run (repeated names, fields, entries)
            end = min(len(b), pos + rng.randint(1, 64))
            b[pos:pos] = b[pos:end]
        else:  # digits in text headers (npy, safetensors JSON)
            digits = [i for i in range(len(b[:4096])) if 48 <= b[i] <= 57]
            if digits:
                i = rng.choice(digits)
                b[i:i + 1] = str(rng.choice(_INTS)).encode()
    return bytes(b)


def run_case(data: bytes, suffix: str, folder: str) -> None:
    """Read ``data`` as mlconv would (inspect, read all, convert, validate deep); raise
    whatever mlconv raises."""
    import mlconv
    from mlconv.errors import MlconvError

    path = os.path.join(folder, "case" + suffix)
    with open(path, "wb") as f:
        f.write(data)
    try:
        with mlconv.open(path) as b:
            for entry in b.values():
                if entry.kind == "table":
                    for _ in entry.batches(1024):
                        pass
                else:
                    for _ in entry.chunks(1 << 16):
                        pass
        out = os.path.join(folder, "out.safetensors")
        mlconv.convert(path, out, overwrite=True, allow_lossy=True)
    except MlconvError:
        pass
    mlconv.validate(path, deep=True)  # reports problems, never raises for a bad file


class Slow(Exception):
    pass


def _alarm(*_):
    raise Slow()


def _child(data: bytes, suffix: str, folder: str, timeout: int, w: int) -> None:
    """In a forked child: run one case, report through pipe ``w``, never return."""
    from mlconv.errors import MlconvError

    code = 0
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        run_case(data, suffix, folder)
    except MlconvError:
        pass
    except Slow:
        os.write(w, f"slow|> {timeout} s".encode())
        code = 3
    except BaseException as e:  # noqa: BLE001 - every other exception is a finding
        where = traceback.extract_tb(e.__traceback__)[-1]
        msg = f"{type(e).__name__}|{str(e)[:200]} at {where.filename}:{where.lineno}"
        os.write(w, msg.encode("utf-8", "replace"))
        code = 3
    os._exit(code)


def warm(name: str) -> tuple[bytes, str]:
    """(seed bytes, suffix) of target ``name``, read once in this process first, so forked
    children inherit every module imported (else each child imports pyarrow anew)."""
    from mlconv.errors import MlconvError

    make, suffix = TARGETS[name]
    base = make()
    with tempfile.TemporaryDirectory() as folder:
        try:
            run_case(base, suffix, folder)
        except MlconvError:
            pass
    return base, suffix


def run_isolated(data: bytes, suffix: str, folder: str, timeout: int = 20):
    """(kind, what) of a finding for one case run in a forked child, or None."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(data, suffix, folder, timeout, w)
    os.close(w)
    # the child's alarm cannot interrupt a library stuck in C: the parent enforces it
    deadline = time.monotonic() + timeout + 5
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang", f"no answer within {timeout + 5} s (stuck in a library?)"
        time.sleep(0.002)
    with os.fdopen(r, "rb") as pipe:
        report = pipe.read().decode("utf-8", "replace")
    if os.WIFSIGNALED(status):
        return "crash", f"killed by signal {os.WTERMSIG(status)}"
    if report:
        return tuple(report.split("|", 1))
    return None


def fuzz(name: str, seconds: float, seed: int, timeout: int = 20, out=sys.stdout) -> dict:
    """Run target ``name`` for ``seconds``; returns {"iterations", "findings": [...]}.
    Each case runs in a forked child, so a crash in a library (a signal, a C++ abort) is
    a finding too, not the end of the run."""
    base, suffix = warm(name)
    rng = random.Random(seed)
    findings: list[dict] = []
    kinds: set = set()
    n = 0
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as folder:
        while time.monotonic() < deadline:
            data = mutate(base, rng)
            n += 1
            found = run_isolated(data, suffix, folder, timeout)
            if found is None:
                continue
            kind, what = found
            key = (kind, what.rsplit(" at ", 1)[-1])
            if key not in kinds:
                kinds.add(key)
                findings.append(_finding(name, data, kind, what))
                print(f"[{name}] finding: {kind}: {what}", file=out, flush=True)
    return {"target": name, "iterations": n, "findings": findings}


def _finding(name, data, kind, what) -> dict:
    keep = os.path.join(tempfile.gettempdir(), f"mlconv-fuzz-{name}-{kind}-"
                        f"{abs(hash(data)) % 10**8}")
    with open(keep, "wb") as f:
        f.write(data)
    return {"kind": kind, "what": what, "file": keep}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", choices=[*TARGETS, "all"])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--timeout", type=int, default=20)
    a = p.parse_args(argv)
    # every case already runs in a forked child (a crash is a finding, not the end), so
    # the HDF5 guard's own child per file only slows the search; MLCONV_HDF5_GUARD=1 keeps it
    os.environ.setdefault("MLCONV_HDF5_GUARD", "0")
    seed = a.seed if a.seed is not None else struct.unpack("<I", os.urandom(4))[0]
    names = list(TARGETS) if a.target == "all" else [a.target]
    total = 0
    for name in names:
        res = fuzz(name, a.seconds, seed, a.timeout)
        total += len(res["findings"])
        print(f"{name}: {res['iterations']} iterations, {len(res['findings'])} findings "
              f"(seed {seed})")
        for f in res["findings"]:
            print(f"  {f['kind']}: {f['what']}  [{f['file']}]")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
