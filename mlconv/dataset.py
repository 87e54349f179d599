"""A lazy, random-access dataset over one file or many shards, for data loaders.

    ds = mlconv.dataset("train-*.parquet", columns=["image", "label"])
    ds[0]                      # {"image": array(28, 28), "label": array(())}
    ds[[3, 9, 27]]             # the batch: {"image": array(3, 28, 28), ...}
    for batch in ds.batches(256, shuffle=True, seed=epoch): ...
    ds.shard(rank, world)      # this worker's rows: disjoint, together complete

Columns are the file's tensors (npy/npz, safetensors, HDF5, ONNX: all sharing a first axis)
or its table columns (Parquet/Arrow rows layout and plain tables, HDF5 compound tables).
Shards are concatenated in order and must agree on column names, dtypes and row shapes
(files of one tensor each, like npy, are matched by position).

Each read touches only what it needs: a memory-map slice where the bytes lie in the file
as is, else whole HDF5 chunks or Parquet/Arrow pieces through a byte-sized LRU cache.
A Dataset pickles as paths and shapes: every process opens the files itself on first use
(fork and spawn alike), and a file that changed since the dataset was made is an error
(checked before every batch read, and at most every CHECK_NS for single rows).
"""

from __future__ import annotations

import bisect
import glob
import os
import time

from . import storage
from .errors import FormatError, OptionError, SourceNotFoundError, UnsupportedError
from .lru import ByteLRU
from .sources import row_index

CACHE_BYTES = 256 << 20
CHECK_NS = 5_000_000  # single-row reads re-check their file at most every 5 ms
_clock = time.monotonic_ns
_forks = [0]  # bumped in every forked child: cheaper than asking os.getpid() per sample
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


def dataset(paths, columns=None, *, cache_bytes: int = CACHE_BYTES, format: str | None = None,
            trusted: bool = False) -> Dataset:
    """A ``Dataset`` over ``paths``: a path, a glob, or a list of them (rows in that order).

    ``columns``: only these are ever read. ``cache_bytes``: decoded chunks kept per process.
    ``trusted``: skip the HDF5 crash guard (its verdicts are cached across processes anyway).
    """
    files = _expand(paths)
    wanted = None if columns is None else [columns] if isinstance(columns, str) else \
        list(columns)
    shards, names, specs = [], None, None
    for path in files:
        with _load(path, format, trusted) as bundle:
            found = _pick(_columns(bundle, path), wanted, path, names)
            spec = {n: (t.dtype, t.shape[1:]) for n, t in
                    zip(names or found, found.values(), strict=True)}
            rows = _rows(found, path)
        if names is None:
            names, specs = list(found), spec
        elif spec != specs:
            raise FormatError(f"columns differ from the first file's {_describe(specs)}: "
                              f"{_describe(spec)}", path)
        shards.append((path, rows, list(found), _signature(path)))
    return Dataset(shards, names, cache_bytes, format, trusted)


class Dataset:
    """Rows of one or many files: ``len``, ``ds[i]`` (a dict of numpy arrays), ``ds[idx]``
    for a slice, list or int array (the batch), ``batches()``, ``shard()``. See the module."""

    def __init__(self, shards, columns, cache_bytes=CACHE_BYTES, format=None, trusted=False,
                 lo: int = 0, hi: int | None = None):
        import numpy as np

        self._shards = list(shards)  # (path, rows, entry names, signature)
        self.columns = list(columns)
        self.cache_bytes = int(cache_bytes)
        self._format, self._trusted = format, trusted
        self._starts = np.concatenate([[0], np.cumsum([s[1] for s in self._shards],
                                                      dtype=np.int64)])
        self._bounds = self._starts.tolist()
        self._lo = lo
        self._hi = int(self._starts[-1]) if hi is None else hi
        self._proc = None  # this process's open files and cache; never pickled or inherited

    @property
    def files(self) -> list[str]:
        return [s[0] for s in self._shards]

    def __len__(self) -> int:
        return self._hi - self._lo

    def __getitem__(self, key) -> dict:
        # the per-sample path of loaders: kept short (a few us over the memory map itself)
        if type(key) is int and 0 <= key < self._hi - self._lo:
            g = key + self._lo
        else:
            index, scalar = row_index(key, len(self))
            if not scalar:
                return self._read(index)
            g = index.start + self._lo
        bounds = self._bounds
        s = 0 if len(bounds) == 2 else bisect.bisect_right(bounds, g) - 1
        local = g - bounds[s]
        proc = self._proc
        if proc is not None and proc["forks"] == _forks[0]:  # _open's checks, inlined
            got = proc["open"].get(s)
            if got is not None and (got[3] is None or _clock() - got[4][0] < CHECK_NS):
                return {k: get(local) for k, get in got[2].items()}
        return {k: get(local) for k, get in self._open(s, self._state(), False)[2].items()}

    def __iter__(self):
        for batch in self.batches(1024):
            n = len(next(iter(batch.values()))) if batch else 0
            for i in range(n):
                yield {k: v[i] for k, v in batch.items()}

    def batches(self, size: int, shuffle: bool = False, seed=None, drop_last: bool = False):
        """Batches of ``size`` rows (dicts of numpy arrays); with ``shuffle`` a permutation
        (each row once) drawn from ``seed``: the same seed, the same order."""
        import numpy as np

        if size < 1:
            raise OptionError(f"batch size must be at least 1, not {size}")
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else None
        for i in range(0, n, size):
            if drop_last and i + size > n:
                break
            yield self._read(order[i:i + size] if shuffle else slice(i, min(n, i + size)))

    def shard(self, rank: int, world: int, whole_files: bool = False) -> Dataset:
        """Rank ``rank``'s part of ``world``: a contiguous block of rows (sizes differ by at
        most one), or with ``whole_files`` every ``world``-th file starting at ``rank``."""
        if not (isinstance(rank, int) and isinstance(world, int) and 0 <= rank < world):
            raise OptionError(f"shard {rank} of {world}: need 0 <= rank < world")
        args = (self.columns, self.cache_bytes, self._format, self._trusted)
        if whole_files:
            if (self._lo, self._hi) != (0, int(self._starts[-1])):
                raise OptionError("whole_files sharding needs the whole dataset, not a part")
            return Dataset(self._shards[rank::world], *args)
        n = len(self)
        return Dataset(self._shards, *args, lo=self._lo + n * rank // world,
                       hi=self._lo + n * (rank + 1) // world)

    def close(self) -> None:
        """Release this process's files (they reopen on the next read)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc["pid"] == os.getpid():
            for bundle, _, _, held, _ in proc["open"].values():
                bundle.close()
                if held is not None:
                    held.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_proc"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Dataset({len(self)} rows, {len(self._shards)} file(s), columns={self.columns})"

    # --- reading -------------------------------------------------------------------------

    def _state(self) -> dict:
        proc = self._proc
        if proc is None or proc["forks"] != _forks[0]:
            # a forked child must not use the parent's handles: start afresh, leave them be
            proc = self._proc = {"pid": os.getpid(), "forks": _forks[0], "open": {},
                                 "cache": ByteLRU(self.cache_bytes)}
        return proc

    def _open(self, s: int, proc: dict, batch: bool = True) -> tuple:
        """(bundle, tensors, row readers, held file, [last check]) of shard ``s``, checked
        unchanged: before every batch read, and before a single-row read when the last
        check is CHECK_NS old (a check costs as much as reading a row from the map).

        A check is an ``fstat`` of a descriptor held open since the first read (cheaper
        than ``stat`` by path; a file unlinked or renamed over keeps its inode, which then
        has no links), then ``stat`` by path when anything differs."""
        got = proc["open"].get(s)
        if got is not None:
            held, last = got[3], got[4]
            if held is not None:
                now = _clock()
                if batch or now - last[0] >= CHECK_NS:
                    sig = self._shards[s][3]
                    st = os.fstat(held.fileno())
                    if st.st_nlink == 0 or st.st_mtime_ns != sig[3] or st.st_size != sig[2]:
                        _check(held.name, sig)
                        raise _changed(held.name)
                    last[0] = now
            return got
        path, _, entries, sig = self._shards[s]
        _check(path, sig)
        held = None
        if sig is not None:
            held = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
            st = os.fstat(held.fileno())
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != sig:
                held.close()
                raise _changed(path)
        bundle = _load(path, self._format, self._trusted)
        found = _columns(bundle, path)
        tensors = {c: found[e] for c, e in zip(self.columns, entries, strict=True)}
        readers = {c: t.row_reader(proc["cache"]) for c, t in tensors.items()}
        got = proc["open"][s] = (bundle, tensors, readers, held, [_clock()])
        return got

    def _tensors(self, s: int, proc: dict) -> dict:
        return self._open(s, proc)[1]

    def _read(self, index) -> dict:
        import numpy as np

        proc = self._state()
        starts, lo = self._starts, self._lo
        if isinstance(index, slice):
            a, b = index.start + lo, index.stop + lo
            first = min(int(np.searchsorted(starts, a, side="right")) - 1,
                        len(self._shards) - 1)  # a == the end: an empty part of the last file
            parts = []
            for s in range(max(first, 0), len(self._shards)):
                if starts[s] >= b and parts:
                    break
                parts.append((s, slice(max(a, starts[s]) - starts[s],
                                       max(min(b, starts[s + 1]), a) - starts[s]), None))
        else:
            g = index + lo
            which = np.searchsorted(starts, g, side="right") - 1
            hit = np.unique(which)
            if len(hit) <= 1:
                s = int(hit[0]) if len(hit) else 0
                parts = [(s, g - starts[s], None)]
            else:
                parts = [(int(s), g[which == s] - starts[s], which == s) for s in hit]
        cache = proc["cache"]
        pieces = [(self._tensors(s, proc), local, mask) for s, local, mask in parts]
        out = {}
        for name in self.columns:
            got = [(t[name].rows(local, cache), mask) for t, local, mask in pieces]
            if len(got) == 1:
                out[name] = got[0][0]
            elif isinstance(index, slice):
                out[name] = np.concatenate([g for g, _ in got])
            else:
                arr = np.empty((len(index),) + got[0][0].shape[1:], got[0][0].dtype)
                for rows, mask in got:
                    arr[mask] = rows
                out[name] = arr
        return out


# --- helpers ----------------------------------------------------------------------------

def _expand(paths) -> list[str]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = []
    for item in items:
        if not isinstance(item, str) or not storage.is_url(item):
            item = os.fspath(item)
        if storage.is_remote(item) and glob.has_magic(item) and not item.startswith("http"):
            found = storage.glob(item)
            if not found:
                raise SourceNotFoundError("no file matches this pattern", item)
            files.extend(found)
        elif "://" not in item and glob.has_magic(item):
            found = sorted(glob.glob(item))
            if not found:
                raise SourceNotFoundError("no file matches this pattern", item)
            files.extend(found)
        else:
            files.append(item)
    if not files:
        raise OptionError("a dataset needs at least one file")
    return files


def _load(path: str, format, trusted: bool):
    from .opening import load

    return load(path, format, trusted=trusted)


def _columns(bundle, path: str) -> dict:
    """Every tensor of ``bundle`` by name; each table's columns as tensors (``table/col``
    when the file holds more than one entry)."""
    from .columns import table_tensors
    from .model import Table

    out, bad = {}, []
    for name, entry in bundle.items():
        if isinstance(entry, Table):
            out.update(table_tensors(entry, name, path, prefix=len(bundle) > 1, bad=bad))
        else:
            out[name] = entry
    if bad:
        out.update({why: None for why in bad})  # named in errors only if asked for
    return out


def _pick(found: dict, wanted, path: str, first_names) -> dict:
    unusable = [k for k, v in found.items() if v is None]
    usable = {k: v for k, v in found.items() if v is not None}
    if wanted is None and first_names is not None and len(first_names) == len(usable) == 1:
        return usable  # one tensor per file (npy): matched by position
    names = wanted if wanted is not None else first_names
    if names is None:
        if unusable:
            raise UnsupportedError(f"{'; '.join(unusable)} cannot be a tensor; choose the "
                                   "columns to load with columns=", path)
        names = list(usable)
    missing = [n for n in names if n not in usable]
    if missing:
        raise FormatError(f"no column {', '.join(map(repr, missing))} here; the file has "
                          f"{', '.join(map(repr, usable)) or 'none'}", path)
    return {n: usable[n] for n in names}


def _rows(found: dict, path: str) -> int:
    if not found:
        raise FormatError("no columns to load", path)
    firsts = {n: (t.shape[0] if t.shape else None) for n, t in found.items()}
    if None in firsts.values() or len(set(firsts.values())) != 1:
        raise FormatError(f"columns do not share a first axis ({firsts}); choose the ones "
                          "that do with columns=", path)
    return next(iter(firsts.values()))


def _describe(spec: dict) -> str:
    return ", ".join(f"{n} {d.value}{list(s)}" for n, (d, s) in spec.items())


def _signature(path: str):
    if "://" in path:
        return None  # remote objects: their store says when they change
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check(path: str, sig) -> None:
    if sig is None:
        return
    try:
        now = _signature(path)
    except OSError as e:
        raise FormatError(f"file vanished under an open dataset: {e.strerror}", path) from None
    if now != sig:
        raise _changed(path)


def _changed(path: str) -> FormatError:
    return FormatError("file changed under an open dataset (size, mtime or inode "
                       "differ from when it was opened); make a new dataset", path)
