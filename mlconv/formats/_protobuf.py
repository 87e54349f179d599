"""Just enough of protobuf's wire format to find the fields of a message, without copying.

ONNX files are protobuf messages; reading them with the ``onnx`` package costs its import
(and ml_dtypes') and a copy of every tensor in memory. Here a message is scanned into its
fields: numbers for varint and fixed fields, ``(offset, length)`` spans into the buffer for
length-delimited ones, so a tensor's ``raw_data`` is found where it lies in the file. The
buffer is anything indexable by int and slice (bytes, mmap, a ranged fetcher).

Hostile input: varints stop at 10 bytes; every length is checked against the end of the
enclosing message; groups and unknown wire types are refused; nesting depth and the number
of fields of one message are capped, so time and memory stay bounded by the file size.
"""

from __future__ import annotations

from ..errors import FormatError

MAX_DEPTH = 32          # messages inside messages (ONNX's own nesting is 4 deep)
MAX_FIELDS = 500_000    # fields of one message: graphs hold tens of thousands of nodes
MASK64 = (1 << 64) - 1

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5


def varint(buf, pos: int, end: int, path=None, entry=None) -> tuple[int, int]:
    """(value, next position) of the varint at ``pos``; at most 10 bytes, inside ``end``."""
    value = shift = 0
    for _ in range(10):
        if pos >= end:
            raise FormatError("a protobuf field is cut off by the end of its message",
                              path, entry)
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & MASK64, pos
        shift += 7
    raise FormatError("a protobuf varint is longer than 10 bytes", path, entry)


class Message:
    """The fields of one message at ``buf[start:end]``: ``fields[number]`` is the list of
    its values in file order (an int, or an (offset, length) span for length-delimited)."""

    __slots__ = ("buf", "start", "end", "path", "entry", "depth", "fields")

    def __init__(self, buf, start: int, end: int, path=None, entry=None, depth: int = 0,
                 wanted=None):
        if depth > MAX_DEPTH:
            raise FormatError(f"protobuf messages nested more than {MAX_DEPTH} deep", path,
                              entry)
        if not 0 <= start <= end <= len(buf):
            raise FormatError("a protobuf message runs past the end of the file", path, entry)
        self.buf, self.start, self.end = buf, start, end
        self.path, self.entry, self.depth = path, entry, depth
        self.fields = self._scan(wanted)

    def _scan(self, wanted) -> dict[int, list]:
        """Every field, checked; only those in ``wanted`` (all if None) are kept."""
        buf, pos, end, path, entry = self.buf, self.start, self.end, self.path, self.entry
        out: dict[int, list] = {}
        count = 0
        while pos < end:
            count += 1
            if count > MAX_FIELDS:
                raise FormatError(f"a protobuf message holds more than {MAX_FIELDS} fields",
                                  path, entry)
            tag = buf[pos]  # one-byte tags and lengths are the rule: no call for them
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = varint(buf, pos, end, path, entry)
            number, wire = tag >> 3, tag & 7
            if number == 0 or number >= 1 << 29:
                raise FormatError(f"protobuf field number {number} is out of range", path,
                                  entry)
            if wire == BYTES:
                n = buf[pos] if pos < end else 0x80
                if n < 0x80:
                    pos += 1
                else:
                    n, pos = varint(buf, pos, end, path, entry)
                if n > end - pos:
                    raise FormatError(f"a {n}-byte protobuf field runs past the end of its "
                                      "message", path, entry)
                value = (pos, n)
                pos += n
            elif wire == VARINT:
                value, pos = varint(buf, pos, end, path, entry)
            elif wire in (FIXED32, FIXED64):
                width = 4 if wire == FIXED32 else 8
                if width > end - pos:
                    raise FormatError("a protobuf field is cut off by the end of its "
                                      "message", path, entry)
                value = int.from_bytes(buf[pos:pos + width], "little")
                pos += width
            else:
                kind = "groups (deprecated)" if wire in (3, 4) else f"wire type {wire}"
                raise FormatError(f"protobuf {kind} are not supported (field {number})",
                                  path, entry)
            if wanted is None or number in wanted:
                out.setdefault(number, []).append((wire, value))
        return out

    def has(self, number: int) -> bool:
        return number in self.fields

    def _last(self, number: int, wire: int):
        """The last value of a singular field (protobuf: the last one wins), or None."""
        for w, value in reversed(self.fields.get(number, ())):
            if w == wire:
                return value
        return None

    def int(self, number: int, default: int = 0, signed: bool = True) -> int:
        value = self._last(number, VARINT)
        if value is None:
            return default
        return value - (1 << 64) if signed and value >> 63 else value

    def span(self, number: int):
        """(offset, length) of the last length-delimited ``number``, or None."""
        return self._last(number, BYTES)

    def spans(self, number: int) -> list[tuple[int, int]]:
        return [v for w, v in self.fields.get(number, ()) if w == BYTES]

    def bytes(self, number: int) -> bytes:
        s = self.span(number)
        return b"" if s is None else bytes(self.buf[s[0]:s[0] + s[1]])

    def text(self, number: int, what: str) -> str:
        return decode(self.bytes(number), what, self.path, self.entry)

    def child(self, span, entry=None, wanted=None) -> Message:
        """The message held in the length-delimited field at ``span``."""
        return Message(self.buf, span[0], span[0] + span[1], self.path,
                       self.entry if entry is None else entry, self.depth + 1, wanted)

    def children(self, number: int, wanted=None) -> list[Message]:
        return [self.child(s, wanted=wanted) for s in self.spans(number)]

    def repeated(self, number: int, wire: int) -> list:
        """Values of a repeated scalar field, packed or not (a reader must take both):
        (wire type, value) pairs with packed runs left as their BYTES span."""
        return [(w, v) for w, v in self.fields.get(number, ()) if w in (wire, BYTES)]


def decode(raw: bytes, what: str, path=None, entry=None) -> str:
    """A protobuf ``string``: UTF-8, refused when it is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not valid UTF-8 text", path, entry) from None


def varints(raw, path=None, entry=None):
    """The unsigned 64-bit values of a packed run of varints, as a numpy uint64 array;
    decoded a piece at a time, so temporaries stay bounded whatever the run's length."""
    import numpy as np

    b = np.frombuffer(raw, np.uint8)
    if b.size and b[-1] >= 0x80:
        raise FormatError("a packed protobuf varint is cut off", path, entry)
    ends = np.flatnonzero(b < 0x80)
    out = np.empty(ends.size, np.uint64)
    step = 1 << 16
    for i in range(0, ends.size, step):
        e = ends[i:i + step]
        first = int(ends[i - 1]) + 1 if i else 0
        starts = np.concatenate(([first], e[:-1] + 1))
        lengths = e - starts + 1
        if lengths.max() > 10:
            raise FormatError("a protobuf varint is longer than 10 bytes", path, entry)
        piece = b[first:int(e[-1]) + 1]
        shift = (np.arange(piece.size) - np.repeat(starts - first, lengths)) * 7
        vals = (piece & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
        out[i:i + e.size] = np.add.reduceat(vals, starts - first)
    return out


def encode_varint(n: int) -> bytes:
    """``n`` as a protobuf varint (negative numbers as their 64-bit two's complement)."""
    n &= MASK64
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, value) -> bytes:
    """One field: an int as a varint, bytes or str as length-delimited (str in UTF-8)."""
    if isinstance(value, int):
        return encode_varint(number << 3 | VARINT) + encode_varint(value)
    if isinstance(value, str):
        value = value.encode("utf-8")
    return encode_varint(number << 3 | BYTES) + encode_varint(len(value)) + value
