"""The one byte buffer every IKE codec function reads from and writes to.

A ``Buffer`` built over bytes is read with ``pull_*`` from its cursor; reading past its end raises
``MalformedMessage`` (the bytes came from the peer). A ``Buffer()`` built empty is written with
``push_*``; a value that does not fit its field raises ``EncodingError`` (our own mistake).
``struct`` is used here and in the codec modules only.
"""

from __future__ import annotations

import struct

from trellis.agent.ike.errors import EncodingError, MalformedMessage

_UINT8 = struct.Struct("!B")
_UINT16 = struct.Struct("!H")
_UINT32 = struct.Struct("!I")
_UINT64 = struct.Struct("!Q")


class Buffer:
    """Bytes with a read cursor, or a growing bytearray to write into."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes = b"") -> None:
        self._data = bytearray(data)
        self._pos = 0
        self._end = len(self._data)

    # --- reading -------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def eof(self) -> bool:
        return self._pos >= self._end

    def _take(self, length: int) -> int:
        if length < 0 or self._end - self._pos < length:
            raise MalformedMessage(
                f"truncated: wanted {length} bytes at offset {self._pos}, {self._end - self._pos} left"
            )
        start = self._pos
        self._pos += length
        return start

    def pull_bytes(self, length: int) -> bytes:
        start = self._take(length)
        return bytes(self._data[start : start + length])

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self.remaining)

    def pull_buffer(self, length: int) -> Buffer:
        """A new buffer over the next ``length`` bytes: a substructure that cannot read past its
        own length field."""
        return Buffer(self.pull_bytes(length))

    def pull_uint8(self) -> int:
        return int(self._data[self._take(1)])

    def pull_uint16(self) -> int:
        return int(_UINT16.unpack_from(self._data, self._take(2))[0])

    def pull_uint32(self) -> int:
        return int(_UINT32.unpack_from(self._data, self._take(4))[0])

    def pull_uint64(self) -> int:
        return int(_UINT64.unpack_from(self._data, self._take(8))[0])

    # --- writing -------------------------------------------------------------------------------

    def data(self) -> bytes:
        """Everything written (or given) so far."""
        return bytes(self._data[: self._end])

    def __len__(self) -> int:
        return self._end

    def push_bytes(self, value: bytes) -> None:
        self._data[self._end : self._end] = value
        self._end += len(value)

    def _push(self, packer: struct.Struct, value: int, bits: int) -> None:
        if not 0 <= value < (1 << bits):
            raise EncodingError(f"{value} does not fit in {bits} bits")
        self.push_bytes(packer.pack(value))

    def push_uint8(self, value: int) -> None:
        self._push(_UINT8, value, 8)

    def push_uint16(self, value: int) -> None:
        self._push(_UINT16, value, 16)

    def push_uint32(self, value: int) -> None:
        self._push(_UINT32, value, 32)

    def push_uint64(self, value: int) -> None:
        self._push(_UINT64, value, 64)

    def set_uint16(self, offset: int, value: int) -> None:
        """Overwrite an already written 16-bit field (a length known only after its body)."""
        if not 0 <= value <= 0xFFFF:
            raise EncodingError(f"{value} does not fit in 16 bits")
        if not 0 <= offset <= self._end - 2:
            raise EncodingError(f"offset {offset} is outside the written data")
        _UINT16.pack_into(self._data, offset, value)

    def set_uint32(self, offset: int, value: int) -> None:
        if not 0 <= value <= 0xFFFFFFFF:
            raise EncodingError(f"{value} does not fit in 32 bits")
        if not 0 <= offset <= self._end - 4:
            raise EncodingError(f"offset {offset} is outside the written data")
        _UINT32.pack_into(self._data, offset, value)
