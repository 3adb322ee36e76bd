"""Small helpers shared by the payload codecs."""

from __future__ import annotations

import enum
from typing import TypeVar

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.errors import EncodingError, MalformedMessage

E = TypeVar("E", bound=enum.IntEnum)


def known(enum_type: type[E], value: int) -> E | int:
    """The enum member for ``value`` if we know it, else the plain int (IANA numbers we do not
    name must still decode: RFC 7296 section 3.3.6 wants unknown transforms skipped, not fatal)."""
    if value in enum_type._value2member_map_:
        return enum_type(value)
    return value


def require_eof(buf: Buffer, what: str) -> None:
    if not buf.eof():
        raise MalformedMessage(f"{buf.remaining} unexpected bytes after {what}")


def check_bound(count: int, bound: int, what: str) -> None:
    if count > bound:
        raise MalformedMessage(f"{count} {what} exceed the bound of {bound}")


def check_encodable(count: int, bound: int, what: str) -> None:
    if count > bound:
        raise EncodingError(f"{count} {what} do not fit (at most {bound})")


def pull_reserved(buf: Buffer, length: int) -> None:
    """RESERVED fields: sent as zero, ignored on receipt (RFC 7296 section 3.2)."""
    buf.pull_bytes(length)


def push_reserved(buf: Buffer, length: int) -> None:
    buf.push_bytes(bytes(length))
