"""``mlconv validate``: is a file structurally sound, and does it hold what is expected?

Structure: the format's reader checks every header it parses (offsets inside the file, no
overlaps, sizes = shape x dtype, capped header lengths, no pickles) and each format adds
checks of its own (``Format.check``); ``deep`` also reads every byte of data (CRCs, pages,
batches). HDF5 files are validated entirely inside a child process with resource limits, so
a libhdf5 crash is this file's failure, not the end of the run.

Expectations: see ``mlconv.expect`` and ``schemas/expectations.schema.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .errors import MlconvError, OptionError
from .formats import detect
from .formats.base import MAX_MEMORY, ReadOptions


@dataclass
class Problem:
    entry: str | None
    reason: str
    check: str = "structure"  # or "expectation"

    def as_dict(self) -> dict:
        return {"entry": self.entry, "reason": self.reason, "check": self.check}


@dataclass
class Report:
    """The verdict on one file: ``ok`` when ``problems`` is empty."""

    path: str
    format: str | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # could not check, not invalid

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "ok": self.ok,
                "problems": [p.as_dict() for p in self.problems],
                "warnings": [p.as_dict() for p in self.warnings]}


def validate(path, schema=None, *, deep: bool = True, format: str | None = None,
             allow_external: bool = False, max_memory: int = MAX_MEMORY,
             allow_expand: bool = False) -> Report:
    """Validate one file; ``schema`` is an expectation (dict or path to JSON/YAML).

    By default every page, chunk and tensor is decoded (a file that passes converts);
    ``deep=False`` checks headers only. ``max_memory`` caps one decoded buffer;
    ``allow_expand`` reads never-written data.
    """
    from . import expect, storage

    if storage.is_remote(path):
        return _validate_remote(path, schema, deep=deep, format=format,
                                allow_external=allow_external, max_memory=max_memory,
                                allow_expand=allow_expand)
    path = storage.local(path)
    expectation = expect.load(schema) if schema is not None and not isinstance(schema, dict) \
        else schema
    if expectation is not None:
        expect.check_document(expectation)
    report = Report(path)
    try:
        fmt = detect(path, format)
    except MlconvError as e:
        report.problems.append(Problem(e.entry, e.message))
        return report
    report.format = fmt.id
    options = ReadOptions(trusted=True, allow_external=allow_external,
                          max_memory=max_memory, allow_expand=allow_expand)
    if fmt.isolate() is not None:  # a library that may crash on the file: check in a child
        return _in_child(path, fmt, expectation, deep, options)
    return _validate_here(path, fmt, expectation, deep, report, options)


def _validate_remote(path, schema, **options) -> Report:
    """``validate`` of a local copy of a URL or file object; the report names the original."""
    from . import storage

    name = storage.shown(path)
    if schema is not None and not isinstance(schema, dict):
        from . import expect

        schema = expect.load(schema)  # a bad expectation is the caller's error, as locally
    try:
        with storage.staged(path) as (local, _, names):
            report = validate(local, schema, **options)
    except MlconvError as e:  # the object could not be fetched
        report = Report(name)
        report.problems.append(Problem(e.entry, e.message))
        return report
    report.path = name
    for p in report.problems + report.warnings:
        p.reason = p.reason.replace(local, name)
    return report


def _validate_here(path, fmt, expectation, deep, report, options) -> Report:
    from . import expect
    from .describe import bundle_manifest

    try:
        fmt.check_available()
        with fmt.read(path, options) as bundle:
            problems, warnings = fmt.check(path, bundle, deep)
            report.problems.extend(Problem(e, r) for e, r in problems)
            report.warnings.extend(Problem(e, r) for e, r in warnings)
            for name, reason in bundle.skipped.items():
                report.warnings.append(Problem(name, f"not checked, mlconv cannot read it: "
                                                     f"{reason}"))
            if expectation is not None:
                manifest = bundle_manifest(bundle, path, os.path.getsize(path))
                report.problems.extend(Problem(e, r, "expectation")
                                       for e, r in expect.check(manifest, expectation))
    except MlconvError as e:
        report.problems.append(Problem(e.entry, e.message))
    return report


# --- formats whose library may crash: the whole check in a child -----------------------

TIMEOUT = 300  # seconds: a deep check reads every byte

_CHILD = ("import sys\n"
          "from mlconv.formats.isolation import audit_from_env\n"
          "audit_from_env()\n"
          "from mlconv.validate import child_main\n"
          "sys.exit(child_main(*sys.argv[1:]))\n")


def _in_child(path: str, fmt, expectation, deep: bool, options: ReadOptions) -> Report:
    from .formats import isolation

    report = Report(path, fmt.id)
    proc = isolation.spawn(_CHILD, [path, fmt.id, json.dumps(expectation), "1" if deep else "0",
                                    "1" if options.allow_external else "0",
                                    str(options.max_memory),
                                    "1" if options.allow_expand else "0"],
                           fmt.isolate_env, capture=True)
    try:
        _, out = isolation.finish(proc, path, TIMEOUT, fmt.isolate())
        data = json.loads(out)
        report.problems = [Problem(p["entry"], p["reason"], p["check"])
                           for p in data["problems"]]
        report.warnings = [Problem(p["entry"], p["reason"], p["check"])
                           for p in data["warnings"]]
    except MlconvError as e:
        report.problems.append(Problem(None, e.message))
    except (ValueError, KeyError, TypeError):
        report.problems.append(Problem(None, "validation child failed: "
                                             + (proc.stderr.read().strip().splitlines()
                                                or ["?"])[-1]))
    return report


def child_main(path: str, format_id: str, expectation_json: str, deep: str,
               allow_external: str, max_memory: str, allow_expand: str) -> int:
    """Child side of an isolated validation: validate here, print the report as JSON."""
    fmt = detect(path, format_id)
    options = ReadOptions(trusted=True, allow_external=allow_external == "1",
                          max_memory=int(max_memory), allow_expand=allow_expand == "1")
    report = _validate_here(path, fmt, json.loads(expectation_json), deep == "1",
                            Report(path, fmt.id), options)
    print(json.dumps(report.as_dict()))
    return 0


# --- many files and the output formats -------------------------------------------------

def expand(patterns) -> list[str]:
    """File arguments with shell-style globs expanded (a pattern matching nothing stays, so
    it is reported as missing)."""
    import glob

    from . import storage

    out = []
    for p in patterns:
        if storage.is_url(p) and any(c in p for c in "*?[") and not p.startswith("http"):
            try:
                out.extend(storage.glob(p) or [p])
            except MlconvError:
                out.append(p)  # reading it says what is wrong (a missing package, ...)
            continue
        hits = sorted(glob.glob(p, recursive=True)) if any(c in p for c in "*?[") else []
        if hits:
            out.extend(h for h in hits if os.path.isfile(h))
        else:
            out.append(p)
    return out


def as_text(reports: list[Report]) -> str:
    from .errors import one_line

    lines = []
    for r in reports:
        lines.append(one_line(f"{'ok' if r.ok else 'FAIL':4}  {r.path}"
                              + (f"  ({r.format})" if r.format else "")))
        for p in r.problems:
            where = f"{p.entry}: " if p.entry else ""
            lines.append(one_line(f"      {where}{p.reason}"))
        for p in r.warnings:
            where = f"{p.entry}: " if p.entry else ""
            lines.append(one_line(f"      warning: {where}{p.reason}"))
    bad = sum(not r.ok for r in reports)
    lines.append(f"{len(reports) - bad} passed, {bad} failed")
    return "\n".join(lines)


def as_junit(reports: list[Report]) -> str:
    from xml.sax.saxutils import escape, quoteattr

    bad = sum(not r.ok for r in reports)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuites name="mlconv validate" tests="{len(reports)}" failures="{bad}">',
           f'  <testsuite name="mlconv validate" tests="{len(reports)}" failures="{bad}">']
    for r in reports:
        name = quoteattr(r.path)
        notes = "\n".join(f"warning: {p.entry + ': ' if p.entry else ''}{p.reason}"
                          for p in r.warnings)
        system_out = f"      <system-out>{escape(notes)}</system-out>" if notes else None
        if r.ok:
            if system_out:
                out += [f'    <testcase classname="mlconv.validate" name={name}>', system_out,
                        "    </testcase>"]
            else:
                out.append(f'    <testcase classname="mlconv.validate" name={name}/>')
            continue
        text = "\n".join(f"{p.entry + ': ' if p.entry else ''}{p.reason}" for p in r.problems)
        first = r.problems[0]
        message = quoteattr(f"{first.entry + ': ' if first.entry else ''}{first.reason}")
        out.append(f'    <testcase classname="mlconv.validate" name={name}>')
        out.append(f'      <failure message={message} type="{first.check}">'
                   f'{escape(text)}</failure>')
        if system_out:
            out.append(system_out)
        out.append("    </testcase>")
    out += ["  </testsuite>", "</testsuites>"]
    return "\n".join(out)


def as_github(reports: list[Report]) -> str:
    """GitHub Actions workflow commands: one ``::error`` line per problem."""

    def data(s: str) -> str:
        return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    def prop(s: str) -> str:
        return data(s).replace(":", "%3A").replace(",", "%2C")

    lines = []
    for r in reports:
        for p in r.problems:
            where = f"{p.entry}: " if p.entry else ""
            lines.append(f"::error file={prop(r.path)},title={prop('mlconv validate')}::"
                         f"{data(where + p.reason)}")
        for p in r.warnings:
            where = f"{p.entry}: " if p.entry else ""
            lines.append(f"::warning file={prop(r.path)},title={prop('mlconv validate')}::"
                         f"{data(where + p.reason)}")
    bad = sum(not r.ok for r in reports)
    lines.append(f"{len(reports) - bad} passed, {bad} failed")
    return "\n".join(lines)


def render(reports: list[Report], style: str) -> str:
    if style == "json":
        return json.dumps([r.as_dict() for r in reports], indent=2, ensure_ascii=False)
    if style == "junit":
        return as_junit(reports)
    if style == "github":
        return as_github(reports)
    if style == "text":
        return as_text(reports)
    raise OptionError(f"unknown --format {style!r}")
