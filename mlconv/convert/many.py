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
                      layout: str | None = None, row_group_size: int | None = None,
                      path: str = "fast", template: str | None = None,
                      external_data: bool = False, pad: float | None = None,
                      max_memory: int = MAX_MEMORY,
                      allow_expand: bool = False) -> Iterator[FileResult]:
    """Convert each of ``sources`` into ``dst_dir``, ``jobs`` at a time; yields a FileResult
    per file, in the order given, as soon as it (and those before it) are done. One bad file
    never stops the others."""
    from ..formats import get

    fmt = get(to_format)
    tasks = plan_outputs(sources, dst_dir, fmt.extensions[0])
    options = dict(to_format=fmt.id, from_format=from_format, select=select,
                   exclude=exclude, cast=cast, allow_lossy=allow_lossy, overwrite=overwrite,
                   compression=compression, allow_external=allow_external, layout=layout,
                   row_group_size=row_group_size, path=path, template=template,
                   external_data=external_data, pad=pad, max_memory=max_memory,
                   allow_expand=allow_expand)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks) or 1))
    if jobs == 1:
        for src, dst in tasks:
            yield _one((src, dst, options))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        yield from pool.map(_one, [(s, d, options) for s, d in tasks])


def convert_many(sources, dst_dir, *, to_format: str, jobs: int | None = None,
                 **options) -> list[FileResult]:
    """``iter_convert_many`` as a list (same keyword options as ``convert``)."""
    return list(iter_convert_many(sources, dst_dir, to_format=to_format, jobs=jobs,
                                  **options))


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
