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
