"""Many files into a folder: each converted exactly as ``convert`` would, a few at a time.

Workers are started by a fork server, never forked from this process: a fork taken while
another thread (a prefetching reader, a BLAS pool) holds a lock can deadlock the child.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from .. import storage
from ..errors import MlconvError, OptionError
from ..formats.base import MAX_MEMORY
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
                      options=None, client=None) -> Iterator[FileResult]:
    """Convert each of ``sources`` into ``dst_dir``, ``jobs`` at a time; yields a FileResult
    per file, in the order given, as soon as it (and those before it) are done. One bad file
    never stops the others.

    ``client``: run on Dask instead (a ``distributed.Client``, a scheduler address
    ``tcp://host:port``, or ``local``/``local:N`` for a LocalCluster of N workers): one task
    per file, results yielded as they complete.
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
        yield from _on_dask(client, tasks, common)
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


def _on_dask(target, tasks, options) -> Iterator[FileResult]:
    """One Dask task per file; a task lost with its worker is rerun. Outputs that did not
    exist when the run began may be replaced by a rerun of their own task (an attempt can
    publish and die before it reports): nothing is ever written twice under two names."""
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
            future = client.submit(_one, (src, dst, mine), retries=RETRIES, pure=False,
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
