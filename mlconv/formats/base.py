"""What every format module declares: identity, detection, capabilities, reader and writer."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from ..dtypes import DType
from ..errors import MissingDependencyError

ALIGN = 4096  # data sections start here so outputs are mmap- and reflink-friendly
MAX_MEMORY = 1 << 30  # default cap on one decoded buffer (--max-memory)


def _bad_text(arr) -> str | None:
    """Why a text array cannot be written as UTF-8 (surrogates from UTF-16 writers), or None."""
    for i, value in enumerate(arr.reshape(-1).tolist()):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return (f"text is not valid Unicode: element {i} holds {e.reason} "
                    f"({e.object[e.start:e.end]!a}); it cannot be written as UTF-8")
    return None


@dataclass(frozen=True)
class ReadOptions:
    allow_external: bool = False  # follow links/files outside the file (same folder only)
    trusted: bool = False         # skip the crash guard for libraries that can crash (HDF5)
    max_memory: int = MAX_MEMORY  # bytes one decoded buffer (chunk, batch, member) may take
    allow_expand: bool = False    # write fill values of never-written data, whatever the size


def parse_size(text) -> int:
    """A byte count from ``1073741824``, ``512M``, ``1GiB``, ``2g``... (OptionError if not)."""
    from ..errors import OptionError

    if isinstance(text, int):
        value = text
    else:
        units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
        raw = str(text).strip().lower().removesuffix("b").removesuffix("i")
        num, unit = raw.rstrip("kmgt"), raw[len(raw.rstrip("kmgt")):]
        try:
            value = int(float(num) * units[unit]) if unit in units else -1
        except ValueError:
            value = -1
    if value <= 0:
        raise OptionError(f"--max-memory expects a positive size such as 512M or 2GiB, "
                          f"got {text!r}")
    return value


def option(help: str, *, default=None, metavar: str | None = None, choices: tuple = (),
           minimum: int | None = None, file: bool = False):
    """A field of a format's write-options dataclass; the CLI turns each into ``--name``
    (flags for bool fields), so a new option is one line in its format's module."""
    return field(default=default, metadata={"help": help, "metavar": metavar,
                                            "choices": choices, "minimum": minimum,
                                            "file": file})


@dataclass(frozen=True)
class WriteOptions:
    compression: str | None = None  # None: the format's default
    kernel_copy: bool = True        # False forces the generic path (bytes through memory)
    progress: Callable[[int], None] | None = None  # called with bytes written as they go
    own: object = None              # the target format's write-options dataclass instance

    def sink(self, fd: int):
        """A fileio.Sink on ``fd`` that reports progress and honours ``kernel_copy``."""
        from ..fileio import Sink

        return Sink(fd, self.progress, self.kernel_copy)


@dataclass(frozen=True)
class Capabilities:
    tensors: bool = True
    tables: bool = False
    dtypes: frozenset[DType] = frozenset()
    metadata: bool = False           # file-level str -> str metadata
    nulls: bool = False              # tables may hold nulls
    attrs: bool = False              # per-entry attrs
    max_entries: int | None = None   # npy holds exactly one
    zero_copy: bool = False          # readers hand out memory maps
    raw_payload: bool = False        # writers put tensor payloads verbatim (kernel-copyable)
    payload_checksums: bool = False  # headers hold checksums of the payload bytes (npz's
    #                                  CRC-32s): no payload can be written apart from them
    compressions: tuple[str, ...] = ("none",)  # first one is the default

    def as_dict(self) -> dict:
        return {
            "tensors": self.tensors, "tables": self.tables,
            "dtypes": sorted(d.value for d in self.dtypes),
            "metadata": self.metadata, "attrs": self.attrs, "nulls": self.nulls,
            "max_entries": self.max_entries, "zero_copy": self.zero_copy,
            "raw_payload": self.raw_payload,
            "compressions": list(self.compressions),
        }


@dataclass(frozen=True)
class Format:
    """A format's declaration. Modules subclass it and implement sniff/read/write."""

    id: str
    description: str
    extensions: tuple[str, ...]
    caps: Capabilities
    requires: tuple[str, ...] = ()   # modules that must be importable
    extra: str | None = None         # pip extra that brings them
    can_read: bool = True
    can_write: bool = True
    magic: tuple[bytes, ...] = field(default=())
    write_options: type | None = None  # a dataclass of ``option`` fields, or None
    # how the format holds entries: the nodes of the conversion graph. Each is (name,
    # kind) with kind "tensors", "table" or "blocks" (raw quantized blocks), plus "whole"
    # when its writer builds each entry whole in memory (Parquet's entries layout)
    representations: tuple[tuple[str, str], ...] = (("tensors", "tensors"),)

    def sniff(self, head: bytes, size: int) -> bool:
        """True when the first bytes look like this format. Never raises."""
        return any(head.startswith(m) for m in self.magic)

    def check_available(self) -> None:
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                extra = self.extra or self.id
                raise MissingDependencyError(
                    f"format {self.id} needs the {mod} package: pip install 'mlconv[{extra}]'")

    def read(self, path: str, options: ReadOptions):
        raise NotImplementedError

    def own(self, options: WriteOptions):
        """This format's write options from ``options`` (their defaults when not given)."""
        if options.own is not None or self.write_options is None:
            return options.own
        return self.write_options()

    def travel(self, bundle, name: str, entry, options: WriteOptions,
               general: tuple[str, str]) -> tuple[str, str]:
        """(method, why): how this writer moves ``entry``. ``general`` is the planner's
        answer from the source side (zero-copy when the payload lies verbatim and
        ``caps.raw_payload``, else streamed or in-memory); a format refines it, e.g.
        ("in-memory", "one row holds the whole tensor")."""
        return general

    def header_ranges(self, get, size: int, path: str) -> bool:
        """For remote files: fetch (``get(start, end) -> bytes``) the byte ranges a reader
        of this format needs to list the file's entries; the object is ``size`` bytes and
        ``path`` the local copy being filled (holes read as zeros). False: the reader needs
        the whole object."""
        return False

    def representation(self, bundle, options: WriteOptions) -> str | None:
        """Which of ``representations`` a write of ``bundle`` with ``options`` makes, when
        options decide it (Parquet's --layout); None: the planner's cheapest."""
        return None

    def side_files(self, path: str) -> list[str]:
        """Relative names of the files a file of this format reads beside itself (ONNX
        external data), fetched with it when it comes from a URL."""
        return []

    # block codecs (quantized weights) this format's sources can decode: each name is also
    # a --cast source (``--cast q8_0=float32``); a source carrying one has ``codec``,
    # ``codec_format``, ``logical_shape``, ``can_unpack`` and ``unpacked(dtype)``
    codecs: ClassVar[tuple[str, ...]] = ()

    isolate_env = "MLCONV_ISOLATE"  # set to 0 in a child so it does not isolate again

    def isolate(self) -> str | None:
        """The library that may crash on a hostile file of this format (validate then runs
        the whole check in a child process, see ``formats.isolation``), or None."""
        return None

    def unheld_columns(self, table) -> list[tuple[str, str]]:
        """(column, why) for each column of ``table`` this format cannot write; the
        planner makes each a named loss (``--exclude TABLE/COLUMN``)."""
        return []

    def left_behind(self, bundle) -> list[str]:
        """What of ``bundle`` (read by this format) no other format carries, one line each
        (an ONNX graph): reported when converting elsewhere, never a refusal."""
        return []

    def check(self, path: str, bundle, deep: bool):
        """(problems, warnings) beyond what reading the headers proved, each (entry, reason).

        Text must be valid Unicode (checked when small, always with ``deep``); ``deep``
        also reads every byte of every entry. What mlconv cannot read (a missing filter
        plugin, ...) is a warning: the file may be fine. Formats add their own checks.
        """
        from ..errors import MlconvError, UnsafeInputError, UnsupportedError

        problems, warnings = [], []
        for name, entry in bundle.items():
            try:
                if entry.kind == "table":
                    if deep:
                        for _ in entry.batches(65536):
                            pass
                    continue
                if entry.dtype is DType.string and (deep or (entry.nbytes or 0) <= 16 << 20):
                    bad = _bad_text(entry.numpy())
                    if bad:
                        problems.append((name, bad))
                if deep:
                    for _ in entry.chunks():
                        pass
            except (UnsupportedError, UnsafeInputError) as e:
                warnings.append((name, f"not checked: {e.message}"))
            except MlconvError as e:
                problems.append((name, e.message))
        return problems, warnings

    def write(self, bundle, f, path: str, options: WriteOptions) -> None:
        """Write ``bundle`` to ``f`` (an unbuffered binary temp file); ``path`` names DST.

        The bundle has already been fitted to ``caps`` by the caller (mlconv.convert).
        """
        raise NotImplementedError


def stem_name(path: str) -> str:
    """The entry name a file's stem gives (npy, a plain table): a stem that is not UTF-8
    (bytes the file system allows) is decoded once, here, with U+FFFD for what is not."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.fsencode(stem).decode("utf-8", "replace")
