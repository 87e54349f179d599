"""The conversion graph: nodes are (format, representation) — Parquet rows, Parquet
entries, an HDF5 compound table... — and every reader -> writer pair of compatible
representations is an edge carrying a cost and the losses on the way.

An edge moves each entry one of three ways, cheapest first:

- ``zero-copy``: the tensor's bytes lie verbatim in the source file and the writer places
  payloads verbatim (npy, safetensors, HDF5 contiguous), so they go file to file, never
  decoded: extents shared by the filesystem where it can, else through one 1 MiB buffer;
- ``streamed``: bounded chunks through memory (casts, byte swaps, Fortran order, deflate,
  chunked HDF5, Parquet/Arrow batches, zip members);
- ``in-memory``: the whole entry is held at once (an entries-layout row, HDF5 compression
  from an in-memory array, variable-width text).

Every pair of formats has a direct edge through the interchange model, so the cheapest path
is the direct edge (a detour adds a write and a read, and can only add losses): ``route``
searches the graph for the fewest losses, then the lowest cost, so ``plan`` can show why a
route was taken (``mlconv plan --graph`` draws it). Per file, the planner then decides how each
entry travels on it and what is lost on the way. ``--path generic`` forces every payload
through memory (the reference the fast path must equal byte for byte).
"""

from __future__ import annotations

import heapq
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
    route: list = field(default_factory=list)  # the graph's edges taken (Edge)
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
                "notes": list(self.notes), "route": [e.as_dict() for e in self.route]}


def _general(t: Tensor, generic: bool, raw_payload: bool) -> tuple[str, str]:
    """How a tensor travels judged from its source: verbatim bytes go file to file when
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
        return "zero-copy", "file to file, not decoded"
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


# --- the format graph -----------------------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    """Reading one representation and writing another: how payloads move, what is lost."""

    src: tuple[str, str]  # (format id, representation)
    dst: tuple[str, str]
    method: str
    losses: tuple[str, ...] = ()

    @property
    def cost(self) -> int:
        return COST[self.method] + 1  # + 1: every hop writes and reads a file

    def as_dict(self) -> dict:
        return {"from": list(self.src), "to": list(self.dst), "method": self.method,
                "cost": self.cost, "losses": list(self.losses)}


def _edge(a: Format, ra: tuple, b: Format, rb: tuple) -> Edge | None:
    """The edge from representation ``ra`` of ``a`` to ``rb`` of ``b``, if one exists."""
    ka, kb = ra[1], rb[1]
    losses = []
    if ka == "table" and kb != "table":
        if kb != "tensors":
            return None
        losses.append(f"{b.id} holds no tables: numeric columns become tensors, the rest "
                      "is lost")
    elif ka == "blocks" and kb != "blocks":
        if kb != "tensors":
            return None
        losses.append("quantized blocks: dequantized only with --cast TYPE=float32")
    elif ka != kb:
        return None
    missing = sorted(d.value for d in a.caps.dtypes - b.caps.dtypes)
    if missing and ka == kb != "table":
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        losses.append(f"dtypes {shown} (--cast or --allow-lossy)")
    for cap, what in (("metadata", "file metadata"), ("attrs", "attributes"),
                      ("nulls", "nulls")):
        if getattr(a.caps, cap) and not getattr(b.caps, cap):
            losses.append(what)
    if "whole" in rb[2:] or kb == "table" or ka == "table":
        method = "in-memory" if "whole" in rb[2:] else "streamed"
    else:
        method = "zero-copy" if a.caps.zero_copy and b.caps.raw_payload else "streamed"
    return Edge((a.id, ra[0]), (b.id, rb[0]), method, tuple(losses))


def edges(formats: list[Format]) -> list[Edge]:
    """Every edge among ``formats`` (readers to writers)."""
    out = []
    for a in formats:
        for b in formats:
            if not (a.can_read and b.can_write):
                continue
            for ra in a.representations:
                for rb in b.representations:
                    edge = _edge(a, ra, b, rb)
                    if edge is not None:
                        out.append(edge)
    return out


def route(graph: list[Edge], start: tuple[str, str], target: str,
          end: str | None = None) -> list[Edge]:
    """The path from node ``start`` to a node of format ``target`` (representation ``end``
    when given): fewest losses, then lowest cost (Dijkstra on that pair); at least one edge,
    so a format to itself is a route too. Empty when the target cannot be reached."""
    def arrived(node) -> bool:
        return node[0] == target and (end is None or node[1] == end)

    best: dict = {}
    queue: list = []
    for e in graph:
        if e.src == start:
            key = (len(e.losses), e.cost)
            if key < best.get(e.dst, (1 << 30, 0)):
                best[e.dst] = key
                heapq.heappush(queue, (*key, e.dst, [e]))
    while queue:
        lost, cost, node, path = heapq.heappop(queue)
        if arrived(node):
            return path
        if (lost, cost) > best.get(node, (lost, cost)):
            continue
        for e in graph:
            if e.src != node:
                continue
            key = (lost + len(e.losses), cost + e.cost)
            if key < best.get(e.dst, (1 << 30, 0)):
                best[e.dst] = key
                heapq.heappush(queue, (*key, e.dst, path + [e]))
    return []


def _kind(entry) -> str:
    if isinstance(entry, Table):
        return "table"
    return "blocks" if getattr(entry.source, "codec", None) is not None else "tensors"


def start_node(fmt: Format, bundle: Bundle | None) -> tuple[str, str]:
    """The node a file starts from: its table (or quantized blocks) representation when it
    holds a table (or blocks), else its tensors."""
    kinds = {_kind(e) for e in (bundle or {}).values()}
    for wanted in ("table", "blocks", "tensors"):
        if wanted not in kinds:
            continue
        for name, kind, *_ in fmt.representations:
            if kind == wanted:
                return fmt.id, name
    return fmt.id, fmt.representations[0][0]


def _q(text: str) -> str:
    """A DOT string; a newline in ``text`` becomes DOT's centred line break."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def plan_dot(plan: Plan, graph: list[Edge]) -> str:
    """A plan's choice drawn: every edge out of its starting node, the route taken bold."""
    if not plan.route:
        return to_dot([])
    start = plan.route[0].src
    return to_dot([e for e in graph if e.src == start or e in plan.route], plan.route)


def to_dot(graph: list[Edge], chosen=()) -> str:
    """The graph in Graphviz DOT: each edge labelled with its method, cost and losses; the
    edges in ``chosen`` drawn bold red, lossy ones dashed."""
    chosen = set(chosen)
    lines = ["digraph mlconv {", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];",
             "  edge [fontname=Helvetica, fontsize=9];"]
    for fid, rep in dict.fromkeys([e.src for e in graph] + [e.dst for e in graph]):
        lines.append(f"  {_q(fid + ':' + rep)} [label={_q(fid + chr(10) + rep)}];")
    for e in graph:
        label = "\n- ".join([f"{e.method} ({e.cost})", *e.losses])
        style = ", color=red, penwidth=3" if e in chosen else \
            (", style=dashed" if e.losses else "")
        lines.append(f"  {_q(':'.join(e.src))} -> {_q(':'.join(e.dst))} "
                     f"[label={_q(label)}{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
