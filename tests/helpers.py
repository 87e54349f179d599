"""Reference-library writers and judges for the tests: mlconv never judges itself."""

import json
import struct

import ml_dtypes  # noqa: F401  (registers the numpy dtypes)
import numpy as np
import safetensors
from safetensors.numpy import save_file

from mlconv.dtypes import DType


def sample(dtype: DType, shape, seed=0) -> np.ndarray:
    """Values of every bit pattern the dtype allows (bool: 0/1), deterministic."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    if dtype is DType.bool:
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    if dtype is DType.string:
        return np.array([f"s{i}é" for i in range(n)], dtype="<U4").reshape(shape)
    if dtype is DType.bytes:
        return np.array([b"b%d" % i for i in range(n)], dtype="S3").reshape(shape)
    nd = dtype.numpy()
    if dtype.kind in ("datetime", "timedelta"):  # in every target's range (date32 days)
        return rng.integers(-(1 << 30), 1 << 30, n).astype(nd).reshape(shape)
    if dtype.is_subbyte:
        raw = rng.integers(0, 1 << dtype.bits, n, dtype=np.uint8)
    else:
        raw = rng.integers(0, 256, n * nd.itemsize, dtype=np.uint8)
    return raw.view(nd).reshape(shape)


def st_read(path):
    """(metadata, {name: (code, shape, bytes)}) as the safetensors library parses the file."""
    with open(path, "rb") as f:
        data = f.read()
    tensors = {name: (info["dtype"], tuple(info["shape"]), bytes(info["data"]))
               for name, info in safetensors.deserialize(data)}
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + n]).get("__metadata__")
    return meta, tensors


def st_write(path, tensors: dict, metadata=None):
    """safetensors written by the reference library where it can, else by hand (F4/F6)."""
    try:
        save_file(tensors, str(path), metadata=metadata)
        return
    except Exception:
        pass
    from mlconv.dtypes import from_numpy, to_safetensors
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        raw = payload(arr)
        header[name] = {"dtype": to_safetensors(from_numpy(arr.dtype)),
                        "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def payload(arr: np.ndarray) -> bytes:
    """The canonical bytes of an array: C order, little-endian, 4-bit types packed."""
    from mlconv.dtypes import from_numpy
    dt = from_numpy(arr.dtype)
    if dt.is_subbyte:
        raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8) & 0x0F
        if raw.size % 2:
            raw = np.append(raw, np.uint8(0))
        return (raw[0::2] | (raw[1::2] << 4)).astype(np.uint8).tobytes()
    le = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    return np.ascontiguousarray(arr, dtype=le).tobytes()


def cli_refuses(src, folder, targets, *args) -> str:
    """Converting ``src`` to each target format fails as users must see it: exit 1, one
    ``mlconv: error:`` line, no output file. Returns the last error line."""
    from click.testing import CliRunner

    from mlconv.cli import cli

    for ext in targets:
        dst = folder / f"refused.{ext}"
        res = CliRunner().invoke(cli, [str(src), str(dst), *args], catch_exceptions=False)
        assert res.exit_code == 1, res.output
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("mlconv: error: ")
        assert not dst.exists()
    return res.stderr

