"""Expectation files for ``mlconv validate --schema``: what a file must hold.

The document (``schemas/expectations.schema.json``) is shaped like ``mlconv inspect --json``
output, so a manifest of a good file is a starting expectation: its entries are required
(names may be globs), with their dtype and shape (``-1``, ``null`` or ``"*"`` for any size
along an axis), rows and column types for tables, and its metadata keys and values. Beyond the
manifest: ``forbidden`` globs, ``max_size`` in bytes, ``allow_extra`` (default true),
``metadata_keys``, ``min_rows``/``max_rows`` and ``optional`` entries. Keys a manifest has
but an expectation does not check (``mlconv``, ``path``, ``size``, ``nbytes``, ...) are
ignored. A document may instead map file globs to expectations (``files``). The JSON Schema
is the one judge of a document's shape: a bad field is a usage error naming its pointer.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os

from .errors import MlconvError, OptionError


def load(source) -> dict:
    """An expectation from a JSON file (or YAML when pyyaml is installed), checked against
    ``schemas/expectations.schema.json``."""
    from . import storage

    path = storage.shown(source)
    try:
        text = storage.read_bytes(source).decode("utf-8")
    except OSError as e:
        raise OptionError(f"cannot read the expectation file: {e.strerror}", path) from None
    except MlconvError as e:
        raise OptionError(f"cannot read the expectation file: {e.message}", path) from None
    except UnicodeDecodeError:
        raise OptionError("the expectation file is not UTF-8 text", path) from None
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


@functools.cache
def _validator():
    import jsonschema

    from .schemas import load as load_schema

    return jsonschema.Draft202012Validator(load_schema("expectations"))


def check_document(doc, path=None) -> None:
    """Raise OptionError naming the JSON pointer of the first bad field of ``doc``."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(doc))
    if error is not None:
        pointer = "".join(f"/{p}" for p in error.absolute_path) or "/"
        raise OptionError(f"expectation {pointer}: {error.message}", path)


class Chooser:
    """Which expectation a file meets: ``--schema EXPECT`` for every file, ``--schema
    GLOB=EXPECT`` for matching files, and a document's own ``files`` mapping."""

    def __init__(self, rules: list[tuple[str | None, dict]]):
        self.rules = rules

    @classmethod
    def from_options(cls, specs) -> Chooser:
        rules = []
        for spec in specs:
            glob, sep, file = spec.rpartition("=")
            if not sep or not glob or os.path.exists(spec):
                glob, file = None, spec
            rules.append((glob, load(file)))
        return cls(rules)

    def for_file(self, path: str) -> dict | None:
        for glob, doc in self.rules:
            if glob is None or _matches(path, glob):
                if "files" not in doc:
                    return doc
                for pattern, sub in doc["files"].items():
                    if _matches(path, pattern):
                        return sub
        return None


def _matches(path: str, pattern: str) -> bool:
    path = os.path.normpath(path)
    return fnmatch.fnmatchcase(path, os.path.normpath(pattern)) or \
        fnmatch.fnmatchcase(os.path.basename(path), pattern)


def _shape_ok(expected, actual) -> bool:
    return len(expected) == len(actual) and all(
        e is None or e == -1 or e == "*" or e == a
        for e, a in zip(expected, actual, strict=True))


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
