"""Security Association payload (RFC 7296 section 3.3): proposals of transforms.

Unknown protocol ids, transform types, transform ids and attributes all decode (as plain ints, and
raw attributes), because section 3.3.6 wants a responder to treat such a proposal or transform as
unacceptable and go on with the others, not to reject the whole message. ``Transform.understood``
and ``Proposal.understood`` say whether that applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import (
    DhId,
    EncrId,
    EsnId,
    IntegId,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttributeType,
    TransformType,
)
from trellis.agent.ike.errors import EncodingError, MalformedMessage
from trellis.agent.ike.payloads.common import (
    check_bound,
    check_encodable,
    known,
    pull_reserved,
    push_reserved,
    require_eof,
)
from trellis.agent.ike.payloads.limits import (
    MAX_ATTRIBUTES_PER_TRANSFORM,
    MAX_PROPOSALS,
    MAX_SPI_BYTES,
    MAX_TRANSFORMS_PER_PROPOSAL,
)

# "Last Substruc" values (RFC 7296 sections 3.3.1 and 3.3.2).
_LAST = 0
_MORE_PROPOSALS = 2
_MORE_TRANSFORMS = 3
_PROPOSAL_HEADER_LENGTH = 8
_TRANSFORM_HEADER_LENGTH = 8
_ATTRIBUTE_FORMAT_TV = 0x8000  # AF bit: 2-byte value in place of the length (section 3.3.5)

_TRANSFORM_ID_ENUMS = {
    TransformType.ENCR: EncrId,
    TransformType.PRF: PrfId,
    TransformType.INTEG: IntegId,
    TransformType.DH: DhId,
    TransformType.ESN: EsnId,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformAttribute:
    """An attribute we do not interpret, kept so the transform can be judged (and re-encoded).

    ``tv`` is the AF bit: a TV attribute has a 2-byte ``value``, a TLV one any length.
    """

    attribute_type: int
    value: bytes
    tv: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Transform:
    type: TransformType | int
    id: int  # an EncrId/PrfId/IntegId/DhId/EsnId member when known, else the plain number
    key_length: int | None = None  # attribute 14 (TV), in bits
    other_attributes: tuple[TransformAttribute, ...] = ()

    @property
    def understood(self) -> bool:
        """False if RFC 7296 section 3.3.6 makes this transform unacceptable to us: an unknown
        transform type or an attribute we do not understand. (Whether the id is acceptable is
        policy, not syntax.)"""
        return isinstance(self.type, TransformType) and not self.other_attributes


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    number: int
    protocol: ProtocolId | int
    spi: bytes = b""
    transforms: tuple[Transform, ...]

    @property
    def understood(self) -> bool:
        """False if the proposal must be skipped (unknown protocol or transform type)."""
        return isinstance(self.protocol, ProtocolId) and all(
            isinstance(t.type, TransformType) for t in self.transforms
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityAssociation:
    payload_type: ClassVar[PayloadType] = PayloadType.SA
    proposals: tuple[Proposal, ...]


def pull_transform(buf: Buffer) -> Transform:
    """A transform after its 4-byte substructure header, ``buf`` bounded to its length."""
    transform_type = known(TransformType, buf.pull_uint8())
    pull_reserved(buf, 1)
    raw_id = buf.pull_uint16()
    id_enum = _TRANSFORM_ID_ENUMS.get(transform_type) if isinstance(transform_type, TransformType) else None
    transform_id: int = known(id_enum, raw_id) if id_enum is not None else raw_id
    key_length: int | None = None
    others: list[TransformAttribute] = []
    while not buf.eof():
        check_bound(len(others) + (key_length is not None) + 1, MAX_ATTRIBUTES_PER_TRANSFORM, "attributes")
        type_field = buf.pull_uint16()
        attribute_type = type_field & ~_ATTRIBUTE_FORMAT_TV
        tv = bool(type_field & _ATTRIBUTE_FORMAT_TV)
        value = buf.pull_bytes(2) if tv else buf.pull_bytes(buf.pull_uint16())
        if attribute_type == TransformAttributeType.KEY_LENGTH:
            if not tv:
                raise MalformedMessage("Key Length attribute must be in TV format")
            if key_length is not None:
                raise MalformedMessage("duplicate Key Length attribute")
            key_length = int.from_bytes(value, "big")
        else:
            others.append(TransformAttribute(attribute_type=attribute_type, value=value, tv=tv))
    return Transform(
        type=transform_type, id=transform_id, key_length=key_length, other_attributes=tuple(others)
    )


def push_transform(buf: Buffer, transform: Transform) -> None:
    """A transform's body after its 4-byte substructure header (type, reserved, id, attributes)."""
    buf.push_uint8(transform.type)
    push_reserved(buf, 1)
    buf.push_uint16(transform.id)
    if transform.key_length is not None:
        buf.push_uint16(_ATTRIBUTE_FORMAT_TV | TransformAttributeType.KEY_LENGTH)
        buf.push_uint16(transform.key_length)
    for attribute in transform.other_attributes:
        if attribute.attribute_type & _ATTRIBUTE_FORMAT_TV:
            raise EncodingError(f"attribute type {attribute.attribute_type} does not fit in 15 bits")
        if attribute.tv:
            if len(attribute.value) != 2:
                raise EncodingError("a TV attribute value is exactly 2 bytes")
            buf.push_uint16(_ATTRIBUTE_FORMAT_TV | attribute.attribute_type)
        else:
            buf.push_uint16(attribute.attribute_type)
            buf.push_uint16(len(attribute.value))
        buf.push_bytes(attribute.value)


def pull_proposal(buf: Buffer) -> Proposal:
    """One proposal substructure after its 4-byte header, ``buf`` bounded to its length."""
    number = buf.pull_uint8()
    protocol = known(ProtocolId, buf.pull_uint8())
    spi_size = buf.pull_uint8()
    transform_count = buf.pull_uint8()
    check_bound(spi_size, MAX_SPI_BYTES, "SPI bytes")
    check_bound(transform_count, MAX_TRANSFORMS_PER_PROPOSAL, "transforms")
    spi = buf.pull_bytes(spi_size)
    transforms: list[Transform] = []
    for index in range(transform_count):
        last_substruc, body = _pull_substructure(buf, _TRANSFORM_HEADER_LENGTH)
        expected = _LAST if index == transform_count - 1 else _MORE_TRANSFORMS
        if last_substruc != expected:
            raise MalformedMessage(
                f"Last Substruc {last_substruc} of transform {index + 1}, expected {expected}"
            )
        transforms.append(pull_transform(body))
    require_eof(buf, "the transforms of a proposal")
    return Proposal(number=number, protocol=protocol, spi=spi, transforms=tuple(transforms))


def push_proposal(buf: Buffer, proposal: Proposal) -> None:
    """A proposal's body after its 4-byte substructure header."""
    check_encodable(len(proposal.transforms), 255, "transforms")
    buf.push_uint8(proposal.number)
    buf.push_uint8(proposal.protocol)
    buf.push_uint8(len(proposal.spi))
    buf.push_uint8(len(proposal.transforms))
    buf.push_bytes(proposal.spi)
    for index, transform in enumerate(proposal.transforms):
        last_substruc = _LAST if index == len(proposal.transforms) - 1 else _MORE_TRANSFORMS
        at = _push_substructure_header(buf, last_substruc)
        push_transform(buf, transform)
        _finish_substructure(buf, at)


def pull_sa(buf: Buffer) -> SecurityAssociation:
    """An SA payload body."""
    proposals: list[Proposal] = []
    while True:
        check_bound(len(proposals) + 1, MAX_PROPOSALS, "proposals")
        last_substruc, body = _pull_substructure(buf, _PROPOSAL_HEADER_LENGTH)
        if last_substruc not in (_LAST, _MORE_PROPOSALS):
            raise MalformedMessage(f"bad Last Substruc {last_substruc} in a proposal")
        proposals.append(pull_proposal(body))
        if last_substruc == _LAST:
            break
    require_eof(buf, "the last proposal")
    return SecurityAssociation(proposals=tuple(proposals))


def push_sa(buf: Buffer, sa: SecurityAssociation) -> None:
    if not sa.proposals:
        raise EncodingError("an SA payload needs at least one proposal")
    for index, proposal in enumerate(sa.proposals):
        at = _push_substructure_header(buf, _LAST if index == len(sa.proposals) - 1 else _MORE_PROPOSALS)
        push_proposal(buf, proposal)
        _finish_substructure(buf, at)


# --- substructure framing (proposals and transforms) -----------------------------------------


def _pull_substructure(buf: Buffer, min_length: int) -> tuple[int, Buffer]:
    """Last Substruc, RESERVED, length; returns the Last Substruc value and the rest of the
    substructure as its own bounded buffer."""
    last_substruc = buf.pull_uint8()
    pull_reserved(buf, 1)
    length = buf.pull_uint16()
    if length < min_length:
        raise MalformedMessage(f"substructure length {length} below its minimum {min_length}")
    return last_substruc, buf.pull_buffer(length - 4)


def _push_substructure_header(buf: Buffer, last_substruc: int) -> int:
    start = len(buf)
    buf.push_uint8(last_substruc)
    push_reserved(buf, 1)
    buf.push_uint16(0)  # length, set by _finish_substructure
    return start


def _finish_substructure(buf: Buffer, start: int) -> None:
    buf.set_uint16(start + 2, len(buf) - start)
