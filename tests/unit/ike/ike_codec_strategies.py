"""Hypothesis strategies for every IKE payload and whole messages."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from trellis.agent.ike.constants import (
    CertEncoding,
    PayloadType,
    ProtocolId,
    TransformAttributeType,
    TransformType,
)
from trellis.agent.ike.message import IkeHeader, Message
from trellis.agent.ike.payloads import (
    Authentication,
    Certificate,
    CertificateRequest,
    Delete,
    Encrypted,
    EncryptedFragment,
    IdInitiator,
    IdResponder,
    KeyExchange,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    Transform,
    TransformAttribute,
    TsInitiator,
    TsResponder,
    UnknownPayload,
    VendorId,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
small_bytes = st.binary(max_size=48)

transform_attributes = st.builds(
    lambda attribute_type, tv, value: TransformAttribute(
        attribute_type=attribute_type, tv=tv, value=value[:2].ljust(2, b"\0") if tv else value
    ),
    attribute_type=st.integers(0, 0x7FFF).filter(lambda t: t != TransformAttributeType.KEY_LENGTH),
    tv=st.booleans(),
    value=st.binary(max_size=6),
)
transforms = st.builds(
    Transform,
    type=st.one_of(st.sampled_from(TransformType), u8),
    id=u16,
    key_length=st.none() | u16,
    other_attributes=st.lists(transform_attributes, max_size=2).map(tuple),
)
proposals = st.builds(
    Proposal,
    number=u8,
    protocol=st.one_of(st.sampled_from(ProtocolId), u8),
    spi=st.binary(max_size=8),
    transforms=st.lists(transforms, max_size=5).map(tuple),
)
security_associations = st.builds(
    SecurityAssociation, proposals=st.lists(proposals, min_size=1, max_size=3).map(tuple)
)

ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


def _selectors(
    addresses: st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> st.SearchStrategy[TrafficSelector]:
    return st.builds(
        TrafficSelector,
        start_address=addresses,
        end_address=addresses,
        ip_protocol=u8,
        start_port=u16,
        end_port=u16,
    )


traffic_selectors = st.one_of(_selectors(ipv4), _selectors(ipv6))
selector_tuples = st.lists(traffic_selectors, max_size=4).map(tuple)

_HASH_ENCODINGS = (4, 12, 13)
certificate_requests = st.one_of(
    st.builds(
        CertificateRequest,
        encoding=st.sampled_from([CertEncoding(e) for e in _HASH_ENCODINGS]),
        authorities=st.lists(st.binary(min_size=20, max_size=20), max_size=4).map(tuple),
    ),
    st.builds(
        CertificateRequest,
        encoding=u8.filter(lambda e: e not in _HASH_ENCODINGS),
        authorities=st.one_of(st.just(()), st.binary(min_size=1, max_size=30).map(lambda b: (b,))),
    ),
)


def _deletes() -> st.SearchStrategy[Delete]:
    @st.composite
    def build(draw: st.DrawFn) -> Delete:
        size = draw(st.integers(1, 8))
        spis = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=4))
        return Delete(protocol_id=draw(st.one_of(st.sampled_from(ProtocolId), u8)), spis=tuple(spis))

    return build()


_DECODED_TYPES = {t.value for t in PayloadType} - {PayloadType.CP, PayloadType.EAP}
unknown_payloads = st.one_of(
    st.builds(
        UnknownPayload,
        payload_type=st.integers(1, 255).filter(lambda t: t not in _DECODED_TYPES),
        critical=st.just(False),
        body=small_bytes,
    ),
    st.builds(
        UnknownPayload,
        payload_type=st.sampled_from([PayloadType.CP.value, PayloadType.EAP.value]),
        critical=st.booleans(),
        body=small_bytes,
    ),
)

clear_payloads: st.SearchStrategy[Payload] = st.one_of(
    security_associations,
    st.builds(KeyExchange, group=u16, data=small_bytes),
    st.builds(Nonce, data=st.binary(min_size=16, max_size=256)),
    st.builds(IdInitiator, id_type=u8, data=small_bytes),
    st.builds(IdResponder, id_type=u8, data=small_bytes),
    st.builds(Certificate, encoding=u8, data=small_bytes),
    certificate_requests,
    st.builds(Authentication, method=u8, data=small_bytes),
    st.builds(Notify, notify_type=u16, protocol_id=u8, spi=st.binary(max_size=8), data=small_bytes),
    _deletes(),
    st.builds(VendorId, data=small_bytes),
    st.builds(TsInitiator, selectors=selector_tuples),
    st.builds(TsResponder, selectors=selector_tuples),
    unknown_payloads,
)
encrypted_payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(Encrypted, next_payload=u8, body=small_bytes),
    st.builds(
        lambda total, number, next_payload, body: EncryptedFragment(
            fragment_number=min(number, total), total_fragments=total, next_payload=next_payload, body=body
        ),
        total=st.integers(1, 0xFFFF),
        number=st.integers(1, 0xFFFF),
        next_payload=u8,
        body=small_bytes,
    ),
)

headers = st.builds(
    IkeHeader,
    spi_i=st.binary(min_size=8, max_size=8),
    spi_r=st.binary(min_size=8, max_size=8),
    exchange=u8,
    initiator=st.booleans(),
    response=st.booleans(),
    message_id=st.integers(0, 2**32 - 1),
)


@st.composite
def messages(draw: st.DrawFn, *, encrypted: bool | None = None) -> Message:
    """Any message; ``encrypted`` True/False forces an SK/SKF last payload or none."""
    payloads = draw(st.lists(clear_payloads, max_size=6))
    with_encrypted = draw(st.booleans()) if encrypted is None else encrypted
    if with_encrypted:
        payloads.append(draw(encrypted_payloads))
    return Message(header=draw(headers), payloads=tuple(payloads))
