"""Expectation files for ``mlconv validate --schema``: what a file must hold.

The document (``schemas/expectations.schema.json``) is shaped like ``mlconv inspect --json``
output, so a manifest of a good file is a starting expectation: its entries are required
(names may be globs), with their dtype and shape (``-1`` or ``null`` for any size along an
axis), rows and column types for tables, and its metadata keys and values. Beyond the
manifest: ``forbidden`` globs, ``max_size`` in bytes, ``allow_extra`` (default true),
``metadata_keys``, ``min_rows``/``max_rows`` and ``optional`` entries. Keys a manifest has
but an expectation does not check (``mlconv``, ``path``, ``size``, ``nbytes``, ...) are
ignored.
"""

from __future__ import annotations

import fnmatch
import json
import os

from .errors import OptionError

_TOP = {"format", "max_size", "metadata", "metadata_keys", "entries", "forbidden",
        "allow_extra", "mlconv", "path", "size", "groups", "skipped", "notes", "$schema",
        "description"}
_ENTRY = {"name", "kind", "dtype", "shape", "rows", "min_rows", "max_rows", "columns",
          "attrs", "optional", "nbytes", "description"}


def load(source) -> dict:
    """An expectation from a JSON file (or YAML when pyyaml is installed)."""
    path = os.fspath(source)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise OptionError(f"cannot read the expectation file: {e.strerror}", path) from None
    if path.lower().endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise OptionError("YAML expectations need pyyaml (pip install pyyaml); or use "
                              "JSON", path) from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise OptionError(f"invalid YAML: {e}", path) from None
    else:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise OptionError(f"invalid JSON: {e}", path) from None
    check_document(doc, path)
    return doc


def check_document(doc, path=None) -> None:
    """Raise OptionError naming what is wrong with an expectation document."""
    def bad(msg):
        raise OptionError(f"expectation: {msg}", path)

    if not isinstance(doc, dict):
        bad("must be an object")
    unknown = set(doc) - _TOP
    if unknown:
        bad(f"unknown key(s) {sorted(unknown)}")
    if "max_size" in doc and not (isinstance(doc["max_size"], int) and doc["max_size"] >= 0):
        bad("max_size must be a number of bytes")
    if not isinstance(doc.get("metadata", {}), dict):
        bad("metadata must be an object")
    for key in ("metadata_keys", "forbidden"):
        if not (isinstance(doc.get(key, []), list)
                and all(isinstance(x, str) for x in doc.get(key, []))):
            bad(f"{key} must be a list of strings")
    entries = doc.get("entries", [])
    if not isinstance(entries, list):
        bad("entries must be a list")
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            bad(f"entries[{i}] needs a name")
        unknown = set(e) - _ENTRY
        if unknown:
            bad(f"entries[{i}] has unknown key(s) {sorted(unknown)}")
        shape = e.get("shape")
        if shape is not None and not (isinstance(shape, list) and all(
                d is None or (isinstance(d, int) and d >= -1) for d in shape)):
            bad(f"entries[{i}].shape must list sizes, -1 or null for any")


def _shape_ok(expected, actual) -> bool:
    return len(expected) == len(actual) and all(
        e is None or e == -1 or e == a for e, a in zip(expected, actual, strict=True))


def check(manifest: dict, doc: dict) -> list[tuple[str | None, str]]:
    """Every way ``manifest`` (an inspect result) falls short of ``doc``."""
    problems: list[tuple[str | None, str]] = []
    fmt = doc.get("format")
    if fmt and fmt != manifest["format"]:
        problems.append((None, f"format is {manifest['format']}, expected {fmt}"))
    if "max_size" in doc and manifest["size"] > doc["max_size"]:
        problems.append((None, f"file is {manifest['size']} bytes, more than max_size "
                               f"{doc['max_size']}"))
    meta = manifest.get("metadata", {})
    for key in doc.get("metadata_keys", []):
        if key not in meta:
            problems.append((None, f"metadata key {key!r} missing"))
    for key, value in doc.get("metadata", {}).items():
        if key not in meta:
            problems.append((None, f"metadata key {key!r} missing"))
        elif value is not None and meta[key] != value:
            problems.append((None, f"metadata {key!r} is {meta[key]!r}, expected {value!r}"))
    entries = {e["name"]: e for e in manifest.get("entries", [])}
    matched: set[str] = set()
    for exp in doc.get("entries", []):
        names = [n for n in entries if fnmatch.fnmatchcase(n, exp["name"])]
        if not names:
            if not exp.get("optional"):
                problems.append((exp["name"], "required entry missing"))
            continue
        matched.update(names)
        for name in names:
            problems.extend((name, why) for why in _entry_problems(entries[name], exp))
    for pattern in doc.get("forbidden", []):
        for name in entries:
            if fnmatch.fnmatchcase(name, pattern):
                problems.append((name, f"forbidden entry (matches {pattern!r})"))
    if doc.get("allow_extra", True) is False:
        for name in entries:
            if name not in matched:
                problems.append((name, "unexpected entry (allow_extra is false)"))
    return problems


def _entry_problems(got: dict, exp: dict) -> list[str]:
    out = []
    kind = exp.get("kind")
    if kind and kind != got["kind"]:
        return [f"is a {got['kind']}, expected a {kind}"]
    if "dtype" in exp:
        allowed = exp["dtype"] if isinstance(exp["dtype"], list) else [exp["dtype"]]
        if got.get("dtype") not in allowed:
            out.append(f"dtype {got.get('dtype')}, expected {' or '.join(allowed)}")
    if exp.get("shape") is not None and got["kind"] == "tensor" \
            and not _shape_ok(exp["shape"], got["shape"]):
        out.append(f"shape {got['shape']}, expected {exp['shape']}")
    rows = got.get("rows")
    if "rows" in exp and rows != exp["rows"]:
        out.append(f"{rows} rows, expected {exp['rows']}")
    if "min_rows" in exp and (rows is None or rows < exp["min_rows"]):
        out.append(f"{rows} rows, expected at least {exp['min_rows']}")
    if "max_rows" in exp and (rows is None or rows > exp["max_rows"]):
        out.append(f"{rows} rows, expected at most {exp['max_rows']}")
    have = {c["name"]: c["type"] for c in got.get("columns", [])}
    for col in exp.get("columns", []):
        name = col.get("name")
        if name not in have:
            out.append(f"column {name!r} missing")
        elif col.get("type") and have[name] != col["type"]:
            out.append(f"column {name!r} has type {have[name]}, expected {col['type']}")
    for key, value in (exp.get("attrs") or {}).items():
        if key not in got.get("attrs", {}):
            out.append(f"attribute {key!r} missing")
        elif value is not None and got["attrs"][key] != value:
            out.append(f"attribute {key!r} is {got['attrs'][key]!r}, expected {value!r}")
    return out
