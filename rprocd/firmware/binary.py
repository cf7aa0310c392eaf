"""Bounds-checked reads from an image held in memory.

Every parser in this package reads the image through a `Blob`, so a read past
the end of the file is a programming error that raises `ReadPastEnd` instead
of silently returning fewer bytes (Python slices truncate, the kernel reads
garbage). Parsers check bounds themselves and turn them into findings; this
is the safety net that proves they did.
"""

from __future__ import annotations

import struct


class ReadPastEnd(Exception):
    """A parser asked for bytes outside the image (a bug, never the input's fault)."""


_U16 = {"<": struct.Struct("<H"), ">": struct.Struct(">H")}
_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_U64 = {"<": struct.Struct("<Q"), ">": struct.Struct(">Q")}


class Blob:
    """An immutable byte buffer with checked, zero-copy accessors."""

    __slots__ = ("_view", "size")

    def __init__(self, data: bytes | bytearray | memoryview):
        self._view = memoryview(data).cast("B")
        self.size = len(self._view)

    def fits(self, offset: int, length: int) -> bool:
        """True if [offset, offset + length) lies inside the image."""
        return 0 <= offset and 0 <= length and offset + length <= self.size

    def _check(self, offset: int, length: int) -> None:
        if not self.fits(offset, length):
            raise ReadPastEnd(f"read of {length} bytes at {offset} in a {self.size}-byte image")

    def view(self, offset: int, length: int) -> memoryview:
        """The bytes [offset, offset + length), without copying."""
        self._check(offset, length)
        return self._view[offset:offset + length]

    def sub(self, offset: int, length: int) -> Blob:
        """A Blob over [offset, offset + length) (an embedded image)."""
        return Blob(self.view(offset, length))

    def unpack(self, fmt: struct.Struct, offset: int) -> tuple:
        self._check(offset, fmt.size)
        return fmt.unpack_from(self._view, offset)

    def u8(self, offset: int) -> int:
        self._check(offset, 1)
        return self._view[offset]

    def u16(self, offset: int, order: str = "<") -> int:
        return self.unpack(_U16[order], offset)[0]

    def u32(self, offset: int, order: str = "<") -> int:
        return self.unpack(_U32[order], offset)[0]

    def u64(self, offset: int, order: str = "<") -> int:
        return self.unpack(_U64[order], offset)[0]

    def cstring(self, offset: int, limit: int) -> str | None:
        """The NUL-terminated string at offset (at most `limit` bytes, or up
        to the end of the image); None if offset is outside the image."""
        if not 0 <= offset < self.size:
            return None
        raw = bytes(self._view[offset:min(self.size, offset + limit)])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
