"""npz: a zip of npy members, one tensor per member (``np.savez`` / ``np.savez_compressed``).

Stored members are memory-mapped in place; deflated (or bzip2) ones stream through our own
bounded inflater, which never decodes more than asked for nor more than the declared size
(zipfile decodes a bzip2 read whole). Every member's npy header is checked against the zip's
declared sizes, a declared size that deflate could not produce from the stored bytes is
refused (zip bombs), and so are members whose bytes overlap (one member listed many times).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from typing import TYPE_CHECKING

from .. import dtypes as D
from .. import ranged
from ..errors import (
    FormatError,
    MlconvError,
    UnsafeInputError,
    UnsupportedError,
)
from ..model import Bundle, Tensor
from ..sources import FileMap, FileSource, StreamSource, check_memory
from . import npy
from .base import Capabilities, Format

if TYPE_CHECKING:
    import zipfile

MAX_DEFLATE_RATIO = 1032  # deflate's hard limit; a larger declared size is a lie
# zip's method numbers (APPNOTE 4.4.5), so that importing this module does not import
# zipfile (and pathlib with it): writing stored members never needs it
_STORED, _DEFLATED, _BZIP2 = 0, 8, 12
_METHODS = {_STORED: "none", _DEFLATED: "deflate", _BZIP2: "bzip2"}
_IN = 1 << 16  # compressed bytes fed to a decoder at a time
_ZIP_ERRORS = (zlib.error, EOFError, OSError, ValueError, NotImplementedError,
               RuntimeError)  # and zipfile.BadZipFile, where zipfile is imported


class _Inflater:
    """A zip member's bytes decoded as they are read: each read decodes at most what it
    returns and never more than the declared size, so a bomb costs only what is asked for."""

    def __init__(self, path, start: int, info: zipfile.ZipInfo, entry):
        import bz2

        self._path, self._entry, self._info = path, entry, info
        self._f = ranged.open_read(path)  # closed by close()
        self._f.seek(start)
        self._left_in, self._left_out, self._crc = info.compress_size, info.file_size, 0
        self._pending = b""
        method = info.compress_type
        self._d = None if method == _STORED else \
            zlib.decompressobj(-15) if method == _DEFLATED else bz2.BZ2Decompressor()

    def _feed(self) -> bytes:
        data = self._f.read(min(_IN, self._left_in))
        self._left_in -= len(data)
        return data

    def _some(self, want: int) -> bytes:
        if self._d is None:
            return self._feed()[:want] if self._left_in else b""
        if isinstance(self._d, type(zlib.decompressobj())):
            if not self._pending and self._left_in:
                self._pending = self._feed()
            if not self._pending:
                return b""
            out = self._d.decompress(self._pending, want)
            self._pending = self._d.unconsumed_tail
            return out
        if self._d.eof:
            return b""
        if self._d.needs_input:
            data = self._feed()
            if not data:
                return b""
            return self._d.decompress(data, want)
        return self._d.decompress(b"", want)

    def read(self, n: int = -1) -> bytes:
        n = self._left_out if n < 0 else min(n, self._left_out)
        out = bytearray()
        try:
            stalls = 0
            while len(out) < n and stalls < 3:
                data = self._some(n - len(out))
                stalls = 0 if data else stalls + 1
                out += data
        except (zlib.error, OSError, EOFError, ValueError) as e:
            raise FormatError(f"corrupt zip member: {e}", self._path, self._entry) from None
        if len(out) < n:
            raise FormatError(f"zip member truncated: {self._info.file_size} bytes declared, "
                              f"the stream ends {self._left_out - len(out)} short", self._path,
                              self._entry)
        self._crc = zlib.crc32(out, self._crc)
        self._left_out -= len(out)
        if self._left_out == 0 and self._crc != self._info.CRC:
            raise FormatError("zip member fails its CRC check", self._path, self._entry)
        return bytes(out)

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _no_overlap(spans, path) -> None:
    """Members whose bytes overlap: one stored member listed under many names (a bomb)."""
    end, last = 0, None
    for begin, stop, name in sorted(spans):
        if begin < end:
            raise FormatError(f"zip member overlaps member {last!r}: one stored member "
                              "listed under several names (zip bomb?)", path, name)
        end, last = stop, name


def _data_start(fh, info: zipfile.ZipInfo, size: int, path, entry) -> int:
    """Offset of a member's bytes in the file, from its local header (checked)."""
    if not 0 <= info.header_offset <= size - 30:
        raise FormatError(f"zip member header offset {info.header_offset} lies outside the "
                          f"{size}-byte file", path, entry)
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise FormatError("bad local zip header", path, entry)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.compress_size > size:
        raise FormatError("zip member extends past the end of the file", path, entry)
    return start


class Npz(Format):
    def header_ranges(self, get, size: int, path: str) -> bool:
        """Nothing more up front: the reader's every read of a remote copy fetches what it
        covers (the central directory, each member's local and npy headers)."""
        return True

    def read(self, path: str, options) -> Bundle:
        import zipfile

        size = os.path.getsize(path)
        ranged.claim(path)  # a remote copy: members are fetched when their data is read
        try:
            zf = zipfile.ZipFile(ranged.source(path))
            infos = zf.infolist()
        except (zipfile.BadZipFile, *_ZIP_ERRORS) as e:
            raise FormatError(f"not a valid zip archive: {e}", path) from None
        bundle = Bundle(path=path, format=self.id)
        bundle.on_close(zf.close)
        fmap = FileMap(path)
        bundle.on_close(fmap.close)
        refused: list[MlconvError] = []
        spans: list = []
        try:
            with ranged.open_read(path) as fh:
                for info in infos:
                    if not info.filename.endswith(".npy") or info.is_dir():  # (names "")
                        continue
                    name = info.filename[:-4]
                    if name in bundle or name in bundle.skipped:
                        raise FormatError("duplicate zip member", path, name)
                    try:
                        bundle[name] = self._member(fh, info, name, fmap, size, path,
                                                    options, spans)
                    except (UnsupportedError, UnsafeInputError) as e:  # a type, not damage
                        refused.append(e)
                        bundle.skipped[name] = e.message
            if refused and not len(bundle):  # nothing readable at all: refuse the file
                raise refused[0]
            _no_overlap(spans, path)
        except BaseException:
            bundle.close()
            raise
        return bundle

    def _member(self, fh, info, name, fmap, size, path, options, spans):
        # long: one zip member's checks (method, sizes, ratio, offsets) in file order
        if info.flag_bits & 0x1:
            raise UnsupportedError("encrypted zip member", path, name)
        if info.compress_type not in _METHODS:
            raise UnsupportedError(f"zip compression method {info.compress_type} (mlconv "
                                   "reads stored, deflate and bzip2 members)", path, name)
        stored = info.compress_type == _STORED
        if stored and info.compress_size != info.file_size:
            raise FormatError("stored zip member with mismatched sizes", path, name)
        deflate = info.compress_type == _DEFLATED
        if not stored and info.file_size > info.compress_size * MAX_DEFLATE_RATIO + (1 << 16) \
                and (deflate or not options.allow_expand):
            raise FormatError(
                f"zip member declares {info.file_size} bytes from {info.compress_size} "
                f"compressed bytes, more than {MAX_DEFLATE_RATIO} times (zip bomb?"
                f"{'' if deflate else ' --allow-expand reads it'})", path, name)
        start = _data_start(fh, info, size, path, name)
        spans.append((info.header_offset, start + info.compress_size, name))

        if stored:
            fh.seek(start)
            h = npy.read_header(fh, path, info.file_size, name)
            base = start + h.data_offset
        else:
            with _Inflater(path, start, info, name) as m:
                h = npy.read_header(m, path, info.file_size, name)
        if h.data_offset + h.nbytes != info.file_size:
            raise FormatError(
                f"zip member holds {info.file_size} bytes but its npy header declares "
                f"{h.data_offset + h.nbytes}", path, name)

        @contextlib.contextmanager
        def opener():
            ranged.fill(path, start, start + info.compress_size)  # remote: all at once
            with _Inflater(path, start, info, name) as member:
                member.read(h.data_offset)
                yield member

        limit = options.max_memory
        encoding = {"npy_version": h.version, "fortran_order": h.fortran,
                    "zip_compression": _METHODS[info.compress_type]}
        if h.fields is not None:
            encoding["npy_descr"] = h.descr

            def get_array():
                import numpy as np

                if stored:
                    ranged.fill(path, base, base + h.nbytes)
                    raw = fmap.array()[base:base + h.nbytes]
                else:
                    check_memory(h.nbytes, limit, path, name)
                    with opener() as m:
                        raw = np.frombuffer(bytearray(m.read(h.nbytes)), np.uint8)
                return raw.view(np.dtype(h.descr))

            return npy.structured_table(h, get_array, encoding, path, name)
        if stored:
            src = FileSource(fmap, base, h.dtype, h.shape, h.itemsize, h.byteorder,
                             h.fortran, entry=name)
        else:
            src = StreamSource(opener, h.dtype, h.shape, h.itemsize, h.byteorder, h.fortran,
                               path, name)
            src.limit = limit
        return Tensor(src, h.attrs, encoding=encoding)

    def check(self, path: str, bundle: Bundle, deep: bool):
        problems, warnings = super().check(path, bundle, deep)
        if deep:  # every member's CRC, including members that are not arrays
            import zipfile

            size = os.path.getsize(path)
            try:
                with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
                    for info in zf.infolist():
                        try:
                            if info.compress_type not in _METHODS:
                                raise FormatError(f"compression method {info.compress_type}")
                            start = _data_start(fh, info, size, path, info.filename)
                            with _Inflater(path, start, info, info.filename) as m:
                                while m.read(1 << 20):
                                    pass
                        except FormatError as e:
                            problems.append((info.filename, f"zip member corrupt: {e.message}"))
            except (zipfile.BadZipFile, *_ZIP_ERRORS) as e:
                problems.append((None, f"zip archive corrupt: {e}"))
        return problems, warnings

    def travel(self, bundle, name, entry, options, general):
        if options.compression == "deflate" and general[0] == "zero-copy":
            return "streamed", "deflate"
        return general

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        method = options.compression or self.caps.compressions[0]
        if method != "deflate":
            _write_stored(bundle, f, path, options)
            return
        import zipfile

        with zipfile.ZipFile(f, "w", compression=_DEFLATED, allowZip64=True) as zf:
            for name, entry in bundle.items():  # fitted: tensors of dtypes npz holds
                _check_name(name, path)
                header = npy.make_header(D.to_npy_descr(entry.dtype, entry.itemsize),
                                         entry.shape, align=64)
                big = len(header) + entry.nbytes >= 0x7FFFFFFF
                with zf.open(name + ".npy", "w", force_zip64=big) as m:
                    m.write(header)
                    for piece in entry.chunks():
                        m.write(piece)
                        if options.progress:
                            options.progress(len(piece))


# --- stored members in one ordered pass ------------------------------------------------
# zipfile writes every byte through Python. Our own writer lays each member out as
# [local header][npy header][payload], copies the payload file to file while a thread
# computes its CRC-32 from the pieces in passing (zlib releases the GIL), then patches the
# CRC in.
_LOCAL, _CENTRAL = b"PK\x03\x04", b"PK\x01\x02"
_MAX32, _UTF8, _ALIGN_ID = 0xFFFFFFFF, 0x800, 0xD935  # 0xD935: zipalign's padding field
_ZIP64_FROM = _MAX32  # sizes and offsets from here on go in zip64 fields (tests lower it)
_DATA_ALIGN = 64  # payloads start 64-aligned in the file: memory maps view them as is


def _field(value: int) -> int:
    """A 32-bit size or offset field: the value, or 0xFFFFFFFF (look in the zip64 field)."""
    return _MAX32 if value >= _ZIP64_FROM else value


def _member(sink, name: bytes, header: bytes, entry) -> tuple:
    """Write one stored member at sink.pos; (name, offset, size, crc) for the directory."""
    start, size = sink.pos, len(header) + entry.nbytes
    zip64 = size >= _ZIP64_FROM
    extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
    pad = -(start + 30 + len(name) + len(extra) + 6) % _DATA_ALIGN
    extra += struct.pack("<HHH", _ALIGN_ID, 2 + pad, _DATA_ALIGN) + bytes(pad)
    sink.write(struct.pack("<4s5H3L2H", _LOCAL, 45 if zip64 else 20, _UTF8, 0, 0, 0x21, 0,
                           _MAX32 if zip64 else size, _MAX32 if zip64 else size,
                           len(name), len(extra)) + name + extra)
    sink.write(header)
    crc = zlib.crc32(header)
    state = [crc]

    def digest(piece):
        state[0] = zlib.crc32(piece, state[0])

    entry.write_to(sink, digest)
    crc = state[0]
    os.pwrite(sink.fd, struct.pack("<L", crc), start + 14)
    return name, start, size, crc


def _write_stored(bundle: Bundle, f, path: str, options) -> None:
    f.flush()
    sink = options.sink(f.fileno())
    members = []
    for name, entry in bundle.items():  # fitted: tensors of dtypes npz holds
        _check_name(name, path)
        header = npy.make_header(D.to_npy_descr(entry.dtype, entry.itemsize), entry.shape,
                                 align=_DATA_ALIGN)
        members.append(_member(sink, (name + ".npy").encode("utf-8"), header, entry))
    directory = sink.pos
    for name, offset, size, crc in members:
        big = [v for v in (size, size, offset) if v >= _ZIP64_FROM]
        extra = struct.pack(f"<HH{len(big)}Q", 1, 8 * len(big), *big) if big else b""
        sink.write(struct.pack("<4s6H3L5H2L", _CENTRAL, 45 | 3 << 8, 45 if big else 20, _UTF8,
                               0, 0, 0x21, crc, _field(size), _field(size),
                               len(name), len(extra), 0, 0, 0, 0o644 << 16,
                               _field(offset)) + name + extra)
    count, length = len(members), sink.pos - directory
    if count >= 0xFFFF or directory >= _ZIP64_FROM or length >= _ZIP64_FROM:
        end64 = sink.pos
        sink.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                               length, directory))
        sink.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, end64, 1))
    sink.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF),
                           min(count, 0xFFFF), _field(length), _field(directory), 0))
    os.lseek(sink.fd, sink.pos, os.SEEK_SET)


def _check_name(name: str, path) -> None:
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or ".." in parts or "" in parts:
        raise UnsupportedError("this name cannot be an npz member (empty, absolute or "
                               "with '..')", path, name)
    if len(name.encode("utf-8")) + 4 > 0xFFFF:
        raise UnsupportedError("this name is too long for a zip member (64 KiB)", path,
                               name[:100] + "...")


FORMAT = Npz(
    representations=(("members", "tensors"),),
    id="npz",
    description="NumPy zip of arrays (np.savez)",
    extensions=(".npz",),
    caps=Capabilities(tensors=True, dtypes=D.NPY_DTYPES, zero_copy=True, raw_payload=True,
                      payload_checksums=True, compressions=("none", "deflate")),
    magic=(b"PK\x03\x04", b"PK\x05\x06"),
)
