"""Property tests: any shape, any dtype a pair of formats holds, any chunk size -> same bytes."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlconv
from mlconv import dtypes as D
from mlconv.model import Tensor

from .helpers import payload, sample, st_read

BYTE_DTYPES = sorted((d for d in D.NUMERIC if not d.is_subbyte), key=lambda d: d.value)
shapes = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(BYTE_DTYPES), shape=shapes, seed=st.integers(0, 2 ** 16),
       order=st.sampled_from(["C", "F", ">"]), chunk=st.integers(1, 64))
def test_chunks_are_the_canonical_payload(dtype, shape, seed, order, chunk):
    arr = sample(dtype, shape, seed)
    src = arr
    if order == "F" and arr.ndim:
        src = np.asfortranarray(arr)
    elif order == ">" and arr.dtype.itemsize > 1 and D.to_npy_descr(dtype) is not None:
        src = arr.astype(arr.dtype.newbyteorder(">"))
    t = Tensor.from_numpy(src)
    assert b"".join(bytes(c) for c in t.chunks(chunk)) == payload(arr)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(sorted(D.SAFETENSORS_DTYPES & D.NPY_DTYPES, key=str)),
       shape=shapes, seed=st.integers(0, 2 ** 16), fortran=st.booleans())
def test_npy_to_safetensors_to_npz(tmp_path_factory, dtype, shape, seed, fortran):
    tmp = tmp_path_factory.mktemp("p")
    arr = sample(dtype, shape, seed)
    np.save(tmp / "x.npy", np.asfortranarray(arr) if fortran and arr.ndim else arr)
    mlconv.convert(tmp / "x.npy", tmp / "x.safetensors")
    assert st_read(tmp / "x.safetensors")[1]["x"][1:] == (shape, payload(arr))
    mlconv.convert(tmp / "x.safetensors", tmp / "x.npz")
    with np.load(tmp / "x.npz") as z:
        assert z["x"].dtype == arr.dtype and payload(z["x"]) == payload(arr)


LAYOUT_DTYPES = sorted(D.SAFETENSORS_DTYPES & (D.NPY_DTYPES | {D.DType.bfloat16,
                                                               D.DType.float8_e4m3fn,
                                                               D.DType.float8_e5m2}),
                       key=str)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtypes=st.lists(st.sampled_from(LAYOUT_DTYPES), min_size=1, max_size=3),
       rows=st.integers(0, 5), inner=st.lists(st.integers(1, 3), max_size=2).map(tuple),
       via=st.sampled_from(["h5", "parquet", "arrow", "arrows", "onnx"]),
       layout=st.sampled_from([None, "entries"]), seed=st.integers(0, 1000))
def test_any_bundle_survives_any_format(tmp_path_factory, dtypes, rows, inner, via, layout,
                                        seed):
    from .helpers import st_write

    tmp = tmp_path_factory.mktemp("b")
    tensors = {f"g/t{i}": sample(d, (rows,) + inner, seed + i) for i, d in enumerate(dtypes)}
    st_write(tmp / "in.safetensors", tensors)
    mid = tmp / f"mid.{via}"
    mlconv.convert(tmp / "in.safetensors", mid,
                   options={"layout": layout} if via in ("parquet", "arrow", "arrows") else None)
    mlconv.convert(mid, tmp / "out.safetensors")
    got = st_read(tmp / "out.safetensors")[1]
    assert sorted(got) == sorted(tensors)
    for name, arr in tensors.items():
        assert got[name][1:] == (arr.shape, payload(arr))
