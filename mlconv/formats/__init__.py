"""The format registry: which formats exist, how files are detected, capability lookup.

Adding a format is one module (or package) here that defines ``FORMAT`` plus one line in
``IDS``. A third party adds one without changing mlconv: a Python entry point in the
``mlconv.formats`` group whose value is a Format (or a module defining ``FORMAT``).
Format modules import their heavy libraries only inside read/write.
"""

from __future__ import annotations

import importlib
import os
import sys

from ..errors import FormatError, OptionError, SourceNotFoundError, UnsupportedError
from .base import Capabilities, Format, ReadOptions, WriteOptions

IDS = (
    "npy",
    "npz",
    "safetensors",
    "hdf5",
    "parquet",
    "arrow",
    "onnx",
    "gguf",
)

_SNIFF_BYTES = 64

ENTRY_POINTS = "mlconv.formats"

_cache: dict[str, Format] = {}
_plugins: dict | None = None


def _entry_points() -> dict:
    """Formats other packages register (read once per process); a built-in id wins."""
    global _plugins
    if _plugins is None:
        _plugins = {}
        if not _maybe_declared():
            return _plugins
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINTS):
            fid = ep.name.lower()
            if fid not in IDS:
                _plugins.setdefault(fid, ep)
    return _plugins


def _maybe_declared() -> bool:
    """False only when no installed distribution can declare our entry points. Reading the
    entry_points.txt files costs about 1 ms; importing importlib.metadata, which every start
    of the CLI would pay, about 20 ms. A zip or any other kind of path entry: maybe."""
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except NotADirectoryError:
            return True  # a zip archive: let importlib.metadata look inside
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                try:
                    with open(os.path.join(folder, name, "entry_points.txt"), "rb") as f:
                        if ENTRY_POINTS.encode() in f.read():
                            return True
                except OSError:
                    continue
    return False


def ids() -> tuple[str, ...]:
    """Every registered format id: mlconv's own, then those of plugins."""
    return IDS + tuple(sorted(_entry_points()))


def get(format_id: str) -> Format:
    """The Format registered under ``format_id`` (lowercase id, e.g. 'safetensors')."""
    fid = (format_id or "").lower().lstrip(".")
    if fid not in _cache:
        if fid in IDS:
            _cache[fid] = importlib.import_module(f"{__name__}.{fid}").FORMAT
        elif fid in _entry_points():
            _cache[fid] = _load_plugin(fid, _entry_points()[fid])
        else:
            raise OptionError(f"unknown format {format_id!r}; known: {', '.join(ids())}")
    return _cache[fid]


def _load_plugin(fid: str, ep) -> Format:
    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 - another package's bug, named as such
        raise UnsupportedError(f"the format plugin {ep.value!r} failed to load: "
                               f"{type(e).__name__}: {e}") from None
    fmt = getattr(obj, "FORMAT", obj)
    if not isinstance(fmt, Format) or fmt.id != fid:
        raise UnsupportedError(f"the format plugin {ep.value!r} is not a Format with id "
                               f"{fid!r}")
    return fmt


def all_formats() -> list[Format]:
    """Every usable format; a plugin that fails to load is left out here (it is an error
    only when asked for by id), so another package's bug never stops mlconv."""
    out = [get(m) for m in IDS]
    for fid in sorted(_entry_points()):
        try:
            out.append(get(fid))
        except UnsupportedError:
            pass
    return out


def write_option_fields() -> dict:
    """Every registered format's write options by name: {name: (field, [format ids])}.
    One name declared by several formats (``layout``) is one option."""
    import dataclasses

    out: dict = {}
    for fmt in all_formats():
        if fmt.write_options is not None:
            for f in dataclasses.fields(fmt.write_options):
                out.setdefault(f.name, (f, []))[1].append(fmt.id)
    return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def make_write_options(fmt: Format, given=None):
    """``fmt``'s write-options instance from a mapping (or the instance itself); an option
    the format does not declare, or a value of the wrong kind, is an OptionError."""
    import dataclasses

    if given is not None and not isinstance(given, dict):
        if fmt.write_options is None or not isinstance(given, fmt.write_options):
            raise OptionError(f"options of type {type(given).__name__} do not apply to "
                              f"{fmt.id} output")
        given = dataclasses.asdict(given)
    declared = {f.name: f for f in dataclasses.fields(fmt.write_options)} \
        if fmt.write_options is not None else {}
    values = {}
    for name, value in (given or {}).items():
        f = declared.get(name)
        if value is None:
            continue  # left at its default (the CLI passes None for every flag not given)
        if f is None:
            if value is False:
                continue  # a flag not given, for another format
            owners = write_option_fields().get(name, (None, []))[1]
            where = f"applies to {', '.join(owners)} output only" if owners else \
                "is not an option of any format"
            raise OptionError(f"{flag(name)} {where}")
        values[name] = _checked(f, value)
    return fmt.write_options(**values) if fmt.write_options is not None else None


def _checked(f, value):
    meta = f.metadata
    if value is None:
        return value
    if meta.get("choices") and value not in meta["choices"]:
        raise OptionError(f"{flag(f.name)} must be {' or '.join(meta['choices'])}, "
                          f"not {value!r}")
    if meta.get("minimum") is not None and (isinstance(value, bool) or not
                                            isinstance(value, int) or value < meta["minimum"]):
        raise OptionError(f"{flag(f.name)} must be a whole number from {meta['minimum']}, "
                          f"not {value!r}")
    if meta.get("file"):
        value = os.fspath(value)
        if not os.path.isfile(value):
            raise OptionError(f"{flag(f.name)}: no such file", value)
    return value


def by_extension(path: str) -> Format | None:
    name = os.path.basename(os.fspath(path)).lower()
    best = None
    for fmt in all_formats():
        for ext in fmt.extensions:
            if name.endswith(ext) and (best is None or len(ext) > best[0]):
                best = (len(ext), fmt)
    return best[1] if best else None


def by_magic(head: bytes, size: int) -> Format | None:
    """The readable format whose magic bytes open ``head`` (a file of ``size`` bytes)."""
    head = head[:_SNIFF_BYTES]
    return next((f for f in all_formats() if f.can_read and f.sniff(head, size)), None)


def _regular_file(path: str) -> None:
    """Refuse what is not a regular file: a FIFO would block every reader, a device never
    ends. Opened non-blocking, so checking a FIFO does not wait for a writer."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
        raise SourceNotFoundError(f"not a regular file ({kind}): mlconv reads only files",
                                  path)


def detect(path, from_format: str | None = None) -> Format:
    """The format of an input file: ``from_format`` if given, else magic bytes, else extension."""
    path = os.fspath(path)
    try:
        _regular_file(path)
        if from_format:
            return get(from_format)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except SourceNotFoundError:
        raise
    except FileNotFoundError:
        raise SourceNotFoundError("no such file", path) from None
    except IsADirectoryError:
        raise SourceNotFoundError("is a directory, not a file", path) from None
    except OSError as e:
        raise SourceNotFoundError(f"cannot read: {e.strerror}", path) from None
    if size == 0:
        raise FormatError("empty file (0 bytes)", path)
    fmt = by_magic(head, size) or by_extension(path)
    if fmt is not None:
        return fmt
    raise FormatError("cannot tell the file's format from its bytes or name; use --from", path)


def for_output(path, to_format: str | None = None) -> Format:
    """The format to write: ``to_format`` if given, else DST's extension."""
    if to_format:
        fmt = get(to_format)
    else:
        fmt = by_extension(os.fspath(path))
        if fmt is None:
            raise OptionError(
                "cannot tell the output format from the file name; use --to FORMAT",
                os.fspath(path))
    if not fmt.can_write:
        raise OptionError(f"mlconv cannot write {fmt.id} files", os.fspath(path))
    return fmt


__all__ = [
    "IDS",
    "Capabilities",
    "Format",
    "ReadOptions",
    "WriteOptions",
    "all_formats",
    "by_extension",
    "detect",
    "for_output",
    "get",
    "ids",
    "make_write_options",
    "write_option_fields",
]
