"""Hostile-file generators: each function makes one class of issue 11 in a folder at test time
(no committed blobs) and returns the file to hand to mlconv. ``CASES`` lists them with the
commands to run and the exit codes each may give (see tests/test_hostile.py).

Files that would take gigabytes on disk are sparse or compressed; bombs are sized just over
the default 1 GiB ``--max-memory`` so that trusting a header shows up in the child's RSS.
"""

from __future__ import annotations

import json
import os
import pickle  # only to write plain lists the way PyTables does; nothing is unpickled
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GiB = 1 << 30


# --- Parquet footers by hand (thrift compact protocol) ---------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _zz(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


class Thrift:
    """A thrift compact-protocol struct writer: fields in increasing id order."""

    I32, I64, BINARY, LIST, STRUCT = 5, 6, 8, 9, 12

    def __init__(self):
        self.buf = bytearray()
        self.last = 0

    def _field(self, fid: int, typ: int) -> None:
        delta = fid - self.last
        assert 0 < delta <= 15
        self.buf.append((delta << 4) | typ)
        self.last = fid

    def i32(self, fid, v):
        self._field(fid, self.I32)
        self.buf += _zz(v)
        return self

    def i64(self, fid, v):
        self._field(fid, self.I64)
        self.buf += _zz(v)
        return self

    def string(self, fid, s):
        self._field(fid, self.BINARY)
        raw = s.encode() if isinstance(s, str) else s
        self.buf += _varint(len(raw)) + raw
        return self

    def list(self, fid, elem_type, items, declared=None):
        """``items``: encoded elements (bytes); ``declared`` lies about their number."""
        self._field(fid, self.LIST)
        n = len(items) if declared is None else declared
        self.buf += bytes([(n << 4) | elem_type]) if n < 15 else \
            bytes([0xF0 | elem_type]) + _varint(n)
        for item in items:
            self.buf += item
        return self

    def struct(self, fid, inner: Thrift):
        self._field(fid, self.STRUCT)
        self.buf += inner.end()
        return self

    def end(self) -> bytes:
        return bytes(self.buf) + b"\x00"


def _ints(values):
    return [_zz(v) for v in values]


def _strings(values):
    return [_varint(len(v.encode())) + v.encode() for v in values]


def parquet_by_hand(path: Path, rows: int = 1, *, row_groups_declared=None,
                    schema_declared=None, root_children: int = 1) -> Path:
    """A one-column INT64 Parquet file with one data page holding one value; the footer may
    declare ``rows`` rows, more row groups or schema elements than it holds, or a root
    with ``root_children`` children."""
    value = struct.pack("<q", 7)
    page = Thrift().i32(1, 0).i32(2, len(value)).i32(3, len(value)) \
        .struct(5, Thrift().i32(1, 1).i32(2, 0).i32(3, 3).i32(4, 3)).end()
    data_offset = 4
    chunk_size = len(page) + len(value)
    meta = Thrift().i32(1, 2).list(2, Thrift.I32, _ints([0])).list(3, Thrift.BINARY,
                                                                    _strings(["x"])) \
        .i32(4, 0).i64(5, 1).i64(6, chunk_size).i64(7, chunk_size).i64(9, data_offset)
    column = Thrift().i64(2, data_offset).struct(3, meta)
    group = Thrift().list(1, Thrift.STRUCT, [column.end()]).i64(2, chunk_size).i64(3, rows)
    root = Thrift().string(4, "schema").i32(5, root_children).end()
    leaf = Thrift().i32(1, 2).i32(3, 0).string(4, "x").end()
    footer = Thrift().i32(1, 1).list(2, Thrift.STRUCT, [root, leaf], schema_declared) \
        .i64(3, rows).list(4, Thrift.STRUCT, [group.end()], row_groups_declared).end()
    path.write_bytes(b"PAR1" + page + value + footer + struct.pack("<I", len(footer))
                     + b"PAR1")
    return path


def parquet_row_group_bomb(d: Path) -> Path:
    """A small footer declaring 60 M row groups (5 GB of row group structs once parsed)."""
    return parquet_by_hand(d / "rowgroups.parquet", row_groups_declared=60_000_000)


def parquet_schema_bomb(d: Path) -> Path:
    """A footer whose schema list declares 50 M elements."""
    return parquet_by_hand(d / "schema.parquet", schema_declared=50_000_000)


def parquet_children_bomb(d: Path) -> Path:
    """A root schema element declaring 2^31 - 1 children."""
    return parquet_by_hand(d / "children.parquet", root_children=(1 << 31) - 1)


def parquet_rows_2p62(d: Path) -> Path:
    """A row group (and file) declaring 2^62 rows over one stored value."""
    return parquet_by_hand(d / "rows.parquet", rows=1 << 62)


# --- npz ---------------------------------------------------------------------------------

def _npy_header(descr, shape) -> bytes:
    from mlconv.formats.npy import make_header

    return make_header(descr, shape, align=64)


def _zip(path: Path, members, copies: int = 1) -> Path:
    """A zip by hand: ``members`` are (name, method, stored bytes, crc, declared size);
    ``copies`` > 1 repeats the first member's directory entry under new names (a0, a1...)."""
    local, central, offsets = bytearray(), bytearray(), []
    for name, method, data, crc, size in members:
        offsets.append(len(local))
        local += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc,
                             len(data), size, len(name), 0) + name + data
    entries = [(m, offsets[i]) for i, m in enumerate(members)]
    if copies > 1:
        entries = [((b"a%d.npy" % i,) + members[0][1:], 0) for i in range(copies)]
    for (name, method, data, crc, size), offset in entries:
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0,
                               0, crc, len(data), size, len(name), 0, 0, 0, 0, 0,
                               offset) + name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                      len(central), len(local), 0)
    path.write_bytes(bytes(local) + bytes(central) + end)
    return path


def bz2_zeros(copies: int) -> bytes:
    """A bzip2 stream of ``copies`` identical blocks of ~45 MB of zeros, made in about a
    second by repeating one compressed block (blocks are bit-aligned; the stream CRC
    combines the block CRCs), where compressing the zeros would take a minute."""
    import bz2

    one = bz2.compress(bytes(100 << 20), 9)
    bits, nbits = int.from_bytes(one, "big"), len(one) * 8
    magic, eos, mask = 0x314159265359, 0x177245385090, (1 << 48) - 1

    def find(start):
        for i in range(start, nbits - 48):
            if (bits >> (nbits - 48 - i)) & mask == magic:
                return i
        raise ValueError("no block")

    b1 = find(32)
    b2 = find(b1 + 48)
    size = b2 - b1
    block = (bits >> (nbits - b2)) & ((1 << size) - 1)
    crc = (block >> (size - 80)) & 0xFFFFFFFF
    out, combined = int.from_bytes(b"BZh9", "big"), 0
    for _ in range(copies):
        out = (out << size) | block
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ crc
    out = (out << 80) | (eos << 32) | combined
    total = 32 + copies * size + 80
    return (out << (-total % 8)).to_bytes((total + 7) // 8, "big")


def npz_bzip2_bomb(d: Path) -> Path:
    """A ~1 KB bzip2 member declaring 74 bytes that inflates to 1.2 GiB of zeros: zipfile
    decodes a bzip2 read whole, whatever the declared size."""
    return _zip(d / "bzip2.npz", [(b"a.npy", 12, bz2_zeros(28), 0, 74)])


def npz_deflate_table(d: Path) -> Path:
    """A deflated structured member of 1.1 GiB (deflate's own ~1000x ratio): reading it as
    one buffer must be refused by --max-memory."""
    n = GiB + (GiB >> 3)
    path = d / "deflate.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open("a.npy", "w", force_zip64=True) as m:
        m.write(_npy_header([("a", "|u1")], (n,)))
        block = bytes(64 << 20)
        for _ in range(n // len(block)):
            m.write(block)
    return path


def npz_shared_member(d: Path, copies: int = 20_000) -> Path:
    """20,000 central directory entries pointing at one stored 1 MiB member."""
    data = _npy_header("|u1", (1 << 20,)) + bytes(1 << 20)
    return _zip(d / "shared.npz", [(b"a0.npy", 0, data, zlib.crc32(data), len(data))],
                copies)


def npz_huge_name(d: Path) -> Path:
    """A safetensors source whose one tensor has a 1 MB name (an npz member name is < 64 KiB)."""
    return _safetensors(d / "longname.safetensors", {"n" * (1 << 20): ("F32", [1], 4)})


# --- HDF5 --------------------------------------------------------------------------------

def _h5py():
    import h5py

    return h5py


def hdf5_vlen_shared_heap(d: Path, refs: int = 2000) -> Path:
    """2,000 vlen strings all pointing at one 1 MiB global-heap object (2 GiB decoded)."""
    h5py = _h5py()
    path = d / "vlen.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("s", (refs,), dtype=h5py.string_dtype("utf-8"))
        ds[0] = "x" * (1 << 20)
        ds[1:] = ["y"] * (refs - 1)
        offset = ds.id.get_offset()
    raw = bytearray(path.read_bytes())
    first = raw[offset:offset + 16]  # (length, heap collection address, object index)
    for i in range(1, refs):
        raw[offset + 16 * i:offset + 16 * (i + 1)] = first
    path.write_bytes(bytes(raw))
    return path


def hdf5_huge_chunk(d: Path) -> Path:
    """One gzip chunk of 1.2 GiB of zeros (~1.2 MB stored): the guard decoded it whole."""
    h5py = _h5py()
    n = GiB + (GiB >> 2)
    comp = zlib.compressobj(1)
    block = bytes(64 << 20)
    parts = [comp.compress(block) for _ in range(n // len(block))]
    parts.append(comp.flush())
    path = d / "chunk.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("z", (n,), dtype="u1", chunks=(n,), compression="gzip")
        ds.id.write_direct_chunk((0,), b"".join(parts))
    return path


def hdf5_never_written(d: Path) -> Path:
    """A 2^40-element contiguous dataset that was never written: only fill values."""
    h5py = _h5py()
    path = d / "fill.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("big", (1 << 40,), dtype="u1")
    return path


def hdf5_never_written_chunked(d: Path) -> Path:
    h5py = _h5py()
    path = d / "fillc.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("big", (1 << 40,), dtype="u1", chunks=(1 << 20,))
    return path


def hdf5_many_datasets(d: Path, n: int = 30_000) -> Path:
    """30,000 small datasets (took 31 s; the walk uses h5py's low-level calls, ~0.15 ms a
    dataset in this process and as much in the guard child)."""
    h5py = _h5py()
    path = d / "many.h5"
    with h5py.File(path, "w", libver="latest") as f:
        for i in range(n):
            f.create_dataset(f"d{i}", data=np.int32(i))
    return path


def hdf5_vds_unlimited(d: Path) -> Path:
    """A virtual dataset with an unlimited extent over a file outside the folder."""
    h5py = _h5py()
    outside = d.parent / "outside.h5"
    with h5py.File(outside, "w") as f:
        f.create_dataset("secret", data=np.arange(1000, dtype="i4"), maxshape=(None,))
    layout = h5py.VirtualLayout(shape=(10,), maxshape=(None,), dtype="i4")
    src = h5py.VirtualSource(f"../{outside.name}", "secret", shape=(1000,), maxshape=(None,))
    layout[0:h5py.h5s.UNLIMITED] = src[0:h5py.h5s.UNLIMITED]
    path = d / "vds.h5"
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("v", layout, fillvalue=0)
    return path


def hdf5_elink_chain(d: Path) -> Path:
    """x.h5 links to b.h5:/x/cdata in the same folder; b.h5's /x links outside (absolute)."""
    h5py = _h5py()
    outside = d.parent / "outside2.h5"
    with h5py.File(outside, "w") as f:
        f.create_dataset("x/cdata", data=np.arange(100, dtype="i4"), compression="gzip")
    with h5py.File(d / "b.h5", "w") as f:
        f["x"] = h5py.ExternalLink(str(outside), "/x")
    with h5py.File(d / "x.h5", "w") as f:
        f["c"] = h5py.ExternalLink("b.h5", "/x/cdata")
    return d / "x.h5"


def hdf5_nested_compound(d: Path, depth: int = 1000) -> Path:
    """A compound type nested 1,000 deep."""
    h5py = _h5py()
    h5t = h5py.h5t
    t = h5t.STD_I32LE.copy()
    for _ in range(depth):
        outer = h5t.create(h5t.COMPOUND, t.get_size())
        outer.insert(b"a", 0, t)
        t = outer
    path = d / "nested.h5"
    with h5py.File(path, "w") as f:
        space = h5py.h5s.create_simple((1,))
        h5py.h5d.create(f.id, b"n", t, space)
    return path


def _pickle_ops(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def exploding_pickle(levels: int = 40) -> bytes:
    """A tuple DAG: each level holds the previous one twice (2^40 strings when expanded)."""
    body = b"X" + struct.pack("<I", 100) + b"s" * 100 + b"q\x00"
    for i in range(1, levels):  # the stack holds x[i-1]; GET it again, pair the two
        body += b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    return _pickle_ops(b"]" + body + b"a")


def deep_pickle(depth: int = 60_000) -> bytes:
    return _pickle_ops(b"N" + b"\x85" * depth)


def _pytables_frame(path: Path, values_cols: bytes, kind=None) -> Path:
    """A pandas ``format="table"`` frame as PyTables writes it, with chosen pickles."""
    h5py = _h5py()
    rec = np.zeros(3, dtype=[("index", "<i8"), ("values_block_0", "<f8", (1,))])
    with h5py.File(path, "w") as f:
        g = f.create_group("df")
        g.attrs["pandas_type"] = np.bytes_(b"frame_table")
        g.attrs["non_index_axes"] = np.void(pickle.dumps([(1, ["a"])], 2))
        g.attrs["values_cols"] = np.void(values_cols)
        t = g.create_dataset("table", data=rec)
        t.attrs["index_kind"] = np.bytes_(b"integer")
        t.attrs["values_block_0_kind"] = np.void(kind if kind is not None else
                                                 pickle.dumps(["a"], 2))
        t.attrs["values_block_0_dtype"] = np.bytes_(b"float64")
    return path


def pytables_exploding_repr(d: Path) -> Path:
    return _pytables_frame(d / "explode.h5", exploding_pickle())


def pytables_deep_pickle(d: Path) -> Path:
    return _pytables_frame(d / "deep.h5", deep_pickle())


def pytables_unhashable_kind(d: Path) -> Path:
    """A column kind that is a list, not a name (used as a dict key: TypeError)."""
    return _pytables_frame(d / "unhashable.h5", pickle.dumps(["values_block_0"], 2),
                           pickle.dumps([["a"]], 2))


# --- Arrow IPC / Parquet tables ---------------------------------------------------------------

def arrow_zstd_bomb(d: Path) -> Path:
    """One zstd batch of 1.2 GiB of zeros in a file of ~50 KB."""
    import pyarrow as pa

    n = GiB + (GiB >> 2)
    arr = pa.array(np.zeros(n, np.uint8))
    table = pa.table({"z": arr})
    path = d / "zstd.arrow"
    opts = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_file(str(path), table.schema, options=opts) as w:
        w.write_table(table, max_chunksize=n)
    return path


def _entries_table(n: int, dup: bool = False, shape=(0,), payload=b""):
    import pyarrow as pa

    names = [f"t{i}" for i in range(n)]
    if dup:
        names[-1] = names[0]
    schema = pa.schema([pa.field("name", pa.string()), pa.field("dtype", pa.string()),
                        pa.field("shape", pa.list_(pa.int64())),
                        pa.field("bytes", pa.large_binary())],
                       metadata={b"mlconv.layout": b"entries"})
    return pa.table([pa.array(names), pa.array(["uint8"] * n),
                     pa.array([list(shape)] * n, pa.list_(pa.int64())),
                     pa.array([payload] * n, pa.large_binary())], schema=schema)


def parquet_entries_100k(d: Path) -> Path:
    """100,000 entries rows (the issue's 300,000 took > 75 s: each row re-read its row group;
    now O(1) per row, a third of them keeps three runs within budget on busy cores)."""
    import pyarrow.parquet as pq

    path = d / "entries.parquet"
    pq.write_table(_entries_table(100_000), path, row_group_size=1 << 20)
    return path


def arrow_entries_100k(d: Path) -> Path:
    import pyarrow as pa

    table = _entries_table(100_000)
    path = d / "entries.arrow"
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table, max_chunksize=10_000)
    return path


def parquet_duplicate_entries(d: Path) -> Path:
    import pyarrow.parquet as pq

    path = d / "dup.parquet"
    pq.write_table(_entries_table(3, dup=True, shape=(1,), payload=b"\x01"), path)
    return path


def parquet_lying_shape(d: Path) -> Path:
    """An entries row whose shape needs 8 bytes over a 1-byte payload."""
    import pyarrow.parquet as pq

    path = d / "lying.parquet"
    pq.write_table(_entries_table(2, shape=(8,), payload=b"\x01"), path)
    return path


def parquet_lying_width(d: Path) -> Path:
    """A rows-layout column whose recorded mlconv.dtype (float64) lies about its uint8 storage."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    field_ = pa.field("x", pa.uint8(), metadata={b"mlconv.dtype": b"float64"})
    schema = pa.schema([field_], metadata={b"mlconv.layout": b"rows"})
    path = d / "width.parquet"
    pq.write_table(pa.table([pa.array([1, 2, 3], pa.uint8())], schema=schema), path)
    return path


def parquet_deep_json(d: Path) -> Path:
    """mlconv.attrs metadata nested 100,000 deep (RecursionError in json)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    deep = b"[" * 100_000 + b"]" * 100_000
    schema = pa.schema([pa.field("x", pa.int32())], metadata={b"mlconv.attrs": deep})
    path = d / "deepjson.parquet"
    pq.write_table(pa.table([pa.array([1], pa.int32())], schema=schema), path)
    return path


def parquet_zero_times_huge(d: Path) -> Path:
    """A (0, 2^40) npy tensor: zero bytes, but 2^40 values per row for a Parquet column."""
    path = d / "zerohuge.npy"
    path.write_bytes(_npy_header("<f4", (0, 1 << 40)))
    return path


def parquet_unknown_page(d: Path) -> Path:
    """A data page of an unknown page type (validate --deep must fail)."""
    path = parquet_by_hand(d / "page.parquet")
    raw = bytearray(path.read_bytes())
    raw[5] = 0x0E  # page type field: zigzag(7), no such PageType
    path.write_bytes(bytes(raw))
    return path


def arrow_truncated(d: Path) -> Path:
    import pyarrow as pa

    table = pa.table({"x": np.arange(1000)})
    path = d / "cut.arrow"
    with pa.ipc.new_file(str(path), table.schema) as w:
        w.write_table(table)
    path.write_bytes(path.read_bytes()[:-40])
    return path


# --- npy / safetensors / ONNX -------------------------------------------------------------

def npy_many_fields(d: Path, n: int = 10_000) -> Path:
    """A structured npy with 10,000 float32 fields and 100 rows."""
    descr = [(f"f{i}", "<f4") for i in range(n)]
    path = d / "fields.npy"
    path.write_bytes(_npy_header(descr, (100,)) + bytes(4 * n * 100))
    return path


def npy_duplicate_fields(d: Path) -> Path:
    path = d / "dupfields.npy"
    path.write_bytes(_npy_header([("a", "<i4"), ("a", "<i4")], (1,)) + bytes(8))
    return path


def npy_shape_2p64(d: Path) -> Path:
    """Shape (2^64, 0): no bytes, but a dimension no int64 holds."""
    path = d / "huge.npy"
    path.write_bytes(_npy_header("<f4", (1 << 64, 0)))
    return path


def npy_huge_shape(d: Path) -> Path:
    """Shape (2^62, 0): safetensors' reference library rejects such a file."""
    path = d / "hugeshape.npy"
    path.write_bytes(_npy_header("<f4", (1 << 62, 0)))
    return path


def _safetensors(path: Path, tensors: dict, metadata=None, raw_header: bytes | None = None):
    header, data, offset = {}, b"", 0
    for name, (code, shape, nbytes) in tensors.items():
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        data += bytes(nbytes)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def safetensors_many_empty(d: Path, n: int = 1_000_000) -> Path:
    """1,000,000 empty entries (took > 75 s and 1.9 GiB; work per entry is O(1) and small:
    ~12 s and ~600 MiB for inspect, inspect --json or validate)."""
    parts = [b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(n)]
    return _safetensors(d / "many.safetensors", {}, raw_header=b"{" + b",".join(parts) + b"}")


def safetensors_surrogate_name(d: Path) -> Path:
    raw = b'{"a\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path = d / "surrogate.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    return path


def safetensors_surrogate_metadata(d: Path) -> Path:
    raw = (b'{"__metadata__":{"k":"v\\udc00"},'
           b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    path = d / "surrogatemeta.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    return path


def _onnx_model(path: Path, tensors) -> Path:
    from onnx import helper

    graph = helper.make_graph([], "g", [], [], initializer=tensors)
    model = helper.make_model(graph)
    path.write_bytes(model.SerializeToString())
    return path


def onnx_duplicate_initializers(d: Path) -> Path:
    from onnx import numpy_helper

    a = numpy_helper.from_array(np.ones(2, np.float32), "w")
    b = numpy_helper.from_array(np.zeros(2, np.float32), "w")
    return _onnx_model(d / "dup.onnx", [a, b])


def onnx_raw_huge_dims(d: Path) -> Path:
    from onnx import TensorProto

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 40, 1 << 30],
                    raw_data=b"\0" * 8)
    return _onnx_model(d / "hugedims.onnx", [t])


def onnx_string_count(d: Path) -> Path:
    from onnx import TensorProto

    t = TensorProto(name="s", data_type=TensorProto.STRING, dims=[3], string_data=[b"a"])
    return _onnx_model(d / "strings.onnx", [t])


def onnx_shape_2p64(d: Path) -> Path:
    """An npy of shape (2^64, 0) converted to ONNX (dims are int64)."""
    return npy_shape_2p64(d)


def fifo(d: Path) -> Path:
    path = d / "pipe.npy"
    os.mkfifo(path)
    return path


def dev_zero(d: Path) -> Path:
    return Path("/dev/zero")


def non_utf8_name(d: Path) -> Path:
    path = Path(os.fsdecode(bytes(d) + b"/bad\xff.npy"))
    np.save(path, np.arange(3))
    return path


def newline_name(d: Path) -> Path:
    path = d / "bad\nname.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00garbage")
    return path


# --- GGUF ------------------------------------------------------------------------------------

def _gguf(path: Path, kv: bytes) -> Path:
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 3) + b"tok"
                     + kv)
    return path


def gguf_array_count_bomb(d: Path) -> Path:
    """A uint32 array declaring 2^59 elements (2 EiB) in a 50-byte file."""
    return _gguf(d / "count.gguf", struct.pack("<IIQ", 9, 4, 1 << 59))


def gguf_vocab_at_cap(d: Path) -> Path:
    """4 Mi two-byte strings (40 MB): the most array elements a header may hold, each a
    Python object once parsed."""
    n = 4 << 20
    rec = np.zeros((n, 10), np.uint8)
    rec[:, 0] = 2
    rec[:, 8], rec[:, 9] = 0x41 + np.arange(n) % 26, 0x61 + np.arange(n) // 26 % 26
    return _gguf(d / "vocab.gguf", struct.pack("<IIQ", 9, 8, n) + rec.tobytes())


# --- the list ---------------------------------------------------------------------------------

@dataclass
class Case:
    make: object                       # (folder) -> source path
    to: str = ".npz"                   # convert's DST extension
    exits: dict = field(default_factory=dict)  # command -> allowed exit codes (default {1})
    args: dict = field(default_factory=dict)   # command -> extra arguments
    wall: int = 60                     # seconds before a run counts as hung
    json: bool = False                 # also run `inspect --json`


ANY = (0, 1)
READ_OK = {"inspect": (0,), "validate": ANY}  # headers are fine; data is the trap

CASES: dict[str, Case] = {
    # item 7: amplification
    "parquet_row_group_bomb": Case(parquet_row_group_bomb),
    "parquet_schema_bomb": Case(parquet_schema_bomb),
    "parquet_children_bomb": Case(parquet_children_bomb),
    "npz_bzip2_bomb": Case(npz_bzip2_bomb),
    "npz_deflate_table": Case(npz_deflate_table, exits=READ_OK),
    "npz_shared_member": Case(npz_shared_member),
    "hdf5_vlen_shared_heap": Case(hdf5_vlen_shared_heap, exits=READ_OK),
    "hdf5_huge_chunk": Case(hdf5_huge_chunk, exits=READ_OK),
    "arrow_zstd_bomb": Case(arrow_zstd_bomb, exits=READ_OK),
    "hdf5_never_written": Case(hdf5_never_written, exits=READ_OK),
    "hdf5_never_written_chunked": Case(hdf5_never_written_chunked, exits=READ_OK),
    # item 8: time
    "npy_many_fields": Case(npy_many_fields, exits={"inspect": (0,), "convert": (0,),
                                                    "validate": (0,)}),
    "parquet_entries_100k": Case(parquet_entries_100k, ".safetensors",
                                 exits={"inspect": (0,), "convert": (0,), "validate": (0,)}),
    "arrow_entries_100k": Case(arrow_entries_100k, ".safetensors",
                               exits={"inspect": (0,), "convert": (0,), "validate": (0,)}),
    # the budget is 30 s of CPU; the wall cap only catches hangs (two busy cores)
    "safetensors_many_empty": Case(safetensors_many_empty, ".npy", json=True, wall=120,
                                   exits={"inspect": (0,), "inspect --json": (0,),
                                          "validate": (0,)}),
    "hdf5_many_datasets": Case(hdf5_many_datasets, ".safetensors", wall=120,
                               exits={"inspect": (0,), "convert": (0,), "validate": (0,)}),
    "pytables_exploding_repr": Case(pytables_exploding_repr, ".parquet"),
    # engineer A's classes (security, integrity, special files, internal errors)
    # a VDS is listed with its declared shape (never sized by opening its sources); its data
    # is refused; validate warns that it was not checked (the corpus's VDS is a good file)
    "hdf5_vds_unlimited": Case(hdf5_vds_unlimited, exits={"inspect": (0,), "validate": ANY}),
    "hdf5_elink_chain": Case(hdf5_elink_chain, args={"inspect": ["--allow-external"],
                                                     "convert": ["--allow-external"]},
                             exits={"inspect": ANY, "validate": ANY}),
    "parquet_duplicate_entries": Case(parquet_duplicate_entries),
    "onnx_duplicate_initializers": Case(onnx_duplicate_initializers),
    "parquet_rows_2p62": Case(parquet_rows_2p62, ".h5"),
    "fifo": Case(fifo, wall=35),  # blocks without CPU: a short wall cap
    "dev_zero_as_onnx": Case(dev_zero, args={c: ["--from", "onnx"] for c in
                                             ("inspect", "convert")},
                             wall=35),
    "safetensors_surrogate_name": Case(safetensors_surrogate_name, ".h5"),
    "safetensors_surrogate_metadata": Case(safetensors_surrogate_metadata, ".parquet",
                                           exits={"inspect": ANY}),
    "npy_shape_2p64_to_h5": Case(npy_shape_2p64, ".h5", exits={"inspect": ANY}),
    "npy_shape_2p64_to_onnx": Case(onnx_shape_2p64, ".onnx", exits={"inspect": ANY}),
    "npy_zero_times_huge_to_parquet": Case(parquet_zero_times_huge, ".parquet",
                                           exits={"inspect": ANY, "validate": ANY}),
    "npz_huge_name": Case(npz_huge_name, exits={"inspect": ANY, "validate": ANY}),
    "npy_duplicate_fields": Case(npy_duplicate_fields),
    "parquet_lying_width": Case(parquet_lying_width),
    "parquet_deep_json": Case(parquet_deep_json),
    "hdf5_nested_compound": Case(hdf5_nested_compound, ".parquet"),
    "pytables_deep_pickle": Case(pytables_deep_pickle, ".parquet"),
    "pytables_unhashable_kind": Case(pytables_unhashable_kind, ".parquet"),
    "onnx_raw_huge_dims": Case(onnx_raw_huge_dims),
    "onnx_string_count": Case(onnx_string_count),
    "non_utf8_name": Case(non_utf8_name, exits={"inspect": ANY, "convert": ANY,
                                                "validate": ANY}),
    # validate must not pass what convert rejects
    "parquet_lying_shape": Case(parquet_lying_shape, args={"validate": ["--deep"]},
                                exits={"inspect": ANY}),
    "parquet_unknown_page": Case(parquet_unknown_page, args={"validate": ["--deep"]},
                                 exits={"inspect": ANY}),
    "npy_huge_shape_to_safetensors": Case(npy_huge_shape, ".safetensors",
                                          exits={"inspect": ANY}),
    # errors are one line
    "arrow_truncated": Case(arrow_truncated),
    "newline_name": Case(newline_name),
    "gguf_array_count_bomb": Case(gguf_array_count_bomb),
    "gguf_vocab_at_cap": Case(gguf_vocab_at_cap, exits={"inspect": (0,), "validate": (0,)}),
}
