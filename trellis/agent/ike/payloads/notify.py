"""Notify and Delete payloads (RFC 7296 sections 3.10 and 3.11)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import NotifyType, PayloadType, ProtocolId
from trellis.agent.ike.errors import EncodingError, MalformedMessage
from trellis.agent.ike.payloads.common import check_bound, known, require_eof
from trellis.agent.ike.payloads.limits import MAX_DELETE_SPIS, MAX_SPI_BYTES

NO_PROTOCOL = 0  # Notify "Protocol ID" when the notification concerns no particular SA


@dataclass(frozen=True, slots=True, kw_only=True)
class Notify:
    payload_type: ClassVar[PayloadType] = PayloadType.NOTIFY
    notify_type: NotifyType | int
    protocol_id: ProtocolId | int = NO_PROTOCOL
    spi: bytes = b""
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete:
    """Delete (RFC 7296 section 3.11). Deleting the IKE SA: protocol IKE and no SPIs; deleting
    CHILD SAs: protocol ESP/AH and their 4-byte inbound SPIs."""

    payload_type: ClassVar[PayloadType] = PayloadType.DELETE
    protocol_id: ProtocolId | int
    spis: tuple[bytes, ...] = ()


def pull_notify(buf: Buffer) -> Notify:
    protocol_id = known(ProtocolId, buf.pull_uint8())
    spi_size = buf.pull_uint8()
    notify_type = known(NotifyType, buf.pull_uint16())
    check_bound(spi_size, MAX_SPI_BYTES, "SPI bytes")
    spi = buf.pull_bytes(spi_size)
    return Notify(protocol_id=protocol_id, notify_type=notify_type, spi=spi, data=buf.pull_rest())


def push_notify(buf: Buffer, payload: Notify) -> None:
    buf.push_uint8(payload.protocol_id)
    buf.push_uint8(len(payload.spi))
    buf.push_uint16(payload.notify_type)
    buf.push_bytes(payload.spi)
    buf.push_bytes(payload.data)


def pull_delete(buf: Buffer) -> Delete:
    protocol_id = known(ProtocolId, buf.pull_uint8())
    spi_size = buf.pull_uint8()
    spi_count = buf.pull_uint16()
    check_bound(spi_count, MAX_DELETE_SPIS, "SPIs to delete")
    if spi_size * spi_count != buf.remaining:
        raise MalformedMessage(f"Delete of {spi_count} SPIs of {spi_size} bytes in {buf.remaining} bytes")
    spis = tuple(buf.pull_bytes(spi_size) for _ in range(spi_count))
    require_eof(buf, "the SPIs of a Delete")
    return Delete(protocol_id=protocol_id, spis=spis)


def push_delete(buf: Buffer, payload: Delete) -> None:
    spi_size = len(payload.spis[0]) if payload.spis else 0
    if any(len(spi) != spi_size for spi in payload.spis):
        raise EncodingError("all SPIs of one Delete payload have the same size")
    buf.push_uint8(payload.protocol_id)
    buf.push_uint8(spi_size)
    buf.push_uint16(len(payload.spis))
    for spi in payload.spis:
        buf.push_bytes(spi)
