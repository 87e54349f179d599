"""Running a conversion: pick entries, apply casts, fit the bundle to the target, write atomically.

Fitting is where losses are decided: whatever the target cannot hold (a dtype, metadata,
attrs, tables) is an error naming the entry and the way out, or with ``allow_lossy`` a
warning in the report. Nothing is ever changed silently.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

from .. import dtypes as D
from .. import layouts
from ..atomic import atomic_output
from ..errors import (
    Loss,
    LossyConversionError,
    MlconvError,
    OptionError,
    OutputExistsError,
    UnsupportedError,
    as_loss,
)
from ..formats import detect, for_output, get
from ..formats.base import MAX_MEMORY, Format, ReadOptions, WriteOptions
from ..model import Bundle, Table, Tensor
from .graph import Plan, Step, steps_for
from .select import kept, parse_casts, select_entries


@dataclass
class Report:
    """What a conversion did. ``warnings`` lists every loss accepted with ``allow_lossy``
    (each a ``Loss``: its line, plus ``what``/``entry`` to group alike ones); ``notes`` what
    the source format keeps that the target does not (an ONNX graph)."""

    src: str | None
    dst: str
    src_format: str | None
    dst_format: str
    entries: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    warnings: list[Loss] = field(default_factory=list)
    notes: list[Loss] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "src_format": self.src_format,
                "dst_format": self.dst_format, "entries": self.entries,
                "bytes_written": self.bytes_written, "seconds": round(self.seconds, 6),
                "warnings": [str(w) for w in self.warnings],
                "notes": [str(n) for n in self.notes]}


def fit(bundle: Bundle, fmt: Format, *, select=(), exclude=(), casts=None,
        allow_lossy: bool = False, pad: float | None = None) -> tuple[Bundle, list[Loss]]:
    """A new Bundle holding only what ``fmt`` can hold, and the losses accepted on the way.

    ``pad``: ragged (list) columns into tensor-only targets are padded with this value.
    The new bundle's ``notes`` say what the source format keeps that no other format does
    (an ONNX graph): left behind on purpose, never a refusal.
    """
    casts = parse_casts(casts)
    caps = fmt.caps
    losses: list[Loss] = [as_loss(n) for n in bundle.notes]
    src = bundle.path

    def loss(what: str, entry: str | None, way_out: str = "--allow-lossy"):
        """``what`` is lost: an error naming the way out, or a warning with allow_lossy."""
        if not allow_lossy:
            raise LossyConversionError(f"{what} would be lost; use {way_out}", src, entry)
        losses.append(Loss(f"{what} dropped", src, entry))

    out = Bundle(path=bundle.path, format=bundle.format)
    out.encoding = dict(bundle.encoding)
    names = select_entries(bundle, select, exclude)
    for name, reason in bundle.skipped.items():
        if kept(name, select, exclude):
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
        if isinstance(entry, Table) and not caps.tables:
            # a tensor-only target: each numeric column becomes a tensor "table/column"
            bad: list[str] = []
            columns = layouts.table_tensors(entry, name, src, fill=allow_lossy,
                                            warnings=losses, bad=bad, pad=pad)
            for why in bad:
                loss(f"{why} ({fmt.id} holds only numeric tensors)", name,
                     "--exclude NAME or --allow-lossy")
            for cname, column in columns.items():
                if kept(cname, select, exclude):
                    column = _fit_tensor(column, cname, fmt, casts, allow_lossy, losses, src)
                    if column is not None:
                        out[cname] = column
            continue
        if isinstance(entry, Table):
            entry = _fit_columns(entry, name, fmt, exclude, loss)
            if entry is None:
                continue
            if not caps.nulls and allow_lossy:
                entry = layouts.filled(entry, losses, src, name)
        else:
            entry = _fit_tensor(entry, name, fmt, casts, allow_lossy, losses, src)
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
    dropped = [n for n in bundle.skipped if kept(n, select, exclude)] + \
        [n for n in names if n not in out and not any(k.startswith(n + "/") for k in out)]
    if not out and (len(bundle) or dropped):
        shown = ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        why = f"dropped {shown}" if dropped else "every entry was excluded"
        raise UnsupportedError(f"nothing left to write as {fmt.id} ({why})", src)
    if bundle.format and bundle.format != fmt.id:
        out.notes = [Loss(n, src) for n in get(bundle.format).left_behind(bundle)]
    return out, losses


def _extended(t: Tensor, name, casts, allow_lossy, losses, src) -> Tensor | None:
    """Extended-precision floats (raw bytes): decoded by ``--cast float128=...``, else a
    loss; never written as something that reads back as other values."""
    import numpy as np

    to = casts.get(D.FLOAT128)
    if to is None:
        if not allow_lossy:
            raise LossyConversionError(
                "float128 values (extended precision, held as raw bytes) would be lost; use "
                "--cast float128=float64, --exclude NAME or --allow-lossy", src, name)
        losses.append(Loss("float128 values (extended precision) dropped", src, name))
        return None
    layout = t.attrs[D.FLOAT128_ATTR]
    values = D.decode_extended(np.asarray(t.numpy()).view(np.uint8), layout)
    attrs = {k: v for k, v in t.attrs.items() if k != D.FLOAT128_ATTR}
    return Tensor.from_numpy(values.reshape(t.shape).astype(to.numpy()), attrs)


def _packed(t: Tensor, name, fmt, casts, allow_lossy, losses, src) -> Tensor | None:
    """Values packed in blocks only their own format reads (quantized weights): kept as they
    are for that format, decoded by ``--cast CODEC=DTYPE``, otherwise a named loss."""
    source = t.source
    to = casts.get(source.codec)
    if to is None and fmt.id == source.codec_format:
        return Tensor(source, encoding=t.encoding)  # its attrs only describe the blocks
    if to is None:
        way = f"--cast {source.codec}=float32, " if source.can_unpack else ""
        what = f"{source.codec} blocks (quantized values) of logical shape " \
            f"{list(source.logical_shape)}"
        if not allow_lossy:
            raise LossyConversionError(f"{fmt.id} cannot hold {what}; use {way}--exclude NAME "
                                       "or --allow-lossy", src, name)
        losses.append(Loss(f"{fmt.id} cannot hold {what}; entry dropped", src, name))
        return None
    return _fit_tensor(Tensor(source.unpacked(to)), name, fmt, casts, allow_lossy, losses, src)


def _fit_columns(table: Table, name: str, fmt: Format, exclude, loss) -> Table | None:
    """``table`` without its excluded columns (``--exclude TABLE/COLUMN``) and those ``fmt``
    cannot hold (each a loss); None when no column is left."""
    drop = {c for c, _ in table.columns if not kept(f"{name}/{c}", (), exclude)}
    for column, why in fmt.unheld_columns(table.project(
            [c for c, _ in table.columns if c not in drop]) if drop else table):
        loss(why, f"{name}/{column}", f"--exclude {name}/{column} or --allow-lossy")
        drop.add(column)
    if not drop:
        return table
    keep = [c for c, _ in table.columns if c not in drop]
    return table.project(keep) if keep else None


def _fit_tensor(t: Tensor, name, fmt, casts, allow_lossy, losses, src) -> Tensor | None:
    """``t`` cast as asked, then in a dtype ``fmt`` holds (or None: dropped, with a loss)."""
    if getattr(t.source, "codec", None) is not None:
        return _packed(t, name, fmt, casts, allow_lossy, losses, src)
    if D.FLOAT128_ATTR in t.attrs:
        t = _extended(t, name, casts, allow_lossy, losses, src)
        if t is None:
            return None
    if t.itemsize is None:  # variable-width text: its width is known once read
        read = Tensor.from_numpy(t.numpy(), t.attrs)
        read.encoding = t.encoding  # the same format may use it (HDF5 widths)
        t = read
    if t.dtype in casts:
        t = t.cast(casts[t.dtype])
    if t.dtype in fmt.caps.dtypes:
        return t
    fb = D.fallback(t.dtype, fmt.caps.dtypes)
    if not allow_lossy:
        way = f"--cast {t.dtype.value}={fb[0].value} or --allow-lossy" if fb else \
            "--exclude NAME or --allow-lossy"
        raise LossyConversionError(f"{fmt.id} cannot hold dtype {t.dtype.value}; use {way}",
                                   src, name)
    if fb is None:
        losses.append(Loss(f"{fmt.id} cannot hold dtype {t.dtype.value}; entry dropped", src,
                           name))
        return None
    to, exact = fb
    how = "values exact" if exact else "values rounded"
    losses.append(Loss(f"{t.dtype.value} stored as {to.value} ({how})", src, name))
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
            external_data: bool = False, pad: float | None = None,
            max_memory: int = MAX_MEMORY, allow_expand: bool = False):
    """Convert file ``src`` to ``dst``; see ``mlconv convert --help`` for the options.

    ``src`` may also be a list of files: they merge into one ``dst`` (each keeps its entry
    names; an npy file's entry is its file stem). Returns a Report, or with ``dry_run`` the
    Plan, writing nothing. ``progress`` is called with the bytes written as they go; when it
    has a ``total`` attribute, that is set to the expected sum first.
    ``max_memory`` caps one decoded buffer; ``allow_expand`` writes never-written data.
    """
    if dry_run:
        return plan(src, dst, from_format=from_format, to_format=to_format, select=select,
                    exclude=exclude, cast=cast, allow_lossy=allow_lossy,
                    compression=compression, allow_external=allow_external, layout=layout,
                    path=path, overwrite=overwrite, pad=pad, max_memory=max_memory,
                    allow_expand=allow_expand)
    t0 = time.perf_counter()
    dst = os.fspath(dst)
    out_fmt = for_output(dst, to_format)
    out_fmt.check_available()
    if not overwrite and os.path.lexists(dst):
        raise OutputExistsError("output exists; use --force to replace it", dst)
    options = ReadOptions(allow_external=allow_external, max_memory=max_memory,
                          allow_expand=allow_expand)
    with open_sources(src, from_format, options, allow_lossy) as (bundle, in_id, shown):
        fitted, warnings = fit(bundle, out_fmt, select=select, exclude=exclude, casts=cast,
                               allow_lossy=allow_lossy, pad=pad)
        if progress is not None and hasattr(progress, "total"):
            progress.total = total_bytes(fitted)
        size = write(fitted, dst, out_fmt, overwrite=overwrite, compression=compression,
                     layout=layout, row_group_size=row_group_size, path=path,
                     progress=progress, template=template, external_data=external_data)
    return Report(shown, dst, in_id, out_fmt.id, len(fitted), size,
                  time.perf_counter() - t0, warnings, fitted.notes)


@contextlib.contextmanager
def open_sources(src, from_format, options: ReadOptions, allow_lossy=False):
    """Yield (bundle, format id, name for reports) for one file, or for a list of files
    merged into one bundle (kept open together, closed together)."""
    if isinstance(src, (str, os.PathLike)) or len(src) == 1:
        one = os.fspath(src if isinstance(src, (str, os.PathLike)) else src[0])
        fmt = detect(one, from_format)
        fmt.check_available()
        with fmt.read(one, options) as bundle:
            yield bundle, fmt.id, one
        return
    with contextlib.ExitStack() as stack:
        merged = Bundle(path=None, format=None)
        owner: dict[str, str] = {}
        ids = []
        for item in map(os.fspath, src):
            fmt = detect(item, from_format)
            fmt.check_available()
            ids.append(fmt.id)
            part = stack.enter_context(fmt.read(item, options))
            _merge_into(merged, part, item, owner, allow_lossy)
        merged.format = ids[0] if len(set(ids)) == 1 else None
        yield merged, "+".join(dict.fromkeys(ids)), f"{len(src)} files"


def _merge_into(merged: Bundle, part: Bundle, path: str, owner: dict, allow_lossy) -> None:
    for name in part:
        if name in merged:
            raise UnsupportedError(f"two inputs hold an entry named {name!r} ({owner[name]} "
                                   "and this one); merge files with distinct names", path,
                                   name)
        merged[name] = part[name]
        owner[name] = path
    for name, reason in part.skipped.items():
        merged.skipped.setdefault(name, reason)
    for group, attrs in part.group_attrs.items():
        merged.group_attrs.setdefault(group, {}).update(attrs)
    for key, value in part.metadata.items():
        if merged.metadata.get(key, value) != value:
            if not allow_lossy:
                raise LossyConversionError(f"metadata {key!r} differs between the inputs; "
                                           "the first value would be kept; use --allow-lossy",
                                           path)
            merged.notes.append(Loss(f"metadata {key!r} differs; the first value kept", path))
            continue
        merged.metadata[key] = value
    merged.notes.extend(part.notes)


def total_bytes(bundle: Bundle) -> int | None:
    """Payload bytes a write of ``bundle`` moves, or None when tables make it unknown."""
    if any(isinstance(e, Table) for e in bundle.values()):
        return None
    return sum(t.nbytes or 0 for t in bundle.values())


def plan(src, dst, *, from_format: str | None = None, to_format: str | None = None,
         select=(), exclude=(), cast=None, allow_lossy: bool = False,
         compression: str | None = None, allow_external: bool = False,
         layout: str | None = None, path: str = "fast", overwrite: bool = False,
         pad: float | None = None, max_memory: int = MAX_MEMORY,
         allow_expand: bool = False) -> Plan:
    """How ``convert`` would run for these files, step by step; nothing is written.

    It stops where the run would stop (a refused loss, an existing DST without
    ``overwrite``). Given two format ids instead of files (``plan("hdf5", "parquet")``),
    describes the edge between the formats: how tensors travel at best and what the target
    cannot hold.
    """
    from ..formats import IDS

    if isinstance(src, (str, os.PathLike)):
        src = os.fspath(src)
    dst = os.fspath(dst)
    if isinstance(src, str) and src in IDS and dst in IDS and not os.path.exists(src):
        return _format_plan(get(src), get(dst))
    out_fmt = for_output(dst, to_format)
    options = ReadOptions(allow_external=allow_external, max_memory=max_memory,
                          allow_expand=allow_expand)
    with open_sources(src, from_format, options, allow_lossy) as (bundle, in_id, shown):
        result = Plan(shown, dst, in_id, out_fmt.id, path, allow_lossy=allow_lossy)
        try:
            fit(bundle, out_fmt, select=select, exclude=exclude, casts=cast,
                allow_lossy=allow_lossy, pad=pad)
        except MlconvError as e:
            result.error = e.render(cli=True)
        try:
            fitted, losses = fit(bundle, out_fmt, select=select, exclude=exclude, casts=cast,
                                 allow_lossy=True, pad=pad)
        except MlconvError:
            return result
        result.losses = [str(x) for x in losses]
        result.notes = [str(n) for n in fitted.notes]
        result.steps = steps_for(fitted, out_fmt, path == "generic", layout, compression)
    if os.path.lexists(dst) and result.error is None:
        if overwrite:
            result.notes.append(f"{dst} exists and will be replaced (--force)")
        else:
            result.error = OutputExistsError("output exists; use --force to replace it",
                                                 dst).render(cli=True)
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
