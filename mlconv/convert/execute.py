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

from .. import columns as column_tensors
from .. import dtypes as D
from .. import storage
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
from ..formats import all_formats, detect, for_output, get, make_write_options
from ..formats.base import MAX_MEMORY, Format, ReadOptions, WriteOptions
from ..model import Bundle, Table, Tensor
from .graph import Plan, Step, edges, route, start_node, steps_for
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

    Without ``allow_lossy`` the first loss that refuses stops it (LossyConversionError
    naming the entry and the way out). ``pad``: ragged (list) columns into tensor-only
    targets are padded with this value. The new bundle's ``notes`` say what the source
    format keeps that no other format does (an ONNX graph): never a refusal.
    """
    fitted, losses = decide(bundle, fmt, select=select, exclude=exclude, casts=casts,
                            fill=allow_lossy, pad=pad)
    if not allow_lossy:
        refused = next((x for x in losses if x.refusal), None)
        if refused is not None:
            raise refused.error()
    _check_left(bundle, fitted, fmt, select, exclude)
    return fitted, losses


def decide(bundle: Bundle, fmt: Format, *, select=(), exclude=(), casts=None,
           fill: bool = False, pad: float | None = None) -> tuple[Bundle, list[Loss]]:
    """Every decision of a conversion, made once: the fitted bundle as if losses were
    allowed, and each Loss (with the refusal it is without ``allow_lossy``). ``fill``:
    nulls into null-less targets become NaN/0 as they stream (else reading them fails)."""
    fitter = _Fitter(bundle, fmt, parse_casts(casts), fill, pad)
    names = select_entries(bundle, select, exclude)
    for name, reason in bundle.skipped.items():
        if kept(name, select, exclude):
            fitter.lose(f"{reason}: the entry", name, "entry", "--exclude NAME or --allow-lossy")
    fitter.group_attrs(names)
    for name in names:
        fitter.entry(name, bundle[name], select, exclude)
    fitter.metadata()
    out = fitter.out
    if bundle.format and bundle.format != fmt.id:
        out.notes = [Loss(n, bundle.path, kind="left-behind")
                     for n in get(bundle.format).left_behind(bundle)]
    # the same list: nulls filled while the write streams add their warnings to it
    fitter.losses[:] = [as_loss(x) for x in fitter.losses]
    return out, fitter.losses


class _Fitter:
    """The decisions of ``decide``, one kind of thing per method."""

    def __init__(self, bundle: Bundle, fmt: Format, casts, fill: bool, pad):
        self.bundle, self.fmt, self.casts, self.fill, self.pad = bundle, fmt, casts, fill, pad
        self.src = bundle.path
        self.losses: list = [as_loss(n) for n in bundle.notes]
        self.out = Bundle(path=bundle.path, format=bundle.format)
        self.out.encoding = dict(bundle.encoding)

    def lose(self, what: str, entry, kind: str, way_out: str = "--allow-lossy",
             refusal: str | None = None) -> None:
        self.losses.append(Loss(f"{what} dropped", self.src, entry, kind, way_out,
                                refusal or f"{what} would be lost; use {way_out}"))

    def group_attrs(self, names) -> None:
        for group, attrs in self.bundle.group_attrs.items():
            if not attrs or not any(n == group or n.startswith(group + "/")
                                    for n in names) and group:
                continue
            if self.fmt.caps.attrs:
                self.out.group_attrs[group] = dict(attrs)
            else:
                self.lose(f"{self.fmt.id} has no group attributes: {len(attrs)} attribute(s) "
                          f"of group {group or '/'}", group or None, "attrs")

    def entry(self, name: str, entry, select, exclude) -> None:
        caps = self.fmt.caps
        if isinstance(entry, Table) and not caps.tables:
            self.columns_as_tensors(name, entry, select, exclude)
            return
        if isinstance(entry, Table):
            entry = _fit_columns(entry, name, self.fmt, exclude, self.lose)
            if entry is not None and not caps.nulls and self.fill:
                entry = column_tensors.filled(entry, self.losses, self.src, name)
        else:
            entry = self.tensor(entry, name)
        if entry is None:
            return
        if entry.attrs and not caps.attrs:
            self.lose(f"{self.fmt.id} has no per-entry attributes: {len(entry.attrs)} "
                      "attribute(s)", name, "attrs")
        self.out[name] = entry

    def columns_as_tensors(self, name: str, table: Table, select, exclude) -> None:
        """A tensor-only target: each numeric column becomes a tensor "table/column"."""
        bad: list[str] = []
        columns = column_tensors.table_tensors(table, name, self.src, fill=self.fill,
                                               warnings=self.losses, bad=bad, pad=self.pad)
        for why in bad:
            self.lose(f"{why} ({self.fmt.id} holds only numeric tensors)", name, "column",
                      "--exclude NAME or --allow-lossy")
        for cname, column in columns.items():
            if kept(cname, select, exclude):
                column = self.tensor(column, cname)
                if column is not None:
                    self.out[cname] = column

    def tensor(self, t: Tensor, name: str) -> Tensor | None:
        """``t`` cast as asked, then in a dtype the target holds (or None: dropped)."""
        if getattr(t.source, "codec", None) is not None:
            return self.packed(t, name)
        if D.FLOAT128_ATTR in t.attrs:
            t = self.extended(t, name)
            if t is None:
                return None
        if t.itemsize is None:  # variable-width text: its width is known once read
            read = Tensor.from_numpy(t.numpy(), t.attrs)
            read.encoding = t.encoding  # the same format may use it (HDF5 widths)
            t = read
        if t.dtype in self.casts:
            t = t.cast(self.casts[t.dtype])
        held = self.fmt.caps.dtypes
        if t.dtype in held:
            return t
        fb = D.fallback(t.dtype, held)
        way = f"--cast {t.dtype.value}={fb[0].value} or --allow-lossy" if fb else \
            "--exclude NAME or --allow-lossy"
        refusal = f"{self.fmt.id} cannot hold dtype {t.dtype.value}; use {way}"
        if fb is None:
            self.losses.append(Loss(f"{self.fmt.id} cannot hold dtype {t.dtype.value}; entry "
                                    "dropped", self.src, name, "dtype", way, refusal))
            return None
        to, exact = fb
        how = "values exact" if exact else "values rounded"
        self.losses.append(Loss(f"{t.dtype.value} stored as {to.value} ({how})", self.src,
                                name, "dtype", way, refusal))
        return t.cast(to)

    def packed(self, t: Tensor, name: str) -> Tensor | None:
        """Values packed in blocks only their own format reads (quantized weights): kept as
        they are for that format, decoded by ``--cast CODEC=DTYPE``, else a named loss."""
        source = t.source
        to = self.casts.get(source.codec)
        if to is None and self.fmt.id == source.codec_format:
            return Tensor(source, encoding=t.encoding)  # its attrs only describe the blocks
        if to is not None:
            return self.tensor(Tensor(source.unpacked(to)), name)
        way = (f"--cast {source.codec}=float32, " if source.can_unpack else "") + \
            "--exclude NAME or --allow-lossy"
        what = f"{source.codec} blocks (quantized values) of logical shape " \
            f"{list(source.logical_shape)}"
        self.losses.append(Loss(f"{self.fmt.id} cannot hold {what}; entry dropped", self.src,
                                name, "blocks", way,
                                f"{self.fmt.id} cannot hold {what}; use {way}"))
        return None

    def extended(self, t: Tensor, name: str) -> Tensor | None:
        """Extended-precision floats (raw bytes): decoded by ``--cast float128=...``, else
        a loss; never written as something that reads back as other values."""
        import numpy as np

        to = self.casts.get(D.FLOAT128)
        if to is None:
            way = "--cast float128=float64, --exclude NAME or --allow-lossy"
            self.losses.append(Loss(
                "float128 values (extended precision) dropped", self.src, name, "dtype", way,
                f"float128 values (extended precision, held as raw bytes) would be lost; "
                f"use {way}"))
            return None
        layout = t.attrs[D.FLOAT128_ATTR]
        values = D.decode_extended(np.asarray(t.numpy()).view(np.uint8), layout)
        attrs = {k: v for k, v in t.attrs.items() if k != D.FLOAT128_ATTR}
        return Tensor.from_numpy(values.reshape(t.shape).astype(to.numpy()), attrs)

    def metadata(self) -> None:
        meta = self.bundle.metadata
        if not meta:
            return
        if self.fmt.caps.metadata:
            self.out.metadata = dict(meta)
            return
        keys = ", ".join(sorted(meta)[:5])
        self.lose(f"{self.fmt.id} has no file metadata: {len(meta)} key(s) ({keys})", None,
                  "metadata")


def _check_left(bundle: Bundle, out: Bundle, fmt: Format, select, exclude) -> None:
    """What is left must be something ``fmt`` can write: not too many entries, not none."""
    caps, src = fmt.caps, bundle.path
    if caps.max_entries is not None and len(out) > caps.max_entries:
        names = ", ".join(list(out)[:5]) + (", ..." if len(out) > 5 else "")
        raise UnsupportedError(
            f"{fmt.id} holds {'one entry' if caps.max_entries == 1 else caps.max_entries}; "
            f"the source has {len(out)} ({names}); use --select NAME", src)
    names = select_entries(bundle, select, exclude)
    dropped = [n for n in bundle.skipped if kept(n, select, exclude)] + \
        [n for n in names if n not in out and not any(k.startswith(n + "/") for k in out)]
    if not out and (len(bundle) or dropped):
        shown = ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        why = f"dropped {shown}" if dropped else "every entry was excluded"
        raise UnsupportedError(f"nothing left to write as {fmt.id} ({why})", src)


def _fit_columns(table: Table, name: str, fmt: Format, exclude, lose) -> Table | None:
    """``table`` without its excluded columns (``--exclude TABLE/COLUMN``) and those ``fmt``
    cannot hold (each a loss); None when no column is left."""
    drop = {c for c, _ in table.columns if not kept(f"{name}/{c}", (), exclude)}
    for column, why in fmt.unheld_columns(table.project(
            [c for c, _ in table.columns if c not in drop]) if drop else table):
        lose(why, f"{name}/{column}", "column", f"--exclude {name}/{column} or --allow-lossy")
        drop.add(column)
    if not drop:
        return table
    keep = [c for c, _ in table.columns if c not in drop]
    return table.project(keep) if keep else None


def write_options(fmt: Format, *, compression: str | None = None, kernel_copy: bool = True,
                  progress=None, options=None) -> WriteOptions:
    """The checked options of one write: the shared ones, and ``options`` (a mapping, or
    the target format's own dataclass) checked against what ``fmt`` declares."""
    if compression is not None and compression not in fmt.caps.compressions:
        raise OptionError(f"{fmt.id} supports --compression "
                          f"{'|'.join(fmt.caps.compressions)}, not {compression!r}")
    return WriteOptions(compression=compression, kernel_copy=kernel_copy,
                        progress=progress, own=make_write_options(fmt, options))


def _options_mapping(options) -> dict:
    """A format's options as a mapping, from a mapping or the format's dataclass."""
    import dataclasses

    if options is None:
        return {}
    return dict(options) if isinstance(options, dict) else dataclasses.asdict(options)


def _file_options(options) -> dict:
    """The given format options that name a file (``file=True`` fields: ``--template``)."""
    from ..formats import write_option_fields

    fields = write_option_fields()
    return {k: v for k, v in _options_mapping(options).items()
            if v is not None and k in fields and fields[k][0].metadata.get("file")}


def write(bundle: Bundle, dst, fmt: Format, options: WriteOptions, *,
          overwrite: bool = False) -> int:
    """Write a fitted bundle atomically; returns the size of the file written."""
    dst = os.fspath(dst)
    with atomic_output(dst, overwrite) as f:
        fmt.write(bundle, f, dst, options)
        size = os.path.getsize(f.name)
    return size


def convert(src, dst, *, from_format: str | None = None, to_format: str | None = None,
            select=(), exclude=(), cast=None, allow_lossy: bool = False,
            overwrite: bool = False, compression: str | None = None,
            allow_external: bool = False, kernel_copy: bool = True, progress=None,
            dry_run: bool = False, pad: float | None = None,
            max_memory: int = MAX_MEMORY, allow_expand: bool = False, options=None):
    """Convert file ``src`` to ``dst``; see ``mlconv convert --help`` for the options.

    ``options``: the target format's own write options, as a mapping (``{"layout":
    "entries"}``) or its dataclass (``formats.get("parquet").write_options(...)``).
    ``src`` may also be a list of files: they merge into one ``dst`` (each keeps its entry
    names; an npy file's entry is its file stem). Returns a Report, or with ``dry_run`` the
    Plan, writing nothing. ``progress`` is called with the bytes written as they go; when it
    has a ``total`` attribute, that is set to the expected sum first.
    ``max_memory`` caps one decoded buffer; ``allow_expand`` writes never-written data;
    ``kernel_copy=False`` moves every byte through memory (the CLI's ``--path generic``).
    """
    if dry_run:
        return plan(src, dst, from_format=from_format, to_format=to_format, select=select,
                    exclude=exclude, cast=cast, allow_lossy=allow_lossy,
                    compression=compression, allow_external=allow_external,
                    kernel_copy=kernel_copy, overwrite=overwrite, pad=pad,
                    max_memory=max_memory, allow_expand=allow_expand, options=options)
    if storage.any_remote(src, dst, *_file_options(options).values()):
        return _convert_remote(src, dst, from_format=from_format, to_format=to_format,
                               select=select, exclude=exclude, cast=cast,
                               allow_lossy=allow_lossy, overwrite=overwrite,
                               compression=compression, allow_external=allow_external,
                               kernel_copy=kernel_copy, progress=progress, pad=pad,
                               max_memory=max_memory, allow_expand=allow_expand,
                               options=options)
    t0 = time.perf_counter()
    dst = storage.local(dst)
    out_fmt = for_output(dst, to_format)
    out_fmt.check_available()
    wopts = write_options(out_fmt, compression=compression, kernel_copy=kernel_copy,
                          progress=progress, options=options)
    if not overwrite and os.path.lexists(dst):
        raise OutputExistsError("output exists; use --force to replace it", dst)
    read = ReadOptions(allow_external=allow_external, max_memory=max_memory,
                       allow_expand=allow_expand)
    with open_sources(src, from_format, read, allow_lossy) as (bundle, in_id, shown):
        fitted, warnings = fit(bundle, out_fmt, select=select, exclude=exclude, casts=cast,
                               allow_lossy=allow_lossy, pad=pad)
        if progress is not None and hasattr(progress, "total"):
            progress.total = total_bytes(fitted)
        size = write(fitted, dst, out_fmt, wopts, overwrite=overwrite)
    return Report(shown, dst, in_id, out_fmt.id, len(fitted), size,
                  time.perf_counter() - t0, warnings, fitted.notes)


def _convert_remote(src, dst, *, options, overwrite: bool, **rest):
    """``convert`` with URLs or file objects: local copies in (a ``--template`` too), the
    output uploaded only on success."""
    with contextlib.ExitStack() as stack:
        given = _options_mapping(options)
        for name, value in _file_options(options).items():
            given[name] = stack.enter_context(storage.staged(value))[0]
        lsrc, ldst, names = stack.enter_context(
            storage.staged(src, dst, overwrite=overwrite, lazy=True))
        report = convert(lsrc, ldst, overwrite=overwrite, options=given, **rest)
    return storage.renamed_report(report, names)


@contextlib.contextmanager
def open_sources(src, from_format, options: ReadOptions, allow_lossy=False):
    """Yield (bundle, format id, name for reports) for one file, or for a list of files
    merged into one bundle (kept open together, closed together)."""
    if not isinstance(src, (str, os.PathLike)) and not len(src):
        raise OptionError("no input files")
    if isinstance(src, (str, os.PathLike)) or len(src) == 1:
        one = storage.local(src if isinstance(src, (str, os.PathLike)) else src[0])
        fmt = detect(one, from_format)
        fmt.check_available()
        with fmt.read(one, options) as bundle:
            storage.lazy_bundle(bundle, one, storage.fetcher_for(one))  # remote
            yield bundle, fmt.id, one
        return
    with contextlib.ExitStack() as stack:
        merged = Bundle(path=None, format=None)
        owner: dict[str, str] = {}
        ids = []
        for item in map(storage.local, src):
            fmt = detect(item, from_format)
            fmt.check_available()
            ids.append(fmt.id)
            part = stack.enter_context(fmt.read(item, options))
            storage.lazy_bundle(part, item, storage.fetcher_for(item))
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
         kernel_copy: bool = True, overwrite: bool = False,
         pad: float | None = None, max_memory: int = MAX_MEMORY,
         allow_expand: bool = False, options=None) -> Plan:
    """How ``convert`` would run for these files, step by step; nothing is written.

    It stops where the run would stop (a refused loss, an existing DST without
    ``overwrite``). Given two format ids instead of files (``plan("hdf5", "parquet")``),
    describes the edge between the formats: how tensors travel at best and what the target
    cannot hold.
    """
    from ..formats import ids

    if storage.any_remote(src, *_file_options(options).values()):
        with contextlib.ExitStack() as stack:
            given = _options_mapping(options)
            for name, value in _file_options(options).items():  # a --template URL
                given[name] = stack.enter_context(storage.staged(value))[0]
            lsrc, _, names = stack.enter_context(storage.staged(src))
            result = plan(lsrc, dst, from_format=from_format, to_format=to_format,
                          select=select, exclude=exclude, cast=cast, allow_lossy=allow_lossy,
                          compression=compression, allow_external=allow_external,
                          kernel_copy=kernel_copy, overwrite=overwrite, pad=pad,
                          max_memory=max_memory, allow_expand=allow_expand, options=given)
        result.src = names.get(result.src, result.src)
        return result
    if isinstance(src, (str, os.PathLike)):
        src = os.fspath(src)
    dst = os.fspath(dst)
    if isinstance(src, str) and src in ids() and dst in ids() and not os.path.exists(src):
        return _format_plan(get(src), get(dst))
    out_fmt = for_output(dst, to_format)
    wopts = write_options(out_fmt, compression=compression, kernel_copy=kernel_copy,
                          options=options)
    read = ReadOptions(allow_external=allow_external, max_memory=max_memory,
                       allow_expand=allow_expand)
    with open_sources(src, from_format, read, allow_lossy) as (bundle, in_id, shown):
        result = Plan(shown, dst, in_id, out_fmt.id, "fast" if kernel_copy else "generic",
                      allow_lossy=allow_lossy)
        _plan_bundle(result, bundle, out_fmt, wopts, select=select, exclude=exclude,
                     cast=cast, allow_lossy=allow_lossy, pad=pad)
    if os.path.lexists(dst) and result.error is None:
        if overwrite:
            result.notes.append(f"{dst} exists and will be replaced (--force)")
        else:
            result.error = OutputExistsError("output exists; use --force to replace it",
                                                 dst).render(cli=True)
    return result


def _plan_bundle(result: Plan, bundle: Bundle, out_fmt: Format, wopts: WriteOptions, *,
                 select, exclude, cast, allow_lossy: bool, pad) -> None:
    """Fill ``result`` with the decisions for one opened source: losses, steps, route."""
    try:
        fitted, losses = decide(bundle, out_fmt, select=select, exclude=exclude, casts=cast,
                                fill=allow_lossy, pad=pad)
        refused = next((x for x in losses if x.refusal), None)
        if refused is not None and not allow_lossy:
            result.error = refused.error().render(cli=True)
        else:
            _check_left(bundle, fitted, out_fmt, select, exclude)
    except MlconvError as e:
        result.error = e.render(cli=True)
        return
    result.losses = [str(x) for x in losses]
    result.notes = [str(n) for n in fitted.notes]
    result.steps = steps_for(fitted, out_fmt, wopts)
    if bundle.format:
        result.route = route(edges(all_formats()), start_node(get(bundle.format), bundle),
                             out_fmt.id, out_fmt.representation(fitted, wopts))


def _format_plan(a: Format, b: Format) -> Plan:
    """The edge between two formats, independent of any file."""
    result = Plan(a.id, b.id, a.id, b.id)
    result.route = route(edges(all_formats()), start_node(a, None), b.id)
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
         compression: str | None = None, options=None) -> Report:
    """Write a Bundle or a mapping of names to arrays/Tensors/Tables to ``dst``."""
    if storage.is_remote(dst):
        with storage.staged(None, dst, overwrite=overwrite) as (_, ldst, names):
            report = save(data, ldst, format=format, metadata=metadata, cast=cast,
                          allow_lossy=allow_lossy, overwrite=overwrite,
                          compression=compression, options=options)
        return storage.renamed_report(report, names)
    t0 = time.perf_counter()
    dst = storage.local(dst)
    fmt = for_output(dst, format)
    fmt.check_available()
    wopts = write_options(fmt, compression=compression, options=options)
    bundle = data if isinstance(data, Bundle) else Bundle(data)
    if metadata is not None:
        bundle.metadata = {str(k): str(v) for k, v in metadata.items()}
    fitted, warnings = fit(bundle, fmt, casts=cast, allow_lossy=allow_lossy)
    size = write(fitted, dst, fmt, wopts, overwrite=overwrite)
    return Report(bundle.path, dst, bundle.format, fmt.id, len(fitted), size,
                  time.perf_counter() - t0, warnings)
