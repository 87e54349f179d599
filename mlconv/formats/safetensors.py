"""safetensors: an 8-byte header length, a JSON header, then tensor bytes.

We parse the header ourselves (as strictly as the reference library: offsets in bounds,
contiguous, no overlap, sizes = shape x dtype bits, every byte covered) and memory-map the
data. The writer pads the header with spaces so the data section starts at 4 KiB.
"""

from __future__ import annotations

import json
import os
import struct

from .. import dtypes as D
from ..errors import FormatError, UnsupportedError
from ..fileio import read_exact
from ..model import Bundle, Tensor
from ..sources import FileMap, FileSource
from .base import ALIGN, Capabilities, Format

MAX_HEADER = 100_000_000  # the reference library's own cap


def _no_duplicates(pairs):
    out = dict(pairs)  # in C: a million entries must not cost a Python loop each
    if len(out) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r}")
            seen.add(k)
    return out


class Entry:
    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name, dtype, shape, begin, end):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end


def read_header(path: str, size: int):
    """(metadata, [Entry], data_start) of a checked safetensors header."""
    if size < 8:
        raise FormatError(f"truncated file: {size} bytes, the header length needs 8", path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", read_exact(f, 8, path, "header length"))
        if n > MAX_HEADER:
            raise FormatError(f"header length {n} exceeds the {MAX_HEADER}-byte cap", path)
        if 8 + n > size:
            raise FormatError(f"header length {n} runs past the end of the "
                              f"{size}-byte file", path)
        raw = read_exact(f, n, path, "header")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"header is not valid JSON: {e}", path) from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object", path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FormatError("__metadata__ must map strings to strings", path)
    data_start, data_len = 8 + n, size - 8 - n
    entries = [_entry(name, info, path) for name, info in header.items()]
    outside = [e.name for e in entries if e.end > data_len]
    if outside:  # all of them: a truncated download names every tensor it cut off
        shown = ", ".join(outside[:20]) + (f", ... ({len(outside)} in all)"
                                           if len(outside) > 20 else "")
        raise FormatError(f"truncated: the data section has {data_len} bytes; "
                          f"{len(outside)} tensor(s) lie past its end: {shown}", path,
                          outside[0] if len(outside) == 1 else None)
    expected = 0
    for e in sorted(entries, key=lambda e: (e.begin, e.end)):
        if e.begin != expected:
            what = "overlaps another tensor" if e.begin < expected else "leaves a gap before it"
            raise FormatError(f"tensor data {what} (offset {e.begin}, expected {expected})",
                              path, e.name)
        expected = e.end
    if expected != data_len:
        raise FormatError(f"tensors cover {expected} of the {data_len} data bytes", path)
    return metadata, entries, data_start


def _entry(name, info, path) -> Entry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise FormatError("tensor entry needs exactly dtype, shape and data_offsets",
                          path, name)
    try:
        dtype = D.from_safetensors(info["dtype"])
    except UnsupportedError as e:
        raise FormatError(e.message, path, name) from None
    shape, offs = info["shape"], info["data_offsets"]
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise FormatError(f"invalid shape {shape!r}", path, name)
    if not (isinstance(offs, list) and len(offs) == 2
            and all(type(o) is int and o >= 0 for o in offs)):
        raise FormatError(f"invalid data_offsets {offs!r}", path, name)
    begin, end = offs
    if begin > end:
        raise FormatError(f"data_offsets {offs} end before they begin", path, name)
    nbytes = dtype.nbytes(tuple(shape))
    if nbytes is None:
        raise FormatError(f"{dtype.value} tensor of shape {shape} does not fill whole bytes",
                          path, name)
    if nbytes != end - begin:
        raise FormatError(f"shape {shape} of {dtype.value} needs {nbytes} bytes, "
                          f"data_offsets give {end - begin}", path, name)
    return Entry(name, dtype, tuple(shape), begin, end)


class Safetensors(Format):
    def sniff(self, head: bytes, size: int) -> bool:
        if len(head) < 10:
            return False
        (n,) = struct.unpack("<Q", head[:8])
        return 2 <= n <= min(size - 8, MAX_HEADER) and head[8:9] == b"{"

    def header_ranges(self, get, size: int, path: str) -> bool:
        n = struct.unpack("<Q", get(0, 8))[0]
        if n + 8 > size:
            return False  # the reader says what is wrong
        get(0, 8 + n)
        return True

    def read(self, path: str, options) -> Bundle:
        size = os.path.getsize(path)
        metadata, entries, start = read_header(path, size)
        fmap = FileMap(path)
        bundle = Bundle(metadata=metadata, path=path, format=self.id)
        for e in entries:
            src = FileSource(fmap, start + e.begin, e.dtype, e.shape, entry=e.name)
            bundle[e.name] = Tensor(src)
        bundle.on_close(fmap.close)
        return bundle

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        header: dict = {}
        if bundle.metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in bundle.metadata.items()}
        offset = 0
        tensors = []
        for name, entry in bundle.items():  # fitted: tensors of dtypes safetensors holds
            code = D.to_safetensors(entry.dtype)
            nbytes = entry.nbytes
            if nbytes is None:
                raise UnsupportedError(f"{entry.dtype.value} tensor of shape "
                                       f"{list(entry.shape)} does not fill whole bytes",
                                       path, name)
            header[name] = {"dtype": code, "shape": list(entry.shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            tensors.append(entry)
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        padded = -(-(8 + len(text)) // ALIGN) * ALIGN - 8
        sink = options.sink(f.fileno())
        sink.write(struct.pack("<Q", padded) + text + b" " * (padded - len(text)))
        for entry in tensors:
            entry.write_to(sink)


FORMAT = Safetensors(
    id="safetensors",
    description="Hugging Face safetensors",
    extensions=(".safetensors",),
    caps=Capabilities(tensors=True, dtypes=D.SAFETENSORS_DTYPES, metadata=True,
                      zero_copy=True, raw_payload=True),
)
