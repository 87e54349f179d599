"""Plain, aligned text for people (the CLI's --json prints the same data for machines)."""

from __future__ import annotations

import itertools


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def table(rows: list[list[str]], header: list[str]) -> str:
    return "\n".join(table_lines(lambda: rows, header))


def table_lines(rows, header: list[str]):
    """The lines of an aligned table; ``rows()`` gives an iterable of rows and is called
    twice (widths, then lines), so a table of 10^6 rows need not be held at once."""
    widths = [len(str(h)) for h in header]
    for r in rows():  # one pass of C-level max per row: tables can have 10^6 rows
        if len(r) != len(header):
            raise ValueError("every row needs one cell per column")
        widths = list(map(max, widths, map(len, map(str, r))))
    line = "  ".join(f"{{:<{w}}}" for w in widths).format
    yield line(*map(str, header)).rstrip()
    for r in rows():
        yield line(*map(str, r)).rstrip()


def manifest_text(m: dict) -> str:
    return "".join(manifest_pieces(m))


def manifest_pieces(m: dict):
    """``manifest_text`` in pieces of up to 10,000 lines (a million entries print ~50 MB)."""
    yield table([["path", m["path"]], ["format", m["format"]],
                 ["size", human_bytes(m["size"])],
                 ["entries", str(len(m["entries"]))]], ["", ""]).split("\n", 1)[1]
    if m["metadata"]:
        yield "\n\n" + table([[k, _one_line(v)] for k, v in m["metadata"].items()],
                              ["metadata", "value"])

    def rows():
        for e in m["entries"]:
            if e["kind"] == "table":
                yield [e["name"], "table", f"{len(e['columns'])} columns",
                       f"{e['rows']} rows", "-"]
                yield from ([f"  .{c['name']}", "column", c["type"], "", ""]
                            for c in e["columns"])
            else:
                yield [e["name"], "tensor", e["dtype"], str(e["shape"]),
                       human_bytes(e["nbytes"])]

    if m["entries"]:
        lines = table_lines(rows, ["name", "kind", "dtype", "shape", "size"])
        yield "\n"
        while True:
            batch = list(itertools.islice(lines, 10_000))
            if not batch:
                break
            yield "\n" + "\n".join(batch)
    attrs = [[g, k, _one_line(_text(v))] for g, a in m.get("groups", {}).items()
             for k, v in a.items() if not _bookkeeping(k)]
    attrs += [[e["name"], k, _one_line(_text(v))] for e in m["entries"]
              for k, v in (e.get("attrs") or {}).items() if not _bookkeeping(k)]
    if attrs:
        yield "\n\n" + table(attrs, ["attributes of", "name", "value"])
    if m.get("skipped"):
        yield "\n\n" + table([[s["name"], _one_line(s["reason"], 100)]
                               for s in m["skipped"]], ["skipped", "why"])
    for note in m.get("notes", []):
        yield f"\nnote: {_one_line(note, 200)}"


# PyTables' own bookkeeping on every node: format details, not the user's attributes
_PYTABLES = {"CLASS", "VERSION", "TITLE", "PYTABLES_FORMAT_VERSION", "FILTERS", "NROWS",
             "EXTDIM", "AUTO_INDEX", "FLAVOR"}


BIG = 1000  # entries above which --json puts each entry on one line


def manifest_json(m: dict):
    """``json.dumps(m, indent=2)`` in pieces; with more than BIG entries each entry is one
    compact line (the same JSON content: the indenting encoder is pure Python, ~40 us an
    entry, where the C encoder of one entry is ~3 us)."""
    import json

    if len(m["entries"]) <= BIG:
        yield json.dumps(m, indent=2, ensure_ascii=False)
        return
    yield "{"
    for i, (key, value) in enumerate(m.items()):
        yield ("," if i else "") + "\n  " + json.dumps(key, ensure_ascii=False) + ": "
        if key != "entries":  # the encoder escapes newlines in strings: indenting is safe
            yield json.dumps(value, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            continue
        yield "["
        dumps = json.JSONEncoder(ensure_ascii=False).encode
        for start in range(0, len(value), 10_000):
            yield ("," if start else "") + ",".join(
                ["\n    " + dumps(e) for e in value[start:start + 10_000]])
        yield "\n  ]"
    yield "\n}"


def _bookkeeping(key: str) -> bool:
    return key in _PYTABLES or (key.startswith("FIELD_") and key.endswith(("_NAME", "_FILL")))


def _text(value) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def formats_text(rows: list[dict]) -> str:
    body = []
    for f in rows:
        caps = f["capabilities"]
        mode = ("r" if f["read"] else "-") + ("w" if f["write"] else "-")
        kinds = "+".join(k for k in ("tensors", "tables") if caps[k])
        body.append([f["id"], mode, " ".join(f["extensions"]), kinds,
                     "yes" if caps["metadata"] else "no",
                     "yes" if caps["zero_copy"] else "no", f["description"]])
    return table(body, ["format", "rw", "extensions", "holds", "metadata", "zero-copy",
                        "description"])


def report_line(r) -> str:
    from ..errors import one_line

    return one_line(f"wrote {r.dst} ({r.dst_format}, {r.entries} "
                    f"{'entry' if r.entries == 1 else 'entries'}, "
                    f"{human_bytes(r.bytes_written)}) in {r.seconds:.2f} s")


def _one_line(v: str, limit: int = 80) -> str:
    v = v.replace("\n", "\\n")
    return v if len(v) <= limit else v[:limit - 3] + "..."


def plan_text(plan: dict) -> str:
    head = (f"plan: {plan['src']} ({plan['src_format']}) -> {plan['dst']} "
            f"({plan['dst_format']}), {plan['path']} path, {human_bytes(plan['bytes'])} "
            "of payload")
    rows = [[s["entry"], s["kind"], s["method"], human_bytes(s["bytes"]), s["note"]]
            for s in plan["steps"]]
    lines = [head]
    for edge in plan.get("route", []):
        lines.append(f"route: {':'.join(edge['from'])} -> {':'.join(edge['to'])} "
                     f"({edge['method']}, cost {edge['cost']}: the fewest losses, then the "
                     "cheapest; --graph draws the choice)")
    if rows:
        lines += ["", table(rows, ["entry", "kind", "method", "bytes", "note"])]
    if plan["losses"] or plan.get("notes"):
        lines.append("")
        lines += [f"loss: {loss}" for loss in plan["losses"]]
        lines += [f"note: {note}" for note in plan.get("notes", [])]
    lines.append("")
    if plan["error"]:
        lines.append(f"stops: {plan['error']}")
    elif plan["losses"] and plan.get("allow_lossy"):
        lines.append("ok: the losses above are accepted (--allow-lossy)")
    elif plan["losses"]:
        lines.append("ok, but a file holding the above would need --allow-lossy")
    else:
        lines.append("ok: nothing is lost")
    return "\n".join(lines)
