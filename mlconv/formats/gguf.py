"""GGUF (llama.cpp): typed key-values and tensor infos in a little-endian header, then the
tensor data, each tensor aligned to ``general.alignment``.

We parse the header ourselves from a read-only map of the file: every count, length and
offset is checked against the bytes that remain before anything is built from it, the
header is capped and arrays nest at most ``MAX_DEPTH`` deep. Plain tensors (F32, F16, BF16,
F64, I8..I64) are memory-mapped, shapes in numpy order (GGUF lists dimensions innermost
first). Quantized tensors stay raw blocks (dtype ``bytes``, one element per block) whose
source records the GGML type: gguf -> gguf copies them exactly; other formats get them only
through ``--cast q8_0=float32`` and the like, which dequantize per llama.cpp's reference
formulas. Key-values become file metadata as text: strings as themselves, every other type
as typed JSON (``{"$dtype": "uint32", "value": 4096}``), so they come back typed.
"""

from __future__ import annotations

import array
import json
import mmap
import os
import struct
import sys

from .. import dtypes as D
from ..errors import FormatError, LossyConversionError, UnsupportedError
from ..fileio import CHUNK
from ..model import Bundle, Table, Tensor
from ..sources import FileMap, FileSource, Source, check_memory
from .base import ALIGN, Capabilities, Format

MAGIC = b"GGUF"
MAX_HEADER = 64 << 20   # bytes of key-values + tensor infos (real vocabularies take ~10 MB)
MAX_ITEMS = 4 << 20     # array elements in all: bounds the Python objects a header makes
MAX_DEPTH = 4           # arrays of arrays ...: llama.cpp itself reads none
MAX_DIMS = 4            # GGML_MAX_DIMS
MAX_NAME = 63           # GGML_MAX_NAME is 64 bytes with the terminating NUL
DEFAULT_ALIGNMENT = 32
TYPED = "$dtype"

# --- options (kept together so they can move into the format's typed options) ---------
WRITE_ALIGNMENT = ALIGN  # general.alignment written: 4 KiB, mmap- and reflink-friendly

# --- key-value types --------------------------------------------------------------------
# code: (name in typed JSON, struct format); 8 STRING and 9 ARRAY are handled apart
_SCALARS = {0: ("uint8", "B"), 1: ("int8", "b"), 2: ("uint16", "H"), 3: ("int16", "h"),
            4: ("uint32", "I"), 5: ("int32", "i"), 6: ("float32", "f"), 7: ("bool", "?"),
            10: ("uint64", "Q"), 11: ("int64", "q"), 12: ("float64", "d")}
STRING, ARRAY = 8, 9
_CODE = {name: code for code, (name, _) in _SCALARS.items()} | {"string": STRING,
                                                                 "bytes": STRING,
                                                                 "array": ARRAY}

# --- GGML tensor types ------------------------------------------------------------------
# id: (name, elements per block, bytes per block, plain dtype or None for quantized blocks)
GGML = {
    0: ("F32", 1, 4, D.DType.float32), 1: ("F16", 1, 2, D.DType.float16),
    2: ("Q4_0", 32, 18, None), 3: ("Q4_1", 32, 20, None), 6: ("Q5_0", 32, 22, None),
    7: ("Q5_1", 32, 24, None), 8: ("Q8_0", 32, 34, None), 9: ("Q8_1", 32, 40, None),
    10: ("Q2_K", 256, 84, None), 11: ("Q3_K", 256, 110, None), 12: ("Q4_K", 256, 144, None),
    13: ("Q5_K", 256, 176, None), 14: ("Q6_K", 256, 210, None), 15: ("Q8_K", 256, 292, None),
    16: ("IQ2_XXS", 256, 66, None), 17: ("IQ2_XS", 256, 74, None),
    18: ("IQ3_XXS", 256, 98, None), 19: ("IQ1_S", 256, 50, None),
    20: ("IQ4_NL", 32, 18, None), 21: ("IQ3_S", 256, 110, None), 22: ("IQ2_S", 256, 82, None),
    23: ("IQ4_XS", 256, 136, None), 24: ("I8", 1, 1, D.DType.int8),
    25: ("I16", 1, 2, D.DType.int16), 26: ("I32", 1, 4, D.DType.int32),
    27: ("I64", 1, 8, D.DType.int64), 28: ("F64", 1, 8, D.DType.float64),
    29: ("IQ1_M", 256, 56, None), 30: ("BF16", 1, 2, D.DType.bfloat16),
    34: ("TQ1_0", 256, 54, None), 35: ("TQ2_0", 256, 66, None), 39: ("MXFP4", 32, 17, None),
}
_BY_DTYPE = {row[3]: code for code, row in GGML.items() if row[3] is not None}
GGUF_DTYPES = frozenset(_BY_DTYPE)


def _np():
    import numpy

    return numpy


# --- dequantization (llama.cpp ggml-quants.c dequantize_row_*, in float32) ------------

def _f16(blocks, at: int):
    """The float16 field at byte ``at`` of each block, as float32 (one column)."""
    np = _np()
    return np.ascontiguousarray(blocks[:, at:at + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs):
    """Low nibbles of 16 bytes are elements 0..15, high nibbles 16..31 (Q4/Q5 layouts)."""
    np = _np()
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _high_bits(qh):
    """Bit j of the little-endian uint32 ``qh`` is the fifth bit of element j (Q5 layouts)."""
    np = _np()
    word = np.ascontiguousarray(qh).view("<u4")
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4


def _q4_0(b):
    np = _np()
    return _f16(b, 0) * (_nibbles(b[:, 2:18]).astype(np.int8) - 8).astype(np.float32)


def _q4_1(b):
    np = _np()
    return _f16(b, 0) * _nibbles(b[:, 4:20]).astype(np.float32) + _f16(b, 2)


def _q5_0(b):
    np = _np()
    q = (_nibbles(b[:, 6:22]) | _high_bits(b[:, 2:6])).astype(np.int8) - 16
    return _f16(b, 0) * q.astype(np.float32)


def _q5_1(b):
    np = _np()
    q = _nibbles(b[:, 8:24]) | _high_bits(b[:, 4:8])
    return _f16(b, 0) * q.astype(np.float32) + _f16(b, 2)


def _q8_0(b):
    np = _np()
    return _f16(b, 0) * b[:, 2:34].view(np.int8).astype(np.float32)


# K-quants: 256-element super-blocks in sub-blocks with their own 4- to 8-bit scales.
# Each helper returns (n, 256) arrays indexed by element; ``per(x, k)`` repeats the
# per-sub-block values ``x`` (n, 256 // k) over the k elements of each sub-block.

def _per(x, k: int):
    return x.repeat(k, axis=1)


def _crumbs(qs, groups: int):
    """2-bit values: byte l of each 32-byte group holds elements l, l+32, l+64, l+96."""
    np = _np()
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return ((qs.reshape(-1, groups, 1, 32) >> shifts) & 3).reshape(len(qs), -1)


def _scale_min_k4(s):
    """The 8 6-bit scales and mins packed in 12 bytes (Q4_K, Q5_K: get_scale_min_k4)."""
    np = _np()
    lo, hi = s[:, 0:4], s[:, 4:8]
    tail = s[:, 8:12]
    sc = np.concatenate([lo & 63, (tail & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([hi & 63, (tail >> 4) | ((hi >> 6) << 4)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q2_k(b):
    np = _np()
    sc, q = b[:, 0:16], _crumbs(b[:, 16:80], 2).astype(np.float32)
    dl = _f16(b, 80) * (sc & 0x0F).astype(np.float32)
    ml = _f16(b, 82) * (sc >> 4).astype(np.float32)
    return _per(dl, 16) * q - _per(ml, 16)


def _q3_k(b):
    np = _np()
    hmask, s = b[:, 0:32], b[:, 96:108]
    low = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)
    top = (s[:, None, 8:12] >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)) & 3
    scales = (low | (top.reshape(len(b), 16) << 4)).astype(np.int8) - 32
    bits = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    high = ((hmask[:, None, :] >> bits) & 1).reshape(len(b), 256)  # bit k: elements 32k..
    q = _crumbs(b[:, 32:96], 2).astype(np.int8) - np.where(high == 1, 0, 4).astype(np.int8)
    return _per(_f16(b, 108) * scales.astype(np.float32), 16) * q.astype(np.float32)


def _q45_k(b, qh=None):
    np = _np()
    sc, mn = _scale_min_k4(b[:, 4:16])
    qs = b[:, -128:]
    q = np.stack([qs.reshape(-1, 4, 32) & 0x0F, qs.reshape(-1, 4, 32) >> 4], axis=2)
    q = q.reshape(len(b), 256)
    if qh is not None:
        bits = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
        q = q | (((qh[:, None, :] >> bits) & 1).reshape(len(b), 256) << 4)
    d, dmin = _f16(b, 0) * sc, _f16(b, 2) * mn
    return _per(d, 32) * q.astype(np.float32) - _per(dmin, 32)


def _q4_k(b):
    return _q45_k(b)


def _q5_k(b):
    return _q45_k(b, b[:, 16:48])


def _q6_k(b):
    np = _np()
    n = len(b)
    ql, qh, sc = b[:, 0:128].reshape(n, 2, 2, 32), b[:, 128:192], b[:, 192:208]
    low = np.stack([ql & 0x0F, ql >> 4], axis=2).reshape(n, 2, 4, 32)  # (half, k, l)
    high = _crumbs(qh, 2).reshape(n, 2, 4, 32)
    q = ((low | (high << 4)).astype(np.int8) - 32).reshape(n, 256).astype(np.float32)
    return _per(_f16(b, 208) * sc.view(np.int8).astype(np.float32), 16) * q


# codebook types: 4-bit indices into a table of values
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
MXFP4_VALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)  # e2m1, doubled


def _lookup(table, idx):
    np = _np()
    return np.asarray(table, np.float32)[idx]


def _iq4_nl(b):
    return _f16(b, 0) * _lookup(IQ4_VALUES, _nibbles(b[:, 2:18]))


def _iq4_xs(b):
    np = _np()
    n = len(b)
    high = (np.ascontiguousarray(b[:, 2:4]).view("<u2") >> np.arange(0, 16, 2, dtype=np.uint16)
            ) & 3
    low = np.stack([b[:, 4:8] & 0x0F, b[:, 4:8] >> 4], axis=2).reshape(n, 8)
    scales = (low | (high.astype(np.uint8) << 4)).astype(np.int8) - 32
    q = np.stack([b[:, 8:].reshape(n, 8, 16) & 0x0F, b[:, 8:].reshape(n, 8, 16) >> 4], axis=2)
    return _per(_f16(b, 0) * scales.astype(np.float32), 32) * _lookup(IQ4_VALUES, q.reshape(n, 256))


def _mxfp4(b):
    np = _np()
    e = b[:, 0:1].astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32) * _lookup(MXFP4_VALUES, _nibbles(b[:, 1:17]))


def _tq1_0(b):
    np = _np()
    n = len(b)
    pow3 = np.array([1, 3, 9, 27, 81], np.uint8)
    parts = [(b[:, 0:32, None] * pow3).transpose(0, 2, 1).reshape(n, 160),  # uint8 wraps
             (b[:, 32:48, None] * pow3).transpose(0, 2, 1).reshape(n, 80),
             (b[:, 48:52, None] * pow3[:4]).transpose(0, 2, 1).reshape(n, 16)]
    q = ((np.concatenate(parts, axis=1).astype(np.uint16) * 3) >> 8).astype(np.int8) - 1
    return _f16(b, 52) * q.astype(np.float32)


def _tq2_0(b):
    np = _np()
    return _f16(b, 64) * (_crumbs(b[:, 0:64], 2).astype(np.int8) - 1).astype(np.float32)


DEQUANT = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
           "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
           "IQ4_NL": _iq4_nl, "IQ4_XS": _iq4_xs, "MXFP4": _mxfp4, "TQ1_0": _tq1_0,
           "TQ2_0": _tq2_0}


# --- reading ----------------------------------------------------------------------------

class _Header:
    """A cursor over the mapped header: every read is checked against the file's end."""

    def __init__(self, buf, path: str):
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)
        self.entry: str | None = None  # the key or tensor being read, for error messages
        self.items = 0  # array elements read so far (MAX_ITEMS)

    def fail(self, what: str):
        raise FormatError(what, self.path, self.entry)

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            self.fail(f"{what} needs {n} bytes at offset {self.pos}; the file has "
                      f"{self.size - self.pos} left")
        if self.pos + n > MAX_HEADER:
            self.fail(f"header exceeds the {MAX_HEADER}-byte cap")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize("<" + fmt)
        self.need(n, what)
        out = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += n
        return out[0] if len(out) == 1 else out

    def raw_string(self, what: str) -> bytes:
        n = self.unpack("Q", f"{what} length")
        self.need(n, what)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def text(self, what: str) -> str:
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8: {raw[:40]!r}")

    def count(self, what: str, least: int) -> int:
        """A declared count, refused when even ``least`` bytes each would not fit."""
        n = self.unpack("Q", f"{what} count")
        if n and n > (self.size - self.pos) // max(least, 1):
            self.fail(f"{what} count {n} is absurd: at {least} bytes each it needs more "
                      f"than the {self.size - self.pos} bytes left in the file")
        if what == "array":
            self.items += n
            if self.items > MAX_ITEMS:
                self.fail(f"arrays hold more than {MAX_ITEMS} elements in all (the cap)")
        return n

    def value(self, vtype: int, depth: int = 0):
        """The JSON-able value of one key-value: a str for valid text, else typed JSON."""
        if vtype == STRING:
            raw = self.raw_string("string")
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return {TYPED: "bytes", "value": raw.hex()}
        if vtype in _SCALARS:
            name, code = _SCALARS[vtype]
            return {TYPED: name, "value": self.unpack(code, name)}
        if vtype != ARRAY:
            self.fail(f"unknown value type {vtype}")
        if depth >= MAX_DEPTH:
            self.fail(f"arrays nested more than {MAX_DEPTH} deep")
        etype = self.unpack("I", "array type")
        if etype == STRING:
            return self._strings(self.count("array", 8))
        if etype == ARRAY:
            n = self.count("array", 12)
            return {TYPED: "array", "value": [self.value(ARRAY, depth + 1) for _ in range(n)]}
        if etype not in _SCALARS:
            self.fail(f"unknown array element type {etype}")
        name, code = _SCALARS[etype]
        size = struct.calcsize(code)
        n = self.count("array", size)
        self.need(n * size, f"{name} array")
        raw = self.buf[self.pos:self.pos + n * size]
        self.pos += n * size
        if code == "?":
            return {TYPED: name, "value": [b != 0 for b in raw]}
        values = array.array(code)  # no numpy: inspect stays a header read
        values.frombytes(raw)
        if sys.byteorder == "big":
            values.byteswap()
        return {TYPED: name, "value": values.tolist()}

    def _strings(self, n: int):
        start = self.pos
        try:
            return {TYPED: "string", "value": [self._text() for _ in range(n)]}
        except UnicodeDecodeError:  # raw bytes kept exactly
            self.pos = start
            return {TYPED: "bytes", "value": [self.raw_string("string").hex()
                                              for _ in range(n)]}

    def _text(self) -> str:
        """One string straight from the map to a str (no bytes copy: big vocabularies)."""
        (n,) = struct.unpack_from("<Q", self.buf, self.pos) if self.size - self.pos >= 8 \
            else (None,)
        if n is None or n > self.size - self.pos - 8:
            return self.raw_string("string")  # raises the precise error
        if self.pos + 8 + n > MAX_HEADER:
            self.need(8 + n, "string")
        self.pos += 8 + n
        return str(self.buf[self.pos - n:self.pos], "utf-8")


class Info:
    __slots__ = ("name", "gtype", "shape", "offset", "nbytes")

    def __init__(self, name, gtype, shape, offset, nbytes):
        self.name, self.gtype, self.shape = name, gtype, shape
        self.offset, self.nbytes = offset, nbytes


def _endianness(path: str, head: bytes) -> int:
    """The version of a little-endian GGUF file; big-endian and v1 files refused by name."""
    if len(head) < 24:
        raise FormatError(f"truncated file: {len(head)} bytes, a GGUF header needs 24", path)
    if head[:4] != MAGIC:
        raise FormatError("not a GGUF file (magic bytes are not 'GGUF')", path)
    version, swapped = struct.unpack_from("<I", head, 4)[0], struct.unpack_from(">I", head, 4)[0]
    if version not in (1, 2, 3) and swapped in (1, 2, 3, 4):
        raise FormatError(f"big-endian GGUF (version {swapped}, byte-swapped for a big-endian "
                          "machine): mlconv reads little-endian GGUF only", path)
    if version == 1:
        raise FormatError("unsupported GGUF version 1 (the 2023 pre-release format with "
                          "32-bit lengths); re-convert it with a current llama.cpp", path)
    if version not in (2, 3):
        raise FormatError(f"unsupported GGUF version {version} (mlconv reads 2 and 3)", path)
    return version


def read_header(path: str):
    """(version, {key: JSON-able value}, [Info], data_start) of a checked GGUF file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(24)
        version = _endianness(path, head)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = memoryview(mm)
            try:
                return (version,) + _parse(_Header(buf, path), size)
            finally:
                buf.release()


def _new_name(h: _Header, what: str, seen) -> str:
    """The next key or tensor name, which later errors then name; a repeat is refused."""
    h.entry = None
    name = h.text(what)
    h.entry = name
    if name in seen:
        h.fail(f"duplicate {what}")
    return name


def _parse(h: _Header, size: int):
    h.pos = 8
    n_tensors = h.count("tensor", 24)  # name length, dims, type, offset: 24 bytes at least
    n_kv = h.count("key-value", 13)
    kvs: dict = {}
    for _ in range(n_kv):
        key = _new_name(h, "key", kvs)
        kvs[key] = h.value(h.unpack("I", "value type"))
    h.entry = None
    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kvs:
        a = kvs["general.alignment"]
        if not (isinstance(a, dict) and a[TYPED] == "uint32" and a["value"] > 0
                and a["value"] & (a["value"] - 1) == 0):
            raise FormatError(f"general.alignment must be a power-of-two uint32, not {a!r}",
                              h.path, "general.alignment")
        alignment = a["value"]
    infos, names = [], set()
    for _ in range(n_tensors):
        name = _new_name(h, "tensor name", names)
        names.add(name)
        ndims = h.unpack("I", "dimension count")
        if ndims > MAX_DIMS:
            h.fail(f"{ndims} dimensions; GGUF tensors have at most {MAX_DIMS}")
        dims = [h.unpack("Q", "dimension") for _ in range(ndims)]
        gtype = h.unpack("I", "tensor type")
        offset = h.unpack("Q", "tensor offset")
        infos.append(_info(h, name, dims, gtype, offset, alignment))
    h.entry = None
    data_start = -(-h.pos // alignment) * alignment
    _check_layout(h, infos, data_start, size)
    return kvs, infos, data_start


def _info(h: _Header, name, dims, gtype, offset, alignment) -> Info:
    if gtype not in GGML:
        h.fail(f"unknown GGML tensor type {gtype}")
    tname, block, bsize, _ = GGML[gtype]
    count = 1
    for d in dims:
        if d > (1 << 63) - 1:
            h.fail(f"dimension {d} out of range")
        count *= d
    if count > (1 << 63) - 1:
        h.fail(f"dimensions {dims}: element count does not fit in 64 bits")
    if block > 1 and (not dims or dims[0] % block):
        if not dims:
            h.fail(f"a 0-d {tname} tensor cannot hold whole {block}-element blocks")
        h.fail(f"{tname} rows of {dims[0]} elements are not whole {block}-element blocks")
    if offset % alignment:
        h.fail(f"tensor offset {offset} is not a multiple of general.alignment {alignment}")
    return Info(name, gtype, tuple(reversed(dims)), offset, count // block * bsize)


def _check_layout(h: _Header, infos, data_start: int, size: int) -> None:
    data_len = size - data_start
    for t in infos:
        if t.nbytes and (data_start > size or t.offset + t.nbytes > data_len):
            raise FormatError(f"tensor data [{t.offset}, {t.offset + t.nbytes}) lies past the "
                              f"end of the {max(data_len, 0)}-byte data section "
                              "(truncated file?)", h.path, t.name)
    end, last = 0, None
    for t in sorted((t for t in infos if t.nbytes), key=lambda t: t.offset):
        if t.offset < end:
            raise FormatError(f"tensor data at offset {t.offset} overlaps {last!r} (which "
                              f"ends at {end})", h.path, t.name)
        end, last = t.offset + t.nbytes, t.name


class BlockSource(FileSource):
    """Quantized tensor data: raw GGML blocks (dtype bytes, one element per block).

    What the conversion planner (convert/execute.py ``_packed``) asks of a packed source:
    ``codec`` (the block type, e.g. "q8_0"), ``codec_format`` (the format that holds it
    as is), ``logical_shape``, ``can_unpack`` and ``unpacked(dtype)``: the values, where
    mlconv knows the type's reference formula.
    """

    codec_format = "gguf"

    def __init__(self, fmap, offset, info: Info):
        name, block, bsize, _ = GGML[info.gtype]
        shape = info.shape[:-1] + (info.shape[-1] // block,) if info.shape else ()
        super().__init__(fmap, offset, D.DType.bytes, shape, bsize, entry=info.name)
        self.gtype, self.codec, self.logical_shape = info.gtype, name.lower(), info.shape

    @property
    def can_unpack(self) -> bool:
        return GGML[self.gtype][0] in DEQUANT

    def unpacked(self, dtype: D.DType) -> Source:
        if not self.can_unpack:
            raise UnsupportedError(f"mlconv cannot dequantize {self.codec} blocks", self.path,
                                   self.entry)
        return Dequantized(self, dtype)


class Dequantized(Source):
    """The values of a BlockSource, dequantized block by block and cast to ``dtype``."""

    def __init__(self, blocks: BlockSource, dtype: D.DType):
        super().__init__(dtype, blocks.logical_shape)
        self.blocks = blocks
        self.limit = blocks.limit

    def _values(self, first: int, count: int):
        np = _np()
        b = self.blocks
        raw = b.fmap.array()[b.offset + first * b.itemsize:
                             b.offset + (first + count) * b.itemsize]
        with np.errstate(invalid="ignore", over="ignore"):  # inf/nan scales are the file's
            values = DEQUANT[GGML[b.gtype][0]](np.asarray(raw).reshape(count, b.itemsize))
        return values.reshape(-1).astype(self.dtype.numpy(), copy=False)

    def array(self):
        check_memory(self.nbytes, self.limit, self.blocks.path, self.blocks.entry)
        return self._values(0, self.blocks.count).reshape(self.shape)

    def chunks(self, size: int = CHUNK):
        b = self.blocks
        per = GGML[b.gtype][1] * self.dtype.numpy().itemsize  # output bytes per block
        step = max(1, size // per)
        for first in range(0, b.count, step):
            values = self._values(first, min(step, b.count - first))
            yield memoryview(values.view("uint8"))
            b.fmap.drop_pages()


class Gguf(Format):
    codecs = tuple(name.lower() for name in DEQUANT)  # --cast Q=DTYPE sources (see select)

    def header_ranges(self, get, size: int, path: str) -> bool:
        """The key-values and tensor infos: a growing prefix until it parses."""
        n = min(size, 64 << 10)  # most headers (no vocabulary) are far smaller
        while True:
            try:
                _endianness(path, get(0, min(size, 24)))
                _parse(_Header(memoryview(get(0, n)), path), size)
                return True
            except FormatError:
                if n >= min(size, MAX_HEADER):
                    return False  # the reader says what is wrong, from the whole file
                n = min(size, MAX_HEADER, n * 4)

    def read(self, path: str, options) -> Bundle:
        version, kvs, infos, data_start = read_header(path)
        fmap = FileMap(path)
        # general.alignment is how this file is laid out (encoding), not what it means: every
        # writer picks its own, and no other format needs to carry it
        bundle = Bundle(metadata={k: to_text(v) for k, v in kvs.items()
                                  if k != "general.alignment"}, path=path, format=self.id)
        bundle.encoding["gguf.alignment"] = _alignment(kvs)
        bundle.encoding["gguf.version"] = version
        bundle.encoding["gguf.layout"] = [(t.name, data_start + t.offset, t.nbytes)
                                          for t in infos]
        bundle.encoding["gguf.data_start"] = data_start
        for t in infos:
            name, block, _, dtype = GGML[t.gtype]
            if dtype is not None:
                bundle[t.name] = Tensor(FileSource(fmap, data_start + t.offset, dtype,
                                                   t.shape, entry=t.name))
                continue
            src = BlockSource(fmap, data_start + t.offset, t)
            src.limit = options.max_memory
            bundle[t.name] = Tensor(src, {"quantization": name,
                                          "logical_shape": list(t.shape)})
        bundle.on_close(fmap.close)
        return bundle

    def check(self, path: str, bundle, deep: bool):
        """Beyond what reading proved: what llama.cpp itself would refuse, as warnings (the
        file is sound GGUF; gguf-py reads it)."""
        problems, warnings = super().check(path, bundle, deep)
        layout = bundle.encoding.get("gguf.layout", [])
        alignment = bundle.encoding.get("gguf.alignment", DEFAULT_ALIGNMENT)
        expected = bundle.encoding.get("gguf.data_start", 0)
        for name, offset, nbytes in layout:
            if len(name.encode("utf-8")) > MAX_NAME:
                warnings.append((name, f"name longer than {MAX_NAME} bytes: llama.cpp "
                                       "refuses it"))
            if expected is not None and offset != expected:  # said once: the rest follow
                warnings.append((name, f"tensor data at file offset {offset}, not {expected} "
                                       "(llama.cpp wants the tensors in order, each at the "
                                       "next aligned offset)"))
                expected = None
            if expected is not None:
                expected = offset + -(-nbytes // alignment) * alignment
        return problems, warnings

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        infos, entries, offset = [], [], 0
        for name, entry in bundle.items():
            gtype, dims = _tensor_type(entry, name, path)
            raw = name.encode("utf-8")
            if len(raw) > MAX_NAME:
                raise UnsupportedError(f"GGUF tensor names hold at most {MAX_NAME} bytes "
                                       f"(llama.cpp's limit); this one has {len(raw)}",
                                       path, name)
            infos.append(_string(raw) + struct.pack("<I", len(dims))
                         + struct.pack(f"<{len(dims)}Q", *dims)
                         + struct.pack("<IQ", gtype, offset))
            entries.append(entry)
            offset += -(-entry.nbytes // WRITE_ALIGNMENT) * WRITE_ALIGNMENT
        kvs = dict(bundle.metadata)
        kvs["general.alignment"] = json.dumps({TYPED: "uint32", "value": WRITE_ALIGNMENT})
        head = [MAGIC, struct.pack("<IQQ", 3, len(infos), len(kvs))]
        for key, text in kvs.items():
            head.append(_string(key.encode("utf-8")) + _kv_bytes(text, path, key))
        head += infos
        sink = options.sink(f.fileno())
        sink.write(b"".join(head))
        sink.pad_to(WRITE_ALIGNMENT)
        for entry in entries:
            entry.write_to(sink)
            sink.pad_to(WRITE_ALIGNMENT)


def _alignment(kvs) -> int:
    """general.alignment of parsed key-values (checked a power-of-two uint32)."""
    a = kvs.get("general.alignment")
    return a["value"] if isinstance(a, dict) else DEFAULT_ALIGNMENT


def _tensor_type(entry, name, path) -> tuple[int, list[int]]:
    """(GGML type, GGUF dims innermost first) of a tensor to write."""
    if isinstance(entry, Table):
        raise UnsupportedError("GGUF holds tensors, not tables", path, name)
    src = entry.source
    if getattr(src, "codec_format", None) == "gguf":  # GGML blocks (maybe in a wrapper that
        gtype, shape = src.gtype, src.logical_shape    # fetches a remote file's range)
    elif entry.dtype in _BY_DTYPE:
        gtype, shape = _BY_DTYPE[entry.dtype], entry.shape
    else:
        raise LossyConversionError(f"GGUF cannot hold {entry.dtype.value}", path, name)
    if len(shape) > MAX_DIMS:
        raise UnsupportedError(f"GGUF tensors have at most {MAX_DIMS} dimensions; this one "
                               f"has shape {list(shape)}", path, name)
    return gtype, list(reversed(shape))


# --- key-values as text and back --------------------------------------------------------

def to_text(value) -> str:
    """File metadata text of a key-value: text as itself, everything else typed JSON."""
    if isinstance(value, str) and not value.startswith('{"' + TYPED):
        return value
    if isinstance(value, str):  # text that would read back as typed JSON: say it is text
        value = {TYPED: "string", "value": value}
    return json.dumps(value, ensure_ascii=False)


def _string(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def _typed(text: str):
    """The typed JSON object a metadata text holds, or None when it is plain text."""
    if not text.startswith('{"' + TYPED):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and set(value) == {TYPED, "value"} and value[TYPED] in _CODE:
        return value
    return None


def _kv_bytes(text: str, path, key) -> bytes:
    """value type + value of one key-value; text that is not typed JSON GGUF can hold is
    written as the string it is (never dropped)."""
    typed = _typed(text)
    if typed is not None:
        try:
            return _encode(typed, top=True)
        except (TypeError, ValueError, OverflowError, KeyError, struct.error):
            pass
    return struct.pack("<I", STRING) + _string(text.encode("utf-8"))


def _encode(typed: dict, top: bool = False) -> bytes:
    """Bytes of one typed value: with its type code (``top``) or as an array's element."""
    kind, value = typed[TYPED], typed["value"]
    code = _CODE[kind]
    if isinstance(value, list):
        if kind == "array":
            body = b"".join(_encode(v) for v in value)
            elem = ARRAY
        elif code == STRING:
            items = [bytes.fromhex(v) if kind == "bytes" else v.encode("utf-8")
                     for v in value]
            body, elem = b"".join(_string(r) for r in items), STRING
        else:
            body, elem = _scalars(kind, value), code
        out = struct.pack("<IQ", elem, len(value)) + body
        return struct.pack("<I", ARRAY) + out if top else out
    if kind == "array" or not top:
        raise ValueError("an array element must be an array")
    if code == STRING:
        raw = bytes.fromhex(value) if kind == "bytes" else value.encode("utf-8")
        return struct.pack("<I", STRING) + _string(raw)
    return struct.pack("<I", code) + _scalars(kind, [value])


def _scalars(kind: str, values: list) -> bytes:
    """``values`` packed little-endian as ``kind``; ValueError if one does not fit it."""
    code = _SCALARS[_CODE[kind]][1]
    if kind == "bool":
        if not all(isinstance(v, bool) for v in values):
            raise ValueError("not booleans")
    elif code in "fd":
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError("not numbers")
    elif not all(type(v) is int for v in values):
        raise ValueError("not integers")
    raw = struct.pack(f"<{len(values)}{code}", *values)  # struct.error when out of range
    if code == "f":  # a float32 must hold each value exactly: never round silently
        back = struct.unpack(f"<{len(values)}f", raw)
        if any(a != b and not (a != a and b != b) for a, b in zip(back, values, strict=True)):
            raise ValueError("not float32 values")
    return raw


FORMAT = Gguf(
    id="gguf",
    description="GGUF (llama.cpp)",
    extensions=(".gguf",),
    caps=Capabilities(tensors=True, dtypes=GGUF_DTYPES, metadata=True, zero_copy=True,
                      raw_payload=True),
    magic=(MAGIC,),
    representations=(("tensors", "tensors"), ("quantized", "blocks")),
)
