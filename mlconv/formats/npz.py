"""npz: a zip of npy members, one tensor per member (``np.savez`` / ``np.savez_compressed``).

Stored members are memory-mapped in place; deflated ones stream through zipfile. Every
member's npy header is checked against the zip's declared sizes, and a declared size that
deflate could not produce from the stored bytes is refused (zip bombs).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zipfile
import zlib

from .. import dtypes as D
from ..errors import (
    FormatError,
    LossyConversionError,
    MlconvError,
    UnsafeInputError,
    UnsupportedError,
)
from ..model import Bundle, Table, Tensor
from ..sources import FileMap, FileSource, StreamSource
from . import npy
from .base import Capabilities, Format

MAX_DEFLATE_RATIO = 1032  # deflate's hard limit; a larger declared size is a lie
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
               NotImplementedError, RuntimeError)


class _Member:
    """A zip member file whose errors become FormatErrors naming the member."""

    def __init__(self, f, path, entry):
        self._f, self._path, self._entry = f, path, entry

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except _ZIP_ERRORS as e:
            raise FormatError(f"corrupt zip member: {e}", self._path, self._entry) from None


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
    def read(self, path: str, options) -> Bundle:
        size = os.path.getsize(path)
        try:
            zf = zipfile.ZipFile(path)
            infos = zf.infolist()
        except _ZIP_ERRORS as e:
            raise FormatError(f"not a valid zip archive: {e}", path) from None
        bundle = Bundle(path=path, format=self.id)
        bundle.on_close(zf.close)
        fmap = FileMap(path)
        bundle.on_close(fmap.close)
        refused: list[MlconvError] = []
        try:
            with open(path, "rb") as fh:
                for info in infos:
                    if not info.filename.endswith(".npy") or info.is_dir():  # (names "")
                        continue
                    name = info.filename[:-4]
                    if name in bundle or name in bundle.skipped:
                        raise FormatError("duplicate zip member", path, name)
                    try:
                        bundle[name] = self._member(zf, fh, info, name, fmap, size, path)
                    except (UnsupportedError, UnsafeInputError) as e:  # a type, not damage: skip it
                        refused.append(e)
                        bundle.skipped[name] = e.message
            if refused and not len(bundle):  # nothing readable at all: refuse the file
                raise refused[0]
        except BaseException:
            bundle.close()
            raise
        return bundle

    def _member(self, zf, fh, info, name, fmap, size, path):
        if info.flag_bits & 0x1:
            raise UnsupportedError("encrypted zip member", path, name)
        stored = info.compress_type == zipfile.ZIP_STORED
        if stored and info.compress_size != info.file_size:
            raise FormatError("stored zip member with mismatched sizes", path, name)
        if not stored and info.file_size > info.compress_size * MAX_DEFLATE_RATIO + (1 << 16):
            raise FormatError(
                f"zip member declares {info.file_size} bytes from {info.compress_size} "
                "compressed bytes, more than deflate can produce (zip bomb?)", path, name)
        start = _data_start(fh, info, size, path, name)

        if stored:
            fh.seek(start)
            h = npy.read_header(fh, path, info.file_size, name)
            base = start + h.data_offset
        else:
            try:
                with zf.open(info) as m:
                    h = npy.read_header(_Member(m, path, name), path, info.file_size, name)
            except _ZIP_ERRORS as e:
                raise FormatError(f"corrupt zip member: {e}", path, name) from None
        if h.data_offset + h.nbytes != info.file_size:
            raise FormatError(
                f"zip member holds {info.file_size} bytes but its npy header declares "
                f"{h.data_offset + h.nbytes}", path, name)

        @contextlib.contextmanager
        def opener():
            try:
                with zf.open(info) as m:
                    member = _Member(m, path, name)
                    member.read(h.data_offset)
                    yield member
            except _ZIP_ERRORS as e:
                raise FormatError(f"corrupt zip member: {e}", path, name) from None

        encoding = {"npy_version": h.version, "fortran_order": h.fortran,
                    "zip_compression": "none" if stored else "deflate"}
        if h.fields is not None:
            encoding["npy_descr"] = h.descr

            def get_array():
                import numpy as np

                if stored:
                    raw = fmap.array()[base:base + h.nbytes]
                else:
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
        return Tensor(src, encoding=encoding)

    def check(self, path: str, bundle: Bundle, deep: bool):
        problems, warnings = super().check(path, bundle, deep)
        if deep:  # every member's CRC, including members that are not arrays
            try:
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        try:
                            with zf.open(info) as m:
                                while m.read(1 << 20):
                                    pass
                        except _ZIP_ERRORS as e:
                            problems.append((info.filename, f"zip member corrupt: {e}"))
            except _ZIP_ERRORS as e:
                problems.append((None, f"zip archive corrupt: {e}"))
        return problems, warnings

    def write(self, bundle: Bundle, f, path: str, options) -> None:
        method = options.compression or self.caps.compressions[0]
        mode = zipfile.ZIP_DEFLATED if method == "deflate" else zipfile.ZIP_STORED
        with zipfile.ZipFile(f, "w", compression=mode, allowZip64=True) as zf:
            for name, entry in bundle.items():
                if isinstance(entry, Table):
                    raise UnsupportedError("npz holds tensors, not tables", path, name)
                _check_name(name, path)
                descr = D.to_npy_descr(entry.dtype, entry.itemsize)
                if descr is None:
                    raise LossyConversionError(f"npz cannot hold {entry.dtype.value}",
                                               path, name)
                header = npy.make_header(descr, entry.shape, align=64)
                big = len(header) + entry.nbytes >= 0x7FFFFFFF
                with zf.open(name + ".npy", "w", force_zip64=big) as m:
                    m.write(header)
                    for piece in entry.chunks():
                        m.write(piece)
                        if options.progress:
                            options.progress(len(piece))


def _check_name(name: str, path) -> None:
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or ".." in parts or "" in parts:
        raise UnsupportedError("this name cannot be an npz member (empty, absolute or "
                               "with '..')", path, name)
    if len(name.encode("utf-8")) + 4 > 0xFFFF:
        raise UnsupportedError("this name is too long for a zip member (64 KiB)", path,
                               name[:100] + "...")


FORMAT = Npz(
    id="npz",
    description="NumPy zip of arrays (np.savez)",
    extensions=(".npz",),
    caps=Capabilities(tensors=True, dtypes=D.NPY_DTYPES, zero_copy=True,
                      compressions=("none", "deflate")),
    magic=(b"PK\x03\x04", b"PK\x05\x06"),
)
