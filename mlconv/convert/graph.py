"""The conversion graph: formats are nodes; every reader -> writer pair is an edge.

An edge moves each entry one of three ways, cheapest first:

- ``zero-copy``: the tensor's bytes lie verbatim in the source file and the writer places
  payloads verbatim (npy, safetensors, HDF5 contiguous), so the kernel copies them file to
  file (``copy_file_range``, else ``sendfile``): they never enter this process;
- ``streamed``: bounded chunks through memory (casts, byte swaps, Fortran order, deflate,
  chunked HDF5, Parquet/Arrow batches, zip members);
- ``in-memory``: the whole entry is held at once (an entries-layout row, HDF5 compression
  from an in-memory array, variable-width text).

Every pair of formats has a direct edge through the interchange model, so the cheapest path
is always that one edge (a detour through a third format only adds a write and a read); what
the planner decides is how each entry travels on it, for the actual file, and what is lost on
the way. ``--path generic`` forces every payload through memory (the reference the fast path
must equal byte for byte).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..formats.base import Format, WriteOptions
from ..model import Bundle, Table, Tensor

COST = {"zero-copy": 1, "streamed": 2, "in-memory": 3}  # relative cost per byte moved


@dataclass
class Step:
    entry: str
    kind: str
    method: str
    nbytes: int | None
    note: str = ""

    def as_dict(self) -> dict:
        return {"entry": self.entry, "kind": self.kind, "method": self.method,
                "bytes": self.nbytes, "note": self.note}


@dataclass
class Plan:
    """How a conversion would run: one step per entry, and what it would lose."""

    src: str
    dst: str
    src_format: str
    dst_format: str
    path: str = "fast"
    steps: list[Step] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # left behind on purpose (an ONNX graph)
    allow_lossy: bool = False
    error: str | None = None  # what stops it (a refused loss, an impossible layout, ...)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes or 0 for s in self.steps)

    @property
    def cost(self) -> int:
        return sum((s.nbytes or 0) * COST[s.method] for s in self.steps)

    def as_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "src_format": self.src_format,
                "dst_format": self.dst_format, "path": self.path, "ok": self.ok,
                "allow_lossy": self.allow_lossy,
                "error": self.error, "bytes": self.nbytes, "cost": self.cost,
                "steps": [s.as_dict() for s in self.steps], "losses": list(self.losses),
                "notes": list(self.notes)}


def _general(t: Tensor, generic: bool, raw_payload: bool) -> tuple[str, str]:
    """How a tensor travels judged from its source: verbatim bytes go by kernel copy when
    the writer places payloads verbatim; held entries go whole; the rest in chunks."""
    from ..sources import CastSource, FileSource

    src = t.source
    notes = []
    if isinstance(src, CastSource):
        notes.append(f"cast {src.inner.dtype.value} -> {t.dtype.value}")
        src = src.inner
    if isinstance(src, FileSource) and not src.verbatim:
        notes.append("Fortran order -> C order" if src.fortran else "byte swap to little-endian")
    if src.how:
        notes.append(src.how)
    if t.itemsize is None or src.held:
        return "in-memory", "; ".join(notes + ["whole entry held"])
    if not generic and raw_payload and t.span is not None:
        return "zero-copy", "kernel copy (copy_file_range)"
    if generic and t.span is not None:
        notes.append("generic path: bytes through memory")
    return "streamed", "; ".join(notes) or "bounded chunks"


def steps_for(bundle: Bundle, fmt: Format, options: WriteOptions) -> list[Step]:
    """One step per entry of a fitted bundle: how ``fmt``'s writer will move it."""
    steps = []
    for name, entry in bundle.items():
        if isinstance(entry, Table):
            steps.append(Step(name, "table", "streamed", None,
                              f"{entry.num_rows} rows in record batches"))
            continue
        general = _general(entry, not options.kernel_copy, fmt.caps.raw_payload)
        method, note = fmt.travel(bundle, name, entry, options, general)
        steps.append(Step(name, "tensor", method, entry.nbytes, note))
    return steps
