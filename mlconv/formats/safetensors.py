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
from ..model import Bundle, Tensor, paused_gc
from ..sources import FileMap, FileSource
from .base import ALIGN, Capabilities, Format

MAX_HEADER = 100_000_000  # the reference library's own cap


_KEYS = frozenset({"dtype", "shape", "data_offsets"})


def _object_hook():
    """json's object_pairs_hook: duplicate keys are an error, and a well-formed tensor entry
    becomes a (DType, shape, begin, end) tuple at once (JSON makes no tuples), so a header
    of a million entries never holds a million dicts. Anything else stays a dict for
    ``_entry`` to name the problem."""
    bits_of = {}  # safetensors code -> (DType, bits)
    shapes = {}  # one tuple for each distinct shape

    def hook(pairs):
        out = dict(pairs)  # in C: a million entries must not cost a Python loop each
        if len(out) != len(pairs):
            seen = set()
            for k, _ in pairs:
                if k in seen:
                    raise ValueError(f"duplicate key {k!r}")
                seen.add(k)
        if len(out) != 3 or out.keys() != _KEYS:
            return out
        code, shape, offs = out["dtype"], out["shape"], out["data_offsets"]
        if type(code) is not str or type(shape) is not list or type(offs) is not list \
                or len(offs) != 2:
            return out
        if code not in bits_of:
            try:
                dtype = D.from_safetensors(code)
            except UnsupportedError:
                return out
            bits_of[code] = (dtype, dtype.bits)
        dtype, bits = bits_of[code]
        begin, end = offs
        if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
            return out
        n = bits
        for d in shape:
            if type(d) is not int or d < 0:
                return out
            n *= d
        if n % 8 or n // 8 != end - begin:
            return out
        shape = tuple(shape)
        return (dtype, shapes.setdefault(shape, shape), begin, end)

    return hook


def read_header(path: str, size: int):
    """(metadata, {name: (DType, shape, begin, end)}, data_start) of a checked header."""
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
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_object_hook())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FormatError(f"header is not valid JSON: {e}", path) from None
    del raw
    if type(header) is tuple:  # the hook took the whole header for one tensor entry
        raise FormatError("tensor entry needs exactly dtype, shape and data_offsets",
                          path)
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object", path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise FormatError("__metadata__ must map strings to strings", path)
    data_start, data_len = 8 + n, size - 8 - n
    for name, info in header.items():
        if type(info) is not tuple:  # the hook left it: _entry says what is wrong
            header[name] = _entry(name, info, path)
    outside = [name for name, e in header.items() if e[3] > data_len]
    if outside:  # all of them: a truncated download names every tensor it cut off
        shown = ", ".join(outside[:20]) + (f", ... ({len(outside)} in all)"
                                           if len(outside) > 20 else "")
        raise FormatError(f"truncated: the data section has {data_len} bytes; "
                          f"{len(outside)} tensor(s) lie past its end: {shown}", path,
                          outside[0] if len(outside) == 1 else None)
    expected = 0
    for e in header.values():  # usually in file order already: one pass, no sort
        if e[2] != expected:
            expected = _check_sorted(header, path)
            break
        expected = e[3]
    if expected != data_len:
        raise FormatError(f"tensors cover {expected} of the {data_len} data bytes", path)
    return metadata, header, data_start


def _check_sorted(header: dict, path: str) -> int:
    """The end of the data the entries cover, sorted by offsets, with no gap or overlap."""
    expected = 0
    for name, (_, _, begin, end) in sorted(header.items(), key=lambda kv: kv[1][2:]):
        if begin != expected:
            what = "overlaps another tensor" if begin < expected else "leaves a gap before it"
            raise FormatError(f"tensor data {what} (offset {begin}, expected {expected})",
                              path, name)
        expected = end
    return expected


def _entry(name, info, path) -> tuple:
    if not isinstance(info, dict) or set(info) != _KEYS:
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
    return (dtype, tuple(shape), begin, end)


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
        with paused_gc():  # millions of new objects, no cycles: the collector only costs
            metadata, header, start = read_header(path, size)
            fmap = FileMap(path)
            bundle = Bundle(metadata=metadata, path=path, format=self.id)
            names = list(header)
            tensors = [Tensor(FileSource(fmap, start + begin, dtype, shape, entry=name))
                       for name, (dtype, shape, begin, end) in header.items()]
            del header
            bundle._add_tensors(names, tensors)
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
