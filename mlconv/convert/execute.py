"""Running a conversion: pick entries, apply casts, fit the bundle to the target, write atomically.

Fitting is where losses are decided: whatever the target cannot hold (a dtype, metadata,
attrs, tables) is an error naming the entry and the way out, or with ``allow_lossy`` a
warning in the report. Nothing is ever changed silently.
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass, field

from .. import dtypes as D
from .. import layouts
from ..atomic import atomic_output
from ..errors import (
    LossyConversionError,
    MlconvError,
    OptionError,
    OutputExistsError,
    UnsupportedError,
)
from ..formats import detect, for_output
from ..formats.base import MAX_MEMORY, Format, ReadOptions, WriteOptions
from ..model import Bundle, Table, Tensor
from .graph import Plan, Step, steps_for


@dataclass
class Report:
    """What a conversion did. ``warnings`` lists every loss accepted with ``allow_lossy``."""

    src: str | None
    dst: str
    src_format: str | None
    dst_format: str
    entries: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "src_format": self.src_format,
                "dst_format": self.dst_format, "entries": self.entries,
                "bytes_written": self.bytes_written, "seconds": round(self.seconds, 6),
                "warnings": list(self.warnings)}


def parse_casts(casts) -> dict[D.DType, D.DType]:
    """``{"bfloat16": "float32"}`` or ``["bfloat16=float32"]`` -> {DType: DType}."""
    if not casts:
        return {}
    pairs = casts.items() if isinstance(casts, dict) else (_split_cast(c) for c in casts)
    out = {}
    for a, b in pairs:
        try:
            src, dst = D.parse(a), D.parse(b)
        except UnsupportedError as e:
            raise OptionError(f"--cast: {e.message}") from None
        if src.bits is None or dst.bits is None:
            raise OptionError(f"--cast {src.value}={dst.value}: only numeric dtypes cast")
        out[src] = dst
    return out


def _split_cast(text: str):
    a, sep, b = str(text).partition("=")
    if not sep or not a or not b:
        raise OptionError(f"--cast expects SRC=DST (e.g. bfloat16=float32), got {text!r}")
    return a.strip(), b.strip()


def _hit(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
        name, pattern.rstrip("/") + "/*")


def _kept(name: str, select=(), exclude=()) -> bool:
    return (not select or any(_hit(name, p) for p in select)) and \
        not any(_hit(name, p) for p in exclude)


def select_entries(bundle: Bundle, select=(), exclude=()) -> list[str]:
    """Names kept by --select/--exclude globs; a glob also matches everything under a group."""
    names = [n for n in bundle if _kept(n, select, exclude)]
    if select and not names:
        raise MlconvError(f"no entry matches --select {' '.join(select)}", bundle.path)
    return names


def fit(bundle: Bundle, fmt: Format, *, select=(), exclude=(), casts=None,
        allow_lossy: bool = False) -> tuple[Bundle, list[str]]:
    """A new Bundle holding only what ``fmt`` can hold, and the warnings for what changed."""
    casts = parse_casts(casts)
    caps = fmt.caps
    warnings: list[str] = list(bundle.notes)
    src = bundle.path

    def loss(what: str, entry: str | None, way_out: str = "--allow-lossy"):
        """``what`` is lost: an error naming the way out, or a warning with allow_lossy."""
        if not allow_lossy:
            raise LossyConversionError(f"{what} would be lost; use {way_out}", src, entry)
        warnings.append(str(LossyConversionError(f"{what} dropped", src, entry)))

    out = Bundle(path=bundle.path, format=bundle.format)
    names = select_entries(bundle, select, exclude)
    for name, reason in bundle.skipped.items():
        if _kept(name, select, exclude):
            loss(f"{reason}: the entry", name, "--exclude NAME or --allow-lossy")
    for group, attrs in bundle.group_attrs.items():
        if not attrs or not any(n == group or n.startswith(group + "/") for n in names) \
                and group:
            continue
        if caps.attrs:
            out.group_attrs[group] = dict(attrs)
        else:
            loss(f"{fmt.id} has no group attributes: {len(attrs)} attribute(s) of group "
                 f"{group or '/'}", group or None)
    for name in names:
        entry = bundle[name]
        if isinstance(entry, Table):
            if not caps.tables:
                # a tensor-only target: each column becomes a tensor "table/column"
                bad: list[str] = []
                columns = layouts.table_tensors(entry, name, src, fill=allow_lossy,
                                                warnings=warnings, bad=bad)
                for why in bad:
                    loss(f"{why} ({fmt.id} holds only numeric tensors)", name,
                         "--exclude NAME or --allow-lossy")
                for cname, column in columns.items():
                    if column.dtype not in caps.dtypes:
                        column = _fit_dtype(column, cname, fmt, allow_lossy, warnings, src)
                    if column is not None:
                        out[cname] = column
                continue
            if not caps.nulls and allow_lossy:
                entry = layouts.filled(entry, warnings, src, name)
        else:
            if entry.itemsize is None:  # variable-width text: its width is known once read
                entry = Tensor.from_numpy(entry.numpy(), entry.attrs)
            if entry.dtype in casts:
                entry = entry.cast(casts[entry.dtype])
            if entry.dtype not in caps.dtypes:
                entry = _fit_dtype(entry, name, fmt, allow_lossy, warnings, src)
                if entry is None:
                    continue
        if entry.attrs and not caps.attrs:
            loss(f"{fmt.id} has no per-entry attributes: {len(entry.attrs)} attribute(s)",
                 name)
        out[name] = entry
    if bundle.metadata:
        if caps.metadata:
            out.metadata = dict(bundle.metadata)
        else:
            keys = ", ".join(sorted(bundle.metadata)[:5])
            loss(f"{fmt.id} has no file metadata: {len(bundle.metadata)} key(s) ({keys})",
                 None)
    if caps.max_entries is not None and len(out) > caps.max_entries:
        names = ", ".join(list(out)[:5]) + (", ..." if len(out) > 5 else "")
        raise UnsupportedError(
            f"{fmt.id} holds {'one entry' if caps.max_entries == 1 else caps.max_entries}; "
            f"the source has {len(out)} ({names}); use --select NAME", src)
    if not out and len(bundle):
        raise UnsupportedError(f"nothing left to write as {fmt.id}", src)
    return out, warnings


def _fit_dtype(t: Tensor, name, fmt, allow_lossy, warnings, src) -> Tensor | None:
    fb = D.fallback(t.dtype, fmt.caps.dtypes)
    if not allow_lossy:
        way = f"--cast {t.dtype.value}={fb[0].value} or --allow-lossy" if fb else \
            "--exclude NAME or --allow-lossy"
        raise LossyConversionError(f"{fmt.id} cannot hold dtype {t.dtype.value}; use {way}",
                                   src, name)
    if fb is None:
        warnings.append(str(LossyConversionError(
            f"{fmt.id} cannot hold dtype {t.dtype.value}; entry dropped", src, name)))
        return None
    to, exact = fb
    how = "values exact" if exact else "values rounded"
    warnings.append(str(LossyConversionError(
        f"{t.dtype.value} stored as {to.value} ({how})", src, name)))
    return t.cast(to)


def write(bundle: Bundle, dst, fmt: Format, *, overwrite: bool = False,
          compression: str | None = None, layout: str | None = None,
          row_group_size: int | None = None, path: str = "fast", progress=None,
          template: str | None = None, external_data: bool = False) -> int:
    """Write a fitted bundle atomically; returns the size of the file written."""
    if compression is not None and compression not in fmt.caps.compressions:
        raise OptionError(f"{fmt.id} supports --compression "
                          f"{'|'.join(fmt.caps.compressions)}, not {compression!r}")
    dst = os.fspath(dst)
    if layout not in (None, "rows", "entries"):
        raise OptionError(f"--layout must be rows or entries, not {layout!r}")
    if row_group_size is not None and row_group_size < 1:
        raise OptionError("--row-group-size must be a positive number of rows")
    if path not in ("fast", "generic"):
        raise OptionError(f"--path must be fast or generic, not {path!r}")
    options = WriteOptions(compression=compression, layout=layout,
                           row_group_size=row_group_size, kernel_copy=path == "fast",
                           progress=progress, template=template,
                           external_data=external_data)
    if template is not None and fmt.id != "onnx":
        raise OptionError("--template applies to ONNX output only")
    if template is not None and not os.path.isfile(template):
        raise OptionError("--template: no such model", template)
    with atomic_output(dst, overwrite) as f:
        fmt.write(bundle, f, dst, options)
        size = os.path.getsize(f.name)
    return size


def convert(src, dst, *, from_format: str | None = None, to_format: str | None = None,
            select=(), exclude=(), cast=None, allow_lossy: bool = False,
            overwrite: bool = False, compression: str | None = None,
            allow_external: bool = False, layout: str | None = None,
            row_group_size: int | None = None, path: str = "fast", progress=None,
            dry_run: bool = False, template: str | None = None,
            external_data: bool = False, max_memory: int = MAX_MEMORY,
            allow_expand: bool = False):
    """Convert file ``src`` to ``dst``; see ``mlconv convert --help`` for the options.

    Returns a Report, or with ``dry_run`` the Plan, writing nothing. ``progress`` is called
    with the bytes written as they go (``total_bytes`` of the plan is the expected sum).
    ``max_memory`` caps one decoded buffer; ``allow_expand`` writes never-written data.
    """
    if dry_run:
        return plan(src, dst, from_format=from_format, to_format=to_format, select=select,
                    exclude=exclude, cast=cast, allow_lossy=allow_lossy,
                    compression=compression, allow_external=allow_external, layout=layout,
                    path=path, max_memory=max_memory, allow_expand=allow_expand)
    t0 = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    out_fmt = for_output(dst, to_format)
    in_fmt = detect(src, from_format)
    in_fmt.check_available()
    out_fmt.check_available()
    if not overwrite and os.path.lexists(dst):
        raise OutputExistsError("output exists; use --force to replace it", dst)
    options = ReadOptions(allow_external=allow_external, max_memory=max_memory,
                          allow_expand=allow_expand)
    with in_fmt.read(src, options) as bundle:
        fitted, warnings = fit(bundle, out_fmt, select=select, exclude=exclude, casts=cast,
                               allow_lossy=allow_lossy)
        if progress is not None and hasattr(progress, "total"):
            progress.total = total_bytes(fitted)
        size = write(fitted, dst, out_fmt, overwrite=overwrite, compression=compression,
                     layout=layout, row_group_size=row_group_size, path=path,
                     progress=progress, template=template, external_data=external_data)
    return Report(src, dst, in_fmt.id, out_fmt.id, len(fitted), size,
                  time.perf_counter() - t0, warnings)


def total_bytes(bundle: Bundle) -> int | None:
    """Payload bytes a write of ``bundle`` moves, or None when tables make it unknown."""
    if any(isinstance(e, Table) for e in bundle.values()):
        return None
    return sum(t.nbytes or 0 for t in bundle.values())


def plan(src, dst, *, from_format: str | None = None, to_format: str | None = None,
         select=(), exclude=(), cast=None, allow_lossy: bool = False,
         compression: str | None = None, allow_external: bool = False,
         layout: str | None = None, path: str = "fast", max_memory: int = MAX_MEMORY,
         allow_expand: bool = False) -> Plan:
    """How ``convert`` would run for these files, step by step; nothing is written.

    Given two format ids instead of files (``plan("hdf5", "parquet")``), describes the
    edge between the formats: how tensors travel at best and what the target cannot hold.
    """
    from ..formats import IDS, get

    src, dst = os.fspath(src), os.fspath(dst)
    if src in IDS and dst in IDS and not os.path.exists(src):
        return _format_plan(get(src), get(dst))
    out_fmt = for_output(dst, to_format)
    in_fmt = detect(src, from_format)
    in_fmt.check_available()
    result = Plan(src, dst, in_fmt.id, out_fmt.id, path, allow_lossy=allow_lossy)
    options = ReadOptions(allow_external=allow_external, max_memory=max_memory,
                          allow_expand=allow_expand)
    with in_fmt.read(src, options) as bundle:
        try:
            fit(bundle, out_fmt, select=select, exclude=exclude, casts=cast,
                allow_lossy=allow_lossy)
        except MlconvError as e:
            result.error = str(e)
        try:
            fitted, losses = fit(bundle, out_fmt, select=select, exclude=exclude, casts=cast,
                                 allow_lossy=True)
        except MlconvError:
            return result
        result.losses = losses
        result.steps = steps_for(fitted, out_fmt, path == "generic", layout, compression)
    if os.path.lexists(dst) and result.error is None:
        result.losses.append(f"{dst} exists and would be replaced (needs --force)")
    return result


def _format_plan(a: Format, b: Format) -> Plan:
    """The edge between two formats, independent of any file."""
    result = Plan(a.id, b.id, a.id, b.id)
    if a.caps.tensors and b.caps.tensors:
        method = "zero-copy" if a.caps.zero_copy and b.caps.raw_payload else "streamed"
        result.steps.append(Step("tensors", "tensor", method, None,
                                 "at best; casts, byte swaps and compression stream"))
    if a.caps.tables:
        note = "record batches" if b.caps.tables else "numeric columns become tensors"
        result.steps.append(Step("tables", "table", "streamed", None, note))
    missing = sorted(d.value for d in a.caps.dtypes - b.caps.dtypes)
    if missing:
        result.losses.append(f"{b.id} cannot hold tensors of dtype {', '.join(missing)}")
    for cap, what in (("metadata", "file metadata"), ("attrs", "attributes"),
                      ("tables", "tables"), ("nulls", "nulls")):
        if getattr(a.caps, cap) and not getattr(b.caps, cap):
            result.losses.append(f"{b.id} has no {what}")
    return result


def convert_many(sources, dst_dir, *, to_format: str, jobs: int | None = None,
                 **options) -> list[dict]:
    """Convert each file of ``sources`` into ``dst_dir`` (as ``<stem>.<ext>``), ``jobs`` at
    a time in worker processes. One bad file never stops the others: each result is
    ``{"src", "dst", "ok", "report" | "error"}``.
    """
    from concurrent.futures import ProcessPoolExecutor

    from ..formats import get

    fmt = get(to_format)
    dst_dir = os.fspath(dst_dir)
    if not os.path.isdir(dst_dir):
        raise OptionError("the output folder does not exist", dst_dir)
    tasks = []
    for src in sources:
        stem = os.path.splitext(os.path.basename(src))[0]
        tasks.append((os.fspath(src), os.path.join(dst_dir, stem + fmt.extensions[0])))
    dsts = [d for _, d in tasks]
    if len(set(dsts)) != len(dsts):
        raise OptionError("two inputs would write the same output (same file stem)")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks) or 1))
    if jobs == 1:
        return [_one((s, d, to_format, options)) for s, d in tasks]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_one, [(s, d, to_format, options) for s, d in tasks]))


def _one(task) -> dict:
    src, dst, to_format, options = task
    try:
        report = convert(src, dst, to_format=to_format, **options)
        return {"src": src, "dst": dst, "ok": True, "report": report.as_dict()}
    except MlconvError as e:
        return {"src": src, "dst": dst, "ok": False, "error": str(e)}
    except OSError as e:
        return {"src": src, "dst": dst, "ok": False,
                "error": f"{e.strerror or e} ({getattr(e, 'filename', None) or src})"}
    except Exception as e:  # noqa: BLE001 - a bug on one file must not stop the others
        return {"src": src, "dst": dst, "ok": False,
                "error": f"internal error: {type(e).__name__}: {e} ({src})"}


def save(data, dst, *, format: str | None = None, metadata: dict | None = None,
         cast=None, allow_lossy: bool = False, overwrite: bool = True,
         compression: str | None = None, layout: str | None = None) -> Report:
    """Write a Bundle or a mapping of names to arrays/Tensors/Tables to ``dst``."""
    t0 = time.perf_counter()
    dst = os.fspath(dst)
    fmt = for_output(dst, format)
    fmt.check_available()
    bundle = data if isinstance(data, Bundle) else Bundle(data)
    if metadata is not None:
        bundle.metadata = {str(k): str(v) for k, v in metadata.items()}
    fitted, warnings = fit(bundle, fmt, casts=cast, allow_lossy=allow_lossy)
    size = write(fitted, dst, fmt, overwrite=overwrite, compression=compression,
                 layout=layout)
    return Report(bundle.path, dst, bundle.format, fmt.id, len(fitted), size,
                  time.perf_counter() - t0, warnings)
