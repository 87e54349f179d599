import ml_dtypes
import numpy as np
import pytest

from mlconv import dtypes as D
from mlconv.dtypes import DType
from mlconv.errors import UnsupportedError

NUMERIC = sorted(D.NUMERIC, key=lambda d: d.value)


@pytest.mark.parametrize("dtype", NUMERIC, ids=str)
def test_numpy_round_trip(dtype):
    nd = dtype.numpy()
    assert D.from_numpy(nd) is dtype
    assert D.from_numpy(nd.newbyteorder(">")) is dtype


@pytest.mark.parametrize("dtype", NUMERIC, ids=str)
def test_bits_match_numpy(dtype):
    if dtype.is_subbyte:
        assert dtype.numpy().itemsize == 1
        assert dtype.bits in (4, 6)
    else:
        assert dtype.bits == dtype.numpy().itemsize * 8


def test_subbyte_sizes_in_bits():
    assert DType.float4_e2m1fn.nbytes((4, 3)) == 6
    assert DType.float6_e2m3fn.nbytes((4,)) == 3
    assert DType.int4.nbytes((3,)) is None  # 12 bits: not whole bytes
    assert DType.float32.nbytes(()) == 4
    assert DType.float32.nbytes((0, 5)) == 0


def test_ambiguous_numpy_dtypes_are_not_guessed():
    with pytest.raises(UnsupportedError):
        D.from_numpy(np.dtype("V2"))  # what np.save writes for bfloat16
    with pytest.raises(UnsupportedError, match="float8_e5m2"):
        D.from_npy_descr("<f1")  # what np.save writes for float8_e5m2
    assert D.to_npy_descr(DType.bfloat16) is None
    assert D.to_npy_descr(DType.float8_e5m2) is None


@pytest.mark.parametrize("descr,expected", [
    ("<f4", (DType.float32, "<", 4)), (">i8", (DType.int64, ">", 8)),
    ("|b1", (DType.bool, "<", 1)), ("|u1", (DType.uint8, "<", 1)),
    ("<c16", (DType.complex128, "<", 16)), ("<U8", (DType.string, "<", 32)),
    ("|S3", (DType.bytes, "|", 3)), ("<M8[ns]", (DType.datetime64_ns, "<", 8)),
    (">m8[D]", (DType.timedelta64_D, ">", 8)),
])
def test_npy_descr(descr, expected):
    assert D.from_npy_descr(descr) == expected


@pytest.mark.parametrize("descr", ["|O", "<M8[fs]", "|V4", "", "<x9", "<f16"])
def test_npy_descr_refused(descr):
    with pytest.raises(UnsupportedError):
        D.from_npy_descr(descr)


def test_safetensors_codes_cover_reference_dtypes():
    codes = {D.to_safetensors(d) for d in D.SAFETENSORS_DTYPES}
    assert {"BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "C64"} <= codes
    for d in D.SAFETENSORS_DTYPES:
        assert D.from_safetensors(D.to_safetensors(d)) is d


def test_fallbacks_are_exact_widenings():
    held = D.NPY_DTYPES
    for dtype in (DType.bfloat16, DType.float8_e4m3fn, DType.float8_e5m2,
                  DType.float8_e8m0fnu, DType.float4_e2m1fn):
        to, exact = D.fallback(dtype, held)
        assert exact
        # every finite value of the narrow type survives the widening
        if dtype.is_subbyte:
            values = np.arange(16, dtype=np.uint8).view(dtype.numpy())
        else:
            values = np.arange(256, dtype=np.uint8).view(dtype.numpy())
        wide = values.astype(to.numpy())
        finite = np.isfinite(values.astype(np.float64))
        assert np.array_equal(wide.astype(dtype.numpy())[finite], values[finite])
    assert D.fallback(DType.complex128, D.SAFETENSORS_DTYPES) == (DType.complex64, False)


def test_parse_names():
    assert D.parse("bfloat16") is DType.bfloat16
    assert D.parse("f4") is DType.float32
    assert D.parse(np.dtype(ml_dtypes.bfloat16).name) is DType.bfloat16
    with pytest.raises(UnsupportedError):
        D.parse("float17")
