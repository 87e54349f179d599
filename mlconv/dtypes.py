"""The dtype table: the one place that maps mlconv's canonical dtypes to other libraries' codes.

Each row gives the canonical name, the width in bits, the numpy/ml_dtypes type name, the npy
descr (little-endian form, only for types numpy's own format names unambiguously) and the
safetensors code. Later formats add a column here, never a mapping of their own.

numpy is imported only when a numpy dtype is asked for, so ``inspect`` of a header stays cheap.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cache

from .errors import UnsupportedError


class DType(str, enum.Enum):
    """Canonical dtypes. The value is the canonical name used in every output."""

    bool = "bool"
    int8 = "int8"
    int16 = "int16"
    int32 = "int32"
    int64 = "int64"
    uint8 = "uint8"
    uint16 = "uint16"
    uint32 = "uint32"
    uint64 = "uint64"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"
    float64 = "float64"
    complex64 = "complex64"
    complex128 = "complex128"
    float8_e4m3fn = "float8_e4m3fn"
    float8_e5m2 = "float8_e5m2"
    float8_e4m3fnuz = "float8_e4m3fnuz"
    float8_e5m2fnuz = "float8_e5m2fnuz"
    float8_e8m0fnu = "float8_e8m0fnu"
    float4_e2m1fn = "float4_e2m1fn"
    float6_e2m3fn = "float6_e2m3fn"
    float6_e3m2fn = "float6_e3m2fn"
    int4 = "int4"
    uint4 = "uint4"
    string = "string"  # text; fixed-width UCS4 in npy, variable elsewhere
    bytes = "bytes"    # raw byte strings
    # dates and times: numpy's int64 counts of a unit since the epoch / durations
    datetime64_D = "datetime64[D]"
    datetime64_h = "datetime64[h]"
    datetime64_m = "datetime64[m]"
    datetime64_s = "datetime64[s]"
    datetime64_ms = "datetime64[ms]"
    datetime64_us = "datetime64[us]"
    datetime64_ns = "datetime64[ns]"
    timedelta64_D = "timedelta64[D]"
    timedelta64_h = "timedelta64[h]"
    timedelta64_m = "timedelta64[m]"
    timedelta64_s = "timedelta64[s]"
    timedelta64_ms = "timedelta64[ms]"
    timedelta64_us = "timedelta64[us]"
    timedelta64_ns = "timedelta64[ns]"

    def __str__(self) -> str:
        return self.value

    @property
    def info(self) -> _Row:
        return _ROWS[self]

    @property
    def bits(self) -> int | None:
        """Bits per element on disk; None for variable-width string/bytes."""
        return self.info.bits

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def is_subbyte(self) -> bool:
        return self.bits is not None and self.bits < 8

    def nbytes(self, shape: tuple[int, ...], itemsize: int | None = None) -> int | None:
        """Bytes of a packed C-order payload of this shape, or None if not whole bytes."""
        n = 1
        for d in shape:
            n *= d
        if self.bits is None:
            return None if itemsize is None else n * itemsize
        total_bits = n * self.bits
        return total_bits // 8 if total_bits % 8 == 0 else None

    def numpy(self):
        """The numpy dtype (ml_dtypes for the types numpy lacks); string/bytes have none."""
        return _numpy_dtype(self)


@dataclass(frozen=True)
class _Row:
    bits: int | None
    kind: str              # bool, int, uint, float, complex, string, bytes, datetime, timedelta
    numpy: str | None      # attribute of numpy (np.) or ml_dtypes (ml:)
    npy: str | None        # npy descr, little-endian form
    safetensors: str | None


def _r(bits, kind, numpy, npy, st):
    return _Row(bits, kind, numpy, npy, st)


_ROWS: dict[DType, _Row] = {
    DType.bool: _r(8, "bool", "np:bool_", "|b1", "BOOL"),
    DType.int8: _r(8, "int", "np:int8", "|i1", "I8"),
    DType.int16: _r(16, "int", "np:int16", "<i2", "I16"),
    DType.int32: _r(32, "int", "np:int32", "<i4", "I32"),
    DType.int64: _r(64, "int", "np:int64", "<i8", "I64"),
    DType.uint8: _r(8, "uint", "np:uint8", "|u1", "U8"),
    DType.uint16: _r(16, "uint", "np:uint16", "<u2", "U16"),
    DType.uint32: _r(32, "uint", "np:uint32", "<u4", "U32"),
    DType.uint64: _r(64, "uint", "np:uint64", "<u8", "U64"),
    DType.float16: _r(16, "float", "np:float16", "<f2", "F16"),
    DType.bfloat16: _r(16, "float", "ml:bfloat16", None, "BF16"),
    DType.float32: _r(32, "float", "np:float32", "<f4", "F32"),
    DType.float64: _r(64, "float", "np:float64", "<f8", "F64"),
    DType.complex64: _r(64, "complex", "np:complex64", "<c8", "C64"),
    DType.complex128: _r(128, "complex", "np:complex128", "<c16", None),
    DType.float8_e4m3fn: _r(8, "float", "ml:float8_e4m3fn", None, "F8_E4M3"),
    DType.float8_e5m2: _r(8, "float", "ml:float8_e5m2", None, "F8_E5M2"),
    DType.float8_e4m3fnuz: _r(8, "float", "ml:float8_e4m3fnuz", None, "F8_E4M3FNUZ"),
    DType.float8_e5m2fnuz: _r(8, "float", "ml:float8_e5m2fnuz", None, "F8_E5M2FNUZ"),
    DType.float8_e8m0fnu: _r(8, "float", "ml:float8_e8m0fnu", None, "F8_E8M0"),
    DType.float4_e2m1fn: _r(4, "float", "ml:float4_e2m1fn", None, "F4"),
    DType.float6_e2m3fn: _r(6, "float", "ml:float6_e2m3fn", None, "F6_E2M3"),
    DType.float6_e3m2fn: _r(6, "float", "ml:float6_e3m2fn", None, "F6_E3M2"),
    DType.int4: _r(4, "int", "ml:int4", None, None),
    DType.uint4: _r(4, "uint", "ml:uint4", None, None),
    DType.string: _r(None, "string", None, None, None),
    DType.bytes: _r(None, "bytes", None, None, None),
}
TIME_UNITS = ("D", "h", "m", "s", "ms", "us", "ns")
for _unit in TIME_UNITS:
    _ROWS[DType(f"datetime64[{_unit}]")] = _r(64, "datetime", f"np:datetime64[{_unit}]",
                                              f"<M8[{_unit}]", None)
    _ROWS[DType(f"timedelta64[{_unit}]")] = _r(64, "timedelta", f"np:timedelta64[{_unit}]",
                                               f"<m8[{_unit}]", None)

# Exact widenings tried in order when --allow-lossy must fit a dtype into a target that lacks it
# (values are kept; only the dtype changes). complex128 has no exact widening: it rounds.
_FALLBACK: dict[DType, tuple[DType, ...]] = {
    DType.bfloat16: (DType.float32, DType.float64),
    DType.float16: (DType.float32, DType.float64),
    DType.float8_e4m3fn: (DType.float16, DType.float32, DType.float64),
    DType.float8_e5m2: (DType.float16, DType.float32, DType.float64),
    DType.float8_e4m3fnuz: (DType.float16, DType.float32, DType.float64),
    DType.float8_e5m2fnuz: (DType.float16, DType.float32, DType.float64),
    DType.float8_e8m0fnu: (DType.float32, DType.float64),
    DType.float4_e2m1fn: (DType.float16, DType.float32, DType.float64),
    DType.int4: (DType.int8, DType.int16, DType.int32, DType.int64),
    DType.uint4: (DType.uint8, DType.uint16, DType.uint32, DType.uint64),
    DType.complex128: (DType.complex64,),
}

NUMERIC = frozenset(d for d in DType if d.kind not in ("string", "bytes"))


def parse(name: str | DType) -> DType:
    """A canonical dtype from its name (also accepts numpy spellings like 'float' or 'f4')."""
    if isinstance(name, DType):
        return name
    try:
        return DType(name)
    except ValueError:
        pass
    try:
        return from_numpy(_np().dtype(name))
    except (TypeError, ValueError, SyntaxError, UnsupportedError):
        raise UnsupportedError(f"unknown dtype {name!r}") from None


def fallback(dtype: DType, held: frozenset[DType]) -> tuple[DType, bool] | None:
    """The dtype --allow-lossy uses when a target cannot hold ``dtype``: (dtype, exact)."""
    for cand in _FALLBACK.get(dtype, ()):
        if cand in held:
            exact = dtype is not DType.complex128
            return cand, exact
    return None


# --- numpy ------------------------------------------------------------------------------

def _np():
    import numpy

    return numpy


@cache
def _numpy_dtype(dtype: DType):
    row = _ROWS[dtype]
    if row.numpy is None:
        raise UnsupportedError(f"{dtype.value} has no fixed numpy dtype")
    lib, attr = row.numpy.split(":")
    if "[" in attr:  # datetime64[unit] / timedelta64[unit]
        return _np().dtype(attr)
    if lib == "ml":
        import ml_dtypes

        return _np().dtype(getattr(ml_dtypes, attr))
    return _np().dtype(getattr(_np(), attr))


@cache
def _by_numpy_name(lib: str) -> dict[str, DType]:
    """numpy dtype name -> DType for the rows of one library ("np" or "ml"). Split so that
    plain numpy dtypes never import ml_dtypes (about a second of start-up)."""
    out = {}
    for d, row in _ROWS.items():
        if row.numpy is not None and row.numpy.split(":")[0] == lib:
            out[_numpy_dtype(d).name] = d
    return out


def from_numpy(np_dtype) -> DType:
    """Canonical dtype of a numpy dtype (any byte order); raises UnsupportedError otherwise."""
    np = _np()
    np_dtype = np.dtype(np_dtype)
    if np_dtype.kind == "U":
        return DType.string
    if np_dtype.kind == "S":
        return DType.bytes
    if np_dtype.names is None and np_dtype.subdtype is None:
        if np_dtype.kind != "V":
            found = _by_numpy_name("np").get(np_dtype.newbyteorder("=").name)
            if found is not None:
                return found
        if np_dtype.type.__module__.startswith("ml_dtypes"):
            # ml_dtypes types (kind 'V', or 'f' for some) exist only once ml_dtypes is
            # imported, so this lookup costs nothing more. Match by type, never by size.
            found = _by_numpy_name("ml").get(np_dtype.name)
            if found is not None and np_dtype.type is _numpy_dtype(found).type:
                return found
    raise UnsupportedError(f"numpy dtype {np_dtype.str!r} has no mlconv dtype")


# --- npy descr ------------------------------------------------------------------------

_NPY_BY_CODE = {row.npy[1:]: d for d, row in _ROWS.items() if row.npy}


def from_npy_descr(descr: str) -> tuple[DType, str, int]:
    """(dtype, byte order '<' or '>', itemsize) of a simple npy descr like '<f4' or '|S3'.

    Raises UnsupportedError for anything else (structured, object, void, datetime, ...).
    """
    if not isinstance(descr, str) or len(descr) < 2:
        raise UnsupportedError(f"npy dtype {descr!r} is not supported")
    order, code = descr[0], descr[1:]
    if order not in "<>|=":
        order, code = "=", descr
    order = ">" if order == ">" else "<"
    if code in _NPY_BY_CODE:
        d = _NPY_BY_CODE[code]
        return d, order, d.bits // 8
    kind, digits = code[:1], code[1:]
    if kind in ("S", "U") and digits.isdigit() and int(digits) > 0:
        width = int(digits)
        return (DType.bytes, "|", width) if kind == "S" else (DType.string, order, 4 * width)
    if kind == "O":
        raise UnsupportedError(
            f"npy dtype {descr!r} is a pickled object array; mlconv never unpickles")
    if code == "f1":
        raise UnsupportedError(
            f"npy dtype {descr!r} is ambiguous (np.save writes float8_e5m2 this way)")
    if kind in "fc" and digits in ("12", "16", "24", "32"):
        raise UnsupportedError(
            f"npy dtype {descr!r} is a long double (float{8 * int(digits) // (1 + (kind == 'c'))}"
            "); mlconv holds no extended precision and never narrows it silently")
    if kind == "V":
        raise UnsupportedError(
            f"npy dtype {descr!r} is opaque bytes (np.save writes bfloat16/float8 this way); "
            "its real dtype is unknown")
    raise UnsupportedError(f"npy dtype {descr!r} is not supported")


def to_npy_descr(dtype: DType, itemsize: int | None = None) -> str | None:
    """The npy descr for a dtype (None when npy cannot name it without ambiguity)."""
    if dtype is DType.bytes:
        return f"|S{itemsize}"
    if dtype is DType.string:
        return f"<U{itemsize // 4}"
    return _ROWS[dtype].npy


NPY_DTYPES = frozenset(d for d, row in _ROWS.items() if row.npy) | {DType.string, DType.bytes}


# --- Arrow ------------------------------------------------------------------------------

_ARROW = {
    DType.bool: "bool_", DType.int8: "int8", DType.int16: "int16", DType.int32: "int32",
    DType.int64: "int64", DType.uint8: "uint8", DType.uint16: "uint16", DType.uint32: "uint32",
    DType.uint64: "uint64", DType.float16: "float16", DType.float32: "float32",
    DType.float64: "float64", DType.string: "string", DType.bytes: "binary",
}


def _arrow_time(dtype: DType):
    """date32 / timestamp / duration for the units Arrow has (days, s, ms, us, ns)."""
    import pyarrow as pa

    unit = dtype.value.split("[")[1][:-1]
    if dtype.kind == "datetime" and unit == "D":
        return pa.date32()
    if unit in ("s", "ms", "us", "ns"):
        return pa.timestamp(unit) if dtype.kind == "datetime" else pa.duration(unit)
    return None


def from_arrow(typ) -> DType | None:
    """The canonical dtype of an Arrow type that maps one to one, else None."""
    import pyarrow as pa

    for dtype, name in _ARROW.items():
        if typ == getattr(pa, name)():
            return dtype
    for dtype, row in _ROWS.items():
        if row.kind in ("datetime", "timedelta") and typ == _arrow_time(dtype):
            return dtype
    return None


def to_arrow(dtype: DType):
    """The pyarrow type of a canonical dtype that Arrow holds natively."""
    import pyarrow as pa

    if dtype.kind in ("datetime", "timedelta") and _arrow_time(dtype) is not None:
        return _arrow_time(dtype)
    name = _ARROW.get(dtype)
    if name is None:
        raise UnsupportedError(f"Arrow has no native type for {dtype.value}")
    return getattr(pa, name)()


# --- dtypes a container lacks: stored as same-width unsigned integers plus a tag ---------

# One rule for every container (HDF5 attribute, Arrow field metadata): the payload goes as
# uintN (or N raw bytes) and the tag names the real dtype, so reading back is a relabel.
DTYPE_TAG = "mlconv.dtype"
OLD_DTYPE_TAGS = ("mlconv_dtype",)  # HDF5 files written by mlconv before the rule was shared


def tag_storage(dtype: DType) -> str:
    """The numpy storage ('<uN' or 'VN') a dtype is written as under ``DTYPE_TAG``."""
    if dtype.bits is None or dtype.is_subbyte:
        raise UnsupportedError(f"{dtype.value} cannot be stored under a dtype tag")
    width = dtype.bits // 8
    return f"<u{width}" if width in (1, 2, 4, 8) else f"V{width}"


def tagged(stored_bits: int | None, stored_kind: str, tag) -> DType | None:
    """The dtype a tag names when it fits the storage exactly (a relabel), else None."""
    if isinstance(tag, bytes):
        tag = tag.decode("utf-8", "replace")
    if not isinstance(tag, str) or tag not in DType._value2member_map_:
        return None
    real = DType(tag)
    if real.bits != stored_bits or stored_kind not in ("uint", "bytes"):
        return None
    return real


def arrow_storage(dtype: DType):
    """(Arrow type holding ``dtype``, field metadata or None): native where Arrow has the
    type, else the tag rule."""
    import pyarrow as pa

    tag = {DTYPE_TAG.encode(): dtype.value.encode()}
    try:
        typ = to_arrow(dtype)
        if dtype.kind in ("datetime", "timedelta"):
            # Parquet has no seconds unit (it would rewrite the column and lose a tensor
            # column's shape): seconds go as exact milliseconds, the tag names the dtype
            if dtype.value.endswith("[s]"):
                typ = pa.timestamp("ms") if dtype.kind == "datetime" else pa.duration("ms")
            return typ, tag
        return typ, None
    except UnsupportedError:
        pass
    storage = tag_storage(dtype)
    typ = getattr(pa, f"uint{dtype.bits}")() if storage[0] == "<" else pa.binary(dtype.bits // 8)
    return typ, tag


def arrow_type_name(t) -> str:
    """An Arrow type for people: the canonical dtype name where there is one."""
    found = from_arrow(t)
    return found.value if found is not None else str(t)


# --- ONNX (TensorProto.DataType) --------------------------------------------------------

_ONNX = {
    1: DType.float32, 2: DType.uint8, 3: DType.int8, 4: DType.uint16, 5: DType.int16,
    6: DType.int32, 7: DType.int64, 8: DType.string, 9: DType.bool, 10: DType.float16,
    11: DType.float64, 12: DType.uint32, 13: DType.uint64, 14: DType.complex64,
    15: DType.complex128, 16: DType.bfloat16, 17: DType.float8_e4m3fn,
    18: DType.float8_e4m3fnuz, 19: DType.float8_e5m2, 20: DType.float8_e5m2fnuz,
    21: DType.uint4, 22: DType.int4, 23: DType.float4_e2m1fn, 24: DType.float8_e8m0fnu,
}
_ONNX_CODE = {d: code for code, d in _ONNX.items()}
ONNX_DTYPES = frozenset(_ONNX.values()) | {DType.bytes}


def from_onnx(code: int) -> DType:
    try:
        return _ONNX[code]
    except KeyError:
        raise UnsupportedError(f"ONNX element type {code} has no mlconv dtype") from None


def to_onnx(dtype: DType) -> int:
    """The TensorProto.DataType code (raw bytes go to STRING too, whose reader decodes it)."""
    return 8 if dtype is DType.bytes else _ONNX_CODE[dtype]


# --- safetensors -------------------------------------------------------------------------

_ST_BY_CODE = {row.safetensors: d for d, row in _ROWS.items() if row.safetensors}
SAFETENSORS_DTYPES = frozenset(_ST_BY_CODE.values())


def from_safetensors(code: str) -> DType:
    try:
        return _ST_BY_CODE[code]
    except (KeyError, TypeError):
        raise UnsupportedError(f"unknown safetensors dtype {code!r}") from None


def to_safetensors(dtype: DType) -> str | None:
    return _ROWS[dtype].safetensors


# --- extended precision (long double, IEEE quad) ----------------------------------------
# mlconv has no dtype for them: such a tensor is held as its raw bytes (dtype bytes) with
# attrs[FLOAT128_ATTR] naming the bit layout; converting it is a loss whose way out is
# --cast float128=float64, which decodes every value correctly rounded.

FLOAT128 = "float128"
FLOAT128_ATTR = "mlconv_float128"


def extended_layout(size: int, sign: int, exp: tuple[int, int], mant: tuple[int, int],
                    bias: int, implicit: bool, order: str = "<") -> dict:
    """The attrs value describing an extended float's bits (positions from the low bit)."""
    return {"size": size, "sign": sign, "exp": list(exp), "mant": list(mant), "bias": bias,
            "implicit": implicit, "order": order}


def longdouble_layout(itemsize: int) -> dict | None:
    """This platform's long double (what ``np.load`` would use), if it is extended."""
    np = _np()
    info = np.finfo(np.longdouble)
    if np.dtype(np.longdouble).itemsize != itemsize or info.nexp != 15:
        return None
    if info.nmant == 63:  # x87 80-bit: explicit integer bit, padded
        return extended_layout(itemsize, 79, (64, 15), (0, 64), 16383, False)
    if info.nmant == 112:  # IEEE binary128
        return extended_layout(itemsize, 127, (112, 15), (0, 112), 16383, True)
    return None


def decode_extended(raw, layout: dict):
    """float64 values of raw extended floats (uint8 rows of ``layout["size"]`` bytes),
    each correctly rounded; beyond float64's range they become +-inf."""
    from fractions import Fraction

    np = _np()
    size = int(layout["size"])
    rows = np.ascontiguousarray(raw, np.uint8).reshape(-1, size)
    if layout.get("order") == ">":
        rows = rows[:, ::-1]
    (e_pos, e_size), (m_pos, m_size) = layout["exp"], layout["mant"]
    s_pos, bias, implicit = layout["sign"], layout["bias"], layout["implicit"]
    e_max, frac_bits = (1 << e_size) - 1, m_size if implicit else m_size - 1
    out = np.empty(len(rows), np.float64)
    for i, row in enumerate(rows):
        v = int.from_bytes(row.tobytes(), "little")
        sign = -1.0 if (v >> s_pos) & 1 else 1.0
        e, m = (v >> e_pos) & e_max, (v >> m_pos) & ((1 << m_size) - 1)
        if e == e_max:
            out[i] = sign * np.inf if m & ((1 << frac_bits) - 1) == 0 else np.nan
            continue
        if implicit and e:
            m |= 1 << m_size
        scale = max(e, 1) - bias - frac_bits
        try:
            out[i] = sign * float(Fraction(m) * (Fraction(2) ** scale))
        except OverflowError:
            out[i] = sign * np.inf
    return out
