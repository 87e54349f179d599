"""What ``inspect`` reports: a JSON-able manifest of a file, from its headers only."""

from __future__ import annotations

import os

from .formats import detect
from .formats.base import MAX_MEMORY, ReadOptions
from .model import Bundle, Table, paused_gc
from .version import __version__


def entry_manifest(name: str, entry) -> dict:
    if isinstance(entry, Table):
        return {"name": name, "kind": "table", "rows": entry.num_rows,
                "columns": [{"name": c, "type": t} for c, t in entry.columns],
                "attrs": _jsonable(entry.attrs)}
    return {"name": name, "kind": "tensor", "dtype": entry.dtype.value,
            "shape": list(entry.shape), "nbytes": entry.nbytes,
            "attrs": _jsonable(entry.attrs) if entry.has_attrs else {}}


def bundle_manifest(bundle: Bundle, path: str, size: int, *, drain: bool = False) -> dict:
    """The manifest of ``bundle``; ``drain`` empties the bundle as it goes, so that a million
    entries are not held twice (as Tensors and as their descriptions) at the peak."""
    with paused_gc():  # a dict per entry, maybe a million of them
        if drain:
            entries = [entry_manifest(n, e) for n, e in bundle._drain()]
            entries.reverse()
        else:
            entries = [entry_manifest(n, e) for n, e in bundle.items()]
        return _bundle_manifest(bundle, path, size, entries)


def _bundle_manifest(bundle: Bundle, path: str, size: int, entries: list) -> dict:
    out = {
        "mlconv": __version__,
        "path": path,
        "format": bundle.format,
        "size": size,
        "metadata": dict(bundle.metadata),
        "entries": entries,
    }
    if bundle.group_attrs:
        out["groups"] = {g or "/": _jsonable(a) for g, a in bundle.group_attrs.items()}
    if bundle.notes:
        out["notes"] = list(bundle.notes)
    if bundle.skipped:
        out["skipped"] = [{"name": n, "reason": r} for n, r in bundle.skipped.items()]
    return out


def inspect(path, format: str | None = None, *, allow_external: bool = False,
            max_memory: int = MAX_MEMORY, allow_expand: bool = False) -> dict:
    """The manifest of ``path`` (valid against schemas/manifest.schema.json)."""
    from . import storage

    options = ReadOptions(allow_external=allow_external, max_memory=max_memory,
                          allow_expand=allow_expand)
    with storage.staged(path, headers=True) as (local, _, _names):  # remote: headers only
        fmt = detect(local, format)
        fmt.check_available()
        with fmt.read(local, options) as bundle:
            manifest = bundle_manifest(bundle, local, os.path.getsize(local), drain=True)
    manifest["path"] = storage.shown(path)
    return manifest


def _jsonable(value):
    """attrs as plain JSON values (numpy scalars/arrays become numbers/lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return str(value)
