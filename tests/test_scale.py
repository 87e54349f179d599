"""Files with very many entries (issue 11, item 8): the per-entry paths of the safetensors
reader, the Bundle checks and inspect's output stay correct where they were made cheap.
The end-to-end budget (1,000,000 entries in 30 s, < 1 GiB) is tests/test_hostile.py's."""

import json
import struct
import time

import numpy as np
import pytest
from click.testing import CliRunner

import mlconv
from mlconv.cli import cli, show
from mlconv.errors import FormatError
from mlconv.model import Bundle, Tensor


def st_raw(path, header_text: bytes, data=b""):
    path.write_bytes(struct.pack("<Q", len(header_text)) + header_text + data)
    return path


def test_out_of_order_offsets_are_sorted_before_the_gap_check(tmp_path):
    header = {"b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
              "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}
    src = st_raw(tmp_path / "x.safetensors", json.dumps(header).encode(),
                 np.arange(8, dtype=np.uint8).tobytes())
    got = mlconv.load(src)
    assert list(got) == ["b", "a"]
    assert got["a"].numpy().tolist() == [0, 1, 2, 3]
    header["a"]["data_offsets"] = [0, 4]
    header["b"]["data_offsets"] = [5, 9]
    st_raw(src, json.dumps(header).encode(), bytes(9))
    with pytest.raises(FormatError, match=r"gap before it \(offset 5, expected 4\)") as e:
        mlconv.load(src)
    assert e.value.entry == "b"


@pytest.mark.parametrize("info, match", [
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "invalid shape"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}, "exactly"),
    ({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}, "invalid shape"),
    ({"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}, "whole bytes"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "needs 8 bytes"),
])
def test_bad_entry_after_many_good_ones_is_named(tmp_path, info, match):
    """The fast path in the JSON hook takes good entries; a bad one still gets its own error."""
    parts = [b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(50)]
    parts.insert(20, b'"bad":' + json.dumps(info).encode())
    src = st_raw(tmp_path / "x.safetensors", b"{" + b",".join(parts) + b"}", bytes(4))
    with pytest.raises(FormatError, match=match) as e:
        mlconv.load(src)
    assert e.value.entry == "bad"


def test_shapes_are_shared_not_copied(tmp_path):
    parts = [b'"t%d":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}' % i for i in range(5)]
    src = st_raw(tmp_path / "x.safetensors", b"{" + b",".join(parts) + b"}")
    with mlconv.load(src) as b:
        assert b["t0"].shape == (0, 3) and b["t0"].shape is b["t4"].shape
        assert b["t0"].nbytes == 0 and b["t0"].span[2] == 0
        assert list(b["t0"].chunks()) == []


@pytest.mark.parametrize("bad, match", [
    ("x\ud800", "lone surrogate"),
    ("n" * 70_000, "entry name of 70000 bytes"),
])
def test_batched_name_checks_find_the_bad_name(bad, match):
    names = ["a", "b", bad, "c"]
    tensors = [Tensor.from_numpy(np.zeros(1)) for _ in names]
    b = Bundle(path="f")
    with pytest.raises(FormatError, match=match):
        b._add_tensors(names, tensors)
    assert list(b) == ["a", "b"]  # as one by one: the first bad one stops


def test_batched_checks_still_check_every_shape():


    ok = Tensor.from_numpy(np.zeros(2))
    huge = Tensor.from_numpy(np.zeros(2))
    huge.source.shape = (1 << 62, 4)
    with pytest.raises(FormatError, match="does not fit in 64 bits") as e:
        Bundle(path="f")._add_tensors(["a", "b", "c"], [ok, ok, huge])
    assert e.value.entry == "c"


def test_lazy_attrs_are_a_real_dict():
    t = Tensor.from_numpy(np.zeros(1))
    assert not t.has_attrs
    t.attrs["k"] = 1
    assert t.has_attrs and t.attrs == {"k": 1}
    assert Tensor(t.source, {"a": 2}).attrs == {"a": 2}
    t.encoding["e"] = 1
    assert t.encoding == {"e": 1}


def _many(tmp_path, n):
    parts = [b'"t%d":{"dtype":"F32","shape":[%d],"data_offsets":[0,0]}' % (i, i % 3 - i % 3)
             for i in range(n)]
    meta = b'"__metadata__":{"k":"v\\nw"},'
    return st_raw(tmp_path / "many.safetensors", b"{" + meta + b",".join(parts) + b"}")


@pytest.mark.parametrize("n", [3, show.BIG + 1])
def test_inspect_json_has_the_same_content_above_big(tmp_path, n):
    src = _many(tmp_path, n)
    res = CliRunner().invoke(cli, ["inspect", "--json", str(src)], catch_exceptions=False)
    assert res.exit_code == 0
    want = mlconv.inspect(src)
    assert json.loads(res.stdout) == want
    lines = res.stdout.splitlines()
    if n > show.BIG:  # one entry a line
        assert len(lines) == n + 11 and lines[9] == '    ' + json.dumps(want["entries"][0],
                                                                      ensure_ascii=False) + ","
    else:
        assert res.stdout == json.dumps(want, indent=2, ensure_ascii=False) + "\n"


def test_inspect_text_unchanged_by_streaming(tmp_path):
    src = _many(tmp_path, 2500)
    res = CliRunner().invoke(cli, ["inspect", str(src)], catch_exceptions=False)
    m = mlconv.inspect(src)
    assert res.stdout == show.manifest_text(m) + "\n"
    lines = res.stdout.splitlines()
    assert lines[:4] == [f"path     {src}", "format   safetensors", f"size     "
                         f"{show.human_bytes(src.stat().st_size)}", "entries  2500"]
    assert lines[8] == "name   kind    dtype    shape  size"
    assert lines[9] == "t0     tensor  float32  [0]    0 B"
    assert lines[-1] == "t2499  tensor  float32  [0]    0 B"
    assert len(lines) == 10 + 2500 - 1


def test_table_keeps_the_row_length_check():
    with pytest.raises(ValueError):
        show.table([["a", "b"], ["c"]], ["x", "y"])


def test_per_entry_read_cost_is_small(tmp_path):
    """200,000 entries read and described in a few seconds (was ~45 us an entry)."""
    src = _many(tmp_path, 200_000)
    t0 = time.process_time()
    m = mlconv.inspect(src)
    assert len(m["entries"]) == 200_000
    assert time.process_time() - t0 < 8
