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

from ..errors import UnsupportedError
from ..formats.base import Format
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


def _tensor_method(t: Tensor, fmt: Format, generic: bool, layout: str | None) -> tuple[str, str]:
    from ..formats.arrow_layouts import EntrySource
    from ..sources import ArraySource, CastSource, FileSource, StreamSource

    src = t.source
    notes = []
    if isinstance(src, CastSource):
        notes.append(f"cast {src.inner.dtype.value} -> {t.dtype.value}")
        src = src.inner
    if isinstance(src, FileSource) and not src.verbatim:
        notes.append("Fortran order -> C order" if src.fortran else "byte swap to little-endian")
    if isinstance(src, StreamSource):
        notes.append("inflate zip member")
    if t.itemsize is None or isinstance(src, (EntrySource, ArraySource)):
        return "in-memory", "; ".join(notes + ["whole entry held"])
    if fmt.id in ("parquet", "arrow") and layout == "entries":
        return "in-memory", "; ".join(notes + ["one row holds the whole tensor"])
    if not generic and fmt.caps.raw_payload and t.span is not None:
        return "zero-copy", "kernel copy (copy_file_range)"
    if generic and t.span is not None:
        notes.append("generic path: bytes through memory")
    return "streamed", "; ".join(notes) or "bounded chunks"


def steps_for(bundle: Bundle, fmt: Format, generic: bool = False,
              layout: str | None = None, compression: str | None = None) -> list[Step]:
    if fmt.id in ("parquet", "arrow") and bundle.values() and not any(
            isinstance(e, Table) for e in bundle.values()):
        from ..formats.arrow_layouts import choose

        try:
            layout = choose(bundle, layout)
        except UnsupportedError:
            pass  # the write itself reports an impossible layout
    steps = []
    for name, entry in bundle.items():
        if isinstance(entry, Table):
            steps.append(Step(name, "table", "streamed", None,
                              f"{entry.num_rows} rows in record batches"))
            continue
        method, note = _tensor_method(entry, fmt, generic, layout)
        if fmt.id == "hdf5" and compression not in (None, "none") and method == "zero-copy":
            method, note = "streamed", f"{compression} chunks"
        steps.append(Step(name, "tensor", method, entry.nbytes, note))
    return steps
