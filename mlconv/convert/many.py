"""Many files into a folder: each converted exactly as ``convert`` would, a few at a time.

Workers are started by a fork server, never forked from this process: a fork taken while
another thread (a prefetching reader, a BLAS pool) holds a lock can deadlock the child.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from .. import storage
from ..errors import MlconvError, OptionError
from ..formats.base import MAX_MEMORY
from ..model import Tensor
from .execute import Report, convert


@dataclass
class FileResult:
    """One file of a many-file run: its Report, or the error that stopped it."""

    src: str
    dst: str
    report: Report | None = None
    error: MlconvError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self, cli: bool = False) -> dict:
        out = {"src": self.src, "dst": self.dst, "ok": self.ok}
        if self.ok:
            out["report"] = self.report.as_dict()
        else:
            out["error"] = self.error.render(cli=cli)
        return out


def plan_outputs(sources, dst_dir, ext: str) -> list[tuple[str, str]]:
    """(src, dst) pairs, ``<dst_dir>/<stem><ext>``; refused when two would collide."""
    remote = storage.is_url(dst_dir) and storage.is_remote(dst_dir)
    dst_dir = dst_dir if remote else storage.local(dst_dir)
    if not remote and not os.path.isdir(dst_dir):
        raise MlconvError("the output folder does not exist", dst_dir)
    tasks = []
    for src in map(os.fspath, sources):
        stem = os.path.splitext(os.path.basename(src.rstrip("/")))[0]
        tasks.append((src, storage.join(dst_dir, stem + ext)))
    seen: dict[str, str] = {}
    for src, dst in tasks:
        if dst in seen:
            raise OptionError(f"{seen[dst]} and {src} would both write {dst} (same file "
                              "stem)")
        seen[dst] = src
    return tasks


def iter_convert_many(sources, dst_dir, *, to_format: str, jobs: int | None = None,
                      from_format: str | None = None, select=(), exclude=(), cast=None,
                      allow_lossy: bool = False, overwrite: bool = False,
                      compression: str | None = None, allow_external: bool = False,
                      kernel_copy: bool = True, pad: float | None = None,
                      max_memory: int = MAX_MEMORY, allow_expand: bool = False,
                      options=None, client=None,
                      split_size: int | None = None) -> Iterator[FileResult]:
    """Convert each of ``sources`` into ``dst_dir``, ``jobs`` at a time; yields a FileResult
    per file, in the order given, as soon as it (and those before it) are done. One bad file
    never stops the others.

    ``client``: run on Dask instead (a ``distributed.Client``, a scheduler address
    ``tcp://host:port``, or ``local``/``local:N`` for a LocalCluster of N workers): one task
    per file, results yielded as they complete. A file larger than ``split_size`` bytes
    (default SPLIT_SIZE) into a local folder, of a target that lays tensor payloads out
    verbatim, is written by several tasks (see ``_split``).
    """
    from ..formats import get

    fmt = get(to_format)
    tasks = plan_outputs(sources, dst_dir, fmt.extensions[0])
    common = dict(to_format=fmt.id, from_format=from_format, select=select,
                   exclude=exclude, cast=cast, allow_lossy=allow_lossy, overwrite=overwrite,
                   compression=compression, allow_external=allow_external,
                   kernel_copy=kernel_copy, pad=pad, max_memory=max_memory,
                   allow_expand=allow_expand, options=options)
    if client is not None:
        yield from _on_dask(client, tasks, common, split_size or SPLIT_SIZE)
        return
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks) or 1))
    if jobs == 1:
        for src, dst in tasks:
            yield _one((src, dst, common))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        yield from pool.map(_one, [(s, d, common) for s, d in tasks])


def convert_many(sources, dst_dir, *, to_format: str | None = None, jobs: int | None = None,
                 client=None, to: str | None = None, **options) -> list[FileResult]:
    """``iter_convert_many`` as a list (same keyword options as ``convert``); ``sources``
    may be a glob (local or URL), ``to`` is short for ``to_format``. With ``client`` (see
    ``iter_convert_many``) the list is in the order of ``sources`` too."""
    to_format = to_format or to
    if not to_format:
        raise OptionError("converting into a folder needs to_format (or to=)")
    if isinstance(sources, (str, os.PathLike)):
        from ..validate import expand

        sources = expand([os.fspath(sources)])
    results = list(iter_convert_many(sources, dst_dir, to_format=to_format, jobs=jobs,
                                     client=client, **options))
    order = {src: i for i, src in enumerate(map(os.fspath, sources))}
    return sorted(results, key=lambda r: order.get(r.src, 0))


RETRIES = 2  # a task lost with its worker (or failing outside mlconv) runs again


def dask_client(target):
    """(client, close) for ``target``: a Client as is, ``local[:N]`` a new LocalCluster
    of N worker processes, else a scheduler address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("--dask needs dask.distributed: "
                                     "pip install 'mlconv[dask]'") from None
    if not isinstance(target, str):
        return target, lambda: None
    if target == "local" or target.startswith("local:"):
        n = target.partition(":")[2]
        if n and not n.isdigit() or n == "0":
            raise OptionError(f"--dask local:N takes a number of workers, not {n!r}")
        cluster = LocalCluster(n_workers=int(n) if n else None, threads_per_worker=1,
                               processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0")
        client = Client(cluster)

        def close():
            client.close()
            cluster.close()

        return client, close
    try:
        client = Client(target, timeout="30s")
    except (OSError, TimeoutError) as e:
        raise MlconvError(f"cannot reach the Dask scheduler: {e}", target) from None
    return client, client.close


def _on_dask(target, tasks, options, split_size: int) -> Iterator[FileResult]:
    """One Dask task per file; a task lost with its worker is rerun. Outputs that did not
    exist when the run began may be replaced by a rerun of their own task (an attempt can
    publish and die before it reports): nothing is ever written twice under two names.
    A file over ``split_size`` may be written by several tasks (``_split``)."""
    client, close = dask_client(target)
    try:
        from distributed import as_completed

        futures = {}
        for src, dst in tasks:
            mine = dict(options)
            if not options["overwrite"] and storage.exists(dst):
                from ..errors import OutputExistsError

                yield FileResult(src, dst, error=OutputExistsError(
                    "output exists; use --force to replace it", dst))
                continue
            mine["overwrite"] = True  # see above: a rerun may find its own earlier output
            split = _split(client, src, dst, mine, split_size)
            if isinstance(split, FileResult):
                yield split  # the file failed while being planned
                continue
            future = split or client.submit(
                _one, (src, dst, mine), retries=RETRIES, pure=False,
                key=f"mlconv-convert-{len(futures)}-{os.urandom(4).hex()}")
            futures[future] = (src, dst)
        for future in as_completed(futures):
            src, dst = futures[future]
            try:
                yield future.result()
            except Exception as e:  # noqa: BLE001 - the task itself failed (workers lost)
                yield FileResult(src, dst, error=MlconvError(
                    f"Dask task failed: {type(e).__name__}: {e}", src))
    finally:
        close()


SPLIT_SIZE = 1 << 30  # a file larger than this may be written by several Dask tasks


def _size(src) -> int | None:
    try:
        if storage.is_remote(src):
            fs, path = storage.filesystem(src)
            return fs.size(path)
        return os.path.getsize(storage.local(src))
    except (OSError, MlconvError):
        return None  # the conversion itself says what is wrong


def _split(client, src, dst, options, split_size: int):
    """For one large file, one Dask task per range of tensors, or None (one task).

    The target's writer runs here, on the client, with every tensor payload left as a
    hole of its exact size (headers come only from shapes and dtypes): that gives the
    header bytes and each payload's offset. Tasks open the source, fit it the same way and
    write their tensors' payloads at those offsets into the temp file; the last task to
    finish (an ordinary task depending on the others) renames it into place. Tasks are
    idempotent, so one lost with its worker is simply rerun; a failure removes the temp
    file. Only a single source into a local DST (workers share its folder) of a target
    that lays payloads out verbatim and writes through mlconv's own file splits."""
    from ..formats import get

    fmt = get(options["to_format"])
    if not fmt.caps.raw_payload or fmt.caps.payload_checksums or storage.is_remote(dst) \
            or storage.is_fileobj(src):
        return None
    size = _size(src)
    if size is None or size <= split_size:
        return None
    try:
        layout = _layout(src, dst, fmt, options)
    except MlconvError as e:
        return FileResult(src, dst, error=e)
    except OSError as e:
        return FileResult(src, dst, error=MlconvError(str(e.strerror or e), src))
    if layout is None:
        return None
    tmp, report, placed = layout
    groups: list[list] = [[]]
    total = 0
    for item in placed:  # consecutive tensors, about split_size bytes a task
        if total >= split_size:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += item[2]
    tag = os.urandom(4).hex()
    parts = [client.submit(_write_part, (src, tmp, group, options), retries=RETRIES,
                           pure=False, key=f"mlconv-part-{k}-{tag}")
             for k, group in enumerate(groups)]
    return client.submit(_publish, src, dst, tmp, report, *parts, retries=RETRIES,
                         pure=False, key=f"mlconv-publish-{tag}")


def _layout(src, dst, fmt, options):
    """(temp file beside DST holding everything but the payloads, Report, [(name, offset,
    nbytes)...]) or None when this file cannot be split."""
    import time

    from ..atomic import _WholeWrites, temp_path
    from .execute import write_options

    t0 = time.perf_counter()
    dst = os.path.abspath(storage.local(dst))
    wopts = write_options(fmt, compression=options["compression"],
                          kernel_copy=options["kernel_copy"], options=options["options"])
    with contextlib.ExitStack() as stack:
        lsrc, in_id, fitted, warnings, names = _fitted(stack, src, options)
        if len(fitted) < 2 or not all(isinstance(e, Tensor) and e.nbytes is not None
                                      for e in fitted.values()):
            return None
        placed: list = []
        for name in list(fitted):
            fitted[name] = _Hole(fitted[name], name, placed)
        if not os.path.isdir(os.path.dirname(dst)):
            raise MlconvError("the output folder does not exist", dst)
        tmp = temp_path(os.path.dirname(dst), os.path.basename(dst))
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with _WholeWrites(fd, "r+b", closefd=False) as f:
                f.name, f.companions, f.after_publish = tmp, [], []
                fmt.write(fitted, f, dst, wopts)
            same = os.path.exists(tmp) and os.stat(tmp).st_ino == os.fstat(fd).st_ino
            if not same or f.companions or len(placed) != len(fitted):
                _remove(tmp)  # a library wrote the file itself: no holes of ours in it
                return None
            end = max(offset + n for _, offset, n in placed)
            if os.fstat(fd).st_size < end:
                os.ftruncate(fd, end)  # the last payload is the file's end
        except BaseException:
            _remove(tmp)
            raise
        finally:
            os.close(fd)
        report = Report(names.get(lsrc, lsrc), dst, in_id, fmt.id, len(fitted), 0,
                        time.perf_counter() - t0, warnings, fitted.notes)
        report = storage.renamed_report(report, names)
    return tmp, report, placed


def _fitted(stack, src, options):
    """(local copy, format id, fitted bundle, losses, names) of ``src`` opened as
    ``convert`` opens it (remote: headers only, tensors fetched when written), in ``stack``."""
    from ..formats import get
    from ..formats.base import ReadOptions
    from .execute import fit, open_sources

    read = ReadOptions(allow_external=options["allow_external"],
                       max_memory=options["max_memory"], allow_expand=options["allow_expand"])
    lsrc, _, names = stack.enter_context(storage.staged(src, lazy=True))
    bundle, in_id, _ = stack.enter_context(
        open_sources(lsrc, options["from_format"], read, options["allow_lossy"]))
    fitted, losses = fit(bundle, get(options["to_format"]), select=options["select"],
                         exclude=options["exclude"], casts=options["cast"],
                         allow_lossy=options["allow_lossy"], pad=options["pad"])
    return lsrc, in_id, fitted, losses, names


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class _Hole(Tensor):
    """A fitted tensor whose payload the writer leaves as a hole, noting where it is."""

    __slots__ = ("name", "placed")

    def __init__(self, entry, name: str, placed: list):
        super().__init__(entry.source, entry._attrs, entry._encoding)
        self.name, self.placed = name, placed

    def write_to(self, sink, digest=None) -> None:
        # (no digest to give: a target that checksums payloads is never split)
        self.placed.append((self.name, sink.pos, self.nbytes))
        sink.seek(sink.pos + self.nbytes)


def _write_part(task) -> tuple[str, int]:
    """A Dask task: write the payloads of ``group`` at their offsets of ``tmp``;
    (error line or "", bytes written). Writing the same bytes twice (a rerun) is harmless."""
    from ..fileio import Sink

    src, tmp, group, options = task
    try:
        with contextlib.ExitStack() as stack:
            fitted = _fitted(stack, src, options)[2]
            fd = os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                sink = Sink(fd, None, options["kernel_copy"])
                for name, offset, nbytes in group:
                    entry = fitted[name]
                    if entry.nbytes != nbytes:
                        raise MlconvError(f"the source changed: {entry.nbytes} bytes, "
                                          f"{nbytes} planned", src, name)
                    sink.seek(offset)
                    entry.write_to(sink)
            finally:
                os.close(fd)
    except MlconvError as e:
        return e.render(), 0
    except OSError as e:
        return f"{e.strerror or e} ({src})", 0
    return "", sum(n for _, _, n in group)


def _publish(src, dst, tmp, report, *parts) -> FileResult:
    """The last task of a split file: rename the temp file into place when every part
    was written, else remove it."""
    from ..atomic import _umask, replace

    errors = [err for err, _ in parts if err]
    if errors:
        _remove(tmp)
        return FileResult(src, dst, error=MlconvError(f"a part failed: {errors[0]}"))
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        replace(tmp, dst)
    except FileNotFoundError:
        if not os.path.exists(dst):  # an earlier attempt of this task published it
            raise
    report.bytes_written = os.path.getsize(dst)
    return FileResult(src, dst, report=report)


def _one(task) -> FileResult:
    src, dst, options = task
    try:
        return FileResult(src, dst, report=convert(src, dst, **options))
    except MlconvError as e:
        return FileResult(src, dst, error=e)
    except OSError as e:
        return FileResult(src, dst, error=MlconvError(str(e.strerror or e),
                                                      getattr(e, "filename", None) or src))
    except Exception as e:  # noqa: BLE001 - a bug on one file must not stop the others
        return FileResult(src, dst, error=MlconvError(
            f"internal error: {type(e).__name__}: {e} (a bug in mlconv)", src))
