"""IKE messages: the fixed header (RFC 7296 section 3.1) and the payload chain.

``decode_message``/``encode_message`` handle a message as it stands in the clear: SK and SKF
appear as ``Encrypted``/``EncryptedFragment`` with raw bodies. ``trellis.agent.ike.encrypted``
and ``trellis.agent.ike.fragments`` protect and unprotect those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import (
    IKE_HEADER_LENGTH,
    IKE_MAJOR_VERSION,
    IKE_MINOR_VERSION,
    ExchangeType,
    HeaderFlag,
)
from trellis.agent.ike.errors import EncodingError, InvalidMajorVersion, MalformedMessage
from trellis.agent.ike.payloads import Payload, pull_payloads, push_payloads
from trellis.agent.ike.payloads.common import known
from trellis.agent.ike.payloads.limits import MAX_MESSAGE_BYTES

IKE_SPI_LENGTH = 8

PayloadT = TypeVar("PayloadT")


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeHeader:
    """The fixed header without the fields the encoder derives (Next Payload, Version, Length).

    ``initiator`` is the I flag (sent by the original initiator of the IKE SA), ``response`` the
    R flag. Unknown exchange types decode as plain ints.
    """

    spi_i: bytes
    spi_r: bytes = bytes(IKE_SPI_LENGTH)
    exchange: ExchangeType | int
    initiator: bool
    response: bool
    message_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    header: IkeHeader
    payloads: tuple[Payload, ...] = ()

    def find(self, kind: type[PayloadT]) -> PayloadT | None:
        """The first payload of class ``kind``, or None."""
        for payload in self.payloads:
            if isinstance(payload, kind):
                return payload
        return None

    def find_all(self, kind: type[PayloadT]) -> tuple[PayloadT, ...]:
        return tuple(payload for payload in self.payloads if isinstance(payload, kind))


def pull_header(buf: Buffer) -> tuple[IkeHeader, int, int]:
    """The fixed header: returns it with the first payload type and the Length field."""
    spi_i = buf.pull_bytes(IKE_SPI_LENGTH)
    spi_r = buf.pull_bytes(IKE_SPI_LENGTH)
    first_payload = buf.pull_uint8()
    version = buf.pull_uint8()
    exchange = known(ExchangeType, buf.pull_uint8())
    flags = buf.pull_uint8()
    message_id = buf.pull_uint32()
    length = buf.pull_uint32()
    # RFC 7296 section 2.5: a higher minor version is accepted, a different major one is not.
    if version >> 4 != IKE_MAJOR_VERSION:
        raise InvalidMajorVersion(version >> 4)
    header = IkeHeader(
        spi_i=spi_i,
        spi_r=spi_r,
        exchange=exchange,
        initiator=bool(flags & HeaderFlag.INITIATOR),
        response=bool(flags & HeaderFlag.RESPONSE),
        message_id=message_id,
    )
    return header, first_payload, length


def push_header(buf: Buffer, header: IkeHeader, first_payload: int, length: int) -> None:
    if len(header.spi_i) != IKE_SPI_LENGTH or len(header.spi_r) != IKE_SPI_LENGTH:
        raise EncodingError("IKE SPIs are 8 bytes")
    flags = (HeaderFlag.INITIATOR if header.initiator else 0) | (
        HeaderFlag.RESPONSE if header.response else 0
    )
    buf.push_bytes(header.spi_i)
    buf.push_bytes(header.spi_r)
    buf.push_uint8(first_payload)
    buf.push_uint8(IKE_MAJOR_VERSION << 4 | IKE_MINOR_VERSION)
    buf.push_uint8(header.exchange)
    buf.push_uint8(flags)
    buf.push_uint32(header.message_id)
    buf.push_uint32(length)


def open_message(data: bytes) -> tuple[IkeHeader, int, Buffer]:
    """Check a datagram's size and header; return the header, the first payload type and a
    buffer positioned at the first payload."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    buf = Buffer(data)
    header, first_payload, length = pull_header(buf)
    if length != len(data):
        raise MalformedMessage(f"header says {length} bytes, the datagram has {len(data)}")
    return header, first_payload, buf


def decode_header(data: bytes) -> IkeHeader:
    """Only the header, to find the IKE SA and check the message ID before decoding the rest."""
    header, _, _ = open_message(data)
    return header


def decode_message(data: bytes) -> Message:
    header, first_payload, buf = open_message(data)
    return Message(header=header, payloads=pull_payloads(buf, first_payload))


def encode_message(message: Message) -> bytes:
    chain = Buffer()
    first_payload = push_payloads(chain, message.payloads)
    length = IKE_HEADER_LENGTH + len(chain)
    check_message_length(length)
    buf = Buffer()
    push_header(buf, message.header, first_payload, length)
    buf.push_bytes(chain.data())
    return buf.data()


def check_message_length(length: int) -> None:
    """Refuse to build a message that could not travel in one UDP datagram."""
    if length > MAX_MESSAGE_BYTES:
        raise EncodingError(f"message of {length} bytes exceeds {MAX_MESSAGE_BYTES}: fragment it")
