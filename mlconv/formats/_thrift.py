"""Just enough of Thrift's compact protocol to list the top-level field ids of a struct.

Parquet's footer is a compact-protocol ``FileMetaData``. A file written with encrypted
columns and a plaintext footer carries field 8 (``encryption_algorithm``), and pyarrow
aborts the whole process on touching such a column's metadata without keys, so the
footer is looked at here first. Every length is checked against the buffer; depth is capped.
"""

from __future__ import annotations

from ..errors import FormatError

_MAX_DEPTH = 64
_FIXED = {1: 0, 2: 0, 3: 1, 7: 8}  # bool true/false (in the header), byte, double


class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise FormatError("footer ends inside a field")
        self.pos += 1
        return self.buf[self.pos - 1]

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 70:
                raise FormatError("footer holds an overlong number")

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise FormatError("footer field runs past its end")
        self.pos += n

    def value(self, typ: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise FormatError("footer nested too deep")
        if typ in _FIXED:
            self.skip(_FIXED[typ])
        elif typ in (4, 5, 6):
            self.varint()
        elif typ == 8:
            self.skip(self.varint())
        elif typ in (9, 10):
            head = self.byte()
            count = head >> 4 if head >> 4 != 15 else self.varint()
            for _ in range(count):
                self.value(head & 0x0F, depth + 1)
        elif typ == 11:
            count = self.varint()
            if count:
                kinds = self.byte()
                for _ in range(count):
                    self.value(kinds >> 4, depth + 1)
                    self.value(kinds & 0x0F, depth + 1)
        elif typ == 12:
            for _ in self.fields(depth + 1):
                pass
        else:
            raise FormatError(f"footer holds an unknown Thrift type {typ}")

    def fields(self, depth: int):
        """Yield each field id of the struct at the cursor, skipping its value."""
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return
            typ, delta = head & 0x0F, head >> 4
            if delta:
                field = last + delta
            else:
                raw = self.varint()
                field = (raw >> 1) ^ -(raw & 1)
            if typ not in (1, 2):
                self.value(typ, depth)
            yield field
            last = field


def top_level_fields(buf: bytes) -> set[int]:
    """Field ids present in the compact-protocol struct ``buf``."""
    return set(_Reader(buf).fields(0))
