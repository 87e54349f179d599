"""Where files live: local paths as they are; fsspec URLs and open file objects staged.

Readers and writers work on local files (memory maps, h5py, pyarrow, file-to-file copies).
A remote input (``s3://``, ``gs://``, ``az://``, ``memory://``, ``http(s)://`` or an open
binary file object) is *staged* into a private temp folder under its own base name:

- where the format says where its headers are (``Format.header_ranges``: safetensors, npy,
  GGUF, Parquet, Arrow IPC files, npz, ONNX: its structure without raw_data), as a sparse
  file of the object's full size holding only those ranges, fetched with ranged reads. The
  copy is then registered with ``ranged``: safetensors/npy/stored npz tensors fetch their
  bytes on first use, Parquet, Arrow IPC and npz readers fetch the ranges they read
  (``ranged.claim``); for a reader that does neither (ONNX), ``lazy_bundle`` fetches the rest
  at once (``inspect`` never does);
- otherwise (HDF5, Arrow streams) whole, in large ranges fetched concurrently.

HDF5 is thus always read from a complete local copy, so the crash guard checks that copy
as usual. A remote output is written to a local temp file and uploaded only once the
writer succeeded (one PUT, or a multipart upload completed at its end; conditional on S3
unless replacing): a failed run leaves nothing at DST. Temp folders are flock'ed by their
process; the next process sweeps those whose owner died.

fsspec is imported only when a URL or a file object is given; ``file://`` URLs are plain
local paths. Error messages name the URL, never the temp copy.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import weakref

from . import ranged
from .errors import (
    Loss,
    MissingDependencyError,
    MlconvError,
    OutputExistsError,
    SourceNotFoundError,
    as_loss,
)

RANGE = 16 << 20      # bytes per ranged request of a whole-object fetch
WORKERS = 4           # ranged requests in flight at once
HEAD = 64 << 10       # first guess at a header's extent: one request usually covers it
MAX_HEADER = 256 << 20  # never fetch more than this for headers: fetch the whole object
STATS = {"requests": 0, "bytes": 0}  # ranged reads made by this process (tests, benchmarks)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_EXTRA = "pip install 'mlconv[remote]'"


def is_url(p) -> bool:
    return isinstance(p, str) and bool(_URL.match(p))


def is_fileobj(p) -> bool:
    return hasattr(p, "read") and not isinstance(p, (str, bytes, os.PathLike))


def is_remote(p) -> bool:
    """True for what must be staged: a URL other than ``file://``, or a file object."""
    return is_fileobj(p) or (is_url(p) and not p.lower().startswith("file://"))


def any_remote(*items) -> bool:
    """True when any path (or any path of a list) is remote."""
    for item in items:
        if isinstance(item, (list, tuple)):
            if any(is_remote(x) for x in item):
                return True
        elif item is not None and is_remote(item):
            return True
    return False


def local(p) -> str:
    """A local path argument as a str: ``file://`` URLs become paths."""
    if isinstance(p, str) and p.lower().startswith("file://"):
        from urllib.parse import unquote, urlparse

        u = urlparse(p)
        return unquote(u.path) if u.netloc in ("", "localhost") else unquote(p[7:])
    return os.fspath(p)


def shown(p) -> str:
    """The name of ``p`` in messages and reports."""
    if is_fileobj(p):
        name = getattr(p, "name", None)
        return name if isinstance(name, str) else "<file object>"
    return local(p) if not is_url(p) or p.lower().startswith("file://") else p


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for ``url``; MissingDependencyError naming the
    extra when fsspec or the protocol's package is missing."""
    try:
        import fsspec.core
    except ImportError:
        raise MissingDependencyError(f"URLs need fsspec: {_EXTRA}", url) from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise MissingDependencyError(f"{url.split(':', 1)[0]}:// URLs need another package "
                                     f"({str(e).splitlines()[0][:200]}); {_EXTRA} brings "
                                     "fsspec and s3fs", url) from None
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise MlconvError(f"unknown URL scheme {url.split(':', 1)[0]!r}", url) from None
        raise _failed("cannot open", url, e) from None


def _failed(what: str, url: str, e: BaseException) -> MlconvError:
    """A store's error as one line: missing objects as SourceNotFoundError."""
    if isinstance(e, MlconvError):
        return e
    if isinstance(e, FileNotFoundError):
        return SourceNotFoundError("no such file (or bucket)", url)
    if isinstance(e, PermissionError):
        return MlconvError(f"{what}: access denied ({_first_line(e)}); check the "
                           "credentials for this store", url)
    return MlconvError(f"{what}: {type(e).__name__}: {_first_line(e)}", url)


def _first_line(e: BaseException) -> str:
    text = str(e.args[-1] if isinstance(e, OSError) and e.args else e) or type(e).__name__
    return text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__


class _Object:
    """A readable remote object or file object: ``size`` and ranged ``read``."""

    def __init__(self, p):
        self.name = shown(p)
        if is_fileobj(p):
            self.fs = None
            self.f = p
            try:
                self.size = p.seek(0, os.SEEK_END)
            except (OSError, AttributeError, ValueError):
                self.size = None  # a pipe: read from where it is, once
            return
        self.fs, self.path = filesystem(p)
        try:
            info = self.fs.info(self.path)
        except Exception as e:  # noqa: BLE001 - any store error is one line naming the URL
            raise _failed("cannot read", p, e) from None
        if info.get("type") == "directory":
            raise SourceNotFoundError("is a directory, not a file", p)
        self.size = info.get("size")

    def read(self, start: int, end: int) -> bytes:
        if self.fs is None:
            self.f.seek(start)
            data = self.f.read(end - start)
        else:
            try:
                data = self.fs.cat_file(self.path, start=start, end=end)
            except Exception as e:  # noqa: BLE001
                raise _failed("cannot read", self.name, e) from None
        _count(len(data))
        if len(data) > end - start and len(data) == self.size:
            data = data[start:end]  # a server that ignores ranges sent it all: still right
        if len(data) != end - start:
            raise MlconvError(f"object shrank while reading: {end - start} bytes asked at "
                              f"{start}, {len(data)} read", self.name)
        return data


_STATS_LOCK = __import__("threading").Lock()


def _count(n: int) -> None:
    with _STATS_LOCK:
        STATS["requests"] += 1
        STATS["bytes"] += n


def _fetch_all(obj: _Object, fd: int) -> None:
    if obj.size is None:  # a pipe, or a server that says no size: copy it as it comes
        with contextlib.ExitStack() as stack:
            try:
                f = obj.f if obj.fs is None else stack.enter_context(obj.fs.open(obj.path))
                while True:
                    data = f.read(RANGE)
                    if not data:
                        return
                    _count(len(data))
                    os.write(fd, data)
            except (MlconvError, OSError) as e:
                if isinstance(e, OSError) and obj.fs is None:
                    raise
                raise _failed("cannot read", obj.name, e) from None
    ranges = [(i, min(i + RANGE, obj.size)) for i in range(0, obj.size, RANGE)]
    _fetch(obj, fd, ranges)


def _fetch(obj: _Object, fd: int, ranges) -> None:
    """Copy ``ranges`` of ``obj`` to the same offsets of ``fd``, several at once."""
    def one(r):
        os.pwrite(fd, obj.read(*r), r[0])

    ranges = [r for r in ranges if r[1] > r[0]]
    if obj.fs is None or len(ranges) < 2:
        for r in ranges:
            one(r)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, ranges))


class _Sparse:
    """The temp copy being filled: which ranges hold the object's bytes so far."""

    def __init__(self, obj: _Object, fd: int, path: str):
        import threading

        self.obj, self.fd = obj, fd
        self.path = path  # the copy, for header parsers that map it
        self.have: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def get(self, start: int, end: int) -> bytes:
        """Bytes ``start:end`` for a header parser (capped at MAX_HEADER in all)."""
        start, end = max(0, start), min(self.obj.size, end)
        if end <= start:
            return b""
        if end - start > MAX_HEADER or sum(b - a for a, b in self.have) > MAX_HEADER:
            raise _TooBig
        self.fill(start, end)
        return os.pread(self.fd, end - start, start)

    def fill(self, start: int, end: int) -> None:
        """Fetch what is missing of ``start:end`` (in RANGE pieces, several at once)."""
        self.fill_ranges([(start, end)])

    def fill_ranges(self, ranges) -> None:
        """``fill`` for several ranges: all their missing pieces fetched together."""
        with self.lock:
            missing = [(max(0, s), min(self.obj.size, e)) for s, e in ranges]
            for a, b in self.have:
                missing = [piece for s, e in missing for piece in
                           ((s, min(e, a)), (max(s, b), e)) if piece[1] > piece[0]]
            missing = _merged(missing)
            pieces = [(i, min(i + RANGE, e)) for s, e in missing for i in range(s, e, RANGE)]
            _fetch(self.obj, self.fd, pieces)
            self.have = _merged(self.have + missing)


def _merged(ranges) -> list[tuple[int, int]]:
    """Sorted ranges with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(r for r in ranges if r[1] > r[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


class _TooBig(Exception):
    pass


def _header_ranges(s: _Sparse, name: str) -> bool:
    """Fetch what a reader of the object's format needs for headers (the format says, by
    its magic); False: fetch it all."""
    from .formats import by_extension, by_magic

    size = s.obj.size
    fmt = by_magic(s.get(0, min(size, HEAD)), size) or by_extension(name)  # ONNX: no magic
    return fmt.header_ranges(s.get, size, s.path) if fmt is not None else False


TEMP_PREFIX = "mlconv-remote-"
_LOCK = ".mlconv-owner"  # flock'ed by the process using the folder, all its life
_swept: list[bool] = []


def _sweep_stale() -> None:
    """Remove temp folders left by processes that died (a Dask worker killed mid-write),
    once per process. A folder is stale when nobody holds its lock: the kernel drops a
    flock when its process dies, however it dies; a live owner (any PID namespace sharing
    this /tmp) still holds it, so its folder is never touched."""
    import fcntl
    import shutil
    import tempfile

    if _swept:
        return
    _swept.append(True)
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return
    for name in names:
        folder = os.path.join(root, name)
        try:
            fd = os.open(os.path.join(folder, _LOCK), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # no lock file (yet, or another tool's folder): leave it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its owner is alive
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _temp_folder():
    import fcntl
    import shutil
    import tempfile

    _sweep_stale()
    folder = tempfile.mkdtemp(prefix=TEMP_PREFIX)
    new = os.path.join(folder, _LOCK + ".new")
    lock = os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(new, os.path.join(folder, _LOCK))  # a sweeper sees it locked already
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(lock)


def _base(p) -> str:
    name = shown(p).rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    name = re.sub(r"[\x00/\\]", "_", name)
    return name if name not in ("", ".", "..", _LOCK, _LOCK + ".new") else "object"


def stage(p, headers: bool = False):
    """(local path, cleanup) for input ``p``; local paths come back as they are."""
    path, cleanup, _ = _stage(p, headers)
    return path, cleanup


def stage_lazy(p):
    """(local path, cleanup, fetcher) for ``load``: the copy holds the headers only when
    ``fetcher`` is not None; ``lazy_bundle`` then makes the read bundle fetch on use."""
    return _stage(p, True)


_FETCHERS: dict[str, _Sparse] = {}  # copies staged with lazy=True that hold headers only


def fetcher_for(path: str):
    """The fetcher of a copy staged with ``lazy=True`` holding headers only, or None."""
    return _FETCHERS.get(path)


class _Copy:
    """A remote file's local copy, shared by its bundle and every entry read from it (each
    entry's ``held``): removed at the bundle's ``close()``, or once neither the bundle nor
    any of those entries is left, so ``load(url)["x"].numpy()`` reads a live copy."""

    def __init__(self, path: str, cleanup):
        self.path, self.closed = path, False
        self._remove = weakref.finalize(self, cleanup)

    def close(self) -> None:
        self.closed = True
        self._remove()

    def __copy__(self):  # a copied entry reads the same copy, and keeps it alive too
        return self

    def __deepcopy__(self, memo):
        return self


def hold_copy(bundle, cleanup) -> None:
    """Tie the local copy's removal (``cleanup``) to ``bundle`` and its entries."""
    copy = _Copy(bundle.path, cleanup)
    bundle.on_close(copy.close)
    for name, entry in bundle.items():
        entry.held = (copy, name)


def lazy_bundle(bundle, path: str, fetcher) -> None:
    """Tensors memory-mapped from a copy holding headers only (safetensors, npy, stored npz
    members) fetch their own bytes on first use (a memory map of the copy then sees them);
    readers that ``ranged.claim`` the copy fetch the rest themselves (Parquet column
    chunks, Arrow IPC batches, deflated npz members); any other bundle gets it all now."""
    from .model import Tensor
    from .sources import FileSource

    if fetcher is None:
        return

    def mapped(e):  # a payload at an offset the headers gave: fetched on first use
        return isinstance(e, Tensor) and isinstance(e.source, FileSource) and \
            e.source.fmap.path == path

    if not ranged.claimed(path) and not all(mapped(e) for e in bundle.values()):
        fetcher.fill(0, fetcher.obj.size)
        return
    for entry in bundle.values():
        if mapped(entry):
            entry.source = _Fetching(entry.source, fetcher)


def _stage(p, headers: bool):
    if not is_remote(p):
        return local(p), lambda: None, None
    stack = contextlib.ExitStack()
    try:
        folder = stack.enter_context(_temp_folder())
        obj = _Object(p)
        path = os.path.join(folder, _base(p))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        stack.callback(os.close, fd)
        partial = None
        if headers and obj.size:
            os.ftruncate(fd, obj.size)  # holes cost no disk and are never read
            sparse = _Sparse(obj, fd, path)
            try:
                partial = sparse if _header_ranges(sparse, _base(p)) else None
            except (_TooBig, struct.error, ValueError, IndexError):
                partial = None
            if partial is not None:  # readers that know their ranges fetch them as they go
                ranged.register(path, sparse.fill_ranges)
                stack.callback(ranged.unregister, path)
        if partial is None:
            os.ftruncate(fd, 0)
            _fetch_all(obj, fd)
            if is_url(p):
                _side_files(p, path, folder)
    except BaseException:
        stack.close()
        raise
    return path, stack.close, partial


def _side_files(url: str, path: str, folder: str) -> None:
    """Fetch the files the object's format reads beside it (ONNX external data), from beside
    it, into ``folder`` (plain relative names only; the reader checks every one again)."""
    from .formats import detect

    try:
        names = detect(path).side_files(path)
    except MlconvError:
        return  # the reader says what is wrong
    base = url.rsplit("/", 1)[0]
    for name in sorted(set(names)):
        parts = name.replace("\\", "/").split("/")
        if not name or name.startswith("/") or any(x in ("", ".", "..") for x in parts):
            continue
        target = os.path.join(folder, *parts)
        if os.path.lexists(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            side = _Object(base + "/" + "/".join(parts))
        except SourceNotFoundError:
            continue  # the reader reports it missing
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _fetch_all(side, fd)
        finally:
            os.close(fd)


class _Fetching:
    """A FileSource over a copy holding headers only: its range is fetched on first use.
    No ``span``: a writer must not copy the file's bytes behind our back."""

    span = None

    def __init__(self, inner, fetcher: _Sparse):
        self.inner, self.fetcher, self.done = inner, fetcher, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _ensure(self):
        if not self.done:
            self.fetcher.fill(self.inner.offset, self.inner.offset + self.inner.nbytes)
            self.done = True

    def array(self):
        self._ensure()
        return self.inner.array()

    def chunks(self, size: int = RANGE):
        self._ensure()
        return self.inner.chunks(size)

    def rows(self, index, cache=None):
        self._ensure()
        return self.inner.rows(index, cache)

    def row_reader(self):
        self._ensure()  # a memory map of the copy sees only what was fetched
        return self.inner.row_reader()


@contextlib.contextmanager
def staged(inputs, output=None, *, overwrite: bool = False, headers: bool = False,
           lazy: bool = False):
    """Local stand-ins for ``inputs`` (a path or a list) and ``output``, yielded as
    (inputs, output, names: temp path -> original name). The output is uploaded when the
    block ends without an error; errors and reports name the originals, not the copies.
    ``lazy``: inputs hold headers only where they can; ``fetcher_for`` finds their fetcher
    (``lazy_bundle`` then fetches tensors on use, or the rest of the file at once)."""
    names: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        try:
            one = not isinstance(inputs, (list, tuple))
            out_in = []
            for item in [inputs] if one else inputs:
                if item is None:
                    out_in.append(None)
                    continue
                path, cleanup, fetcher = _stage(item, headers or lazy)
                stack.callback(cleanup)
                if lazy and fetcher is not None:
                    _FETCHERS[path] = fetcher
                    stack.callback(_FETCHERS.pop, path, None)
                names[path] = shown(item)
                out_in.append(path)
            dst = None
            if output is not None:
                dst = stack.enter_context(_output(output, overwrite))
                names[dst] = shown(output)
            yield (out_in[0] if one else out_in), dst, names
        except MlconvError as e:
            rename(e, names)
            raise


@contextlib.contextmanager
def _output(dst, overwrite: bool):
    if not is_remote(dst):
        yield local(dst)
        return
    name = shown(dst)
    fs = rpath = None
    if is_url(dst) and dst.lower().startswith(("http://", "https://")):
        from .errors import OptionError

        raise OptionError("http(s) URLs are read-only: write to a store (s3://, gs://...)",
                          name)
    if not is_fileobj(dst):
        fs, rpath = filesystem(dst)
        try:
            exists = fs.exists(rpath)
        except Exception as e:  # noqa: BLE001
            raise _failed("cannot write", name, e) from None
        if exists and not overwrite:
            raise OutputExistsError("output exists; use --force to replace it", name)
    with _temp_folder() as folder:
        path = os.path.join(folder, _base(dst))
        yield path
        # the writer succeeded: publish the file and any companions (ONNX external data)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name != _base(dst)):
            if not entry.is_file() or entry.name == _LOCK:
                continue
            if fs is None:
                import shutil

                with open(entry.path, "rb") as f:
                    shutil.copyfileobj(f, dst, RANGE)
                continue
            target = rpath if entry.name == _base(dst) else \
                rpath.rsplit("/", 1)[0] + "/" + entry.name
            upload(fs, entry.path, target, name, create=not overwrite)


def upload(fs, path: str, target: str, name: str, create: bool = False) -> None:
    """Put local ``path`` at ``target``: one object, visible only once complete.
    ``create``: never replace an object that appeared since the existence check (on S3 a
    conditional PUT, ``If-None-Match: *``; other stores check just before writing)."""
    import inspect

    mode = {"mode": "create"} if create and "mode" in \
        inspect.signature(fs.put_file).parameters else {}
    try:
        fs.put_file(path, target, **mode)
    except FileExistsError:
        raise OutputExistsError("output exists (written by someone else meanwhile); use "
                                "--force to replace it", name) from None
    except Exception as e:  # noqa: BLE001
        with contextlib.suppress(Exception):
            if fs.exists(target) and fs.size(target) != os.path.getsize(path):
                fs.rm_file(target)  # a store that publishes as it writes: never a cut file
        raise _failed("cannot write", name, e) from None


def rename(e: MlconvError, names: dict) -> None:
    """Put the original names back into ``e`` where it names a temp copy."""
    if e.path in names:
        e.path = names[e.path]
    for tmp, real in names.items():
        if tmp in e.message:
            e.message = e.message.replace(tmp, real)
            e.args = (e.message,)


def renamed_report(report, names: dict):
    """``report`` (a convert Report) naming the originals."""
    def fix(p):
        return names.get(p, p)

    report.src, report.dst = fix(report.src), fix(report.dst)
    def renamed(w):
        w = as_loss(w)
        return Loss(w.what, fix(w.path), w.entry, w.kind, w.way_out, w.refusal)

    report.warnings = [renamed(w) for w in report.warnings]
    report.notes = [renamed(w) for w in report.notes]
    return report


def read_bytes(p, limit: int = 64 << 20) -> bytes:
    """A small whole file (an expectation file) from a path, URL or file object."""
    if not is_remote(p):
        with open(local(p), "rb") as f:
            return f.read(limit + 1)
    obj = _Object(p)
    if obj.size is None:
        return obj.f.read(limit + 1)
    return obj.read(0, min(obj.size, limit + 1))


def exists(p) -> bool:
    """True when path or URL ``p`` names something."""
    if not is_remote(p):
        return os.path.lexists(local(p))
    fs, path = filesystem(p)
    try:
        return fs.exists(path)
    except Exception as e:  # noqa: BLE001
        raise _failed("cannot read", p, e) from None


def join(folder, name: str) -> str:
    """``name`` inside ``folder`` (a local folder or a URL prefix)."""
    folder = shown(folder) if is_url(folder) else os.fspath(folder)
    if is_url(folder):
        return folder.rstrip("/") + "/" + name
    return os.path.join(folder, name)


def glob(pattern: str) -> list[str]:
    """URLs matching a URL ``pattern`` (sorted), with the scheme kept."""
    fs, path = filesystem(pattern)
    try:
        hits = sorted(fs.glob(path))
    except Exception as e:  # noqa: BLE001
        raise _failed("cannot list", pattern, e) from None
    return [fs.unstrip_protocol(h) for h in hits if not fs.isdir(h)]
